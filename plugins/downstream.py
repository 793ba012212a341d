"""Downstream effects of each feature: its logit weights and what ablating it does.

Logit weights follow *Towards Monosemanticity*: the decoder direction is mapped into the
residual stream (through ``W_out`` when the hook is ``mlp.hook_post``; as is when the hook
already lives in ``d_model``), the final LayerNorm is approximated by removing the mean
over ``d_model`` and scaling by its weight (a diagonal), then it is unembedded. Weights are
read from ``ctx.model.state_dict()``: ``blocks.{layer}.mlp.out.weight`` (an ``nn.Linear``,
``[d_model, d_mlp]``), ``ln_final.weight`` (``[d_model]``, ones if absent) and
``unembed.weight`` (``[vocab, d_model]``).

Ablations run after the pass on each feature's top contexts (``ctx.extras["top_examples"]``
from :mod:`plugins.top_activations`): the model runs clean and with ``act_f * W_dec[f]``
subtracted at the hook at every position, and the change in log-prob of the actual next
tokens is reported. The verdict is None: in a one-layer model the tokens a feature predicts
are usually not the tokens it reads, so no pass/fail rule follows from the logit weights.
"""

from __future__ import annotations

import re
from typing import Any, ClassVar

import torch
from jaxtyping import Float, Int
from torch import Tensor
from typing_extensions import override

from plugins._common import module_device
from sae_lightning.analysis.criterion import AnalysisBatch, AnalysisContext, Criterion

LOGIT_CHUNK = 256  # features whose logit weights are computed at once


def _weight(state: dict[str, Tensor], key: str) -> Tensor:
    """``state[key]`` as float32, or a clear error listing similar keys."""
    if key not in state:
        near = sorted(k for k in state if k.split(".")[-1] == key.split(".")[-1])
        raise ValueError(f"the model has no weight {key!r} for logit weights; similar: {near}")
    return state[key].detach().float()


def logit_weights(
    model: Any, hook_name: str, w_dec: Float[Tensor, "f d_in"]
) -> Float[Tensor, "f vocab"]:
    """Direct effect of decoder directions on the logits (the paper's LayerNorm approximation).

    ``w = W_dec @ W_out`` (only for an ``mlp.hook_post`` hook), then
    ``(w - mean(w)) * ln_final.weight @ W_U``.

    Args:
        model: The frozen model; only its ``state_dict()`` is read.
        hook_name: Where the SAE reads, e.g. ``blocks.0.mlp.hook_post``.
        w_dec: Decoder rows ``[f, d_in]``.
    """
    state = model.state_dict()
    w_u = _weight(state, "unembed.weight")  # [vocab, d_model]
    w = w_dec.detach().float().to(w_u.device)  # [f, d_in]
    mlp = re.fullmatch(r"blocks\.(\d+)\.mlp\.hook_post", hook_name)
    if mlp:
        w_out = _weight(state, f"blocks.{mlp.group(1)}.mlp.out.weight")  # [d_model, d_mlp]
        if w.shape[1] != w_out.shape[1]:
            raise ValueError(
                f"decoder width {w.shape[1]} does not match d_mlp={w_out.shape[1]} of {hook_name!r}"
            )
        w = w @ w_out.T  # [f, d_model]
    elif w.shape[1] != w_u.shape[1]:
        raise ValueError(
            f"hook {hook_name!r} has width {w.shape[1]}, neither an MLP hook nor d_model="
            f"{w_u.shape[1]}; logit weights need one of the two"
        )
    ln = state.get("ln_final.weight")
    scale = ln.detach().float().to(w.device) if ln is not None else torch.ones_like(w[0])
    w = (w - w.mean(dim=1, keepdim=True)) * scale  # [f, d_model]
    return w @ w_u.T  # [f, vocab]


def _next_logprobs(
    logits: Float[Tensor, "c pos vocab"], tokens: Int[Tensor, "c pos"]
) -> Float[Tensor, "c pos_1"]:
    """Log-prob of each actual next token (no full log-softmax copy of the logits)."""
    logits = logits[:, :-1].float()  # [c, pos-1, vocab]
    picked = logits.gather(-1, tokens[:, 1:].unsqueeze(-1)).squeeze(-1)  # [c, pos-1]
    return picked - logits.logsumexp(dim=-1)


@torch.no_grad()
def ablation_deltas(
    ctx: AnalysisContext, feature: int, tokens: Int[Tensor, "c pos"]
) -> tuple[Float[Tensor, "c pos_1"], Float[Tensor, "c pos_1"]]:
    """Change in next-token log-prob when ``feature`` is removed at the hook.

    Returns:
        ``(delta, acts)``: ``delta[c, p]`` is ablated minus clean log-prob of ``tokens[c,
        p + 1]``; ``acts[c, p]`` is the feature's activation at position ``p``.
    """
    tokens = tokens.to(module_device(ctx.model))
    w_dec = ctx.sae.W_dec[feature]  # [d_in]
    box: list[Tensor] = []

    def remove(x: Tensor, hook: Any) -> Tensor:
        act = ctx.sae.encode(x.to(w_dec.dtype))[..., feature]  # [c, pos]
        box.append(act)
        return x - (act.unsqueeze(-1) * w_dec).to(x.dtype)

    clean = _next_logprobs(ctx.model(tokens), tokens)  # [c, pos-1]
    ablated = ctx.model.run_with_hooks(tokens, fwd_hooks=[(ctx.hook_name, remove)])
    delta = _next_logprobs(ablated, tokens) - clean  # [c, pos-1]
    return delta.cpu(), box[0][:, :-1].float().cpu()


