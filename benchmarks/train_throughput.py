"""Steady-state SAE training throughput, as a fraction of the sparse ceiling on this machine.

    python benchmarks/train_throughput.py [--arch relu topk] [--d-sae 4096 8192 16384]
                                          [--precision 32-true bf16-mixed] [--batch 4096]
                                          [--buffer 65536]
                                          [--data live cached] [--steps N] [--l0 35]
                                          [--k 32] [--device cpu|cuda] [--emulated-bf16]

The whole loop runs through the real Lightning Trainer: the activations (``live``: the
frozen embedded model's forward to the MLP hook, d_in 1024; ``cached``: read back from an
activation cache of the same model and hook, ``data=cached``, written once at the start into
a temporary folder), the device shuffle buffer, the SAE step (loss, backward, decoder
gradient projection, fused Adam, renormalisation) and the training metrics. The ReLU SAE
is set to a trained density first: before the timed steps its encoder biases are shifted
so that each latent fires on about ``l0 / d_sae`` of real activations (the L0 column is the
L0 actually measured over the timed steps). TopK keeps ``k`` latents per token. The timed
steps start once the buffer has been filled twice and span whole refill cycles (by default
two), so that each refill's forward (or read) is counted at its share.

A trained SAE's codes are sparse, so only the encoder's forward product is dense, 2 * d_in
* d_sae FLOP per token; the decoder, its gradients and the encoder's weight gradient cost
O(L0 * d_in) (DESIGN.md). The ceiling is the ``torch.mm`` rate on the same shapes and
precision, timed in the same run just before and after each training run (the mean of the
two), divided by that cost; "fraction" is training tokens/s over the ceiling. A dense step
executes 10 * d_in * d_sae FLOP per token, so a dense step's fraction is at most 0.2.
On a CPU without bf16 arithmetic (``sae_lightning.cpu_bf16``) bf16 rows are skipped, with a
line that says so, unless ``--emulated-bf16``.
"""

from __future__ import annotations

import argparse
import logging
import tempfile
import time
from pathlib import Path

import lightning as L
import numpy as np
import torch
from hydra import compose, initialize_config_dir

from sae_lightning.allocator import keep_freed_memory
from sae_lightning.cpu_bf16 import BF16_FLAGS, cpu_flags, native_bf16
from sae_lightning.data.cache import cache_activations
from sae_lightning.data.cached import CachedDataModule
from sae_lightning.data.datamodule import ActivationDataModule
from sae_lightning.data.sources import CorpusSource
from sae_lightning.denormals import flush_denormals
from sae_lightning.losses import L1Loss, TopKLoss
from sae_lightning.models import load_embedded
from sae_lightning.module import SAEModule
from sae_lightning.saes import SAE, ReLUSAE, TopKSAE

ROOT = Path(__file__).resolve().parents[1]
D_IN = 1024
REFILL_FRACTION = 0.5  # the data module's default: the buffer emits half, then refills
# A step's cost depends on its code density, not on the learning rate: a small one keeps the
# ReLU SAE at the density set before the timed steps, as a trained SAE's density stays (at
# 1e-4, Adam's first steps, each about lr per weight, took the mean L0 over the timed steps
# from the 35 set to 66).
LR = 1e-7
SPARSE_FLOP_PER_TOKEN = 2  # x d_in x d_sae: the encoder's forward product (DESIGN.md)


def sync(device: torch.device | str) -> None:
    """Wait for the device's queued kernels (CUDA runs asynchronously; CPU is a no-op)."""
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize(device)


class StepTimer(L.Callback):
    """Wall time of the training steps after ``warmup`` steps (the device is synchronised),
    and the mean L0 of their codes."""

    def __init__(self, warmup: int) -> None:
        self.warmup, self.start, self.tokens, self.active = warmup, 0.0, 0, 0

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if trainer.global_step == self.warmup:
            sync(pl_module.device)
            self.start = time.perf_counter()
        elif trainer.global_step > self.warmup:
            self.tokens += batch.shape[0]
            codes = outputs["feature_acts"]  # dense, or the sparse path's entries
            dense = codes if isinstance(codes, torch.Tensor) else codes.values
            self.active += int(torch.count_nonzero(dense))

    @property
    def l0(self) -> float:
        return self.active / max(self.tokens, 1)

    @property
    def rate(self) -> float:
        """Training tokens/s over the timed steps."""
        return self.tokens / self.seconds

    def on_train_end(self, trainer, pl_module) -> None:
        sync(pl_module.device)
        self.seconds = time.perf_counter() - self.start


