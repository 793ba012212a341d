"""Held-out loss of a model: ``python -m sae_lightning.toy.evaluate [NAME_OR_DIR]``.

Prints the mean next-token loss (nats/token) of a shipped model (``toy-1l``, the default, or
``toy-1l-b``) or of the model folder given, on the validation documents of its corpus,
computed through the TransformerLens bridge.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from sae_lightning.data.corpus import load_documents, split_documents
from sae_lightning.data.tokens import encode_documents, make_contexts


@torch.inference_mode()
def heldout_loss(
    model, corpus: str = "stdlib", val_fraction: float = 0.05, batch_size: int = 64
) -> tuple[float, int]:
    """Mean next-token loss over BOS-prefixed contexts of the held-out documents.

    Returns (loss in nats/token, number of predicted tokens).
    """
    docs = split_documents(load_documents(corpus), "val", val_fraction)
    tokenizer = model.tokenizer
    contexts = make_contexts(
        encode_documents(docs, tokenizer), model.cfg.n_ctx, tokenizer.bos_token_id
    )
    total, count = 0.0, 0
    for start in range(0, len(contexts), batch_size):
        batch = contexts[start : start + batch_size]
        n = batch[:, 1:].numel()
        total += model(batch, return_type="loss").item() * n
        count += n
    return total / count, count


def main(argv: list[str] | None = None) -> None:
    from sae_lightning.models import (
        CONFIG_FILE,
        EMBEDDED_MODELS,
        EMBEDDED_NAME,
        embedded_dir,
        load_embedded,
    )

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "model", nargs="?", default=EMBEDDED_NAME, help=f"one of {EMBEDDED_MODELS} or a folder"
    )
    args = parser.parse_args(argv)
    folder = embedded_dir(args.model) if args.model in EMBEDDED_MODELS else Path(args.model)
    config = json.loads((folder / CONFIG_FILE).read_text())
    recipe = config.get("recipe", {})
    model = load_embedded(folder)
    loss, n = heldout_loss(model, recipe.get("corpus", "stdlib"), recipe.get("val_fraction", 0.05))
    print(f"held-out loss of {args.model}: {loss:.4f} nats/token over {n} tokens")


if __name__ == "__main__":
    main()
