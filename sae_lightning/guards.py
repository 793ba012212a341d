"""Training guards: stop at divergence, stop cleanly on SIGTERM / Ctrl-C, judge the outcome.

``DivergenceGuard`` ends a run at the first non-finite loss or weight, before anything
overwrites the last finite checkpoint. ``StopOnSignal`` turns SIGTERM and SIGINT into a
resumable ``last.ckpt`` at the next step boundary and a :class:`TrainingInterrupted` that
``train.py`` ends with exit status 128 + the signal. Both are listed in
``conf/callbacks/default.yaml``.
"""

from __future__ import annotations

import logging
import math
import shlex
import signal
import threading
from pathlib import Path
from typing import Any

import lightning as L
import torch
from hydra.core.hydra_config import HydraConfig
from lightning.pytorch.callbacks import Checkpoint
from typing_extensions import override

log = logging.getLogger(__name__)

HIGH_LR = 1e-2
"""Adam learning rates at or above this are the first suspect when a run diverges."""


class TrainingDiverged(Exception):
    """The loss or the SAE's weights stopped being finite (a user error: fix the config)."""


class TrainingInterrupted(Exception):
    """SIGTERM or SIGINT stopped training at a step boundary after saving ``checkpoint``."""

    def __init__(self, signum: int, step: int, checkpoint: Path) -> None:
        self.signum, self.step, self.checkpoint = signum, step, checkpoint
        name = signal.Signals(signum).name
        super().__init__(
            f"stopped by {name} at step {step}; the resumable checkpoint is {checkpoint}\n"
            f"resume with: {resume_command(checkpoint)}"
        )

    @property
    def exit_code(self) -> int:
        """The shell's convention for a process ended by a signal: 128 + its number."""
        return 128 + self.signum


def resume_command(checkpoint: Path) -> str:
    """``python train.py <this run's overrides> ckpt_path=<checkpoint>`` (or, outside the
    command line, what to pass to ``train``)."""
    if not HydraConfig.initialized():
        return f"train(cfg) with the same configuration and ckpt_path={checkpoint}"
    hydra_cfg = HydraConfig.get()
    args = [o for o in hydra_cfg.overrides.task if not o.lstrip("+~").startswith("ckpt_path=")]
    if hydra_cfg.job.config_name not in (None, "train"):
        args.insert(0, f"--config-name={hydra_cfg.job.config_name}")
    return shlex.join(["python", "train.py", *args, f"ckpt_path={checkpoint}"])


class DivergenceGuard(L.Callback):
    """Stops training at the first step whose loss or weights are not finite.

    Checked after every optimiser step, before validation and before any checkpoint of that
    step is written, so the last checkpoint on disk stays finite and nothing is exported.
    Every rank sees the same verdict (one summed flag vector per step), so every rank raises
    the same :class:`TrainingDiverged`.
    """

    @override
    def on_train_batch_end(
        self,
        trainer: L.Trainer,
        pl_module: L.LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
    ) -> None:
        loss = outputs.get("loss") if isinstance(outputs, dict) else outputs
        if not isinstance(loss, torch.Tensor):  # a skipped step: the weights alone
            loss = torch.zeros((), device=pl_module.device)
        named = [(n.removeprefix("sae."), p.detach()) for n, p in pl_module.named_parameters()]
        flags = [torch.isnan(loss).any(), torch.isinf(loss).any()]
        # a parameter holding a nan or an inf has a sum that is not finite: one read pass
        # per parameter instead of a bool tensor of its size (isfinite(p).all() cost ~20% of
        # a training step on CPU); the exact test below runs only when a sum is not finite
        sums = torch.stack([p.sum(dtype=torch.float32) for _, p in named])
        flags += list(~torch.isfinite(sums))
        # one host sync per step; summed over ranks so that every rank raises the same error
        bad = trainer.strategy.reduce(torch.stack(flags).float(), reduce_op="sum").tolist()
        if any(bad):
            names = [name for name, p in named if not torch.isfinite(p).all()]
            if bad[0] == bad[1] == 0 and not names:
                return  # a sum overflowed, but every weight is finite (ranks share weights)
            raise TrainingDiverged(_diverged_message(trainer, bad[0] > 0, bad[1] > 0, names))


def _diverged_message(trainer: L.Trainer, nan: bool, inf: bool, names: list[str]) -> str:
    what = "nan" if nan else "inf" if inf else "finite"
    weights = "the weights are still finite"
    if names:
        weights = f"the parameters {', '.join(names)} are not finite"
    lr, now = _learning_rates(trainer)
    lr_text = f"module.optimizer.lr={lr:g}"
    if now != lr:
        lr_text += f" (the schedule is at {now:g})"
    if lr >= HIGH_LR:
        cause = f"the learning rate {lr_text} is too high; try 1e-4 to 1e-3 for Adam"
    else:
        cause = (
            f"the learning rate {lr_text} is not unusually high: look at the activations "
            "(module.activation_mean_sq_norm normalises them) or the precision "
            "(trainer.precision=32-true)"
        )
    kept = _last_checkpoint(trainer)
    kept_text = f"; the last finite checkpoint, {kept}, is kept" if kept else ""
    return (
        f"training diverged at step {trainer.global_step}: the loss is {what}; {weights}. "
        f"Likely cause: {cause}. Nothing was exported{kept_text}"
    )


