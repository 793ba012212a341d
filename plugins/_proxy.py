"""The shared part of specificity and sensitivity: resolving each feature's proxy (the
configured one, or the automatic one from the first pass) and applying it to a batch's
firing entries. See :mod:`plugins.specificity` for the two criteria."""

from __future__ import annotations

from typing import Any

import torch
from jaxtyping import Bool, Int
from torch import Tensor

from plugins import _context
from plugins._common import first_pass, proxy_masks
from sae_lightning.analysis.artefacts import Artefact
from sae_lightning.analysis.criterion import AnalysisBatch, AnalysisContext, Criterion
from sae_lightning.analysis.proxies import Proxy, auto_proxies, punctuation_closure
from sae_lightning.sparse import SparseEntries

_AUTO_PROXIES: Artefact[dict[tuple, tuple]] = Artefact("_auto_proxies", dict)
"""First-pass automatic proxies computed so far, by their options (see :func:`_auto_proxies`)."""
_MAX_LISTED_TOKENS = 32  # proxy tokens listed in a result (a regex may match thousands)


def _auto_proxies(
    ctx: AnalysisContext,
    n_contexts: int,
    coverage: float,
    max_tokens: int,
    purity: float | None,
) -> tuple[list[list[int]], Bool[Tensor, "f vocab"], Int[Tensor, " f"]]:
    """Each feature's automatic proxy: token ids, ``[F, vocab]`` masks, context refinement.

    Cached in ``ctx.artefacts`` (like the first pass it comes from): specificity and
    sensitivity with the same options judge the same proxy and pay for it once.
    """
    cache = ctx.artefacts.cached(_AUTO_PROXIES, dict)
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
    ) -> tuple[SparseEntries, Bool[Tensor, " m"], Bool[Tensor, " m"]]:
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
