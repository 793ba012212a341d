"""Reconstruction and sparsity terms of the SAE objective (pure functions + one callable)."""

from __future__ import annotations

from dataclasses import dataclass

from jaxtyping import Float
from torch import Tensor

from sae_lightning.saes.base import SAE, SAEOutput


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
    """Sparsity term before the coefficient (decoder-norm weighted if configured)."""


@dataclass
class L1Loss:
    """MSE reconstruction plus an L1 penalty whose coefficient warms up linearly from 0.

    Example:
        >>> loss_fn = L1Loss(l1_coeff=5.0, l1_warmup_steps=100)
        >>> loss_fn.coefficient(50)
        2.5
    """

    l1_coeff: float = 5.0
    """Weight of the L1 term after warm-up; must be >= 0."""
    weight_by_decoder_norm: bool = False
    """Multiply each |f_i| by its decoder row's norm ||W_dec_i||."""
    l1_warmup_steps: int = 0
    """Steps over which the coefficient ramps linearly from 0 to l1_coeff; 0 disables."""

    def __post_init__(self) -> None:
        if not self.l1_coeff >= 0:  # also rejects NaN
            raise ValueError(f"l1_coeff must be >= 0, got {self.l1_coeff}")
        steps = self.l1_warmup_steps
        if isinstance(steps, bool) or not isinstance(steps, int) or steps < 0:
            raise ValueError(f"l1_warmup_steps must be an integer >= 0, got {steps!r}")

    def coefficient(self, step: int) -> float:
        """The L1 coefficient at optimiser step ``step`` (0-based).

        Raises:
            ValueError: If ``step`` is negative.
        """
        if step < 0:
            raise ValueError(f"step must be >= 0, got {step}")
        if self.l1_warmup_steps == 0:
            return self.l1_coeff
        return self.l1_coeff * min(1.0, step / self.l1_warmup_steps)

    def __call__(
        self, x: Float[Tensor, "*batch d_in"], out: SAEOutput, sae: SAE, step: int
    ) -> LossOutput:
        """The loss of ``sae``'s output ``out`` on input ``x`` at optimiser step ``step``."""
        mse_term = mse(x, out.x_hat)
        norms = sae.decoder_norms() if self.weight_by_decoder_norm else None  # [d_sae]
        l1_term = l1(out.feature_acts, norms)
        return LossOutput(
            loss=mse_term + self.coefficient(step) * l1_term, mse=mse_term, l1=l1_term
        )
