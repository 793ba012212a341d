"""Matryoshka BatchTopK: nested prefixes, the summed prefix loss (sparse == dense in value and
gradient), the JumpReLU export with its prefix widths, and a debug=fast run through analysis."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch
from hydra import compose, initialize_config_dir
from test_analysis_core import ROOT, analysis_cfg, criteria_dir, tiny_corpus  # noqa: F401

from sae_lightning.formats import CFG_FILE, load_saelens, save_saelens
from sae_lightning.losses import MatryoshkaLoss, TopKLoss, mse
from sae_lightning.saes import BatchTopKSAE, JumpReLUSAE, MatryoshkaSAE, build_sae
from sae_lightning.saes.matryoshka import default_group_sizes

META = {"model_name": "toy-1l", "hook_name": "blocks.0.mlp.hook_post", "context_size": 32,
        "prepend_bos": True}  # fmt: skip
D_IN, D_SAE, GROUPS = 16, 96, [8, 24, 64]


def trained_like(sparse_decoder: bool = True, apply_b_dec: bool = True) -> MatryoshkaSAE:
    torch.manual_seed(0)
    sae = MatryoshkaSAE(D_IN, D_SAE, k=6, group_sizes=GROUPS, sparse_decoder=sparse_decoder,
                        apply_b_dec_to_input=apply_b_dec)  # fmt: skip
    with torch.no_grad():
        sae.b_enc.normal_(0, 0.1)
        sae.b_dec.normal_(0, 0.5)
        sae.W_dec.mul_(torch.rand(D_SAE, 1) + 0.5)
    return sae


def test_group_sizes_must_sum_to_d_sae() -> None:
    with pytest.raises(ValueError, match=r"group_sizes \[8, 24, 32\] sum to 64, .*d_sae=96"):
        MatryoshkaSAE(D_IN, D_SAE, k=4, group_sizes=[8, 24, 32])
    for bad in ([], [8, 0, 88], [8.0, 88], "96", [True, 95]):
        with pytest.raises(ValueError, match=r"group_sizes must be a (non-empty )?list"):
            MatryoshkaSAE(D_IN, D_SAE, k=4, group_sizes=bad)  # type: ignore[arg-type]
    assert MatryoshkaSAE(D_IN, D_SAE, k=4, group_sizes=GROUPS).prefix_widths == (8, 32, 96)
    assert default_group_sizes(4096) == [256, 256, 512, 1024, 2048]
    assert default_group_sizes(3) == [1, 2]  # 3 >> 2 == 3 >> 3 == 0 -> width 1 once
    sae = MatryoshkaSAE(D_IN, D_SAE, k=4)  # null in the YAML
    assert sae.prefix_widths == (6, 12, 24, 48, 96)
    assert sae.config()["group_sizes"] == [6, 6, 12, 24, 48]


def test_loss_is_the_sum_of_every_prefix_mse() -> None:
    sae = trained_like().train()
    x = torch.randn(2, 20, D_IN) * 2
    out = sae(x)
    f = out.feature_acts.reshape(-1, D_SAE)
    x2 = x.reshape(-1, D_IN)
    by_hand = [((f[:, :w] @ sae.W_dec[:w] + sae.b_dec - x2) ** 2).sum(-1).mean()
               for w in (8, 32, 96)]  # fmt: skip
    lo = MatryoshkaLoss(auxk_coeff=0.0)(x, out, sae, 0)
    torch.testing.assert_close(lo.loss, torch.stack(by_hand).sum())
    torch.testing.assert_close(lo.mse, by_hand[-1])  # logged mse: the whole dictionary's
    terms = [float(t.detach()) for t in by_hand]
    assert min(terms) > 0 and len(set(terms)) == 3  # the inner terms are not the outer one
    # the narrowest prefix's term moves only its own decoder rows
    mse(x2, sae.inner_reconstructions(out)[0]).backward()
    grad = sae.W_dec.grad
    assert grad is not None and grad[:8].abs().amax() > 0 and torch.all(grad[8:] == 0)


@pytest.mark.parametrize("apply_b_dec", [True, False])
def test_sparse_path_equals_dense_values_and_gradients(apply_b_dec: bool) -> None:
    sparse = trained_like(True, apply_b_dec)
    dense = trained_like(False, apply_b_dec)
    dense.load_state_dict(sparse.state_dict())
    loss_fn = MatryoshkaLoss(auxk_coeff=0.5, k_aux=4, dead_tokens=10)
    x = torch.randn(2, 20, D_IN) * 2
    results = []
    for sae in (sparse, dense):
        sae.train().tokens_since_fired[40:70] = 100  # dead: AuxK has work to do
        out = sae(x)
        lo = loss_fn(x, out, sae, 0)
        lo.loss.backward()
        sae.remove_gradient_parallel_to_decoder_directions()
        results.append((out, lo))
    (out_s, lo_s), (out_d, lo_d) = results
    assert out_s.codes is not None and out_d.codes is None
    assert (out_s.feature_acts[..., :8] > 0).any(-1).float().mean() > 0.3  # prefix 0 is used
    torch.testing.assert_close(out_s.feature_acts, out_d.feature_acts)
    for a, b in zip(sparse.inner_reconstructions(out_s), dense.inner_reconstructions(out_d),
                    strict=True):  # fmt: skip
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)
    for term in ("loss", "mse", "aux"):
        torch.testing.assert_close(getattr(lo_s, term), getattr(lo_d, term), rtol=1e-5, atol=1e-5)
    assert lo_s.aux is not None and lo_s.aux > 0
    assert torch.equal(sparse.threshold, dense.threshold) and sparse.threshold > 0
    reference = dict(dense.named_parameters())
    for name, param in sparse.named_parameters():
        grad = reference[name].grad
        assert param.grad is not None and grad is not None and grad.abs().max() > 0, name
        torch.testing.assert_close(param.grad, grad, rtol=1e-5, atol=1e-5)


def test_a_batch_without_inner_codes_gives_b_dec_prefixes() -> None:
    sae = trained_like()
    with torch.no_grad():
        sae.W_enc[:, :32] = 0.0
        sae.b_enc[:32] = -1.0  # the two inner prefixes never fire
    out = sae.train()(torch.randn(10, D_IN))
    assert out.codes is not None and bool((out.codes.cols >= 32).all())
    inner = sae.inner_reconstructions(out)
    assert len(inner) == 2 and all(torch.equal(p, sae.b_dec.expand(10, D_IN)) for p in inner)
    MatryoshkaLoss()(torch.randn(10, D_IN), out, sae, 0).loss.backward()  # no empty-bag error


def test_losses_refuse_the_wrong_sae() -> None:
    x = torch.randn(8, D_IN)
    sae = trained_like()
    with pytest.raises(
        TypeError, match=r"ignores a Matryoshka SAE's prefixes; use loss=matryoshka"
    ):
        TopKLoss()(x, sae(x), sae, 0)
    other = BatchTopKSAE(D_IN, D_SAE, k=4)
    with pytest.raises(TypeError, match=r"needs a Matryoshka SAE, got BatchTopKSAE"):
        MatryoshkaLoss()(x, other(x), other, 0)


def test_decode_prefix_and_its_range() -> None:
    sae = trained_like().eval()
    f = sae.encode(torch.randn(3, 5, D_IN))
    torch.testing.assert_close(sae.decode_prefix(f, D_SAE), sae.decode(f))
    by_hand = f[..., :8] @ sae.W_dec[:8] + sae.b_dec
    torch.testing.assert_close(sae.decode_prefix(f, 8), by_hand)
    with pytest.raises(ValueError, match=r"width must be an integer in \[1, d_sae=96\].*got 97"):
        sae.decode_prefix(f, 97)


def test_export_is_jumprelu_with_the_prefix_widths(tmp_path: Path) -> None:
    sae = trained_like()
    sae.train()(torch.randn(64, D_IN) * 2)  # sets the running threshold
    sae.eval()
    folder = save_saelens(sae, tmp_path, META)
    raw = json.loads((folder / CFG_FILE).read_text())
    assert raw["architecture"] == "jumprelu" and "group_sizes" not in raw
    assert raw["metadata"]["matryoshka_widths"] == [8, 32, 96]
    loaded, cfg = load_saelens(folder)
    assert isinstance(loaded, JumpReLUSAE) and cfg["metadata"]["matryoshka_widths"] == [8, 32, 96]
    norms = sae.W_dec.detach().norm(dim=-1)  # folded into the per-latent thresholds
    torch.testing.assert_close(loaded.threshold.detach(), sae.threshold * norms)
    x = torch.randn(200, D_IN) * 2
    with torch.no_grad():
        codes, got = sae.encode(x) * norms, loaded.encode(x)  # unit-norm rows: codes * |W_dec_i|
        flipped = (got > 0) != (codes > 0)  # folding decoder norms rounds at the threshold
        assert (codes > 0).sum() > 100 and flipped.float().mean() < 1e-3
        torch.testing.assert_close(got[~flipped], codes[~flipped], rtol=1e-5, atol=1e-5)
        if not flipped.any():
            torch.testing.assert_close(loaded(x).x_hat, sae(x).x_hat, rtol=1e-5, atol=1e-5)


def test_checkpoint_config_rebuilds_the_sae() -> None:
    sae = trained_like()
    config: dict[str, Any] = dict(sae.config())
    rebuilt = build_sae(config.pop("architecture"), **config)
    assert isinstance(rebuilt, MatryoshkaSAE) and rebuilt.group_sizes == GROUPS
    assert config == {"d_in": D_IN, "d_sae": D_SAE, "apply_b_dec_to_input": True, "k": 6,
                      "threshold_momentum": 0.01, "group_sizes": GROUPS}  # fmt: skip


def test_frontier_points_compose_to_a_matryoshka_sae_and_loss() -> None:
    from hydra.utils import instantiate

    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        cfgs = {k: compose("train", overrides=[f"experiment=frontier/matryoshka_k{k}",
                                               "sae.d_sae=2048"]) for k in (16, 64)}  # fmt: skip
        bad = compose("train", overrides=["sae=matryoshka", "sae.group_sizes=[8,8]"])
    for k, cfg in cfgs.items():
        sae = instantiate(cfg.sae, d_in=D_IN)
        assert isinstance(sae, MatryoshkaSAE) and sae.k == k
        assert sae.prefix_widths == (128, 256, 512, 1024, 2048)  # null: the default split
        assert isinstance(instantiate(cfg.loss), MatryoshkaLoss)
    with pytest.raises(Exception, match=r"group_sizes \[8, 8\] sum to 16, .*d_sae=4096"):
        instantiate(bad.sae, d_in=D_IN)


@pytest.mark.slow
def test_debug_fast_run_is_exported_and_analysed(tmp_path, tiny_corpus, criteria_dir):  # noqa: F811
    """The frontier point (sae=matryoshka, which brings loss=matryoshka): the default groups
    fit debug=fast's d_sae=256; the run exports a JumpReLU SAE and analyze reads the run
    folder and the checkpoint."""
    from sae_lightning.analysis.loading import load_sae
    from sae_lightning.analysis.run import analyze
    from sae_lightning.training import train

    run = tmp_path / "run"
    overrides = ["debug=fast", "experiment=frontier/matryoshka_k16", f"paths.output_dir={run}",
                 f"data.source.corpus={tiny_corpus}", "data.source.val_fraction=0.3"]  # fmt: skip
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        cfg = compose("train", overrides=overrides)
    assert cfg.loss._target_ == "sae_lightning.losses.MatryoshkaLoss"
    metrics = train(cfg)
    assert 0 < metrics["val/l0"] < 64 and 0 < metrics["val/loss_recovered"] <= 1.1
    exported, cfg_json = load_saelens(run / "sae")
    assert isinstance(exported, JumpReLUSAE) and cfg_json["architecture"] == "jumprelu"
    assert cfg_json["metadata"]["matryoshka_widths"] == [16, 32, 64, 128, 256]
    trained, _ = load_sae(run / "checkpoints" / "last.ckpt")
    assert isinstance(trained, MatryoshkaSAE) and trained.group_sizes == [16, 16, 32, 64, 128]
    assert trained.threshold > 0  # the running threshold was trained and saved
    x = torch.randn(64, 1024, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():  # the export folds decoder norms: equal up to rounding
        torch.testing.assert_close(exported.encode(x), trained.encode(x), rtol=1e-5, atol=1e-6)
    report = analyze(analysis_cfg(tmp_path / "out", run, tiny_corpus, criteria_dir,
                                  "features=top:8", f"report_dir={run}"))  # fmt: skip
    assert report.metadata["source"] == str(run / "sae") and len(report.feature_list) == 8
    assert (run / "report" / "criteria.json").is_file()
