"""Helpers shared by the built-in criteria: small running counters, the first pass, windows."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
from jaxtyping import Bool, Float, Int
from torch import Tensor
from torchmetrics import Metric

from sae_lightning.analysis.artefacts import Artefact
from sae_lightning.analysis.criterion import AnalysisContext
from sae_lightning.analysis.module import KEPT_ACTIVATIONS, KeptActivations
from sae_lightning.analysis.selection import encode_features
from sae_lightning.metrics.correlation import FiringCounts
from sae_lightning.sparse import SparseEntries, firing_entries

FIRST_PASSES: Artefact[dict[int, FirstPass]] = Artefact("_first_passes", dict)
"""The first passes computed so far, by number of contexts (any criterion computes one on
first use: ``ctx.artefacts.cached``)."""
NEURON_MEAN: Artefact[Tensor] = Artefact("_neuron_mean", Tensor)
"""``[d_in]`` float64: the mean hooked activation of :func:`neuron_mean`."""


def number(value: float | Tensor) -> float | None:
    """A JSON-able float: NaN and infinities (undefined statistics) become ``None``."""
    value = float(value)
    return value if math.isfinite(value) else None


class FeatureCounts(Metric):
    """``n_counters`` running integer counts per feature (e.g. tokens above a threshold).

    Args:
        n_features: Number of features.
        n_counters: Number of counters per feature.
    """

    is_differentiable = False
    higher_is_better = None
    full_state_update = False

    counts: Tensor

    def __init__(self, n_features: int, n_counters: int) -> None:
        super().__init__()
        if n_features < 1 or n_counters < 1:
            raise ValueError(
                f"n_features and n_counters must be positive, got {n_features}, {n_counters}"
            )
        zeros = torch.zeros(n_features, n_counters, dtype=torch.long)
        self.add_state("counts", default=zeros, dist_reduce_fx="sum")

    def update(self, counts: Int[Tensor, "n_features n_counters"]) -> None:
        """Add one batch's counts."""
        if counts.shape != self.counts.shape:
            raise ValueError(f"counts must be {list(self.counts.shape)}, got {list(counts.shape)}")
        self.counts = self.counts + counts.long()

    def compute(self) -> Int[Tensor, "n_features n_counters"]:
        """The counts so far."""
        return self.counts


class FeatureMax(Metric):
    """Running maximum activation per feature (0 for a feature that never fired).

    Args:
        n_features: Number of features.
    """

    is_differentiable = False
    higher_is_better = None
    full_state_update = False

    max_act: Tensor

    def __init__(self, n_features: int) -> None:
        super().__init__()
        if n_features < 1:
            raise ValueError(f"n_features must be positive, got {n_features}")
        self.add_state("max_act", default=torch.zeros(n_features), dist_reduce_fx="max")

    def update(self, acts: Float[Tensor, "n n_features"]) -> None:
        """Fold a batch of activations into the running max."""
        if acts.numel():
            self.max_act = torch.maximum(self.max_act, acts.detach().float().amax(dim=0))

    def compute(self) -> Float[Tensor, " n_features"]:
        """The maximum per feature."""
        return self.max_act


def module_device(module: Any) -> torch.device:
    """The device of a module's first parameter (CPU for a parameterless object)."""
    try:
        return next(module.parameters()).device
    except (AttributeError, StopIteration):
        return torch.device("cpu")


def feature_acts(
    ctx: AnalysisContext, tokens: Int[Tensor, "batch pos"], keep_from: int | None = None
) -> Float[Tensor, "batch pos n_features"]:
    """The analysed features' activations on ``tokens`` (frozen forward up to the hook);
    ``keep_from``: ``tokens`` are the contexts from this one on, whose hook activations the
    streaming pass may take (:class:`KeptActivations`) instead of recomputing them."""
    tokens = tokens.to(module_device(ctx.model))
    acts = ctx.reader.capture(tokens)  # [batch, pos, d_in]
    if keep_from is not None:
        ctx.artefacts.cached(KEPT_ACTIVATIONS, KeptActivations).keep(keep_from, acts)
    w_dec = ctx.sae.W_dec
    acts = acts.to(device=w_dec.device, dtype=w_dec.dtype)
    every = ctx.features == list(range(ctx.sae.d_sae))
    index = None if every else torch.tensor(ctx.features, device=w_dec.device)
    return encode_features(ctx.sae, acts, index)  # only the selected features' columns


@torch.no_grad()
def neuron_mean(ctx: AnalysisContext, n_contexts: int = 4) -> Float[Tensor, " d_in"]:
    """Mean hooked activation over the first contexts' analysed positions (cached): a shift
    that keeps streamed float32 cross sums precise (:class:`StreamingPearson` ``y_shift``),
    equal on all ranks."""

    def compute() -> Tensor:
        tokens = ctx.contexts[:n_contexts].to(module_device(ctx.model))
        acts = ctx.reader.capture(tokens)[:, ctx.start :]
        return acts.flatten(0, 1).double().mean(0).cpu()  # [d_in]

    return ctx.artefacts.cached(NEURON_MEAN, compute)


