"""TopK, BatchTopK, Matryoshka, JumpReLU, Gated: sparse == dense, export round trips."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from sae_lightning.formats import load_saelens, save_saelens, to_inference_sae
from sae_lightning.saes import (
    ARCHITECTURES,
    SAE,
    BatchTopKSAE,
    JumpReLUSAE,
    MatryoshkaSAE,
    TopKSAE,
    build_sae,
)
from sae_lightning.saes.jumprelu import jumprelu, step

META = {"model_name": "toy-1l", "hook_name": "blocks.0.mlp.hook_post", "context_size": 32,
        "prepend_bos": True}  # fmt: skip
EXTRA = {
    "topk": {"k": 4},
    "batchtopk": {"k": 4},
    "matryoshka_batchtopk": {"k": 4, "group_sizes": [4, 8, 12]},
    "transcoder": {"d_out": 5},
    "skip_transcoder": {"d_out": 5},
}


def make(architecture: str, d_in: int = 8, d_sae: int = 24, seed: int = 0) -> SAE:
    torch.manual_seed(seed)
    sae = build_sae(architecture, d_in=d_in, d_sae=d_sae, **EXTRA.get(architecture, {}))
    with torch.no_grad():
        sae.W_enc.add_(0.3 * torch.randn_like(sae.W_enc))
        for name, value in sae.named_parameters():
            if value.ndim == 1 and value.shape[0] == d_sae and name != "threshold":
                value.normal_(0, 0.1)
        sae.b_dec.normal_(0, 0.5)
        if isinstance(sae, JumpReLUSAE):
            sae.threshold.uniform_(0.05, 0.3)
        if hasattr(sae, "W_skip"):
            sae.W_skip.normal_(0, 0.2)
    return sae


def meta_for(architecture: str) -> dict:
    """META, with the output hook a transcoder's export needs."""
    if architecture.endswith("transcoder"):
        return {**META, "hook_name_out": "blocks.0.hook_mlp_out"}
    return META


@pytest.mark.parametrize("architecture", sorted(ARCHITECTURES))
def test_export_round_trip_is_exact(architecture: str, tmp_path: Path) -> None:
    sae = make(architecture)
    x = torch.randn(64, 8)
    sae.train()(x)  # BatchTopK: one training batch sets its threshold
    sae.eval()
    folder = save_saelens(sae, tmp_path, meta_for(architecture))
    loaded, cfg = load_saelens(folder)
    exported = sae.for_export()
    assert cfg["architecture"] == exported.architecture == type(loaded).architecture
    for name, value in exported.state_dict().items():
        assert torch.equal(loaded.state_dict()[name], value), name
    assert torch.equal(loaded.encode(x), exported.encode(x))
    assert torch.equal(loaded(x).x_hat, exported(x).x_hat)
    if architecture == "topk":
        assert cfg["k"] == 4


