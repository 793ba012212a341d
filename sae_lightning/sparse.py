"""The one sparse type: the firing entries of a ``[n_rows, n_features]`` activation matrix.

SAE codes are sparse: a trained SAE fires a few dozen of its thousands of features per
token. Training and analysis both work on the entries alone, in two orders of one type:

- row-major (``order="row"``: rows ascending, features ascending within a row), CSR over
  tokens: the training step's gather / scatter decoder (``saes/sparse_codes.py``) reads
  each token's active latents through ``row_pointers()``;
- feature-major (``order="feature"``: features ascending, rows ascending within a
  feature), CSR over features: the analysis criteria's per-feature statistics (top-k,
  histograms, firing counts, sums for correlations) cost ``O(nnz)`` instead of
  ``O(n * n_features)``, and ``transpose_matmul`` is a CSR product.

``by_row()`` and ``by_feature()`` convert (a stable sort of the entries, never a transposed
copy of the dense matrix).
"""

from __future__ import annotations

import dataclasses
import warnings
from dataclasses import dataclass
from typing import Literal

import torch
from jaxtyping import Float, Int
from torch import Tensor

Order = Literal["row", "feature"]


@dataclass(frozen=True)
class SparseEntries:
    """The entries ``acts[rows[i], cols[i]] = values[i]`` of an ``[n_rows, n_features]``
    matrix (every other entry is 0), sorted in ``order``."""

    rows: Int[Tensor, " nnz"]
    """Row (token, flattened batch position) of each entry."""
    cols: Int[Tensor, " nnz"]
    """Column (feature; in analysis, in ``AnalysisContext.features`` order) of each entry."""
    values: Float[Tensor, " nnz"]
    """The activations (in training, differentiable)."""
    n_rows: int
    n_features: int
    order: Order = "feature"
    """``"row"``: by row, then feature; ``"feature"``: by feature, then row."""
    crow: Int[Tensor, " n_rows_plus_1"] | None = dataclasses.field(default=None, compare=False)
    """Row pointers if already known (row order only); ``row_pointers()`` computes them."""

    def row_pointers(self) -> Int[Tensor, " n_rows_plus_1"]:
        """CSR row pointers: the entries of row r are ``crow[r]:crow[r + 1]`` (row order)."""
        if self.order != "row":
            raise ValueError("row pointers need row-major entries: call by_row() first")
        if self.crow is not None:
            return self.crow
        crow = self.rows.new_zeros(self.n_rows + 1)
        crow[1:] = torch.bincount(self.rows, minlength=self.n_rows).cumsum(0)
        return crow

    def with_values(self, values: Float[Tensor, " nnz"]) -> SparseEntries:
        """The same pattern with other values (e.g. pre-activations instead of codes)."""
        return dataclasses.replace(self, values=values)

    def _sorted(self, key: Tensor, order: Order) -> SparseEntries:
        perm = torch.sort(key, stable=True).indices  # stable: the other index stays ascending
        rows, cols, values = self.rows[perm], self.cols[perm], self.values[perm]
        return SparseEntries(rows, cols, values, self.n_rows, self.n_features, order)

    def by_row(self) -> SparseEntries:
        """The entries in row-major order (``self`` if already)."""
        return self if self.order == "row" else self._sorted(self.rows, "row")

    def by_feature(self) -> SparseEntries:
        """The entries in feature-major order (``self`` if already)."""
        return self if self.order == "feature" else self._sorted(self.cols, "feature")

    def to_dense(self) -> Float[Tensor, "n_rows n_features"]:
        """The dense matrix (differentiable through ``values``)."""
        dense = self.values.new_zeros(self.n_rows, self.n_features)
        return dense.index_put_((self.rows, self.cols), self.values)  # in place: no copy

    def counts(self) -> Int[Tensor, " n_features"]:
        """Entries per feature (tokens on which each feature fired)."""
        return torch.bincount(self.cols, minlength=self.n_features)

    def segment_max(self) -> Float[Tensor, " n_features"]:
        """Largest entry per feature (0 for a feature without entries)."""
        out = self.values.new_zeros(self.n_features)
        return out.scatter_reduce(0, self.cols, self.values, reduce="amax", include_self=True)

    def transpose_matmul(self, y: Float[Tensor, "n_rows d"]) -> Float[Tensor, "n_features d"]:
        """``acts.T @ y`` from the entries alone: a CSR product over features, ``O(nnz * d)``,
        in ``y``'s dtype.

        Raises:
            ValueError: If ``y`` does not have ``n_rows`` rows.
        """
        if y.ndim != 2 or y.shape[0] != self.n_rows:
            raise ValueError(f"y must have {self.n_rows} rows like acts, got {list(y.shape)}")
        if not self.cols.numel():
            return y.new_zeros(self.n_features, y.shape[1])
        e = self.by_feature()
        ccol = e.cols.new_zeros(self.n_features + 1)
        ccol[1:] = torch.bincount(e.cols, minlength=self.n_features).cumsum(0)
        with warnings.catch_warnings():  # "sparse CSR support is in beta", once per process
            warnings.simplefilter("ignore", UserWarning)
            sparse = torch.sparse_csr_tensor(
                ccol,
                e.rows,
                e.values.detach().to(y.dtype),
                size=(self.n_features, self.n_rows),
                check_invariants=False,  # sorted by construction; the check is an extra pass
            )
        return sparse @ y


def firing_entries(acts: Float[Tensor, "n n_features"], order: Order = "feature") -> SparseEntries:
    """The entries of ``acts`` that are ``> 0`` (detached), in ``order``.

    ``nonzero`` walks the matrix once in memory order (row-major: sorted by row); the
    feature order is then a stable sort of the (few) entries by feature, without a
    transposed copy of the whole matrix.

    Raises:
        ValueError: If ``acts`` is not 2-D.
    """
    if acts.ndim != 2:
        raise ValueError(f"acts must be [n, n_features], got {list(acts.shape)}")
    acts = acts.detach()
    rows, cols = (acts > 0).nonzero(as_tuple=True)  # sorted by row
    entries = SparseEntries(rows, cols, acts[rows, cols], acts.shape[0], acts.shape[1], "row")
    return entries.by_feature() if order == "feature" else entries
