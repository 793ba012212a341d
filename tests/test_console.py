"""What a researcher sees in the terminal: what is trained on what, a bar over steps with the
tokens seen and an ETA, where the SAE went and what to run next; no library noise."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from test_train import small_corpus, small_run  # noqa: F401

from sae_lightning.progress import _short, human

ROOT = Path(__file__).resolve().parents[1]


def test_counts_and_keys_are_shortened_for_the_bar():
    assert [human(n) for n in (0, 999, 1000, 5120, 1_600_000, 2.5e9)] == [
        "0", "999", "1k", "5.12k", "1.6M", "2.5G",
    ]  # fmt: skip
    assert _short("train/explained_variance") == "ev"
    assert _short("val/loss_recovered") == "val_recovered"
    assert _short("train/tokens_per_sec") == "tok/s"


def test_the_bar_shows_tokens_seen_and_a_readable_rate():
    from types import SimpleNamespace

    from sae_lightning.progress import StepProgressBar

    bar = StepProgressBar()
    trainer = SimpleNamespace(
        global_step=300,
        world_size=2,
        datamodule=SimpleNamespace(batch_size=1024),
        progress_bar_metrics={"train/tokens_per_sec": 3190.4, "train/l0": 35.0},
        loggers=[],
    )
    items = bar.get_metrics(trainer, None)
    assert items == {"tokens": "614k", "tok/s": "3.19k", "l0": 35.0}


def test_a_default_run_shows_steps_tokens_and_next_command(tmp_path, small_corpus):  # noqa: F811
    out = tmp_path / "run"
    done = subprocess.run(
        [sys.executable, "train.py", *small_run(small_corpus), f"paths.output_dir={out}"],
        cwd=ROOT, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    text = (done.stdout + done.stderr).replace("\r", "\n")
    assert "training a standard SAE (1024 -> 256) on toy-1l blocks.0.mlp.hook_post: " in text
    assert "20 steps of 256 activations (5.12k tokens)" in text
    assert "training: 100%" in text and "20/20" in text and "tokens=5.12k" in text
    assert "val_recovered=" in text and " l0=" in text
    assert f"exported the SAE to {out}/sae" in text
    assert f"next: python analyze.py sae_path={out}" in text
    for noise in ("Moving model to device", "LeafSpec", "💡 Tip", "litlogger", "Epoch 0/-"):
        assert noise not in text, noise