class TrainedDensity(L.Callback):
    """Before the first step, shift a ReLU SAE's encoder biases so that each latent fires on
    about ``l0 / d_sae`` of the first batch (a trained SAE's density). The first batch comes
    from the shuffled buffer, so it stands for the batches that follow (the first contexts,
    ``sample_activations``, do not: set on them, L0 measured 43-57 instead of 35)."""

    def __init__(self, l0: float) -> None:
        self.l0 = l0

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if trainer.global_step == 0:  # after the module's on_fit_start (b_dec's init)
            set_density(pl_module.sae, pl_module.to_sae_units(batch), self.l0)


@torch.no_grad()
def set_density(sae: SAE, x: torch.Tensor, l0: float) -> None:
    """Shift ``sae.b_enc`` so that each latent fires on about ``l0 / d_sae`` of ``x``."""
    pre = sae.encode_pre(x).float()  # [n, d_sae]
    cut = pre.quantile(1 - l0 / sae.d_sae, dim=0)  # [d_sae]
    sae.b_enc.sub_(cut)


def matmul_rate(
    batch: int, d_in: int, d_sae: int, device: str, precision: str, reps: int = 10
) -> float:
    """FLOP/s of ``torch.mm`` for [batch, d_in] @ [d_in, d_sae] in the run's precision."""
    dtype = torch.bfloat16 if precision.startswith("bf16") else torch.float32
    a = torch.randn(batch, d_in, device=device, dtype=dtype)
    b = torch.randn(d_in, d_sae, device=device, dtype=dtype)
    for _ in range(2):
        torch.mm(a, b)
    if device == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(reps):
        torch.mm(a, b)
    if device == "cuda":
        torch.cuda.synchronize()
    return 2 * batch * d_in * d_sae * reps / (time.perf_counter() - start)


def fit_timer(
    module: L.LightningModule,
    datamodule: L.LightningDataModule,
    steps: int,
    device: str,
    warmup: int,
    precision: str = "32-true",
    callbacks: list[L.Callback] | None = None,
) -> StepTimer:
    """The timer of ``trainer.fit`` over ``steps`` timed steps after ``warmup`` (no
    validation, logging, checkpoints or progress bar); its ``rate`` is tokens/s."""
    timer = StepTimer(warmup=warmup)
    trainer = L.Trainer(
        accelerator=device,
        devices=1,
        precision=precision,
        max_steps=warmup + steps,
        limit_val_batches=0,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=[*(callbacks or []), timer],
    )
    trainer.fit(module, datamodule=datamodule)
    return timer


def build(arch: str, d_sae: int, k: int) -> tuple[SAE, object]:
    """The SAE and its loss as conf/sae/<arch>.yaml trains them (fused Adam below)."""
    if arch == "topk":
        return TopKSAE(D_IN, d_sae, k), TopKLoss()
    return ReLUSAE(D_IN, d_sae), L1Loss(l1_coeff=2.0)