def _learning_rates(trainer: L.Trainer) -> tuple[float, float]:
    """The configured base learning rate and the one in use at this step."""
    group = trainer.optimizers[0].param_groups[0]
    return float(group.get("initial_lr", group["lr"])), float(group["lr"])


def _last_checkpoint(trainer: L.Trainer) -> Path | None:
    """The newest checkpoint file a ModelCheckpoint wrote in this run, if any."""
    paths = [
        Path(p)
        for cb in trainer.checkpoint_callbacks
        for p in (getattr(cb, "best_model_path", ""), getattr(cb, "last_model_path", ""))
        if p and Path(p).is_file()
    ]
    return max(paths, key=lambda p: p.stat().st_mtime_ns, default=None)


class StopOnSignal(Checkpoint):
    """SIGTERM or SIGINT (Ctrl-C) stops training at the end of the current step with a
    resumable checkpoint ``dirpath/filename``, then raises :class:`TrainingInterrupted`.

    The handlers are installed when training starts and removed when it ends; until then
    the usual handling applies. A second signal while stopping is ignored (SIGKILL stops at
    once). A ``Checkpoint`` subclass, so that Lightning runs it after the other callbacks'
    step hooks: the checkpoint holds the whole step. All ranks stop at the same step.

    Args:
        dirpath: folder of the checkpoint (``${paths.output_dir}/checkpoints``).
        filename: its file name.

    Example:
        >>> StopOnSignal("outputs/run/checkpoints").path.name
        'last.ckpt'
    """

    signals = (signal.SIGTERM, signal.SIGINT)

    def __init__(self, dirpath: str | Path, filename: str = "last.ckpt") -> None:
        if not filename.endswith(".ckpt") or "/" in filename:
            raise ValueError(f"filename must be a file name ending in .ckpt, got {filename!r}")
        self.path = Path(dirpath) / filename
        self.received: int | None = None
        self._previous: dict[int, Any] = {}

    def _handler(self, signum: int, frame: Any) -> None:
        if self.received is None:
            log.warning(
                "received %s: stopping at the end of this step with a resumable checkpoint",
                signal.Signals(signum).name,
            )
        self.received = self.received or signum

    @override
    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if threading.current_thread() is not threading.main_thread():
            return  # signal handlers can only be set from the main thread
        for signum in self.signals:
            self._previous[signum] = signal.signal(signum, self._handler)
        log.info("training started: SIGTERM or Ctrl-C saves %s and stops", self.path)

    def _restore(self) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)
        self._previous = {}

    @override
    def on_train_batch_end(
        self,
        trainer: L.Trainer,
        pl_module: L.LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
    ) -> None:
        mine = self.received or (signal.SIGTERM if trainer.received_sigterm else 0)
        signum = int(mine)
        if trainer.world_size > 1:  # every rank stops at the same step
            flag = torch.tensor(float(mine), device=pl_module.device)
            signum = int(trainer.strategy.reduce(flag, reduce_op="max"))
        if signum == 0:
            return
        trainer.save_checkpoint(self.path, weights_only=False)  # all ranks; rank 0 writes
        self._restore()
        raise TrainingInterrupted(signum, trainer.global_step, self.path)

    @override
    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self.received is not None:
            log.warning("the signal came after the last step: the run finishes normally")
        self._restore()

    @override
    def on_exception(
        self, trainer: L.Trainer, pl_module: L.LightningModule, exception: BaseException
    ) -> None:
        self._restore()


def end_of_run_warnings(metrics: dict[str, float], lr: float | None = None) -> list[str]:
    """What is wrong with a run that finished (no validation, or every feature dead), and
    what to change; ``lr`` is the configured learning rate, quoted in the advice."""
    if not any(k.startswith("val/") for k in metrics):
        return [
            "validation never ran, so there are no val/* metrics: set trainer.max_steps to at "
            "least trainer.val_check_interval (or lower trainer.val_check_interval)"
        ]
    dead = metrics.get("val/dead_fraction")
    if dead is not None and math.isclose(dead, 1.0):
        return [
            "every feature is dead at the end of training (val/dead_fraction=1): the SAE "
            f"encodes nothing. Lower module.optimizer.lr{'' if lr is None else f'={lr:g}'} "
            "(1e-4 to 1e-3 for Adam) or the sparsity coefficient (loss.l1_coeff / "
            "loss.l0_coeff), or resample dead features (callbacks=resample)"
        ]
    return []
