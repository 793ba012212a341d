"""Every token's activation in the context windows a feature page shows.

The pass keeps only each example's own activation. For per-token highlighting the
dashboards need the feature's activation on every token of the window: this recomputes it
after the pass, one frozen forward (to the hook) per distinct context and one
``sae.encode_selected`` row per window, and stores it in the results next to the tokens:
``acts`` in each :class:`Example` of :class:`TopActivationsResult` (top examples and
quantile samples), and ``top_context_acts`` in :class:`DownstreamResult`'s ablation.
Positions the analysis did not analyse (BOS when it is dropped) are shown as context with
activation 0, as the pass saw them.
"""

from __future__ import annotations

from collections import defaultdict
from typing import Any, NamedTuple

import torch
from jaxtyping import Int
from torch import Tensor

from sae_lightning.analysis.reader import Reader
from sae_lightning.analysis.records import (
    Ablation,
    DownstreamResult,
    Example,
    Record,
    TopActivationsResult,
    result_of,
)
from sae_lightning.hooks import model_device

ROW_BUDGET = 2**24  # hooked floats gathered at once ([rows, width, d_in])


class Window(NamedTuple):
    """One window to fill: feature, context row, first position, length, where to write."""

    feature: int
    context: int
    start: int
    length: int
    target: Example | Ablation
    key: str


def _windows(features: dict[int, dict[str, Any]], n_ctx: int) -> list[Window]:
    out = []
    for f, per_feature in features.items():
        top = result_of(per_feature, TopActivationsResult)
        examples = [] if top is None else list(top.top_examples)
        for q in [] if top is None else top.quantile_samples:
            examples += q.examples
        for e in examples:
            if e.context >= 0 and e.tokens:
                start = e.position - e.highlight
                out.append(Window(f, e.context, start, len(e.tokens), e, "acts"))
        down = result_of(per_feature, DownstreamResult)
        ablation = None if down is None else down.ablation
        if ablation and ablation.contexts and ablation.top_context_tokens:
            length = min(len(ablation.top_context_tokens), n_ctx)
            out.append(Window(f, ablation.contexts[0], 0, length, ablation, "top_context_acts"))
    return [w for w in out if 0 <= w.start and w.start + w.length <= n_ctx and w.length > 0]


def _fill(
    sae, acts: Tensor, local: dict[int, int], windows: list[Window], digits: int, start: int
) -> None:
    """Encode each window's tokens for its feature and write the rounded activations
    (0 at positions before ``start``)."""
    by_length: dict[int, list[Window]] = defaultdict(list)
    for w in windows:
        by_length[w.length].append(w)
    for length, group in by_length.items():
        step = max(1, ROW_BUDGET // (length * acts.shape[-1]))
        for i in range(0, len(group), step):
            chunk = group[i : i + step]
            rows = torch.tensor([local[w.context] for w in chunk], device=acts.device)
            starts = torch.tensor([w.start for w in chunk], device=acts.device)
            pos = starts[:, None] + torch.arange(length, device=acts.device)  # [r, length]
            x = acts[rows[:, None], pos]  # [r, length, d_in]
            index = torch.tensor([w.feature for w in chunk], device=sae.W_enc.device)
            values = sae.encode_selected(x.to(sae.W_enc.dtype), index).float()  # [r, len]
            values = values.masked_fill(pos < start, 0.0).cpu()  # not analysed: BOS
            for w, row in zip(chunk, values.tolist(), strict=True):
                setattr(w.target, w.key, [round(v, digits) for v in row])


@torch.inference_mode()
def add_window_activations(
    features: dict[int, dict[str, Record | dict[str, Any]]],
    sae,
    reader: Reader,
    contexts: Int[Tensor, "n n_ctx"],
    batch_size: int = 32,
    digits: int = 4,
    start: int = 1,
) -> int:
    """Store every token's activation in the report's example windows (see module doc).

    Args:
        features: ``AnalysisResults.features`` (``{feature: {criterion: result}}``): its
            records are edited in place.
        sae, reader: As analysed; ``contexts`` the analysed token contexts.
        batch_size: Contexts per frozen forward.
        digits: Decimals kept.
        start: The first analysed position (1: BOS dropped, its activation shown as 0).

    Returns:
        How many windows were filled.
    """
    windows = _windows(features, int(contexts.shape[1]))
    by_context: dict[int, list[Window]] = defaultdict(list)
    for w in windows:
        by_context[w.context].append(w)
    order = sorted(by_context)
    device = model_device(reader.model)
    for i in range(0, len(order), batch_size):
        chosen = order[i : i + batch_size]
        tokens = contexts[torch.tensor(chosen)].to(device)  # [b, n_ctx]
        acts = reader.capture(tokens)  # [b, n_ctx, d_in]
        local = {c: j for j, c in enumerate(chosen)}
        _fill(sae, acts, local, [w for c in chosen for w in by_context[c]], digits, start)
    return len(windows)
