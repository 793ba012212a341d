"""The second shipped model, toy-1l-b, chosen by name in the configs; a training run on it whose
export analyze.py loads the same model back for. (Its weights: tests/test_models.py.)"""

from __future__ import annotations

import pytest
from hydra import compose, initialize_config_dir
from test_train import ROOT, small_corpus  # noqa: F401


def test_model_options_select_the_shipped_model_by_name():
    from hydra.utils import instantiate

    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        default = compose("train").model
        second = compose("train", overrides=["model=toy-1l-b"]).model
        by_key = compose("train", overrides=["model.name=toy-1l-b"]).model
    assert (default.name, default.path, second.name, by_key.name) == (
        None,
        None,
        "toy-1l-b",
        "toy-1l-b",
    )
    assert instantiate(second).cfg.model_name == "toy-1l-b"


@pytest.mark.slow  # about 12 s of CPU: a debug=fast training run, then an analysis pass
def test_a_run_on_toy_1l_b_is_analysed_with_toy_1l_b(tmp_path, small_corpus, monkeypatch):  # noqa: F811
    """model=toy-1l-b trains; the export names it; analyze.py loads it back by that name."""
    import sae_lightning.analysis.run as run_module
    from sae_lightning.analysis.loading import load_sae
    from sae_lightning.analysis.run import analyze
    from sae_lightning.training import train

    run = tmp_path / "train"
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        train_cfg = compose(
            "train",
            overrides=[
                "model=toy-1l-b",
                "debug=fast",
                "trainer.max_steps=4",
                f"data.source.corpus={small_corpus}",
                "data.source.val_fraction=0.2",
                f"paths.output_dir={run}",
            ],
        )
    train(train_cfg)
    _, meta = load_sae(run)
    assert meta["model_name"] == "toy-1l-b"
    loaded = []
    by_name = run_module.load_model_by_name
    monkeypatch.setattr(
        run_module, "load_model_by_name", lambda name: loaded.append(name) or by_name(name)
    )
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        cfg = compose(
            "analyze",
            overrides=[
                f"sae_path={run}",
                f"paths.output_dir={tmp_path / 'analysis'}",
                "criteria=[]",
                f"data.source.corpus={small_corpus}",
                "data.split=train",
                "tokens=512",
                "features=[0,1]",
                "dashboards=false",
                "+trainer.enable_progress_bar=false",
            ],
        )
    report = analyze(cfg)
    assert loaded == ["toy-1l-b"] and report.metadata["model_name"] == "toy-1l-b"
