"""The training progress bar: steps of ``max_steps`` with an ETA, and the tokens seen.

The activation stream is one endless epoch, so Lightning's default bar says "Epoch 0" with
no total (or "Epoch 0/-2"). This one counts optimiser steps against ``trainer.max_steps``,
so tqdm shows the rate and the time left, and its postfix holds the tokens seen so far next
to the metrics logged with ``prog_bar=True`` (L0, explained variance, tokens/s, loss
recovered).
"""

from __future__ import annotations

from typing import Any

import lightning as L
from lightning.pytorch.callbacks import TQDMProgressBar
from typing_extensions import override


def human(n: float) -> str:
    """``1234567`` -> ``"1.23M"``: a count for a progress bar."""
    for unit, size in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if abs(n) >= size:
            return f"{n / size:.3g}{unit}"
    return f"{n:.0f}"


_SHORT = (
    ("train/", ""),
    ("val/", "val_"),
    ("explained_variance", "ev"),
    ("loss_recovered", "recovered"),
    ("tokens_per_sec", "tok/s"),
)


def _short(key: str) -> str:
    """A log key as the bar shows it: ``val/loss_recovered`` -> ``val_recovered``."""
    for long, short in _SHORT:
        key = key.replace(long, short)
    return key


class StepProgressBar(TQDMProgressBar):
    """A tqdm bar over optimiser steps (``trainer.max_steps``) with tokens seen.

    Args:
        refresh_rate: Steps between updates of the bar.
        tokens_per_step: Activations per optimiser step; None reads ``batch_size`` of the
            trainer's datamodule (all ranks together: times the world size).
    """

    def __init__(self, refresh_rate: int = 1, tokens_per_step: int | None = None) -> None:
        super().__init__(refresh_rate=refresh_rate)
        if tokens_per_step is not None and tokens_per_step < 1:
            raise ValueError(f"tokens_per_step must be a positive integer, got {tokens_per_step}")
        self.tokens_per_step = tokens_per_step

    def _tokens_per_step(self, trainer: L.Trainer) -> int | None:
        if self.tokens_per_step is not None:
            return self.tokens_per_step
        batch = getattr(trainer.datamodule, "batch_size", None)
        return None if batch is None else int(batch) * trainer.world_size

    @override
    def on_train_epoch_start(self, trainer: L.Trainer, *_: Any) -> None:
        super().on_train_epoch_start(trainer)
        if trainer.max_steps and trainer.max_steps > 0:
            self.train_progress_bar.reset(total=trainer.max_steps)
            self.train_progress_bar.initial = trainer.global_step  # a resumed run
            self.train_progress_bar.n = trainer.global_step
        self.train_progress_bar.set_description("training")

    @override
    def on_train_batch_end(
        self,
        trainer: L.Trainer,
        pl_module: L.LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
    ) -> None:
        bar = self.train_progress_bar
        step = trainer.global_step
        if bar is None or bar.disable or not self._should_update(step, bar.total):
            return
        bar.n = step
        bar.set_postfix(self.get_metrics(trainer, pl_module), refresh=False)
        bar.refresh()

    @override
    def get_metrics(self, trainer: L.Trainer, pl_module: L.LightningModule) -> dict[str, Any]:
        items = {_short(k): v for k, v in super().get_metrics(trainer, pl_module).items()}
        items.pop("v_num", None)
        if isinstance(items.get("tok/s"), (int, float)):
            items["tok/s"] = human(items["tok/s"])  # 3.19k, not tqdm's 3.19e+3
        per_step = self._tokens_per_step(trainer)
        if per_step is not None:
            return {"tokens": human(trainer.global_step * per_step), **items}
        return items
