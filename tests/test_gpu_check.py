"""benchmarks/gpu_check.sh: its commands run end to end in the CPU dry mode
(GPU_CHECK_DEVICE=cpu), and without a GPU it stops at once with a clear line."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "benchmarks" / "gpu_check.sh"
STEPS = ["env", "train", "throughput-32", "throughput-bf16", "topk", "analyze", "ddp-config"]


def run_check(out: Path, device: str | None, timeout: float) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in ("GPU_CHECK_DEVICE", "OUT")}
    if device is not None:
        env["GPU_CHECK_DEVICE"] = device
    return subprocess.run(
        ["bash", str(SCRIPT), str(out)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def test_script_parses() -> None:
    assert subprocess.run(["bash", "-n", str(SCRIPT)], capture_output=True).returncode == 0


def test_unknown_device_is_refused(tmp_path: Path) -> None:
    result = run_check(tmp_path / "out", "tpu", timeout=60)
    assert result.returncode == 2
    assert "GPU_CHECK_DEVICE must be cuda or cpu, got 'tpu'" in result.stderr
    assert not (tmp_path / "out").exists()


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_without_cuda_it_stops_after_env(tmp_path: Path) -> None:
    result = run_check(tmp_path, None, timeout=120)
    assert result.returncode == 1
    assert "torch.cuda.is_available() is False" in result.stdout
    assert f"torch {torch.__version__}" in result.stdout
    assert sorted(p.name for p in tmp_path.iterdir()) == ["env.log"]


@pytest.mark.slow
@pytest.mark.skipif(sys.platform == "win32", reason="bash script")
def test_cpu_dry_run_end_to_end(tmp_path: Path) -> None:
    result = run_check(tmp_path, "cpu", timeout=1200)
    summary_file = tmp_path / "summary.txt"
    shown = summary_file.read_text() if summary_file.exists() else result.stdout[-4000:]
    assert result.returncode == 0, shown + result.stderr[-2000:]
    for step in STEPS:
        assert (tmp_path / f"{step}.log").read_text().startswith(f"== {step}: ")

    metrics = json.loads((tmp_path / "train" / "metrics.json").read_text())["metrics"]
    assert math.isfinite(metrics["val/loss_recovered"])
    assert 0 < metrics["val/l0"] <= 256  # debug=fast: d_sae 256
    assert (tmp_path / "train" / "sae" / "cfg.json").is_file()
    index = tmp_path / "analysis" / "report" / "index.html"
    assert index.is_file() and index.stat().st_size > 1000
    assert (index.parent / "prompts.html").is_file()  # the prompt-centric page too

    summary = summary_file.read_text()
    assert summary in result.stdout  # printed at the end, and kept
    lines = summary.splitlines()
    assert lines[0].startswith("== gpu_check summary (GPU_CHECK_DEVICE=cpu, ")
    assert lines[-1] == "gpu_check: PASSED"
    ok = {line.split()[0] for line in lines if line.split()[1:2] == ["ok"]}
    assert ok == set(STEPS)
    assert f"torch {torch.__version__} device: cpu" in summary
    assert f"val/loss_recovered={metrics['val/loss_recovered']:.4g}" in summary
    assert summary.count("device=cpu batch=") == 2  # both throughput tables, with their rows
    for precision in ("32-true", "bf16-mixed"):
        rows = [line.split() for line in lines if line.split()[1:2] == [precision]]
        assert {row[0] for row in rows} == {"relu", "topk"}, summary
    assert "SAE step" in summary and "full loop" in summary  # the TopK table
    assert f"report: {index}" in summary
    assert "ddp not run on cpu" in summary
