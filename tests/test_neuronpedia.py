"""python -m sae_lightning.report.neuronpedia: every row of the export is valid against the
schema and carries the numbers of the criteria.json it came from."""

from __future__ import annotations

import gzip
import json
import shutil
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir

from sae_lightning.report.neuronpedia import default_set_name, export_neuronpedia, main
from sae_lightning.report.neuronpedia_rows import bars
from sae_lightning.report.neuronpedia_schema import TABLES, row_errors, validate_row

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_REPORT = ROOT / "docs" / "replication" / "dashboards" / "criteria.json"
"""The committed report of the default recipe's run (4 features, every criterion)."""
SINGLES = ("release", "model", "sourceset", "source")


def read_rows(path: Path) -> list[dict]:
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rt", encoding="utf-8") as f:
        return [json.loads(line) for line in f]


def read_export(folder: Path) -> dict[str, list[dict]]:
    rows = {kind: read_rows(folder / f"{kind}.jsonl") for kind in SINGLES}
    for kind, sub in (("feature", "features"), ("activation", "activations")):
        files = sorted((folder / sub).glob("batch-*.jsonl.gz"), key=lambda p: int(p.stem[6:-6]))
        rows[kind] = [row for path in files for row in read_rows(path)]
    return rows


def check_export(folder: Path, report: dict) -> dict[str, list[dict]]:
    """Every row valid, and each feature's fields equal to its criteria.json results."""
    rows = read_export(folder)
    for kind, kind_rows in rows.items():
        for row in kind_rows:
            assert row_errors(kind, row) == [], (kind, row_errors(kind, row))
    assert [r["index"] for r in rows["feature"]] == list(report["features"])
    assert len({r["id"] for r in rows["activation"]}) == len(rows["activation"])
    source = rows["source"][0]
    assert {r["layer"] for r in rows["feature"] + rows["activation"]} == {source["id"]}
    for row in rows["feature"]:
        results = report["features"][row["index"]]
        top, down, spec = results["top_activations"], results["downstream"], results["specificity"]
        assert row["maxActApprox"] == top["max_activation"]
        assert row["frac_nonzero"] == top["density"]
        assert row["pos_str"] == down["top_tokens"] and row["pos_values"] == down["top_values"]
        assert row["neg_str"] == down["bottom_tokens"]
        assert row["neg_values"] == down["bottom_values"]
        hist = spec["histogram"]
        heights = [p + o for p, o in zip(hist["proxy_counts"], hist["other_counts"], strict=True)]
        assert row["freq_hist_data_bar_heights"] == heights
        edges = hist["edges"]
        assert row["freq_hist_data_bar_values"][0] == pytest.approx((edges[0] + edges[1]) / 2)
        assert row["logits_hist_data_bar_heights"] == down["histogram"]["counts"]
        check_activations(row, top, [a for a in rows["activation"] if a["index"] == row["index"]])
    return rows


def check_activations(feature: dict, top: dict, acts: list[dict]) -> None:
    """The feature's activation rows: its top examples, then its quantile samples, in order."""
    quantiles = [(q, ex) for q in top["quantile_samples"] for ex in q["examples"]]
    examples = [(None, ex) for ex in top["top_examples"]] + quantiles
    assert len(acts) == len(examples)
    for row, (interval, ex) in zip(acts, examples, strict=True):
        assert row["tokens"] == ex["tokens"]
        assert row["qualifyingTokenIndex"] == ex["highlight"]
        assert row["values"][ex["highlight"]] == ex["activation"]  # exact, not the rounded act
        assert row["maxValue"] == max(row["values"]) >= ex["activation"]
        assert row["values"][row["maxValueTokenIndex"]] == row["maxValue"]
        assert row["dataIndex"] == str(ex["context"])
        if interval is None:
            assert (row["binMin"], row["binMax"], row["binContains"]) == (
                -1,
                top["max_activation"],
                -1,
            )
        else:
            lo, hi = interval["interval"]
            assert row["binMin"] == lo and row["binMax"] == (
                top["max_activation"] if hi is None else hi
            )
    if top["top_examples"]:  # the strongest example carries the feature's max activation
        assert acts[0]["maxValue"] == feature["maxActApprox"]


