"""Metrics: batched updates equal one-shot formulas, hand cases, DDP-style merge, reset."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torchmetrics import Metric

from sae_lightning.metrics import (
    DownstreamLoss,
    ExplainedVariance,
    FeatureDensity,
    MeanL0,
    dead_fraction,
    log10_density,
    per_token_ce_and_kl,
    ultralow_fraction,
)

D_IN, D_SAE = 6, 10
BATCH_SIZES = (5, 1, 12)


def _batches(seed: int = 0) -> list[dict[str, torch.Tensor]]:
    """Three random batches of different sizes with every input any metric needs."""
    g = torch.Generator().manual_seed(seed)
    out = []
    for n in BATCH_SIZES:
        x = torch.randn(n, D_IN, generator=g) * 3 + 2  # nonzero mean: global x̄ matters
        acts = torch.relu(torch.randn(n, D_SAE, generator=g) - 0.5)
        acts[:, 0] = 0.0  # feature 0 is dead
        out.append(
            {
                "x": x,
                "x_hat": x + 0.5 * torch.randn(n, D_IN, generator=g),
                "acts": acts,
                "ce_clean": torch.rand(n, generator=g) + 1.0,
                "ce_sae": torch.rand(n, generator=g) + 2.0,
                "ce_zero": torch.rand(n, generator=g) + 4.0,
                "kl": torch.rand(n, generator=g),
            }
        )
    return out


def _cat(batches: list[dict[str, torch.Tensor]], key: str) -> torch.Tensor:
    return torch.cat([b[key] for b in batches])


def _feed(metric: Metric, batches: list[dict[str, torch.Tensor]]) -> Metric:
    for b in batches:
        if isinstance(metric, ExplainedVariance):
            metric.update(b["x"], b["x_hat"])
        elif isinstance(metric, DownstreamLoss):
            metric.update(b["ce_clean"], b["ce_sae"], b["ce_zero"], b["kl"])
        else:
            metric.update(b["acts"])
    return metric


def _reference(metric: Metric, batches: list[dict[str, torch.Tensor]]):
    """One-shot result on the concatenated data, with plain numpy formulas."""
    if isinstance(metric, ExplainedVariance):
        x, x_hat = _cat(batches, "x").double().numpy(), _cat(batches, "x_hat").double().numpy()
        return 1 - ((x - x_hat) ** 2).sum() / ((x - x.mean(axis=0)) ** 2).sum()
    if isinstance(metric, MeanL0):
        return (_cat(batches, "acts").numpy() != 0).sum(axis=1).mean()
    if isinstance(metric, FeatureDensity):
        return (_cat(batches, "acts").numpy() > 0).mean(axis=0)
    m = {k: _cat(batches, k).double().numpy().mean() for k in ("ce_clean", "ce_sae", "ce_zero")}
    return {
        "ce_loss_clean": m["ce_clean"],
        "ce_loss_sae": m["ce_sae"],
        "ce_loss_zero_ablation": m["ce_zero"],
        "loss_recovered": (m["ce_zero"] - m["ce_sae"]) / (m["ce_zero"] - m["ce_clean"]),
        "kl": _cat(batches, "kl").double().numpy().mean(),
    }


def _assert_close(got, want) -> None:
    if isinstance(want, dict):
        assert set(got) == set(want)
        for k in want:
            np.testing.assert_allclose(got[k].numpy(), want[k], rtol=1e-12, atol=1e-12, err_msg=k)
    else:
        np.testing.assert_allclose(got.numpy(), want, rtol=1e-12, atol=1e-12)


METRICS = {
    "explained_variance": lambda: ExplainedVariance(d_in=D_IN),
    "mean_l0": MeanL0,
    "feature_density": lambda: FeatureDensity(d_sae=D_SAE),
    "downstream": DownstreamLoss,
}


@pytest.mark.parametrize("make", METRICS.values(), ids=METRICS.keys())
def test_batched_equals_one_shot(make) -> None:
    batches = _batches()
    metric = _feed(make(), batches)
    _assert_close(metric.compute(), _reference(metric, batches))


@pytest.mark.parametrize("make", METRICS.values(), ids=METRICS.keys())
def test_merge_state_equals_single_instance(make) -> None:
    """Two 'ranks' on different halves, merged, equal one instance on everything."""
    batches = _batches(seed=1)
    whole = _feed(make(), batches)
    left, right = _feed(make(), batches[:2]), _feed(make(), batches[2:])
    left.merge_state(right)
    _assert_close(left.compute(), _reference(whole, batches))
    _assert_close(whole.compute(), _reference(whole, batches))


@pytest.mark.parametrize("make", METRICS.values(), ids=METRICS.keys())
def test_states_are_sums_and_reset_zeroes_them(make) -> None:
    metric = _feed(make(), _batches())
    assert metric.full_state_update is False
    assert set(metric._reductions) == set(metric._defaults)
    for name, fx in metric._reductions.items():
        assert fx is not None and fx.__name__ == "dim_zero_sum", name
    assert int(metric.n) == sum(BATCH_SIZES)
    metric.reset()
    for name in metric._defaults:
        assert torch.count_nonzero(getattr(metric, name)) == 0, name


def test_explained_variance_hand_cases() -> None:
    x = torch.tensor([[1.0, 2.0], [3.0, 6.0]])
    perfect, mean_only = ExplainedVariance(d_in=2), ExplainedVariance(d_in=2)
    perfect.update(x, x)
    mean_only.update(x, x.mean(0).expand_as(x))
    assert perfect.compute().item() == 1.0
    assert mean_only.compute().item() == pytest.approx(0.0, abs=1e-12)
    with pytest.raises(ValueError, match=r"\[n, 2\]"):
        perfect.update(torch.zeros(3, 5), torch.zeros(3, 5))


def test_mean_l0_hand_case() -> None:
    metric = MeanL0()
    metric.update(torch.tensor([[0.0, 2.0, -1.0], [0.0, 0.0, 3.0]]))
    metric.update(torch.zeros(2, 3))
    assert metric.compute().item() == pytest.approx(3 / 4)


def test_feature_density_hand_case_and_summaries() -> None:
    metric = FeatureDensity(d_sae=4)
    metric.update(torch.tensor([[1.0, 0.0, 0.0, -1.0], [2.0, 0.5, 0.0, 0.0]]))
    metric.update(torch.tensor([[0.0, 0.0, 0.0, 0.0], [3.0, 0.0, 0.0, 0.0]]))
    density = metric.compute()
    assert density.tolist() == [0.75, 0.25, 0.0, 0.0]  # negative activations do not fire
    assert dead_fraction(density).item() == 0.5
    assert ultralow_fraction(density, threshold=0.3).item() == 0.75
    assert ultralow_fraction(density).item() == 0.5
    logd = log10_density(density, eps=1e-10)
    assert logd[2].item() == pytest.approx(-10.0)
    assert logd[1].item() == pytest.approx(np.log10(0.25))
    with pytest.raises(ValueError, match=r"\[n, 4\]"):
        metric.update(torch.zeros(2, 5))


def test_loss_recovered_endpoints() -> None:
    clean, zero, kl = torch.tensor([1.0, 2.0]), torch.tensor([5.0, 7.0]), torch.zeros(2)
    for ce_sae, want in ((clean, 1.0), (zero, 0.0)):
        metric = DownstreamLoss()
        metric.update(clean, ce_sae, zero, kl)
        assert metric.compute()["loss_recovered"].item() == pytest.approx(want, abs=1e-12)


def test_per_token_ce_matches_cross_entropy_and_kl_is_zero_on_identical_logits() -> None:
    g = torch.Generator().manual_seed(2)
    logits = torch.randn(2, 5, 7, generator=g)
    other = torch.randn(2, 5, 7, generator=g)
    tokens = torch.randint(0, 7, (2, 5), generator=g)
    ce_clean, ce_other, kl = per_token_ce_and_kl(logits, other, tokens)
    assert ce_clean.shape == ce_other.shape == kl.shape == (2 * 4,)
    want = F.cross_entropy(
        logits[:, :-1].reshape(-1, 7), tokens[:, 1:].reshape(-1), reduction="none"
    )
    torch.testing.assert_close(ce_clean, want)
    _, _, kl_same = per_token_ce_and_kl(logits, logits.clone(), tokens)
    torch.testing.assert_close(kl_same, torch.zeros(8), atol=1e-7, rtol=0)
    assert (kl >= 0).all() and (kl > 0).any()


def test_kl_hand_case() -> None:
    """Vocab of 2, one predicted position: KL(p ‖ q) for p = (0.8, 0.2), q = (0.5, 0.5)."""
    p, q = torch.tensor([0.8, 0.2]), torch.tensor([0.5, 0.5])
    logits_clean = torch.stack([p.log(), p.log()]).unsqueeze(0)  # [1, 2, 2]
    logits_other = torch.stack([q.log(), q.log()]).unsqueeze(0)
    tokens = torch.tensor([[0, 1]])
    ce_clean, ce_other, kl = per_token_ce_and_kl(logits_clean, logits_other, tokens)
    by_hand = 0.8 * np.log(0.8 / 0.5) + 0.2 * np.log(0.2 / 0.5)
    torch_kl = F.kl_div(q.log(), p, reduction="sum")
    assert kl.item() == pytest.approx(by_hand, rel=1e-6)
    assert kl.item() == pytest.approx(torch_kl.item(), rel=1e-6)
    assert ce_clean.item() == pytest.approx(-np.log(0.2), rel=1e-6)
    assert ce_other.item() == pytest.approx(np.log(2), rel=1e-6)


def test_per_token_rejects_bad_shapes() -> None:
    with pytest.raises(ValueError, match="logits shapes differ"):
        per_token_ce_and_kl(torch.zeros(1, 3, 4), torch.zeros(1, 3, 5), torch.zeros(1, 3).long())
    with pytest.raises(ValueError, match="tokens"):
        per_token_ce_and_kl(torch.zeros(1, 3, 4), torch.zeros(1, 3, 4), torch.zeros(1, 2).long())
    with pytest.raises(ValueError, match="at least 2 positions"):
        per_token_ce_and_kl(torch.zeros(1, 1, 4), torch.zeros(1, 1, 4), torch.zeros(1, 1).long())
