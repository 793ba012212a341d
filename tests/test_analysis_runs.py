"""Whole analysis runs: two DDP processes against one, and a real training run's folder."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch
from hydra import compose, initialize_config_dir
from test_analysis_core import (  # noqa: F401
    HOOK,
    META,
    ROOT,
    analysis_cfg,
    criteria_dir,
    random_sae,
    tiny_corpus,
)

from sae_lightning.analysis.loading import load_sae
from sae_lightning.analysis.run import analyze
from sae_lightning.formats import save_saelens

BUILT_IN = "[mine,top_activations,specificity,sensitivity,downstream,not_a_neuron]"


def assert_same_numbers(got: Any, want: Any, where: str = "") -> None:
    """Nested equality; floats to 1e-6 relative (ranks sum in another order)."""
    if isinstance(want, dict):
        assert got.keys() == want.keys(), where
        for key in want:
            assert_same_numbers(got[key], want[key], f"{where}.{key}")
    elif isinstance(want, list):
        assert len(got) == len(want), where
        for i, (g, w) in enumerate(zip(got, want, strict=True)):
            assert_same_numbers(g, w, f"{where}[{i}]")
    elif isinstance(want, float):
        assert got == pytest.approx(want, rel=1e-6, abs=1e-9), where
    else:
        assert got == want, where


@pytest.mark.slow
def test_ddp_two_processes_give_the_single_process_numbers(tmp_path, tiny_corpus, criteria_dir):  # noqa: F811
    save_saelens(random_sae(1024, 64), tmp_path / "sae", META)
    options = [
        f"criteria={BUILT_IN}",
        "features=[3,10,20,63]",
        "dashboards=false",
    ]
    cfg = analysis_cfg(tmp_path / "one", tmp_path / "sae", tiny_corpus, criteria_dir, *options)
    analyze(cfg)
    result = subprocess.run(
        [
            sys.executable,
            str(ROOT / "analyze.py"),
            f"sae_path={tmp_path / 'sae'}",
            f"hydra.searchpath=[file://{criteria_dir}]",
            f"data.source.corpus={tiny_corpus}",
            "data.split=train",
            "tokens=4096",
            *options,
            "trainer=ddp",
            "trainer.accelerator=cpu",
            "trainer.devices=2",
            f"hydra.run.dir={tmp_path / 'ddp'}",
        ],
        cwd=tmp_path,
        env={**os.environ, "PYTHONPATH": f"{Path(__file__).parent}{os.pathsep}{ROOT}"},
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    one = json.loads((tmp_path / "one" / "report" / "criteria.json").read_text())
    two = json.loads((tmp_path / "ddp" / "report" / "criteria.json").read_text())
    for f in ("3", "10", "20", "63"):
        for criterion, want in one["features"][f].items():
            want.pop("quantile_samples", None)  # a random sample: each rank draws its own keys
            got = dict(two["features"][f][criterion])
            got.pop("quantile_samples", None)
            assert_same_numbers(got, want, f"{f}.{criterion}")
    assert two["features"]["3"]["top_activations"]["top_examples"]  # not vacuous


def test_a_real_training_run_is_analysed_from_its_folder_and_checkpoints(
    tmp_path,
    tiny_corpus,  # noqa: F811
    criteria_dir,  # noqa: F811
):
    from sae_lightning.training import train

    run = tmp_path / "outputs" / "2026-01-01" / "10-00-00"
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        train_cfg = compose(
            "train",
            overrides=[
                "debug=fast",
                f"paths.output_dir={run}",
                f"data.source.corpus={tiny_corpus}",
                "data.source.val_fraction=0.3",
            ],
        )
    train(train_cfg)
    x = torch.randn(8, 1024, generator=torch.Generator().manual_seed(3)) * 0.3
    exported, meta = load_sae(run)
    assert meta["hook_name"] == HOOK and meta["model_name"] == "toy-1l"
    assert meta["seqpos_slice"] == [1, None]  # trained without BOS (data.drop_bos: true)
    for ckpt in sorted((run / "checkpoints").glob("*.ckpt")):  # best-*.ckpt and last.ckpt
        loaded, meta = load_sae(ckpt)
        assert meta["context_size"] == 128 and loaded.d_sae == 256
    last, _ = load_sae(run / "checkpoints" / "last.ckpt")
    with torch.no_grad():  # the export folds decoder norms: equal up to rounding
        torch.testing.assert_close(exported.encode(x), last.encode(x), rtol=1e-5, atol=1e-6)
    cfg = analysis_cfg(
        tmp_path / "out",
        "null",
        tiny_corpus,
        criteria_dir,
        f"runs_root={tmp_path / 'outputs'}",
        "features=top:8",
        "report_dir=${runs_root}/2026-01-01/10-00-00",
    )
    report = analyze(cfg)
    assert report.metadata["source"] == str(run / "sae") and len(report.feature_list) == 8
    assert report.metadata["drop_bos"] is True  # read from the export's seqpos_slice
    assert (run / "report" / "criteria.json").is_file()
