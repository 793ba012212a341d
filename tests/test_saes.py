"""SAE architectures: forward contract, decoder geometry, b_dec init, geometric median."""

from __future__ import annotations

import pytest
import torch

from sae_lightning.saes import ARCHITECTURES, SAE, ReLUSAE, build_sae, geometric_median

D_IN, D_SAE = 6, 10
EXTRA = {
    "topk": {"k": 3},
    "batchtopk": {"k": 3},
    "matryoshka_batchtopk": {"k": 3, "group_sizes": [2, 3, 5]},
    "crosscoder": {"n_sources": 2},  # not required, but written in its config
}
"""Constructor arguments an architecture requires beyond d_in and d_sae."""
SAME_WIDTH = sorted(a for a in ARCHITECTURES if not a.endswith("transcoder"))
"""The architectures that reconstruct their input (transcoders: tests/test_transcoder.py)."""


def make(architecture: str, seed: int = 0) -> SAE:
    torch.manual_seed(seed)
    sae = build_sae(architecture, d_in=D_IN, d_sae=D_SAE, **EXTRA.get(architecture, {}))
    with torch.no_grad():  # non-trivial biases so they are exercised
        for name, value in sae.named_parameters():
            if value.ndim == 1 and value.shape[0] == D_SAE and name != "threshold":
                value.normal_(0, 0.1)
        sae.b_dec.normal_(0, 0.5)
    return sae


@pytest.mark.parametrize("architecture", SAME_WIDTH)
def test_forward_is_decode_of_encode(architecture: str) -> None:
    sae = make(architecture)
    x = torch.randn(2, 5, D_IN)
    out = sae(x)
    assert out.feature_acts.shape == (2, 5, D_SAE)
    assert out.x_hat.shape == (2, 5, D_IN)
    # to float rounding, not bitwise: the forward adds the encoder bias inside addmm for some
    # architectures (encode adds it after the product: on an AVX2 CPU the two round apart),
    # and TopK's sparse decoder sums the same k terms in another order
    torch.testing.assert_close(out.x_hat, sae.decode(sae.encode(x)), rtol=1e-6, atol=1e-6)
    assert sae.config() == {
        "architecture": architecture,
        "d_in": D_IN,
        "d_sae": D_SAE,
        "apply_b_dec_to_input": True,
        **EXTRA.get(architecture, {}),
        **({"threshold_momentum": 0.01} if architecture.endswith("batchtopk") else {}),
    }


@pytest.mark.parametrize("architecture", SAME_WIDTH)
@pytest.mark.parametrize("apply_b_dec", [True, False])
def test_encode_selected_picks_one_feature_per_row(architecture: str, apply_b_dec: bool) -> None:
    sae = make(architecture).eval()  # eval: BatchTopK's codes do not depend on the batch
    sae.apply_b_dec_to_input = apply_b_dec
    x = torch.randn(3, 5, D_IN)
    index = torch.tensor([7, 0, 7])
    expected = torch.stack([sae.encode(x[r])[:, f] for r, f in enumerate(index.tolist())])
    torch.testing.assert_close(sae.encode_selected(x, index), expected)
    assert (expected > 0).any()  # the biases make some of them fire


@pytest.mark.parametrize("architecture", SAME_WIDTH)
def test_init_is_unit_norm_decoder_tied_encoder(architecture: str) -> None:
    sae = make(architecture)
    torch.testing.assert_close(sae.W_dec.norm(dim=-1), torch.ones(D_SAE))
    assert torch.equal(sae.W_enc, sae.W_dec.T)
    assert sae.W_enc.shape == (D_IN, D_SAE) and sae.W_dec.shape == (D_SAE, D_IN)
    assert sae.b_dec.shape == (D_IN,)
    for name, dim in sae.feature_params.items():
        assert getattr(sae, name).shape[dim] == D_SAE, name
    fresh = build_sae(architecture, d_in=D_IN, d_sae=D_SAE, **EXTRA.get(architecture, {}))
    assert torch.equal(fresh.b_dec, torch.zeros(D_IN))


def test_relu_encode_matches_formula() -> None:
    sae = make("standard")
    x = torch.randn(7, D_IN)
    expected = torch.relu((x - sae.b_dec) @ sae.W_enc + sae.b_enc)
    torch.testing.assert_close(sae.encode(x), expected)
    torch.testing.assert_close(sae.encode_pre(x).clamp_min(0), expected)
    assert (sae.encode(x) >= 0).all()
    no_bdec = ReLUSAE(D_IN, D_SAE, apply_b_dec_to_input=False)
    with torch.no_grad():
        no_bdec.b_dec.fill_(3.0)
    torch.testing.assert_close(no_bdec.encode_pre(x), x @ no_bdec.W_enc + no_bdec.b_enc)


def test_set_decoder_norm_to_unit_norm() -> None:
    sae = make("standard")
    with torch.no_grad():
        sae.W_dec.mul_(torch.linspace(0.1, 7.0, D_SAE)[:, None])
    directions = sae.W_dec / sae.W_dec.norm(dim=-1, keepdim=True)
    sae.set_decoder_norm_to_unit_norm()
    torch.testing.assert_close(sae.W_dec.norm(dim=-1), torch.ones(D_SAE))
    torch.testing.assert_close(sae.W_dec, directions)


