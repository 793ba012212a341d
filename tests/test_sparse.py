"""The sparse (firing-entry) paths of the analysis metrics equal their dense definitions."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from sae_lightning.metrics.correlation import FiringCounts, StreamingPearson
from sae_lightning.metrics.histogram import ProxyHistogram
from sae_lightning.metrics.sparse import segment_rank
from sae_lightning.metrics.topk import TopKActivations
from sae_lightning.sparse import firing_entries


def sparse_acts(n: int, f: int, seed: int, density: float = 0.1) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    acts = torch.rand(n, f, generator=gen) * 3
    return torch.where(torch.rand(n, f, generator=gen) < density, acts, 0.0)


def test_firing_entries_are_the_nonzeros_sorted_by_feature():
    acts = sparse_acts(50, 7, 0)
    acts[3, 2] = -1.0  # negative activations do not fire
    e = firing_entries(acts)
    assert e.values.numel() == int((acts > 0).sum())
    assert torch.equal(acts[e.rows, e.cols], e.values) and bool((e.values > 0).all())
    key = e.cols * 50 + e.rows
    assert bool((key[1:] > key[:-1]).all())  # by feature, then row
    assert torch.equal(e.counts(), (acts > 0).sum(0))
    assert torch.allclose(e.segment_max(), acts.clamp(min=0).amax(0))
    y = torch.randn(50, 4)
    assert torch.allclose(e.transpose_matmul(y), acts.clamp(min=0).T @ y, atol=1e-5)
    assert segment_rank(torch.tensor([0, 0, 0, 2, 2, 3]), 4).tolist() == [0, 1, 2, 0, 1, 0]


def test_topk_entries_equal_dense_update_over_batches():
    dense, entries = TopKActivations(6, 4), TopKActivations(6, 4)
    for seed in range(5):
        acts = sparse_acts(40, 6, seed, density=0.2)
        ids = torch.arange(40) + 40 * seed
        dense.update(acts, ids)
        e = firing_entries(acts)
        entries.update_entries(e.values, e.cols, ids[e.rows])
    (dv, di), (ev, ei) = dense.compute(), entries.compute()
    positive = dv > 0
    assert torch.equal(dv[positive], ev[positive]) and torch.equal(di[positive], ei[positive])
    assert bool(torch.isinf(ev[~positive]).all())  # no entry: slot unfilled
    with pytest.raises(ValueError, match=r"cols must lie in \[0, 6\)"):
        entries.update_entries(torch.ones(1), torch.tensor([6]), torch.tensor([0]))


def test_pearson_entries_match_numpy_even_with_large_neuron_means():
    metric = StreamingPearson(5, 3, y_shift=torch.tensor([50.0, 0.0, 0.0]))  # a rough mean
    xs, ys = [], []
    for seed in range(4):
        x = sparse_acts(64, 5, seed, density=0.3)
        y = torch.randn(64, 3, generator=torch.Generator().manual_seed(100 + seed))
        y[:, 0] = y[:, 0] * 0.01 + 50.0  # mean 5000 std: raw float32 moments would lose it
        y[:, 1] += 0.5 * x[:, 1]
        e = firing_entries(x)
        metric.update_entries(e.rows, e.cols, e.values, y)
        xs.append(x), ys.append(y)
    x, y = torch.cat(xs).double().numpy(), torch.cat(ys).double().numpy()
    expected = np.corrcoef(x.T, y.T)[:5, 5:]
    assert np.abs(metric.compute().numpy() - expected).max() < 1e-6


def test_histogram_and_firing_counts_entries_equal_dense():
    acts = sparse_acts(80, 4, 3, density=0.4)
    proxy = torch.rand(80, 4, generator=torch.Generator().manual_seed(1)) < 0.5
    tokens = torch.randint(0, 9, (80,), generator=torch.Generator().manual_seed(2))
    edges = torch.linspace(0, 3, 7)
    dense, sparse = ProxyHistogram(4, edges), ProxyHistogram(4, edges)
    dense.update(acts, proxy)
    e = firing_entries(acts)
    sparse.update_entries(e.values, e.cols, proxy[e.rows, e.cols])
    for a, b in zip(dense.compute(), sparse.compute(), strict=True):
        assert torch.equal(a, b)
    counts = FiringCounts(4, 9)
    counts.update_entries(e.rows, e.cols, e.values, tokens)
    mass, fires, token_counts = counts.compute()
    onehot = torch.nn.functional.one_hot(tokens, 9).double()  # [80, 9]
    assert torch.allclose(mass, acts.double().T @ onehot)
    assert torch.equal(fires, ((acts > 0).double().T @ onehot).long())
    assert torch.equal(token_counts, torch.bincount(tokens, minlength=9))


def test_one_entries_type_converts_between_row_and_feature_order():
    acts = sparse_acts(30, 12, seed=5)
    by_row = firing_entries(acts, "row")
    by_feature = firing_entries(acts)
    assert by_row.order == "row" and by_feature.order == "feature"
    key_row = by_row.rows * 12 + by_row.cols
    assert torch.equal(key_row, key_row.sort().values)  # rows, then features, ascending
    key_feature = by_feature.cols * 30 + by_feature.rows
    assert torch.equal(key_feature, key_feature.sort().values)
    for a, b in ((by_row.by_feature(), by_feature), (by_feature.by_row(), by_row)):
        assert torch.equal(a.rows, b.rows) and torch.equal(a.cols, b.cols)
        assert torch.equal(a.values, b.values) and a.order == b.order
    assert torch.equal(by_row.to_dense(), acts) and torch.equal(by_feature.to_dense(), acts)
    crow = by_row.row_pointers()
    assert torch.equal(crow.diff(), (acts > 0).sum(1))
    with pytest.raises(ValueError, match="row-major"):
        by_feature.row_pointers()
    y = torch.randn(30, 4)
    torch.testing.assert_close(by_row.transpose_matmul(y), acts.T @ y)
