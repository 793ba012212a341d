"""The firing entries of a batch: SAE features are sparse, so criteria read only these.

A trained SAE fires a few dozen of its thousands of features per token, so a batch's
``[n, n_features]`` activations are ~99% zeros. Every statistic the criteria keep (top-k,
histograms of nonzero activations, firing counts, sums for correlations) only needs the
nonzero entries, so they are extracted once per batch, sorted by feature and then by
position, and shared: each criterion then costs ``O(nnz)`` instead of ``O(n * n_features)``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from jaxtyping import Float, Int
from torch import Tensor

from sae_lightning.metrics.sparse import nonzero_entries, transpose_matmul


@dataclass(frozen=True)
class FiringEntries:
    """The entries ``acts[rows[i], cols[i]] = values[i] > 0`` of an ``[n_rows, n_features]``
    activation matrix, sorted by ``cols`` (feature) and, within a feature, by ``rows``."""

    rows: Int[Tensor, " nnz"]
    """Row (flattened batch position) of each entry."""
    cols: Int[Tensor, " nnz"]
    """Column (analysed feature, in ``AnalysisContext.features`` order) of each entry."""
    values: Float[Tensor, " nnz"]
    """The activations, in the input's dtype."""
    n_rows: int
    n_features: int

    def counts(self) -> Int[Tensor, " n_features"]:
        """Entries per feature (tokens on which each feature fired)."""
        return torch.bincount(self.cols, minlength=self.n_features)

    def transpose_matmul(self, y: Float[Tensor, "n_rows d"]) -> Float[Tensor, "n_features d"]:
        """``acts.T @ y`` from the entries alone, ``O(nnz * d)``, in ``y``'s dtype."""
        if y.shape[0] != self.n_rows:
            raise ValueError(f"y must have {self.n_rows} rows like acts, got {list(y.shape)}")
        return transpose_matmul(self.rows, self.cols, self.values, self.n_features, y)

    def segment_max(self) -> Float[Tensor, " n_features"]:
        """Largest entry per feature (0 for a feature without entries)."""
        out = self.values.new_zeros(self.n_features)
        return out.scatter_reduce(0, self.cols, self.values, reduce="amax", include_self=True)


def firing_entries(acts: Float[Tensor, "n n_features"]) -> FiringEntries:
    """The entries of ``acts`` that are ``> 0``, sorted by feature then row.

    ``nonzero`` walks the matrix once in memory order (row-major: sorted by row); a stable
    sort of the (few) entries by column then gives the feature-major order without a
    transposed copy of the whole matrix.
    """
    if acts.ndim != 2:
        raise ValueError(f"acts must be [n, n_features], got {list(acts.shape)}")
    rows, cols, values = nonzero_entries(acts)  # sorted by row
    order = torch.sort(cols, stable=True).indices
    return FiringEntries(rows[order], cols[order], values[order], acts.shape[0], acts.shape[1])
