"""The replication experiment: concept selection, density counts, the report, end to end
(the three-SAE sweep's own pieces: tests/test_replication_cross.py)."""

from __future__ import annotations

import json
import math
import statistics

import pytest
from omegaconf import OmegaConf
from test_train import small_corpus, small_run  # noqa: F401
from test_train_cli import _run

from sae_lightning.replication.concepts import concept_tokens, select_concept
from sae_lightning.replication.density import density_summary, density_svg
from sae_lightning.replication.numbers import population
from sae_lightning.replication.run import find_runs, publish
from sae_lightning.replication.writeup import md_token


def entry(tokens, spec, sens, fired=10, density=0.01, **extra):
    return {
        "top_activations": {"density": density},
        "specificity": {"proxy_tokens": tokens, "specificity": spec, "proxy": "tokens {}"},
        "sensitivity": {"sensitivity": sens, "n_proxy_fired": fired},
        **extra,
    }


def test_the_cleanest_feature_whose_proxy_holds_the_token_is_chosen():
    features = {
        "0": entry([" for", " if"], 0.9, 0.5),  # 0.45
        "1": entry([" for"], 0.99, 1.0),  # 0.99: the pick
        "2": entry([" while"], 1.0, 1.0),  # perfect, but not a candidate
        "3": entry([" for"], 1.0, None),  # no sensitivity: not judged
        "4": entry([" for", " in"], 0.99, 1.0, fired=20),  # same score, more fired: wins tie
    }
    pick = select_concept(features, [" for"])
    assert (pick.feature, pick.n_candidates, pick.runner_up) == (4, 3, 1)
    assert pick.score == pytest.approx(0.99) and pick.runner_up_score == pytest.approx(0.99)
    assert select_concept(features, [" else"]) is None
    assert select_concept(features, [" else", " while"]).feature == 2


@pytest.mark.parametrize("bad", [{}, {"tokens": []}, {"tokens": "."}, {"tokens": [1]}])
def test_a_concept_without_token_strings_is_one_clear_error(bad):
    with pytest.raises(ValueError, match="non-empty list of token strings"):
        concept_tokens(bad)


def test_density_summary_counts_and_histogram():
    n_tokens = 100_000  # smallest non-zero density 1e-5: bins start at 1e-5
    values = [0.0, 0.0, 1e-5, 5e-5, 2e-4, 0.02, 0.5, 1.0]
    d = density_summary(values, n_tokens)
    assert (d["dead"], d["below_1e-5"], d["below_1e-4"], d["above_1e-2"]) == (2, 2, 4, 3)
    edges, counts = d["histogram"]["edges"], d["histogram"]["counts"]
    assert edges[0] == -5.0 and edges[-1] == 0.0 and len(counts) == len(edges) - 1 == 20
    assert sum(counts) == 6  # every live feature lands in a bin, 1.0 in the last
    live = [math.log10(v) for v in values[2:]]
    want = [0] * 20
    for x in live:
        want[min(int((x + 5.0) / 0.25 + 1e-9), 19)] += 1
    assert counts == want
    assert d["median_live_log10"] == pytest.approx(statistics.median(live))


def test_density_svg_is_escaped_and_has_a_bar_per_bin():
    d = density_summary([0.0, 1e-3, 1e-2], 1000)
    svg = density_svg(d, "run <script>alert(1)</script>")
    assert "<script>" not in svg and "&lt;script&gt;" in svg
    assert svg.count("<rect") == 1 + len(d["histogram"]["counts"])  # + the never-fired bar