class Downstream(Criterion):
    """Logit weights (top/bottom tokens, histogram) and ablation effects of each feature.

    Args:
        n_tokens: Top and bottom logit-weight tokens reported.
        n_bins: Bins of the logit-weight histogram.
        ablation_contexts: Top contexts per feature to ablate on (distinct contexts).
        ablation_max_features: Ablate only the first this-many analysed features that fired
            (two forward passes each); the others report logit weights only.
    """

    name: ClassVar[str] = "downstream"
    order: ClassVar[int] = 30
    headline: ClassVar[str] = (
        "ablation_delta_logprob"  # the result key the report's scorecard shows
    )

    def __init__(
        self,
        n_tokens: int = 10,
        n_bins: int = 50,
        ablation_contexts: int = 8,
        ablation_max_features: int = 64,
    ) -> None:
        super().__init__()
        for key, value in (("n_tokens", n_tokens), ("n_bins", n_bins)):
            if value < 1:
                raise ValueError(f"{key} must be a positive int, got {value!r}")
        for key, value in (
            ("ablation_contexts", ablation_contexts),
            ("ablation_max_features", ablation_max_features),
        ):
            if value < 0:
                raise ValueError(f"{key} must be >= 0, got {value!r}")
        self.n_tokens, self.n_bins = n_tokens, n_bins
        self.ablation_contexts = ablation_contexts
        self.ablation_max_features = ablation_max_features

    @override
    def setup_metrics(self, n_features: int, ctx: AnalysisContext) -> None:
        """Nothing streams: logit weights are static and ablations run at the end."""

    @override
    def update(self, batch: AnalysisBatch, ctx: AnalysisContext) -> None:
        """Nothing to accumulate."""

    def _logit_result(self, ctx: AnalysisContext, weights: Tensor) -> dict[str, Any]:
        """Top/bottom tokens and the histogram of one feature's logit weights ``[vocab]``."""
        k = min(self.n_tokens, weights.numel())
        top, bottom = weights.topk(k), weights.topk(k, largest=False)
        lo, hi = float(weights.min()), float(weights.max())
        counts = torch.histc(weights, bins=self.n_bins, min=lo, max=hi if hi > lo else lo + 1)
        edges = torch.linspace(lo, hi if hi > lo else lo + 1, self.n_bins + 1)
        return {
            "top_tokens": [ctx.str_tokens[i] for i in top.indices.tolist()],
            "top_values": top.values.tolist(),
            "bottom_tokens": [ctx.str_tokens[i] for i in bottom.indices.tolist()],
            "bottom_values": bottom.values.tolist(),
            "histogram": {"edges": edges.tolist(), "counts": counts.long().tolist()},
        }

    def _ablation_result(self, ctx: AnalysisContext, feature: int) -> dict[str, Any] | None:
        """Ablation effects on the feature's top contexts, or None if it never fired."""
        n_ctx = ctx.contexts.shape[1]
        examples = ctx.extras.get("top_examples", {}).get(feature, [])
        contexts = list(dict.fromkeys(i // n_ctx for i, _ in examples))[: self.ablation_contexts]
        if not contexts:
            return None
        tokens = ctx.contexts[contexts]  # [c, n_ctx]
        delta, acts = ablation_deltas(ctx, feature, tokens)  # [c, n_ctx-1] each
        fired = acts > 0
        mean = float(delta[fired].mean()) if fired.any() else None
        return {
            "contexts": contexts,
            "mean_delta_logprob_where_fired": mean,
            "mean_delta_logprob": float(delta.mean()),
            "top_context_tokens": [ctx.str_tokens[t] for t in tokens[0].tolist()],
            "top_context_delta": delta[0].tolist(),  # [n_ctx-1]: prediction of token p+1
        }

    @override
    def results(self, ctx: AnalysisContext) -> dict[int, dict[str, Any]]:
        out: dict[int, dict[str, Any]] = {}
        ablated = 0
        for row, f in enumerate(ctx.features):
            if row % LOGIT_CHUNK == 0:  # [chunk, vocab] at a time: [F, vocab] can be gigabytes
                w_dec = ctx.sae.W_dec[ctx.features[row : row + LOGIT_CHUNK]]  # [chunk, d_in]
                weights = logit_weights(ctx.model, ctx.hook_name, w_dec).cpu()
            logits = weights[row % LOGIT_CHUNK]  # [vocab]
            ablation = None
            if ablated < self.ablation_max_features and self.ablation_contexts:
                ablation = self._ablation_result(ctx, f)
                ablated += ablation is not None
            out[f] = {
                **self._logit_result(ctx, logits),
                "ablation_delta_logprob": None
                if ablation is None
                else ablation["mean_delta_logprob_where_fired"],
                "ablation": ablation,
                "verdict": None,
            }
        return out

    @override
    def summary(self, results: dict[int, dict[str, Any]]) -> dict[str, float]:
        means = [
            r["ablation_delta_logprob"]
            for r in results.values()
            if r.get("ablation_delta_logprob") is not None
        ]
        return {"mean_ablation_delta_logprob": sum(means) / len(means)} if means else {}
