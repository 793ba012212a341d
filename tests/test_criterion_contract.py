"""The criterion contract: enforced abstract methods, ordering from needs/provides, the typed
artefact store, and the typed records of criteria.json (both format versions)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, ClassVar

import pytest
from hydra import compose, initialize_config_dir
from test_analysis_core import META, ROOT, random_sae, tiny_corpus  # noqa: F401
from test_plugins import batches, random_ctx  # noqa: F401

from plugins.downstream import Downstream
from plugins.not_a_neuron import NotANeuron
from plugins.top_activations import TopActivations
from plugins.universality import Universality
from sae_lightning.analysis.artefacts import (
    NEURON_MAX_CORR,
    TOP_EXAMPLES,
    Artefact,
    Artefacts,
)
from sae_lightning.analysis.criterion import AnalysisBatch, AnalysisContext, Criterion
from sae_lightning.analysis.ordering import order_criteria
from sae_lightning.analysis.records import (
    Example,
    TopActivationsResult,
    UniversalityResult,
    result_of,
)
from sae_lightning.analysis.run import analyze
from sae_lightning.formats import save_saelens
from sae_lightning.report.data import headlines, load_report


class Quiet(Criterion):
    """A criterion that reads nothing and judges nothing; subclasses declare artefacts."""

    name: ClassVar[str] = "quiet"

    def setup_metrics(self, n_features: int, ctx: AnalysisContext) -> None:
        pass

    def update(self, batch: AnalysisBatch, ctx: AnalysisContext) -> None:
        pass

    def results(self, ctx: AnalysisContext) -> dict[int, dict[str, Any]]:
        return {}


A, B = Artefact("a", dict), Artefact("b", dict)


def quiet(name: str, **declared: tuple[Artefact[Any], ...]) -> Criterion:
    kind = type(name, (Quiet,), {"name": name, **declared})
    return kind()


class TopExampleCount(Criterion):
    """A user's criterion that needs top_activations' top examples: how many it kept."""

    name: ClassVar[str] = "top_count"
    headline: ClassVar[str] = "n_top"
    needs = (TOP_EXAMPLES,)

    def setup_metrics(self, n_features: int, ctx: AnalysisContext) -> None:
        pass

    def update(self, batch: AnalysisBatch, ctx: AnalysisContext) -> None:
        pass

    def results(self, ctx: AnalysisContext) -> dict[int, dict[str, Any]]:
        top = ctx.artefacts.get(TOP_EXAMPLES)
        return {f: {"n_top": len(top[f]), "verdict": len(top[f]) > 0} for f in ctx.features}


def test_a_criterion_missing_an_abstract_method_cannot_be_instantiated():
    class Empty(Criterion):
        name = "empty"

    with pytest.raises(TypeError, match="abstract") as err:
        Empty()
    for method in ("results", "setup_metrics", "update"):
        assert method in str(err.value)

    class NoResults(Criterion):
        def setup_metrics(self, n_features, ctx):
            pass

        def update(self, batch, ctx):
            pass

    with pytest.raises(TypeError, match="results"):
        NoResults()
    assert isinstance(Quiet(), Criterion)


def test_providers_finish_first_otherwise_the_selected_order():
    reader, writer, plain = quiet("reader", needs=(A,)), quiet("writer", provides=(A,)), Quiet()
    assert order_criteria([reader, plain, writer]) == [plain, writer, reader]
    assert order_criteria([writer, reader, plain]) == [writer, reader, plain]
    # the built-ins: downstream uses top_activations' examples, universality not_a_neuron's
    top, down, nan, uni = TopActivations(), Downstream(), NotANeuron(), Universality()
    assert order_criteria([uni, down, nan, top]) == [nan, uni, top, down]
    # a chain a -> b -> c, given backwards
    c = quiet("c", needs=(B,))
    b = quiet("b", needs=(A,), provides=(B,))
    a = quiet("a", provides=(A,))
    assert [x.name for x in order_criteria([c, b, a])] == ["a", "b", "c"]


def test_a_missing_provider_a_cycle_and_two_providers_are_named():
    reader = quiet("reader", needs=(A,))
    with pytest.raises(ValueError, match=r"criterion 'reader' needs artefact 'a', which none "):
        order_criteria([reader, Quiet()])
    with pytest.raises(ValueError, match=r"needs artefact 'top_examples'.*top_activations"):
        order_criteria([TopExampleCount()])
    # `uses` is optional: without not_a_neuron, universality simply runs
    assert order_criteria([Universality()])[0].name == "universality"
    one, two = quiet("one", needs=(A,), provides=(B,)), quiet("two", needs=(B,), provides=(A,))
    with pytest.raises(ValueError, match=r"'one' waits for 'a' from 'two'.*'two' waits for 'b'"):
        order_criteria([one, two])
    with pytest.raises(ValueError, match=r"'a' is provided by both 'p' and 'q'"):
        order_criteria([quiet("p", provides=(A,)), quiet("q", provides=(A,))])


def test_a_criterion_must_put_what_it_provides():
    ctx = AnalysisContext(None, None, "h", [0], ["x"], None)  # type: ignore[arg-type]
    with pytest.raises(RuntimeError, match=r"'liar' declares it provides \['a'\]"):
        quiet("liar", provides=(A,)).collect(ctx)


def test_the_artefact_store_is_typed():
    store = Artefacts()
    store.put(NEURON_MAX_CORR, {3: 0.5})
    assert store.get(NEURON_MAX_CORR) == {3: 0.5} and NEURON_MAX_CORR in store
    assert store.find(TOP_EXAMPLES) is None
    with pytest.raises(KeyError, match=r"'top_examples' \(provided by top_activations\)"):
        store.get(TOP_EXAMPLES)
    with pytest.raises(TypeError, match="must be a dict, got list"):
        store.put(TOP_EXAMPLES, [])  # type: ignore[arg-type]
    calls = []
    assert store.cached(A, lambda: calls.append(1) or {"x": 1}) == {"x": 1}
    assert store.cached(A, lambda: calls.append(1) or {}) == {"x": 1} and calls == [1]


def test_records_round_trip_through_json():
    top = TopActivationsResult(
        density=0.25,
        max_activation=3.0,
        top_examples=[Example(7, 3.0, 0, 7, ["a", "b"], 1)],
        auto_proxy=["b"],
        auto_proxy_ids=[5],
    )
    data = json.loads(json.dumps(top.to_dict(), default=lambda r: r.to_dict()))
    assert "acts" not in data["top_examples"][0]  # left out until the dashboards fill it
    assert result_of({"top_activations": data}, TopActivationsResult) == top
    assert result_of({}, TopActivationsResult) is None
    none = UniversalityResult(note="no compare_with SAE", neuron_corr=0.5)
    assert none.to_dict() == {"note": "no compare_with SAE", "neuron_corr": 0.5, "verdict": None}
    assert UniversalityResult.from_dict(none.to_dict()) == none


def test_dashboards_read_both_format_versions(tmp_path):
    per_feature = {"top_activations": {"density": 0.5, "max_activation": 2.0, "verdict": None}}
    per_feature["mine"] = {"count": 3, "share": 0.5, "verdict": True}
    old = {"metadata": {}, "criteria": {}, "features": {"1": per_feature}}  # version 1
    (tmp_path / "criteria.json").write_text(json.dumps(old))
    report = load_report(tmp_path)
    heads = headlines(report, ["top_activations", "mine"])
    assert heads == {"top_activations": "max_activation", "mine": "share"}
    new = {**old, "version": 2, "headlines": {"top_activations": "density", "mine": "count"}}
    (tmp_path / "criteria.json").write_text(json.dumps(new))
    heads = headlines(load_report(tmp_path), ["top_activations", "mine"])
    assert heads == {"top_activations": "density", "mine": "count"}
    (tmp_path / "criteria.json").write_text(json.dumps({**old, "version": 3}))
    with pytest.raises(
        ValueError, match="format version 3; this sae_lightning reads versions 1 to 2"
    ):
        load_report(tmp_path)


def test_a_custom_criterion_needing_top_examples_reads_them_after_top_activations(random_ctx):  # noqa: F811
    top, count = TopActivations(k=3), TopExampleCount()
    finished = order_criteria([count, top])  # the reader selected first
    assert finished == [top, count]
    for criterion in finished:
        criterion.setup_metrics(len(random_ctx.features), random_ctx)
    for batch in batches(random_ctx, 4):
        for criterion in finished:
            criterion.update(batch, random_ctx)
    tops, counts = (criterion.collect(random_ctx) for criterion in finished)
    assert [counts[f]["n_top"] for f in random_ctx.features] == [
        len(tops[f].top_examples) for f in random_ctx.features
    ]
    assert any(counts[f]["n_top"] for f in random_ctx.features)  # not vacuous


@pytest.mark.slow
def test_a_custom_criterion_needing_top_examples_runs_after_top_activations(
    tmp_path,
    tiny_corpus,  # noqa: F811
):
    conf = tmp_path / "conf" / "criteria"
    conf.mkdir(parents=True)
    (conf / "top_count.yaml").write_text(
        "# @package criteria.top_count\n_target_: test_criterion_contract.TopExampleCount\n"
    )
    save_saelens(random_sae(1024, 16), tmp_path / "sae", META)
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        cfg = compose(
            "analyze",
            overrides=[
                f"sae_path={tmp_path / 'sae'}",
                f"paths.output_dir={tmp_path / 'out'}",
                f"hydra.searchpath=[file://{tmp_path / 'conf'}]",
                "criteria=[top_count,top_activations]",  # the reader first
                "criteria.top_activations.quantile_contexts=8",
                f"data.source.corpus={tiny_corpus}",
                "data.split=train",
                "tokens=1024",
                "+trainer.enable_progress_bar=false",
            ],
        )
    results = analyze(cfg)
    assert results.criteria == ["top_activations", "top_count"]  # the order they finished
    data = json.loads((Path(tmp_path) / "out" / "report" / "criteria.json").read_text())
    assert data["metadata"]["criteria"] == ["top_activations", "top_count"]
    assert data["headlines"] == {"top_activations": "max_activation", "top_count": "n_top"}
    fired = 0
    for key, per_feature in data["features"].items():
        top = result_of(per_feature, TopActivationsResult)
        assert top is not None
        assert per_feature["top_count"]["n_top"] == len(top.top_examples), key
        fired += len(top.top_examples) > 0
    assert fired > 0  # not vacuous
