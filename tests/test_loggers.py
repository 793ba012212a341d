"""logger=csv|wandb|mlflow: each adds to TensorBoard, writes only local files (W&B offline,
MLflow into a SQLite store in the run folder), and holds the run's train/ and val/ metrics."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from importlib.util import find_spec
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from hydra.errors import InstantiationException
from hydra.utils import instantiate
from test_train import ROOT, small_corpus, small_run  # noqa: F401

STEPS, EVERY = 20, 5  # conf/debug/fast.yaml: max_steps, log_every_n_steps
TRAIN_STEPS = list(range(EVERY - 1, STEPS, EVERY))  # Lightning logs at steps 4, 9, 14, 19


def _compose(*overrides: str):
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        return compose("train", overrides=["paths.output_dir=/tmp/run", *overrides])


@pytest.mark.parametrize(
    ("override", "names"),
    [
        ("logger=csv", ["tensorboard", "csv"]),
        ("logger=wandb", ["tensorboard", "wandb"]),
        ("logger=mlflow", ["tensorboard", "mlflow"]),
        ("logger=[tensorboard,csv]", ["tensorboard", "csv"]),
    ],
)
def test_each_logger_option_adds_to_tensorboard(override, names):
    cfg = _compose(override)
    assert list(cfg.logger) == names
    if "wandb" in names:
        assert cfg.logger.wandb.offline is True and cfg.logger.wandb.save_dir == "/tmp/run"
    if "mlflow" in names:  # a local store inside the run folder: nothing leaves the machine
        assert cfg.logger.mlflow.tracking_uri == "sqlite:////tmp/run/mlflow.db"
        assert cfg.logger.mlflow.artifact_location == "/tmp/run/mlflow_artifacts"


def test_tensorboard_can_be_dropped():
    assert list(_compose("logger=csv", "~logger.tensorboard").logger) == ["csv"]


def test_a_missing_mlflow_package_is_named(monkeypatch):
    from lightning.pytorch.loggers import mlflow as lightning_mlflow
    from lightning_utilities.core.imports import RequirementCache

    monkeypatch.setattr(lightning_mlflow, "_MLFLOW_AVAILABLE", RequirementCache("mlflow>=999"))
    with pytest.raises(InstantiationException, match=r"mlflow>=999.*pip install"):
        instantiate(_compose("logger=mlflow").logger.mlflow)


@pytest.fixture(scope="module")
def logged_run(tmp_path_factory, small_corpus) -> Path:  # noqa: F811
    """``train.py debug=fast logger=[csv,wandb,mlflow]`` on the command line (the options
    whose package is installed: wandb and mlflow are extras)."""
    options = ["csv"] + [name for name in ("wandb", "mlflow") if find_spec(name) is not None]
    tmp = tmp_path_factory.mktemp("loggers")
    run = tmp / "run"
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "WANDB_SILENT": "true"}
    env.pop("WANDB_MODE", None)  # offline must come from conf/logger/wandb.yaml
    result = subprocess.run(
        [
            sys.executable,
            str(ROOT / "train.py"),
            f"logger=[{','.join(options)}]",
            *small_run(small_corpus),
            f"hydra.run.dir={run}",
        ],
        cwd=tmp,
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert not (tmp / "mlruns").exists() and not (tmp / "wandb").exists()  # all in the run
    return run


def _final(run: Path) -> dict[str, float]:
    return json.loads((run / "metrics.json").read_text())["metrics"]


@pytest.mark.slow
def test_csv_logger_writes_train_and_val_rows(logged_run):
    rows = list(csv.DictReader((logged_run / "csv" / "metrics.csv").open()))
    train = [r for r in rows if r.get("train/loss")]
    assert [int(r["step"]) for r in train] == TRAIN_STEPS
    assert all(float(r["train/loss"]) > 0 for r in train)
    val = [r for r in rows if r.get("val/loss_recovered")]
    assert len(val) == 2  # val_check_interval 10 of 20 steps
    final = _final(logged_run)
    assert float(val[-1]["val/loss_recovered"]) == pytest.approx(final["val/loss_recovered"])
    hparams = (logged_run / "csv" / "hparams.yaml").read_text()
    assert "sae.d_sae: 256" in hparams
    assert list((logged_run / "tensorboard").glob("events.out.tfevents.*"))  # TB still there


def wandb_history(path: Path) -> list[dict[str, float]]:
    """The history rows of an offline W&B run file (a LevelDB-style log of protobuf records:
    a 7-byte ``:W&B`` header, then 32 KiB blocks of chunks with 7-byte headers)."""
    from wandb.proto import wandb_internal_pb2 as pb

    data, pos, block, buf, rows = path.read_bytes(), 7, 32768, b"", []
    assert data[:4] == b":W&B", f"{path} is not a W&B run file"
    while pos + 7 <= len(data):
        if block - pos % block < 7:  # a block's tail too short for a header is padding
            pos += block - pos % block
            continue
        length, kind = int.from_bytes(data[pos + 4 : pos + 6], "little"), data[pos + 6]
        buf += data[pos + 7 : pos + 7 + length]
        pos += 7 + length
        if kind in (1, 4):  # a full record or the last chunk of one
            record = pb.Record.FromString(buf)
            buf = b""
            if record.WhichOneof("record_type") == "history":
                items = record.history.item
                rows.append(
                    {i.key or "/".join(i.nested_key): json.loads(i.value_json) for i in items}
                )
    return rows


@pytest.mark.slow
def test_wandb_offline_run_holds_the_metrics(logged_run):
    pytest.importorskip("wandb", reason="logger=wandb needs pip install 'sae-lightning[wandb]'")
    runs = list((logged_run / "wandb").glob("offline-run-*"))
    assert len(runs) == 1
    history = wandb_history(next(runs[0].glob("run-*.wandb")))
    train = [r for r in history if "train/loss" in r]
    assert [r["trainer/global_step"] for r in train] == TRAIN_STEPS
    val = [r["val/loss_recovered"] for r in history if "val/loss_recovered" in r]
    assert len(val) == 2 and val[-1] == pytest.approx(_final(logged_run)["val/loss_recovered"])


@pytest.mark.slow
def test_mlflow_store_holds_the_metrics(logged_run):
    pytest.importorskip("mlflow", reason="logger=mlflow needs pip install 'sae-lightning[mlflow]'")
    from mlflow.tracking import MlflowClient

    client = MlflowClient(f"sqlite:///{logged_run}/mlflow.db")
    experiment = client.get_experiment_by_name("sae-lightning")
    (run,) = client.search_runs([experiment.experiment_id])
    assert run.info.status == "FINISHED"
    history = client.get_metric_history(run.info.run_id, "train/loss")
    assert [m.step for m in history] == TRAIN_STEPS and all(m.value > 0 for m in history)
    final = _final(logged_run)
    assert run.data.metrics["val/loss_recovered"] == pytest.approx(final["val/loss_recovered"])
    assert run.data.params["sae.d_sae"] == "256"
