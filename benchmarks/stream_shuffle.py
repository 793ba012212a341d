"""The shuffle buffer's permutation: advanced indexing against ``index_select``, one run.

    python benchmarks/stream_shuffle.py [--tokens 65536] [--d-in 1024] [--rounds 5]

On every refill the live stream (``sae_lightning/data/activations.py``) concatenates the
activations it holds with the fresh ones and permutes the rows of the result. This times that
refill both ways on the stream's shapes, fresh activations each round (as a refill's are), the
two alternating so that a load change hits both alike, and prints the medians. Both give the
same tensor (checked).
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from sae_lightning.allocator import keep_freed_memory

PARTS = 16  # forward groups per refill (32 contexts of 127 positions: ~4,064 activations each)


def refill(parts: list[torch.Tensor], perm: torch.Tensor, how: str) -> torch.Tensor:
    buffer = torch.cat(parts)
    return buffer[perm] if how == "index" else buffer.index_select(0, perm)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tokens", type=int, default=65536, help="activations per refill")
    parser.add_argument("--d-in", type=int, default=1024)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    keep_freed_memory()  # as train.py does
    perm = torch.randperm(args.tokens)
    sizes = [len(c) for c in torch.arange(args.tokens).chunk(PARTS)]
    times: dict[str, list[float]] = {"index": [], "index_select": []}
    for _ in range(args.rounds + 1):  # the first round warms the heap up, untimed
        for how, seconds in times.items():
            parts = [torch.randn(n, args.d_in) for n in sizes]
            start = time.perf_counter()
            out = refill(parts, perm, how)
            seconds.append(time.perf_counter() - start)
        if not torch.equal(refill(parts, perm, "index"), out):
            raise AssertionError("index and index_select permuted the rows differently")
    med = {how: statistics.median(seconds[1:]) for how, seconds in times.items()}
    print(f"tokens={args.tokens} d_in={args.d_in} rounds={args.rounds}")
    print(f"buffer[perm] (advanced indexing)  {med['index'] * 1e3:10.3f} ms")
    print(f"buffer.index_select(0, perm)      {med['index_select'] * 1e3:10.3f} ms")
    print(f"speed-up                          {med['index'] / med['index_select']:10.2f}x")


if __name__ == "__main__":
    main()
