"""experiment=gelu1l up to the network boundary: a stand-in hub cache (tests/gelu1l_standin.py)
with HF_HUB_OFFLINE=1, so the only thing a user with network adds is the download."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest
from gelu1l_standin import DATASET_REPO, build_gelu1l_cache
from hub_cache import offline_env
from hydra import compose, initialize_config_dir

ROOT = Path(__file__).resolve().parents[1]


def test_experiment_composes_the_public_runs_setting():
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        cfg = compose("train", overrides=["experiment=gelu1l"])
    assert cfg.model._target_ == "sae_lightning.models.load_legacy" and cfg.model.name == "gelu-1l"
    assert cfg.hook_name == "blocks.0.mlp.hook_post"
    assert cfg.data.source.path == DATASET_REPO and cfg.data.source.tokens_column == "tokens"
    assert cfg.data.source.streaming and cfg.data.n_ctx == 128 and not cfg.data.drop_bos
    assert cfg.sae.d_sae == 16384 and cfg.data.batch_size == 4096
    # Neel's L1 is summed over his 4096-token batch: 3e-4 per token-sum is 1.2288 per token
    assert cfg.loss.l1_coeff == pytest.approx(3e-4 * 4096)
    assert cfg.module.optimizer.lr == 1e-4 and list(cfg.module.optimizer.betas) == [0.9, 0.99]


@pytest.fixture(scope="module")
def hf_home(tmp_path_factory) -> Path:
    home = tmp_path_factory.mktemp("gelu1l_hub")
    build_gelu1l_cache(home)
    return home


def _run(args: list[str], hf_home: Path, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, *args, "+trainer.enable_progress_bar=false"],
        cwd=cwd, env=offline_env(hf_home), capture_output=True, text=True, timeout=600,
    )  # fmt: skip


def test_gelu1l_trains_and_analyses_offline_against_the_public_sae(tmp_path, hf_home):
    run, report = tmp_path / "run", tmp_path / "analysis"
    done = _run(
        [str(ROOT / "train.py"), "experiment=gelu1l", "debug=fast", "trainer.max_steps=10",
         "trainer.val_check_interval=10", "data.source.max_tokens=20000", "data.val_contexts=4",
         "data.val_batch_size=2", f"paths.output_dir={run}"],
        hf_home, tmp_path,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    cfg = json.loads((run / "sae" / "cfg.json").read_text())
    meta = cfg["metadata"]
    assert meta["model_name"] == "NeelNanda/GELU_1L512W_C4_Code" and cfg["d_in"] == 2048
    assert meta["hook_name"] == "blocks.0.mlp.hook_post" and meta["context_size"] == 128
    metrics = json.loads((run / "metrics.json").read_text())["metrics"]
    assert math.isfinite(metrics["val/loss_recovered"])
    assert metrics["val/ce_loss_clean"] == pytest.approx(math.log(48262), abs=0.5)  # random model
    done = _run(
        [str(ROOT / "analyze.py"), f"sae_path={run}",
         "compare_with=hf://NeelNanda/sparse_autoencoder/25.pt", "data=hf",
         f"data.source.path={DATASET_REPO}", "data.source.tokens_column=tokens",
         "data.source.max_tokens=20000", "data.split=train", "tokens=2048", "features=top:4",
         "criteria=[top_activations,downstream,universality]", f"report_dir={report}"],
        hf_home, tmp_path,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads((report / "report" / "criteria.json").read_text())
    assert result["metadata"]["compare_with"] == "hf://NeelNanda/sparse_autoencoder/25.pt"
    assert result["metadata"]["n_ctx"] == 128 and len(result["features"]) == 4
    for per_feature in result["features"].values():
        match = per_feature["universality"]
        assert 0 <= match["best_match"] < 2048 and -1 <= match["activation_corr"] <= 1
        assert len(per_feature["downstream"]["top_tokens"]) > 0  # through W_out and W_U
