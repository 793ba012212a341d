"""Streaming correlations (feature vs neuron) and per-vocabulary firing counts.

Both are running sums with ``dist_reduce_fx="sum"``, so batches, DDP ranks and
``merge_state`` combine exactly, and memory does not grow with the number of tokens.
"""

from __future__ import annotations

import torch
from jaxtyping import Bool, Float, Int
from torch import Tensor
from torchmetrics import Metric

from sae_lightning.metrics.sparse import (
    counts_as_update,
    segment_sum,
)
from sae_lightning.sparse import SparseEntries, firing_entries

# A column whose centred sum of squares is below this fraction of its raw sum of squares is
# treated as constant: the raw-moment formula leaves ~1e-16 relative round-off there.
_REL_VAR_TOL = 1e-10


def _pearson_compute(
    sum_x: Tensor, sum_y: Tensor, sum_xx: Tensor, sum_yy: Tensor, sum_xy: Tensor, n: Tensor
) -> Float[Tensor, "nx ny"]:
    """Correlation from raw moments; 0 wherever either column has (numerically) zero variance."""
    n = n.double().clamp(min=1)
    var_x = sum_xx - sum_x.pow(2) / n  # n * population variance, [nx]
    var_y = sum_yy - sum_y.pow(2) / n  # [ny]
    ok_x = var_x > _REL_VAR_TOL * sum_xx
    ok_y = var_y > _REL_VAR_TOL * sum_yy
    cov = sum_xy - torch.outer(sum_x, sum_y) / n  # [nx, ny]
    denom = torch.outer(var_x.clamp(min=0).sqrt(), var_y.clamp(min=0).sqrt())
    corr = (cov / torch.where(denom > 0, denom, 1.0)).clamp(-1.0, 1.0)
    return torch.where(torch.outer(ok_x, ok_y), corr, 0.0)


