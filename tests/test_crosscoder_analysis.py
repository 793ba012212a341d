"""analyze.py on a crosscoder of two models: the Reader's capture and ablations, the sources'
checks, and the dashboards' shared / exclusive histogram.

The equality tests use a crosscoder that is an SAE in disguise: its model-B encoder and
decoder blocks are zero, so on ``[x_A | x_B]`` it computes exactly what the SAE computes on
``x_A``. Every analysis read (features, first pass, top:N selection, ablations, the prompt
page's loss effects, logit weights) must then give the SAE's numbers.
"""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from plugins._common import first_pass
from plugins._logits import logit_weights
from plugins.downstream import ablation_deltas
from sae_lightning.analysis.criterion import AnalysisContext
from sae_lightning.analysis.reader import Reader
from sae_lightning.analysis.selection import select_features
from sae_lightning.analysis.sources import crosscoder_info, load_sources
from sae_lightning.hooks import capture_activations
from sae_lightning.models import load_embedded
from sae_lightning.report.crosscoder import feature_line, report_section
from sae_lightning.report.prompts import loss_effects
from sae_lightning.saes.crosscoder import CrosscoderSAE
from sae_lightning.saes.relu import ReLUSAE

HOOK = "blocks.0.mlp.hook_post"
D_SAE = 48


@pytest.fixture(scope="module")
def pair(embedded_model):
    return embedded_model, load_embedded(name="toy-1l-b")


@pytest.fixture(scope="module")
def twins(embedded_model):
    """An SAE on toy-1l's hook and the crosscoder equal to it on [x_A | x_B]."""
    d = int(
        capture_activations(embedded_model, torch.zeros(1, 2, dtype=torch.long), HOOK).shape[-1]
    )
    torch.manual_seed(0)
    sae = ReLUSAE(d, D_SAE, apply_b_dec_to_input=True, sparse_threshold=0.0)
    with torch.no_grad():
        sae.W_enc.normal_(0, 0.2)
        sae.b_enc.fill_(-0.05)
        sae.b_dec.normal_(0, 0.01)
    cc = CrosscoderSAE(2 * d, D_SAE, n_sources=2, sparse_threshold=0.0)
    with torch.no_grad():
        cc.W_enc.zero_()
        cc.W_enc[:d] = sae.W_enc
        cc.W_dec.zero_()
        cc.W_dec[:, :d] = sae.W_dec
        cc.b_enc.copy_(sae.b_enc)
        cc.b_dec.zero_()
        cc.b_dec[:d] = sae.b_dec
    return sae.eval(), cc.eval()


def _contexts(n: int = 6, pos: int = 20) -> torch.Tensor:
    tokens = torch.randint(1, 1000, (n, pos), generator=torch.Generator().manual_seed(1))
    tokens[:, 0] = 0  # the BOS position (dropped by the analysis)
    return tokens


def _ctx(sae, reader: Reader, contexts: torch.Tensor) -> AnalysisContext:
    return AnalysisContext(
        sae=sae, model=reader.model, hook_name=reader.hook_name, features=list(range(D_SAE)),
        str_tokens=[str(i) for i in range(int(reader.model.cfg.d_vocab))], contexts=contexts,
        others=reader.others,
    )  # fmt: skip


def test_a_crosscoder_reads_both_models_side_by_side(pair) -> None:
    a, b = pair
    reader = Reader(a, HOOK, others=((b, HOOK),))
    tokens = _contexts(2)
    with torch.inference_mode():
        got = reader.capture(tokens)
        x_a, x_b = capture_activations(a, tokens, HOOK), capture_activations(b, tokens, HOOK)
    assert torch.equal(got, torch.cat([x_a, x_b], dim=-1))
    assert not torch.equal(x_a, x_b)  # two different transformers
    assert reader.models == [a, b] and Reader(a, HOOK, others=((a, "x"),)).models == [a]
    w = torch.arange(12.0).reshape(2, 6)
    assert torch.equal(reader.own_block(w), w[:, :3]) and torch.equal(
        Reader(a, HOOK).own_block(w), w
    )


