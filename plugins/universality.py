"""Universality: does a feature reappear in another SAE, on the same model or on another one?

Per feature: the best-matching feature of the ``compare_with`` SAE by activation
correlation on the same tokens (``batch.other_acts``), and the correlation of the two
features' logit weights (:func:`plugins._logits.logit_weights`, Pearson over the vocab).
The ``compare_with`` SAE may read another model with the same tokenizer
(``ctx.other_model``; :mod:`sae_lightning.analysis.comparison`): both models then run on the
same tokens, and each SAE's logit weights go through its own model's unembedding.

Population level (``summary``): the median best-match ``|correlation|`` of the live features
(firing density at least ``min_density``; dead and ultralow-density features left out; the
match is the largest ``|correlation|``, as for neurons in :mod:`plugins.not_a_neuron`),
against neuron baselines. Per feature, its best correlation with any MLP neuron of its own
model (the score of a feature that is merely a neuron): streamed here (``neuron_baseline:
true``, memory ``8 * n_features * d_in`` bytes) or, when false, the ``NEURON_MAX_CORR``
artefact of :mod:`plugins.not_a_neuron` if that criterion ran. Across models, also the
paper's baseline (Bricken et al. 2023 report median best-match correlations of 0.72 for
features and 0.46 for neurons across two transformers): each MLP neuron of model A matched
against every MLP neuron of model B (dense Pearson sums, ``8 * d_mlp_a * d_mlp_b`` bytes).
"""

from __future__ import annotations

import statistics
from typing import ClassVar

import torch
from jaxtyping import Float
from torch import Tensor
from typing_extensions import override

from plugins._common import neuron_mean, number
from plugins._logits import LOGIT_CHUNK, logit_weights
from sae_lightning.analysis.artefacts import NEURON_MAX_CORR
from sae_lightning.analysis.criterion import AnalysisBatch, AnalysisContext, Criterion
from sae_lightning.analysis.records import UniversalityResult
from sae_lightning.metrics.correlation import StreamingPearson, max_correlation
from sae_lightning.metrics.density import FeatureDensity


def row_pearson(a: Float[Tensor, "f v"], b: Float[Tensor, "f v"]) -> Float[Tensor, " f"]:
    """Pearson correlation of each row of ``a`` with the same row of ``b`` (0 if constant)."""
    a = a.double() - a.double().mean(dim=1, keepdim=True)
    b = b.double() - b.double().mean(dim=1, keepdim=True)
    denom = a.norm(dim=1) * b.norm(dim=1)
    return torch.where(denom > 0, (a * b).sum(dim=1) / denom.where(denom > 0, 1.0), 0.0)