class StreamingPearson(Metric):
    """Pearson correlation of every column of ``x`` with every column of ``y``.

    Kept as float64 running sums, so ``compute()`` costs ``O(n_x * n_y)`` whatever the token
    count. The cross sums are kept against ``y - y_shift`` (a constant per column, e.g. a
    rough mean of ``y``, the same on every rank), which keeps float32 cross products exact
    enough when a column's mean is large next to its spread. A column with zero variance
    (constant over every token seen, e.g. a dead feature) has correlation **0** with
    everything, rather than NaN. Columns whose variance is below ``1e-10`` of their mean
    square count as constant (raw moments cannot resolve less).

    Args:
        n_x: Number of ``x`` columns (e.g. SAE features).
        n_y: Number of ``y`` columns (e.g. MLP neurons).
        y_shift: Per-column offset of ``y`` for the cross sums (default zeros).

    Example:
        >>> metric = StreamingPearson(n_x=1, n_y=2)
        >>> x = torch.tensor([[1.0], [2.0], [3.0]])
        >>> metric.update(x, torch.cat([2 * x, -x], dim=1))
        >>> metric.compute().round(decimals=6).tolist()
        [[1.0, -1.0]]
    """

    is_differentiable = False
    higher_is_better = None
    full_state_update = False

    sum_x: Tensor
    sum_y: Tensor
    sum_xx: Tensor
    sum_yy: Tensor
    sum_xy: Tensor
    n: Tensor

    def __init__(self, n_x: int, n_y: int, y_shift: Float[Tensor, " n_y"] | None = None) -> None:
        super().__init__()
        for name, value in (("n_x", n_x), ("n_y", n_y)):
            if value < 1:
                raise ValueError(f"{name} must be a positive int, got {value!r}")
        self.n_x, self.n_y = n_x, n_y
        f64 = torch.float64
        for name, shape in (("sum_x", n_x), ("sum_y", n_y), ("sum_xx", n_x), ("sum_yy", n_y)):
            self.add_state(name, default=torch.zeros(shape, dtype=f64), dist_reduce_fx="sum")
        self.add_state("sum_xy", default=torch.zeros(n_x, n_y, dtype=f64), dist_reduce_fx="sum")
        self.add_state("n", default=torch.tensor(0, dtype=torch.long), dist_reduce_fx="sum")
        if y_shift is not None and y_shift.shape != (n_y,):
            raise ValueError(f"y_shift must be [{n_y}], got {list(y_shift.shape)}")
        # a plain attribute (not a state): the same on every rank, moved to y's device on use
        self.y_shift = (
            torch.zeros(n_y, dtype=f64) if y_shift is None else y_shift.detach().double().cpu()
        )

    def update(self, x: Float[Tensor, "n n_x"], y: Float[Tensor, "n n_y"]) -> None:
        """Add a batch of paired rows (row ``i`` of ``x`` and of ``y`` are the same token)."""
        if x.ndim != 2 or x.shape[1] != self.n_x:
            raise ValueError(f"x must have shape [n, {self.n_x}], got {list(x.shape)}")
        if y.ndim != 2 or y.shape != (x.shape[0], self.n_y):
            raise ValueError(f"y must have shape [{x.shape[0]}, {self.n_y}], got {list(y.shape)}")
        x64, y64 = x.detach().double(), y.detach().double()
        self.sum_xy.add_(x64.T @ (y64 - self.y_shift.to(y.device)))  # in place: [n_x, n_y]
        self._add_marginals(x64.sum(0), x64.pow(2).sum(0), y64)

    @counts_as_update
    def update_entries(
        self,
        rows: Int[Tensor, " m"],
        cols: Int[Tensor, " m"],
        values: Float[Tensor, " m"],
        y: Float[Tensor, "n n_y"],
    ) -> None:
        """Add a batch whose ``x`` is sparse: its nonzero entries ``x[rows[i], cols[i]] =
        values[i]``, sorted by column then row (``y`` is dense, row ``i`` the same token).

        The cross sums cost ``O(nnz * n_y)`` (a CSR product) instead of ``O(n * n_x * n_y)``,
        in ``y``'s dtype (float32) and added to the float64 state. With ``y_shift`` near
        ``y``'s mean the product has no large common part to lose digits to, and the
        correlations stay within ~1e-6 of an all-float64 computation.
        """
        if y.ndim != 2 or y.shape[1] != self.n_y:
            raise ValueError(f"y must have shape [n, {self.n_y}], got {list(y.shape)}")
        y = y.detach()
        centred = y - self.y_shift.to(device=y.device, dtype=y.dtype)  # [n, n_y]
        entries = SparseEntries(rows, cols, values, len(y), self.n_x, "feature")
        self.sum_xy.add_(entries.transpose_matmul(centred))  # in place
        sx = segment_sum(cols, values, self.n_x)  # [n_x]
        self._add_marginals(sx, segment_sum(cols, values.double().pow(2), self.n_x), y.double())

    def _add_marginals(self, sx: Tensor, sxx: Tensor, y: Float[Tensor, "n n_y"]) -> None:
        """Add ``Σx``, ``Σx²`` and ``y``'s own sums (float64) to the states."""
        self.sum_x = self.sum_x + sx
        self.sum_xx = self.sum_xx + sxx
        self.sum_y = self.sum_y + y.sum(0)
        self.sum_yy = self.sum_yy + y.pow(2).sum(0)
        self.n = self.n + y.shape[0]

    def compute(self) -> Float[Tensor, "n_x n_y"]:
        """Correlation matrix ``[n_x, n_y]`` (float64) over everything seen since reset."""
        # sum_xy holds Σ x (y - shift): add Σx · shift back
        sum_xy = self.sum_xy + torch.outer(self.sum_x, self.y_shift.to(self.sum_x.device))
        return _pearson_compute(self.sum_x, self.sum_y, self.sum_xx, self.sum_yy, sum_xy, self.n)


def max_correlation(
    corr: Float[Tensor, "nx ny"],
) -> tuple[Float[Tensor, " nx"], Int[Tensor, " nx"]]:
    """Most-correlated ``y`` column for each ``x`` row, by absolute value.

    The paper's "most correlated neuron" check: a strongly *anti*-correlated neuron explains a
    feature as well as a correlated one, so the argmax is taken over ``|corr|`` and the
    signed correlation at that column is returned.

    Returns:
        ``(values, argmax)``: signed correlation ``[nx]`` and the column index ``[nx]``.
    """
    argmax = corr.abs().argmax(dim=1)
    return corr.gather(1, argmax.unsqueeze(1)).squeeze(1), argmax


