"""The replication across two transformers: the three jobs' configs, the runs found by role,
the universality table's numbers and verdict, and the write-up of a small fake sweep."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf
from test_train import ROOT

from sae_lightning.replication.concepts import select_concept
from sae_lightning.replication.numbers import population
from sae_lightning.replication.paper import PAPER, WELL_BELOW
from sae_lightning.replication.run import COMPARISONS, ROLES, find_runs
from sae_lightning.replication.universality import target, universality_numbers
from sae_lightning.replication.writeup import NUMBERS_FILE, write_writeup

JOBS = {"a": ("toy-1l", 0), "a_prime": ("toy-1l", 1), "b": ("toy-1l-b", 0)}


def _compose(*overrides: str):
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        return compose("train", overrides=list(overrides), return_hydra_config=True)


def test_the_sweep_trains_a_and_a_prime_on_toy_1l_and_b_on_toy_1l_b():
    from sae_lightning.models import load_embedded

    base = _compose("experiment=replicate_monosemanticity")
    swept = base.hydra.sweeper.params["replication_sae"].split(",")
    assert swept == ["a", "a_prime", "b"] and set(swept) == set(ROLES)
    assert sorted(p.stem for p in (ROOT / "conf" / "replication_sae").glob("*.yaml")) == sorted(
        ROLES
    )
    for role, (model, seed) in JOBS.items():
        cfg = _compose("experiment=replicate_monosemanticity", f"replication_sae={role}")
        assert cfg.model._target_ == f"{load_embedded.__module__}.{load_embedded.__name__}"
        assert (cfg.model.name or "toy-1l", cfg.seed, cfg.replication.role) == (model, seed, role)
        # the rest of the experiment is the same for all three: one recipe
        assert cfg.sae.d_sae == base.sae.d_sae and cfg.loss == base.loss
        assert cfg.replication.criteria == base.replication.criteria
    uni = base.replication.analysis.criteria.universality
    assert uni.neuron_baseline is True and uni.min_density == pytest.approx(1e-5)
    # a command-line seed still wins (one seed for all three jobs)
    assert _compose("experiment=replicate_monosemanticity", "replication_sae=b", "seed=7").seed == 7


# the recipe sweep's choice (docs/recipe_sweep/README.md), which the replication trains
REPLICATION_RECIPE = "topk_k6_lr3e3_d2048_8000_noauxk"


def test_the_replication_trains_the_recipe_the_sweep_chose():
    replication = _compose("experiment=replicate_monosemanticity")
    recipe = _compose(
        "hparams_search=universality", f"experiment=universality/{REPLICATION_RECIPE}"
    )
    for section in ("sae", "loss", "module", "callbacks"):
        assert replication[section] == recipe[section], section
    assert replication.trainer.max_steps == recipe.trainer.max_steps == 8000
    assert replication.trainer.val_check_interval == recipe.trainer.val_check_interval == 2000
    assert replication.loss.auxk_coeff == 0
    assert replication.data == recipe.data  # same batch, contexts and validation split
    assert replication.sae._target_.endswith("TopKSAE") and replication.sae.k == 6
    assert replication.sae.d_sae == 2048


def test_the_overrides_the_report_names_train_the_papers_relu_l1():
    from sae_lightning.replication.paper import PAPER_RECIPE_OVERRIDES

    paper = _compose("experiment=replicate_monosemanticity", *PAPER_RECIPE_OVERRIDES)
    relu_l1 = _compose("hparams_search=universality", "experiment=universality/relu_l1")
    for section in ("sae", "loss", "module", "callbacks", "data"):
        assert paper[section] == relu_l1[section], section
    assert paper.trainer.max_steps == relu_l1.trainer.max_steps == 1600
    assert paper.trainer.val_check_interval == relu_l1.trainer.val_check_interval == 400
    assert paper.sae._target_.endswith("ReLUSAE") and paper.sae.d_sae == 4096
    assert paper.loss.l1_coeff == 2 and paper.module.optimizer.lr == pytest.approx(1e-3)
    assert paper.module.scheduler.decay == "none"


def _fake_run(folder: Path, role: str, loss_recovered: float) -> Path:
    model, seed = JOBS[role]
    (folder / ".hydra").mkdir(parents=True)
    (folder / "sae").mkdir()
    cfg = {
        "seed": seed,
        "sae": {"d_sae": 4},
        "loss": {"l1_coeff": 2.0},
        "replication": {"role": role},
    }
    OmegaConf.save(OmegaConf.create(cfg), folder / ".hydra" / "config.yaml")
    (folder / "sae" / "cfg.json").write_text(json.dumps({"metadata": {"model_name": model}}))
    metrics = {"val/loss_recovered": loss_recovered, "val/l0": 12.5, "val/dead_fraction": 0.25}
    (folder / "metrics.json").write_text(json.dumps({"metrics": metrics}))
    return folder


def test_runs_are_found_by_role_whatever_the_job_order(tmp_path):
    for job, role in enumerate(["b", "a", "a_prime"]):
        _fake_run(tmp_path / str(job), role, 0.5)
    (tmp_path / "3").mkdir()  # an unfinished job is ignored
    runs = find_runs(tmp_path)
    assert list(runs) == list(ROLES) and {r: p.name for r, p in runs.items()} == {
        "b": "0",
        "a": "1",
        "a_prime": "2",
    }
    for name in ("0", "2"):
        (tmp_path / name / "metrics.json").unlink()  # B and A' unfinished
    with pytest.raises(ValueError, match=r"missing \['b', 'a_prime'\].*'1': 'a'.*-m"):
        find_runs(tmp_path)


def _summary(features: float | None, neurons: float | None) -> dict:
    out = {"pass_rate": 0.25, "min_density": 1e-5, "n_live_features": 3.0}
    if features is not None:
        out["median_best_match_corr"] = features
    out["median_neuron_baseline_corr"] = 0.2
    if neurons is not None:
        out["median_neuron_best_match_corr"], out["n_neurons"] = neurons, 1000.0
    return out


@pytest.mark.parametrize(
    ("features", "neurons", "met"),
    [
        (0.80, 0.46, True),
        (0.72, 0.72 - WELL_BELOW, True),  # both bounds inclusive
        (0.71, 0.30, False),  # features short of the paper's 0.72
        (0.90, 0.85, False),  # neurons not well below features
        (0.80, 0.81, False),  # neurons above features
        (None, 0.30, None),  # nothing to judge
    ],
)
def test_target_needs_features_at_the_papers_figure_and_neurons_well_below(features, neurons, met):
    t = target({"features": features, "neurons": neurons})
    assert t["met"] is met
    if features is not None:
        assert t["gap"] == pytest.approx(features - neurons)
        assert t["features_reached"] is (features >= PAPER["feature_universality"])


def _entry(density: float, corr: float, tokens: list[str], spec: float) -> dict:
    return {
        "top_activations": {"density": density},
        "specificity": {"proxy_tokens": tokens, "specificity": spec, "proxy": "tokens {}"},
        "sensitivity": {"sensitivity": 0.9, "n_proxy_fired": 9, "verdict": True},
        "universality": {"best_match": 1, "activation_corr": corr, "neuron_corr": 0.3,
                         "verdict": corr >= 0.7, "density": density},
    }  # fmt: skip


def _fake_report(model: str, other: str | None, features: float, neurons: float | None) -> dict:
    meta = {"model_name": model, "hook_name": "blocks.0.mlp.hook_post", "n_tokens": 104_448,
            "n_analysed_tokens": 104_394}  # fmt: skip
    if other is not None:
        meta["compare_model"] = other
    entries = [(0.0, 0.1, ["x"], 0.1), (0.01, 0.9, ["."], 0.9), (0.2, 0.5, [" for"], 0.8),
               (0.003, 0.75, ["."], 0.5)]  # fmt: skip
    return {
        "metadata": meta,
        "criteria": {"universality": _summary(features, neurons)},
        "features": {str(i): _entry(*e) for i, e in enumerate(entries)},
    }


def test_the_write_up_puts_the_papers_figures_beside_ours(tmp_path):
    runs = {role: _fake_run(tmp_path / str(job), role, 0.8 + job / 100)
            for job, role in enumerate(["a", "a_prime", "b"])}  # fmt: skip
    reports = {
        "a_vs_b": _fake_report("toy-1l", "toy-1l-b", 0.612, 0.334),
        "b_vs_a": _fake_report("toy-1l-b", "toy-1l", 0.598, 0.341),
        "a_vs_a_prime": _fake_report("toy-1l", None, 0.873, None),
    }
    assert set(reports) == set(COMPARISONS)
    concepts = {"full stop": ["."], "else": [" else"]}
    picks = {
        "a": {c: select_concept(reports["a_vs_b"]["features"], t) for c, t in concepts.items()},
        "b": {c: select_concept(reports["b_vs_a"]["features"], t) for c, t in concepts.items()},
    }
    out = tmp_path / "replication"
    write_writeup(out, runs, reports, picks, concepts, analysis_seconds={"a_vs_b": 3.0})
    n = json.loads((out / NUMBERS_FILE).read_text())
    assert n["universality"] == json.loads(json.dumps(universality_numbers(reports)))
    u = n["universality"]
    assert (u["paper"]["features"], u["paper"]["neurons"]) == (0.72, 0.46)
    assert u["a_vs_b"]["features"] == 0.612 and u["a_vs_b"]["neurons"] == 0.334
    assert u["a_vs_b"]["across_transformers"] and not u["a_vs_a_prime"]["across_transformers"]
    assert u["a_vs_a_prime"]["neurons"] is None and u["a_vs_b"]["n_live_features"] == 3
    assert u["target"] == {"features_reached": False, "gap": pytest.approx(0.278),
                           "neurons_well_below": True, "met": False}  # fmt: skip
    assert n["population"] == {k: population(r) for k, r in reports.items()}
    assert {r: (v["model"], v["seed"]) for r, v in n["runs"].items()} == JOBS
    assert n["concepts"]["full stop"]["a"]["feature"] == 1 and n["concepts"]["else"]["a"] is None
    assert (out / "density_a.svg").is_file() and (out / "density_b.svg").is_file()
    readme = (out / "README.md").read_text()
    rows = {line.split(" | ")[0]: line for line in readme.splitlines() if line.startswith("| ")}
    cross = rows["| features across transformers: A (`toy-1l`) vs B (`toy-1l-b`)"]
    assert cross.endswith("| 0.72 | 0.612 (3 of 4 features) |")
    neuron = rows["| neurons across transformers: `toy-1l` vs `toy-1l-b` (the baseline)"]
    assert neuron.endswith("| 0.46 | 0.334 (1,000 neurons that fired) |")
    assert rows["| features across transformers: B vs A"].endswith(
        "| – | 0.598 (3 of 4 features) |"
    )
    same = rows["| features on the same transformer: A vs A' (`toy-1l`, two SAE seeds; contrast)"]
    assert same.endswith("| not reported | 0.873 (3 of 4 features) |")
    # density >= 1e-5 of 104,394 tokens: firing on 2 tokens or more
    assert "at least 1e-05 of the held-out tokens, 2 of 104,394 here" in readme
    assert "**Target missed**: features reach 0.612, below the paper's 0.72." in readme
    for label, role in (("A", "a"), ("A'", "a_prime"), ("B", "b")):
        model, seed = JOBS[role]
        assert f"| {label} (job {runs[role].name}) | `{model}` | {seed} |" in readme
        recovered = json.loads((runs[role] / "metrics.json").read_text())["metrics"]
        assert f"{recovered['val/loss_recovered']:.3f}" in readme
