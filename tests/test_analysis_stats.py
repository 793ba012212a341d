"""Analysis-pass statistics: streaming top-k, proxy histograms, correlations, proxies.

Every streaming statistic is checked against a one-shot computation on the concatenated data,
and against a DDP-style merge of two instances.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from sae_lightning.analysis.proxies import (
    TokenSetProxy,
)
from sae_lightning.metrics.correlation import (
    FiringCounts,
    StreamingPearson,
    max_correlation,
    proxy_sensitivity,
)
from sae_lightning.metrics.histogram import ProxyHistogram, log_likelihood_ratio, precision_above
from sae_lightning.metrics.topk import TopKActivations, merge_topk

N_FEATURES, K = 5, 4
BATCH_SIZES = (7, 1, 12, 3)


def _topk_batches(seed: int = 0) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Batches of distinct activations (no ties) with non-trivial global token ids."""
    g = torch.Generator().manual_seed(seed)
    total = sum(BATCH_SIZES)
    values = torch.randperm(total * N_FEATURES, generator=g).double().view(total, N_FEATURES)
    ids = torch.arange(total) * 3 + 11  # e.g. context_idx * n_ctx + pos
    return list(zip(values.split(BATCH_SIZES), ids.split(BATCH_SIZES), strict=True))


def _full_topk(batches: list[tuple[torch.Tensor, torch.Tensor]]) -> tuple[torch.Tensor, ...]:
    acts = torch.cat([a for a, _ in batches])  # [n, f]
    ids = torch.cat([i for _, i in batches])
    order = acts.T.argsort(dim=1, descending=True)[:, :K]  # [f, k]
    return acts.T.gather(1, order), ids[order]


def test_topk_streaming_equals_full_sort():
    batches = _topk_batches()
    metric = TopKActivations(N_FEATURES, K)
    metric(*batches[0])  # forward() merges through dist_reduce_fx as well
    for acts, ids in batches[1:]:
        metric.update(acts, ids)
    values, indices = metric.compute()
    want_values, want_indices = _full_topk(batches)
    torch.testing.assert_close(values, want_values)
    assert torch.equal(indices, want_indices)


def test_topk_pads_when_fewer_tokens_than_k():
    metric = TopKActivations(n_features=2, k=3)
    metric.update(torch.tensor([[1.0, 0.0], [2.0, 5.0]]), torch.tensor([7, 9]))
    values, indices = metric.compute()
    assert values.tolist() == [[2.0, 1.0, -math.inf], [5.0, 0.0, -math.inf]]
    assert indices.tolist() == [[9, 7, -1], [9, 7, -1]]


def test_topk_merge_of_two_ranks_equals_one_instance():
    batches = _topk_batches(seed=1)
    rank0, rank1 = TopKActivations(N_FEATURES, K), TopKActivations(N_FEATURES, K)
    for i, (acts, ids) in enumerate(batches):
        (rank0 if i % 2 else rank1).update(acts, ids)
    stale = rank0.compute()  # cached; merge_state must invalidate it
    rank0.merge_state(rank1)
    values, indices = rank0.compute()
    want_values, want_indices = _full_topk(batches)
    torch.testing.assert_close(values, want_values)
    assert torch.equal(indices, want_indices)
    assert not torch.equal(stale[0], values)


def test_topk_sync_through_torchmetrics_gather():
    """``_sync_dist`` with a fake all-gather: the real DDP code path minus the process group."""
    batches = _topk_batches(seed=2)
    rank0, rank1 = TopKActivations(N_FEATURES, K), TopKActivations(N_FEATURES, K)
    rank0.update(*batches[0])
    rank0.update(*batches[1])
    rank1.update(*batches[2])
    rank1.update(*batches[3])
    other = rank1.packed

    def fake_gather(tensor: torch.Tensor, group: object = None) -> list[torch.Tensor]:
        return [tensor, other]

    rank0._sync_dist(dist_sync_fn=fake_gather)
    want_values, want_indices = _full_topk(batches)
    torch.testing.assert_close(rank0.packed[..., 0], want_values)
    assert torch.equal(rank0.packed[..., 1].long(), want_indices)


