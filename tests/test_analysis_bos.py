"""BOS in the analysis: left out as training leaves it out (by default, or as the SAE's
metadata says), from every criterion, the first pass, ablations, dashboards, feature
selection and the prompt view; kept with ``drop_bos=false``."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir
from test_analysis_core import HOOK, META, ROOT, random_sae, tiny_corpus  # noqa: F401
from torch import Tensor

from plugins.downstream import ablation_deltas
from sae_lightning.analysis.criterion import AnalysisContext
from sae_lightning.analysis.loading import load_sae
from sae_lightning.analysis.reader import Reader
from sae_lightning.analysis.run import analyze, load_contexts, resolve_drop_bos
from sae_lightning.analysis.selection import TOP_CONTEXTS, select_features
from sae_lightning.formats import save_saelens
from sae_lightning.hooks import capture_activations
from sae_lightning.report.prompts import analyse_prompt, loss_effects, prompt_tokens
from sae_lightning.saes import ReLUSAE

N_CTX = 32
BOS_FEATURE = 0  # fires on position 0 (BOS) of every context and nowhere else
FEATURES = [0, 1, 2, 3]
ALL = "[top_activations,specificity,sensitivity,downstream,not_a_neuron,universality]"
BOS_PROXY = "{_target_:sae_lightning.analysis.proxies.TokenSetProxy,tokens:['<|endoftext|>']}"


def bos_sae(model) -> ReLUSAE:
    """A random SAE whose feature 0 reads the BOS activation's direction, with a bias that
    keeps it silent elsewhere (position 0 projects 19.9 on it, any other position < 4.4)."""
    sae = random_sae(1024, 16)
    bos = torch.tensor([[model.tokenizer.bos_token_id] * 2])
    with torch.inference_mode():
        act = capture_activations(model, bos, HOOK)[0, 0]  # [d_in], the same in every context
    direction = act / act.norm()
    with torch.no_grad():
        sae.W_enc[:, BOS_FEATURE] = direction
        sae.b_enc[BOS_FEATURE] = float(sae.b_dec @ direction) - 0.6 * float(act.norm())
    return sae


def encoded(model, sae: ReLUSAE, contexts: Tensor) -> tuple[Tensor, Tensor]:
    """Hooked activations ``[n, n_ctx, d_in]`` and every feature's ``[n, n_ctx, d_sae]``."""
    with torch.inference_mode():
        acts = capture_activations(model, contexts, HOOK)
        return acts, sae.encode(acts)


def run_analysis(tmp: Path, corpus: Path, model, *overrides: str) -> tuple[dict, Tensor]:
    save_saelens(bos_sae(model), tmp / "sae", META)  # META does not say: BOS dropped
    save_saelens(random_sae(1024, 16, seed=1), tmp / "other", META)
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        cfg = compose(
            "analyze",
            overrides=[
                f"sae_path={tmp / 'sae'}",
                f"compare_with={tmp / 'other'}",
                f"paths.output_dir={tmp / 'out'}",
                f"criteria={ALL}",
                f"criteria.sensitivity.proxy={BOS_PROXY}",
                f"data.source.corpus={corpus}",
                "data.split=train",
                "tokens=2048",
                f"features={FEATURES}",
                "+trainer.enable_progress_bar=false",
                *overrides,
            ],
        )
    analyze(cfg)
    data = json.loads((tmp / "out" / "report" / "criteria.json").read_text())
    return data, load_contexts(cfg, model, N_CTX)


@pytest.fixture(scope="module")
def dropped(tmp_path_factory, tiny_corpus, embedded_model):  # noqa: F811
    return run_analysis(tmp_path_factory.mktemp("dropped"), tiny_corpus, embedded_model)


@pytest.fixture(scope="module")
def kept(tmp_path_factory, tiny_corpus, embedded_model):  # noqa: F811
    tmp = tmp_path_factory.mktemp("kept")
    return run_analysis(tmp, tiny_corpus, embedded_model, "drop_bos=false")


def examples(top: dict) -> list[dict]:
    return top["top_examples"] + [e for q in top["quantile_samples"] for e in q["examples"]]


def test_the_bos_feature_fires_only_on_bos(dropped, embedded_model):
    _, contexts = dropped
    feats = encoded(embedded_model, bos_sae(embedded_model), contexts)[1][..., BOS_FEATURE]
    assert (feats[:, 0] > 7.9).all() and (feats[:, 1:] == 0).all()


