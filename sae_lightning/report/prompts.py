"""The prompt-centric view: which features fire on a prompt, how strongly, and what they do.

For each prompt: tokenise (BOS first), run the frozen model to the hook, encode with the
SAE; per token its strongest features; the features ranked by activation (their max over
the prompt), by activation quantile (that max over the feature's max activation in the
report) and by loss effect (the mean next-token loss with the feature removed at the hook
at every analysed position, minus the clean loss: positive means the feature helped).
Ablations are batched: one row per candidate feature, each row its own feature, many rows
per forward. As in the analysis, the BOS position is dropped by default: its activations
are not shown, ranked or ablated (``drop_bos=False`` keeps it).
"""

from __future__ import annotations

from typing import Any

import torch
from jaxtyping import Float, Int
from torch import Tensor

from sae_lightning.analysis.reader import Reader
from sae_lightning.analysis.records import TopActivationsResult, result_of
from sae_lightning.hooks import model_device
from sae_lightning.report.data import fmt, tokens_view


def prompt_tokens(model, text: str) -> Int[Tensor, " pos"]:
    """``text``'s token ids with the model's BOS in front (as the analysis contexts have)."""
    tokenizer = model.tokenizer
    ids = tokenizer(str(text), add_special_tokens=False)["input_ids"]
    if not ids:
        raise ValueError(f"prompt {text!r} has no tokens: give a non-empty prompt")
    bos = [tokenizer.bos_token_id] if tokenizer.bos_token_id is not None else []
    return torch.tensor(bos + list(ids), dtype=torch.long)


def _next_token_loss(logits: Float[Tensor, "r pos vocab"], tokens: Tensor) -> Float[Tensor, " r"]:
    """Mean next-token cross-entropy of each row."""
    logits = logits[:, :-1].float()  # [r, pos-1, vocab]
    picked = logits.gather(-1, tokens[:, 1:].unsqueeze(-1)).squeeze(-1)  # [r, pos-1]
    return (logits.logsumexp(-1) - picked).mean(dim=1)


@torch.inference_mode()
def loss_effects(
    sae,
    reader: Reader,
    tokens: Int[Tensor, " pos"],
    features: list[int],
    batch: int = 32,
    start: int = 0,
) -> tuple[float, list[float]]:
    """Clean loss, and per feature (ablated loss − clean loss) on ``tokens``.

    Each row of a forward removes one feature's contribution ``act * W_dec[f]`` where the
    decoder writes in ``reader.model`` (:meth:`Reader.ablation_hooks`), at positions ``start``
    onwards (1 leaves BOS alone, as training does).
    """
    model = reader.model
    row = tokens.to(model_device(model))[None]  # [1, pos]
    clean = float(_next_token_loss(model(row), row)[0])
    effects: list[float] = []
    for first in range(0, len(features), batch):
        chunk = features[first : first + batch]
        index = torch.tensor(chunk, device=sae.W_dec.device)
        rows = row.expand(len(chunk), -1)  # [r, pos]
        hooks, _ = reader.ablation_hooks(sae, index, rows, start)
        logits = model.run_with_hooks(rows, fwd_hooks=hooks)
        effects += (_next_token_loss(logits, rows) - clean).tolist()
    return clean, effects


def _entry(f: int, acts: Tensor, known: set[int], strs: list[str], scale: float) -> dict:
    column = acts[:, f].tolist()  # [pos]
    return {
        "feature": f,
        "known": f in known,
        "activation": max(column),
        "view": tokens_view(strs, column, scale),
    }


def _per_token(acts: Tensor, strs: list[str], known: set[int], per_token: int) -> list[dict]:
    """Per position: its token and its ``per_token`` strongest firing features."""
    top_vals, top_ids = acts.topk(min(per_token, acts.shape[1]), dim=1)  # [pos, k]
    rows = []
    for p, (vals, ids) in enumerate(zip(top_vals.tolist(), top_ids.tolist(), strict=True)):
        feats = [
            {"feature": f, "activation": v, "known": f in known}
            for v, f in zip(vals, ids, strict=True)
            if v > 0
        ]
        rows.append({"position": p, "token": strs[p], "features": feats})
    return rows


