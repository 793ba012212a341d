"""A crosscoder of two models: the paired capture, each model's splice in validation, the
export's sources, and experiment=crosscoder_models end to end (debug size)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from sae_lightning.analysis.loading import load_sae
from sae_lightning.hooks import capture_activations
from sae_lightning.losses import CrosscoderLoss
from sae_lightning.models import load_embedded
from sae_lightning.module import SAEModule
from sae_lightning.paired import PairedSpec
from sae_lightning.saes.crosscoder import CrosscoderSAE

HOOK = "blocks.0.mlp.hook_post"
REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def pair(embedded_model):
    return embedded_model, load_embedded(name="toy-1l-b")


def _tokens(n: int = 2, pos: int = 24) -> torch.Tensor:
    return torch.randint(1, 1000, (n, pos), generator=torch.Generator().manual_seed(0))


def test_a_row_is_both_models_at_the_hook_on_the_same_tokens(pair) -> None:
    a, b = pair
    spec = PairedSpec(a, b, HOOK, drop_bos=True, n_ctx=24, names=("toy-1l", "toy-1l-b"))
    tokens = _tokens()
    with torch.inference_mode():
        rows = spec.capture(tokens)
        x_a, x_b = capture_activations(a, tokens, HOOK), capture_activations(b, tokens, HOOK)
    assert spec.widths == [x_a.shape[-1], x_b.shape[-1]] and spec.d_in == rows.shape[-1]
    assert torch.equal(rows, torch.cat([x_a, x_b], dim=-1))
    part_a, part_b = spec.split(spec.trained(rows))
    assert torch.equal(part_b, spec.trained(x_b)) and not torch.equal(part_a, part_b)
    assert spec.source_names == [
        {"model_name": "toy-1l", "hook_name": HOOK},
        {"model_name": "toy-1l-b", "hook_name": HOOK},
    ]


def test_a_model_with_another_tokenizer_is_refused(pair) -> None:
    a = pair[0]
    vocab = dict(a.tokenizer.get_vocab())
    vocab["Ġelse"], vocab["Ġreturn"] = vocab["Ġreturn"], vocab["Ġelse"]  # two ids swapped
    tokenizer = SimpleNamespace(get_vocab=lambda: vocab, bos_token_id=a.tokenizer.bos_token_id)
    other = SimpleNamespace(tokenizer=tokenizer)
    with pytest.raises(ValueError, match=r"model_b reads model 'b'.*a crosscoder of two models"):
        PairedSpec(a, other, HOOK, names=("a", "b"))


def _identity_crosscoder(d_in: int) -> CrosscoderSAE:
    """x_hat = relu(x) - relu(-x) = x exactly: latents i and d_in + i read +-x_i."""
    cc = CrosscoderSAE(d_in, 2 * d_in, n_sources=2, sparse_threshold=0.0)
    eye = torch.eye(d_in)
    with torch.no_grad():
        cc.W_enc.copy_(torch.cat([eye, -eye], dim=1))  # [d_in, 2 d_in]
        cc.W_dec.copy_(torch.cat([eye, -eye], dim=0))  # [2 d_in, d_in]
        cc.b_enc.zero_()
        cc.b_dec.zero_()
    return cc


def test_validation_splices_each_part_into_its_own_model(pair) -> None:
    a, b = pair
    spec = PairedSpec(a, b, HOOK, drop_bos=True, n_ctx=24, names=("toy-1l", "toy-1l-b"))
    results = []
    for scale in (1.0, 0.0):  # the exact reconstruction, then none (the zero-ablation)
        cc = _identity_crosscoder(spec.d_in)
        with torch.no_grad():
            cc.W_dec.mul_(scale)
        module = SAEModule(cc, CrosscoderLoss(l1_coeff=1.0), torch.optim.Adam)
        module.set_spec(spec)
        with torch.inference_mode():
            module._validate_paired(_tokens())
        results.append([m.compute() for m in module.val_downstream_sources])
    for exact, zero in zip(*results, strict=True):
        assert abs(float(exact["loss_recovered"]) - 1.0) < 1e-4
        assert float(exact["kl"]) < 1e-5
        assert abs(float(zero["loss_recovered"])) < 1e-6
    # the two models differ: their clean losses are their own
    assert float(results[0][0]["ce_loss_clean"]) != float(results[0][1]["ce_loss_clean"])


@pytest.mark.slow
def test_experiment_crosscoder_models_end_to_end(tmp_path: Path) -> None:
    run = tmp_path / "run"
    cmd = [sys.executable, "train.py", "experiment=crosscoder_models", "debug=fast",
           f"paths.output_dir={run}"]  # fmt: skip
    subprocess.run(cmd, cwd=REPO, check=True, capture_output=True, timeout=900)
    metrics = json.loads((run / "metrics.json").read_text())["metrics"]
    for key in ("loss_recovered", "ce_loss_clean", "ce_loss_zero_ablation"):
        mean = (metrics[f"val/A/{key}"] + metrics[f"val/B/{key}"]) / 2
        assert metrics[f"val/{key}"] == pytest.approx(mean)
    cfg = json.loads((run / "sae" / "cfg.json").read_text())
    assert cfg["architecture"] == "crosscoder" and cfg["n_sources"] == 2
    assert [s["model_name"] for s in cfg["metadata"]["sources"]] == ["toy-1l", "toy-1l-b"]
    summary = json.loads((run / "crosscoder.json").read_text())  # the shared / exclusive split
    assert summary["sources"] == ["toy-1l", "toy-1l-b"]
    assert sum(summary["counts"].values()) == summary["n_latents"] > 0
    assert summary["n_latents"] + summary["n_left_out"] == cfg["d_sae"]
    assert "Shared and exclusive latents" in (run / "crosscoder.html").read_text()
    _analyze_end_to_end(run, tmp_path / "analysis")


def _analyze(run: Path, *overrides: str) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "analyze.py", f"sae_path={run}", *overrides]
    return subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=900)


def _analyze_end_to_end(run: Path, out: Path) -> None:
    """analyze.py on the crosscoder: every default criterion, the dashboards with the shared /
    exclusive histogram, the prompt page; the options naming one model or hook refused."""
    done = _analyze(run, "tokens=3000", f"report_dir={out}", 'prompt="import os"')
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads((out / "report" / "criteria.json").read_text())
    meta = report["metadata"]
    assert meta["crosscoder"]["sources"] == ["toy-1l", "toy-1l-b"]
    sae, _ = load_sae(run)
    want = sae.relative_decoder_norm(0, 1)
    got = meta["crosscoder"]["relative_decoder_norm"]
    assert len(got) == sae.d_sae == len(report["features"])
    assert [got[str(i)] for i in range(sae.d_sae)] == pytest.approx(want.tolist(), abs=1e-6)
    some = report["features"]["0"]
    assert {"top_activations", "specificity", "sensitivity", "downstream", "not_a_neuron"} <= set(
        some
    )
    assert len(some["downstream"]["top_tokens"]) == 10  # logit weights through toy-1l's block
    index = (out / "report" / "index.html").read_text()
    assert "Shared and exclusive latents" in index and "toy-1l-b only" in index
    assert "crosscoder of toy-1l + toy-1l-b" in index  # the header names both models
    assert "relative decoder norm r =" in (out / "report" / "features" / "0.html").read_text()
    assert "import" in (out / "report" / "prompts.html").read_text()
    for bad in ("hook_name=blocks.0.hook_resid_pre", f"compare_with={run}"):
        refused = _analyze(run, "tokens=500", bad)
        assert refused.returncode == 1
        assert f"{bad.split('=')[0]}=" in refused.stderr and "crosscoder over 2 sources" in (
            refused.stderr
        )
