"""``SplicedValidation``: how an :class:`~sae_lightning.module.SAEModule` validates.

On token contexts, the frozen model's clean forward gives the activations and logits; the
SAE reconstructs the trained positions, and the model is run again with the reconstruction
spliced in (a transcoder's at its output hook; a crosscoder's part for each model of a
pair) and with them zeroed, for loss recovered. On model-free data (activation batches),
reconstruction metrics only. Validation runs in float32 whatever ``trainer.precision``.

The mixin reads what ``SAEModule`` sets up: ``sae``, ``spec``, ``frozen``, ``loss_fn``,
``act_scale``, ``to_sae_units``, ``_update_recon``, ``_log_density``, and the metrics
``val_density``, ``val_downstream`` and ``val_downstream_sources``.
"""

from __future__ import annotations

import torch
from jaxtyping import Float, Int
from torch import Tensor

from sae_lightning.metrics import per_token_ce_and_kl
from sae_lightning.paired import PairedSpec
from sae_lightning.spec import ActivationSpec


class SplicedValidation:
    """The validation steps of ``SAEModule`` (see the module doc)."""

    def validation_step(
        self, batch: list[Int[Tensor, "b n_ctx"]] | Float[Tensor, "b d_in"], batch_idx: int
    ) -> None:
        # float32 whatever trainer.precision: the frozen model's CE and the SAE's metrics
        # are measured as the exported (float32) SAE will be used
        with torch.autocast(self.device.type, enabled=False):
            self._validate(batch)

    def _validate(self, batch: list[Int[Tensor, "b n_ctx"]] | Float[Tensor, "b d_in"]) -> None:
        if self.frozen is None:
            if not (isinstance(batch, Tensor) and batch.is_floating_point()):
                raise RuntimeError(
                    "SAEModule has no frozen model: call set_spec(spec) first, "
                    "or validate on activation batches [b, d_in] (model-free data)"
                )
            self._validate_activations(batch)
            return
        tokens = batch[0]
        if isinstance(self.spec, PairedSpec):
            self._validate_paired(tokens)
            return
        logits_clean, acts = self.spec.logits_and_capture(tokens)  # acts: [b, pos, d_in]
        ce_zero = self.zero_ablation_ce(tokens, logits_clean, acts)
        self.validate_spliced(tokens, logits_clean, acts, ce_zero)

    def zero_ablation_ce(
        self,
        tokens: Int[Tensor, "b n_ctx"],
        logits_clean: Tensor,
        acts: Tensor,
        spec: ActivationSpec | None = None,
    ) -> Tensor:
        """Per-token CE with the trained positions zeroed (at the splice hook: a
        transcoder's output hook): the baseline of loss recovered (it does not depend on the
        SAE, so several SAEs share it). ``spec``: one model of a pair (default: the module's)."""
        spec = spec or self.spec
        spliced = spec.spliced_part(acts)
        return _spliced_ce(
            spec, tokens, logits_clean, acts, torch.zeros_like(spec.trained(spliced))
        )[1]

    def validate_spliced(
        self, tokens: Int[Tensor, "b n_ctx"], logits_clean: Tensor, acts: Tensor, ce_zero: Tensor
    ) -> None:
        """The validation metrics of one batch from its clean forward (``logits_clean``,
        ``acts`` [b, pos, d_in]): reconstruction, then the model run with the SAE spliced in."""
        spec = self.spec
        # x_hat goes back to raw units below; a transcoder's target is its output hook's part
        x, target = self.sae.split_target(self.to_sae_units(spec.trained(acts)))
        out = self.sae(x)
        lo = self.loss_fn(target, out, self.sae, self.global_step)
        self._update_recon("val", target, out, lo)
        self.val_density.update(out.feature_acts)
        self.log("val/loss", lo.loss, on_epoch=True, batch_size=len(tokens))
        ce_clean, ce_sae, kl = _spliced_ce(
            spec, tokens, logits_clean, acts, out.x_hat / self.act_scale
        )
        self.val_downstream.update(ce_clean, ce_sae, ce_zero, kl)

    def _validate_paired(self, tokens: Int[Tensor, "b n_ctx"]) -> None:
        """Reconstruction of ``[x_A | x_B]``, then each model run with its own part of the
        reconstruction spliced in (and zero-ablated, for the baseline)."""
        spec: PairedSpec = self.spec
        clean = [s.logits_and_capture(tokens) for s in spec.sources]  # [(logits, acts)]
        rows = [s.trained(acts) for s, (_, acts) in zip(spec.sources, clean, strict=True)]
        x = self.to_sae_units(torch.cat(rows, -1))
        out = self.sae(x)
        lo = self.loss_fn(x, out, self.sae, self.global_step)
        self._update_recon("val", x, out, lo)
        self.val_density.update(out.feature_acts)
        self.log("val/loss", lo.loss, on_epoch=True, batch_size=len(tokens))
        parts = spec.split(out.x_hat / self.act_scale)
        for metric, s, (logits, acts), part in zip(
            self.val_downstream_sources, spec.sources, clean, parts, strict=True
        ):
            ce_zero = self.zero_ablation_ce(tokens, logits, acts, spec=s)
            ce_clean, ce_sae, kl = _spliced_ce(s, tokens, logits, acts, part)
            metric.update(ce_clean, ce_sae, ce_zero, kl)

    def _validate_activations(self, x: Float[Tensor, "b d_in"]) -> None:
        """Reconstruction metrics only: model-free data (synthetic) has no logits to splice."""
        x, target = self.sae.split_target(self.to_sae_units(x))
        out = self.sae(x)
        lo = self.loss_fn(target, out, self.sae, self.global_step)
        self._update_recon("val", target, out, lo)
        self.val_density.update(out.feature_acts)
        self.log("val/loss", lo.loss, on_epoch=True, batch_size=len(x))

    def on_validation_epoch_end(self) -> None:
        if isinstance(self.spec, PairedSpec):
            self._log_paired_downstream()
        elif self.frozen is not None:
            for key, value in self.val_downstream.compute().items():
                self.log(f"val/{key}", value, prog_bar=key == "loss_recovered", sync_dist=False)
            self.val_downstream.reset()
        self._log_density("val", self.val_density)

    def _log_paired_downstream(self) -> None:
        """``val/A/<key>`` and ``val/B/<key>`` per model, and ``val/<key>`` their mean."""
        per_source = [metric.compute() for metric in self.val_downstream_sources]
        for name, values in zip("AB", per_source, strict=False):
            for key, value in values.items():
                self.log(f"val/{name}/{key}", value, sync_dist=False)
        for key in per_source[0]:
            mean = torch.stack([values[key] for values in per_source]).mean()
            self.log(f"val/{key}", mean, prog_bar=key == "loss_recovered", sync_dist=False)
        for metric in self.val_downstream_sources:
            metric.reset()


def _spliced_ce(
    spec: ActivationSpec, tokens: Tensor, logits_clean: Tensor, acts: Tensor, rows: Tensor
) -> tuple[Tensor, Tensor, Tensor]:
    """Per-token (CE clean, CE with ``rows`` spliced in at the trained positions of the
    splice hook, KL) for one model (:func:`per_token_ce_and_kl`)."""
    spliced = spec.with_trained(spec.spliced_part(acts), rows)
    return per_token_ce_and_kl(logits_clean, spec.run_with_replacement(tokens, spliced), tokens)