def test_population_medians_over_features_that_fired():
    features = {
        str(i): {
            "universality": {
                "activation_corr": a,
                "neuron_corr": n,
                "verdict": None if a is None else a >= 0.7,
            }
        }
        for i, (a, n) in enumerate([(0.9, 0.3), (0.8, 0.5), (0.2, 0.4), (None, 0.1)])
    }
    report = {"features": features, "criteria": {"universality": {"pass_rate": 2 / 3}}}
    p = population(report)
    assert p["n_compared"] == 3 and p["universality"] == pytest.approx(2 / 3)
    assert p["median_best_match_corr"] == pytest.approx(0.8)
    assert p["median_neuron_corr"] == pytest.approx(0.4)
    assert p["share_best_match_universal"] == pytest.approx(2 / 3)
    assert p["groups"]["all"]["n"] == 3  # no densities or verdicts here: other groups empty
    assert p["groups"]["density >= 1e-3"] == {
        "n": 0,
        "median_best_match_corr": None,
        "median_neuron_corr": None,
        "share_best_match_universal": None,
    }
    for i, (density, verdict) in enumerate([(1e-2, True), (1e-4, True), (1e-2, False)]):
        features[str(i)]["top_activations"] = {"density": density}
        features[str(i)]["specificity"] = {"verdict": verdict}
        features[str(i)]["sensitivity"] = {"verdict": True}
    groups = population(report)["groups"]
    assert groups["density >= 1e-3"]["n"] == 2
    assert groups["density >= 1e-3"]["median_best_match_corr"] == pytest.approx((0.9 + 0.2) / 2)
    assert groups["density < 1e-3"]["median_neuron_corr"] == pytest.approx(0.5)
    both = groups["passing specificity and sensitivity"]
    assert both["n"] == 2 and both["median_best_match_corr"] == pytest.approx(0.85)


def test_tokens_in_markdown_keep_whitespace_visible_and_table_pipes_escaped():
    assert md_token(" for") == '`" for"`'
    assert md_token("\n\n") == '`"\\n\\n"`'
    assert md_token("a|b") == '`"a\\|b"`'
    assert md_token("`x") == '`` "`x" ``'


def test_publishing_never_replaces_a_folder_that_is_not_a_report(tmp_path):
    report = tmp_path / "report"
    report.mkdir()
    (report / "numbers.json").write_text("{}")
    precious = tmp_path / "src"
    precious.mkdir()
    (precious / "code.py").write_text("x = 1")
    with pytest.raises(ValueError, match="not an earlier replication report"):
        publish(report, precious)
    assert (precious / "code.py").is_file()
    publish(report, tmp_path / "docs")
    publish(report, tmp_path / "docs")  # an earlier report is replaced
    assert (tmp_path / "docs" / "numbers.json").is_file()


def test_find_runs_names_the_missing_multirun(tmp_path):
    (tmp_path / "0").mkdir()
    with pytest.raises(ValueError, match=r"needs three finished runs.*role a, b, a_prime.*-m"):
        find_runs(tmp_path)


