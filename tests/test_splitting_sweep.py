"""experiment=feature_splitting: one SAE per dictionary size, each with its own seed, then the
splitting report of the sweep (sae_lightning/replication/splitting_sweep.py)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir

from sae_lightning.replication.splitting_sweep import sized_runs

REPO = Path(__file__).resolve().parents[1]
SIZES = ("s512", "s4096", "s16384")


def _job(sweep: Path, name: str, d_sae: int, finished: bool = True) -> Path:
    job = sweep / name
    (job / "sae").mkdir(parents=True)
    (job / "sae" / "cfg.json").write_text(json.dumps({"d_sae": d_sae}))
    if finished:
        (job / "metrics.json").write_text("{}")
    return job


def test_runs_are_ordered_by_dictionary_size(tmp_path: Path) -> None:
    big, small = _job(tmp_path, "0", 4096), _job(tmp_path, "1", 512)
    _job(tmp_path, "2", 16384, finished=False)  # no metrics.json: not finished, not used
    assert sized_runs(tmp_path) == [small, big]
    _job(tmp_path, "3", 512)
    with pytest.raises(ValueError, match=r"different d_sae.*'1': 512.*'3': 512"):
        sized_runs(tmp_path)
    with pytest.raises(ValueError, match="found none"):
        sized_runs(tmp_path / "nothing")


def test_each_size_has_its_own_seed() -> None:
    with initialize_config_dir(config_dir=str(REPO / "conf"), version_base="1.3"):
        cfgs = {
            s: compose("train", overrides=["experiment=feature_splitting", f"splitting_sae={s}"])
            for s in SIZES
        }
        sweep = compose("train", overrides=["experiment=feature_splitting"],
                        return_hydra_config=True)  # fmt: skip
    assert [cfgs[s].sae.d_sae for s in SIZES] == [512, 4096, 16384]
    assert len({cfgs[s].seed for s in SIZES}) == 3
    assert {(cfgs[s].sae._target_.rsplit(".", 1)[1], cfgs[s].sae.k) for s in SIZES} == {
        ("TopKSAE", 16)  # the replication's recipe at every size
    }
    assert sweep.hydra.sweeper.params.splitting_sae == ",".join(SIZES)
    assert sweep.hydra.callbacks.feature_splitting._target_.endswith("FeatureSplitting")


@pytest.mark.slow
def test_the_splitting_sweep_end_to_end(tmp_path: Path) -> None:
    """Three tiny SAEs (4 steps each), then the report of their families."""
    cmd = [sys.executable, "train.py", "-m", "experiment=feature_splitting",
           "trainer.max_steps=4", "trainer.val_check_interval=4", "data.batch_size=256",
           "data.buffer_tokens=2048", "data.contexts_per_forward=8", "data.val_contexts=8",
           "module.b_dec_init_tokens=1024", "sparsity_warmup_steps=2",
           "splitting.tokens=3000", f"hydra.sweep.dir={tmp_path}"]  # fmt: skip
    done = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=1200)
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads((tmp_path / "splitting" / "splitting.json").read_text())
    assert "feature splitting across the sweep's sizes" in done.stdout + done.stderr
    text = json.dumps(result)
    for size in ("512", "4096", "16384"):
        assert size in text
    assert (tmp_path / "splitting" / "splitting.html").is_file()