class FiringCounts(Metric):
    """Per feature and vocabulary token: activation mass and number of firings.

    States ``mass`` (Σ positive activation, float64) and ``fires`` (count of activations ``> 0``),
    both ``[n_features, vocab]``, plus ``token_counts [vocab]`` (occurrences of each token).
    They feed the automatic proxy (tokens carrying most of a feature's mass) and sensitivity
    (:func:`proxy_sensitivity`). Memory is ``16 * n_features * vocab`` bytes.

    Args:
        n_features: Number of features (columns of ``acts``).
        n_tokens_vocab: Vocabulary size; token ids must lie in ``[0, n_tokens_vocab)``.

    Example:
        >>> metric = FiringCounts(n_features=1, n_tokens_vocab=3)
        >>> metric.update(torch.tensor([[2.0], [0.0], [1.0]]), torch.tensor([2, 0, 2]))
        >>> mass, fires, token_counts = metric.compute()
        >>> mass.tolist(), fires.tolist(), token_counts.tolist()
        ([[0.0, 0.0, 3.0]], [[0, 0, 2]], [1, 0, 2])
    """

    is_differentiable = False
    higher_is_better = None
    full_state_update = False

    mass: Tensor
    fires: Tensor
    token_counts: Tensor

    def __init__(self, n_features: int, n_tokens_vocab: int) -> None:
        super().__init__()
        for name, value in (("n_features", n_features), ("n_tokens_vocab", n_tokens_vocab)):
            if value < 1:
                raise ValueError(f"{name} must be a positive int, got {value!r}")
        self.n_features, self.n_tokens_vocab = n_features, n_tokens_vocab
        shape = (n_features, n_tokens_vocab)
        self.add_state("mass", torch.zeros(shape, dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("fires", torch.zeros(shape, dtype=torch.long), dist_reduce_fx="sum")
        counts = torch.zeros(n_tokens_vocab, dtype=torch.long)
        self.add_state("token_counts", counts, dist_reduce_fx="sum")

    def update(self, acts: Float[Tensor, "n n_features"], tokens: Int[Tensor, " n"]) -> None:
        """Add a batch; ``tokens[i]`` is the vocabulary id of row ``i`` of ``acts``."""
        if acts.ndim != 2 or acts.shape[1] != self.n_features:
            raise ValueError(f"acts must have shape [n, {self.n_features}], got {list(acts.shape)}")
        if tokens.shape != (acts.shape[0],) or tokens.is_floating_point():
            raise ValueError(
                f"tokens must be integer ids of shape [{acts.shape[0]}], "
                f"got {tokens.dtype} {list(tokens.shape)}"
            )
        e = firing_entries(acts, "row")
        self.update_entries(e.rows, e.cols, e.values, tokens)

    @counts_as_update
    def update_entries(
        self,
        rows: Int[Tensor, " m"],
        cols: Int[Tensor, " m"],
        values: Float[Tensor, " m"],
        tokens: Int[Tensor, " n"],
    ) -> None:
        """Add a batch given as its firing entries: ``values[i] > 0`` of feature ``cols[i]``
        at row ``rows[i]``; ``tokens`` are the vocabulary ids of all ``n`` rows."""
        if tokens.ndim != 1 or tokens.is_floating_point():
            raise ValueError(
                f"tokens must be 1-D integer ids, got {tokens.dtype} {list(tokens.shape)}"
            )
        if tokens.numel():
            lo, hi = (int(v) for v in torch.aminmax(tokens))
            if lo < 0 or hi >= self.n_tokens_vocab:
                raise ValueError(
                    f"token ids must lie in [0, {self.n_tokens_vocab}), got range [{lo}, {hi}]"
                )
        flat = cols * self.n_tokens_vocab + tokens[rows]  # [m], index into [f * vocab]
        # in place on flat views: a batch-sized [f, vocab] copy would double peak memory
        self.mass.view(-1).index_add_(0, flat, values.detach().double())
        self.fires.view(-1).index_add_(0, flat, torch.ones_like(flat))
        self.token_counts += torch.bincount(tokens, minlength=self.n_tokens_vocab)

    def compute(self) -> tuple[Tensor, Tensor, Tensor]:
        """``(mass [n_features, vocab], fires [n_features, vocab], token_counts [vocab])``."""
        return self.mass, self.fires, self.token_counts


def proxy_sensitivity(
    fires: Int[Tensor, "f v"], token_counts: Int[Tensor, " v"], vocab_mask: Bool[Tensor, "*f v"]
) -> Float[Tensor, " f"]:
    """Fraction of proxy-positive token occurrences on which each feature fired.

    ``Σ_{t in proxy} fires[j, t] / Σ_{t in proxy} token_counts[t]``; NaN for a feature whose
    proxy tokens never occurred.

    Args:
        fires: Firing counts per feature and token (:class:`FiringCounts`).
        token_counts: Occurrences of each token.
        vocab_mask: Proxy membership per token, ``[v]`` for all features or ``[f, v]``.
    """
    mask = vocab_mask.to(fires.device).expand_as(fires)
    hits = (fires * mask).sum(dim=1).double()
    total = (token_counts.unsqueeze(0) * mask).sum(dim=1).double()
    return torch.where(total > 0, hits / total.clamp(min=1), torch.nan)