def test_remove_gradient_parallel_to_decoder_directions() -> None:
    sae = make("standard")
    with torch.no_grad():
        sae.W_dec.mul_(torch.linspace(0.5, 3.0, D_SAE)[:, None])  # not unit norm on purpose
    sae(torch.randn(32, D_IN)).x_hat.pow(2).sum().backward()
    grad = sae.W_dec.grad.clone()
    unit = sae.W_dec.detach() / sae.W_dec.detach().norm(dim=-1, keepdim=True)
    orthogonal = grad - (grad * unit).sum(-1, keepdim=True) * unit
    assert (grad * unit).sum(-1).abs().max() > 1e-2  # there was a parallel part to remove
    sae.remove_gradient_parallel_to_decoder_directions()
    new_grad, w = sae.W_dec.grad, sae.W_dec.detach()
    denom = (new_grad.norm(dim=-1) * w.norm(dim=-1)).clamp_min(1e-12)  # dead rows: grad 0
    cosines = (new_grad * w).sum(-1) / denom  # [d_sae]
    torch.testing.assert_close(cosines, torch.zeros(D_SAE), atol=1e-6, rtol=0)
    torch.testing.assert_close(sae.W_dec.grad, orthogonal)


def test_remove_gradient_without_grad_raises() -> None:
    with pytest.raises(RuntimeError, match="after loss.backward"):
        make("standard").remove_gradient_parallel_to_decoder_directions()


def test_init_b_dec_methods() -> None:
    sae = make("standard")
    x = torch.randn(50, D_IN) * 2 + torch.arange(D_IN, dtype=torch.float32)
    sae.init_b_dec(x, "mean")
    torch.testing.assert_close(sae.b_dec.detach(), x.mean(dim=0))
    sae.init_b_dec(x, "geometric_median")
    torch.testing.assert_close(sae.b_dec.detach(), geometric_median(x))
    sae.init_b_dec(x, "zeros")
    assert torch.equal(sae.b_dec.detach(), torch.zeros(D_IN))
    with pytest.raises(ValueError, match=r"'median'.*geometric_median.*mean.*zeros"):
        sae.init_b_dec(x, "median")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"width 4.*d_in=6"):
        sae.init_b_dec(torch.randn(5, 4), "mean")


@pytest.mark.parametrize("architecture", SAME_WIDTH)
def test_width_mismatch_names_both_widths(architecture: str) -> None:
    sae = make(architecture)
    for call in (sae, sae.encode):
        with pytest.raises(ValueError, match=r"width 5 .*d_in=6"):
            call(torch.randn(3, 5))
    with pytest.raises(ValueError, match=r"width 9 .*d_sae=10"):
        sae.decode(torch.randn(3, 9))


def test_unknown_architecture_lists_valid() -> None:
    with pytest.raises(ValueError, match=r"'mystery'.*\['batchtopk', 'crosscoder', 'gated', "):
        build_sae("mystery", d_in=D_IN, d_sae=D_SAE)


@pytest.mark.parametrize("bad", [0, -3, 2.5, True])
def test_bad_sizes_rejected(bad: object) -> None:
    with pytest.raises(ValueError, match=rf"d_sae must be a positive integer, got {bad!r}"):
        ReLUSAE(D_IN, bad)  # type: ignore[arg-type]


def test_geometric_median_1d_odd_is_median() -> None:
    x = torch.tensor([[1.0], [2.0], [3.0], [10.0], [100.0]])
    torch.testing.assert_close(geometric_median(x), torch.tensor([3.0]), atol=1e-4, rtol=0)
    torch.manual_seed(0)
    y = torch.randn(101, 1)
    torch.testing.assert_close(geometric_median(y), y.median(dim=0).values, atol=1e-4, rtol=0)


def test_geometric_median_is_robust() -> None:
    torch.manual_seed(0)
    x = torch.randn(200, 4)
    outliers = torch.full((10, 4), 1000.0)
    both = torch.cat([x, outliers])
    mean_shift = (both.mean(0) - x.mean(0)).norm()
    median_shift = (geometric_median(both) - geometric_median(x)).norm()
    assert mean_shift > 90
    assert median_shift < 0.2


def test_geometric_median_symmetric_points_and_batch() -> None:
    centre = torch.tensor([1.0, -2.0, 0.5])
    offsets = torch.tensor([[1.0, 0, 0], [0, 2.0, 0], [0, 0, 3.0]])
    points = torch.cat([centre + offsets, centre - offsets])  # [6, 3], symmetric about centre
    torch.testing.assert_close(geometric_median(points), centre)
    batch = torch.stack([points, points * 2])  # [2, 6, 3]
    torch.testing.assert_close(geometric_median(batch), torch.stack([centre, centre * 2]))
    with pytest.raises(ValueError, match=r"n >= 1, got \(0, 3\)"):
        geometric_median(torch.empty(0, 3))
