"""The bare SAE training step, sparse path against dense, for every sparse-coded architecture.

    python benchmarks/sparse_step.py [--arch relu jumprelu gated topk] [--d-sae 4096]
                                     [--l0 35] [--batch 4096] [--steps 4] [--rounds 3]
                                     [--device cpu|cuda] [--precision 32-true bf16-mixed]
                                     [--parts] [--profile]

Each SAE (d_in 1024) is set to a trained density: its encoder biases are shifted so that
each latent fires on about ``l0 / d_sae`` of the batch (L0 about ``--l0``; TopK: k = l0).
The same SAE runs with ``sparse_threshold`` 1 (sparse) and 0 (dense; TopK:
``sparse_decoder``), the two alternating ``--rounds`` times so that a load change on a shared
machine hits both alike; the median round is printed. A step is forward, loss, backward,
decoder-gradient projection, Adam (fused, as in conf/train.yaml), decoder renormalisation on
one fixed batch. The same-run ``torch.mm`` rate gives the sparse ceiling,
mm / (2 * d_in * d_sae) tokens/s (DESIGN.md).

``--precision`` lists the precisions to compare in the same run (all alternate within each
round): ``bf16-mixed`` runs forward and loss under ``torch.autocast(device, bfloat16)`` with
float32 parameters and Adam state, as Lightning's ``trainer.precision=bf16-mixed`` does; the
``vs first`` column is each rate over the first precision's. The ceiling uses ``torch.mm`` in
each precision.

``--parts`` also times the pieces of a step that touch the whole decoder: the unit-norm
projection and renormalisation, and Adam's step (foreach, the default, against fused).
``--profile`` prints the ``torch.profiler`` table (self CPU / CUDA time by op) of two sparse
steps of each architecture in each precision: which ops a precision speeds up and which not.
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
import time
from collections.abc import Callable, Iterator
from typing import Any

import torch
from train_throughput import matmul_rate, sync

from sae_lightning.losses import GatedLoss, JumpReLULoss, L1Loss, TopKLoss
from sae_lightning.saes import SAE, GatedSAE, JumpReLUSAE, ReLUSAE, TopKSAE

D_IN = 1024
PRECISIONS = ("32-true", "bf16-mixed")


def build(arch: str, d_sae: int, l0: int, sparse: bool, x: torch.Tensor) -> tuple[SAE, Any]:
    """The SAE at a trained density and its loss (``sparse``: the sparse path forced)."""
    torch.manual_seed(0)
    threshold = 1.0 if sparse else 0.0
    if arch == "topk":
        sae: SAE = TopKSAE(D_IN, d_sae, l0, sparse_decoder=sparse)
        return sae.to(x.device), TopKLoss(dead_tokens=10**9)  # no dead latents: no AuxK
    cls, loss = {
        "relu": (ReLUSAE, L1Loss(l1_coeff=1.0)),
        "jumprelu": (JumpReLUSAE, JumpReLULoss()),
        "gated": (GatedSAE, GatedLoss()),
    }[arch]
    sae = cls(D_IN, d_sae, sparse_threshold=threshold).to(x.device)
    with torch.no_grad():  # each latent fires on about l0 / d_sae of the batch
        pre = (x - sae.b_dec) @ sae.W_enc  # [batch, d_sae]
        cut = pre.float().quantile(1 - l0 / d_sae, dim=0)  # [d_sae]
        bias = sae.b_gate if arch == "gated" else sae.b_enc
        bias.copy_(-cut)
    return sae, loss


@contextlib.contextmanager
def autocast(device: torch.device, precision: str) -> Iterator[None]:
    """Lightning's ``precision``: ``bf16-mixed`` autocasts to bfloat16, ``32-true`` nothing.

    Raises:
        ValueError: If ``precision`` is neither.
    """
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {list(PRECISIONS)}, got {precision!r}")
    with torch.autocast(device.type, torch.bfloat16, enabled=precision == "bf16-mixed"):
        yield


def step_rate(
    sae: SAE, loss_fn: Any, x: torch.Tensor, steps: int, precision: str = "32-true"
) -> tuple[float, float]:
    """(tokens/s, mean L0) of the bare training step, after one warm-up step."""
    opt = torch.optim.Adam(sae.parameters(), lr=1e-5, fused=True)  # as conf/train.yaml
    start, l0 = 0.0, 0.0
    for i in range(steps + 1):
        if i == 1:
            sync(x.device)
            start = time.perf_counter()
        with autocast(x.device, precision):  # forward and loss; backward outside, as Lightning
            out = sae(x)
            loss = loss_fn(x, out, sae, 1000).loss
        loss.backward()
        sae.remove_gradient_parallel_to_decoder_directions()
        opt.step()
        opt.zero_grad(set_to_none=True)
        sae.set_decoder_norm_to_unit_norm()
        l0 = _l0(out)
    sync(x.device)
    return steps * x.shape[0] / (time.perf_counter() - start), l0


def _l0(out: Any) -> float:
    """Mean active latents per token, from the entries on the sparse path: reading the dense
    ``feature_acts`` there would build a ``[batch, d_sae]`` tensor inside the timed step."""
    if out.codes is not None:
        return int(torch.count_nonzero(out.codes.values.detach())) / out.codes.n_rows
    return (out.feature_acts > 0).sum(-1).float().mean().item()


def seconds(fn: Callable[[], object], device: torch.device, reps: int = 10) -> float:
    """Median seconds of ``fn`` over ``reps`` calls (after one warm-up)."""
    fn()
    times = []
    for _ in range(reps):
        sync(device)
        start = time.perf_counter()
        fn()
        sync(device)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def parts(d_sae: int, device: torch.device) -> None:
    """Milliseconds of the whole-decoder passes of one step."""
    sae = ReLUSAE(D_IN, d_sae).to(device)
    for param in sae.parameters():
        param.grad = torch.randn_like(param)
    timings = {
        "grad projection": sae.remove_gradient_parallel_to_decoder_directions,
        "renormalisation": sae.set_decoder_norm_to_unit_norm,
    }
    for name, kwargs in (("Adam foreach", {"foreach": True}), ("Adam fused", {"fused": True})):
        opt = torch.optim.Adam(sae.parameters(), lr=1e-9, **kwargs)
        timings[name] = opt.step
    for name, fn in timings.items():
        print(f"{name:16} {seconds(fn, device) * 1e3:8.2f} ms")


def profile(args: argparse.Namespace, x: torch.Tensor, rows: int = 12) -> None:
    """The profiler's top ops (self time) over two sparse steps, per arch and precision."""
    from torch.profiler import ProfilerActivity
    from torch.profiler import profile as torch_profile

    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if x.is_cuda else [])
    key = "self_cuda_time_total" if x.is_cuda else "self_cpu_time_total"
    for arch in args.arch:
        for precision in args.precision:
            sae, loss_fn = build(arch, args.d_sae, args.l0, True, x)
            step_rate(sae, loss_fn, x, 1, precision)  # warm-up outside the profile
            with torch_profile(activities=activities) as prof:
                step_rate(sae, loss_fn, x, 1, precision)
            print(f"\n== profile {arch} {precision} (two sparse steps) ==")
            print(prof.key_averages().table(sort_by=key, row_limit=rows))