def refill_steps(args: argparse.Namespace) -> int:
    """Steps between two refills of the shuffle buffer (each refill runs the frozen forward
    on, or reads, ``REFILL_FRACTION`` of it)."""
    return max(1, int(REFILL_FRACTION * args.buffer) // args.batch)


def warmup_steps(args: argparse.Namespace) -> int:
    """Untimed steps: past the buffer's second fill. The process's heap grows to its peak over
    the first two fills (the second one's page faults cost 0.9 s at batch 4,096 against 0.1 s
    for each later refill), a cost a long run pays once."""
    return refill_steps(args) + 3


def write_cache(model, folder: Path, args: argparse.Namespace) -> Path:
    """An activation cache (``python cache_activations.py``) of the first training contexts
    of the embedded corpus, as many as the timed run reads (with a margin); its folder."""
    tokens = args.batch * (warmup_steps(args) + args.steps) + args.buffer
    contexts = CorpusSource("stdlib").contexts("train", model.tokenizer, model.cfg.n_ctx)
    n = min(len(contexts), int(1.2 * tokens / (contexts.shape[1] - 1)) + 32)
    np.save(folder / "tokens.npy", contexts[:n].numpy())
    overrides = ["data=tokens", f"data.source.path={folder / 'tokens.npy'}"]
    return cache_activations(
        cache_config(overrides + [f"path={folder / 'cache'}", f"model.device={args.device}"])
    )


def cache_config(overrides: list[str]):
    """The ``cache_activations`` config with ``overrides``, as its command line composes it."""
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        return compose("cache_activations", overrides=overrides)


def data_module(data: str, cache: Path | None, args: argparse.Namespace):
    """The live stream over the embedded corpus, or the same from ``cache`` (model-free)."""
    sizes = {"batch_size": args.batch, "buffer_tokens": args.buffer}
    if data == "cached":
        return CachedDataModule(str(cache), validate_with_model=False, val_contexts=1, **sizes)
    return ActivationDataModule(CorpusSource("stdlib"), val_contexts=1, **sizes)


def train_rate(model, arch: str, d_sae: int, args: argparse.Namespace, precision: str, datamodule):
    """(tokens/s, mean L0) of the full loop over ``args.steps`` steps after the warm-up."""
    spec = None if datamodule.model_free else datamodule.set_model(model)
    sae, loss = build(arch, d_sae, args.k)
    module = SAEModule(
        sae,
        loss,
        lambda params: torch.optim.Adam(params, lr=LR, fused=True),
        b_dec_init="mean",
    )
    if spec is not None:
        module.set_spec(spec)
    callbacks = [TrainedDensity(args.l0)] if arch == "relu" else []
    warmup = warmup_steps(args)
    timer = fit_timer(module, datamodule, args.steps, args.device, warmup, precision, callbacks)
    return timer.rate, timer.l0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--arch", nargs="+", default=["relu", "topk"], choices=["relu", "topk"])
    parser.add_argument("--d-sae", type=int, nargs="+", default=[4096, 8192, 16384])
    parser.add_argument("--precision", nargs="+", default=["32-true", "bf16-mixed"])
    parser.add_argument("--batch", type=int, default=4096)
    parser.add_argument("--buffer", type=int, default=65536, help="shuffle buffer, tokens")
    parser.add_argument("--data", nargs="+", default=["live", "cached"], choices=["live", "cached"])
    parser.add_argument(
        "--steps", type=int, default=0, help="timed steps (0: two refill cycles of the buffer)"
    )
    parser.add_argument("--l0", type=float, default=35.0, help="ReLU's trained density")
    parser.add_argument("--k", type=int, default=32, help="TopK's k")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument(
        "--emulated-bf16", action="store_true", help="time bf16 on a CPU without bf16 arithmetic"
    )
    args = parser.parse_args()
    if args.buffer < args.batch:
        parser.error(f"--buffer {args.buffer} must hold at least one batch (--batch {args.batch})")
    for precision in emulated(args):
        print(
            f"{precision} skipped: this CPU has no bf16 arithmetic (none of {', '.join(BF16_FLAGS)}"
            " among its flags), so torch would emulate its products, hundreds of times slower "
            "than float32; --emulated-bf16 times them anyway"
        )
        args.precision.remove(precision)
    if not args.precision:
        return  # nothing left to time
    args.steps = args.steps or 2 * refill_steps(args)  # whole cycles: refills counted fairly
    logging.getLogger("lightning").setLevel(logging.WARNING)
    keep_freed_memory()  # as train.py does
    flush_denormals()
    torch.manual_seed(0)
    model = load_embedded(device=args.device)
    with tempfile.TemporaryDirectory(prefix="sae_throughput_") as tmp:
        cache = write_cache(model, Path(tmp), args) if "cached" in args.data else None
        print(f"device={args.device} batch={args.batch} d_in={D_IN} steps={args.steps}")
        print(
            f"{'arch':<5} {'precision':<10} {'data':<6} {'d_sae':>6} {'L0':>6} "
            f"{'train tok/s':>12} {'mm GFLOP/s':>11} {'ceiling tok/s':>14} {'fraction':>9}"
        )
        for precision in args.precision:
            for arch in args.arch:
                for d_sae in args.d_sae:
                    for data in args.data:
                        dm = data_module(data, cache, args)
                        row = measure(model, arch, d_sae, args, precision, dm)
                        print(f"{arch:<5} {precision:<10} {data:<6} {d_sae:>6} {row}", flush=True)


def emulated(args: argparse.Namespace) -> list[str]:
    """The bf16 precisions asked for that this CPU would emulate (left out unless
    ``--emulated-bf16``: at the default shapes a bf16 row would take hours)."""
    if args.device != "cpu" or args.emulated_bf16 or native_bf16(cpu_flags()) is not False:
        return []
    return [p for p in args.precision if p.startswith("bf16")]


def measure(model, arch: str, d_sae: int, args, precision: str, datamodule) -> str:
    """The table's figures for one run: L0, tokens/s, mm rate, ceiling, fraction."""
    before = matmul_rate(args.batch, D_IN, d_sae, args.device, precision)
    rate, l0 = train_rate(model, arch, d_sae, args, precision, datamodule)
    mm = (before + matmul_rate(args.batch, D_IN, d_sae, args.device, precision)) / 2
    ceiling = mm / (SPARSE_FLOP_PER_TOKEN * D_IN * d_sae)
    return f"{l0:>6.1f} {rate:>12,.0f} {mm / 1e9:>11.0f} {ceiling:>14,.0f} {rate / ceiling:>9.2f}"


if __name__ == "__main__":
    main()
