"""The terms every SAE loss is built from: reconstruction, L1, the warm-up of a sparsity
coefficient, and the record of one step's terms."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from jaxtyping import Float
from torch import Tensor


def mse(x: Float[Tensor, "*batch d_in"], x_hat: Float[Tensor, "*batch d_in"]) -> Float[Tensor, ""]:
    """Mean over tokens of the per-token summed squared error ``||x_hat - x||^2``.

    Summed over ``d_in`` as SAELens does, so that an ``l1_coeff`` means about the same
    trade-off here as there (for activations of the same scale).

    Raises:
        ValueError: If ``x`` and ``x_hat`` have different shapes.
    """
    if x.shape != x_hat.shape:
        raise ValueError(
            f"x and x_hat must have the same shape, got {tuple(x.shape)} and {tuple(x_hat.shape)}"
        )
    per_token = (x_hat - x).pow(2).sum(dim=-1)  # [*batch]
    return per_token.mean()


def l1(
    feature_acts: Float[Tensor, "*batch d_sae"],
    decoder_norms: Float[Tensor, " d_sae"] | None = None,
) -> Float[Tensor, ""]:
    """Mean over tokens of ``sum_i |f_i| * ||W_dec_i||`` (or ``sum_i |f_i|`` without norms).

    Weighting by the decoder norms (Anthropic's April 2024 update) stops the optimiser from
    shrinking activations and growing decoder rows to dodge the penalty.

    Raises:
        ValueError: If ``decoder_norms`` is not a vector of length ``d_sae``.
    """
    abs_acts = feature_acts.abs()  # [*batch, d_sae]
    if decoder_norms is not None:
        if decoder_norms.shape != (feature_acts.shape[-1],):
            raise ValueError(
                f"decoder_norms must have shape ({feature_acts.shape[-1]},) to match "
                f"feature_acts' d_sae, got {tuple(decoder_norms.shape)}"
            )
        abs_acts = abs_acts * decoder_norms  # [*batch, d_sae]
    return abs_acts.sum(dim=-1).mean()


@dataclass(frozen=True)
class LossOutput:
    """The terms of one step's loss."""

    loss: Float[Tensor, ""]
    """The total to minimise: ``mse + coefficient(step) * l1``."""
    mse: Float[Tensor, ""]
    """Reconstruction term (squared error summed over d_in, mean over tokens)."""
    l1: Float[Tensor, ""]
    """Sparsity term before the coefficient: L1 (decoder-norm weighted if configured) for
    ReLU and Gated SAEs, L0 for JumpReLU, 0 for TopK (sparse by construction)."""
    aux: Float[Tensor, ""] | None = None
    """Auxiliary term before its coefficient (TopK's AuxK, Gated's gate reconstruction)."""


def warmed_up(coeff: float, warmup_steps: int, step: int) -> float:
    """``coeff`` ramped linearly from 0 over ``warmup_steps`` optimiser steps (0: no ramp).

    Raises:
        ValueError: If ``step`` is negative.
    """
    if step < 0:
        raise ValueError(f"step must be >= 0, got {step}")
    if warmup_steps == 0:
        return coeff
    return coeff * min(1.0, step / warmup_steps)


def check_coeff(name: str, value: float) -> None:
    if not value >= 0:  # also rejects NaN
        raise ValueError(f"{name} must be >= 0, got {value}")


def check_steps(name: str, steps: int) -> None:
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 0:
        raise ValueError(f"{name} must be an integer >= 0, got {steps!r}")


class WarmedPenalty:
    """A loss whose sparsity coefficient ramps linearly from 0 over its first steps.

    A subclass (a dataclass) names its two fields in ``coeff_field`` and ``warmup_field``
    (``l1_coeff`` / ``l1_warmup_steps`` by default; JumpReLU's are ``l0_...``), which keep
    the names its YAML options have; the checks and :meth:`coefficient` are written here once.
    """

    coeff_field: ClassVar[str] = "l1_coeff"
    warmup_field: ClassVar[str] = "l1_warmup_steps"

    def __post_init__(self) -> None:
        check_coeff(self.coeff_field, getattr(self, self.coeff_field))
        check_steps(self.warmup_field, getattr(self, self.warmup_field))

    def coefficient(self, step: int) -> float:
        """The sparsity coefficient at optimiser step ``step`` (0-based).

        Raises:
            ValueError: If ``step`` is negative.
        """
        return warmed_up(getattr(self, self.coeff_field), getattr(self, self.warmup_field), step)
