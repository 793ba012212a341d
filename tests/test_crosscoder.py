"""Crosscoders: geometry, loss, sparse == dense, export round trip, planted shared features,
the relative-norm histogram."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from sae_lightning.data.synthetic_sources import SharedSourcesDictionary, sharing_recovery
from sae_lightning.formats import CFG_FILE, load_saelens, save_saelens
from sae_lightning.losses import CrosscoderLoss, mse
from sae_lightning.report.crosscoder import crosscoder_section, relative_norm_summary
from sae_lightning.saes.crosscoder import CrosscoderSAE, classify_relative_norms
from sae_lightning.saes.relu import ReLUSAE

ROOT = Path(__file__).resolve().parents[1]
META = {"model_name": "toy-1l", "hook_name": "blocks.0.mlp.hook_post", "context_size": 32,
        "prepend_bos": True}  # fmt: skip


def make(d_source: int = 4, d_sae: int = 12, seed: int = 0, **kwargs) -> CrosscoderSAE:
    torch.manual_seed(seed)
    sae = CrosscoderSAE(2 * d_source, d_sae, **kwargs)
    with torch.no_grad():
        sae.b_enc.normal_(0, 0.1)
        sae.b_dec.normal_(0, 0.5)
    return sae


def with_blocks(sae: CrosscoderSAE, scales: list[tuple[float, float]]) -> CrosscoderSAE:
    """Rescale latent i's A and B decoder blocks to norms ``scales[i]``."""
    with torch.no_grad():
        blocks = sae.source_blocks()
        blocks /= blocks.norm(dim=-1, keepdim=True)
        blocks *= torch.tensor(scales)[..., None]
    return sae


def test_n_sources_must_divide_d_in() -> None:
    with pytest.raises(ValueError, match=r"d_in=9 is not divisible by n_sources=2"):
        CrosscoderSAE(9, 16)
    with pytest.raises(ValueError, match=r"d_in=8 is not divisible by n_sources=3"):
        CrosscoderSAE(8, 16, n_sources=3)
    for bad in (1, True, 2.0):
        with pytest.raises(ValueError, match=rf"n_sources must be an integer >= 2, got {bad!r}"):
            CrosscoderSAE(8, 16, n_sources=bad)  # type: ignore[arg-type]
    sae = CrosscoderSAE(12, 16, n_sources=3)
    assert (sae.d_source, tuple(sae.source_decoder_norms().shape)) == (4, (16, 3))


def test_relative_decoder_norm_and_classes() -> None:
    scales = [(1.0, 0.0), (0.0, 2.0), (1.0, 1.0), (1.0, 3.0), (0.0, 0.0), (3.0, 1.0)]
    sae = with_blocks(make(d_sae=6), scales)
    torch.testing.assert_close(
        sae.source_decoder_norms(), torch.tensor(scales), rtol=1e-6, atol=1e-6
    )
    r = sae.relative_decoder_norm()
    torch.testing.assert_close(r[[0, 1, 2, 3, 5]], torch.tensor([0.0, 1.0, 0.5, 0.75, 0.25]))
    assert r[4].isnan()  # a zero row has no ratio
    assert classify_relative_norms(r).tolist() == [0, 2, 1, 2, -1, 0]
    torch.testing.assert_close(sae.relative_decoder_norm(1, 0)[:4], 1 - r[:4])
    with pytest.raises(ValueError, match=r"source b=2 is not in \[0, 2\)"):
        sae.relative_decoder_norm(0, 2)
    with pytest.raises(ValueError, match=r"band must satisfy"):
        classify_relative_norms(r, (0.7, 0.3))


def test_unit_norm_is_the_concatenated_row_not_each_block() -> None:
    sae = with_blocks(make(d_sae=4), [(1.0, 0.0), (0.2, 2.0), (3.0, 3.0), (0.5, 1.5)])
    before = sae.relative_decoder_norm()
    sae.set_decoder_norm_to_unit_norm()
    torch.testing.assert_close(sae.W_dec.norm(dim=-1), torch.ones(4))
    torch.testing.assert_close(sae.relative_decoder_norm(), before)  # the signal survives
    assert sae.source_decoder_norms()[0].tolist() == pytest.approx([1.0, 0.0], abs=1e-6)


