"""Top activations, activation-quantile samples and firing density of every feature.

Informational (no verdict). It is also the criterion others build on: it provides the
artefacts (:mod:`sae_lightning.analysis.artefacts`) ``TOP_EXAMPLES`` (its top activations
above 0), ``AUTO_PROXY`` (:func:`auto_proxy` of each feature's activation mass per token over
the whole pass, heaviest first; ``[]`` if it never fired), ``TOKEN_MASS`` (the
:class:`FiringCounts` sums), ``MAX_ACTIVATION`` and ``DENSITY``.
"""

from __future__ import annotations

from typing import ClassVar

import torch
from jaxtyping import Float, Int
from torch import Tensor
from torchmetrics import Metric
from typing_extensions import override

from plugins._common import context_windows, first_pass, number
from sae_lightning.analysis.artefacts import (
    AUTO_PROXY,
    DENSITY,
    MAX_ACTIVATION,
    TOKEN_MASS,
    TOP_EXAMPLES,
    TokenMass,
)
from sae_lightning.analysis.criterion import AnalysisBatch, AnalysisContext, Criterion
from sae_lightning.analysis.proxies import auto_proxies
from sae_lightning.analysis.records import Example, QuantileSample, TopActivationsResult
from sae_lightning.metrics.correlation import FiringCounts
from sae_lightning.metrics.density import FeatureDensity, dead_fraction
from sae_lightning.metrics.topk import TopKActivations

_KEY_BITS = 20  # random bits of a sampling key; key * 2**32 + act bits stays below 2**53
_ACT_SHIFT = 2.0**32


def _sample_values(acts: Float[Tensor, " m"], keys: Int[Tensor, " m"]) -> Float[Tensor, " m"]:
    """``key * 2**32 + float32 bits of act`` (float64, exact).

    Ranking these by value ranks by the random key (a uniform sample of the members) while
    the low 32 bits keep each sample's activation exactly.
    """
    bits = acts.float().clamp(min=0).view(torch.int32).double()  # [m], in [0, 2**31)
    return keys.double() * _ACT_SHIFT + bits


def _sample_acts(values: Float[Tensor, "*s"]) -> Float[Tensor, "*s"]:
    """The activations packed by :func:`_sample_values` (``values`` must be finite)."""
    bits = torch.remainder(values, _ACT_SHIFT).long().to(torch.int32)
    return bits.view(torch.float32)


