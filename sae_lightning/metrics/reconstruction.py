"""Reconstruction metrics: explained variance of the SAE output and mean L0 of its codes.

Every state is a running sum reduced with ``dist_reduce_fx="sum"``, so batches, ranks and
``merge_state`` all combine exactly. Sums are kept in float64 (counts as int64).
"""

from __future__ import annotations

import torch
from jaxtyping import Float
from torch import Tensor
from torchmetrics import Metric

from sae_lightning.sparse import SparseEntries


def _check_matrix(name: str, t: Tensor, width: int) -> None:
    """Raise a clear error unless ``t`` is ``[n, width]``."""
    if t.ndim != 2 or t.shape[1] != width:
        raise ValueError(f"{name} must have shape [n, {width}], got {list(t.shape)}")


def _explained_variance_update(
    x: Float[Tensor, "n d"], x_hat: Float[Tensor, "n d"]
) -> tuple[Tensor, Tensor, Tensor, int]:
    """Batch sums: (Σ‖x − x̂‖², Σx over tokens [d], Σ‖x‖², token count), in float64."""
    x = x.detach().double()
    x_hat = x_hat.detach().double()
    sse = (x - x_hat).pow(2).sum()
    return sse, x.sum(dim=0), x.pow(2).sum(), x.shape[0]


def _explained_variance_compute(
    sse: Tensor, sum_x: Float[Tensor, " d"], sum_sq: Tensor, n: Tensor
) -> Tensor:
    """``1 - SSE / SST`` with ``SST = Σ‖x‖² − ‖Σx‖² / n`` (centred on the global mean)."""
    sst = sum_sq - sum_x.pow(2).sum() / n
    return 1.0 - sse / sst


class ExplainedVariance(Metric):
    """Fraction of the activations' total variance that the reconstruction explains.

    ``1 − Σ‖x − x̂‖² / Σ‖x − x̄‖²`` where ``x̄`` is the mean activation vector over every
    token seen, and both sums run over all tokens and all dimensions.

    Args:
        d_in: Width of the activations (states must have a fixed shape to be synced).

    Example:
        >>> metric = ExplainedVariance(d_in=4)
        >>> x = torch.randn(8, 4)
        >>> metric.update(x, x)
        >>> metric.compute().item()
        1.0
    """

    is_differentiable = False
    higher_is_better = True
    full_state_update = False

    sse: Tensor
    sum_x: Tensor
    sum_sq: Tensor
    n: Tensor

    def __init__(self, d_in: int) -> None:
        super().__init__()
        if d_in < 1:
            raise ValueError(f"d_in must be a positive int, got {d_in!r}")
        self.d_in = d_in
        zero = torch.tensor(0.0, dtype=torch.float64)
        self.add_state("sse", default=zero.clone(), dist_reduce_fx="sum")
        self.add_state(
            "sum_x", default=torch.zeros(d_in, dtype=torch.float64), dist_reduce_fx="sum"
        )
        self.add_state("sum_sq", default=zero.clone(), dist_reduce_fx="sum")
        self.add_state("n", default=torch.tensor(0, dtype=torch.long), dist_reduce_fx="sum")

    def update(self, x: Float[Tensor, "n d_in"], x_hat: Float[Tensor, "n d_in"]) -> None:
        """Add a batch of activations ``x`` and their reconstructions ``x_hat``."""
        _check_matrix("x", x, self.d_in)
        if x_hat.shape != x.shape:
            raise ValueError(f"x_hat shape {list(x_hat.shape)} != x shape {list(x.shape)}")
        sse, sum_x, sum_sq, n = _explained_variance_update(x, x_hat)
        self.sse = self.sse + sse
        self.sum_x = self.sum_x + sum_x
        self.sum_sq = self.sum_sq + sum_sq
        self.n = self.n + n

    def compute(self) -> Tensor:
        """Explained variance over everything seen since the last reset (float64 scalar)."""
        return _explained_variance_compute(self.sse, self.sum_x, self.sum_sq, self.n)


def _l0_update(feature_acts: Float[Tensor, "n d_sae"] | SparseEntries) -> tuple[Tensor, int]:
    """Batch sums: (total number of nonzero codes, token count), from the dense codes or
    their entries (the training step's sparse path: no pass over ``[n, d_sae]``)."""
    if isinstance(feature_acts, SparseEntries):
        return torch.count_nonzero(feature_acts.values.detach()), feature_acts.n_rows
    return torch.count_nonzero(feature_acts.detach()), feature_acts.shape[0]  # not a bool sum


def _l0_compute(sum_l0: Tensor, n: Tensor) -> Tensor:
    """Mean number of active features per token."""
    return sum_l0.double() / n


class MeanL0(Metric):
    """Mean over tokens of the number of nonzero features per token.

    Example:
        >>> metric = MeanL0()
        >>> metric.update(torch.tensor([[0.0, 2.0, 1.0], [0.0, 0.0, 3.0]]))
        >>> metric.compute().item()
        1.5
    """

    is_differentiable = False
    higher_is_better = None
    full_state_update = False

    sum_l0: Tensor
    n: Tensor

    def __init__(self) -> None:
        super().__init__()
        self.add_state("sum_l0", default=torch.tensor(0, dtype=torch.long), dist_reduce_fx="sum")
        self.add_state("n", default=torch.tensor(0, dtype=torch.long), dist_reduce_fx="sum")

    def update(self, feature_acts: Float[Tensor, "n d_sae"] | SparseEntries) -> None:
        """Add a batch of SAE feature activations (dense, or the sparse path's entries)."""
        if isinstance(feature_acts, Tensor) and feature_acts.ndim != 2:
            raise ValueError(
                f"feature_acts must have shape [n, d_sae], got {list(feature_acts.shape)}"
            )
        sum_l0, n = _l0_update(feature_acts)
        self.sum_l0 = self.sum_l0 + sum_l0
        self.n = self.n + n

    def compute(self) -> Tensor:
        """Mean L0 over everything seen since the last reset (float64 scalar)."""
        return _l0_compute(self.sum_l0, self.n)