def test_by_default_no_criterion_sees_a_bos_position(dropped, embedded_model):
    data, contexts = dropped
    meta, n = data["metadata"], len(contexts)
    assert meta["drop_bos"] is True and "seqpos_slice" not in meta  # unknown: dropped
    assert meta["n_tokens"] == n * N_CTX and meta["n_analysed_tokens"] == n * (N_CTX - 1)
    at_bos = encoded(embedded_model, bos_sae(embedded_model), contexts)[1][:, 0]  # [n, d_sae]
    shown = 0
    for f in FEATURES:
        top = data["features"][str(f)]["top_activations"]
        for e in examples(top):
            assert e["token_index"] % N_CTX != 0 and e["position"] > 0
            if e["position"] - e["highlight"] == 0:  # BOS shown as context, with activation 0
                assert e["acts"][0] == 0.0
                shown += bool(at_bos[e["context"], f] > 0)
        ablation = data["features"][str(f)]["downstream"]["ablation"]
        if ablation:
            assert ablation["top_context_acts"][0] == 0.0
            shown += bool(at_bos[ablation["contexts"][0], f] > 0)
    assert shown > 0  # windows whose BOS the feature does fire on
    bos = data["features"][str(BOS_FEATURE)]
    top = bos["top_activations"]
    assert top["density"] == 0.0 and top["max_activation"] == 0.0 and examples(top) == []
    spec = bos["specificity"]  # the first pass saw no firing either: no automatic proxy
    assert spec["proxy"] == "none" and spec["specificity_source"] == "histogram"
    assert spec["n_above_threshold"] == 0 and spec["verdict"] is None
    sens = bos["sensitivity"]  # the one <|endoftext|> past position 0 does not fire it
    assert sens["n_proxy_fired"] == 0 and sens["n_proxy_tokens"] == 1
    assert sens["sensitivity"] == 0.0 and sens["verdict"] is False
    assert bos["downstream"]["ablation"] is None
    assert bos["not_a_neuron"]["verdict"] is None and bos["universality"]["verdict"] is None


def test_with_drop_bos_false_the_bos_examples_appear(kept):
    data, contexts = kept
    n = len(contexts)
    assert data["metadata"]["drop_bos"] is False
    assert data["metadata"]["n_analysed_tokens"] == data["metadata"]["n_tokens"] == n * N_CTX
    bos = data["features"][str(BOS_FEATURE)]
    top = bos["top_activations"]
    assert len(top["top_examples"]) == 20 and top["density"] == pytest.approx(1 / N_CTX)
    assert all(e["token_index"] % N_CTX == 0 and e["position"] == 0 for e in examples(top))
    assert top["max_activation"] > 7.9
    assert bos["specificity"]["specificity"] == 1.0 and bos["specificity"]["verdict"] is True
    assert bos["sensitivity"]["n_proxy_fired"] == n and bos["sensitivity"]["verdict"] is True
    assert bos["not_a_neuron"]["verdict"] is not None
    assert bos["downstream"]["ablation"]["top_context_acts"][0] > 7.9


def test_density_is_firing_positions_over_analysed_positions(dropped, kept, embedded_model):
    for (data, contexts), start in ((dropped, 1), (kept, 0)):
        feats = encoded(embedded_model, bos_sae(embedded_model), contexts)[1][:, start:]
        for f in FEATURES:
            fired = int((feats[..., f] > 0).sum())
            expected = fired / (len(contexts) * (N_CTX - start))
            got = data["features"][str(f)]["top_activations"]["density"]
            assert got == pytest.approx(expected, rel=1e-12), (f, start)


def test_sensitivity_counts_bos_tokens_only_where_analysed(dropped, kept):
    for (data, contexts), start in ((dropped, 1), (kept, 0)):
        bos_tokens = int((contexts[:, start:] == 0).sum())  # <|endoftext|> is token 0
        for f in FEATURES:
            assert data["features"][str(f)]["sensitivity"]["n_proxy_tokens"] == bos_tokens
    sensitivity = kept[0]["features"][str(BOS_FEATURE)]["sensitivity"]
    assert sensitivity["n_proxy_fired"] == len(kept[1])  # every position-0 BOS, no other


def pearson(x: Tensor, y: Tensor) -> Tensor:
    """Correlation of ``x [n]`` with every column of ``y [n, d]``."""
    x, y = x.double() - x.double().mean(), y.double() - y.double().mean(0)
    return (x @ y) / (x.norm() * y.norm(dim=0))


def test_neuron_correlations_leave_bos_out(dropped, embedded_model):
    data, contexts = dropped
    acts, feats = encoded(embedded_model, bos_sae(embedded_model), contexts)
    for f in FEATURES[1:]:
        corr = pearson(feats[:, 1:, f].flatten(), acts[:, 1:].flatten(0, 1))  # [d_in]
        with_bos = pearson(feats[..., f].flatten(), acts.flatten(0, 1))
        got = data["features"][str(f)]["not_a_neuron"]
        assert got["max_neuron_corr"] == pytest.approx(float(corr[got["neuron"]]), abs=1e-5)
        assert abs(got["max_neuron_corr"]) == pytest.approx(float(corr.abs().max()), abs=1e-5)
        assert float((corr - with_bos).abs().max()) > 1e-3  # BOS would have changed it


