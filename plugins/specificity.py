"""Specificity and sensitivity of each feature with respect to a token proxy.

The proxy of a feature is the configured ``proxy`` (one :class:`Proxy` for every feature)
or, when it is null, the feature's automatic proxy: the tokens carrying most of its
activation mass (:func:`auto_proxy`). Both criteria need the proxy *during* the streaming
pass, before any criterion has seen the whole stream, so the automatic proxy comes from a
small first pass over the first ``proxy_contexts`` contexts (the frozen model and the SAE;
shared between criteria, see :func:`plugins._common.first_pass`). The one TopActivations
provides at the end (``AUTO_PROXY``) uses the whole pass and can differ for rare features;
the proxy actually used is in every result.
"""

from __future__ import annotations

from typing import ClassVar

import torch
from typing_extensions import override

from plugins import _context
from plugins._common import FeatureCounts, FeatureMax, first_pass, number
from plugins._proxy import ProxyCriterion
from sae_lightning.analysis.criterion import AnalysisBatch, AnalysisContext
from sae_lightning.analysis.proxies import Proxy
from sae_lightning.analysis.records import (
    SensitivityResult,
    SpecificityHistogram,
    SpecificityResult,
)
from sae_lightning.metrics.histogram import ProxyHistogram, log_likelihood_ratio, precision_above


class Specificity(ProxyCriterion):
    """How often the proxy holds where the feature fires strongly.

    ``specificity`` is the exact fraction of proxy tokens among the tokens where the
    feature exceeds half its max activation. The max is estimated by the first pass (the
    threshold must be fixed during the pass), so it is half the max seen over the first
    ``proxy_contexts`` contexts. For a feature silent there, the number is the histogram's
    :func:`precision_above` at half the pass's true max instead (``specificity_source``).
    The histogram (``n_bins`` bins on ``[0, max_scale * first-pass max]``, clamped at the
    top) splits nonzero activations by the proxy and gives the per-bin log-likelihood
    ratio for the plot.

    Args:
        proxy: A proxy for every feature, or None for each feature's automatic proxy.
        proxy_contexts: Contexts of the first pass (automatic proxies, max estimate).
        proxy_coverage: Mass fraction an automatic proxy covers.
        proxy_max_tokens: Largest automatic proxy.
        threshold: The verdict is ``specificity >= threshold``.
        n_bins: Histogram bins.
        max_scale: The histogram spans ``max_scale`` times the first pass's max.
        context_purity: Next-token refinement of automatic proxies (see ProxyCriterion).
    """

    name: ClassVar[str] = SpecificityResult.criterion
    headline: ClassVar[str | None] = SpecificityResult.headline

    def __init__(
        self,
        proxy: Proxy | None = None,
        proxy_contexts: int = 256,
        proxy_coverage: float = 0.5,
        proxy_max_tokens: int = 8,
        threshold: float = 0.9,
        n_bins: int = 30,
        max_scale: float = 1.5,
        context_purity: float | None = 0.95,
    ) -> None:
        super().__init__(
            proxy, proxy_contexts, proxy_coverage, proxy_max_tokens, threshold, context_purity
        )
        if n_bins < 1:
            raise ValueError(f"n_bins must be a positive int, got {n_bins!r}")
        if max_scale < 1:
            raise ValueError(
                f"max_scale must be >= 1 (the histogram covers the max), got {max_scale!r}"
            )
        self.n_bins, self.max_scale = n_bins, max_scale

    @override
    def setup_metrics(self, n_features: int, ctx: AnalysisContext) -> None:
        self.setup_proxies(ctx)
        estimate = first_pass(ctx, self.proxy_contexts).max_act.double()  # [F]
        self.estimated = estimate > 0
        self.scale = torch.where(self.estimated, estimate * self.max_scale, 1.0)  # [F]
        self.cut = 0.5 * estimate  # [F]; exact specificity counts tokens above this
        self.edges = torch.linspace(0.0, 1.0, self.n_bins + 1, dtype=torch.float64)
        self.histogram = ProxyHistogram(n_features, self.edges)  # on act / scale
        self.above = FeatureCounts(n_features, 2)  # [above cut, above cut and proxy]
        self.max_act = FeatureMax(n_features)

    @override
    def update(self, batch: AnalysisBatch, ctx: AnalysisContext) -> None:
        e, proxy, valid = self.proxy_of(batch)  # entries; [m] each
        cols, values, proxy = e.cols[valid], e.values[valid].double(), proxy[valid]
        scale, cut = self.scale.to(values.device), self.cut.to(values.device)
        self.histogram.update_entries(values / scale[cols], cols, proxy)
        above = values > cut[cols]  # [m']
        n_features = e.n_features
        self.above.update(
            torch.stack(
                [
                    torch.bincount(cols[above], minlength=n_features),
                    torch.bincount(cols[above & proxy], minlength=n_features),
                ],
                dim=1,
            )
        )
        self.max_act.update(e.segment_max().unsqueeze(0))

    @override
    def results(self, ctx: AnalysisContext) -> dict[int, SpecificityResult]:
        n_features = len(ctx.features)  # views: torchmetrics squeezes one-element results
        pos, neg = (c.view(n_features, self.n_bins).cpu() for c in self.histogram.compute())
        llr = log_likelihood_ratio(pos, neg)  # [F, bins]
        max_act = self.max_act.compute().view(n_features).double().cpu()  # [F]
        hist_spec = precision_above(pos, neg, self.edges, 0.5 * max_act / self.scale)
        counts = self.above.compute().cpu()  # [F, 2]
        exact = torch.where(counts[:, 0] > 0, counts[:, 1] / counts[:, 0].clamp(min=1), torch.nan)
        out: dict[int, SpecificityResult] = {}
        for row, f in enumerate(ctx.features):
            estimated = bool(self.estimated[row])
            value = number(exact[row] if estimated else hist_spec[row])
            out[f] = SpecificityResult(
                **self.proxy_result(ctx, row),
                specificity=value,
                specificity_source="exact" if estimated else "histogram",
                specificity_histogram=number(hist_spec[row]),
                threshold_activation=float(self.cut[row]),
                n_above_threshold=int(counts[row, 0]),
                max_activation=float(max_act[row]),
                histogram=SpecificityHistogram(
                    edges=(self.edges * self.scale[row]).tolist(),
                    proxy_counts=pos[row].tolist(),
                    other_counts=neg[row].tolist(),
                    llr=llr[row].tolist(),
                ),
                verdict=self.verdict(value),
            )
        return out