@pytest.mark.parametrize("threshold", [0.0, 1.0])  # 0: dense path, 1: sparse path
def test_forward_is_decode_of_encode(threshold: float) -> None:
    sae = make(sparse_threshold=threshold)
    x = torch.randn(3, 5, 8)
    out = sae(x)
    assert (out.codes is not None) == (threshold == 1.0)
    tol = {"rtol": 0, "atol": 0} if threshold == 0 else {"rtol": 1e-6, "atol": 1e-6}
    torch.testing.assert_close(out.x_hat, sae.decode(sae.encode(x)), **tol)
    torch.testing.assert_close(out.feature_acts, sae.encode(x), **tol)
    assert (out.feature_acts > 0).any() and (out.feature_acts == 0).any()


@pytest.mark.parametrize("train", [True, False])
def test_batchtopk_forward_is_decode_of_encode(train: bool) -> None:
    sae = make(d_sae=16, k=3).train()
    x = torch.randn(4, 8, 8)
    sae(x)  # one training batch sets the threshold
    sae.train(train)
    out = sae(x)
    torch.testing.assert_close(out.x_hat, sae.decode(sae.encode(x)), rtol=1e-6, atol=1e-6)
    active = (out.feature_acts > 0).sum().item() / 32  # per token
    assert active == 3 if train else 1 <= active <= 6
    assert sae.config() == {"architecture": "crosscoder", "d_in": 8, "d_sae": 16,
                            "apply_b_dec_to_input": True, "n_sources": 2, "k": 3,
                            "threshold_momentum": 0.01}  # fmt: skip
    with pytest.raises(
        ValueError, match=r"k must be null \(ReLU\) or an integer in \[1, d_sae=16\]"
    ):
        CrosscoderSAE(8, 16, k=17)


def test_batchtopk_selects_by_decoder_norm_weighted_activation() -> None:
    """Two latents with the same pre-activation: the one with more decoder norm summed over
    sources is kept (k=1, batch of 1), and rescaling latents against their rows changes
    nothing."""
    sae = with_blocks(make(d_sae=2, k=1), [(1.0, 0.0), (0.6, 0.6)])  # sums 1.0 and 1.2
    with torch.no_grad():
        sae.b_dec.zero_()
        sae.W_enc.zero_()
        sae.b_enc.fill_(1.0)
    x = torch.randn(1, 8)
    assert sae(x).feature_acts.tolist() == [[0.0, 1.0]]
    with torch.no_grad():
        sae.b_enc[0] = 1.5  # 1.5 * 1.0 > 1.0 * 1.2
    assert sae(x).feature_acts.tolist() == [[1.5, 0.0]]


def test_loss_is_summed_mse_plus_sum_of_block_norms_weighted_l1() -> None:
    sae = with_blocks(make(d_sae=5), [(1.0, 0.0), (0.5, 0.5), (2.0, 1.0), (0.1, 3.0), (1, 1)])
    x = torch.randn(16, 8)
    out = sae(x)
    f, x_hat = out.feature_acts, out.x_hat
    per_source = sum(((x_hat - x)[:, s * 4 : (s + 1) * 4] ** 2).sum(-1).mean() for s in (0, 1))
    weights = torch.tensor([1.0, 1.0, 3.0, 3.1, 2.0])  # ||d_A|| + ||d_B|| per latent
    l1_by_hand = (f.abs() * weights).sum(-1).mean()
    lo = CrosscoderLoss(l1_coeff=2.0, l1_warmup_steps=10)(x, out, sae, step=5)
    torch.testing.assert_close(lo.mse, per_source)
    torch.testing.assert_close(lo.l1, l1_by_hand)
    torch.testing.assert_close(lo.loss, per_source + 1.0 * l1_by_hand)  # half warmed up
    assert mse(x, x_hat) == lo.mse
    with pytest.raises(TypeError, match=r"CrosscoderLoss needs a CrosscoderSAE, got ReLUSAE"):
        CrosscoderLoss()(x, ReLUSAE(8, 5)(x), ReLUSAE(8, 5), 0)
    with pytest.raises(ValueError, match=r"l1_coeff must be >= 0, got -1"):
        CrosscoderLoss(l1_coeff=-1)


