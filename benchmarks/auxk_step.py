"""The AuxK term of a TopK step: its sparse codes against dense matmuls over the dead latents.

    python benchmarks/auxk_step.py [--n-dead 256 1024 4096 16384] [--k-aux 512]
                                   [--batch 4096] [--steps 3] [--rounds 3] [--device cpu|cuda]

AuxK (Gao et al. 2024) reconstructs the residual from the top ``k_aux`` of the dead latents
of each token. ``TopKSAE.auxk_reconstruction`` keeps these codes sparse (gather and scatter
of ``k_aux`` decoder rows per token) while ``k_aux`` is at most ``AUXK_SPARSE_BELOW`` of the
dead latents, and uses dense matmuls over the dead latents above it. This times both paths
(forward, the AuxK loss and backward; d_in 1024, d_sae = 2 * the largest ``--n-dead``) at
each count of dead latents, alternating ``--rounds`` times (median reported), with the
same-run torch.mm rate: "dense / sparse" above 1 means the dense path is the faster.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from train_throughput import matmul_rate, sync

from sae_lightning.losses.terms import mse
from sae_lightning.saes import TopKSAE

D_IN = 1024


def auxk_rate(
    sae: TopKSAE, x: torch.Tensor, dead: torch.Tensor, k_aux: int, sparse: bool, steps: int
) -> float:
    """Tokens/s of the AuxK forward and backward (after one warm-up)."""
    residual = torch.randn_like(x)
    below = 1.0 if sparse else 0.0  # the path forced either way
    start = 0.0
    for i in range(steps + 1):
        if i == 1:
            sync(x.device.type)
            start = time.perf_counter()
        e_hat = sae.auxk_reconstruction(x, dead, k_aux, sparse_below=below)
        mse(residual, e_hat).backward()
        sae.zero_grad(set_to_none=True)
    sync(x.device.type)
    return steps * x.shape[0] / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n-dead", type=int, nargs="+", default=[256, 1024, 4096, 16384])
    parser.add_argument("--k-aux", type=int, default=512)
    parser.add_argument("--batch", type=int, default=4096)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args()
    torch.manual_seed(0)
    d_sae = 2 * max(args.n_dead)
    sae = TopKSAE(D_IN, d_sae, k=32).to(args.device).train()
    x = torch.randn(args.batch, D_IN, device=args.device)
    mm = matmul_rate(args.batch, D_IN, d_sae, args.device, "32-true")
    print(
        f"device={args.device} d_in={D_IN} d_sae={d_sae} k_aux={args.k_aux} "
        f"batch={args.batch} steps={args.steps} rounds={args.rounds} mm={mm / 1e9:.0f} GFLOP/s"
    )
    print(
        f"{'n_dead':>7} {'density':>8} {'sparse tok/s':>13} {'dense tok/s':>12} "
        f"{'dense/sparse':>13}"
    )
    for n_dead in args.n_dead:
        dead = torch.zeros(d_sae, dtype=torch.bool, device=args.device)
        dead[torch.randperm(d_sae, device=args.device)[:n_dead]] = True
        rates: dict[bool, list[float]] = {True: [], False: []}
        for _ in range(args.rounds):
            for sparse in (True, False):
                rates[sparse].append(auxk_rate(sae, x, dead, args.k_aux, sparse, args.steps))
        sparse, dense = statistics.median(rates[True]), statistics.median(rates[False])
        density = min(args.k_aux, n_dead) / n_dead
        print(f"{n_dead:>7} {density:>8.3f} {sparse:>13.0f} {dense:>12.0f} {dense / sparse:>13.2f}")


if __name__ == "__main__":
    main()