@torch.inference_mode()
def test_every_analysis_read_of_the_twin_crosscoder_equals_the_sae(pair, twins) -> None:
    a, b = pair
    sae, cc = twins
    contexts = _contexts()
    mine, theirs = Reader(a, HOOK), Reader(a, HOOK, others=((b, HOOK),))
    ctx_sae, ctx_cc = _ctx(sae, mine, contexts), _ctx(cc, theirs, contexts)
    fp_sae, fp_cc = first_pass(ctx_sae, 4, batch_size=2), first_pass(ctx_cc, 4, batch_size=2)
    assert fp_sae.entries.values.numel() > 20  # features fire: the test compares something
    torch.testing.assert_close(fp_cc.max_act, fp_sae.max_act, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(fp_cc.mass, fp_sae.mass, rtol=1e-4, atol=1e-5)
    assert select_features("top:5", cc, theirs, contexts) == select_features(
        "top:5", sae, mine, contexts
    )
    features, rows = [3, 7, 11, 19], contexts[:4]
    d_sae, acts_sae = ablation_deltas(ctx_sae, features, rows)
    d_cc, acts_cc = ablation_deltas(ctx_cc, features, rows)
    assert max(float(x.abs().max()) for x in d_sae) > 1e-4  # the ablations change predictions
    for x, y in zip(d_sae + acts_sae, d_cc + acts_cc, strict=True):
        torch.testing.assert_close(y, x, rtol=1e-4, atol=1e-5)
    clean, effects = loss_effects(sae, mine, contexts[0], features, start=1)
    clean_cc, effects_cc = loss_effects(cc, theirs, contexts[0], features, start=1)
    assert clean_cc == pytest.approx(clean) and effects_cc == pytest.approx(effects, abs=1e-5)
    want = logit_weights(a, HOOK, sae.W_dec)
    torch.testing.assert_close(logit_weights(a, HOOK, theirs.own_block(cc.W_dec)), want)


@torch.inference_mode()
def test_a_crosscoder_ablation_removes_model_a_block_only(pair) -> None:
    a, b = pair
    d = int(capture_activations(a, torch.zeros(1, 2, dtype=torch.long), HOOK).shape[-1])
    cc = CrosscoderSAE(2 * d, 8, n_sources=2, sparse_threshold=0.0).eval()
    with torch.no_grad():
        cc.W_dec[:, :d] = 0.0  # latent outputs live in model B only: nothing to remove in A
    reader = Reader(a, HOOK, others=((b, HOOK),))
    tokens, index = _contexts(3), torch.tensor([0, 1, 2])
    hooks, box = reader.ablation_hooks(cc, index, tokens, start=1)
    assert [h for h, _ in hooks] == [HOOK]
    assert bool((box[0][:, 1:] > 0).any()) and bool((box[0][:, 0] == 0).all())
    torch.testing.assert_close(a.run_with_hooks(tokens, fwd_hooks=hooks), a(tokens))


def _metadata(*sources: tuple[str, str]) -> dict:
    return {"source": "cc", "sources": [{"model_name": m, "hook_name": h} for m, h in sources]}


def test_load_sources_checks_every_source(pair, twins) -> None:
    a, b = pair
    cc = twins[1]
    models = {"toy-1l": a, "toy-1l-b": b}
    reader = load_sources(cc, _metadata(("toy-1l", HOOK), ("toy-1l-b", HOOK)), models.__getitem__)
    assert reader.model is a and reader.others == ((b, HOOK),)
    with pytest.raises(ValueError, match=r"metadata sources=.*at least two sources"):
        load_sources(cc, _metadata(("toy-1l", HOOK)), models.__getitem__)
    wide = _metadata(("toy-1l", HOOK), ("toy-1l", "blocks.0.hook_resid_pre"))
    with pytest.raises(ValueError, match=r"source 1 .*'blocks.0.hook_resid_pre'.* blocks are"):
        load_sources(cc, wide, models.__getitem__)
    vocab = dict(a.tokenizer.get_vocab())
    vocab["Ġelse"], vocab["Ġreturn"] = vocab["Ġreturn"], vocab["Ġelse"]
    tokenizer = SimpleNamespace(get_vocab=lambda: vocab, bos_token_id=a.tokenizer.bos_token_id)
    models["other"] = SimpleNamespace(tokenizer=tokenizer)
    with pytest.raises(ValueError, match=r"sources reads model 'other'.*crosscoder's analysis"):
        load_sources(cc, _metadata(("toy-1l", HOOK), ("other", HOOK)), models.__getitem__)


def test_the_dashboards_histogram_counts_the_analysed_latents_that_fired(twins) -> None:
    cc = twins[1]
    with torch.no_grad():
        d = cc.d_source
        cc_b = CrosscoderSAE(2 * d, 4, n_sources=2)
        cc_b.W_dec.copy_(
            torch.tensor(
                [[1.0] * d + [0.0] * d, [1.0] * 2 * d, [0.0] * d + [1.0] * d, [1.0] * 2 * d]
            )
        )
    meta = {"sources": [{"model_name": "toy-1l", "hook_name": HOOK},
                        {"model_name": "toy-1l-b", "hook_name": HOOK}]}  # fmt: skip
    info = crosscoder_info(cc_b, meta, [0, 1, 2, 3])["crosscoder"]
    assert info["sources"] == ["toy-1l", "toy-1l-b"]
    assert [info["relative_decoder_norm"][k] for k in "0123"] == pytest.approx([0, 0.5, 1, 0.5])
    density = {"0": 0.1, "1": 0.2, "2": 0.0, "3": 0.3}  # latent 2 never fired
    report = {
        "metadata": {"crosscoder": info},
        "features": {k: {"top_activations": {"density": v}} for k, v in density.items()},
    }
    section = report_section(report)
    assert "3 analysed latents that fired" in section
    assert "<td>toy-1l only</td><td>r &le; 0.3</td><td>1</td>" in section
    assert "<td>shared</td><td>0.3 &lt; r &lt; 0.7</td><td>2</td>" in section
    assert "<td>toy-1l-b only</td><td>r &ge; 0.7</td><td>0</td>" in section
    assert "<svg" in section
    assert feature_line(report, 2) == {"r": "1.000", "where": "toy-1l-b only"}
    assert feature_line(report, 1)["where"] == "shared by toy-1l and toy-1l-b"
    assert feature_line(report, 9) is None and report_section({"metadata": {}}) is None
    assert crosscoder_info(twins[0], {}, [0]) == {}  # an SAE's report has no crosscoder block