def test_export_of_the_default_run_report_matches_its_criteria(tmp_path):
    report = json.loads(DEFAULT_REPORT.read_text())
    folder = export_neuronpedia(DEFAULT_REPORT.parent, tmp_path)
    assert folder == tmp_path / "toy-1l" / "0-sl-mlp-hook-post"
    rows = check_export(folder, report)
    assert len(rows["feature"]) == 4 and len(rows["activation"]) == 4 * (20 + 5 * 4)
    source, model = rows["source"][0], rows["model"][0]
    assert (source["num_prompts"], source["num_tokens_in_prompt"]) == (822, 128)
    assert source["setName"] == rows["sourceset"][0]["name"] == rows["release"][0]["name"]
    assert model["id"] == "toy-1l" and rows["feature"][0]["hookName"] == "blocks.0.mlp.hook_post"
    # the "else" feature of the replication (numbers.json names it): its strongest example
    # is on " else", at the report's max activation of that feature
    numbers = json.loads((DEFAULT_REPORT.parents[1] / "numbers.json").read_text())
    feature = str(numbers["concepts"]["else"]["a"]["feature"])
    strongest = rows["activation"][[r["index"] for r in rows["activation"]].index(feature)]
    assert strongest["tokens"][strongest["qualifyingTokenIndex"]] == " else"
    top = report["features"][feature]["top_activations"]["max_activation"]
    assert strongest["maxValue"] == pytest.approx(top, abs=1e-6)


def test_cli_options_name_the_folder_and_split_the_batches(tmp_path):
    main(
        [
            str(DEFAULT_REPORT),
            str(tmp_path),
            "--model-id=my-model",
            "--set-name=res-test",
            "--layer=3",
            "--creator-id=u123",
            "--creator-name=Tester",
            "--features-per-file=3",
        ]
    )
    folder = tmp_path / "my-model" / "3-res-test"
    assert sorted(p.name for p in (folder / "features").iterdir()) == [
        "batch-0.jsonl.gz",
        "batch-1.jsonl.gz",
    ]
    assert [len(read_rows(folder / "features" / f"batch-{n}.jsonl.gz")) for n in (0, 1)] == [3, 1]
    rows = check_export(folder, json.loads(DEFAULT_REPORT.read_text()))
    assert {r["creatorId"] for r in rows["feature"] + rows["activation"]} == {"u123"}
    assert rows["release"][0]["creatorName"] == "Tester"
    assert {r["modelId"] for r in rows["activation"]} == {"my-model"}


def test_a_report_without_a_needed_criterion_fails_naming_the_field(tmp_path):
    report = json.loads(DEFAULT_REPORT.read_text())
    for results in report["features"].values():
        del results["downstream"]
    (tmp_path / "criteria.json").write_text(json.dumps(report))
    with pytest.raises(ValueError, match=r"'pos_str'.*downstream"):
        export_neuronpedia(tmp_path, tmp_path / "out")
    assert not (tmp_path / "out").exists()  # nothing written when a row cannot be made
    with pytest.raises(SystemExit, match=r"neuronpedia: ValueError: .*'pos_str'"):
        main([str(tmp_path), str(tmp_path / "out")])
    report = json.loads(DEFAULT_REPORT.read_text())
    feature = sorted(report["features"])[-1]
    del report["features"][feature]["specificity"]["histogram"]["other_counts"]
    (tmp_path / "criteria.json").write_text(json.dumps(report))
    with pytest.raises(
        ValueError,
        match=rf"feature {feature}: .* specificity.histogram.other_counts.*"
        r"'freq_hist_data_bar_heights'.*with specificity among",
    ):
        export_neuronpedia(tmp_path, tmp_path / "out")


def test_ids_that_are_not_folder_names_are_refused(tmp_path):
    with pytest.raises(SystemExit, match=r"source set name '\.\./up' is not a Neuronpedia id"):
        main([str(DEFAULT_REPORT), str(tmp_path / "out"), "--set-name=../up"])
    with pytest.raises(ValueError, match=r"model id 'a/b' is not a Neuronpedia id"):
        export_neuronpedia(DEFAULT_REPORT, tmp_path / "out", model_id="a/b")
    assert not (tmp_path / "out").exists()


