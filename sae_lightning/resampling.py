"""Anthropic-style resampling of dead features (Towards Monosemanticity, 2023), as a Callback."""

from __future__ import annotations

import logging
from typing import Any

import lightning as L
import torch
from torch import Tensor
from typing_extensions import override

from sae_lightning.metrics import FeatureDensity
from sae_lightning.saes.transcoder import TranscoderSAE
from sae_lightning.sparse import SparseEntries

log = logging.getLogger(__name__)


class DeadFeatureResampler(L.Callback):
    """At configured steps, re-initialise the features that never fired since the previous
    resampling (or the start) from inputs the SAE reconstructs badly.

    For each dead feature an input is drawn with probability proportional to the square of
    its reconstruction loss (from ``sample_tokens`` fresh activations). The decoder row
    becomes that input (minus ``b_dec`` when the SAE subtracts it) at unit norm, the encoder
    column the same direction at ``encoder_scale`` times the mean norm of the live encoder
    columns, the feature's other parameters are reset (biases to 0), and the optimizer's
    per-parameter state (Adam's moments) of those features is zeroed.

    Args:
        resample_steps: Optimiser steps after which to resample (e.g. ``[2500, 5000]``).
        sample_tokens: Activations scored to pick the new directions.
        encoder_scale: New encoder columns' norm relative to the live ones' mean norm.

    Example:
        >>> DeadFeatureResampler(resample_steps=[100, 200]).resample_steps
        [100, 200]
    """

    def __init__(
        self, resample_steps: list[int], sample_tokens: int = 8192, encoder_scale: float = 0.2
    ) -> None:
        steps = list(resample_steps)
        if any(isinstance(s, bool) or not isinstance(s, int) or s < 1 for s in steps):
            raise ValueError(f"resample_steps must be positive integers, got {steps}")
        if sample_tokens < 1:
            raise ValueError(f"sample_tokens must be a positive integer, got {sample_tokens}")
        if not encoder_scale > 0:
            raise ValueError(f"encoder_scale must be > 0, got {encoder_scale}")
        self.resample_steps = sorted(set(steps))
        self.sample_tokens, self.encoder_scale = sample_tokens, encoder_scale
        self.density: FeatureDensity | None = None
        self.history: list[dict[str, int]] = []
        """One entry per resampling: ``step`` and ``resampled`` (number of features)."""

    @override
    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        if isinstance(pl_module.sae, TranscoderSAE):
            raise ValueError(
                f"callbacks=resample does not support sae={pl_module.sae.architecture}: a "
                "dead transcoder latent needs an input direction for its encoder and an output "
                "direction for its decoder, and the resampler draws one; train without it "
                "(callbacks=default)"
            )
        # a Metric held by a Callback is not moved with the module
        self.density = FeatureDensity(pl_module.sae.d_sae).to(pl_module.device)

    @override
    def on_train_batch_end(
        self,
        trainer: L.Trainer,
        pl_module: L.LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
    ) -> None:
        if not isinstance(outputs, dict) or "feature_acts" not in outputs:
            raise TypeError(
                "DeadFeatureResampler needs training_step to return a dict with "
                f"'feature_acts' (SAEModule does), got {type(outputs).__name__}"
            )
        assert self.density is not None
        acts = outputs["feature_acts"]  # dense [..., d_sae], or the sparse path's entries
        self.density.update(acts if isinstance(acts, SparseEntries) else acts.flatten(0, -2))
        if trainer.global_step in self.resample_steps:
            n = self.resample(trainer, pl_module)
            self.history.append({"step": trainer.global_step, "resampled": n})
            pl_module.log("train/resampled_features", float(n))

    @torch.no_grad()
    def _directions(self, trainer: L.Trainer, pl_module: Any, n_dead: int) -> Tensor:
        """``n_dead`` input directions drawn by squared reconstruction loss (rank 0)."""
        sae = pl_module.sae
        x = trainer.datamodule.sample_activations(self.sample_tokens).to(pl_module.device)
        x = pl_module.to_sae_units(x)
        was_training = sae.training
        sae.eval()  # no side effects (TopK's firing counts, BatchTopK's threshold)
        loss = (sae(x).x_hat - x).pow(2).sum(-1)  # [n]
        sae.train(was_training)
        weights = loss.pow(2).double().clamp_min(1e-30)
        pick = torch.multinomial(weights, n_dead, replacement=n_dead > x.shape[0])
        chosen = x[pick]  # [n_dead, d_in]
        return chosen - sae.b_dec if sae.apply_b_dec_to_input else chosen

    @torch.no_grad()
    def resample(self, trainer: L.Trainer, pl_module: Any) -> int:
        """Resample the features dead since the last call; returns how many there were."""
        assert self.density is not None
        sae = pl_module.sae
        dead = (self.density.compute() == 0).nonzero().squeeze(-1)  # [n_dead]
        self.density.reset()
        if dead.numel() == 0:
            return 0
        directions = self._directions(trainer, pl_module, dead.numel())
        directions = trainer.strategy.broadcast(directions, src=0)  # every rank the same
        alive = torch.ones(sae.d_sae, dtype=torch.bool, device=dead.device)
        alive[dead] = False
        norms = sae.W_enc.norm(dim=0)  # [d_sae]
        mean_alive = float(norms[alive].mean()) if bool(alive.any()) else 1.0
        sae.reinit_features(dead, directions, self.encoder_scale * mean_alive)
        if hasattr(sae, "tokens_since_fired"):
            sae.tokens_since_fired[dead] = 0
        for optimizer in trainer.optimizers:
            reset_feature_state(optimizer, sae, dead)
        log.info("step %d: resampled %d dead features", trainer.global_step, dead.numel())
        return int(dead.numel())


def reset_feature_state(optimizer: torch.optim.Optimizer, sae: Any, index: Tensor) -> None:
    """Zero the optimizer's per-parameter tensors (Adam's moments) of features ``index``."""
    for name, dim in sae.feature_params.items():
        state = optimizer.state.get(getattr(sae, name), {})
        for value in state.values():
            if isinstance(value, Tensor) and value.ndim > dim and value.shape[dim] == sae.d_sae:
                value.index_fill_(dim, index, 0.0)