@torch.inference_mode()
def analyse_prompt(
    text: str,
    sae,
    reader: Reader,
    max_activation: dict[int, float],
    per_token: int = 5,
    n_ranked: int = 20,
    n_ablate: int = 64,
    drop_bos: bool = True,
) -> dict[str, Any]:
    """Everything ``prompts.html`` shows about one prompt (plain Python values).

    Args:
        max_activation: The report's max activation per analysed feature (for quantiles
            and links; features not in it are shown without a page link).
        per_token: Features listed per token.
        n_ranked: Rows of each ranking.
        n_ablate: Strongest features (by activation on the prompt) whose loss effect is measured.
        drop_bos: Leave the BOS position out (activation 0, not ablated), as the analysis does.
    """
    model = reader.model
    tokens = prompt_tokens(model, text)
    hooked = reader.capture(tokens.to(model_device(model))[None])[0]  # [pos, d_in]
    acts = sae.encode(hooked.to(sae.W_enc.dtype)).float().cpu()  # [pos, d_sae]
    start = int(drop_bos and bool(tokens[0] == model.tokenizer.bos_token_id))
    acts[:start] = 0.0  # BOS dropped: not shown, ranked or ablated
    strs = [model.tokenizer.decode([t]) for t in tokens.tolist()]
    known = set(max_activation)
    peak = acts.amax(dim=0)  # [d_sae]
    firing = [int(f) for f in torch.argsort(peak, descending=True, stable=True) if peak[f] > 0]
    rows = _per_token(acts, strs, known, per_token)
    scale = float(peak.max()) if firing else 1.0
    by_act = [_entry(f, acts, known, strs, float(peak[f])) for f in firing[:n_ranked]]
    quantiles = sorted(
        ((float(peak[f]) / max_activation[f], f) for f in firing
         if f in known and (max_activation[f] or 0) > 0),
        reverse=True,
    )[:n_ranked]  # fmt: skip
    by_quantile = [
        _entry(f, acts, known, strs, max_activation[f]) | {"quantile": q} for q, f in quantiles
    ]
    candidates = firing[:n_ablate]
    clean, effects = loss_effects(sae, reader, tokens, candidates, start=start)
    ranked = sorted(zip(effects, candidates, strict=True), key=lambda e: -abs(e[0]))[:n_ranked]
    by_loss = [_entry(f, acts, known, strs, float(peak[f])) | {"loss_effect": e} for e, f in ranked]
    strongest = acts.amax(dim=1).tolist()  # [pos]
    return {
        "text": text,
        "tokens": strs,
        "view": tokens_view(strs, strongest, scale),
        "clean_loss": clean,
        "per_token": rows,
        "by_activation": by_act,
        "by_quantile": by_quantile,
        "by_loss": by_loss,
        "summary": f"{len(firing)} features fire; clean loss {fmt(clean)}",
    }


def analyse_prompts(
    prompts: str | list[str], sae, reader: Reader, report: dict[str, Any]
) -> list[dict[str, Any]]:
    """:func:`analyse_prompt` of each prompt, with quantiles against the report's maxima and
    BOS dropped or kept as the report's analysis did (``metadata.drop_bos``)."""
    texts = [prompts] if isinstance(prompts, str) else [str(p) for p in prompts]
    if not texts:
        raise ValueError("prompt=[] gives no prompt: pass a text or a list of texts")
    max_activation = {}
    for key, per_feature in report["features"].items():
        top = result_of(per_feature, TopActivationsResult, nested=False)
        max_activation[int(key)] = float((top.max_activation if top else None) or 0.0)
    drop_bos = bool(report["metadata"].get("drop_bos", True))
    return [analyse_prompt(t, sae, reader, max_activation, drop_bos=drop_bos) for t in texts]
