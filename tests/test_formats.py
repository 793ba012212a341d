"""SAELens export/import: round trips, decoder-norm folding, clear errors."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from sae_lightning.formats import (
    CFG_FILE,
    SAELENS_VERSION,
    WEIGHTS_FILE,
    load_saelens,
    save_saelens,
)
from sae_lightning.saes import ReLUSAE

META = {
    "model_name": "toy-1l",
    "hook_name": "blocks.0.mlp.hook_post",
    "context_size": 32,
    "prepend_bos": True,
}


def make_sae(seed: int = 0) -> ReLUSAE:
    torch.manual_seed(seed)
    sae = ReLUSAE(d_in=5, d_sae=12)
    with torch.no_grad():
        sae.W_enc.add_(0.3 * torch.randn_like(sae.W_enc))
        sae.b_enc.normal_(0, 0.2)
        sae.b_dec.normal_(0, 0.5)
    return sae


def test_round_trip_unit_norm_is_exact(tmp_path: Path) -> None:
    sae = make_sae()
    sae.set_decoder_norm_to_unit_norm()
    folder = save_saelens(sae, tmp_path / "sae", META)
    loaded, cfg = load_saelens(folder)
    assert isinstance(loaded, ReLUSAE) and not loaded.training
    for name, value in sae.state_dict().items():
        assert torch.equal(loaded.state_dict()[name], value), name
    x = torch.randn(16, 5)
    assert torch.equal(loaded.encode(x), sae.encode(x))
    assert cfg["d_in"] == 5 and cfg["d_sae"] == 12


def test_round_trip_folds_decoder_norms(tmp_path: Path) -> None:
    sae = make_sae()
    with torch.no_grad():
        sae.W_dec.mul_(torch.linspace(0.2, 4.0, 12)[:, None])
    source = {k: v.clone() for k, v in sae.state_dict().items()}
    x = torch.randn(16, 5)
    before = sae(x)
    loaded, _ = load_saelens(save_saelens(sae, tmp_path, META))
    torch.testing.assert_close(loaded.W_dec.norm(dim=-1), torch.ones(12))
    after = loaded(x)
    torch.testing.assert_close(after.x_hat, before.x_hat, atol=1e-6, rtol=1e-6)
    scale = torch.linspace(0.2, 4.0, 12)  # the features absorbed the norms
    torch.testing.assert_close(after.feature_acts, before.feature_acts * scale)
    for name, value in sae.state_dict().items():  # export does not modify the source
        assert torch.equal(value, source[name]), name


def test_cfg_and_weight_file_layout(tmp_path: Path) -> None:
    save_saelens(make_sae(), tmp_path, {**META, "run": "abc"})
    cfg = json.loads((tmp_path / CFG_FILE).read_text())
    metadata = cfg.pop("metadata")
    assert cfg == {  # every field of SAELens' StandardSAEConfig, nothing else
        "architecture": "standard",
        "d_in": 5,
        "d_sae": 12,
        "dtype": "float32",
        "device": "cpu",
        "apply_b_dec_to_input": True,
        "normalize_activations": "none",
        "reshape_activations": "none",
    }
    assert metadata == {
        **META,
        "run": "abc",
        "hook_head_index": None,
        "sae_lens_training_version": None,
        "sae_lens_version": SAELENS_VERSION,
    }
    weights = load_file(str(tmp_path / WEIGHTS_FILE))
    shapes = {k: tuple(v.shape) for k, v in weights.items()}
    assert shapes == {"W_enc": (5, 12), "b_enc": (12,), "W_dec": (12, 5), "b_dec": (5,)}


def test_missing_metadata_key(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"missing \['hook_name'\]"):
        save_saelens(make_sae(), tmp_path, {k: v for k, v in META.items() if k != "hook_name"})


@pytest.mark.parametrize("missing", [CFG_FILE, WEIGHTS_FILE])
def test_missing_file(tmp_path: Path, missing: str) -> None:
    save_saelens(make_sae(), tmp_path, META)
    (tmp_path / missing).unlink()
    with pytest.raises(
        FileNotFoundError, match=rf"{missing} not found in SAE folder .*{tmp_path.name}"
    ):
        load_saelens(tmp_path)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_saelens(tmp_path / "nowhere")


def test_bad_shape(tmp_path: Path) -> None:
    save_saelens(make_sae(), tmp_path, META)
    weights = load_file(str(tmp_path / WEIGHTS_FILE))
    weights["W_dec"] = torch.zeros(12, 6)
    save_file(weights, str(tmp_path / WEIGHTS_FILE))
    with pytest.raises(ValueError, match=r"W_dec .*shape \(12, 6\).*d_in=5.*expects \(12, 5\)"):
        load_saelens(tmp_path)


def test_missing_tensor(tmp_path: Path) -> None:
    save_saelens(make_sae(), tmp_path, META)
    weights = load_file(str(tmp_path / WEIGHTS_FILE))
    del weights["b_enc"]
    save_file(weights, str(tmp_path / WEIGHTS_FILE))
    with pytest.raises(ValueError, match=r"missing tensors \['b_enc'\]"):
        load_saelens(tmp_path)


@pytest.mark.parametrize(
    ("key", "value", "message"),
    [
        ("architecture", "mystery", r"unknown SAE architecture 'mystery'; valid: \['batchtopk'"),
        ("d_in", 0, "d_in must be a positive integer, got 0"),
        ("normalize_activations", "layer_norm", r"'layer_norm' is not supported; valid: 'none'"),
        ("dtype", "int8", r"unknown dtype 'int8'; valid: \["),
    ],
)
def test_bad_cfg(tmp_path: Path, key: str, value: object, message: str) -> None:
    save_saelens(make_sae(), tmp_path, META)
    cfg = json.loads((tmp_path / CFG_FILE).read_text())
    cfg[key] = value
    (tmp_path / CFG_FILE).write_text(json.dumps(cfg))
    with pytest.raises(ValueError, match=message):
        load_saelens(tmp_path)


def test_corrupt_files(tmp_path: Path) -> None:
    save_saelens(make_sae(), tmp_path, META)
    (tmp_path / WEIGHTS_FILE).write_bytes(b"not a safetensors file")
    with pytest.raises(ValueError, match="not a readable safetensors file"):
        load_saelens(tmp_path)
    (tmp_path / CFG_FILE).write_text("{oops")
    with pytest.raises(ValueError, match="not valid JSON"):
        load_saelens(tmp_path)


def test_load_casts_to_cfg_dtype_and_keeps_rng(tmp_path: Path) -> None:
    save_saelens(make_sae(), tmp_path, META)
    cfg = json.loads((tmp_path / CFG_FILE).read_text())
    cfg["dtype"] = "torch.float64"  # SAELens sometimes writes the torch repr
    (tmp_path / CFG_FILE).write_text(json.dumps(cfg))
    state = torch.get_rng_state()
    loaded, _ = load_saelens(tmp_path)
    assert torch.equal(torch.get_rng_state(), state)
    assert loaded.W_enc.dtype == torch.float64 and loaded.W_enc.requires_grad
