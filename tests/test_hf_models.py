"""Hugging Face models of three families, every hook kind and a bf16 model, end to end:
``train.py debug=fast model=hf model.name=<folder> hook_name=...`` then ``analyze.py``."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from test_train import small_corpus  # noqa: F401

from sae_lightning.analysis.run import analyze
from sae_lightning.formats import load_saelens
from sae_lightning.training import train

ROOT = Path(__file__).resolve().parents[1]
CRITERIA = "[top_activations,specificity,downstream,not_a_neuron]"


def _run(tmp: Path, corpus: Path, *overrides: str) -> tuple[Path, dict]:
    """A debug=fast training run (10 steps, one validation) into ``tmp / 'run'``."""
    out = tmp / "run"
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        cfg = compose(
            "train",
            overrides=[
                "debug=fast",
                f"data.source.corpus={corpus}",
                "data.source.val_fraction=0.2",
                f"paths.output_dir={out}",
                "trainer.max_steps=10",
                "trainer.val_check_interval=10",
                "+trainer.enable_progress_bar=false",
                *overrides,
            ],
        )
    return out, train(cfg)


def _analyse(tmp: Path, run: Path, corpus: Path, *overrides: str) -> dict:
    """analyze.py on the run's SAE (the model is loaded by the name the export records)."""
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        cfg = compose(
            "analyze",
            overrides=[
                f"sae_path={run}",
                f"report_dir={tmp / 'analysis'}",
                f"paths.output_dir={tmp / 'analysis'}",
                f"data.source.corpus={corpus}",
                "data.split=train",
                "tokens=2048",
                f"criteria={CRITERIA}",
                "features=top:8",
                "+trainer.enable_progress_bar=false",
                *overrides,
            ],
        )
    analyze(cfg)
    return json.loads((tmp / "analysis" / "report" / "criteria.json").read_text())


def _check_metrics(metrics: dict, trained_model: bool = False) -> None:
    assert math.isfinite(metrics["val/loss_recovered"]) and metrics["val/l0"] > 0
    clean, zero = metrics["val/ce_loss_clean"], metrics["val/ce_loss_zero_ablation"]
    # the splice reaches the logits; on a trained model, zero ablation costs loss (a random
    # model predicts about uniformly either way)
    assert zero > clean + 0.05 if trained_model else abs(zero - clean) > 1e-5


def _check_report(report: dict) -> None:
    features = report["features"]
    assert features, "no feature analysed"
    for per_feature in features.values():
        down = per_feature["downstream"]
        assert len(down["top_tokens"]) == len(down["top_values"]) > 0
        assert down["top_values"] == sorted(down["top_values"], reverse=True)
        assert per_feature["not_a_neuron"]["max_neuron_corr"] is not None
    ablated = [
        f["downstream"]["ablation"] for f in features.values() if f["downstream"]["ablation"]
    ]
    assert ablated and all(math.isfinite(a["mean_delta_logprob"]) for a in ablated)


@pytest.mark.parametrize(
    ("family", "hook"),
    [
        ("gpt2", "blocks.1.attn.hook_z"),
        ("neox", "blocks.0.hook_resid_post"),
        ("llama", "blocks.1.mlp.hook_post"),
    ],
)
def test_hf_family_trains_and_analyses(tmp_path, tiny_model_dirs, small_corpus, family, hook):  # noqa: F811
    folder = tiny_model_dirs[family]
    run, metrics = _run(
        tmp_path, small_corpus, "model=hf", f"model.name={folder}", f"hook_name={hook}"
    )
    _check_metrics(metrics)
    _, cfg = load_saelens(run / "sae")
    assert cfg["metadata"]["model_name"] == str(folder) and cfg["metadata"]["hook_name"] == hook
    assert cfg["metadata"]["context_size"] == 64  # the model's n_ctx
    _check_report(_analyse(tmp_path, run, small_corpus))


@pytest.mark.parametrize(
    "hook",
    [
        "blocks.0.hook_resid_pre",
        "blocks.0.hook_resid_mid",
        "blocks.0.hook_mlp_out",
        "blocks.0.hook_attn_out",
        "blocks.0.mlp.hook_pre",
        "blocks.0.attn.hook_z",
    ],
)
def test_every_hook_kind_trains_and_analyses_on_the_embedded_model(
    tmp_path,
    small_corpus,  # noqa: F811
    hook,
):
    run, metrics = _run(tmp_path, small_corpus, f"hook_name={hook}")
    _check_metrics(metrics, trained_model=True)
    _, cfg = load_saelens(run / "sae")
    assert cfg["d_in"] == (1024 if "mlp.hook" in hook else 256)  # hook_z: 8 heads x 32
    _check_report(_analyse(tmp_path, run, small_corpus))


def test_bf16_frozen_model_trains_close_to_float32(tmp_path, small_corpus):  # noqa: F811
    _, full = _run(tmp_path / "fp32", small_corpus)
    run, half = _run(tmp_path / "bf16", small_corpus, "model.dtype=bfloat16")
    _check_metrics(half, trained_model=True)
    # the same SAE recipe on bf16 activations: clean loss and reconstruction close to fp32
    assert half["val/ce_loss_clean"] == pytest.approx(full["val/ce_loss_clean"], abs=0.05)
    assert half["val/explained_variance"] == pytest.approx(full["val/explained_variance"], abs=0.05)
    _check_report(
        _analyse(tmp_path / "bf16", run, small_corpus, "model=embedded", "model.dtype=bfloat16")
    )


def test_train_py_command_line_on_a_local_hf_model(tmp_path, tiny_model_dirs, small_corpus):  # noqa: F811
    """The README's command, from the shell: train on a local GPT-2 folder, then analyse."""
    folder, out = tiny_model_dirs["gpt2"], tmp_path / "run"
    common = ["+trainer.enable_progress_bar=false"]
    train_cmd = [
        sys.executable, "train.py", "debug=fast", "model=hf", f"model.name={folder}",
        "hook_name=blocks.0.hook_resid_post", f"data.source.corpus={small_corpus}",
        "data.source.val_fraction=0.2",
        f"paths.output_dir={out}", "trainer.max_steps=10", *common,
    ]  # fmt: skip
    done = subprocess.run(train_cmd, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    analyse_cmd = [
        sys.executable, "analyze.py", f"sae_path={out}", f"report_dir={tmp_path / 'a'}",
        f"data.source.corpus={small_corpus}", "data.split=train", "tokens=2048",
        "features=top:4", "dashboards=true", *common,
    ]  # fmt: skip
    done = subprocess.run(analyse_cmd, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert (tmp_path / "a" / "report" / "index.html").is_file()


def test_attention_pattern_hook_fails_in_one_line_before_loading(tmp_path):
    done = subprocess.run(
        [sys.executable, "train.py", "hook_name=blocks.0.attn.hook_pattern",
         f"paths.output_dir={tmp_path}"],
        cwd=ROOT, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert done.returncode == 1
    last = done.stderr.strip().splitlines()[-1]
    assert last.startswith("train.py: ValueError: hook 'blocks.0.attn.hook_pattern'")
    assert "blocks.L.attn.hook_z" in last and "Traceback" not in done.stderr
    assert "Moving model" not in done.stderr + done.stdout  # refused before the model loads