def test_drop_bos_option_and_metadata():
    assert resolve_drop_bos(None, {}) is True  # the SAE does not say: as train.py's default
    assert resolve_drop_bos(None, {"seqpos_slice": [1, None]}) is True
    assert resolve_drop_bos(None, {"seqpos_slice": [None]}) is False
    assert resolve_drop_bos(False, {"seqpos_slice": [1, None]}) is False
    with pytest.raises(ValueError, match="drop_bos must be true, false or null, got 'yes'"):
        resolve_drop_bos("yes", {})


def test_an_sae_trained_on_bos_is_analysed_with_it(tmp_path, tiny_corpus, embedded_model):  # noqa: F811
    save_saelens(bos_sae(embedded_model), tmp_path / "sae", {**META, "seqpos_slice": [None]})
    assert load_sae(tmp_path / "sae")[1]["seqpos_slice"] == [None]  # the export keeps it
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        cfg = compose(
            "analyze",
            overrides=[
                f"sae_path={tmp_path / 'sae'}",
                f"paths.output_dir={tmp_path / 'out'}",
                "criteria=[top_activations]",
                f"data.source.corpus={tiny_corpus}",
                "data.split=train",
                "tokens=2048",
                f"features=[{BOS_FEATURE}]",
                "dashboards=false",
                "+trainer.enable_progress_bar=false",
            ],
        )
    report = analyze(cfg)
    assert report.metadata["drop_bos"] is False and report.metadata["seqpos_slice"] == [None]
    top = report.features[BOS_FEATURE]["top_activations"]
    assert top.density == pytest.approx(1 / N_CTX) and top.top_examples[0].position == 0


def test_feature_selection_skips_bos(dropped, embedded_model):
    _, contexts = dropped
    sae = bos_sae(embedded_model)
    prompts, reader = {"prompts": ["import os"]}, Reader(embedded_model, HOOK)
    assert BOS_FEATURE not in select_features(prompts, sae, reader, contexts)
    assert BOS_FEATURE in select_features(prompts, sae, reader, contexts, False)
    feats = encoded(embedded_model, sae, contexts[:TOP_CONTEXTS])[1]  # [64, n_ctx, d_sae]
    for start in (1, 0):
        counts = (feats[:, start:] > 0).sum(dim=(0, 1))  # [d_sae]
        assert int(counts[BOS_FEATURE]) == (0 if start else len(feats))
        n = int((counts > 0).sum())  # the features that fire: top:n
        expected = torch.argsort(counts, descending=True, stable=True)[:n].tolist()
        got = select_features(f"top:{n}", sae, reader, contexts, bool(start))
        assert got == expected and (BOS_FEATURE in got) == (start == 0)


def test_ablations_leave_bos_alone(dropped, embedded_model):
    contexts = dropped[1][:3]
    sae = bos_sae(embedded_model)
    names = [str(i) for i in range(4096)]
    ctx = AnalysisContext(sae, embedded_model, HOOK, FEATURES, names, contexts)
    assert ctx.drop_bos  # the default, as in training
    deltas, acts = ablation_deltas(ctx, [BOS_FEATURE] * 3, contexts)
    assert all((d == 0).all() and (a == 0).all() for d, a in zip(deltas, acts, strict=True))
    ctx.drop_bos = False
    deltas, acts = ablation_deltas(ctx, [BOS_FEATURE] * 3, contexts)
    assert all(a[0] > 7.9 and (a[1:] == 0).all() for a in acts)
    assert all(d.abs().max() > 1e-4 for d in deltas)  # removed from BOS, felt downstream


def test_prompt_view_skips_bos(embedded_model):
    sae = bos_sae(embedded_model)
    maxima = {f: 1.0 for f in FEATURES}
    view = analyse_prompt("import os", sae, Reader(embedded_model, HOOK), maxima, n_ablate=4)
    assert view["per_token"][0]["features"] == []
    assert BOS_FEATURE not in [e["feature"] for e in view["by_activation"]]
    kept = analyse_prompt("import os", sae, Reader(embedded_model, HOOK), maxima, drop_bos=False)
    assert kept["by_activation"][0]["feature"] == BOS_FEATURE
    assert [e["feature"] for e in kept["per_token"][0]["features"]][0] == BOS_FEATURE
    tokens = prompt_tokens(embedded_model, "import os")
    clean, left = loss_effects(sae, Reader(embedded_model, HOOK), tokens, [BOS_FEATURE], start=1)
    _, removed = loss_effects(sae, Reader(embedded_model, HOOK), tokens, [BOS_FEATURE], start=0)
    assert left == [0.0] and abs(removed[0]) > 1e-4  # BOS left alone: nothing changes
