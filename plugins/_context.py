"""Context refinement of automatic proxies: the class of the *next* token.

A token-set proxy cannot tell a sentence-final ``.`` from an attribute ``.`` (``os.path``):
both are the same token. The text can: a sentence-final full stop is followed by
whitespace. When at least ``purity`` of a feature's *top* activation mass on its proxy
tokens (first pass, activations above half the feature's max: what it responds to, not
its weak background firing) sits at positions whose next token starts with whitespace
(or at least ``purity`` sits at positions whose next token does not), while the proxy
tokens themselves occur in that class less often than ``purity`` (so the refinement says
something the token alone does not), the proxy is refined to "proxy token, and the next
token is (not) whitespace-initial". Positions whose next token is unknown (the last of a
context) are left out of a refined feature's counts. The proxy is a label on the text,
not on what the model sees, so it may look ahead.
"""

from __future__ import annotations

import torch
from jaxtyping import Bool, Float, Int
from torch import Tensor

from plugins._common import first_pass
from sae_lightning.analysis.criterion import AnalysisContext
from sae_lightning.metrics.sparse import segment_sum

NONE, NEXT_WS, NEXT_NOT_WS = 0, 1, 2
DESCRIPTIONS = {
    NONE: "",
    NEXT_WS: ", next token starts with whitespace",
    NEXT_NOT_WS: ", next token does not start with whitespace",
}


def whitespace_vocab(str_tokens: list[str]) -> Bool[Tensor, " vocab"]:
    """Whether each vocabulary string starts with whitespace (a newline counts)."""
    return torch.tensor([s[:1].isspace() for s in str_tokens], dtype=torch.bool)


def next_token_classes(
    tokens: Int[Tensor, "batch pos"], ws_vocab: Bool[Tensor, " vocab"]
) -> tuple[Bool[Tensor, "batch pos"], Bool[Tensor, "batch pos"]]:
    """``(next_ws, known)``: the next token starts with whitespace; there is a next token."""
    ws_vocab = ws_vocab.to(tokens.device)
    next_ws = torch.zeros_like(tokens, dtype=torch.bool)
    next_ws[:, :-1] = ws_vocab[tokens[:, 1:]]
    known = torch.ones_like(tokens, dtype=torch.bool)
    known[:, -1] = False
    return next_ws, known


def token_classes(
    tokens: Int[Tensor, "batch pos"], ws_vocab: Bool[Tensor, " vocab"]
) -> Int[Tensor, "batch pos"]:
    """Per position: ``0`` next token whitespace-initial, ``1`` it is not, ``2`` no next token."""
    next_ws, known = next_token_classes(tokens, ws_vocab)
    return torch.where(known, (~next_ws).long(), 2)


def class_counts(
    tokens: Int[Tensor, "batch pos"], ws_vocab: Bool[Tensor, " vocab"]
) -> Int[Tensor, "vocab 3"]:
    """Occurrences of each vocabulary token in each :func:`token_classes` class."""
    flat = tokens.flatten() * 3 + token_classes(tokens, ws_vocab).flatten()
    return torch.bincount(flat, minlength=3 * ws_vocab.numel()).view(-1, 3)


def proxy_occurrences(
    masks: Bool[Tensor, "*f vocab"], counts: Int[Tensor, "vocab 3"], refine: Int[Tensor, " f"]
) -> Float[Tensor, " f"]:
    """Per feature, occurrences of its (refined) proxy, from per-token :func:`class_counts`
    (``masks`` has one row per feature, or one row shared by all)."""
    per_class = masks.double() @ counts.to(masks.device).double()  # [f or 1, 3]
    refine = refine.to(masks.device).long()
    per_class = per_class.expand(refine.shape[0], 3)
    refined = per_class.gather(1, (refine - 1).clamp(min=0).unsqueeze(1)).squeeze(1)
    return torch.where(refine == NONE, per_class.sum(1), refined)


@torch.no_grad()
def refinements(
    ctx: AnalysisContext,
    masks: Bool[Tensor, "n_features vocab"],
    n_contexts: int,
    purity: float,
) -> Int[Tensor, " n_features"]:
    """Per feature: ``NONE``, ``NEXT_WS`` or ``NEXT_NOT_WS``, from the first pass's entries."""
    ws_vocab = whitespace_vocab(ctx.str_tokens)
    n_features = masks.shape[0]
    fp = first_pass(ctx, n_contexts)
    e, width = fp.entries, ctx.contexts.shape[1] - ctx.start  # analysed positions per context
    classes = token_classes(fp.tokens.view(-1, width), ws_vocab).flatten()[e.rows]  # [m]
    strong = e.values > 0.5 * fp.max_act[e.cols]  # [m]: the feature's top activations
    on_proxy = masks[e.cols, fp.tokens[e.rows]] & (classes < 2) & strong  # next token known
    known_mass = segment_sum(e.cols[on_proxy], e.values[on_proxy], n_features)
    ws = on_proxy & (classes == 0)
    ws_mass = segment_sum(e.cols[ws], e.values[ws], n_features)
    counts = class_counts(fp.tokens.view(-1, width), ws_vocab)  # [vocab, 3]
    ws_occ = masks.double() @ counts[:, 0].double()  # [F] proxy occurrences, next ws
    known_occ = masks.double() @ counts[:, :2].sum(1).double()
    mass_ws = ws_mass / known_mass.clamp(min=1e-30)  # [F]
    occ_ws = ws_occ / known_occ.clamp(min=1e-30)  # [F]
    fired = known_mass > 0
    refine = torch.full((n_features,), NONE, dtype=torch.int8)
    refine[fired & (mass_ws >= purity) & (occ_ws < purity)] = NEXT_WS
    refine[fired & (1 - mass_ws >= purity) & (1 - occ_ws < purity)] = NEXT_NOT_WS
    return refine


def apply(
    proxy: Bool[Tensor, "*n"],
    refine: Int[Tensor, "*n"],
    next_class: Int[Tensor, "*n"],
) -> tuple[Bool[Tensor, "*n"], Bool[Tensor, "*n"]]:
    """``(proxy, valid)`` elementwise (broadcasting): the refined proxy, and whether the
    position counts for the feature at all (a refined proxy needs a next token)."""
    r = refine.to(proxy.device)
    context_ok = (
        (r == NONE)
        | ((r == NEXT_WS) & (next_class == 0))
        | ((r == NEXT_NOT_WS) & (next_class == 1))
    )
    valid = (r == NONE) | (next_class < 2)
    return proxy & context_ok & valid, valid
