"""Geometric median by Weiszfeld's algorithm, vectorised over points and batches."""

from __future__ import annotations

import torch
from jaxtyping import Float
from torch import Tensor


def geometric_median(
    x: Float[Tensor, "*batch n d"], max_iter: int = 100, tol: float = 1e-6
) -> Float[Tensor, "*batch d"]:
    """The point minimising the sum of Euclidean distances to the rows of ``x``.

    Weiszfeld's iteration: start at the mean and repeatedly take the average of the points
    weighted by the inverse of their distance to the current estimate. Leading dimensions
    are independent problems solved together; iteration stops when every estimate moved by
    less than ``tol`` times the data's scale, or after ``max_iter`` steps.

    Args:
        x: Points, ``n`` of them in ``d`` dimensions, with any leading batch dimensions.
        max_iter: Maximum number of Weiszfeld steps.
        tol: Relative tolerance on the step length.

    Returns:
        The geometric median of each batch of points. Computed in float32 at least, returned
        in ``x``'s dtype.

    Raises:
        ValueError: If ``x`` has fewer than two dimensions or no points, or if ``max_iter``
            or ``tol`` is not positive.

    Example:
        >>> geometric_median(torch.tensor([[0.0], [1.0], [5.0]]))
        tensor([1.])
    """
    if x.ndim < 2 or x.shape[-2] == 0:
        raise ValueError(f"x must have shape [*batch, n, d] with n >= 1, got {tuple(x.shape)}")
    if max_iter < 1:
        raise ValueError(f"max_iter must be a positive integer, got {max_iter}")
    if tol <= 0:
        raise ValueError(f"tol must be positive, got {tol}")
    points = x.to(torch.promote_types(x.dtype, torch.float32))
    median = points.mean(dim=-2)  # [*batch, d]
    # Scale of the data, so tol and the distance floor are relative.
    scale = (points - median.unsqueeze(-2)).norm(dim=-1).amax(dim=-1).clamp_min(1e-12)  # [*batch]
    eps = 1e-10 * scale.unsqueeze(-1)  # [*batch, 1]; floor on distances to avoid 1/0 at a point
    for _ in range(max_iter):
        dist = (points - median.unsqueeze(-2)).norm(dim=-1)  # [*batch, n]
        weights = 1.0 / dist.clamp_min(eps)  # [*batch, n]
        new = (weights.unsqueeze(-1) * points).sum(dim=-2) / weights.sum(dim=-1, keepdim=True)
        step = (new - median).norm(dim=-1)  # [*batch]
        median = new
        if bool((step <= tol * scale).all()):
            break
    return median.to(x.dtype)
