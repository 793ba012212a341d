"""Steady-state SAE training throughput, as a fraction of the matmul ceiling on this machine.

    python benchmarks/train_throughput.py [--d-sae 4096 8192] [--batch 4096] [--steps 12]
                                          [--device cpu|cuda] [--precision 32-true|bf16-mixed]

The whole loop runs through the real Lightning Trainer: the frozen embedded model to the
hook (d_in 1024), the device shuffle buffer, the ReLU SAE step (Adam, decoder
normalisation). In the same run it times ``torch.mm`` on the same shapes and precision. The
ceiling is that rate divided by the dense cost of one token, 6 * d_in * d_sae FLOP
(DESIGN.md). Throughput is reported as a fraction of that ceiling ("fraction"). A dense
ReLU step executes five matmuls, 10 * d_in * d_sae FLOP per token (encoder and decoder
forward, the decoder's weight and input gradients, the encoder's weight gradient; no input
gradient reaches the activations), so that fraction cannot exceed 0.6. The second figure
("executed") is the FLOP rate actually sustained as a share of the torch.mm rate.
"""

from __future__ import annotations

import argparse
import logging
import time

import lightning as L
import torch

from sae_lightning.data.datamodule import ActivationDataModule
from sae_lightning.data.sources import CorpusSource
from sae_lightning.losses import L1Loss
from sae_lightning.models import load_embedded
from sae_lightning.module import SAEModule
from sae_lightning.saes import ReLUSAE

EXECUTED_FLOP_PER_TOKEN = 10  # x d_in x d_sae, dense ReLU step (see the module docstring)
DESIGN_FLOP_PER_TOKEN = 6  # x d_in x d_sae, DESIGN.md's cost model


class StepTimer(L.Callback):
    """Wall time of the training steps after ``warmup`` steps (the device is synchronised)."""

    def __init__(self, warmup: int) -> None:
        self.warmup, self.start, self.tokens = warmup, 0.0, 0

    def _sync(self, device: torch.device) -> None:
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if trainer.global_step == self.warmup:
            self._sync(pl_module.device)
            self.start = time.perf_counter()
        elif trainer.global_step > self.warmup:
            self.tokens += batch.shape[0]

    def on_train_end(self, trainer, pl_module) -> None:
        self._sync(pl_module.device)
        self.seconds = time.perf_counter() - self.start


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


def fit_rate(
    module: L.LightningModule,
    datamodule: L.LightningDataModule,
    steps: int,
    device: str,
    warmup: int,
    precision: str = "32-true",
) -> float:
    """Training tokens/s of ``trainer.fit`` over ``steps`` timed steps after ``warmup``
    (no validation, logging, checkpoints or progress bar)."""
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
        callbacks=[timer],
    )
    trainer.fit(module, datamodule=datamodule)
    return timer.tokens / timer.seconds


def train_rate(model, d_sae: int, batch: int, steps: int, device: str, precision: str) -> float:
    """Training tokens/s of the full loop over ``steps`` steps after 3 warm-up steps."""
    datamodule = ActivationDataModule(
        CorpusSource("stdlib"),
        batch_size=batch,
        buffer_tokens=max(65536, 4 * batch),
        val_contexts=1,
    )
    spec = datamodule.set_model(model)
    module = SAEModule(
        ReLUSAE(1024, d_sae),
        L1Loss(2.0),
        lambda params: torch.optim.Adam(params, lr=1e-4),
        b_dec_init="mean",
    )
    module.set_spec(spec)
    return fit_rate(module, datamodule, steps, device, warmup=3, precision=precision)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--d-sae", type=int, nargs="+", default=[4096, 8192])
    parser.add_argument("--batch", type=int, default=4096)
    parser.add_argument("--steps", type=int, default=12)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--precision", default="32-true")
    args = parser.parse_args()
    logging.getLogger("lightning").setLevel(logging.WARNING)
    torch.manual_seed(0)
    model = load_embedded(device=args.device)
    d_in = 1024
    print(f"device={args.device} precision={args.precision} batch={args.batch} d_in={d_in}")
    print(
        f"{'d_sae':>6} {'train tok/s':>12} {'mm TFLOP/s':>11} {'ceiling tok/s':>14} {'fraction':>9}"
    )
    for d_sae in args.d_sae:
        rate = train_rate(model, d_sae, args.batch, args.steps, args.device, args.precision)
        mm = matmul_rate(args.batch, d_in, d_sae, args.device, args.precision)
        ceiling = mm / (6 * d_in * d_sae)
        print(
            f"{d_sae:>6} {rate:>12.0f} {mm / 1e12:>11.3f} {ceiling:>14.0f} {rate / ceiling:>9.3f}"
        )


if __name__ == "__main__":
    main()