class TopActivations(Criterion):
    """Per feature: density, max activation, top-k examples and activation-quantile samples.

    Quantile samples are a uniform random sample of up to ``per_interval`` firing tokens in
    each of ``n_intervals`` equal intervals of the feature's max activation. The max is not
    known until the pass ends, so the intervals divide the max seen over the first
    ``quantile_contexts`` contexts (a first pass, shared with specificity); the top interval
    is open-ended, and a feature that did not fire there puts all its samples in it. Each
    interval is one :class:`TopKActivations` ranking ``random key * 2**32 + float32 bits of
    the activation`` (exact in float64), so its top entries are a uniform sample of the
    interval's tokens that still carry their exact activation; memory stays
    ``O(n_features * n_intervals * per_interval)``.

    Args:
        k: Top activations kept per feature.
        window: Tokens shown either side of each example.
        n_intervals: Equal intervals of the max activation to sample from.
        per_interval: Random examples per interval.
        quantile_contexts: Contexts of the first pass that estimates the max activation.
        proxy_coverage: Mass fraction the automatic proxy covers (see :func:`auto_proxy`).
        proxy_max_tokens: Largest automatic proxy.
        seed: Seed of the sampling keys.
    """

    name: ClassVar[str] = TopActivationsResult.criterion
    headline: ClassVar[str | None] = TopActivationsResult.headline
    provides = (TOP_EXAMPLES, AUTO_PROXY, TOKEN_MASS, MAX_ACTIVATION, DENSITY)

    def __init__(
        self,
        k: int = 20,
        window: int = 8,
        n_intervals: int = 5,
        per_interval: int = 4,
        quantile_contexts: int = 256,
        proxy_coverage: float = 0.5,
        proxy_max_tokens: int = 8,
        seed: int = 0,
    ) -> None:
        super().__init__()
        for key, value in (("k", k), ("n_intervals", n_intervals), ("per_interval", per_interval)):
            if value < 1:
                raise ValueError(f"{key} must be a positive int, got {value!r}")
        if window < 0:
            raise ValueError(f"window must be >= 0, got {window!r}")
        self.k, self.window, self.seed = k, window, seed
        self.n_intervals, self.per_interval = n_intervals, per_interval
        self.quantile_contexts = quantile_contexts
        self.proxy_coverage, self.proxy_max_tokens = proxy_coverage, proxy_max_tokens
        self.samples: list[TopKActivations] = []

    @override
    def metrics(self) -> list[Metric]:
        return super().metrics() + self.samples

    @override
    def setup_metrics(self, n_features: int, ctx: AnalysisContext) -> None:
        self.topk = TopKActivations(n_features, self.k)
        self.density = FeatureDensity(n_features)
        self.firing = FiringCounts(n_features, len(ctx.str_tokens))
        m = self.per_interval
        self.samples = [TopKActivations(n_features, m) for _ in range(self.n_intervals)]
        # The interval scale: the max seen in the first pass (a tiny scale for a feature
        # that did not fire there, so all of its samples land in the open top interval).
        estimate = first_pass(ctx, self.quantile_contexts).max_act
        self.scale = estimate.double().clamp(min=1e-30)  # [F]
        self._generator: torch.Generator | None = None

    def _keys(self, shape: torch.Size, device: torch.device) -> Int[Tensor, " m"]:
        """Random sampling keys in ``[0, 2**20)`` (a seeded generator on ``device``)."""
        if self._generator is None or self._generator.device != device:
            self._generator = torch.Generator(device=device).manual_seed(self.seed)
        return torch.randint(
            0, 2**_KEY_BITS, shape, generator=self._generator, device=device, dtype=torch.long
        )

    @override
    def update(self, batch: AnalysisBatch, ctx: AnalysisContext) -> None:
        e = batch.firing()  # the nonzero activations, [m] each
        tokens, ids = batch.tokens.flatten(), batch.token_index.flatten()[e.rows]  # [n], [m]
        self.topk.update_entries(e.values, e.cols, ids)
        self.density.update_counts(e.counts(), e.n_rows)
        self.firing.update_entries(e.rows, e.cols, e.values, tokens)
        frac = e.values.double() / self.scale.to(e.values.device)[e.cols]  # [m]
        bucket = (frac * self.n_intervals).floor().clamp(max=self.n_intervals - 1).long()
        packed = _sample_values(e.values, self._keys(e.values.shape, e.values.device))  # [m]
        for i, samples in enumerate(self.samples):
            chosen = bucket == i
            samples.update_entries(packed[chosen], e.cols[chosen], ids[chosen])

    def _examples(self, values: list[float], ids: list[int]) -> list[Example]:
        """Examples with their context windows (unfilled and non-firing entries dropped)."""
        return [
            Example(token_index=i, activation=v, **self._windows[i])
            for v, i in zip(values, ids, strict=True)
            if v > 0 and i >= 0
        ]

    def _quantile_samples(self, ctx: AnalysisContext) -> list[list[QuantileSample]]:
        """Per feature, per interval ``[lo, hi)``: the sampled examples."""
        per_feature: list[list[QuantileSample]] = [[] for _ in ctx.features]
        scale = self.scale.tolist()
        for i, samples in enumerate(self.samples):
            values, ids = (t.view(len(ctx.features), -1) for t in samples.compute())  # [F, m]
            finite = torch.isfinite(values)
            acts = torch.where(finite, _sample_acts(values.nan_to_num(0.0, 0.0, 0.0)), 0.0)
            for row, (feature_acts, feature_ids) in enumerate(
                zip(acts.tolist(), ids.tolist(), strict=True)
            ):
                lo = i / self.n_intervals * scale[row]
                hi = (i + 1) / self.n_intervals * scale[row] if i < self.n_intervals - 1 else None
                examples = self._examples(feature_acts, feature_ids)
                examples.sort(key=lambda e: -e.activation)
                per_feature[row].append(QuantileSample(interval=[lo, hi], examples=examples))
        return per_feature

    def _provide(
        self, ctx: AnalysisContext, values: Tensor, ids: Tensor, density: Tensor
    ) -> dict[int, list[int]]:
        """Put the artefacts it provides (see the module doc); returns the automatic proxies."""
        n_features = len(ctx.features)  # views: torchmetrics squeezes one-element results
        mass, fires, token_counts = self.firing.compute()
        mass, fires = mass.view(n_features, -1), fires.view(n_features, -1)
        rows = auto_proxies(mass, self.proxy_coverage, self.proxy_max_tokens)
        proxies = dict(zip(ctx.features, rows, strict=True))
        store = ctx.artefacts
        store.put(
            TOP_EXAMPLES,
            {
                f: [(i, v) for v, i in zip(vals, idx, strict=True) if v > 0 and i >= 0]
                for f, vals, idx in zip(ctx.features, values.tolist(), ids.tolist(), strict=True)
            },
        )
        store.put(AUTO_PROXY, proxies)
        store.put(TOKEN_MASS, TokenMass(list(ctx.features), mass, fires, token_counts))
        top = values[:, 0].clamp(min=0).tolist()
        store.put(MAX_ACTIVATION, dict(zip(ctx.features, top, strict=True)))
        store.put(DENSITY, dict(zip(ctx.features, density.tolist(), strict=True)))
        return proxies

    @override
    def results(self, ctx: AnalysisContext) -> dict[int, TopActivationsResult]:
        n_features = len(ctx.features)  # views: torchmetrics squeezes one-element results
        values, ids = (t.view(n_features, -1) for t in self.topk.compute())  # [F, k]
        density = self.density.compute().view(n_features)  # [F]
        wanted = [ids[values > 0]] + [s.compute()[1].flatten() for s in self.samples]
        wanted = torch.cat([w.flatten().cpu() for w in wanted])
        self._windows = context_windows(ctx, wanted[wanted >= 0].tolist(), self.window)
        proxies = self._provide(ctx, values, ids, density)
        max_activation = ctx.artefacts.get(MAX_ACTIVATION)
        quantiles = self._quantile_samples(ctx)
        return {
            f: TopActivationsResult(
                density=number(density[row]),
                max_activation=max_activation[f],
                top_examples=self._examples(values[row].tolist(), ids[row].tolist()),
                quantile_samples=quantiles[row],
                auto_proxy=[ctx.str_tokens[t] for t in proxies[f]],
                auto_proxy_ids=proxies[f],
            )
            for row, f in enumerate(ctx.features)
        }

    @override
    def summary(self, results: dict[int, TopActivationsResult]) -> dict[str, float]:
        density = torch.tensor([r.density or 0.0 for r in results.values()], dtype=torch.float64)
        if not density.numel():
            return {}
        return {
            "mean_density": float(density.mean()),
            "dead_fraction": float(dead_fraction(density)),
        }
