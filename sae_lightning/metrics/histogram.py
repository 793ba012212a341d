"""Per-feature activation histograms split by a proxy, and the specificity statistics on them.

The specificity plots of *Towards Monosemanticity* stack, for each activation level, the
tokens that satisfy the feature's proxy against those that do not. Here that is two count
states ``[n_features, n_bins]`` on fixed bin edges shared by all features (feed activations
normalised per feature, e.g. by a known max, if features live on very different scales).
"""

from __future__ import annotations

import torch
from jaxtyping import Bool, Float, Int
from torch import Tensor
from torchmetrics import Metric

from sae_lightning.metrics.sparse import check_entries, counts_as_update
from sae_lightning.sparse import firing_entries


def _check_edges(bins: Tensor) -> Float[Tensor, " e"]:
    """Return ``bins`` as float64 edges, or raise naming what is wrong with them."""
    if bins.ndim != 1 or bins.numel() < 2:
        raise ValueError(f"bins must be 1-D edges with at least 2 entries, got {list(bins.shape)}")
    edges = bins.detach().double()
    if not torch.isfinite(edges).all() or not (edges[1:] > edges[:-1]).all():
        raise ValueError(f"bins must be finite and strictly increasing, got {edges.tolist()}")
    return edges


def _histogram_update(
    acts: Float[Tensor, "n f"], proxy: Bool[Tensor, "n f"], edges: Float[Tensor, " e"]
) -> tuple[Int[Tensor, "f b"], Int[Tensor, "f b"]]:
    """Batch counts (proxy-positive, proxy-negative) of nonzero activations per feature/bin."""
    e = firing_entries(acts, "row")
    return _histogram_entries(e.values, e.cols, proxy[e.rows, e.cols], edges, acts.shape[1])


def _histogram_entries(
    values: Float[Tensor, " m"],
    cols: Int[Tensor, " m"],
    proxy: Bool[Tensor, " m"],
    edges: Float[Tensor, " e"],
    n_features: int,
) -> tuple[Int[Tensor, "f b"], Int[Tensor, "f b"]]:
    """Counts (proxy-positive, proxy-negative) per feature and bin of the given entries.

    Bin ``i`` is ``[edges[i], edges[i+1])``; values outside the edges are clamped into the
    first or last bin.
    """
    n_bins = edges.numel() - 1
    bin_idx = torch.bucketize(values.detach().to(edges.dtype), edges, right=True) - 1
    flat = bin_idx.clamp_(0, n_bins - 1) + cols * n_bins  # [m]
    size = n_features * n_bins
    pos = torch.bincount(flat[proxy], minlength=size).view(n_features, n_bins)
    neg = torch.bincount(flat[~proxy], minlength=size).view(n_features, n_bins)
    return pos, neg


class ProxyHistogram(Metric):
    """Counts of nonzero activations per feature and bin, split by the feature's proxy.

    Only activations ``> 0`` are counted (the paper's specificity plots show nonzero
    activations). Bin ``i`` covers ``[bins[i], bins[i+1])``; values above the last edge go
    into the last bin and positive values below the first edge into the first.

    Args:
        n_features: Number of features (columns of ``acts``).
        bins: Bin edges, 1-D, finite, strictly increasing (``n_bins + 1`` entries).

    Example:
        >>> metric = ProxyHistogram(n_features=1, bins=torch.tensor([0.0, 1.0, 2.0]))
        >>> acts = torch.tensor([[0.5], [1.5], [3.0], [0.0]])
        >>> metric.update(acts, torch.tensor([[True], [True], [False], [True]]))
        >>> pos, neg = metric.compute()
        >>> pos.tolist(), neg.tolist()
        ([[1, 1]], [[0, 1]])
    """

    is_differentiable = False
    higher_is_better = None
    full_state_update = False

    pos_counts: Tensor
    neg_counts: Tensor
    bins: Tensor

    def __init__(self, n_features: int, bins: Float[Tensor, " n_edges"]) -> None:
        super().__init__()
        if n_features < 1:
            raise ValueError(f"n_features must be a positive int, got {n_features!r}")
        edges = _check_edges(bins)
        self.n_features = n_features
        self.n_bins = edges.numel() - 1
        # A plain attribute, not a buffer: a parent module's .half()/.to(bf16) would round a
        # buffer's edges. It is moved to the activations' device on use (a few floats).
        self.bins = edges
        counts = torch.zeros(n_features, self.n_bins, dtype=torch.long)
        self.add_state("pos_counts", default=counts.clone(), dist_reduce_fx="sum")
        self.add_state("neg_counts", default=counts.clone(), dist_reduce_fx="sum")

    def update(
        self, acts: Float[Tensor, "n n_features"], proxy: Bool[Tensor, "n n_features"]
    ) -> None:
        """Add a batch; ``proxy[i, j]`` says whether token ``i`` satisfies feature ``j``'s proxy."""
        if acts.ndim != 2 or acts.shape[1] != self.n_features:
            raise ValueError(f"acts must have shape [n, {self.n_features}], got {list(acts.shape)}")
        if proxy.shape != acts.shape or proxy.dtype != torch.bool:
            raise ValueError(
                f"proxy must be a bool tensor of shape {list(acts.shape)} like acts, "
                f"got {proxy.dtype} {list(proxy.shape)}"
            )
        pos, neg = _histogram_update(acts, proxy, self.bins.to(acts.device))
        self.pos_counts = self.pos_counts + pos
        self.neg_counts = self.neg_counts + neg

    @counts_as_update
    def update_entries(
        self, values: Float[Tensor, " m"], cols: Int[Tensor, " m"], proxy: Bool[Tensor, " m"]
    ) -> None:
        """Add sparse entries: activation ``values[i] > 0`` of feature ``cols[i]``, and
        whether its token satisfies that feature's proxy (entries ``<= 0`` are skipped)."""
        check_entries(values=values, cols=cols, proxy=proxy)
        fired = values > 0
        pos, neg = _histogram_entries(
            values[fired], cols[fired], proxy[fired], self.bins.to(values.device), self.n_features
        )
        self.pos_counts = self.pos_counts + pos
        self.neg_counts = self.neg_counts + neg

    def compute(self) -> tuple[Int[Tensor, "n_features n_bins"], Int[Tensor, "n_features n_bins"]]:
        """``(pos_counts, neg_counts)``, each ``[n_features, n_bins]`` (int64)."""
        return self.pos_counts, self.neg_counts


