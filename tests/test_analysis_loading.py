"""Loading an SAE for analysis: SAELens, Neel-format, checkpoints, run folders; refusals."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch
from test_analysis_core import HOOK, META, random_sae

from sae_lightning.analysis.loading import check_compatible, latest_run, load_sae
from sae_lightning.formats import save_saelens
from sae_lightning.saes import ReLUSAE


class _Payload:
    def __reduce__(self):
        return (Path.touch, (Path(os.environ["SAE_LIGHTNING_PWNED"]),))


def test_saelens_and_neel_formats_encode_like_the_original(tmp_path):
    sae = random_sae(32, 128)
    save_saelens(sae, tmp_path / "saelens", META)
    state = {k: v.detach().clone() for k, v in sae.state_dict().items()}
    torch.save(state, tmp_path / "25.pt")
    neel_cfg = {"d_mlp": 32, "dict_mult": 4, "l1_coeff": 3e-4, "seed": 49, "enc_dtype": "fp32"}
    neel_cfg |= {"model_name": "gelu-1l", "site": "post", "layer": 0, "seq_len": 128}
    (tmp_path / "25_cfg.json").write_text(json.dumps(neel_cfg))
    x = torch.randn(16, 32, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        expected = sae.encode(x)
        for path in (tmp_path / "saelens", tmp_path / "25.pt"):
            loaded, meta = load_sae(path)
            assert torch.equal(loaded.encode(x), expected), path
            assert meta["hook_name"] == HOOK
        neel, meta = load_sae(tmp_path / "25.pt")
        # his AutoEncoder: relu((x - b_dec) @ W_enc + b_enc), then f @ W_dec + b_dec
        theirs = torch.relu((x - state["b_dec"]) @ state["W_enc"] + state["b_enc"])
        torch.testing.assert_close(neel.encode(x), theirs, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(neel(x).x_hat, theirs @ state["W_dec"] + state["b_dec"])
    assert meta["model_name"] == "gelu-1l" and meta["context_size"] == 128
    assert (neel.d_in, neel.d_sae) == (32, 128)


def test_neel_shapes_must_match_its_cfg(tmp_path):
    sae = random_sae(32, 128)
    torch.save(dict(sae.state_dict()), tmp_path / "v.pt")
    (tmp_path / "v_cfg.json").write_text(json.dumps({"d_mlp": 32, "dict_mult": 8}))
    with pytest.raises(ValueError, match=r"W_enc has shape \(32, 128\).*expects \(32, 256\)"):
        load_sae(tmp_path / "v.pt")


def test_ckpt_and_run_folder_load(tmp_path):
    sae = random_sae(1024, 64)
    run = tmp_path / "outputs" / "2026-01-01" / "10-00-00"
    save_saelens(sae, run / "sae", {**META, "context_size": 64})
    ckpt = run / "checkpoints" / "last.ckpt"
    ckpt.parent.mkdir()
    state = {f"sae.{k}": v for k, v in sae.state_dict().items()} | {"val_mse.total": torch.ones(1)}
    torch.save({"state_dict": state, "sae_config": sae.config(), "epoch": 0}, ckpt)
    x = torch.randn(8, 1024, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        for path in (ckpt, run):
            loaded, meta = load_sae(path)
            assert torch.equal(loaded.encode(x), sae.encode(x)), path
            assert meta["hook_name"] == HOOK and meta["context_size"] == 64
    assert latest_run(tmp_path / "outputs") == run
    with pytest.raises(FileNotFoundError, match="no trained SAE under .*python train.py"):
        latest_run(tmp_path / "nothing")
    with pytest.raises(ValueError, match="cannot read an SAE from .*SAELens folder"):
        load_sae(tmp_path)


@pytest.mark.parametrize("suffix", [".ckpt", ".pt"])
def test_pickle_payload_is_refused_without_running(tmp_path, monkeypatch, suffix):
    marker = tmp_path / "pwned"
    monkeypatch.setenv("SAE_LIGHTNING_PWNED", str(marker))
    evil = tmp_path / f"evil{suffix}"
    torch.save({"state_dict": {}, "sae_config": {}, "W_enc": _Payload()}, evil)
    (tmp_path / "evil_cfg.json").write_text(json.dumps({"d_mlp": 4, "dict_mult": 2}))
    with pytest.raises(ValueError, match="is not a safe checkpoint: .*not plain tensors") as err:
        load_sae(evil)
    assert str(evil) in str(err.value) and "weights_only" not in str(err.value)
    assert not marker.exists()


def test_width_mismatch_and_bad_hook_are_refused(embedded_model):
    meta = {"source": "narrow.ckpt", "model_name": "toy-1l", "hook_name": HOOK}
    with pytest.raises(ValueError, match=f"d_in=512.*{HOOK}.*width 1024"):
        check_compatible(ReLUSAE(512, 64), meta, embedded_model, HOOK)
    with pytest.raises(ValueError, match="'blocks.0.mlp.hook_pots' is not a hook.*hook_post"):
        check_compatible(ReLUSAE(1024, 64), meta, embedded_model, "blocks.0.mlp.hook_pots")
    check_compatible(ReLUSAE(1024, 64), meta, embedded_model, HOOK)  # fits: no error
