"""Adam's step when dead latents' first moments have decayed into float32 denormals.

    python benchmarks/denormal_adam.py [--d-sae 2048] [--d-in 1024] [--dead 0.0 0.2 0.5]
                                       [--steps 10] [--rounds 3]

A latent that stops firing gets zero gradient; its Adam first moments decay by 0.9 a step
into denormals (below 1.2e-38) and stay there. This times ``torch.optim.Adam`` (fused, as
training uses) on one ``[d_sae, d_in]`` parameter whose first moments are denormal for a
``--dead`` share of its rows (zero gradient there), with the CPU's denormal flushing off and
on (``sae_lightning/denormals.py``; training turns it on), alternating ``--rounds`` times
(median reported). It also prints how many denormal moments are left after the steps.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

TINY = torch.finfo(torch.float32).tiny


def adam_ms(d_sae: int, d_in: int, dead: float, flush: bool, steps: int) -> tuple[float, int]:
    """Milliseconds per fused Adam step, and the denormal first moments left after it."""
    torch.set_flush_denormal(False)  # the moments are made denormal with flushing off
    torch.manual_seed(0)
    p = torch.nn.Parameter(torch.randn(d_sae, d_in))
    opt = torch.optim.Adam([p], lr=1e-3, fused=True)
    p.grad = torch.randn_like(p)
    opt.step()
    rows = int(dead * d_sae)
    opt.state[p]["exp_avg"][:rows] = 1e-40  # a dead latent's decayed first moments
    p.grad[:rows] = 0
    torch.set_flush_denormal(flush)
    start = time.perf_counter()
    for _ in range(steps):
        opt.step()
    ms = (time.perf_counter() - start) / steps * 1e3
    m = opt.state[p]["exp_avg"]
    left = int(((m.abs() < TINY) & (m != 0)).sum())
    torch.set_flush_denormal(False)
    return ms, left


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--d-sae", type=int, default=2048)
    parser.add_argument("--d-in", type=int, default=1024)
    parser.add_argument("--dead", type=float, nargs="+", default=[0.0, 0.2, 0.5])
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    print(
        f"d_sae={args.d_sae} d_in={args.d_in} steps={args.steps} rounds={args.rounds} "
        f"threads={torch.get_num_threads()}"
    )
    print(f"{'dead':>5} {'no flush ms':>12} {'flush ms':>9} {'speed-up':>9} {'denormals left':>15}")
    for dead in args.dead:
        times: dict[bool, list[float]] = {False: [], True: []}
        left = {}
        for _ in range(args.rounds):
            for flush in (False, True):
                ms, left[flush] = adam_ms(args.d_sae, args.d_in, dead, flush, args.steps)
                times[flush].append(ms)
        slow, fast = statistics.median(times[False]), statistics.median(times[True])
        print(
            f"{dead:>5.2f} {slow:>12.2f} {fast:>9.2f} {slow / fast:>9.2f} "
            f"{left[False]:>7,} / {left[True]:,}"
        )


if __name__ == "__main__":
    main()