def test_merge_topk_on_stacked_states():
    # [2 ranks, 2 features, k=2, (value, id)]
    stacked = torch.tensor(
        [
            [[[9.0, 1], [4.0, 2]], [[3.0, 5], [-math.inf, -1]]],
            [[[7.0, 3], [6.0, 4]], [[8.0, 6], [1.0, 7]]],
        ],
        dtype=torch.float64,
    )
    merged = merge_topk(stacked)
    assert merged.tolist() == [[[9.0, 1], [7.0, 3]], [[8.0, 6], [3.0, 5]]]
    with pytest.raises(ValueError, match=r"\[m, f, k, 2\]"):
        merge_topk(stacked[0])


def test_topk_rejects_bad_inputs():
    metric = TopKActivations(2, 2)
    with pytest.raises(ValueError, match=r"acts must have shape \[n, 2\]"):
        metric.update(torch.zeros(3, 4), torch.arange(3))
    with pytest.raises(ValueError, match=r"\[-1, 1\]"):
        metric.update(torch.zeros(3, 2), torch.tensor([-1, 0, 1]))
    with pytest.raises(ValueError, match="integer"):
        metric.update(torch.zeros(3, 2), torch.zeros(3))


def _pearson_batches(seed: int = 0) -> list[tuple[torch.Tensor, torch.Tensor]]:
    g = torch.Generator().manual_seed(seed)
    out = []
    for n in BATCH_SIZES:
        x = torch.randn(n, 4, generator=g) * 2 + 5  # nonzero means
        y = torch.randn(n, 3, generator=g) - 3
        y[:, 1] = 0.7 * x[:, 2] + 0.3 * y[:, 1]  # a correlated pair
        y[:, 2] = x[:, 0]  # an exact copy
        out.append((x, y))
    return out


def test_streaming_pearson_equals_numpy():
    batches = _pearson_batches()
    metric = StreamingPearson(4, 3)
    for x, y in batches:
        metric.update(x, y)
    corr = metric.compute()
    x = torch.cat([b[0] for b in batches]).double().numpy()
    y = torch.cat([b[1] for b in batches]).double().numpy()
    want = np.corrcoef(x, y, rowvar=False)[:4, 4:]
    np.testing.assert_allclose(corr.numpy(), want, atol=1e-10)
    assert corr[0, 2].item() == pytest.approx(1.0, abs=1e-12)
    values, argmax = max_correlation(corr)
    assert argmax[0].item() == 2 and argmax[2].item() == 1


def test_pearson_constant_column_is_zero_and_merge_equals_one():
    batches = _pearson_batches(seed=3)
    for x, _ in batches:
        x[:, 3] = 2.5  # constant column: zero variance -> correlation 0 (documented)
    whole, rank0, rank1 = StreamingPearson(4, 3), StreamingPearson(4, 3), StreamingPearson(4, 3)
    for i, (x, y) in enumerate(batches):
        whole.update(x, y)
        (rank0 if i % 2 else rank1).update(x, y)
    rank0.merge_state(rank1)
    corr = whole.compute()
    assert corr[3].tolist() == [0.0, 0.0, 0.0]
    torch.testing.assert_close(rank0.compute(), corr, rtol=0, atol=1e-12)


def test_max_correlation_keeps_sign_of_largest_magnitude():
    corr = torch.tensor([[0.2, -0.9, 0.5], [0.1, 0.3, -0.2]], dtype=torch.float64)
    values, argmax = max_correlation(corr)
    assert values.tolist() == [-0.9, 0.3] and argmax.tolist() == [1, 1]


BINS = torch.tensor([0.0, 1.0, 2.0, 3.0, 4.0])


