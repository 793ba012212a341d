"""Loss terms against hand computations; the L1 warm-up schedule; argument validation."""

from __future__ import annotations

import pytest
import torch

from sae_lightning.losses import L1Loss, LossOutput, l1, mse
from sae_lightning.saes import ReLUSAE, SAEOutput


def test_mse_sums_over_width_and_averages_over_tokens() -> None:
    x = torch.tensor([[1.0, 2.0], [0.0, 0.0]])
    x_hat = torch.tensor([[0.0, 0.0], [3.0, 0.0]])
    # per-token sums 1 + 4 = 5 and 9; mean over tokens 7
    assert mse(x, x_hat).item() == pytest.approx(7.0)
    y, y_hat = torch.randn(3, 4, 5), torch.randn(3, 4, 5)
    torch.testing.assert_close(mse(y, y_hat), torch.nn.functional.mse_loss(y_hat, y) * 5)
    with pytest.raises(ValueError, match=r"\(2, 2\) and \(2, 3\)"):
        mse(x, torch.zeros(2, 3))


def test_l1_plain_and_decoder_norm_weighted() -> None:
    f = torch.tensor([[1.0, -2.0, 0.0], [0.0, 3.0, 4.0]])
    # sums 3 and 7 -> mean 5
    assert l1(f).item() == pytest.approx(5.0)
    norms = torch.tensor([2.0, 0.5, 1.0])
    # token 1: 1*2 + 2*0.5 = 3; token 2: 3*0.5 + 4*1 = 5.5 -> mean 4.25
    assert l1(f, norms).item() == pytest.approx(4.25)
    with pytest.raises(ValueError, match=r"shape \(3,\).*got \(2,\)"):
        l1(f, torch.ones(2))


def test_warmup_coefficient_schedule() -> None:
    loss_fn = L1Loss(l1_coeff=4.0, l1_warmup_steps=10)
    assert loss_fn.coefficient(0) == 0.0
    assert loss_fn.coefficient(5) == pytest.approx(2.0)
    assert loss_fn.coefficient(10) == pytest.approx(4.0)
    assert loss_fn.coefficient(1000) == pytest.approx(4.0)
    assert L1Loss(l1_coeff=4.0).coefficient(0) == 4.0
    with pytest.raises(ValueError, match="step must be >= 0, got -1"):
        loss_fn.coefficient(-1)


def _sae_and_batch() -> tuple[ReLUSAE, torch.Tensor]:
    torch.manual_seed(0)
    sae = ReLUSAE(d_in=4, d_sae=6)
    with torch.no_grad():
        sae.W_dec.mul_(torch.tensor([0.5, 1.0, 2.0, 3.0, 1.5, 0.25])[:, None])
    return sae, torch.randn(8, 4)


@pytest.mark.parametrize("weighted", [False, True])
def test_l1loss_combines_terms(weighted: bool) -> None:
    sae, x = _sae_and_batch()
    out: SAEOutput = sae(x)
    loss_fn = L1Loss(l1_coeff=2.0, weight_by_decoder_norm=weighted, l1_warmup_steps=4)
    result = loss_fn(x, out, sae, step=1)
    assert isinstance(result, LossOutput)
    norms = sae.W_dec.norm(dim=-1) if weighted else torch.ones(6)
    expected_l1 = (out.feature_acts.abs() * norms).sum(-1).mean()
    expected_mse = (out.x_hat - x).pow(2).sum(-1).mean()
    torch.testing.assert_close(result.l1, expected_l1)
    torch.testing.assert_close(result.mse, expected_mse)
    torch.testing.assert_close(result.loss, expected_mse + 0.5 * expected_l1)  # 2.0 * 1/4
    result.loss.backward()
    assert sae.W_dec.grad is not None and sae.W_enc.grad is not None


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"l1_coeff": -1.0}, "l1_coeff must be >= 0, got -1.0"),
        ({"l1_coeff": float("nan")}, "l1_coeff must be >= 0, got nan"),
        ({"l1_warmup_steps": -5}, "l1_warmup_steps must be an integer >= 0, got -5"),
        ({"l1_warmup_steps": 2.5}, "l1_warmup_steps must be an integer >= 0, got 2.5"),
    ],
)
def test_l1loss_validation(kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        L1Loss(**kwargs)