def log_likelihood_ratio(
    pos_counts: Int[Tensor, "f b"],
    neg_counts: Int[Tensor, "f b"],
    prior_pos: Float[Tensor, " f"] | None = None,
    eps: float = 1e-9,
) -> Float[Tensor, "f b"]:
    """Per-bin log-likelihood ratio of the proxy, ``log P(bin | proxy) / P(bin | not proxy)``.

    Exactly, for feature ``j`` and bin ``b``::

        p_pos[j, b] = pos_counts[j, b] / sum_b pos_counts[j, b]   # fraction of proxy tokens
        p_neg[j, b] = neg_counts[j, b] / sum_b neg_counts[j, b]   # fraction of non-proxy tokens
        llr[j, b]   = log((p_pos[j, b] + eps) / (p_neg[j, b] + eps))

    A feature with no tokens on one side has all-zero fractions on that side. Positive values
    mean the bin is more typical of proxy tokens. If ``prior_pos`` (the prior probability
    ``P(proxy)`` per feature, in ``(0, 1)``) is given, its log-odds
    ``log(prior_pos / (1 - prior_pos))`` are added, turning the ratio into the posterior
    log-odds ``log P(proxy | bin) / P(not proxy | bin)`` by Bayes' rule.

    Args:
        pos_counts: Counts of proxy-positive tokens per feature and bin.
        neg_counts: Counts of proxy-negative tokens, same shape.
        prior_pos: Optional prior probability of the proxy per feature ``[f]``.
        eps: Smoothing added to both fractions (bounds the ratio of empty bins).

    Returns:
        ``[f, b]`` float64 log ratios (natural log).
    """
    if pos_counts.shape != neg_counts.shape or pos_counts.ndim != 2:
        raise ValueError(
            f"pos_counts and neg_counts must both be [f, b], got {list(pos_counts.shape)} "
            f"and {list(neg_counts.shape)}"
        )
    pos, neg = pos_counts.double(), neg_counts.double()
    p_pos = pos / pos.sum(dim=1, keepdim=True).clamp(min=1)
    p_neg = neg / neg.sum(dim=1, keepdim=True).clamp(min=1)
    llr = torch.log((p_pos + eps) / (p_neg + eps))
    if prior_pos is None:
        return llr
    prior = prior_pos.double()
    if prior.shape != (pos.shape[0],) or not ((prior > 0) & (prior < 1)).all():
        raise ValueError(
            f"prior_pos must be [{pos.shape[0]}] probabilities in (0, 1), got {prior.tolist()}"
        )
    return llr + torch.log(prior / (1 - prior)).unsqueeze(1)


def precision_above(
    pos_counts: Int[Tensor, "f b"],
    neg_counts: Int[Tensor, "f b"],
    bins: Float[Tensor, " e"],
    threshold: Float[Tensor, " f"],
) -> Float[Tensor, " f"]:
    """Fraction of proxy tokens among tokens in bins whose lower edge is ``>= threshold``.

    With ``threshold`` at half each feature's max activation this is the paper's specificity
    ("how often the proxy holds when the feature fires strongly"). A bin straddling the
    threshold is excluded, so finer bins give a sharper cut. Features with no tokens above
    their threshold get NaN (undefined, not zero).

    Args:
        pos_counts: ``[f, b]`` proxy-positive counts.
        neg_counts: ``[f, b]`` proxy-negative counts.
        bins: The ``b + 1`` edges the counts were binned with.
        threshold: Per-feature activation threshold ``[f]``.

    Returns:
        ``[f]`` float64 precision, NaN where no token lies above the threshold.
    """
    edges = _check_edges(bins).to(pos_counts.device)
    if pos_counts.shape != neg_counts.shape or pos_counts.shape[1:] != (edges.numel() - 1,):
        raise ValueError(
            f"counts must be [f, {edges.numel() - 1}] to match {edges.numel()} bin edges, got "
            f"{list(pos_counts.shape)} and {list(neg_counts.shape)}"
        )
    if threshold.shape != (pos_counts.shape[0],):
        raise ValueError(f"threshold must be [{pos_counts.shape[0]}], got {list(threshold.shape)}")
    keep = edges[:-1].unsqueeze(0) >= threshold.double().unsqueeze(1)  # [f, b]
    pos = (pos_counts.double() * keep).sum(dim=1)
    total = pos + (neg_counts.double() * keep).sum(dim=1)
    return torch.where(total > 0, pos / total.clamp(min=1), torch.nan)
