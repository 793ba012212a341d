"""Per-feature firing density, and the summaries logged from it (dead, ultralow, log10)."""

from __future__ import annotations

import torch
from jaxtyping import Float
from torch import Tensor
from torchmetrics import Metric

from sae_lightning.metrics.sparse import counts_as_update
from sae_lightning.sparse import SparseEntries


def _density_update(feature_acts: Float[Tensor, "n d_sae"]) -> tuple[Tensor, int]:
    """Batch sums: (per-feature count of tokens where it fired [d_sae], token count)."""
    return (feature_acts.detach() > 0).sum(dim=0), feature_acts.shape[0]


def _density_entries_update(codes: SparseEntries) -> tuple[Tensor, int]:
    """``_density_update`` from the entries alone: a bincount over ``nnz`` columns."""
    fired = codes.cols[codes.values.detach() > 0]
    return torch.bincount(fired, minlength=codes.n_features), codes.n_rows


def _density_compute(fire_count: Tensor, n: Tensor) -> Float[Tensor, " d_sae"]:
    """Fraction of tokens on which each feature fired."""
    return fire_count.double() / n


class FeatureDensity(Metric):
    """Fraction of tokens on which each SAE feature fired (activation ``> 0``).

    Args:
        d_sae: Number of SAE features (states must have a fixed shape to be synced).

    Example:
        >>> metric = FeatureDensity(d_sae=3)
        >>> metric.update(torch.tensor([[1.0, 0.0, 0.0], [2.0, 0.5, 0.0]]))
        >>> metric.compute().tolist()
        [1.0, 0.5, 0.0]
    """

    is_differentiable = False
    higher_is_better = None
    full_state_update = False

    fire_count: Tensor
    n: Tensor

    def __init__(self, d_sae: int) -> None:
        super().__init__()
        if d_sae < 1:
            raise ValueError(f"d_sae must be a positive int, got {d_sae!r}")
        self.d_sae = d_sae
        counts = torch.zeros(d_sae, dtype=torch.long)
        self.add_state("fire_count", default=counts, dist_reduce_fx="sum")
        self.add_state("n", default=torch.tensor(0, dtype=torch.long), dist_reduce_fx="sum")

    def update(self, feature_acts: Float[Tensor, "n d_sae"] | SparseEntries) -> None:
        """Add a batch of SAE feature activations (dense, or the sparse path's entries)."""
        if isinstance(feature_acts, SparseEntries):
            if feature_acts.n_features != self.d_sae:
                raise ValueError(
                    f"entries of {feature_acts.n_features} features, expected {self.d_sae}"
                )
            self.update_counts(*_density_entries_update(feature_acts))
            return
        if feature_acts.ndim != 2 or feature_acts.shape[1] != self.d_sae:
            raise ValueError(
                f"feature_acts must have shape [n, {self.d_sae}], got {list(feature_acts.shape)}"
            )
        self.update_counts(*_density_update(feature_acts))

    @counts_as_update
    def update_counts(self, fire_count: Tensor, n: int) -> None:
        """Add precomputed batch sums: firings per feature ``[d_sae]`` over ``n`` tokens."""
        if fire_count.shape != (self.d_sae,):
            raise ValueError(f"fire_count must be [{self.d_sae}], got {list(fire_count.shape)}")
        self.fire_count = self.fire_count + fire_count
        self.n = self.n + n

    def compute(self) -> Float[Tensor, " d_sae"]:
        """Density vector over everything seen since the last reset (float64, ``[d_sae]``)."""
        return _density_compute(self.fire_count, self.n)


def dead_fraction(density: Float[Tensor, " d_sae"]) -> Tensor:
    """Fraction of features that never fired (density exactly 0)."""
    return (density == 0).double().mean()


def ultralow_fraction(density: Float[Tensor, " d_sae"], threshold: float = 1e-5) -> Tensor:
    """Fraction of features whose density is below ``threshold`` (dead features included)."""
    return (density < threshold).double().mean()


def log10_density(density: Float[Tensor, " d_sae"], eps: float = 1e-10) -> Float[Tensor, " d_sae"]:
    """``log10(density + eps)``, for a histogram; dead features land at ``log10(eps)``."""
    return torch.log10(density + eps)
