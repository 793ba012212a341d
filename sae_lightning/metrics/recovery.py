"""How well learned decoder directions recover a known dictionary (synthetic data)."""

from __future__ import annotations

from jaxtyping import Float
from torch import Tensor


def best_cosines(true: Float[Tensor, "n d"], learned: Float[Tensor, "m d"]) -> Float[Tensor, " n"]:
    """For each true direction, its largest cosine similarity with any learned direction
    (zero rows count as cosine 0)."""
    if true.ndim != 2 or learned.ndim != 2 or true.shape[1] != learned.shape[1]:
        raise ValueError(
            f"true [n, d] and learned [m, d] must share d, got {list(true.shape)} and "
            f"{list(learned.shape)}"
        )
    t = true.double() / true.double().norm(dim=1, keepdim=True).clamp(min=1e-12)
    w = learned.double() / learned.double().norm(dim=1, keepdim=True).clamp(min=1e-12)
    return (t @ w.T).amax(dim=1)  # [n]


def mmcs(true: Float[Tensor, "n d"], learned: Float[Tensor, "m d"]) -> float:
    """Mean max cosine similarity: the mean over true features of :func:`best_cosines`."""
    return float(best_cosines(true, learned).mean())


def recovered_fraction(
    true: Float[Tensor, "n d"], learned: Float[Tensor, "m d"], threshold: float = 0.9
) -> float:
    """Fraction of true features with a learned direction at cosine above ``threshold``."""
    return float((best_cosines(true, learned) > threshold).double().mean())