class Universality(Criterion):
    """Best match of each feature in the ``compare_with`` SAE (on its own model, if another).

    A feature that is constant over the pass (never fired) gets verdict None.

    Args:
        threshold: The verdict is ``best-match activation correlation >= threshold``.
        neuron_baseline: Stream feature-vs-neuron correlations for the population baseline,
            and across models neuron-vs-neuron correlations (the paper's baseline).
        min_density: Features firing on a smaller fraction of the tokens are left out of
            the population medians (dead and the paper's "ultralow density" features).
    """

    name: ClassVar[str] = UniversalityResult.criterion
    headline: ClassVar[str | None] = UniversalityResult.headline
    uses = (NEURON_MAX_CORR,)  # the neuron baseline when neuron_baseline is false
    needs_compare_with: ClassVar[bool] = True  # analyze.py refuses it without compare_with

    def __init__(
        self, threshold: float = 0.7, neuron_baseline: bool = True, min_density: float = 1e-5
    ) -> None:
        super().__init__()
        if not 0 < threshold <= 1:
            raise ValueError(f"threshold must be in (0, 1], got {threshold!r}")
        if not 0 <= min_density < 1:
            raise ValueError(f"min_density must be in [0, 1), got {min_density!r}")
        self.threshold, self.neuron_baseline = threshold, neuron_baseline
        self.min_density = min_density
        self.neuron_matches: tuple[Tensor, Tensor] | None = None

    @override
    def setup_metrics(self, n_features: int, ctx: AnalysisContext) -> None:
        self.enabled = ctx.other_sae is not None
        self.cross = self.enabled and ctx.other_model is not None and self.neuron_baseline
        self.density = FeatureDensity(n_features)
        if self.enabled:
            self.other = StreamingPearson(n_features, int(ctx.other_sae.W_dec.shape[0]))
        if self.neuron_baseline:
            d_in = int(ctx.sae.W_dec.shape[1])
            self.neurons = StreamingPearson(n_features, d_in, y_shift=neuron_mean(ctx))
        if self.cross:  # float64 sums of the dense neurons: exact enough without a shift
            d_a, d_b = int(ctx.model.cfg.d_mlp), int(ctx.other_model.cfg.d_mlp)
            self.neuron_pairs = StreamingPearson(d_a, d_b)

    @override
    def update(self, batch: AnalysisBatch, ctx: AnalysisContext) -> None:
        e = batch.firing()  # features are sparse: cross sums cost O(nnz * d_other)
        self.density.update(e)
        if self.enabled:
            if batch.other_acts is None:
                raise ValueError("universality: ctx.other_sae is set but batch.other_acts is None")
            self.other.update_entries(e.rows, e.cols, e.values, batch.other_acts.flatten(0, 1))
        if self.neuron_baseline:
            self.neurons.update_entries(e.rows, e.cols, e.values, batch.neuron_acts.flatten(0, 1))
        if self.cross:
            if batch.mlp_neurons is None or batch.other_mlp_neurons is None:
                raise ValueError(
                    "universality: ctx.other_model is set but the batch lacks the two models' "
                    "MLP neurons (mlp_neurons, other_mlp_neurons)"
                )
            mine, theirs = batch.mlp_neurons.flatten(0, 1), batch.other_mlp_neurons.flatten(0, 1)
            self.neuron_pairs.update(mine, theirs)

    def _neuron_corr(self, ctx: AnalysisContext) -> list[float | None]:
        """Per feature, ``|corr|`` with its best MLP neuron (None where not available)."""
        if self.neuron_baseline:
            matrix = self.neurons.compute().view(len(ctx.features), -1)  # [F, d_in]
            return max_correlation(matrix)[0].abs().tolist()
        extra = ctx.artefacts.find(NEURON_MAX_CORR)
        return [extra[f] for f in ctx.features] if extra else [None] * len(ctx.features)

    def _match_neurons(self) -> None:
        """Each MLP neuron of model A's best match among model B's: ``neuron_matches`` is
        (signed correlation ``[d_mlp_a]``, B neuron ``[d_mlp_a]``); a constant A neuron has
        correlation 0 (and is left out of the median)."""
        matrix = self.neuron_pairs.compute()  # [d_mlp_a, d_mlp_b]
        corr, match = max_correlation(matrix)
        self.neuron_matches = (corr.cpu(), match.cpu())
        self.neuron_live = (matrix.abs().amax(dim=1) > 0).cpu()  # [d_mlp_a]

    @staticmethod
    def _logit_corr(ctx: AnalysisContext, match: Tensor) -> Float[Tensor, " f"]:
        """Pearson correlation of each feature's logit weights with its match's (chunked),
        each through its own model; NaN (reported as None) for a hook without logit weights."""
        model_b = ctx.other_model if ctx.other_model is not None else ctx.model
        hook_b = ctx.other_hook_name or ctx.hook_name
        out = []
        for start in range(0, len(ctx.features), LOGIT_CHUNK):
            rows = ctx.features[start : start + LOGIT_CHUNK]
            mine = logit_weights(ctx.model, ctx.write_hook, ctx.sae.W_dec[rows])
            other = ctx.other_sae.W_dec[match[start : start + LOGIT_CHUNK]]
            theirs = logit_weights(model_b, hook_b, other)
            if mine is None or theirs is None:
                return torch.full((len(ctx.features),), float("nan"))
            width = min(mine.shape[1], theirs.shape[1])  # one tokenizer; unused padding dropped
            out.append(row_pearson(mine[:, :width], theirs[:, :width].to(mine.device)).cpu())
        return torch.cat(out)

    @override
    def results(self, ctx: AnalysisContext) -> dict[int, UniversalityResult]:
        neuron = self._neuron_corr(ctx)
        density = self.density.compute().reshape(-1).tolist()  # [F] (torchmetrics squeezes F=1)
        if not self.enabled:
            note = "no compare_with SAE: universality needs a second SAE on the same tokens"
            return {
                f: UniversalityResult(note=note, neuron_corr=neuron[row])
                for row, f in enumerate(ctx.features)
            }
        if self.cross:
            self._match_neurons()
        matrix = self.other.compute().view(len(ctx.features), -1)  # [F, d_other]
        corr, match = max_correlation(matrix)  # [F] each
        constant = matrix.abs().amax(dim=1) == 0  # never fired (or constant): no verdict
        logit_corr = self._logit_corr(ctx, match)  # [F]
        out: dict[int, UniversalityResult] = {}
        for row, f in enumerate(ctx.features):
            value = float(corr[row])
            out[f] = UniversalityResult(
                best_match=int(match[row]),
                activation_corr=number(value),
                logit_weight_corr=number(logit_corr[row]),
                neuron_corr=neuron[row],
                density=density[row],
                verdict=None if constant[row] else value >= self.threshold,
            )
        return out

    @override
    def summary(self, results: dict[int, UniversalityResult]) -> dict[str, float]:
        out = super().summary(results)
        live = [
            r for r in results.values() if r.density is None or r.density >= self.min_density
        ]  # (no density: a result without a second SAE, or read from an older file)
        best = [abs(r.activation_corr) for r in live if r.activation_corr is not None]
        neurons = [r.neuron_corr for r in live if r.neuron_corr is not None]
        out["min_density"], out["n_live_features"] = self.min_density, float(len(live))
        if best:
            out["median_best_match_corr"] = statistics.median(best)
        if neurons:
            out["median_neuron_baseline_corr"] = statistics.median(neurons)
        if self.neuron_matches is not None:
            corr = self.neuron_matches[0][self.neuron_live].abs()
            out["n_neurons"] = float(len(corr))
            if len(corr):
                out["median_neuron_best_match_corr"] = float(corr.median())
        return out