def test_sparse_path_equals_dense_values_and_gradients() -> None:
    dense = with_blocks(make(d_sae=32, sparse_threshold=0.0), [(1.0, 0.3)] * 32)
    sparse = make(d_sae=32, sparse_threshold=1.0)
    sparse.load_state_dict(dense.state_dict())
    x = torch.randn(64, 8)
    losses = []
    for sae in (dense, sparse):
        out = sae(x)
        lo = CrosscoderLoss(l1_coeff=0.7)(x, out, sae, step=0)
        lo.loss.backward()
        losses.append((out, lo))
    (out_d, lo_d), (out_s, lo_s) = losses
    assert out_d.codes is None and out_s.codes is not None
    torch.testing.assert_close(out_s.x_hat, out_d.x_hat, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(lo_s.l1, lo_d.l1, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(lo_s.loss, lo_d.loss, rtol=1e-6, atol=1e-6)
    pairs = zip(dense.named_parameters(), sparse.named_parameters(), strict=True)
    for (name, p_d), (_, p_s) in pairs:
        assert p_d.grad is not None and p_d.grad.abs().sum() > 0, name
        torch.testing.assert_close(p_s.grad, p_d.grad, rtol=1e-5, atol=1e-6, msg=name)


def test_batchtopk_values_and_gradients_equal_the_dense_formula() -> None:
    sae = with_blocks(make(d_sae=32, k=4), [(1.0, 0.3), (0.2, 0.9)] * 16)
    x = torch.randn(64, 8)
    out = sae(x)
    lo = CrosscoderLoss(l1_coeff=0.7)(x, out, sae, step=0)
    lo.loss.backward()
    sparse_grads = {n: p.grad.clone() for n, p in sae.named_parameters()}
    mask = out.feature_acts.detach() > 0  # the selection, reused for the dense reference
    assert int(mask.sum()) == 4 * 64
    sae.zero_grad()
    f = torch.relu((x - sae.b_dec) @ sae.W_enc + sae.b_enc) * mask  # [64, d_sae]
    x_hat = f @ sae.W_dec + sae.b_dec
    weights = sae.source_decoder_norms().sum(-1)
    dense_loss = (x_hat - x).pow(2).sum(-1).mean() + 0.7 * (f * weights).sum(-1).mean()
    dense_loss.backward()
    torch.testing.assert_close(out.x_hat, x_hat, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(lo.loss, dense_loss, rtol=1e-6, atol=1e-6)
    for name, p in sae.named_parameters():
        torch.testing.assert_close(sparse_grads[name], p.grad, rtol=1e-5, atol=1e-6, msg=name)


def test_batchtopk_export_round_trip_is_bit_exact(tmp_path: Path) -> None:
    sae = make(d_sae=16, k=3)
    x = torch.randn(64, 8)
    sae.train()(x)  # sets the threshold
    sae.eval()
    loaded, cfg = load_saelens(save_saelens(sae, tmp_path, META))
    assert (cfg["k"], loaded.k, cfg["threshold_momentum"]) == (3, 3, 0.01)
    for name, value in sae.state_dict().items():
        assert torch.equal(loaded.state_dict()[name], value), name
    assert "threshold" in sae.state_dict() and torch.equal(loaded(x).x_hat, sae(x).x_hat)
    scale = 3.0  # trained on 3 * x: the export reads raw x (the threshold is in x's units)
    scaled, _ = load_saelens(save_saelens(sae, tmp_path / "scaled", META, activation_scale=scale))
    with torch.no_grad():
        expected = sae(x * scale)
        got = scaled(x)
    assert torch.equal(got.feature_acts > 0, expected.feature_acts > 0)
    torch.testing.assert_close(got.x_hat * scale, expected.x_hat, rtol=1e-5, atol=1e-5)
    with torch.no_grad():  # rows of unequal norms fold into the encoder: same latents fire
        sae.W_dec.mul_(torch.linspace(0.5, 2.0, 16)[:, None])
        expected = sae(x)
    folded, _ = load_saelens(save_saelens(sae, tmp_path / "folded", META))
    torch.testing.assert_close(folded.W_dec.norm(dim=-1), torch.ones(16))
    assert torch.equal(folded(x).feature_acts > 0, expected.feature_acts > 0)
    torch.testing.assert_close(folded(x).x_hat, expected.x_hat, rtol=1e-5, atol=1e-5)


def test_export_round_trip_is_bit_exact(tmp_path: Path) -> None:
    from sae_lightning.analysis.loading import load_sae

    sae = with_blocks(make(d_sae=6), [(1.0, 0.0), (0.6, 0.8), (0.0, 1.0)] * 2).eval()
    sources = [{"model_name": "toy-1l", "hook_name": "blocks.0.mlp.hook_post"},
               {"model_name": "toy-1l-b", "hook_name": "blocks.0.mlp.hook_post"}]  # fmt: skip
    folder = save_saelens(sae, tmp_path / "sae", {**META, "sources": sources})
    raw = json.loads((folder / CFG_FILE).read_text())
    assert (raw["architecture"], raw["d_in"], raw["n_sources"]) == ("crosscoder", 8, 2)
    assert {k: raw["metadata"][k] for k in ("n_sources", "d_source", "sources")} == {
        "n_sources": 2, "d_source": 4, "sources": sources}  # fmt: skip
    loaded, cfg = load_saelens(folder)
    assert isinstance(loaded, CrosscoderSAE) and loaded.n_sources == 2
    for name, value in sae.state_dict().items():  # unit-norm rows: written as they are
        assert torch.equal(loaded.state_dict()[name], value), name
    x = torch.randn(32, 8)
    assert torch.equal(loaded(x).x_hat, sae(x).x_hat)
    assert torch.equal(loaded.relative_decoder_norm(), sae.relative_decoder_norm())
    again, meta = load_sae(tmp_path)  # the analysis' loader reads the run folder
    assert torch.equal(again.W_dec, sae.W_dec) and meta["sources"][1]["model_name"] == "toy-1l-b"
    with pytest.raises(ValueError, match=r"metadata sources must be a list of 2 objects"):
        save_saelens(sae, tmp_path / "bad", {**META, "sources": sources[:1]})


def test_export_folds_norms_but_keeps_relative_norms(tmp_path: Path) -> None:
    sae = with_blocks(make(d_sae=3), [(2.0, 0.5), (0.3, 0.3), (0.0, 4.0)]).eval()
    loaded, cfg = load_saelens(save_saelens(sae, tmp_path, META))
    torch.testing.assert_close(loaded.W_dec.norm(dim=-1), torch.ones(3))
    torch.testing.assert_close(loaded.relative_decoder_norm(), sae.relative_decoder_norm())
    x = torch.randn(16, 8)
    torch.testing.assert_close(loaded(x).x_hat, sae(x).x_hat, rtol=1e-5, atol=1e-5)
    one = {"model_name": "toy-1l", "hook_name": META["hook_name"]}
    assert cfg["metadata"]["sources"] == [one, one]  # the top-level names, once per source


def test_shared_sources_dictionary_layout() -> None:
    d = SharedSourcesDictionary(d_source=8, n_features=40, shared_fraction=0.5)
    assert tuple(d.directions.shape) == (40, 16) and d.d_in == 16
    norms = d.directions.view(40, 2, 8).norm(dim=-1)  # [features, sources]
    assert torch.equal(norms > 0, d.membership)
    torch.testing.assert_close(norms[d.membership], torch.ones(int(d.membership.sum())))
    assert torch.bincount(d.true_classes()).tolist() == [10, 20, 10]  # A only, shared, B only
    x = d.sample(64, torch.Generator().manual_seed(0))
    assert x.shape == (64, 16)
    with pytest.raises(ValueError, match=r"shared_fraction must be in \[0, 1\], got 1.5"):
        SharedSourcesDictionary(shared_fraction=1.5)
    with pytest.raises(ValueError, match=r"need n_sources=2, got 3"):
        SharedSourcesDictionary(d_source=4, n_sources=3, n_features=12).true_classes()


def test_sharing_recovery_scores_a_planted_decoder() -> None:
    d = SharedSourcesDictionary(d_source=8, n_features=16)
    sae = CrosscoderSAE(16, 16)
    with torch.no_grad():
        sae.W_dec.copy_(d.directions)  # the truth itself: everything recovered and right
    assert sharing_recovery(d, sae) == {
        "recovered": 1.0, "accuracy": 1.0, "recovered_and_correct": 1.0,
        "confusion": [[4, 0, 0], [0, 8, 0], [0, 0, 4]]}  # fmt: skip
    with torch.no_grad():  # shared latents lean to A: r = 0.6 / 1.6 = 0.375
        sae.source_blocks()[:8, 1] *= 0.6
    scores = sharing_recovery(d, sae, band=(0.4, 0.6))  # cosine 0.97: still recovered
    assert (scores["recovered"], scores["accuracy"]) == (1.0, 0.5)
    assert scores["confusion"] == [[4, 0, 0], [8, 0, 0], [0, 0, 4]]
    assert sharing_recovery(d, sae)["accuracy"] == 1.0  # within the default band (0.3, 0.7)


def train_planted(
    d_source: int, n_features: int, d_sae: int, steps: int, seed: int = 0, k: int | None = None
) -> dict:
    """A crosscoder trained by hand (as SAEModule does: unit-norm rows, parallel gradient
    removed) on two sources sharing half their features."""
    d = SharedSourcesDictionary(d_source=d_source, n_features=n_features, seed=seed)
    torch.manual_seed(seed)
    sae = CrosscoderSAE(2 * d_source, d_sae, k=k)
    loss_fn = CrosscoderLoss(l1_coeff=0.1 if k is None else 0.0, l1_warmup_steps=steps // 5)
    opt = torch.optim.Adam(sae.parameters(), lr=0.005)
    gen = torch.Generator().manual_seed(seed + 1)
    sae.init_b_dec(d.sample(1024, gen), "mean")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # [256, 32] x [32, 96] products: threads only add contention
    try:
        _fit(sae, d, loss_fn, opt, gen, steps)
    finally:
        torch.set_num_threads(threads)
    return sharing_recovery(d, sae)


def _fit(
    sae: CrosscoderSAE,
    d: SharedSourcesDictionary,
    loss_fn: CrosscoderLoss,
    opt: torch.optim.Optimizer,
    gen: torch.Generator,
    steps: int,
) -> None:
    for step in range(steps):
        x = d.sample(256, gen)
        loss = loss_fn(x, sae(x), sae, step).loss
        opt.zero_grad()
        loss.backward()
        sae.remove_gradient_parallel_to_decoder_directions()
        opt.step()
        sae.set_decoder_norm_to_unit_norm()


@pytest.mark.parametrize("k", [None, 2])  # ReLU + crosscoder L1, BatchTopK
def test_planted_crosscoder_finds_which_features_are_shared(k: int | None) -> None:
    """Two synthetic models, 32 shared features, 16 A-only, 16 B-only: the recovered ones are
    classified by relative decoder norm (shared if 0.3 < r < 0.7, A if r <= 0.3, B if >= 0.7)."""
    scores = train_planted(d_source=16, n_features=64, d_sae=96, steps=300, k=k)
    assert scores["recovered"] >= 0.8, scores
    assert scores["accuracy"] >= 0.9, scores
    assert scores["confusion"][1][1] >= 28, scores  # the shared ones found as shared


@pytest.mark.slow
@pytest.mark.parametrize("k", [None, 4])
def test_planted_crosscoder_at_a_larger_size(k: int | None) -> None:
    scores = train_planted(d_source=48, n_features=256, d_sae=512, steps=1500, k=k)
    assert scores["recovered"] >= 0.9 and scores["accuracy"] >= 0.95, scores


def test_relative_norm_histogram_and_section() -> None:
    sae = with_blocks(
        make(d_sae=8),
        [(1, 0), (1, 0.1), (1, 1), (0.8, 1), (1, 1.2), (0, 1), (0.1, 1), (0.5, 1)],
    )  # r: 0, 0.09, 0.5, 0.56, 0.55, 1, 0.91, 0.67
    summary = relative_norm_summary(sae.relative_decoder_norm(), n_bins=10)
    assert summary["counts"] == {"A only": 2, "shared": 4, "B only": 2, "zero decoder": 0}
    assert summary["histogram"]["counts"] == [2, 0, 0, 0, 0, 3, 1, 0, 0, 2]
    assert len(summary["histogram"]["edges"]) == 11 and sum(summary["histogram"]["counts"]) == 8
    page = crosscoder_section(sae, source_names=("toy-1l", "<script>x</script>"))
    assert "<script>" not in page and "&lt;script&gt;x&lt;/script&gt; only" in page
    assert "<td>toy-1l only</td><td>r &le; 0.3</td><td>2</td>" in page
    assert "<td>shared</td><td>0.3 &lt; r &lt; 0.7</td><td>4</td>" in page
    assert page.count("<rect ") == 20 and page.count("<svg") == 1
    keep = torch.tensor([True, False, True, True, True, False, True, True])
    kept = relative_norm_summary(sae.relative_decoder_norm(), n_bins=10, keep=keep)
    assert kept["counts"] == {"A only": 1, "shared": 4, "B only": 1, "zero decoder": 0}
    assert (kept["n_latents"], kept["n_left_out"]) == (6, 2)
    assert "<td>left out (not kept, e.g. dead)</td><td></td><td>2</td>" in crosscoder_section(
        sae, keep=keep
    )
    with pytest.raises(ValueError, match=r"keep must be a boolean mask of shape \(8,\)"):
        relative_norm_summary(sae.relative_decoder_norm(), keep=torch.ones(7, dtype=torch.bool))
    with pytest.raises(TypeError, match=r"needs a CrosscoderSAE, got ReLUSAE"):
        crosscoder_section(ReLUSAE(8, 4))  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"n_bins must be a positive integer, got 0"):
        relative_norm_summary(sae.relative_decoder_norm(), n_bins=0)


def compose_planted(tmp_path: Path, steps: int, *extra: str):
    from hydra import compose, initialize_config_dir

    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        return compose(
            "train",
            overrides=[
                "experiment=crosscoder_planted",
                f"paths.output_dir={tmp_path}",
                "data.dictionary.d_source=16",
                "data.dictionary.n_features=64",
                "data.batch_size=256",
                "data.val_samples=2048",
                "sae.d_sae=96",
                "module.b_dec_init_tokens=1024",
                f"trainer.max_steps={steps}",
                f"trainer.val_check_interval={steps // 2}",
                "+trainer.enable_progress_bar=false",
                *extra,
            ],
        )


def test_sae_config_selects_the_crosscoder_loss_and_checks_widths(tmp_path: Path) -> None:
    from hydra.utils import instantiate

    from sae_lightning.cli import user_errors

    cfg = compose_planted(tmp_path, 20)
    assert cfg.loss._target_ == "sae_lightning.losses.CrosscoderLoss"
    assert (cfg.sae.n_sources, cfg.data.dictionary.n_sources) == (2, 2)
    assert instantiate(cfg.sae, d_in=32).d_source == 16
    with pytest.raises(SystemExit, match=r"ValueError: d_in=33 is not divisible by n_sources=2"):
        with user_errors("train.py"):  # what the command line shows, through Hydra's wrapper
            instantiate(cfg.sae, d_in=33)


def test_experiment_crosscoder_planted_runs_and_exports(tmp_path: Path) -> None:
    from sae_lightning.training import train

    metrics = train(compose_planted(tmp_path, 20, "sparsity_warmup_steps=5"))
    assert 0 <= metrics["val/sharing_accuracy"] <= 1
    assert 0 <= metrics["val/sharing_recovered_and_correct"] <= metrics["val/recovered"] + 1e-9
    loaded, cfg = load_saelens(tmp_path / "sae")
    assert isinstance(loaded, CrosscoderSAE) and cfg["metadata"]["n_sources"] == 2
    assert cfg["metadata"]["model_name"] == "synthetic"


@pytest.mark.slow
@pytest.mark.parametrize("extra", [[], ["sae.k=2", "loss.l1_coeff=0"]], ids=["relu", "batchtopk"])
def test_experiment_crosscoder_planted_classifies_the_shared_features(
    tmp_path: Path, extra: list[str]
) -> None:
    from sae_lightning.training import train

    metrics = train(compose_planted(tmp_path, 400, "sparsity_warmup_steps=80", *extra))
    assert metrics["val/sharing_accuracy"] >= 0.9, metrics
    assert metrics["val/sharing_recovered_and_correct"] >= 0.65, metrics
