"""The frozen forward's rate by group size: ``data.contexts_per_forward``, one run.

    python benchmarks/forward_groups.py [--contexts 8 16 32 64] [--rounds 3]
                                        [--hook blocks.0.mlp.hook_post]

The live stream runs the frozen model on ``contexts_per_forward`` contexts at a time (32 by
default) and stops at the hook. This times that forward (``capture_activations``, as the
stream calls it) on the embedded model's training contexts, for each group size, the sizes
alternating in every round so that a load change hits all alike; it prints the median
tokens/s and each size's rate over the default's. Every size reads the same contexts.
A group size is part of the stream's order (the same seed and sizes give the same batches),
so changing it changes which batches a run sees, not what the model computes for a context.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from sae_lightning.data.sources import CorpusSource
from sae_lightning.hooks import capture_activations
from sae_lightning.models import load_embedded

DEFAULT = 32  # conf/data/*.yaml contexts_per_forward
TOKENS = 32768  # tokens read per size and round (whole groups of the largest size)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--contexts", type=int, nargs="+", default=[8, 16, 32, 64])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--hook", default="blocks.0.mlp.hook_post")
    args = parser.parse_args()
    model = load_embedded()
    contexts = CorpusSource("stdlib").contexts("train", model.tokenizer, model.cfg.n_ctx)
    n = max(max(args.contexts), TOKENS // contexts.shape[1])
    n -= n % max(args.contexts)  # whole groups of the largest size
    tokens = contexts[:n]
    rates: dict[int, list[float]] = {k: [] for k in args.contexts}
    with torch.inference_mode():
        for k in args.contexts:  # warm-up: each size's first forward, untimed
            capture_activations(model, tokens[:k], args.hook)
        for _ in range(args.rounds):
            for k, seconds in rates.items():
                start = time.perf_counter()
                for group in tokens.split(k):
                    capture_activations(model, group, args.hook)
                seconds.append(tokens.numel() / (time.perf_counter() - start))
    med = {k: statistics.median(r) for k, r in rates.items()}
    print(f"contexts={n} n_ctx={contexts.shape[1]} hook={args.hook} rounds={args.rounds}")
    print(f"{'contexts_per_forward':>20} {'tokens/s':>10} {'vs ' + str(DEFAULT):>7}")
    base = med.get(DEFAULT)
    for k, rate in med.items():
        ratio = f"{rate / base:7.2f}" if base else f"{'-':>7}"
        print(f"{k:>20} {rate:>10,.0f} {ratio}")


if __name__ == "__main__":
    main()
