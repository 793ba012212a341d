"""A multirun whose end-of-sweep report fails exits with status 1: Hydra itself catches a
callback's exception and only warns, which made `python train.py -m ...` exit 0."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from sae_lightning.replication.callback import Replication
from sae_lightning.sweep import SweepSummary, exit_on_failure

REPO = Path(__file__).resolve().parents[1]


def test_exit_on_failure_turns_an_error_into_status_1(caplog) -> None:
    with pytest.raises(SystemExit) as stopped, exit_on_failure("the report"):
        raise ValueError("no runs under the sweep")
    assert stopped.value.code == 1
    assert "the report failed" in caplog.text and "no runs under the sweep" in caplog.text
    with exit_on_failure("nothing"):
        pass  # no error: no exit


def test_a_replication_of_an_empty_sweep_exits_1(tmp_path: Path) -> None:
    config = OmegaConf.create({
        "hydra": {"sweep": {"dir": str(tmp_path)}},
        "replication": {"command": "python train.py -m", "publish_dir": None},
        "data": {"source": None},
    })  # fmt: skip
    with pytest.raises(SystemExit) as stopped:
        Replication().on_multirun_end(config)
    assert stopped.value.code == 1


def test_a_recipe_sweep_without_pairs_exits_1(tmp_path: Path) -> None:
    from sae_lightning.replication.recipes import RecipeSweep

    with pytest.raises(SystemExit) as stopped:
        RecipeSweep().on_multirun_end(
            OmegaConf.create({"hydra": {"sweep": {"dir": str(tmp_path)}}})
        )
    assert stopped.value.code == 1


def test_a_summary_of_an_empty_sweep_writes_nothing_and_passes(tmp_path: Path) -> None:
    SweepSummary().on_multirun_end(OmegaConf.create({"hydra": {"sweep": {"dir": str(tmp_path)}}}))


@pytest.mark.slow
def test_train_multirun_with_a_failed_replication_exits_nonzero(tmp_path: Path) -> None:
    """One tiny job of the replication sweep (A only): its report cannot be made, so the
    command fails, naming why."""
    cmd = [sys.executable, "train.py", "-m", "experiment=replicate_monosemanticity",
           "replication_sae=a", "debug=fast", "trainer.max_steps=4", "data.val_contexts=8",
           f"hydra.sweep.dir={tmp_path}"]  # fmt: skip
    done = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=900)
    assert done.returncode == 1, done.stderr[-2000:]
    assert "the replication report failed" in done.stdout + done.stderr
    assert (tmp_path / "0" / "metrics.json").is_file()  # the job itself trained
