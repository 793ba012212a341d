"""callbacks=feature_evidence: the criteria every N training steps on held-out contexts."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from test_train import ROOT, make_cfg, small_corpus  # noqa: F401 (a fixture)

from sae_lightning.analysis.records import (
    NotANeuronResult,
    SensitivityResult,
    SpecificityResult,
)
from sae_lightning.analysis.results import AnalysisResults
from sae_lightning.analysis.run import analyze
from sae_lightning.evidence import DEFAULT_CONCEPTS, Evidence, FeatureEvidence
from sae_lightning.training import train

EVERY = 5  # debug=fast trains 20 steps: evaluations at 5, 10, 15, 20
CRITERIA = ("specificity", "sensitivity", "not_a_neuron")


def _callback_node():
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        cfg = compose("train", overrides=["callbacks=feature_evidence"])
    return cfg.callbacks


def test_config_composes_on_top_of_the_default_callbacks():
    callbacks = _callback_node()
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        default = compose("train").callbacks
    assert set(callbacks) == {*default, "feature_evidence"}
    evidence = instantiate(callbacks.feature_evidence)
    assert isinstance(evidence, FeatureEvidence)
    assert [c.name for c in evidence.criteria] == list(CRITERIA)
    assert evidence.every_n_steps == 200 and evidence.n_contexts == 16
    assert all(c.proxy_contexts == 16 for c in evidence.criteria[:2])  # ${...contexts}
    assert evidence.concepts == {k: v["tokens"] for k, v in DEFAULT_CONCEPTS.items()}


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"every_n_steps": 0}, "every_n_steps must be a positive integer, got 0"),
        ({"contexts": -1}, "contexts must be a positive integer, got -1"),
        ({"criteria": {"x": object()}}, "must subclass sae_lightning.analysis.Criterion"),
        ({"concepts": {"full stop": {"tokens": ["."]}}}, "concept name 'full stop'"),
        ({"concepts": {"dot": {"tokens": "."}}}, "non-empty list of token strings"),
        ({"drop": "sensitivity"}, "lack ['sensitivity']: add them, or set concepts={}"),
    ],
)
def test_bad_options_are_one_clear_error(kwargs, message):
    criteria = {c.name: c for c in instantiate(_callback_node().feature_evidence).criteria}
    criteria.pop(kwargs.pop("drop", ""), None)
    with pytest.raises(ValueError) as info:
        FeatureEvidence(**{"criteria": criteria, **kwargs})
    assert message in str(info.value)


def _evidence(features: dict[int, tuple[list[str], float, float, float]]) -> Evidence:
    """One evaluation's results: per feature (proxy tokens, specificity, sensitivity, corr)."""
    results = AnalysisResults(list(features), {})
    specificity = {f: SpecificityResult(proxy_tokens=p, specificity=s)
                   for f, (p, s, _, _) in features.items()}  # fmt: skip
    sensitivity = {f: SensitivityResult(proxy_tokens=p, sensitivity=s, n_proxy_fired=10)
                   for f, (p, _, s, _) in features.items()}  # fmt: skip
    neuron = {f: NotANeuronResult(max_neuron_corr=c, neuron=0)
              for f, (_, _, _, c) in features.items()}  # fmt: skip
    results.add("specificity", specificity, {"pass_rate": 0.5})
    results.add("sensitivity", sensitivity, {"pass_rate": 0.25})
    results.add("not_a_neuron", neuron, {"pass_rate": 1.0})
    return Evidence(7, results, torch.tensor([0.0, 0.5, 0.01, 0.0]))


def test_scalars_follow_each_concepts_best_feature():
    evidence = _evidence({
        0: (["."], 0.9, 0.5, 0.2),  # score 0.45
        1: ([".", ","], 0.95, 0.8, -0.6),  # score 0.76: the full stop's feature
        2: ([" for"], 0.3, 0.3, 0.1),
        3: (["x"], 1.0, 1.0, 0.0),
    })  # fmt: skip
    criteria = instantiate(_callback_node().feature_evidence).criteria
    callback = FeatureEvidence({c.name: c for c in criteria},
                               concepts={"dot": {"tokens": ["."]}, "for": {"tokens": [" for"]},
                                         "else": {"tokens": [" else"]}})  # fmt: skip
    scalars = callback.scalars(evidence)
    assert scalars == {
        "criteria/specificity/pass_rate": 0.5,
        "criteria/sensitivity/pass_rate": 0.25,
        "criteria/not_a_neuron/pass_rate": 1.0,
        "evidence/dead_fraction": 0.5,
        "evidence/dot/found": 1.0,
        "evidence/dot/feature": 1.0,
        "evidence/dot/specificity": 0.95,
        "evidence/dot/sensitivity": 0.8,
        "evidence/dot/neuron_corr": -0.6,
        "evidence/for/found": 1.0,
        "evidence/for/feature": 2.0,
        "evidence/for/specificity": 0.3,
        "evidence/for/sensitivity": 0.3,
        "evidence/for/neuron_corr": 0.1,
        "evidence/else/found": 0.0,
    }


