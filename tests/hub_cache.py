"""Helpers for tests of the Hugging Face hub code paths: isolated offline runs, fake caches."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

COMMIT = "0123456789abcdef0123456789abcdef01234567"


def offline_env(hf_home: Path) -> dict[str, str]:
    """The environment of an offline run whose hub cache lives under ``hf_home``."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HOME": str(hf_home)}
    env.pop("HF_HUB_CACHE", None)
    return env


def run_isolated(script: str, hf_home: Path) -> subprocess.CompletedProcess:
    """Run ``script`` offline in a fresh interpreter with its hub cache under ``hf_home``."""
    # huggingface_hub reads HF_HUB_OFFLINE at import time, so each check runs in its own process
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(script)],
        env=offline_env(hf_home),
        capture_output=True,
        text=True,
        timeout=300,
    )


def fake_snapshot(
    hf_home: Path, repo_id: str, commit: str = COMMIT, repo_type: str = "model"
) -> Path:
    """An empty snapshot of repo ``repo_id`` (a model or dataset repo) laid out as the hub
    does, at ``main``."""
    storage = hf_home / "hub" / f"{repo_type}s--{repo_id.replace('/', '--')}"
    snapshot = storage / "snapshots" / commit
    snapshot.mkdir(parents=True)
    (storage / "refs").mkdir()
    (storage / "refs" / "main").write_text(commit)
    return snapshot
