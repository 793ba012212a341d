"""Transcoders and skip-transcoders: the maths, the sparse path, the SAELens export, the
two-hook capture and the splice at the output hook, and a run through train.py and analyze.py."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf

from sae_lightning.formats import load_saelens, save_saelens
from sae_lightning.hooks import capture_activations
from sae_lightning.losses import L1Loss
from sae_lightning.saes import SkipTranscoderSAE, TranscoderSAE
from sae_lightning.spec import ActivationSpec
from sae_lightning.training import build_sae

D_IN, D_SAE, D_OUT = 12, 80, 20
IN_HOOK, OUT_HOOK = "blocks.0.ln2.hook_normalized", "blocks.0.hook_mlp_out"
REPO = Path(__file__).resolve().parents[1]
META = {
    "model_name": "toy-1l",
    "hook_name": IN_HOOK,
    "hook_name_out": OUT_HOOK,
    "context_size": 128,
    "prepend_bos": True,
}


def trained_like(cls: type[TranscoderSAE], sparse_threshold: float) -> TranscoderSAE:
    """A transcoder with ~10% code density, unequal decoder norms and a non-zero skip."""
    torch.manual_seed(0)
    tc = cls(D_IN, D_SAE, D_OUT, sparse_threshold=sparse_threshold)
    with torch.no_grad():
        tc.b_enc.normal_(-1.0, 0.3)
        tc.b_dec.normal_(0, 0.5)
        tc.W_dec.mul_(torch.rand(D_SAE, 1) + 0.5)
        if isinstance(tc, SkipTranscoderSAE):
            tc.W_skip.normal_(0, 0.2)
    return tc


@pytest.mark.parametrize("cls", [TranscoderSAE, SkipTranscoderSAE])
def test_forward_is_decode_of_encode_in_the_output_space(cls) -> None:
    tc = trained_like(cls, sparse_threshold=0.0)
    x = torch.randn(3, 7, D_IN)
    out = tc(x)
    expected = tc.decode(tc.encode(x))  # [3, 7, d_out]
    if cls is SkipTranscoderSAE:
        expected = expected + x @ tc.W_skip.T
    assert out.x_hat.shape == (3, 7, D_OUT) and out.feature_acts.shape == (3, 7, D_SAE)
    torch.testing.assert_close(out.x_hat, expected)
    # b_dec is an output bias: the input is never shifted by it
    assert not tc.apply_b_dec_to_input and tc.input_bias() is None
    row = torch.randn(5, D_IN + D_OUT)
    inp, target = tc.split_target(row)
    assert torch.equal(inp, row[:, :D_IN]) and torch.equal(target, row[:, D_IN:])
    with pytest.raises(ValueError, match=r"\[x_in \| x_out\], 12 \+ 20 = 32 wide, got width 12"):
        tc.split_target(torch.randn(5, D_IN))


@pytest.mark.parametrize("cls", [TranscoderSAE, SkipTranscoderSAE])
def test_sparse_path_equals_dense_values_and_gradients(cls) -> None:
    sparse, dense = trained_like(cls, 1.0), trained_like(cls, 0.0)
    x, y = torch.randn(40, D_IN) * 2, torch.randn(40, D_OUT)
    loss_fn = L1Loss(l1_coeff=0.7)
    results = []
    for tc in (sparse, dense):
        out = tc(x)
        lo = loss_fn(y, out, tc, 100)  # the target is the output hook's activation
        lo.loss.backward()
        tc.remove_gradient_parallel_to_decoder_directions()
        results.append((out, lo))
    (out_s, lo_s), (out_d, lo_d) = results
    assert out_s.codes is not None and out_d.codes is None
    assert 0.02 < out_s.codes.cols.numel() / (40 * D_SAE) < 0.4
    torch.testing.assert_close(out_s.x_hat, out_d.x_hat)
    torch.testing.assert_close(out_s.feature_acts, out_d.feature_acts)
    torch.testing.assert_close(lo_s.loss, lo_d.loss)
    for (name, p_s), (_, p_d) in zip(
        sparse.named_parameters(), dense.named_parameters(), strict=True
    ):
        torch.testing.assert_close(p_s.grad, p_d.grad, msg=name)


@pytest.mark.parametrize("cls", [TranscoderSAE, SkipTranscoderSAE])
def test_saelens_export_round_trip(tmp_path: Path, cls) -> None:
    tc = trained_like(cls, 0.05)
    with torch.no_grad():
        tc.set_decoder_norm_to_unit_norm()  # as training leaves it: exported bit-exact
    save_saelens(tc, tmp_path / "a", META)
    back, cfg = load_saelens(tmp_path / "a")
    assert type(back) is cls and cfg["architecture"] == cls.architecture
    assert (cfg["d_in"], cfg["d_sae"], cfg["d_out"]) == (D_IN, D_SAE, D_OUT)
    assert cfg["hook_name_out"] == OUT_HOOK and cfg["hook_layer_out"] == 0
    assert cfg["apply_b_dec_to_input"] is False and cfg["hook_head_index_out"] is None
    assert cfg["metadata"]["hook_name"] == IN_HOOK
    for name, value in tc.state_dict().items():
        assert torch.equal(back.state_dict()[name], value), name
    # trained on 2x the activations: the export reads raw ones and returns raw ones
    save_saelens(tc, tmp_path / "b", META, activation_scale=2.0)
    scaled, _ = load_saelens(tmp_path / "b")
    x = torch.randn(9, D_IN)
    torch.testing.assert_close(scaled(x).x_hat, tc(2 * x).x_hat / 2)
    with pytest.raises(ValueError, match="needs metadata\\['hook_name_out'\\]"):
        save_saelens(tc, tmp_path / "c", {k: v for k, v in META.items() if k != "hook_name_out"})


def test_two_hooks_are_read_in_one_forward_and_spliced_at_the_output(embedded_model) -> None:
    model = embedded_model
    spec = ActivationSpec(model, IN_HOOK, drop_bos=True, n_ctx=16, hook_name_out=OUT_HOOK)
    d = model.cfg.d_model
    assert (spec.d_in, spec.d_out, spec.width, spec.splice_hook) == (d, d, 2 * d, OUT_HOOK)
    tokens = torch.randint(1, 1000, (2, 16), generator=torch.Generator().manual_seed(0))
    with torch.inference_mode():
        both = spec.capture(tokens)
        logits, cached = spec.logits_and_capture(tokens)
        assert torch.equal(both[..., :d], capture_activations(model, tokens, IN_HOOK))
        assert torch.equal(both[..., d:], capture_activations(model, tokens, OUT_HOOK))
        torch.testing.assert_close(cached, both)
        # the MLP's own output spliced back changes nothing; zeroing it changes the logits
        out = spec.spliced_part(cached)
        same = spec.run_with_replacement(tokens, spec.with_trained(out, spec.trained(out)))
        zero = spec.with_trained(out, torch.zeros_like(spec.trained(out)))
        ablated = spec.run_with_replacement(tokens, zero)
    torch.testing.assert_close(same, logits, atol=1e-5, rtol=1e-5)
    assert (ablated - logits).abs().max() > 0.1
    with pytest.raises(ValueError, match="hook_name_out='blocks.0.hook_mlp_out' is hook_name"):
        ActivationSpec(model, OUT_HOOK, hook_name_out=OUT_HOOK)


def _cfg(target: str, **sae) -> object:
    return OmegaConf.create({"seed": 0, "hook_name_out": None, "sae": {"_target_": target, **sae}})


def test_build_sae_fills_d_out_and_refuses_a_missing_or_stray_output_hook() -> None:
    cfg = _cfg("sae_lightning.saes.transcoder.transcoder", d_sae=32, d_out=None, skip=True)
    tc = build_sae(cfg, 8, IN_HOOK, d_out=6)
    assert isinstance(tc, SkipTranscoderSAE) and (tc.d_in, tc.d_out) == (8, 6)
    with pytest.raises(ValueError, match="reconstructs another hook: set hook_name_out"):
        build_sae(cfg, 8, IN_HOOK, d_out=None)
    relu = _cfg("sae_lightning.saes.relu.ReLUSAE", d_sae=32)
    relu.hook_name_out = OUT_HOOK
    with pytest.raises(ValueError, match="sae=ReLUSAE reconstructs its own input"):
        build_sae(relu, 8, IN_HOOK, d_out=6)


@pytest.mark.slow
def test_debug_run_of_experiment_transcoder_through_analyze(tmp_path: Path) -> None:
    run = tmp_path / "run"
    train = [sys.executable, "train.py", "experiment=transcoder", "sae.skip=true", "debug=fast",
             f"paths.output_dir={run}"]  # fmt: skip
    subprocess.run(train, cwd=REPO, check=True, capture_output=True, timeout=900)
    cfg = json.loads((run / "sae" / "cfg.json").read_text())
    assert cfg["architecture"] == "skip_transcoder" and cfg["hook_name_out"] == OUT_HOOK
    metrics = json.loads((run / "metrics.json").read_text())["metrics"]
    assert -5 < metrics["val/loss_recovered"] < 1.0  # spliced at hook_mlp_out and measured
    assert metrics["val/ce_loss_zero_ablation"] > metrics["val/ce_loss_clean"]
    analyze = [sys.executable, "analyze.py", f"sae_path={run}", "tokens=2000", "dashboards=true",
               "prompt='import os'", f"report_dir={tmp_path / 'an'}"]  # fmt: skip
    subprocess.run(analyze, cwd=REPO, check=True, capture_output=True, timeout=900)
    report = json.loads((tmp_path / "an" / "report" / "criteria.json").read_text())
    assert report["metadata"]["hook_name_out"] == OUT_HOOK
    first = next(iter(report["features"].values()))
    assert len(first["downstream"]["top_tokens"]) == 10  # logit weights from hook_mlp_out
    assert (tmp_path / "an" / "report" / "prompts.html").is_file()


@pytest.mark.slow
def test_sae_transcoder_with_the_hooks_named_on_the_command_line(tmp_path: Path) -> None:
    """The README's third form: sae=transcoder with both hooks given (no experiment)."""
    run = tmp_path / "run"
    train = [sys.executable, "train.py", "sae=transcoder", f"hook_name={IN_HOOK}",
             f"hook_name_out={OUT_HOOK}", "debug=fast", f"paths.output_dir={run}"]  # fmt: skip
    subprocess.run(train, cwd=REPO, check=True, capture_output=True, timeout=900)
    back, cfg = load_saelens(run / "sae")
    assert type(back) is TranscoderSAE and cfg["hook_name_out"] == OUT_HOOK
    metrics = json.loads((run / "metrics.json").read_text())["metrics"]
    assert metrics["val/ce_loss_zero_ablation"] > metrics["val/ce_loss_clean"]
    # without hook_name_out the run stops before training, naming what to set
    bad = subprocess.run(train[:4] + ["debug=fast", f"paths.output_dir={tmp_path / 'bad'}"],
                         cwd=REPO, capture_output=True, text=True, timeout=900)  # fmt: skip
    assert bad.returncode != 0
    assert "reconstructs another hook: set hook_name_out" in bad.stderr + bad.stdout


def test_the_resampler_refuses_a_transcoder() -> None:
    from types import SimpleNamespace

    from sae_lightning.resampling import DeadFeatureResampler

    module = SimpleNamespace(sae=TranscoderSAE(D_IN, D_SAE, D_OUT), device="cpu")
    with pytest.raises(ValueError, match="callbacks=resample does not support sae=transcoder"):
        DeadFeatureResampler([10]).setup(None, module, "fit")
