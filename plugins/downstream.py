"""Downstream effects of each feature: its logit weights and what ablating it does.

Logit weights (:mod:`plugins._logits`) follow *Towards Monosemanticity*'s direct path.

Ablations run after the pass on each feature's top contexts (the ``TOP_EXAMPLES`` artefact
of :mod:`plugins.top_activations`; without it, no ablations): the model runs clean and with
``act_f * W_dec[f]`` subtracted at the hook at every analysed position (not BOS when it is
dropped, as in training), on each context's prefix up to ``ablation_window`` tokens after
its last top example, and the change in log-prob of the actual next tokens is reported.
The verdict is None: in a one-layer model the tokens a feature predicts are usually not the
tokens it reads, so no pass/fail rule follows from the logit weights."""

from __future__ import annotations

from typing import ClassVar

import torch
from jaxtyping import Float, Int
from torch import Tensor
from typing_extensions import override

from plugins._common import module_device
from plugins._logits import LOGIT_CHUNK, logit_summaries, logit_weights
from sae_lightning.analysis.artefacts import TOP_EXAMPLES
from sae_lightning.analysis.criterion import AnalysisBatch, AnalysisContext, Criterion
from sae_lightning.analysis.records import Ablation, DownstreamResult, LogitHistogram


def _next_logprobs(
    logits: Float[Tensor, "c pos vocab"], tokens: Int[Tensor, "c pos"]
) -> Float[Tensor, "c pos_1"]:
    """Log-prob of each actual next token (no full log-softmax copy of the logits)."""
    logits = logits[:, :-1].float()  # [c, pos-1, vocab]
    picked = logits.gather(-1, tokens[:, 1:].unsqueeze(-1)).squeeze(-1)  # [c, pos-1]
    return picked - logits.logsumexp(dim=-1)


@torch.no_grad()
def ablation_deltas(
    ctx: AnalysisContext,
    features: list[int],
    tokens: Int[Tensor, "r pos"],
    lengths: list[int] | None = None,
    batch_size: int = 32,
) -> tuple[list[Float[Tensor, " len_1"]], list[Float[Tensor, " len_1"]]]:
    """Change in next-token log-prob when ``features[r]`` is removed at the hook in row ``r``.

    Row ``r`` runs only on its prefix ``tokens[r, :lengths[r]]``: the model is causal, so a
    prefix gives exactly the log-probs the whole context would, up to its end. Rows are
    ablated ``batch_size`` at a time (longest first, so a batch is cut to about one length),
    each with its own feature; the clean log-probs are computed once per distinct context.

    Returns:
        ``(deltas, acts)``, one ``[lengths[r] - 1]`` tensor per row: ``deltas[r][p]`` is
        ablated minus clean log-prob of ``tokens[r, p + 1]``; ``acts[r][p]`` is feature
        ``features[r]``'s activation at position ``p`` (0, and not ablated, before
        ``ctx.start``: the BOS position when it is dropped).
    """
    device = module_device(ctx.model)
    lengths = [tokens.shape[1]] * tokens.shape[0] if lengths is None else lengths
    unique, inverse = torch.unique(tokens, dim=0, return_inverse=True)  # distinct contexts
    need = [0] * unique.shape[0]
    for row, u in enumerate(inverse.tolist()):
        need[u] = max(need[u], lengths[row])
    clean: list[Tensor] = [torch.empty(0)] * unique.shape[0]
    for group in _by_length(need, batch_size):
        chunk = unique[group, : need[group[0]]].to(device)
        for u, logprobs in zip(group, _next_logprobs(ctx.model(chunk), chunk).cpu(), strict=True):
            clean[u] = logprobs
    deltas: list[Tensor] = [torch.empty(0)] * tokens.shape[0]
    acts: list[Tensor] = [torch.empty(0)] * tokens.shape[0]
    for group in _by_length(lengths, batch_size):
        chunk = tokens[group, : lengths[group[0]]].to(device)
        index = torch.tensor([features[r] for r in group], device=ctx.sae.W_dec.device)
        logprobs, act = _ablated_logprobs(ctx, chunk, index)
        for i, r in enumerate(group):
            n = lengths[r] - 1
            deltas[r] = logprobs[i, :n].cpu() - clean[int(inverse[r])][:n]
            acts[r] = act[i, :n].float().cpu()
    return deltas, acts