@pytest.mark.parametrize("architecture", sorted(ARCHITECTURES))
def test_activation_scale_and_decoder_norms_fold_into_the_export(
    architecture: str, tmp_path: Path
) -> None:
    sae = make(architecture).eval()
    if "topk" not in architecture:  # TopK latents compete: equal norms only
        with torch.no_grad():
            sae.W_dec.mul_(torch.linspace(0.5, 2.0, 24)[:, None])
    scale = 3.0  # trained on 3 * x
    x = torch.randn(64, 8)
    with torch.no_grad():
        trained = sae(x * scale)
    folder = save_saelens(sae, tmp_path, meta_for(architecture), activation_scale=scale)
    loaded, cfg = load_saelens(folder)
    assert cfg["normalize_activations"] == "none"
    torch.testing.assert_close(loaded.W_dec.norm(dim=-1), torch.ones(24))
    with torch.no_grad():
        out = loaded(x)
        direct = to_inference_sae(sae, scale)(x)
    torch.testing.assert_close(out.x_hat, trained.x_hat / scale, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(out.x_hat, direct.x_hat)
    assert torch.equal((out.feature_acts > 0), (trained.feature_acts > 0))  # same codes


def test_topk_refuses_to_fold_unequal_decoder_norms(tmp_path: Path) -> None:
    sae = make("topk")
    with torch.no_grad():
        sae.W_dec.mul_(torch.linspace(0.5, 2.0, 24)[:, None])
    with pytest.raises(ValueError, match=r"unequal decoder norms .*unit_norm_decoder=true"):
        save_saelens(sae, tmp_path, META)


@pytest.mark.parametrize("cls", [TopKSAE, BatchTopKSAE, MatryoshkaSAE])
@pytest.mark.parametrize("apply_b_dec", [True, False])
def test_sparse_decoder_matches_dense_values_and_gradients(cls, apply_b_dec: bool) -> None:
    torch.manual_seed(0)
    sparse = cls(16, 96, k=5, apply_b_dec_to_input=apply_b_dec, sparse_decoder=True)
    dense = cls(16, 96, k=5, apply_b_dec_to_input=apply_b_dec, sparse_decoder=False)
    with torch.no_grad():
        sparse.b_enc.normal_(0, 0.1)
        sparse.b_dec.normal_(0, 0.5)
        sparse.W_dec.mul_(torch.rand(96, 1) + 0.5)
    dense.load_state_dict(sparse.state_dict())
    x = torch.randn(40, 16)
    target = torch.randn(40, 16)
    outs = {}
    for name, sae in (("sparse", sparse), ("dense", dense)):
        out = sae(x)
        loss = (out.x_hat - target).pow(2).sum() + out.feature_acts.pow(2).sum()
        loss.backward()
        outs[name] = out
    assert (outs["sparse"].feature_acts > 0).sum(-1).float().mean() > 1  # codes are non-trivial
    torch.testing.assert_close(outs["sparse"].feature_acts, outs["dense"].feature_acts)
    torch.testing.assert_close(outs["sparse"].x_hat, outs["dense"].x_hat, rtol=1e-6, atol=1e-6)
    for name, param in sparse.named_parameters():
        reference = dict(dense.named_parameters())[name].grad
        assert param.grad is not None and reference.abs().max() > 0, name
        torch.testing.assert_close(param.grad, reference, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("cls", [TopKSAE, BatchTopKSAE, MatryoshkaSAE])
@pytest.mark.parametrize("apply_b_dec", [True, False])
@pytest.mark.parametrize("n_dead", [7, 60])  # k_aux 6 of 7 (dense path) and 6 of 60 (sparse)
def test_auxk_sparse_and_dense_paths_give_the_same_values_and_gradients(
    cls, apply_b_dec: bool, n_dead: int
) -> None:
    torch.manual_seed(0)
    sae = cls(16, 96, k=5, apply_b_dec_to_input=apply_b_dec)
    with torch.no_grad():
        sae.b_enc.normal_(0, 0.1)
        sae.b_dec.normal_(0, 0.5)
        sae.W_dec.mul_(torch.rand(96, 1) + 0.5)
    dead = torch.zeros(96, dtype=torch.bool)
    dead[torch.randperm(96)[:n_dead]] = True
    x, residual = torch.randn(40, 16), torch.randn(40, 16)
    outs, grads = {}, {}
    for below in (1.0, 0.0):  # every batch sparse, then every batch dense
        e_hat = sae.auxk_reconstruction(x, dead, k_aux=6, sparse_below=below)
        (e_hat - residual).pow(2).sum().backward()
        outs[below] = e_hat.detach()
        grads[below] = {
            n: torch.zeros_like(p) if p.grad is None else p.grad.clone()
            for n, p in sae.named_parameters()
        }
        sae.zero_grad(set_to_none=True)
    assert outs[1.0].abs().max() > 0
    torch.testing.assert_close(outs[1.0], outs[0.0], rtol=1e-5, atol=1e-6)
    for name, reference in grads[0.0].items():
        if name == "b_dec" and not apply_b_dec:  # AuxK has no b_dec term then
            assert reference.abs().max() == 0
            continue
        assert reference.abs().max() > 0, name
        torch.testing.assert_close(grads[1.0][name], reference, rtol=1e-5, atol=1e-5)
    live = ~dead  # only the dead latents' encoder columns and decoder rows learn from AuxK
    assert grads[0.0]["W_enc"][:, live].abs().max() == 0
    assert grads[0.0]["W_dec"][live].abs().max() == 0
    # the default chooses by the share of dead latents in use: 6 of 7 is dense, 6 of 60 sparse
    torch.testing.assert_close(sae.auxk_reconstruction(x, dead, k_aux=6), outs[0.0])


def test_sparse_encoder_input_gradient_matches_dense() -> None:
    torch.manual_seed(1)
    sparse, dense = TopKSAE(8, 32, k=3), TopKSAE(8, 32, k=3, sparse_decoder=False)
    dense.load_state_dict(sparse.state_dict())
    grads = []
    for sae in (sparse, dense):
        x = torch.randn(10, 8, generator=torch.Generator().manual_seed(2)).requires_grad_()
        sae(x).x_hat.pow(2).sum().backward()
        grads.append(x.grad)
    torch.testing.assert_close(grads[0], grads[1], rtol=1e-5, atol=1e-6)


def test_topk_keeps_k_per_token_and_tracks_firing() -> None:
    sae = make("topk").train()
    out = sae(torch.randn(50, 8))
    assert ((out.feature_acts > 0).sum(-1) <= 4).all()
    assert (out.feature_acts != 0).sum(-1).float().mean() > 3
    fired = (out.feature_acts > 0).any(0)
    assert (sae.tokens_since_fired[fired] == 0).all()
    assert (sae.tokens_since_fired[~fired] == 50).all()
    sae.eval()(torch.randn(5, 8))  # inference does not count
    assert (sae.tokens_since_fired[~fired] == 50).all()


def test_batchtopk_to_jumprelu_gives_the_same_codes_on_the_training_batch() -> None:
    sae = make("batchtopk", d_sae=64).train()
    x = torch.randn(128, 8)
    codes = sae(x).feature_acts  # training: top k * batch over the batch; sets the threshold
    assert int((codes > 0).sum()) == 4 * 128  # exactly k per token on average
    assert (codes > 0).sum(-1).float().std() > 0  # ... but not per token
    jump = sae.to_jumprelu().eval()
    assert isinstance(jump, JumpReLUSAE)
    torch.testing.assert_close(jump.threshold, sae.threshold.expand(64))
    assert torch.equal(jump.encode(x), codes.detach())
    assert torch.equal(sae.eval().encode(x), codes.detach())  # eval mode is that JumpReLU


def test_batchtopk_threshold_is_a_running_average() -> None:
    sae = BatchTopKSAE(8, 32, k=2, threshold_momentum=0.5)
    batches = [torch.randn(16, 8) for _ in range(2)]
    thresholds = []
    for x in batches:
        sae.train()(x)
        thresholds.append(sae.threshold.item())
    fresh = BatchTopKSAE(8, 32, k=2, threshold_momentum=1.0)
    fresh.load_state_dict({k: v for k, v in sae.state_dict().items() if "threshold" not in k},
                          strict=False)  # fmt: skip
    fresh.train()(batches[1])
    assert thresholds[1] == pytest.approx(0.5 * thresholds[0] + 0.5 * fresh.threshold.item())


def test_jumprelu_straight_through_gradients() -> None:
    eps = 0.25
    pre = torch.tensor([[0.0, 0.4375, 0.5625, 0.75, 1.0]], requires_grad=True)
    theta = torch.full((5,), 0.5, requires_grad=True)
    out = jumprelu(pre, theta, eps)
    assert out.tolist() == [[0.0, 0.0, 0.5625, 0.75, 1.0]]
    out.sum().backward()
    assert pre.grad.tolist() == [[0.0, 0.0, 1.0, 1.0, 1.0]]
    # -(theta / eps) K((pre - theta) / eps): only |pre - theta| < eps / 2 contributes
    torch.testing.assert_close(theta.grad, torch.tensor([0.0, -2.0, -2.0, 0.0, 0.0]))
    theta.grad = None
    step(pre.detach(), theta, eps).sum().backward()
    torch.testing.assert_close(theta.grad, torch.tensor([0.0, -4.0, -4.0, 0.0, 0.0]))


def test_gated_codes_follow_the_gate() -> None:
    sae = make("gated")
    x = torch.randn(30, 8)
    out = sae(x)
    gate, mag = sae._gate_and_mag(x)
    assert torch.equal(out.pre_acts, gate)
    assert torch.equal(out.feature_acts > 0, (gate > 0) & (mag > 0))