def rate_table(args: argparse.Namespace, x: torch.Tensor, ceilings: dict[str, float]) -> None:
    """Sparse and dense step rates of each arch in each precision, alternating in rounds."""
    header = ("arch", "precision", "L0", "sparse tok/s", "dense tok/s", "ratio", "fraction")
    print("{:9} {:>10} {:>6} {:>13} {:>12} {:>6} {:>9}  vs first (sparse, dense)".format(*header))
    for arch in args.arch:
        rates: dict[tuple[str, bool], list[float]] = {}
        l0: dict[str, float] = {}
        for _ in range(args.rounds):
            for precision in args.precision:
                for sparse in (True, False):
                    sae, loss_fn = build(arch, args.d_sae, args.l0, sparse, x)
                    rate, l0[precision] = step_rate(sae, loss_fn, x, args.steps, precision)
                    rates.setdefault((precision, sparse), []).append(rate)
        med = {key: statistics.median(value) for key, value in rates.items()}
        first = args.precision[0]
        for p in args.precision:
            s, d = med[(p, True)], med[(p, False)]
            vs = f"{s / med[(first, True)]:.2f}x, {d / med[(first, False)]:.2f}x"
            print(
                f"{arch:9} {p:>10} {l0[p]:>6.1f} {s:>13.0f} {d:>12.0f} {s / d:>6.2f} "
                f"{s / ceilings[p]:>9.2f}  {vs}"
            )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--arch", nargs="+", default=["relu", "jumprelu", "gated", "topk"])
    parser.add_argument("--d-sae", type=int, default=4096)
    parser.add_argument("--l0", type=int, default=35)
    parser.add_argument("--batch", type=int, default=4096)
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--precision", nargs="+", default=["32-true"], choices=PRECISIONS)
    parser.add_argument("--parts", action="store_true")
    parser.add_argument("--profile", action="store_true")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args()
    device = torch.device(args.device)
    x = torch.randn(args.batch, D_IN, device=device)
    ceilings = {}
    for precision in args.precision:
        mm = matmul_rate(args.batch, D_IN, args.d_sae, args.device, precision)
        ceilings[precision] = mm / (2 * D_IN * args.d_sae)
        ceiling = ceilings[precision]
        print(f"{precision}: mm={mm / 1e9:.0f} GFLOP/s sparse ceiling={ceiling:.0f} tok/s")
    print(
        f"device={args.device} d_in={D_IN} d_sae={args.d_sae} batch={args.batch} "
        f"steps={args.steps} rounds={args.rounds}"
    )
    rate_table(args, x, ceilings)
    if args.parts:
        parts(args.d_sae, device)
    if args.profile:
        profile(args, x)


if __name__ == "__main__":
    main()