def test_histogram_and_llr_match_hand_computation():
    # feature 0: proxy tokens at 0.5, 0.2, 0.9, 1.5 (+ a zero, not counted);
    # non-proxy at 0.1, 1.1, 2.5, 2.0 (edge -> bin 2), 9.0 (above last edge -> bin 3), -1.
    acts = torch.tensor([0.5, 0.2, 0.9, 1.5, 0.0, 0.1, 1.1, 2.5, 2.0, 9.0, -1.0]).unsqueeze(1)
    proxy = torch.tensor([1, 1, 1, 1, 1, 0, 0, 0, 0, 0, 0], dtype=torch.bool).unsqueeze(1)
    metric = ProxyHistogram(1, BINS)
    metric.update(acts[:6], proxy[:6])
    metric.update(acts[6:], proxy[6:])
    pos, neg = metric.compute()
    assert pos.tolist() == [[3, 1, 0, 0]] and neg.tolist() == [[1, 1, 2, 1]]
    # P(bin | proxy) = [3, 1, 0, 0] / 4; P(bin | not proxy) = [1, 1, 2, 1] / 5
    eps = 1e-9
    want = [
        math.log((0.75 + eps) / (0.2 + eps)),
        math.log((0.25 + eps) / (0.2 + eps)),
        math.log(eps / (0.4 + eps)),
        math.log(eps / (0.2 + eps)),
    ]
    llr = log_likelihood_ratio(pos, neg, eps=eps)
    assert llr[0].tolist() == pytest.approx(want, rel=1e-12)
    posterior = log_likelihood_ratio(
        pos, neg, prior_pos=torch.tensor([0.2], dtype=torch.float64), eps=eps
    )
    assert posterior[0].tolist() == pytest.approx([w + math.log(0.25) for w in want], rel=1e-12)


def test_precision_above_hand_case():
    pos = torch.tensor([[3, 1, 0, 0], [3, 1, 0, 0], [0, 0, 0, 0]])
    neg = torch.tensor([[1, 1, 2, 1], [1, 1, 2, 1], [5, 0, 0, 0]])
    # lower edges 0,1,2,3: threshold 0.5 keeps bins 1-3 (pos 1 of 5); 0 keeps all (4 of 9);
    # 1.0 on a feature with nothing above it is undefined.
    got = precision_above(pos, neg, BINS, torch.tensor([0.5, 0.0, 1.0]))
    assert got[:2].tolist() == pytest.approx([1 / 5, 4 / 9])
    assert math.isnan(got[2].item())


def test_one_token_feature_has_specificity_and_sensitivity_one():
    vocab = ["a", " b", "c", "7"]
    tokens = torch.tensor([0, 2, 1, 2, 3, 0, 2, 1, 3, 3])
    acts = torch.zeros(len(tokens), 2)
    acts[:, 0] = (tokens == 2).float() * torch.linspace(1.5, 2.0, len(tokens))
    acts[:, 1] = torch.arange(len(tokens)) % 3  # an unrelated feature
    proxy = TokenSetProxy(["c"])
    token_mask = proxy.mask(tokens, vocab)  # [n]
    hist, counts = ProxyHistogram(2, BINS), FiringCounts(2, len(vocab))
    hist.update(acts, token_mask.unsqueeze(1).expand(-1, 2))
    counts.update(acts, tokens)
    pos, neg = hist.compute()
    half_max = acts.max(dim=0).values / 2
    assert precision_above(pos, neg, BINS, half_max)[0].item() == 1.0
    _, fires, token_counts = counts.compute()
    sensitivity = proxy_sensitivity(fires, token_counts, proxy.vocab_mask(vocab))
    assert sensitivity[0].item() == 1.0
    assert sensitivity[1].item() == pytest.approx(1 / 3)  # fires on 1 of the 3 "c"s


def test_firing_counts_equal_naive_loop():
    g = torch.Generator().manual_seed(4)
    n, f, vocab = 30, 3, 6
    acts = torch.relu(torch.randn(n, f, generator=g))
    tokens = torch.randint(0, vocab, (n,), generator=g)
    metric = FiringCounts(f, vocab)
    metric.update(acts[:13], tokens[:13])
    metric.update(acts[13:], tokens[13:])
    mass, fires, token_counts = metric.compute()
    want_mass = torch.zeros(f, vocab, dtype=torch.float64)
    want_fires = torch.zeros(f, vocab, dtype=torch.long)
    for i in range(n):
        for j in range(f):
            want_mass[j, tokens[i]] += acts[i, j].item()
            want_fires[j, tokens[i]] += int(acts[i, j] > 0)
    torch.testing.assert_close(mass, want_mass)
    assert torch.equal(fires, want_fires)
    assert token_counts.tolist() == [int((tokens == t).sum()) for t in range(vocab)]
    with pytest.raises(ValueError, match=r"\[0, 6\), got range \[0, 6\]"):
        metric.update(acts[:2], torch.tensor([0, 6]))
