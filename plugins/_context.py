"""Context refinement of automatic proxies: the class of the *next* token.

A token-set proxy cannot tell a sentence-final ``.`` from an attribute ``.`` (``os.path``):
both are the same token. The text can: a sentence-final full stop is followed by
whitespace. When at least ``purity`` of a feature's first-pass activation mass on its proxy
tokens sits at positions whose next token starts with whitespace (or at least ``purity``
sits at positions whose next token does not), while the proxy tokens themselves occur in
that class less often than ``purity`` (so the refinement says something the token alone
does not), the proxy is refined to "proxy token, and the next token is (not)
whitespace-initial". Positions whose next token is unknown (the last of
a context) are left out of a refined feature's counts. The proxy is a label on the text,
not on what the model sees, so it may look ahead.
"""

from __future__ import annotations

import torch
from jaxtyping import Bool, Int
from torch import Tensor

from plugins._common import feature_acts
from sae_lightning.analysis.criterion import AnalysisContext

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


@torch.no_grad()
def refinements(
    ctx: AnalysisContext,
    masks: Bool[Tensor, "n_features vocab"],
    n_contexts: int,
    purity: float,
    batch_size: int = 16,
) -> Int[Tensor, " n_features"]:
    """Per feature: ``NONE``, ``NEXT_WS`` or ``NEXT_NOT_WS`` from the first contexts."""
    ws_vocab = whitespace_vocab(ctx.str_tokens)
    n_features = masks.shape[0]
    ws_mass = torch.zeros(n_features, dtype=torch.float64)  # feature mass, next token ws
    known_mass = torch.zeros(n_features, dtype=torch.float64)
    ws_occ = torch.zeros(n_features, dtype=torch.float64)  # proxy-token occurrences, same split
    known_occ = torch.zeros(n_features, dtype=torch.float64)
    contexts = ctx.contexts[:n_contexts]
    for start in range(0, contexts.shape[0], batch_size):
        tokens = contexts[start : start + batch_size]  # [b, pos]
        acts = feature_acts(ctx, tokens).double().cpu()  # [b, pos, F]
        on_proxy = masks[:, tokens].permute(1, 2, 0)  # [b, pos, F]
        next_ws, known = next_token_classes(tokens, ws_vocab)
        occ = (on_proxy & known.unsqueeze(-1)).double()  # [b, pos, F]
        mass = acts.clamp(min=0) * occ
        known_mass += mass.sum((0, 1))
        ws_mass += (mass * next_ws.unsqueeze(-1)).sum((0, 1))
        known_occ += occ.sum((0, 1))
        ws_occ += (occ * next_ws.unsqueeze(-1)).sum((0, 1))
    mass_ws = ws_mass / known_mass.clamp(min=1e-30)  # [F]
    occ_ws = ws_occ / known_occ.clamp(min=1e-30)  # [F]
    fired = known_mass > 0
    refine = torch.full((n_features,), NONE, dtype=torch.int8)
    refine[fired & (mass_ws >= purity) & (occ_ws < purity)] = NEXT_WS
    refine[fired & (1 - mass_ws >= purity) & (1 - occ_ws < purity)] = NEXT_NOT_WS
    return refine


def apply(
    proxy: Bool[Tensor, "n n_features"],
    refine: Int[Tensor, " n_features"],
    next_ws: Bool[Tensor, " n"],
    known: Bool[Tensor, " n"],
) -> tuple[Bool[Tensor, "n n_features"], Bool[Tensor, "n n_features"]]:
    """``(proxy, valid)``: the refined proxy, and which positions count for each feature."""
    r = refine.to(proxy.device).unsqueeze(0)  # [1, F]
    ws, kn = next_ws.unsqueeze(1), known.unsqueeze(1)  # [n, 1]
    context_ok = (r == NONE) | ((r == NEXT_WS) & ws) | ((r == NEXT_NOT_WS) & ~ws)
    valid = (r == NONE) | kn  # [n, F]
    return proxy & context_ok & valid, valid
