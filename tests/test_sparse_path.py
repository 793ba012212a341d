"""ReLU / JumpReLU / Gated: the sparse path (gather / scatter over the active latents) equals
the dense formulas in value and gradient, and the switch between them follows the density."""

from __future__ import annotations

from typing import Any

import pytest
import torch

from sae_lightning.losses import GatedLoss, JumpReLULoss, L1Loss, LossOutput
from sae_lightning.module import SAEModule
from sae_lightning.saes import SAE, GatedSAE, JumpReLUSAE, ReLUSAE, SAEOutput

D_IN, D_SAE = 16, 96

CASES: dict[str, tuple[type[SAE], dict[str, Any], Any]] = {
    "relu": (ReLUSAE, {}, L1Loss(l1_coeff=0.7)),
    "relu-weighted": (ReLUSAE, {}, L1Loss(l1_coeff=0.7, weight_by_decoder_norm=True)),
    # a wide kernel: many near-threshold latents that did not fire get threshold gradient
    "jumprelu": (JumpReLUSAE, {"threshold_init": 0.3, "bandwidth": 0.4}, JumpReLULoss(0.5)),
    "gated": (GatedSAE, {}, GatedLoss(l1_coeff=0.7)),
}


def trained_like(cls: type[SAE], kwargs: dict[str, Any], apply_b_dec: bool) -> SAE:
    """An SAE with a sparse batch density (~10%), unequal decoder norms, random biases."""
    torch.manual_seed(0)
    sae = cls(D_IN, D_SAE, apply_b_dec_to_input=apply_b_dec, sparse_threshold=1.0, **kwargs)
    with torch.no_grad():
        for name, param in sae.named_parameters():
            if name in ("b_enc", "b_gate", "b_mag", "r_mag"):
                param.normal_(-1.0 if name != "r_mag" else 0.0, 0.3)
        sae.b_dec.normal_(0, 0.5)
        sae.W_dec.mul_(torch.rand(D_SAE, 1) + 0.5)
    return sae


def step(sae: SAE, loss_fn: Any, x: torch.Tensor) -> tuple[SAEOutput, LossOutput]:
    out = sae(x)
    lo = loss_fn(x, out, sae, 100)
    lo.loss.backward()
    sae.remove_gradient_parallel_to_decoder_directions()  # SAEModule.on_after_backward
    return out, lo


@pytest.mark.parametrize("apply_b_dec", [True, False])
@pytest.mark.parametrize("case", sorted(CASES))
def test_sparse_path_equals_dense_values_and_gradients(case: str, apply_b_dec: bool) -> None:
    cls, kwargs, loss_fn = CASES[case]
    sparse = trained_like(cls, kwargs, apply_b_dec)
    dense = cls(D_IN, D_SAE, apply_b_dec_to_input=apply_b_dec, sparse_threshold=0.0, **kwargs)
    dense.load_state_dict(sparse.state_dict())
    x = torch.randn(2, 20, D_IN) * 2  # a [*batch, d_in] input
    (out_s, lo_s), (out_d, lo_d) = step(sparse, loss_fn, x), step(dense, loss_fn, x)
    assert out_s.codes is not None and out_d.codes is None
    density = out_s.codes.cols.numel() / (40 * D_SAE)
    assert 0.02 < density < 0.4, density
    assert (out_s.feature_acts > 0).sum(-1).float().mean() > 1  # codes are non-trivial
    torch.testing.assert_close(out_s.feature_acts, out_d.feature_acts)
    torch.testing.assert_close(out_s.x_hat, out_d.x_hat, rtol=1e-5, atol=1e-5)
    for term in ("loss", "mse", "l1", "aux"):
        a, b = getattr(lo_s, term), getattr(lo_d, term)
        assert (a is None) == (b is None), term
        if a is not None:
            torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)
    assert lo_d.l1 > 0
    reference = dict(dense.named_parameters())
    for name, param in sparse.named_parameters():
        grad = reference[name].grad
        assert param.grad is not None and grad is not None and grad.abs().max() > 0, name
        torch.testing.assert_close(param.grad, grad, rtol=1e-5, atol=1e-5)


def test_jumprelu_sparse_entries_include_inactive_near_threshold_latents() -> None:
    cls, kwargs, loss_fn = CASES["jumprelu"]
    sae = trained_like(cls, kwargs, True)
    out = sae(torch.randn(40, D_IN) * 2)
    assert out.codes is not None and out.pre_codes is not None
    silent = out.codes.values == 0  # kept for the threshold's straight-through gradient
    assert silent.any() and (~silent).any()
    pre, threshold = out.pre_codes.values.detach(), sae.threshold[out.pre_codes.cols].detach()
    assert ((pre[silent] - threshold[silent]).abs() < sae.bandwidth / 2).all()
    assert (pre[~silent] > threshold[~silent]).all()


