"""train.py on the command line: DDP with two CPU processes and a multirun sweep."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from test_train import ROOT, small_corpus, small_run  # noqa: F401


def _run(args: list[str], cwd: Path, timeout: int = 600) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    return subprocess.run(
        [sys.executable, str(ROOT / "train.py"), *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


@pytest.mark.slow
def test_ddp_two_cpu_processes_train_and_log(tmp_path, small_corpus):  # noqa: F811
    result = _run(
        [
            "trainer=ddp",
            "trainer.accelerator=cpu",
            "trainer.devices=2",
            *small_run(small_corpus),
            f"hydra.run.dir={tmp_path}/run",
        ],
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    import json

    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())["metrics"]
    assert 0 < metrics["val/loss_recovered"] <= 1.1
    assert list((tmp_path / "run" / "tensorboard").glob("events.out.tfevents.*"))
    assert (tmp_path / "run" / "sae" / "sae_weights.safetensors").is_file()


@pytest.mark.slow
def test_three_job_sweep_writes_summary(tmp_path, small_corpus):  # noqa: F811
    result = _run(
        [
            "-m",
            "loss.l1_coeff=0.1,5,50",
            *small_run(small_corpus),
            f"hydra.sweep.dir={tmp_path}/sweep",
        ],
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    summary = (tmp_path / "sweep" / "summary.md").read_text().splitlines()
    assert len(summary) == 2 + 3 and "val/loss_recovered" in summary[0]
    assert [row.split("|")[3].strip() for row in summary[2:]] == [
        "loss.l1_coeff=0.1",
        "loss.l1_coeff=5",
        "loss.l1_coeff=50",
    ]
    import csv

    rows = list(csv.DictReader((tmp_path / "sweep" / "summary.csv").open()))
    l0 = [float(r["val/l0"]) for r in rows]
    assert l0[0] > l0[2]  # a larger L1 coefficient gives a sparser code
    assert {r["architecture"] for r in rows} == {"standard"}
    frontier = (tmp_path / "sweep" / "frontier.md").read_text().splitlines()
    assert len(frontier) == 2 + 3 and "yes" in frontier[2]  # the sparsest run is on it
    assert (tmp_path / "sweep" / "frontier.html").is_file()
    assert (tmp_path / "sweep" / "plotly.min.js").is_file()
