"""Functional helpers for metrics fed with sparse entries ``(rows, cols, values)``.

SAE activations are ~99% zeros, so the analysis metrics accept just the nonzero entries of an
``[n, n_features]`` matrix. Entries are sorted by column (feature), then row, where noted.
The entries themselves are ``sae_lightning.sparse.SparseEntries``.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any, TypeVar

import torch
from jaxtyping import Float, Int
from torch import Tensor

_F = TypeVar("_F", bound=Callable[..., None])


def counts_as_update(method: _F) -> _F:
    """Make a second update method of a torchmetrics ``Metric`` behave like ``update``.

    torchmetrics wraps only ``update``: it drops the cached ``compute()`` result and counts
    the call (``compute`` warns when nothing was counted). A method such as
    ``update_entries`` must do the same, or a ``compute`` after it returns a stale result.
    """

    @functools.wraps(method)
    def wrapped(self: Any, *args: Any, **kwargs: Any) -> None:
        self._computed = None
        self._update_count += 1
        with torch.no_grad():
            method(self, *args, **kwargs)

    return wrapped  # type: ignore[return-value]


def check_entries(**arrays: Tensor) -> None:
    """Raise unless every named tensor is 1-D and all have one length (naming them)."""
    shapes = [tuple(a.shape) for a in arrays.values()]
    if any(len(s) != 1 for s in shapes) or len(set(shapes)) != 1:
        names = ", ".join(arrays)
        raise ValueError(f"{names} must be 1-D of one length, got {[list(s) for s in shapes]}")


def segment_rank(cols: Int[Tensor, " m"], n_segments: int) -> Int[Tensor, " m"]:
    """Position of each entry within its run of equal ``cols`` (``cols`` must be sorted)."""
    counts = torch.bincount(cols, minlength=n_segments)
    starts = counts.cumsum(0) - counts  # [n_segments]
    return torch.arange(cols.numel(), device=cols.device) - starts[cols]


def segment_sum(
    cols: Int[Tensor, " nnz"], values: Float[Tensor, " nnz"], n_cols: int
) -> Float[Tensor, " n_cols"]:
    """Sum of ``values`` per column, in float64."""
    return torch.zeros(n_cols, dtype=torch.float64, device=values.device).index_add_(
        0, cols, values.double()
    )
