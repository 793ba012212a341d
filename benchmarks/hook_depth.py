"""The frozen forward stops at the hooked layer: capture time by hook depth against a full forward.

    python benchmarks/hook_depth.py [--layers 4] [--d-model 256] [--batch 32] [--n-ctx 128]
                                    [--repeats 5] [--device cpu|cuda]

``capture_activations`` raises inside the hook, so nothing after the hooked layer is computed
(DESIGN.md, "frozen forward up to the hook only"). This builds a randomly initialised GPT-2
with ``--layers`` blocks (vocabulary 4,096, the embedded tokenizer), saves it to a temporary
folder, loads it back through ``sae_lightning.models.load_hf`` (a ``TransformerBridge``), and
times on one fixed batch of tokens, under ``torch.inference_mode``: the full forward
``model(tokens)`` (unembedding included) and ``capture_activations`` at
``blocks.L.hook_resid_post`` for every layer L. Each figure is the best of ``--repeats``
runs after one warm-up, the variants taking turns in each round. "ratio" is the capture time
over the full forward's: about (L + 1) / n_layers plus the embedding, rising towards 1 at the
last layer, which skips only ln_final and the unembedding. At these sizes the unembedding
(2 * d_model * vocab FLOP per token) weighs about as much as one block (24 * d_model**2 plus
attention), so the last layer's ratio is near 0.8.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from collections.abc import Callable

import torch
from train_throughput import sync
from transformers import AutoModelForCausalLM, AutoTokenizer, GPT2Config
from transformers.utils import logging as hf_logging

from sae_lightning.hooks import capture_activations
from sae_lightning.models import EMBEDDED_DIR, TOKENIZER_DIR, load_hf

VOCAB = 4096  # the embedded tokenizer's vocabulary


def build_model(folder: str, layers: int, d_model: int, n_ctx: int) -> None:
    """Write a random GPT-2 and the embedded tokenizer to ``folder`` (a Hugging Face folder)."""
    torch.manual_seed(0)
    config = GPT2Config(
        vocab_size=VOCAB,
        n_positions=n_ctx,
        n_embd=d_model,
        n_layer=layers,
        n_head=max(1, d_model // 32),
    )
    AutoModelForCausalLM.from_config(config).save_pretrained(folder)
    AutoTokenizer.from_pretrained(str(EMBEDDED_DIR / TOKENIZER_DIR)).save_pretrained(folder)


def best_seconds(
    fns: dict[str, Callable[[], object]], repeats: int, device: str
) -> dict[str, float]:
    """The fastest of ``repeats`` timed calls of each function after one warm-up call each.
    The functions take turns in every round, so a load change on a shared machine hits all."""
    for fn in fns.values():
        fn()
    best = dict.fromkeys(fns, float("inf"))
    for _ in range(repeats):
        for name, fn in fns.items():
            sync(device)
            start = time.perf_counter()
            fn()
            sync(device)
            best[name] = min(best[name], time.perf_counter() - start)
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--layers", type=int, default=4, help="transformer blocks")
    parser.add_argument("--d-model", type=int, default=256, help="residual width (heads of 32)")
    parser.add_argument("--batch", type=int, default=32, help="contexts per forward")
    parser.add_argument("--n-ctx", type=int, default=128, help="tokens per context")
    parser.add_argument("--repeats", type=int, default=5, help="best of this many timed runs")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args()
    if args.layers < 1 or args.repeats < 1 or args.d_model % 32:
        parser.error(
            f"need --layers >= 1, --repeats >= 1 and --d-model a multiple of 32; got "
            f"{args.layers}, {args.repeats}, {args.d_model}"
        )
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    with tempfile.TemporaryDirectory() as folder:
        build_model(folder, args.layers, args.d_model, args.n_ctx)
        model = load_hf(folder, device=args.device)
    generator = torch.Generator().manual_seed(0)
    tokens = torch.randint(0, VOCAB, (args.batch, args.n_ctx), generator=generator)
    tokens = tokens.to(args.device)  # [batch, n_ctx]
    print(
        f"device={args.device} threads={torch.get_num_threads()} layers={args.layers} "
        f"d_model={args.d_model} batch={args.batch}x{args.n_ctx} tokens best of {args.repeats}"
    )
    fns: dict[str, Callable[[], object]] = {"full forward": lambda: model(tokens)}
    for layer in range(args.layers):
        hook = f"blocks.{layer}.hook_resid_post"
        fns[hook] = lambda hook=hook: capture_activations(model, tokens, hook)
    with torch.inference_mode():
        seconds = best_seconds(fns, args.repeats, args.device)
    print(f"{'hook':<26} {'seconds':>9} {'ratio':>6}")
    for name, value in seconds.items():
        print(f"{name:<26} {value:>9.4f} {value / seconds['full forward']:>6.2f}")


if __name__ == "__main__":
    main()
