"""Specificity and sensitivity of each feature with respect to a token proxy.

The proxy of a feature is the configured ``proxy`` (one :class:`Proxy` for every feature)
or, when it is null, the feature's automatic proxy: the tokens carrying most of its
activation mass (:func:`auto_proxy`). Both criteria need the proxy *during* the streaming
pass, before any criterion has seen the whole stream, so the automatic proxy comes from a
small first pass over the first ``proxy_contexts`` contexts (the frozen model and the SAE;
shared between criteria, see :func:`plugins._common.first_pass`). The one TopActivations
writes into ``ctx.extras["auto_proxy"]`` at the end uses the whole pass and can differ for
rare features; the proxy actually used is in every result.
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch
from jaxtyping import Bool, Int
from torch import Tensor
from typing_extensions import override

from plugins import _context
from plugins._common import FeatureCounts, FeatureMax, first_pass, number, proxy_masks
from sae_lightning.analysis.criterion import AnalysisBatch, AnalysisContext, Criterion
from sae_lightning.analysis.proxies import Proxy, auto_proxies, punctuation_closure
from sae_lightning.analysis.sparse import FiringEntries
from sae_lightning.metrics.histogram import ProxyHistogram, log_likelihood_ratio, precision_above

_AUTO_PROXY_KEY = "_auto_proxies"
_MAX_LISTED_TOKENS = 32  # proxy tokens listed in a result (a regex may match thousands)


def _auto_proxies(
    ctx: AnalysisContext,
    n_contexts: int,
    coverage: float,
    max_tokens: int,
    purity: float | None,
) -> tuple[list[list[int]], Bool[Tensor, "f vocab"], Int[Tensor, " f"]]:
    """Each feature's automatic proxy: token ids, ``[F, vocab]`` masks, context refinement.

    Cached in ``ctx.extras`` (like the first pass it comes from): specificity and
    sensitivity with the same options judge the same proxy and pay for it once.
    """
    cache = ctx.extras.setdefault(_AUTO_PROXY_KEY, {})
    key = (n_contexts, coverage, max_tokens, purity)
    if key not in cache:
        mass = first_pass(ctx, n_contexts).mass  # [F, vocab]
        ids = punctuation_closure(auto_proxies(mass, coverage, max_tokens), ctx.str_tokens)
        masks = proxy_masks(ids, len(ctx.str_tokens))  # [F, vocab]
        refine = (
            _context.refinements(ctx, masks, n_contexts, purity)
            if purity is not None
            else torch.zeros(len(ids), dtype=torch.int8)
        )
        cache[key] = (ids, masks, refine)
    return cache[key]


class ProxyCriterion(Criterion):
    """Shared part of specificity and sensitivity: resolving and applying the proxies.

    Args:
        proxy: A proxy for every feature, or None for each feature's automatic proxy.
        proxy_contexts: Contexts of the first pass that derives the automatic proxies.
        proxy_coverage: Mass fraction an automatic proxy covers.
        proxy_max_tokens: Largest automatic proxy.
        threshold: The verdict's threshold on the criterion's number.
        context_purity: Refine an automatic proxy by the next token's class (whitespace or
            not) when this share of the feature's proxy mass agrees (``plugins._context``);
            null never refines.
    """

    def __init__(
        self,
        proxy: Proxy | None,
        proxy_contexts: int,
        proxy_coverage: float,
        proxy_max_tokens: int,
        threshold: float,
        context_purity: float | None = 0.95,
    ) -> None:
        super().__init__()
        if proxy is not None and not isinstance(proxy, Proxy):
            raise ValueError(f"proxy must be a Proxy (a `_target_` node) or null, got {proxy!r}")
        if proxy_contexts < 1:
            raise ValueError(f"proxy_contexts must be a positive int, got {proxy_contexts!r}")
        if not 0 <= threshold <= 1:
            raise ValueError(f"threshold must be in [0, 1], got {threshold!r}")
        self.proxy, self.proxy_contexts = proxy, proxy_contexts
        self.proxy_coverage, self.proxy_max_tokens = proxy_coverage, proxy_max_tokens
        self.threshold = threshold
        if context_purity is not None and not 0.5 < context_purity <= 1:
            raise ValueError(f"context_purity must be in (0.5, 1] or null, got {context_purity!r}")
        self.context_purity = context_purity

    def setup_proxies(self, ctx: AnalysisContext) -> None:
        """Resolve each feature's proxy into ``self.masks`` (``[F or 1, vocab]`` bool)."""
        n_features = len(ctx.features)
        self.ws_vocab = _context.whitespace_vocab(ctx.str_tokens)
        self.refine = torch.zeros(n_features, dtype=torch.int8)  # no context refinement
        if self.proxy is not None:
            self.masks = self.proxy.vocab_mask(ctx.str_tokens).unsqueeze(0)  # [1, vocab]
            self.descriptions = [self.proxy.describe()] * n_features
            return
        ids, self.masks, self.refine = _auto_proxies(
            ctx,
            self.proxy_contexts,
            self.proxy_coverage,
            self.proxy_max_tokens,
            self.context_purity,
        )
        self.descriptions = [
            "tokens {"
            + ", ".join(repr(ctx.str_tokens[t]) for t in i)
            + "}"
            + _context.DESCRIPTIONS[int(r)]
            if i
            else "none"
            for i, r in zip(ids, self.refine.tolist(), strict=True)
        ]

    def proxy_of(
        self, batch: AnalysisBatch
    ) -> tuple[FiringEntries, Bool[Tensor, " m"], Bool[Tensor, " m"]]:
        """The batch's firing entries with, per entry, ``(proxy, valid)``: whether its token
        satisfies its feature's proxy, and whether it counts for the feature at all (a
        context-refined proxy cannot judge a position whose next token is unknown)."""
        e = batch.firing()
        if self.masks.device != e.cols.device:
            self.masks, self.refine = self.masks.to(e.cols.device), self.refine.to(e.cols.device)
        tokens = batch.tokens.flatten()[e.rows]  # [m]
        mask_row = e.cols if self.masks.shape[0] > 1 else torch.zeros_like(e.cols)
        classes = _context.token_classes(batch.tokens, self.ws_vocab).flatten()[e.rows]  # [m]
        proxy, valid = _context.apply(self.masks[mask_row, tokens], self.refine[e.cols], classes)
        return e, proxy, valid

    def proxy_result(self, ctx: AnalysisContext, row: int) -> dict[str, Any]:
        """The proxy's description and (up to 32 of) its tokens as strings."""
        mask = self.masks[0 if self.masks.shape[0] == 1 else row]
        ids = mask.nonzero().flatten().tolist()
        return {
            "proxy": self.descriptions[row],
            "proxy_tokens": [ctx.str_tokens[t] for t in ids[:_MAX_LISTED_TOKENS]],
            "proxy_vocab_size": len(ids),
        }

    def verdict(self, value: float | None) -> bool | None:
        """``value >= threshold``; None when the number is undefined."""
        return None if value is None else bool(value >= self.threshold)


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

    name: ClassVar[str] = "specificity"
    order: ClassVar[int] = 20
    headline: ClassVar[str] = "specificity"  # the result key the report's scorecard shows

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
    def results(self, ctx: AnalysisContext) -> dict[int, dict[str, Any]]:
        n_features = len(ctx.features)  # views: torchmetrics squeezes one-element results
        pos, neg = (c.view(n_features, self.n_bins).cpu() for c in self.histogram.compute())
        llr = log_likelihood_ratio(pos, neg)  # [F, bins]
        max_act = self.max_act.compute().view(n_features).double().cpu()  # [F]
        hist_spec = precision_above(pos, neg, self.edges, 0.5 * max_act / self.scale)
        counts = self.above.compute().cpu()  # [F, 2]
        exact = torch.where(counts[:, 0] > 0, counts[:, 1] / counts[:, 0].clamp(min=1), torch.nan)
        out: dict[int, dict[str, Any]] = {}
        for row, f in enumerate(ctx.features):
            estimated = bool(self.estimated[row])
            value = number(exact[row] if estimated else hist_spec[row])
            out[f] = {
                **self.proxy_result(ctx, row),
                "specificity": value,
                "specificity_source": "exact" if estimated else "histogram",
                "specificity_histogram": number(hist_spec[row]),
                "threshold_activation": float(self.cut[row]),
                "n_above_threshold": int(counts[row, 0]),
                "max_activation": float(max_act[row]),
                "histogram": {
                    "edges": (self.edges * self.scale[row]).tolist(),
                    "proxy_counts": pos[row].tolist(),
                    "other_counts": neg[row].tolist(),
                    "llr": llr[row].tolist(),
                },
                "verdict": self.verdict(value),
            }
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

    name: ClassVar[str] = "sensitivity"
    order: ClassVar[int] = 21
    headline: ClassVar[str] = "sensitivity"  # the result key the report's scorecard shows

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
    def results(self, ctx: AnalysisContext) -> dict[int, dict[str, Any]]:
        fired = self.fired.compute().view(-1).cpu().double()  # [F]
        classes = self.classes.compute().view(-1, 3).cpu()  # [vocab, 3]
        total = _context.proxy_occurrences(self.masks.cpu(), classes, self.refine.cpu())  # [F]
        value = torch.where(total > 0, fired / total.clamp(min=1), torch.nan)
        out: dict[int, dict[str, Any]] = {}
        for row, f in enumerate(ctx.features):
            sensitivity = number(value[row])
            out[f] = {
                **self.proxy_result(ctx, row),
                "sensitivity": sensitivity,
                "n_proxy_tokens": int(total[row]),
                "n_proxy_fired": int(fired[row]),
                "verdict": self.verdict(sensitivity),
            }
        return out
