"""Universality: does a feature reappear in another SAE trained on the same activations?

Per feature: the best-matching feature of the ``compare_with`` SAE by activation
correlation on the same tokens (``batch.other_acts``), and the correlation of the two
features' logit weights (:func:`plugins.downstream.logit_weights`, Pearson over the vocab).

Population level (``summary``): the median best-match correlation of the features, against
a neuron baseline. The paper's baseline matches neurons of one model to neurons of another
model; with one model here, the baseline is the median over features of the best
correlation with any MLP neuron of the same model, i.e. the score a feature would get if it
were merely a neuron. It streams its own Pearson sums (``neuron_baseline: true``, memory
``8 * n_features * d_in`` bytes) or, when false, uses the ``NEURON_MAX_CORR`` artefact of
:mod:`plugins.not_a_neuron` if that criterion ran.
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


def row_pearson(a: Float[Tensor, "f v"], b: Float[Tensor, "f v"]) -> Float[Tensor, " f"]:
    """Pearson correlation of each row of ``a`` with the same row of ``b`` (0 if constant)."""
    a = a.double() - a.double().mean(dim=1, keepdim=True)
    b = b.double() - b.double().mean(dim=1, keepdim=True)
    denom = a.norm(dim=1) * b.norm(dim=1)
    return torch.where(denom > 0, (a * b).sum(dim=1) / denom.where(denom > 0, 1.0), 0.0)


class Universality(Criterion):
    """Best match of each feature in the ``compare_with`` SAE.

    A feature that is constant over the pass (never fired) gets verdict None.

    Args:
        threshold: The verdict is ``best-match activation correlation >= threshold``.
        neuron_baseline: Stream feature-vs-neuron correlations for the population baseline.
    """

    name: ClassVar[str] = UniversalityResult.criterion
    headline: ClassVar[str | None] = UniversalityResult.headline
    uses = (NEURON_MAX_CORR,)  # the neuron baseline when neuron_baseline is false
    needs_compare_with: ClassVar[bool] = True  # analyze.py refuses it without compare_with

    def __init__(self, threshold: float = 0.7, neuron_baseline: bool = True) -> None:
        super().__init__()
        if not 0 < threshold <= 1:
            raise ValueError(f"threshold must be in (0, 1], got {threshold!r}")
        self.threshold, self.neuron_baseline = threshold, neuron_baseline

    @override
    def setup_metrics(self, n_features: int, ctx: AnalysisContext) -> None:
        self.enabled = ctx.other_sae is not None
        if self.enabled:
            self.other = StreamingPearson(n_features, int(ctx.other_sae.W_dec.shape[0]))
        if self.neuron_baseline:
            d_in = int(ctx.sae.W_dec.shape[1])
            self.neurons = StreamingPearson(n_features, d_in, y_shift=neuron_mean(ctx))

    @override
    def update(self, batch: AnalysisBatch, ctx: AnalysisContext) -> None:
        e = batch.firing()  # features are sparse: cross sums cost O(nnz * d_other)
        if self.enabled:
            if batch.other_acts is None:
                raise ValueError("universality: ctx.other_sae is set but batch.other_acts is None")
            self.other.update_entries(e.rows, e.cols, e.values, batch.other_acts.flatten(0, 1))
        if self.neuron_baseline:
            self.neurons.update_entries(e.rows, e.cols, e.values, batch.neuron_acts.flatten(0, 1))

    def _neuron_corr(self, ctx: AnalysisContext) -> list[float | None]:
        """Per feature, ``|corr|`` with its best MLP neuron (None where not available)."""
        if self.neuron_baseline:
            matrix = self.neurons.compute().view(len(ctx.features), -1)  # [F, d_in]
            return max_correlation(matrix)[0].abs().tolist()
        extra = ctx.artefacts.find(NEURON_MAX_CORR)
        return [extra[f] for f in ctx.features] if extra else [None] * len(ctx.features)

    @staticmethod
    def _logit_corr(ctx: AnalysisContext, match: Tensor) -> Float[Tensor, " f"]:
        """Pearson correlation of each feature's logit weights with its match's (chunked);
        NaN (reported as None) for a hook without logit weights."""
        out = []
        for start in range(0, len(ctx.features), LOGIT_CHUNK):
            rows = ctx.features[start : start + LOGIT_CHUNK]
            mine = logit_weights(ctx.model, ctx.hook_name, ctx.sae.W_dec[rows])
            if mine is None:
                return torch.full((len(ctx.features),), float("nan"))
            other = ctx.other_sae.W_dec[match[start : start + LOGIT_CHUNK]]
            out.append(row_pearson(mine, logit_weights(ctx.model, ctx.hook_name, other)).cpu())
        return torch.cat(out)

    @override
    def results(self, ctx: AnalysisContext) -> dict[int, UniversalityResult]:
        neuron = self._neuron_corr(ctx)
        if not self.enabled:
            note = "no compare_with SAE: universality needs a second SAE on the same tokens"
            return {
                f: UniversalityResult(note=note, neuron_corr=neuron[row])
                for row, f in enumerate(ctx.features)
            }
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
                verdict=None if constant[row] else value >= self.threshold,
            )
        return out

    @override
    def summary(self, results: dict[int, UniversalityResult]) -> dict[str, float]:
        out = super().summary(results)
        best = [r.activation_corr for r in results.values() if r.activation_corr is not None]
        neurons = [r.neuron_corr for r in results.values() if r.neuron_corr is not None]
        if best:
            out["median_best_match_corr"] = statistics.median(best)
        if neurons:
            out["median_neuron_baseline_corr"] = statistics.median(neurons)
        return out
