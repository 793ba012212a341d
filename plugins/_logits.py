"""Logit weights: the direct effect of a feature's decoder direction on the next-token logits.

As in *Towards Monosemanticity*: the decoder row is mapped into the residual stream
(:func:`sae_lightning.hooks.residual_directions`: through ``W_out`` for MLP hooks, ``W_O``
for ``hook_z``, as it is for residual-stream and block-output hooks), the final norm is
approximated by its diagonal (mean removal first for a LayerNorm, not for an RMSNorm), and it
is unembedded with ``W_U``. The bridge's ``W_U``, ``blocks[l].mlp.W_out``, ``blocks[l].attn.W_O``
and ``ln_final.weight`` are read, in the same orientation for every model family.
"""

from __future__ import annotations

from typing import Any

import torch
from jaxtyping import Float
from torch import Tensor

from sae_lightning.hooks import residual_directions

LOGIT_CHUNK = 256  # features whose logit weights are computed at once


def logit_weights(
    model: Any, hook_name: str, w_dec: Float[Tensor, "f d_in"]
) -> Float[Tensor, "f vocab"] | None:
    """Direct effect of decoder directions on the logits (the paper's LayerNorm approximation).

    The rows are mapped into the residual stream (:func:`sae_lightning.hooks.
    residual_directions`: through ``W_out`` for MLP hooks, ``W_O`` for ``hook_z``, as they are
    for residual and output hooks); the final norm is approximated by its diagonal (mean
    removal first for a LayerNorm, not for an RMSNorm); then they are unembedded with
    ``W_U``. None for hooks without a linear path to the residual stream (q/k/v, others).

    Args:
        model: The frozen TransformerBridge.
        hook_name: Where the SAE reads, e.g. ``blocks.0.mlp.hook_post``.
        w_dec: Decoder rows ``[f, d_in]``.
    """
    w_u = model.W_U.detach().float()  # [d_model, vocab]
    w = residual_directions(model, hook_name, w_dec.detach().float().to(w_u.device))
    if w is None:
        return None
    if w.shape[1] != w_u.shape[0]:
        raise ValueError(
            f"hook {hook_name!r} has width {w.shape[1]}, but the residual stream is d_model="
            f"{w_u.shape[0]} wide"
        )
    if model.cfg.normalization_type in ("LN", "LNPre"):
        w = w - w.mean(dim=1, keepdim=True)
    ln = getattr(getattr(model, "ln_final", None), "weight", None)
    if ln is not None:
        w = w * ln.detach().float().to(w.device)  # [f, d_model]
    return w @ w_u  # [f, vocab]


def logit_summaries(
    weights: Float[Tensor, "f vocab"], n_tokens: int, n_bins: int
) -> dict[str, list[Any]]:
    """Per row: top and bottom ``n_tokens`` (ids and values) and an ``n_bins`` histogram on
    ``[min, max]`` (edges and counts), computed for all rows at once."""
    k = min(n_tokens, weights.shape[1])
    top, bottom = weights.topk(k, dim=1), weights.topk(k, dim=1, largest=False)
    lo, hi = weights.amin(dim=1), weights.amax(dim=1)  # [f]
    width = torch.where(hi > lo, hi - lo, 1.0)  # [f]; a constant row spans [lo, lo + 1]
    frac = ((weights - lo[:, None]) / width[:, None]).double()  # [f, vocab]
    bins = (frac * n_bins).long().clamp_(0, n_bins - 1)  # the max falls in the last bin
    flat = bins + torch.arange(weights.shape[0])[:, None] * n_bins
    counts = torch.bincount(flat.flatten(), minlength=weights.shape[0] * n_bins)
    steps = torch.linspace(0, 1, n_bins + 1, dtype=torch.float64)
    edges = lo.double()[:, None] + width.double()[:, None] * steps  # [f, n_bins + 1]
    return {
        "top_ids": top.indices.tolist(),
        "top_values": top.values.tolist(),
        "bottom_ids": bottom.indices.tolist(),
        "bottom_values": bottom.values.tolist(),
        "edges": edges.tolist(),
        "counts": counts.view(-1, n_bins).tolist(),
    }