def _sae_weights(run: Path) -> dict[str, torch.Tensor]:
    state = torch.load(run / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    return {k: v for k, v in state["state_dict"].items() if k.startswith("sae.")}


@pytest.fixture(scope="module")
def evidence_runs(tmp_path_factory, small_corpus):  # noqa: F811
    """The same fp32 run with and without callbacks=feature_evidence (every 5 steps)."""
    root = tmp_path_factory.mktemp("evidence")
    common = ("trainer.precision=32-true", "+trainer.enable_progress_bar=false")
    with_it = make_cfg(root / "with", small_corpus, *common, "callbacks=feature_evidence",
                       f"callbacks.feature_evidence.every_n_steps={EVERY}")  # fmt: skip
    without = make_cfg(root / "without", small_corpus, *common)
    train(with_it)
    train(without)
    return root / "with", root / "without"


@pytest.mark.slow
def test_evidence_does_not_change_training(evidence_runs):
    with_it, without = (_sae_weights(run) for run in evidence_runs)
    assert with_it.keys() == without.keys() and "sae.W_enc" in with_it
    for key in with_it:
        assert torch.equal(with_it[key], without[key]), key
    first = json.loads((evidence_runs[0] / "metrics.json").read_text())["metrics"]
    second = json.loads((evidence_runs[1] / "metrics.json").read_text())["metrics"]
    assert first == second  # validation saw the same SAE on the same tokens


@pytest.mark.slow
def test_tensorboard_has_the_evidence_at_every_evaluation(evidence_runs):
    acc = EventAccumulator(
        str(evidence_runs[0] / "tensorboard"), size_guidance={"scalars": 0, "histograms": 0}
    )
    acc.Reload()
    steps = [EVERY, 2 * EVERY, 3 * EVERY, 4 * EVERY]

    def values(tag: str) -> list[float]:
        events = acc.Scalars(tag)
        assert [e.step for e in events] == steps, tag  # one value per evaluation
        return [e.value for e in events]

    for name in CRITERIA:
        assert all(0 <= v <= 1 for v in values(f"criteria/{name}/pass_rate")), name
    assert all(0 <= v < 1 for v in values("evidence/dead_fraction"))
    assert all(v > 0 for v in values("evidence/cpu_seconds"))
    histograms = acc.Histograms("evidence/log10_feature_density")
    assert [h.step for h in histograms] == steps
    assert all(h.histogram_value.num == 256 and h.histogram_value.max <= 0 for h in histograms)
    for concept in DEFAULT_CONCEPTS:
        assert set(values(f"evidence/{concept}/found")) <= {0.0, 1.0}
    # the small corpus is code and prose: a full-stop feature exists from the first evaluation
    assert values("evidence/full_stop/found") == [1.0] * 4
    assert all(0 <= v < 256 and v == int(v) for v in values("evidence/full_stop/feature"))
    assert all(0 < v <= 1 for v in values("evidence/full_stop/specificity"))
    assert all(0 < v <= 1 for v in values("evidence/full_stop/sensitivity"))
    assert all(-1 <= v <= 1 for v in values("evidence/full_stop/neuron_corr"))
    untouched = EventAccumulator(str(evidence_runs[1] / "tensorboard"))
    untouched.Reload()
    assert not [t for t in untouched.Tags()["scalars"] if t.startswith(("evidence/", "criteria/"))]


@pytest.mark.slow
def test_the_last_evaluation_is_what_analyze_reports_on_the_same_contexts(
    evidence_runs,
    small_corpus,  # noqa: F811
):
    """The callback runs the analysis criteria, not a copy of them: its evaluation at the
    last step equals ``analyze.py`` on the exported SAE and the same 16 held-out contexts."""
    run = evidence_runs[0]
    n_ctx = json.loads((run / "sae" / "cfg.json").read_text())["metadata"]["context_size"]
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        cfg = compose("analyze", overrides=[
            f"sae_path={run}", f"paths.output_dir={run / 'analysis'}",
            f"data.source.corpus={small_corpus}", "data.source.val_fraction=0.2",
            f"tokens={16 * n_ctx}", f"criteria=[{','.join(CRITERIA)}]",
            "criteria.specificity.proxy_contexts=16", "criteria.sensitivity.proxy_contexts=16",
            "dashboards=false", "+trainer.enable_progress_bar=false",
        ])  # fmt: skip
    report = analyze(cfg)
    assert report.metadata["n_contexts"] == 16
    acc = EventAccumulator(str(run / "tensorboard"), size_guidance={"scalars": 0})
    acc.Reload()
    for name in CRITERIA:
        logged = acc.Scalars(f"criteria/{name}/pass_rate")[-1]
        assert logged.step == 4 * EVERY
        assert logged.value == pytest.approx(report.summaries[name]["pass_rate"], abs=1e-6), name
    feature = int(acc.Scalars("evidence/full_stop/feature")[-1].value)
    spec = report.features[feature]["specificity"]
    assert "." in spec.proxy_tokens
    logged = acc.Scalars("evidence/full_stop/specificity")[-1].value
    assert logged == pytest.approx(spec.specificity, abs=1e-6)
