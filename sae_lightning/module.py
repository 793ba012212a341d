"""``SAEModule``: the LightningModule that trains an SAE on live activations."""

from __future__ import annotations

import logging
from typing import Any, Literal

import lightning as L
import torch
from jaxtyping import Float
from torch import Tensor
from torchmetrics import MeanMetric

from sae_lightning.metrics import (
    DownstreamLoss,
    ExplainedVariance,
    FeatureDensity,
    MeanL0,
    dead_fraction,
    log10_density,
)
from sae_lightning.models import move_model
from sae_lightning.paired import PairedSpec
from sae_lightning.saes.base import SAE, SAEOutput
from sae_lightning.sparse import SparseEntries
from sae_lightning.spec import ActivationSpec
from sae_lightning.validation import SplicedValidation

log = logging.getLogger(__name__)


class SAEModule(SplicedValidation, L.LightningModule):
    """Trains ``sae`` on activation batches; validates on token contexts with the SAE spliced in.

    Args:
        sae: the autoencoder (``conf/sae/``).
        loss: callable ``(x, out, sae, step) -> LossOutput`` (``conf/loss/``).
        optimizer: partial optimizer factory taking the parameters (``_partial_: true``).
        scheduler: partial learning-rate scheduler factory ``(optimizer, total_steps)``
            (``_partial_: true``, e.g. ``sae_lightning.schedules.warmup_decay``), stepped
            every optimiser step; ``None``: a constant learning rate.
        b_dec_init: how ``b_dec`` is initialised from data at the start of a fresh run.
        b_dec_init_tokens: activations used for that initialisation.
        dead_window_tokens: ``train/dead_fraction`` counts features silent over this many tokens.
        unit_norm_decoder: keep decoder rows at unit norm (project gradients, renormalise).
        activation_mean_sq_norm: scale the activations by one constant, estimated at the
            start from ``b_dec_init_tokens`` of them, so that their mean squared norm is this
            value (e.g. d_in); the SAE is trained on the scaled activations and the constant
            is folded into the weights on export. ``None``: no normalisation.
    """

    def __init__(
        self,
        sae: SAE,
        loss: Any,
        optimizer: Any,
        scheduler: Any = None,
        b_dec_init: Literal["geometric_median", "mean", "zeros"] = "geometric_median",
        b_dec_init_tokens: int = 8192,
        dead_window_tokens: int = 1_000_000,
        unit_norm_decoder: bool = True,
        activation_mean_sq_norm: float | None = None,
    ) -> None:
        super().__init__()
        self.save_hyperparameters(ignore=["sae", "loss", "optimizer", "scheduler"])
        self.sae, self.loss_fn, self.optimizer_factory = sae, loss, optimizer
        self.scheduler_factory = scheduler
        self.b_dec_init, self.b_dec_init_tokens = b_dec_init, b_dec_init_tokens
        if activation_mean_sq_norm is not None and not activation_mean_sq_norm > 0:
            raise ValueError(
                f"activation_mean_sq_norm must be > 0 or null, got {activation_mean_sq_norm!r}"
            )
        self.activation_mean_sq_norm = activation_mean_sq_norm
        # x_train = act_scale * x; 1 without normalisation. In the checkpoint, for resuming.
        self.register_buffer("act_scale", torch.tensor(1.0))
        self.dead_window_tokens, self.unit_norm_decoder = dead_window_tokens, unit_norm_decoder
        d_out, d_sae = sae.d_out, sae.d_sae  # d_out: the reconstruction's width
        for split in ("train", "val"):
            setattr(self, f"{split}_mse", MeanMetric())
            setattr(self, f"{split}_l1", MeanMetric())
            setattr(self, f"{split}_ev", ExplainedVariance(d_out))
            setattr(self, f"{split}_l0", MeanL0())
        self.density = FeatureDensity(d_sae)
        self.val_density = FeatureDensity(d_sae)
        self.val_downstream = DownstreamLoss()
        self._window_tokens = 0
        # what is read from which model; a plain attribute, so the frozen model it holds is
        # never a submodule and never checkpointed. None: model-free (synthetic) data
        self.__dict__["spec"] = None

    def set_spec(self, spec: ActivationSpec | PairedSpec) -> None:
        """Hand over what the data module reads (the same :class:`ActivationSpec`):
        validation splices the SAE back into ``spec.model`` at ``spec.hook_name`` (into each
        model of a :class:`PairedSpec`, its own part)."""
        self.__dict__["spec"] = spec
        if isinstance(spec, PairedSpec):  # each model's loss recovered: val/A/*, val/B/*
            self.val_downstream_sources = torch.nn.ModuleList(
                DownstreamLoss() for _ in spec.sources
            )

    @property
    def frozen(self):
        """The frozen transformer, or None for model-free data."""
        return None if self.spec is None else self.spec.model

    def on_fit_start(self) -> None:
        for model in self.spec.models if self.spec is not None else ():
            move_model(model, self.device)
        if self.trainer.ckpt_path is not None:
            return  # resumed: the weights are restored, re-initialising would change them
        x = None
        if self.b_dec_init != "zeros" or self.activation_mean_sq_norm is not None:
            x = self.trainer.datamodule.sample_activations(self.b_dec_init_tokens).to(self.device)
            x = x.float()
        if self.activation_mean_sq_norm is not None:
            mean_sq = x.pow(2).sum(-1).mean().clamp_min(1e-12)
            self.act_scale.fill_(float((self.activation_mean_sq_norm / mean_sq).sqrt()))
            log.info(
                "activations scaled by %.4g to a mean squared norm of %g",
                float(self.act_scale),
                self.activation_mean_sq_norm,
            )
        if self.b_dec_init != "zeros":  # b_dec lives where the reconstruction does
            self.sae.init_b_dec(self.sae.split_target(self.to_sae_units(x))[1], self.b_dec_init)
        if self.unit_norm_decoder:
            self.sae.set_decoder_norm_to_unit_norm()

    def forward(self, x: Float[Tensor, "batch d_in"]):
        return self.sae(x)

    def to_sae_units(self, x: Float[Tensor, "batch d_in"]) -> Float[Tensor, "batch d_in"]:
        """Raw activations in the units the SAE trains on: float32, times ``act_scale``.
        The one place the scale is applied (the export folds it into the weights)."""
        return x.float() * self.act_scale

    def _update_recon(self, split: str, x: Tensor, out, lo) -> None:
        # training calls the metrics (forward: batch value for the step log, and accumulate);
        # validation only accumulates and logs the epoch value
        step = split == "train"
        for name, args in (
            ("mse", (lo.mse.detach(),)),
            ("l1", (lo.l1.detach(),)),
            ("ev", (x, out.x_hat.detach())),
            ("l0", (_codes(out),)),
        ):
            metric = getattr(self, f"{split}_{name}")
            metric(*args) if step else metric.update(*args)
            key = "explained_variance" if name == "ev" else name
            self.log(
                f"{split}/{key}",
                metric,
                on_step=step,
                on_epoch=not step,
                prog_bar=name in ("l0", "ev"),
            )

    def training_step(
        self, batch: Float[Tensor, "batch d_in"], batch_idx: int
    ) -> dict[str, Tensor]:
        """The loss (``"loss"``) and the detached codes (``"feature_acts"``, for callbacks):
        the dense ``[batch, d_sae]`` activations, or their entries (a ``SparseEntries``)
        when the step took the sparse path."""
        x, target = self.sae.split_target(self.to_sae_units(batch))
        out = self.sae(x)
        lo = self.loss_fn(target, out, self.sae, self.global_step)
        if self._writes_logs():
            self._update_recon("train", target, out, lo)
        self.log("train/loss", lo.loss.detach())
        self.log("train/sparse_path", float(out.codes is not None))  # 1: gather/scatter step
        if lo.aux is not None:
            self.log("train/aux", lo.aux.detach())
        self.density.update(_codes(out))
        self._window_tokens += batch.shape[0]
        if self._window_tokens >= self.dead_window_tokens:
            self._log_density("train", self.density)
            self._window_tokens = 0
        return {"loss": lo.loss, "feature_acts": _codes(out)}

    def _writes_logs(self) -> bool:
        """Whether the logger records this step (every ``trainer.log_every_n_steps``): only
        then are the training metrics computed, since a step's values are logged or lost (the
        float64 explained variance alone was ~5% of a CPU step). Outside a trainer, always."""
        connector = getattr(self._trainer, "_logger_connector", None)
        return connector is None or bool(connector.should_update_logs)

    def _log_density(self, split: str, metric: FeatureDensity) -> None:
        density = metric.compute()
        self.log(f"{split}/dead_fraction", dead_fraction(density))
        experiment = getattr(self.logger, "experiment", None)
        if hasattr(experiment, "add_histogram"):
            experiment.add_histogram(
                f"{split}/log10_feature_density", log10_density(density).cpu(), self.global_step
            )
        metric.reset()

    def on_after_backward(self) -> None:
        if self.unit_norm_decoder:
            self.sae.remove_gradient_parallel_to_decoder_directions()

    def optimizer_step(self, *args: Any, **kwargs: Any) -> None:
        super().optimizer_step(*args, **kwargs)
        if self.unit_norm_decoder:
            self.sae.set_decoder_norm_to_unit_norm()

    def _training_buffers(self) -> dict[str, Tensor]:
        """The SAE's buffers outside its state dict (training state such as TopK's
        ``tokens_since_fired``): never exported, but saved and restored with a checkpoint."""
        exported = self.sae.state_dict()
        return {n: b for n, b in self.sae.named_buffers() if n not in exported}

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        # lets a .ckpt be turned back into an SAE without the Hydra config that made it
        checkpoint["sae_config"] = self.sae.config()
        checkpoint["sae_training_buffers"] = {
            n: b.detach().cpu().clone() for n, b in self._training_buffers().items()
        }

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        saved = checkpoint.get("sae_training_buffers") or {}
        for name, buffer in self._training_buffers().items():
            if name in saved:  # older checkpoints lack them: the counters restart
                buffer.copy_(saved[name].to(buffer.device))

    def configure_optimizers(self) -> dict:
        opt = self.optimizer_factory(self.sae.parameters())
        if self.scheduler_factory is None:
            return {"optimizer": opt}
        sched = self.scheduler_factory(opt, total_steps=self.trainer.max_steps)
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}


def _codes(out: SAEOutput) -> Tensor | SparseEntries:
    """The detached codes for the metrics: the sparse path's entries when the step took it
    (O(nnz) counts), else the dense ``[batch, d_sae]`` activations."""
    if out.codes is None:
        return out.feature_acts.detach()
    return out.codes.with_values(out.codes.values.detach())
