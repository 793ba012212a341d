"""Small training callbacks."""

from __future__ import annotations

import time
from typing import Any

import lightning as L
from typing_extensions import override

from sae_lightning.metrics.recovery import best_cosines


class TokensPerSecond(L.Callback):
    """Shows training throughput (activations per second) in the progress bar and the logger.

    Measured over the last ``window`` batches with host wall time only (batch sizes are read
    from shapes), so it adds no device synchronisation.

    Args:
        window: batches per measurement.

    Example:
        >>> TokensPerSecond(window=20).window
        20
    """

    def __init__(self, window: int = 20) -> None:
        if window < 1:
            raise ValueError(f"window must be a positive number of batches, got {window}")
        self.window = window
        self._start: float | None = None
        self._tokens = 0
        self._batches = 0

    @override
    def on_train_batch_end(
        self,
        trainer: L.Trainer,
        pl_module: L.LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
    ) -> None:
        now = time.perf_counter()
        if self._start is None:  # the first batch includes start-up costs: not counted
            self._start = now
            return
        self._tokens += int(batch.shape[0])
        self._batches += 1
        if self._batches >= self.window:
            pl_module.log("train/tokens_per_sec", self._tokens / (now - self._start), prog_bar=True)
            self._start, self._tokens, self._batches = now, 0, 0

    @override
    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._start, self._tokens, self._batches = (
            None,
            0,
            0,
        )  # validation time is not training time


class DictionaryRecovery(L.Callback):
    """Logs ``val/mmcs`` and ``val/recovered`` on data with a known dictionary (synthetic).

    ``val/mmcs`` is the mean over true features of the best cosine similarity with a decoder
    row; ``val/recovered`` the fraction of true features with one above ``threshold``. The
    true directions are the datamodule's ``dictionary.directions``.

    Args:
        threshold: Cosine above which a true feature counts as recovered.
    """

    def __init__(self, threshold: float = 0.9) -> None:
        if not 0 < threshold <= 1:
            raise ValueError(f"threshold must be in (0, 1], got {threshold!r}")
        self.threshold = threshold

    @override
    def on_validation_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        dictionary = getattr(trainer.datamodule, "dictionary", None)
        if dictionary is None:
            raise ValueError(
                "DictionaryRecovery needs a datamodule with a known dictionary (data=synthetic), "
                f"got {type(trainer.datamodule).__name__}"
            )
        true = dictionary.directions.to(pl_module.device)
        cosines = best_cosines(true, pl_module.sae.W_dec.detach())
        pl_module.log("val/mmcs", cosines.mean(), prog_bar=True)
        pl_module.log("val/recovered", (cosines > self.threshold).double().mean())
