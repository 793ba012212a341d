"""The universality recipe sweep (hparams_search=universality, sae_lightning.replication.recipes):
choosing a recipe, finding the pairs of a sweep, the configs, and the sweep end to end (slow)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf
from test_train import ROOT, small_corpus, small_run  # noqa: F401
from test_train_cli import _run

from sae_lightning.replication.recipes import (
    band_medians,
    choose,
    find_pairs,
    main,
    recipe_settings,
    recipe_table,
)

RECIPES = sorted(p.stem for p in (ROOT / "conf" / "experiment" / "universality").glob("*.yaml"))


def row(median, lr_a, lr_b):
    return {
        "settings": "ReLUSAE d_sae 4096",
        "median_best_match": median,
        "n_live_features": 4000,
        "n_features": 4096,
        "l0": [23.0, 22.5],
        "loss_recovered": [lr_a, lr_b],
        "above_1e-2": 1181,
        "below_1e-4": 242,
        "train_minutes": [7.0, 6.5],
        "bands": {"1e-05-0.0001": [242, 0.128], "0.0001-0.001": [0, None]},
    }


def test_the_most_universal_recipe_recovering_enough_loss_on_both_models_is_chosen():
    rows = {
        "default": row(0.276, 0.875, 0.865),
        "sparser": row(0.41, 0.86, 0.849),  # B below 0.85: not eligible however universal
        "topk": row(0.33, 0.90, 0.89),
        "unscored": row(None, 0.95, 0.95),
    }
    assert choose(rows) == "topk"
    assert choose(rows, min_lr=0.845) == "sparser"
    assert choose(rows, min_lr=0.96) is None
    table = recipe_table(rows)
    assert "| topk | ReLUSAE d_sae 4096 | 0.330 (4,000 of 4,096) | 0.900 / 0.890 |" in table
    assert "| 23.0 / 22.5 | 1,181 | 242 | 7.0 / 6.5 |" in table
    assert "| topk | 0.128 (242) | – (0) |" in table
    assert table.rstrip().endswith("**topk** (0.330).")
    assert "No recipe recovers at least 0.96" in recipe_table(rows, min_lr=0.96)


def _job(sweep: Path, job: str, recipe: str | None, role: str, finished: bool = True) -> Path:
    run = sweep / job
    (run / ".hydra").mkdir(parents=True)
    (run / "sae").mkdir()
    replication = {"role": role, **({"recipe": recipe} if recipe else {})}
    OmegaConf.save({"replication": replication}, run / ".hydra" / "config.yaml")
    (run / "sae" / "cfg.json").write_text("{}")
    if finished:
        (run / "metrics.json").write_text("{}")
    return run


def test_find_pairs_keeps_recipes_with_a_finished_a_and_b(tmp_path):
    a, b = _job(tmp_path, "0", "topk", "a"), _job(tmp_path, "1", "topk", "b")
    _job(tmp_path, "2", "l1_3", "a")
    _job(tmp_path, "3", "l1_3", "b", finished=False)  # still training
    _job(tmp_path, "4", None, "a")  # a replication job, not a recipe's
    _job(tmp_path, "5", "topk", "a_prime")
    assert find_pairs(tmp_path) == {"topk": {"a": a, "b": b}}


def test_find_pairs_without_a_pair_names_what_it_found_and_the_command(tmp_path):
    _job(tmp_path, "0", "topk", "a")
    with pytest.raises(ValueError, match=r"found \{'topk': \['a'\]\}.*hparams_search=universality"):
        find_pairs(tmp_path)


@pytest.mark.parametrize("recipe", RECIPES)
def test_each_recipe_composes_with_the_sweep_and_names_itself(recipe, tmp_path):
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        cfg = compose(
            "train",
            overrides=["hparams_search=universality", f"experiment=universality/{recipe}"],
            return_hydra_config=True,
        )
    assert cfg.replication.recipe == recipe and cfg.replication.role == "a"
    assert cfg.model.name is None and cfg.data.val_contexts == 256  # the shipped toy-1l
    assert f"universality/{recipe}" in cfg.hydra.sweeper.params.experiment
    (tmp_path / ".hydra").mkdir()
    OmegaConf.save(cfg, tmp_path / ".hydra" / "config.yaml", resolve=False)
    settings = recipe_settings(tmp_path)
    assert settings.startswith(cfg.sae._target_.rsplit(".", 1)[1] + " d_sae"), settings
    assert f"lr {cfg.module.optimizer.lr:g}" in settings, settings
    assert ("decay" in settings) == (cfg.module.scheduler.decay != "none"), settings
    resampled = cfg.callbacks.get("dead_feature_resampler") is not None
    assert ("resampling" in settings) == resampled, settings
    assert f"{cfg.trainer.max_steps} x {cfg.data.batch_size}" in settings
    assert ("no AuxK" in settings) == (cfg.loss.get("auxk_coeff") == 0), settings


@pytest.mark.slow
def test_the_sweep_trains_a_and_b_per_recipe_and_scores_them(tmp_path, small_corpus):  # noqa: F811
    sweep = tmp_path / "sweep"
    result = _run(
        [
            "-m",
            "hparams_search=universality",
            "experiment=universality/relu_l1,universality/topk_k32",  # replaces the recipe list
            *small_run(small_corpus),
            "hydra.callbacks.recipe_sweep.tokens=4096",
            f"hydra.sweep.dir={sweep}",
        ],
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    rows = json.loads((sweep / "recipes" / "recipes.json").read_text())
    assert list(rows) == ["relu_l1", "topk_k32"]
    for name, r in rows.items():
        a, b = (Path(p) for p in r["runs"])
        for run, model in ((a, "toy-1l"), (b, "toy-1l-b")):
            meta = json.loads((run / "sae" / "cfg.json").read_text())["metadata"]
            assert meta["model_name"] == model
        report = json.loads((sweep / "recipes" / name / "report" / "criteria.json").read_text())
        assert report["metadata"]["compare_with"] == str(b / "sae")
        metrics = json.loads((b / "metrics.json").read_text())["metrics"]
        assert r["loss_recovered"][1] == metrics["val/loss_recovered"]
        assert 0 < r["median_best_match"] <= 1 and 0 < r["n_live_features"] <= 256
        assert r["density"]["n_features"] == 256
        counts = [count for count, _ in r["bands"].values()]
        assert sum(counts) == r["n_live_features"] and len(counts) == 4
        assert (sweep / "recipes" / f"density_{name}.svg").read_text().startswith("<svg")
    assert rows["topk_k32"]["settings"].startswith("TopKSAE d_sae 256, k 32")
    assert (
        "| relu_l1 | ReLUSAE d_sae 256, l1 2.0, 20 x 256"
        in (sweep / "recipes" / "recipes.md").read_text()
    )
    # the documented re-scoring command, on fewer tokens: the same runs, its own numbers
    again = main([str(sweep), "--tokens", "2048"])
    assert (
        list(again) == ["relu_l1", "topk_k32"]
        and again["topk_k32"]["runs"] == rows["topk_k32"]["runs"]
    )
    written = json.loads((sweep / "recipes" / "recipes.json").read_text())
    assert written == json.loads(json.dumps(again))


def test_band_medians_split_the_best_matches_by_density():
    features = {
        str(i): {"universality": {"best_match": 0, "activation_corr": c, "density": d}}
        for i, (d, c) in enumerate(
            [(2e-5, 0.1), (5e-5, -0.3), (5e-4, 0.5), (0.5, 0.9), (1.0, 0.7), (1e-6, 0.99)]
        )
    }
    features["9"] = {"universality": {"note": "no compare_with"}}
    bands = band_medians(features)
    assert list(bands) == ["1e-05-0.0001", "0.0001-0.001", "0.001-0.01", "0.01-1"]
    assert bands["1e-05-0.0001"] == [2, pytest.approx(0.2)]  # |corr|: median of 0.1 and 0.3
    assert bands["0.0001-0.001"] == [1, 0.5]
    assert bands["0.001-0.01"] == [0, None]
    assert bands["0.01-1"] == [2, pytest.approx(0.8)]  # one firing on every token included