def _by_length(lengths: list[int], batch_size: int) -> list[list[int]]:
    """Indices in batches of ``batch_size``, longest first (each batch's first is longest)."""
    order = sorted(range(len(lengths)), key=lambda i: -lengths[i])
    return [order[i : i + batch_size] for i in range(0, len(order), batch_size)]


def _ablated_logprobs(
    ctx: AnalysisContext, tokens: Int[Tensor, "r pos"], index: Int[Tensor, " r"]
) -> tuple[Float[Tensor, "r pos_1"], Float[Tensor, "r pos"]]:
    """Next-token log-probs with feature ``index[r]``'s output ``act * W_dec[f]`` subtracted
    from row ``r`` at the decoder's hook (a transcoder's output hook) at the analysed
    positions (``ctx.start`` onwards: BOS is left alone when dropped, as training splices the
    SAE back), and the removed activations (0 before ``ctx.start``)."""
    hooks, box = ctx.reader.ablation_hooks(ctx.sae, index, tokens, ctx.start)
    logits = ctx.model.run_with_hooks(tokens, fwd_hooks=hooks)
    return _next_logprobs(logits, tokens), box[0]


class Downstream(Criterion):
    """Logit weights (top/bottom tokens, histogram) and ablation effects of each feature.

    Args:
        n_tokens: Top and bottom logit-weight tokens reported.
        n_bins: Bins of the logit-weight histogram.
        ablation_contexts: Top contexts per feature to ablate on (distinct contexts).
        ablation_window: Tokens after a context's last top example that are ablated too
            (the prefix up to there is what a dashboard shows; the model is causal, so
            nothing after it is computed).
        ablation_max_features: Ablate only the first this-many analysed features that fired
            (two forward passes each); the others report logit weights only.
    """

    name: ClassVar[str] = DownstreamResult.criterion
    headline: ClassVar[str | None] = DownstreamResult.headline
    uses = (TOP_EXAMPLES,)  # ablations on the top contexts when top_activations runs

    def __init__(
        self,
        n_tokens: int = 10,
        n_bins: int = 50,
        ablation_contexts: int = 8,
        ablation_max_features: int = 64,
        ablation_window: int = 8,
    ) -> None:
        super().__init__()
        for key, value in (("n_tokens", n_tokens), ("n_bins", n_bins)):
            if value < 1:
                raise ValueError(f"{key} must be a positive int, got {value!r}")
        for key, value in (
            ("ablation_contexts", ablation_contexts),
            ("ablation_max_features", ablation_max_features),
            ("ablation_window", ablation_window),
        ):
            if value < 0:
                raise ValueError(f"{key} must be >= 0, got {value!r}")
        self.n_tokens, self.n_bins = n_tokens, n_bins
        self.ablation_contexts = ablation_contexts
        self.ablation_max_features = ablation_max_features
        self.ablation_window = ablation_window

    @override
    def setup_metrics(self, n_features: int, ctx: AnalysisContext) -> None:
        """Nothing streams: logit weights are static and ablations run at the end."""

    @override
    def update(self, batch: AnalysisBatch, ctx: AnalysisContext) -> None:
        """Nothing to accumulate."""

    def _ablations(self, ctx: AnalysisContext) -> dict[int, Ablation]:
        """Ablation effects on the top contexts of the first ``ablation_max_features``
        analysed features that fired (all ablated together, see :func:`ablation_deltas`)."""
        n_ctx = ctx.contexts.shape[1]
        top_examples = ctx.artefacts.find(TOP_EXAMPLES) or {}
        chosen: dict[int, list[int]] = {}
        for f in ctx.features:
            if len(chosen) >= self.ablation_max_features or not self.ablation_contexts:
                break
            examples = top_examples.get(f, [])
            ends: dict[int, int] = {}  # context -> end of its shown prefix
            for i, _ in examples:
                c, pos = divmod(i, n_ctx)
                if c in ends or len(ends) < self.ablation_contexts:
                    ends[c] = max(ends.get(c, 0), min(n_ctx, pos + 1 + self.ablation_window))
            if ends:
                chosen[f] = ends
        if not chosen:
            return {}
        rows = [(f, c, end) for f, ends in chosen.items() for c, end in ends.items()]
        tokens = ctx.contexts[[c for _, c, _ in rows]]  # [r, n_ctx]
        deltas, acts = ablation_deltas(
            ctx, [f for f, _, _ in rows], tokens, [end for _, _, end in rows]
        )  # per row: [end - 1]
        out, start = {}, 0
        for f, ends in chosen.items():
            d = torch.cat(deltas[start : start + len(ends)])
            fired = torch.cat(acts[start : start + len(ends)]) > 0
            top = rows[start]
            out[f] = Ablation(
                contexts=list(ends),
                context_ends=list(ends.values()),
                mean_delta_logprob_where_fired=float(d[fired].mean()) if fired.any() else None,
                mean_delta_logprob=float(d.mean()),
                top_context_tokens=[ctx.str_tokens[t] for t in tokens[start, : top[2]].tolist()],
                top_context_delta=deltas[start].tolist(),  # prediction of token p+1
            )
            start += len(ends)
        return out

    @override
    def results(self, ctx: AnalysisContext) -> dict[int, DownstreamResult]:
        ablations = self._ablations(ctx)
        names = ctx.str_tokens
        out: dict[int, DownstreamResult] = {}
        for start in range(0, len(ctx.features), LOGIT_CHUNK):  # [F, vocab] can be gigabytes
            chunk = ctx.features[start : start + LOGIT_CHUNK]
            w_dec = ctx.reader.own_block(ctx.sae.W_dec[chunk])  # a crosscoder: model A's block
            weights = logit_weights(ctx.model, ctx.write_hook, w_dec)
            logits = self._logit_records(weights, names, len(chunk), ctx.write_hook)
            for f, record in zip(chunk, logits, strict=True):
                record.ablation = ablations.get(f)
                if record.ablation is not None:
                    record.ablation_delta_logprob = record.ablation.mean_delta_logprob_where_fired
                out[f] = record
        return out

    def _logit_records(
        self, weights: Tensor | None, names: list[str], n: int, hook_name: str
    ) -> list[DownstreamResult]:
        """Top/bottom tokens and histogram of each row of ``weights``; for a hook without
        logit weights, empty records saying why."""
        if weights is None:
            note = f"no logit weights: {hook_name!r} has no linear path to the residual stream"
            return [DownstreamResult(logit_note=note) for _ in range(n)]
        s = logit_summaries(weights.cpu(), self.n_tokens, self.n_bins)
        return [
            DownstreamResult(
                top_tokens=[names[i] for i in s["top_ids"][row]],
                top_values=s["top_values"][row],
                bottom_tokens=[names[i] for i in s["bottom_ids"][row]],
                bottom_values=s["bottom_values"][row],
                histogram=LogitHistogram(edges=s["edges"][row], counts=s["counts"][row]),
            )
            for row in range(n)
        ]

    @override
    def summary(self, results: dict[int, DownstreamResult]) -> dict[str, float]:
        means = [
            r.ablation_delta_logprob
            for r in results.values()
            if r.ablation_delta_logprob is not None
        ]
        return {"mean_ablation_delta_logprob": sum(means) / len(means)} if means else {}