@dataclass
class FirstPass:
    """Statistics of the analysed features over the first contexts, before the main pass."""

    tokens: Int[Tensor, " n"]
    """The first contexts' analysed tokens (positions ``ctx.start`` onwards, as in the
    pass), flattened: ``n = n_contexts * (n_ctx - ctx.start)``."""
    entries: SparseEntries
    """Their firing entries (``rows`` index ``tokens``): ~density * n * F, a few MB."""
    max_act: Float[Tensor, " n_features"]
    """Largest activation seen per feature."""
    mass: Float[Tensor, "n_features vocab"]
    """Activation mass per feature and vocabulary token (:class:`FiringCounts` ``mass``)."""


@torch.no_grad()
def first_pass(ctx: AnalysisContext, n_contexts: int, batch_size: int = 16) -> FirstPass:
    """Run the frozen model and the SAE over ``ctx.contexts[:n_contexts]`` (cached).

    Criteria that need a per-feature quantity *during* the streaming pass (an automatic
    proxy, an activation scale) estimate it here, on the positions the pass analyses (BOS
    dropped when ``ctx.drop_bos``). The result is cached in ``ctx.artefacts`` (:data:`FIRST_PASSES`)
    so several criteria pay for it once.
    """
    if n_contexts < 1:
        raise ValueError(f"the first pass needs at least 1 context, got {n_contexts}")
    cache = ctx.artefacts.cached(FIRST_PASSES, dict)
    if n_contexts in cache:
        return cache[n_contexts]
    n_features = len(ctx.features)
    contexts = ctx.contexts[:n_contexts]
    width = contexts.shape[1] - ctx.start  # analysed positions per context
    parts = []
    for first in range(0, contexts.shape[0], batch_size):
        acts = feature_acts(ctx, contexts[first : first + batch_size], first)[:, ctx.start :]
        e = firing_entries(acts.flatten(0, 1).float().cpu())  # of [n, F]
        parts.append((e.rows + first * width, e.cols, e.values))
    rows, cols, values = (torch.cat(p) for p in zip(*parts, strict=True))
    order = torch.sort(cols, stable=True).indices  # batches were col-sorted: re-sort globally
    tokens = contexts[:, ctx.start :].flatten().cpu()
    entries = SparseEntries(rows[order], cols[order], values[order], tokens.numel(), n_features)
    counts = FiringCounts(n_features, len(ctx.str_tokens))
    counts.update_entries(entries.rows, entries.cols, entries.values, tokens)
    # torchmetrics squeezes one-element results: restore the shapes
    mass = counts.compute()[0].view(n_features, -1)
    cache[n_contexts] = FirstPass(tokens, entries, entries.segment_max(), mass)
    return cache[n_contexts]


def proxy_masks(
    ids: list[list[int]], vocab: int, device: torch.device | None = None
) -> Bool[Tensor, "n_features vocab"]:
    """``[F, vocab]`` membership masks of per-feature token-id sets."""
    masks = torch.zeros(len(ids), vocab, dtype=torch.bool, device=device)
    for row, token_ids in enumerate(ids):
        masks[row, token_ids] = True
    return masks


def context_windows(
    ctx: AnalysisContext, token_indices: list[int], radius: int
) -> dict[int, dict[str, Any]]:
    """The ``±radius`` tokens around each global token id, as strings, with the token's
    offset (``highlight``): one tensor gather for all ids, then one string lookup each."""
    n_contexts, n_ctx = ctx.contexts.shape
    index = torch.tensor(sorted(set(token_indices)), dtype=torch.long)
    context, pos = index // n_ctx, index % n_ctx
    bad = (context < 0) | (context >= n_contexts)
    if bool(bad.any()):
        first = int(index[bad][0])
        raise ValueError(
            f"token_index {first} points at context {first // n_ctx}, outside the "
            f"{n_contexts} analysed contexts"
        )
    lo = (pos - radius).clamp(min=0)  # [m]
    length = torch.minimum(pos + radius + 1, torch.full_like(pos, n_ctx)) - lo  # [m]
    cols = (lo[:, None] + torch.arange(2 * radius + 1)).clamp(max=n_ctx - 1)  # [m, w]
    ids = ctx.contexts[context[:, None], cols].tolist()  # [m, w]
    names = ctx.str_tokens
    return {
        i: {
            "context": c,
            "position": p,
            "tokens": [names[t] for t in row[:n]],
            "highlight": p - start,
        }
        for i, c, p, start, n, row in zip(
            index.tolist(),
            context.tolist(),
            pos.tolist(),
            lo.tolist(),
            length.tolist(),
            ids,
            strict=True,
        )
    }