@pytest.mark.parametrize("case", ["relu", "jumprelu", "gated"])
def test_the_path_follows_the_batch_density(case: str) -> None:
    cls, kwargs, _ = CASES[case]
    trained = trained_like(cls, kwargs, True)
    fresh = cls(D_IN, D_SAE, **kwargs)  # random init: about half the codes fire
    x = torch.randn(40, D_IN) * 2
    assert fresh.sparse_threshold == 0.05 and fresh(x).codes is None
    density = (trained(x).feature_acts > 0).float().mean().item()
    trained.sparse_threshold = density / 4  # below the batch's density: dense
    assert trained(x).codes is None
    trained.sparse_threshold = min(1.0, density * 4)
    assert trained(x).codes is not None


@pytest.mark.parametrize("bad", [-0.1, 1.5, True, "0.1"])
def test_sparse_threshold_must_be_a_density(bad: Any) -> None:
    with pytest.raises(ValueError, match=r"sparse_threshold must be a code density in \[0, 1\]"):
        ReLUSAE(D_IN, D_SAE, sparse_threshold=bad)


def test_module_logs_which_path_the_step_took(monkeypatch: pytest.MonkeyPatch) -> None:
    sae = trained_like(ReLUSAE, {}, True)
    module = SAEModule(sae, L1Loss(0.5), lambda p: torch.optim.Adam(p))
    logged: dict[str, Any] = {}
    monkeypatch.setattr(module, "log", lambda key, value, **_: logged.__setitem__(key, value))
    x = torch.randn(40, D_IN) * 2
    module.training_step(x, 0)
    assert logged["train/sparse_path"] == 1.0
    sae.sparse_threshold = 0.0
    module.training_step(x, 1)
    assert logged["train/sparse_path"] == 0.0


def test_fused_adam_takes_the_same_steps_as_foreach() -> None:
    """conf/train.yaml's optimizer is fused (one pass per parameter on the CPU too)."""
    torch.manual_seed(0)
    start = [torch.randn(64, 32), torch.randn(32)]
    grads = [[torch.randn_like(p) for p in start] for _ in range(5)]
    results = []
    for kwargs in ({"foreach": True}, {"fused": True}):
        params = [torch.nn.Parameter(p.clone()) for p in start]
        opt = torch.optim.Adam(params, lr=1e-2, betas=(0.9, 0.999), **kwargs)
        for step_grads in grads:
            for param, grad in zip(params, step_grads, strict=True):
                param.grad = grad.clone()
            opt.step()
        results.append(params)
    for a, b in zip(*results, strict=True):
        assert not torch.equal(a, start[0] if a.ndim == 2 else start[1])
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize(
    "shape, density", [((64, 96), 0.01), ((7, 4096), 0.009), ((33, 40), 0.5), ((5, 16), 1.0)]
)
def test_mask_entries_are_nonzero_in_the_same_order(shape: tuple[int, int], density: float) -> None:
    """The word-at-a-time reading of a mask gives exactly ``nonzero``'s rows and columns."""
    from sae_lightning.saes.sparse_codes import mask_entries

    torch.manual_seed(1)
    mask = torch.rand(shape) < density
    mask[0, -1] = True  # an entry in the last word of a row
    rows, cols = mask_entries(mask)
    want_rows, want_cols = mask.nonzero(as_tuple=True)
    assert rows.numel() == int(mask.sum()) > 0
    assert torch.equal(rows, want_rows) and torch.equal(cols, want_cols)
    empty = mask_entries(torch.zeros(shape, dtype=torch.bool))
    assert empty[0].numel() == empty[1].numel() == 0


def test_mask_entries_of_masks_that_cannot_be_read_by_words() -> None:
    """A width not divisible by 8, a strided mask and a misaligned one fall back to
    ``nonzero``, with the same result."""
    from sae_lightning.saes.sparse_codes import mask_entries

    torch.manual_seed(2)
    flat = torch.rand(3 + 12 * 40) < 0.2
    masks = {
        "odd width": torch.rand(12, 45) < 0.2,
        "column slice": (torch.rand(12, 48) < 0.2)[:, 8:40],
        "storage offset 3": flat[3:].view(12, 40),
    }
    assert masks["storage offset 3"].is_contiguous()
    for name, mask in masks.items():
        rows, cols = mask_entries(mask)
        want_rows, want_cols = mask.nonzero(as_tuple=True)
        assert torch.equal(rows, want_rows) and torch.equal(cols, want_cols), name