@pytest.mark.slow
def test_one_command_trains_three_saes_and_writes_the_report(tmp_path, small_corpus):  # noqa: F811
    sweep = tmp_path / "sweep"
    result = _run(
        [
            "-m",
            "experiment=replicate_monosemanticity",
            *small_run(small_corpus),
            "replication.tokens=4096",
            f"replication.publish_dir={tmp_path / 'docs'}",
            f"hydra.sweep.dir={sweep}",
        ],
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    jobs = {}  # role -> (job, model, seed)
    for job in "012":
        overrides = json.loads((sweep / job / "metrics.json").read_text())["overrides"]
        role = next(o.split("=")[1] for o in overrides if o.startswith("replication_sae="))
        model = json.loads((sweep / job / "sae" / "cfg.json").read_text())["metadata"]
        jobs[role] = (
            job,
            model["model_name"],
            OmegaConf.load(sweep / job / ".hydra" / "config.yaml").seed,
        )
    assert jobs == {
        "a": ("0", "toy-1l", 0),
        "a_prime": ("1", "toy-1l", 1),
        "b": ("2", "toy-1l-b", 0),
    }
    out = tmp_path / "docs"
    numbers = json.loads((out / "numbers.json").read_text())
    full = {
        name: json.loads((sweep / "analysis" / name / "report" / "criteria.json").read_text())
        for name in ("a_vs_b", "b_vs_a", "a_vs_a_prime")
    }
    full_a = full["a_vs_b"]
    assert full_a["metadata"]["compare_with"] == str(sweep / "2" / "sae")
    assert full_a["metadata"]["compare_model"] == "toy-1l-b"  # across transformers
    assert full["b_vs_a"]["metadata"]["compare_with"] == str(sweep / "0" / "sae")
    same = full["a_vs_a_prime"]["metadata"]
    assert same["compare_with"] == str(sweep / "1" / "sae") and "compare_model" not in same
    # the report's numbers are the analysis's: the universality criterion's summaries
    uni = numbers["universality"]
    for name, report in full.items():
        summary = report["criteria"]["universality"]
        assert uni[name]["features"] == summary["median_best_match_corr"]
        assert uni[name]["min_density"] == summary["min_density"] == 1e-5
        assert uni[name]["neurons"] == summary.get("median_neuron_best_match_corr")
        assert numbers["population"][name] == population(report)
    d_mlp = 1024  # toy-1l and toy-1l-b
    assert 0 < uni["a_vs_b"]["n_neurons"] <= d_mlp and 0 < uni["b_vs_a"]["n_neurons"] <= d_mlp
    assert 0 < uni["a_vs_b"]["neurons"] < 1 and uni["a_vs_a_prime"]["neurons"] is None
    assert numbers["density"]["a"]["n_features"] == 256 == len(full_a["features"])
    histogram = numbers["density"]["a"]["histogram"]["counts"]
    assert sum(histogram) + numbers["density"]["a"]["dead"] == 256
    for name, concept in numbers["concepts"].items():
        pick = select_concept(full_a["features"], concept["tokens"])
        if pick is None:
            assert concept["a"] is None
            continue
        assert concept["a"]["feature"] == pick.feature
        page = out / "dashboards" / "features" / f"{pick.feature}.html"
        assert page.is_file(), name
        assert (
            concept["a"]["best_match"]
            == (full_a["features"][str(pick.feature)]["universality"]["best_match"])
        )
    readme = (out / "README.md").read_text()
    rows = [line for line in readme.splitlines() if line.startswith("| ")]

    def row(start: str) -> str:
        return next(r for r in rows if r.startswith(start))

    ab = uni["a_vs_b"]
    assert f"| 0.72 | {ab['features']:.3f} (" in row("| features across transformers: A (`toy-1l`)")
    assert f"| 0.46 | {ab['neurons']:.3f} (" in row("| neurons across transformers: `toy-1l` vs")
    assert f"| {uni['b_vs_a']['features']:.3f} (" in row("| features across transformers: B vs A")
    contrast = row("| features on the same transformer: A vs A'")
    assert f"| {uni['a_vs_a_prime']['features']:.3f} (" in contrast
    verdict = "**Target met**" if uni["target"]["met"] else "**Target missed**"
    assert verdict in readme and "at least 1e-05 of the held-out tokens" in readme
    assert "density_a.svg" in readme
    assert f"{numbers['population']['a_vs_b']['median_best_match_corr']:.3f}" in readme
    assert (out / "density_a.svg").is_file() and (out / "dashboards" / "prompts.html").is_file()
    # re-made from the finished sweep by the module's command line: the same numbers
    from sae_lightning.replication.__main__ import main

    main([str(sweep), "--publish", str(tmp_path / "again")])
    again = json.loads((tmp_path / "again" / "numbers.json").read_text())
    for key in ("runs", "density", "universality", "population", "concepts"):
        assert _close(again[key], numbers[key]), key  # float sums vary with thread count
    remade = (tmp_path / "again" / "README.md").read_text()
    assert f"Command: `python -m sae_lightning.replication {sweep}`" in remade
    main([str(sweep), "--publish", str(tmp_path / "shown"), "--command", "make replicate"])
    assert "Command: `make replicate`" in (tmp_path / "shown" / "README.md").read_text()


def _close(a, b, rel: float = 1e-4) -> bool:
    """``a == b`` for JSON values, floats within ``rel`` (an analysis re-run with another
    number of threads sums in another order)."""
    if isinstance(a, float) or isinstance(b, float):
        return (
            isinstance(a, (int, float))
            and isinstance(b, (int, float))
            and (a == pytest.approx(b, rel=rel, abs=1e-7))
        )
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(_close(a[k], b[k], rel) for k in a)
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(_close(x, y, rel) for x, y in zip(a, b, strict=True))
    return a == b


def test_a_single_run_says_the_replication_needs_multirun(caplog):
    from omegaconf import OmegaConf

    from sae_lightning.replication import Replication

    with caplog.at_level("WARNING"):
        Replication().on_run_end(OmegaConf.create({"seed": 3, "replication": {"role": "b"}}))
    assert "needs multirun: python train.py -m experiment=replicate_monosemanticity" in caplog.text
    assert "SAE b, seed 3 only" in caplog.text


def test_the_committed_report_links_resolve_and_shows_its_numbers():
    import re

    from test_train import ROOT

    docs = ROOT / "docs" / "replication"
    text = (docs / "README.md").read_text()
    numbers = json.loads((docs / "numbers.json").read_text())
    links = re.findall(r"\]\(([^)#]+)\)", text)
    assert len(links) >= 6  # the density histogram, four feature pages, two overview pages
    for link in links:
        assert (docs / link).is_file(), link
    runs, pops = numbers["runs"], numbers["population"]
    if isinstance(runs, dict):  # three runs by role, passes by name (the two-seed report: lists)
        runs, pops = list(runs.values()), list(pops.values())
        uni = numbers["universality"]["a_vs_b"]
        assert (
            f"| 0.72 | {uni['features']:.3f}" in text and f"| 0.46 | {uni['neurons']:.3f}" in text
        )
    for run, pop in zip(runs, pops, strict=True):
        assert f"{run['metrics']['val/loss_recovered']:.3f}" in text
        assert f"{pop['median_best_match_corr']:.3f}" in text
    for concept in numbers["concepts"].values():
        feature = concept["a"]["feature"]
        page = (docs / "dashboards" / "features" / f"{feature}.html").read_text()
        assert f"Feature {feature}" in page
        assert f"{concept['a']['specificity']:.3f}" in text
    assert "(docs/replication/README.md)" in (ROOT / "README.md").read_text()


def test_the_report_names_the_recipe_and_says_when_it_is_not_the_papers() -> None:
    from sae_lightning.replication.paper import recipe_label, recipe_note

    topk = {"architecture": "topk", "k": 16, "l1_coeff": None}
    relu = {"architecture": "relu", "k": None, "l1_coeff": 2.0}
    assert recipe_label(topk) == "topk, k 16" and recipe_label(relu) == "relu, L1 2.0"
    assert recipe_label({**topk, "lr": 1e-3, "lr_decay": "none"}) == "topk, k 16"
    tuned = {**topk, "lr": 3e-3, "lr_decay": "linear"}
    assert recipe_label(tuned) == "topk, k 16, lr 0.003 linear decay"
    no_auxk = recipe_label({**tuned, "auxk_coeff": 0.0})
    assert no_auxk == "topk, k 16, no AuxK, lr 0.003 linear decay"
    assert recipe_label({**tuned, "auxk_coeff": 1 / 32}) == "topk, k 16, lr 0.003 linear decay"
    assert (
        recipe_label({**relu, "lr": 1e-3, "lr_decay": "cosine"})
        == "relu, L1 2.0, lr 0.001 cosine decay"
    )
    assert recipe_note(relu) == [] and recipe_note({}) == []
    note = recipe_note(topk)[0]
    assert "topk, k 16" in note and "docs/recipe_sweep/README.md" in note and "sae=relu" in note