class Sensitivity(ProxyCriterion):
    """Fraction of proxy-positive tokens on which the feature fires (activation ``> 0``).

    Exact counters over the whole pass. The proxy is resolved as for :class:`Specificity`
    (same options, same first pass, so with equal options both judge the same proxy).

    Args:
        proxy: A proxy for every feature, or None for each feature's automatic proxy.
        proxy_contexts: Contexts of the first pass that derives the automatic proxies.
        proxy_coverage: Mass fraction an automatic proxy covers.
        proxy_max_tokens: Largest automatic proxy.
        threshold: The verdict is ``sensitivity >= threshold``.
        context_purity: Next-token refinement of automatic proxies (see ProxyCriterion).
    """

    name: ClassVar[str] = SensitivityResult.criterion
    headline: ClassVar[str | None] = SensitivityResult.headline

    def __init__(
        self,
        proxy: Proxy | None = None,
        proxy_contexts: int = 256,
        proxy_coverage: float = 0.5,
        proxy_max_tokens: int = 8,
        threshold: float = 0.8,
        context_purity: float | None = 0.95,
    ) -> None:
        super().__init__(
            proxy, proxy_contexts, proxy_coverage, proxy_max_tokens, threshold, context_purity
        )

    @override
    def setup_metrics(self, n_features: int, ctx: AnalysisContext) -> None:
        self.setup_proxies(ctx)
        self.fired = FeatureCounts(n_features, 1)  # proxy tokens the feature fired on
        self.classes = FeatureCounts(len(ctx.str_tokens), 3)  # token occurrences per class

    @override
    def update(self, batch: AnalysisBatch, ctx: AnalysisContext) -> None:
        e, proxy, _ = self.proxy_of(batch)  # proxy is already limited to valid positions
        self.fired.update(torch.bincount(e.cols[proxy], minlength=e.n_features).unsqueeze(1))
        self.classes.update(_context.class_counts(batch.tokens, self.ws_vocab))

    @override
    def results(self, ctx: AnalysisContext) -> dict[int, SensitivityResult]:
        fired = self.fired.compute().view(-1).cpu().double()  # [F]
        classes = self.classes.compute().view(-1, 3).cpu()  # [vocab, 3]
        total = _context.proxy_occurrences(self.masks.cpu(), classes, self.refine.cpu())  # [F]
        value = torch.where(total > 0, fired / total.clamp(min=1), torch.nan)
        out: dict[int, SensitivityResult] = {}
        for row, f in enumerate(ctx.features):
            sensitivity = number(value[row])
            out[f] = SensitivityResult(
                **self.proxy_result(ctx, row),
                sensitivity=sensitivity,
                n_proxy_tokens=int(total[row]),
                n_proxy_fired=int(fired[row]),
                verdict=self.verdict(sensitivity),
            )
        return out
