"""Downstream effects and universality: logit weights and ablations by hand, permuted SAEs."""

from __future__ import annotations

import pytest
import torch
from test_plugins import HOOK, random_ctx, run, true_acts  # noqa: F401

from plugins._logits import logit_weights
from plugins.downstream import Downstream, ablation_deltas
from plugins.universality import Universality
from sae_lightning.analysis.artefacts import TOP_EXAMPLES
from sae_lightning.analysis.criterion import AnalysisContext
from sae_lightning.saes import ReLUSAE


def test_universality_recovers_a_permutation(random_ctx):  # noqa: F811
    perm = torch.tensor([3, 0, 5, 1, 4, 2])
    sae = random_ctx.sae
    other = ReLUSAE(8, 6, apply_b_dec_to_input=False)
    with torch.no_grad():
        other.W_enc.copy_(sae.W_enc[:, perm])
        other.b_enc.copy_(sae.b_enc[perm])
        other.W_dec.copy_(sae.W_dec[perm])
    random_ctx.other_sae, random_ctx.features = other, list(range(6))
    acts = true_acts(random_ctx)
    fired = [f for f in range(6) if acts[:, f].std() > 0]
    res = run(Universality(), random_ctx, size=4)
    inverse = perm.argsort()
    for f in fired:
        assert res[f].best_match == int(inverse[f])
        assert res[f].activation_corr == pytest.approx(1.0)
        assert res[f].logit_weight_corr == pytest.approx(1.0)
        assert res[f].verdict is True
    summary = Universality().summary(res)
    assert summary["median_best_match_corr"] <= 1.0 + 1e-12
    assert "median_neuron_baseline_corr" in summary


def test_universality_without_a_second_sae(random_ctx):  # noqa: F811
    res = run(Universality(neuron_baseline=False), random_ctx, size=5)
    assert all(r.verdict is None and "compare_with" in r.note for r in res.values())


def test_logit_weights_by_hand(random_ctx):  # noqa: F811
    w = random_ctx.model.weights
    w_dec = random_ctx.sae.W_dec.detach()
    expected = []
    for row in w_dec:
        resid = w["blocks.0.mlp.out.weight"] @ row  # [d_model]
        resid = (resid - resid.mean()) * w["ln_final.weight"]
        expected.append(w["unembed.weight"] @ resid)  # [vocab]
    got = logit_weights(random_ctx.model, HOOK, w_dec)
    torch.testing.assert_close(got, torch.stack(expected))
    res = run(Downstream(n_tokens=3, n_bins=4, ablation_contexts=0), random_ctx, size=5)
    weights = got[random_ctx.features[1]]
    assert res[2].top_tokens == [f"t{i}" for i in weights.topk(3).indices.tolist()]
    assert res[2].bottom_values == pytest.approx(weights.sort().values[:3].tolist())
    assert sum(res[2].histogram.counts) == 12 and res[2].ablation is None
    for row, f in enumerate(random_ctx.features):  # every row's histogram equals histc's
        w = got[f]
        expected = torch.histc(w, bins=4, min=float(w.min()), max=float(w.max()))
        assert res[f].histogram.counts == expected.long().tolist(), row
        assert res[f].histogram.edges[-1] == pytest.approx(float(w.max()))


def test_ablation_on_the_embedded_model(embedded_model):
    sae = ReLUSAE(1024, 2, apply_b_dec_to_input=False)
    with torch.no_grad():
        sae.b_enc.copy_(torch.tensor([-1e6, 10.0]))  # feature 0 never fires, 1 always does
        sae.W_dec[1] *= 20.0
    contexts = torch.randint(0, 4096, (2, 12), generator=torch.Generator().manual_seed(0))
    ctx = AnalysisContext(  # random tokens, no BOS: position 0 is analysed (and ablated) too
        sae, embedded_model, HOOK, [0, 1], [str(i) for i in range(4096)], contexts, drop_bos=False
    )
    delta0, acts0 = ablation_deltas(ctx, [0, 0], contexts)
    assert all((a == 0).all() and (d == 0).all() for a, d in zip(acts0, delta0, strict=True))
    delta1, acts1 = ablation_deltas(ctx, [1, 1], contexts)
    assert all((a > 0).all() and d.abs().min() > 0 for a, d in zip(acts1, delta1, strict=True))
    # one batch mixing features, a repeated context and prefixes equals the rows ablated one
    # by one on whole contexts, cut to the prefix (the model is causal)
    rows = torch.cat([contexts, contexts[:1]])
    mixed, mixed_acts = ablation_deltas(ctx, [1, 0, 1], rows, lengths=[12, 7, 5], batch_size=2)
    assert [len(d) for d in mixed] == [11, 6, 4]
    # differently shaped batches sum in another order: log-probs of a 4096-way softmax then
    # agree to ~1e-5 (seen: 1.2e-5), not to float32's default atol of 1e-5 (here and below)
    close = {"atol": 5e-5, "rtol": 1e-5}
    torch.testing.assert_close(mixed[0], delta1[0], **close)
    torch.testing.assert_close(mixed[2], delta1[0][:4], **close)
    assert (mixed[1] == 0).all() and (mixed_acts[1] == 0).all()
    ctx.artefacts.put(TOP_EXAMPLES, {0: [], 1: [(13, 1.0), (2, 0.5)]})  # context 1 pos 1, 0 pos 2
    res = Downstream(ablation_contexts=8, ablation_window=3).results(ctx)
    assert res[0].ablation is None
    ablation = res[1].ablation
    assert ablation.contexts == [1, 0] and ablation.context_ends == [5, 6]
    assert ablation.top_context_delta == pytest.approx(delta1[1][:4].tolist(), abs=5e-5)
    assert len(ablation.top_context_tokens) == 5
    expected = float(torch.cat([delta1[1][:4], delta1[0][:5]]).mean())  # fired everywhere
    assert ablation.mean_delta_logprob_where_fired == pytest.approx(expected, abs=5e-5)
    assert res[1].ablation_delta_logprob == ablation.mean_delta_logprob_where_fired
    assert len(res[1].top_tokens) == 10
