"""TopK training throughput: the sparse decoder (k active latents) against the dense one.

    python benchmarks/topk_decoder.py [--d-sae 8192] [--k 32] [--batch 4096] [--steps 6]
                                      [--rounds 3] [--device cpu|cuda]

Both variants are the same ``TopKSAE`` (d_in 1024) with ``sparse_decoder`` true or false:
same codes, same gradients (tests/test_architectures.py), different kernels. Two figures,
each measured in this run, the two variants alternating ``--rounds`` times so that a load
change on a shared machine hits both alike (the median round is reported):

- "SAE step": forward, TopK + AuxK loss, backward, decoder-norm projection and Adam on a
  fixed batch of real activations of the embedded model;
- "full loop": the whole Lightning training loop of ``train_throughput.py`` (frozen model
  to the hook, device shuffle buffer, the step, metrics).

It also prints the torch.mm rate on the same shapes and each variant's throughput as a
fraction of DESIGN.md's TopK ceiling (mm rate / (2 * d_in * d_sae) tokens/s: only the dense
encoder forward is unavoidable).
"""

from __future__ import annotations

import argparse
import logging
import statistics
import time

import torch
from train_throughput import fit_timer, matmul_rate, sync

from sae_lightning.data.datamodule import ActivationDataModule
from sae_lightning.data.sources import CorpusSource
from sae_lightning.losses import TopKLoss
from sae_lightning.models import load_embedded
from sae_lightning.module import SAEModule
from sae_lightning.saes import TopKSAE

D_IN = 1024


def step_rate(x: torch.Tensor, d_sae: int, k: int, sparse: bool, steps: int) -> float:
    """Tokens/s of the bare SAE training step (after one warm-up step)."""
    torch.manual_seed(0)
    sae = TopKSAE(D_IN, d_sae, k, sparse_decoder=sparse).to(x.device)
    opt = torch.optim.Adam(sae.parameters(), lr=1e-4)
    loss_fn = TopKLoss(dead_tokens=1)  # AuxK on: every latent that missed a batch is dead
    start = 0.0
    for i in range(steps + 1):
        if i == 1:
            sync(x.device.type)
            start = time.perf_counter()
        out = sae(x)
        loss_fn(x, out, sae, i).loss.backward()
        sae.remove_gradient_parallel_to_decoder_directions()
        opt.step()
        opt.zero_grad(set_to_none=True)
        sae.set_decoder_norm_to_unit_norm()
    sync(x.device.type)
    return steps * x.shape[0] / (time.perf_counter() - start)


def loop_rate(model, d_sae: int, k: int, sparse: bool, batch: int, steps: int, device: str):
    """Tokens/s of the full Lightning training loop over ``steps`` steps after 2 warm-up."""
    datamodule = ActivationDataModule(
        CorpusSource("stdlib"), batch_size=batch, buffer_tokens=4 * batch, val_contexts=1
    )
    spec = datamodule.set_model(model)
    sae = TopKSAE(D_IN, d_sae, k, sparse_decoder=sparse)
    module = SAEModule(sae, TopKLoss(), lambda p: torch.optim.Adam(p, lr=1e-4), b_dec_init="mean")
    module.set_spec(spec)
    return fit_timer(module, datamodule, steps, device, warmup=2).rate


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--d-sae", type=int, default=8192)
    parser.add_argument("--k", type=int, default=32)
    parser.add_argument("--batch", type=int, default=4096)
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args()
    logging.getLogger("lightning").setLevel(logging.WARNING)
    model = load_embedded(device=args.device)
    source = ActivationDataModule(CorpusSource("stdlib"), batch_size=args.batch, val_contexts=1)
    source.set_model(model)
    x = source.sample_activations(args.batch).float().to(args.device)
    rates: dict[tuple[str, bool], list[float]] = {}
    for _ in range(args.rounds):
        for sparse in (True, False):
            rates.setdefault(("step", sparse), []).append(
                step_rate(x, args.d_sae, args.k, sparse, args.steps)
            )
            rates.setdefault(("loop", sparse), []).append(
                loop_rate(model, args.d_sae, args.k, sparse, args.batch, args.steps, args.device)
            )
    mm = matmul_rate(args.batch, D_IN, args.d_sae, args.device, "32-true")
    ceiling = mm / (2 * D_IN * args.d_sae)
    print(
        f"device={args.device} d_in={D_IN} d_sae={args.d_sae} k={args.k} batch={args.batch} "
        f"steps={args.steps} rounds={args.rounds} mm={mm / 1e9:.0f} GFLOP/s "
        f"TopK ceiling={ceiling:.0f} tok/s"
    )
    print(f"{'':10} {'sparse tok/s':>13} {'dense tok/s':>12} {'sparse/dense':>13} {'fraction':>9}")
    for what, label in (("step", "SAE step"), ("loop", "full loop")):
        sparse = statistics.median(rates[(what, True)])
        dense = statistics.median(rates[(what, False)])
        print(
            f"{label:10} {sparse:>13.0f} {dense:>12.0f} {sparse / dense:>13.2f} "
            f"{sparse / ceiling:>9.2f}"
        )


if __name__ == "__main__":
    main()