def test_a_hook_without_a_layer_needs_layer(tmp_path):
    report = json.loads(DEFAULT_REPORT.read_text())
    report["metadata"]["hook_name"] = "hook_embed"
    (tmp_path / "criteria.json").write_text(json.dumps(report))
    with pytest.raises(ValueError, match=r"'hook_embed' names no layer.*--layer"):
        export_neuronpedia(tmp_path, tmp_path / "out")
    folder = export_neuronpedia(tmp_path, tmp_path / "out", layer=0)
    assert folder.name == "0-sl-hook-embed" and default_set_name("blocks.2.hook_resid_pre") == (
        "sl-hook-resid-pre"
    )


def test_schema_rejects_bad_rows():
    row = {k: [] if t.endswith("[]") else None for k, t in TABLES["activation"].items()}
    row.update(id="c1", index="3", layer="0-x", modelId="m", creatorId="u")
    row.update(tokens=["a", "b"], values=[0.0, 2.0], maxValue=2.0, minValue=0.0)
    row.update(maxValueTokenIndex=1, createdAt="2026-01-01T00:00:00+00:00")
    validate_row("activation", row)  # valid
    assert row_errors("activation", {**row, "values": [0.0, float("nan")]}) == [
        "values=[0.0, nan] is not a Float[]"
    ]
    assert row_errors("activation", {**row, "values": [1.0]}) == [
        "the arrays {'tokens': 2, 'values': 1} must have one length"
    ]
    assert row_errors("activation", {**row, "maxValueTokenIndex": True}) == [
        "maxValueTokenIndex=True is not a Int"
    ]
    assert row_errors("activation", {**row, "createdAt": "yesterday"}) == [
        "createdAt='yesterday' is not a DateTime"
    ]
    missing = {k: v for k, v in row.items() if k != "maxValue"}
    assert row_errors("activation", {**missing, "extra": 1}) == [
        "lacks the field 'maxValue' (Float)",
        "has the unknown field 'extra'",
    ]
    with pytest.raises(
        ValueError, match=r"invalid Neuronpedia activation row \(here\): tokens is empty"
    ):
        validate_row("activation", {**row, "tokens": [], "values": []}, "here")
    assert bars([0.0, 1.0, 3.0], [5, 7]) == ([0.5, 2.0], [5, 7])


@pytest.mark.slow
def test_export_of_a_fresh_fast_run(tmp_path):
    """``train.py debug=fast``, ``analyze.py`` on it, then the export, all in tmp."""
    from test_train import STDLIB_SAMPLE, make_cfg

    from sae_lightning.analysis.run import analyze
    from sae_lightning.training import train

    corpus = tmp_path / "corpus"
    corpus.mkdir()
    import sysconfig

    stdlib = Path(sysconfig.get_paths()["stdlib"])
    for i, rel in enumerate(STDLIB_SAMPLE[:6]):
        shutil.copy(stdlib / rel, corpus / f"{i:02d}_{Path(rel).name}")
    train(make_cfg(tmp_path / "run", corpus))
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        cfg = compose(
            "analyze",
            overrides=[
                f"sae_path={tmp_path / 'run'}",
                f"paths.output_dir={tmp_path / 'analysis'}",
                "criteria=[top_activations,specificity,downstream]",
                f"data.source.corpus={corpus}",
                "data.source.val_fraction=0.2",
                "tokens=4096",
                "features=top:6",
                "dashboards=false",
                "+trainer.enable_progress_bar=false",
            ],
        )
    analyze(cfg)
    report_dir = tmp_path / "analysis" / "report"
    report = json.loads((report_dir / "criteria.json").read_text())
    main([str(report_dir), str(tmp_path / "np")])
    rows = check_export(tmp_path / "np" / "toy-1l" / "0-sl-mlp-hook-post", report)
    assert len(rows["feature"]) == 6 and rows["activation"]
