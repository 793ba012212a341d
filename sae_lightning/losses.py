"""Reconstruction and sparsity terms of the SAE objective (pure functions + one callable)."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from jaxtyping import Float
from torch import Tensor

from sae_lightning.saes.base import SAE, SAEOutput
from sae_lightning.saes.crosscoder import CrosscoderSAE
from sae_lightning.saes.jumprelu import step as jump_step
from sae_lightning.saes.matryoshka import MatryoshkaSAE
from sae_lightning.saes.sparse_codes import sparse_decode, sparse_l1
from sae_lightning.saes.topk import TopKSAE


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


def _check_coeff(name: str, value: float) -> None:
    if not value >= 0:  # also rejects NaN
        raise ValueError(f"{name} must be >= 0, got {value}")


def _check_steps(name: str, steps: int) -> None:
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 0:
        raise ValueError(f"{name} must be an integer >= 0, got {steps!r}")


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
        _check_coeff("l1_coeff", self.l1_coeff)
        _check_steps("l1_warmup_steps", self.l1_warmup_steps)

    def coefficient(self, step: int) -> float:
        """The L1 coefficient at optimiser step ``step`` (0-based).

        Raises:
            ValueError: If ``step`` is negative.
        """
        return warmed_up(self.l1_coeff, self.l1_warmup_steps, step)

    def __call__(
        self, x: Float[Tensor, "*batch d_in"], out: SAEOutput, sae: SAE, step: int
    ) -> LossOutput:
        """The loss of ``sae``'s output ``out`` on input ``x`` at optimiser step ``step``."""
        mse_term = mse(x, out.x_hat)
        if out.codes is not None:  # the sparse path: decoder norms of active latents only
            l1_term = sparse_l1(out.codes, sae.W_dec if self.weight_by_decoder_norm else None)
        else:
            norms = sae.decoder_norms() if self.weight_by_decoder_norm else None  # [d_sae]
            l1_term = l1(out.feature_acts, norms)
        return LossOutput(
            loss=mse_term + self.coefficient(step) * l1_term, mse=mse_term, l1=l1_term
        )


@dataclass
class TopKLoss:
    """MSE plus the AuxK loss (Gao et al. 2024) for TopK and BatchTopK SAEs.

    AuxK reconstructs the residual ``x - x_hat`` from the top ``k_aux`` *dead* latents (those
    that have not fired for ``dead_tokens`` training tokens), normalised by the residual's
    variance, so that dead latents get gradient and come back.

    Example:
        >>> TopKLoss(auxk_coeff=0.0).dead_tokens
        1000000
    """

    auxk_coeff: float = 1 / 32
    """Weight of the AuxK term; 0 disables it."""
    k_aux: int = 512
    """Dead latents used per token by AuxK (Gao et al.: d_in / 2)."""
    dead_tokens: int = 1_000_000
    """A latent silent for this many training tokens counts as dead."""

    def __post_init__(self) -> None:
        _check_coeff("auxk_coeff", self.auxk_coeff)
        for name in ("k_aux", "dead_tokens"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")

    def auxk(self, x: Tensor, out: SAEOutput, sae: TopKSAE) -> Float[Tensor, ""]:
        """The normalised AuxK term (0 when no latent is dead)."""
        dead = sae.tokens_since_fired >= self.dead_tokens  # [d_sae]
        n_dead = int(dead.sum())
        if n_dead == 0:
            return x.new_zeros(())
        x2 = x.reshape(-1, x.shape[-1])
        residual = (x2 - out.x_hat.reshape(x2.shape)).detach()  # [batch, d_in]
        e_hat = sae.auxk_reconstruction(x2, dead, self.k_aux)  # [batch, d_in]
        scale = min(n_dead / self.k_aux, 1.0)  # fewer dead latents than k_aux: weaker term
        variance = (residual - residual.mean(0)).pow(2).sum(-1).mean().clamp_min(1e-12)
        return scale * mse(residual, e_hat) / variance

    def __call__(self, x: Tensor, out: SAEOutput, sae: SAE, step: int) -> LossOutput:
        """The loss of ``sae``'s output ``out`` on input ``x`` at optimiser step ``step``.

        Raises:
            TypeError: If ``sae`` is not a TopK-style SAE.
        """
        if not isinstance(sae, TopKSAE):
            raise TypeError(
                f"TopKLoss needs a TopK or BatchTopK SAE, got {type(sae).__name__}; "
                "use loss=l1 (ReLU), loss=jumprelu or loss=gated"
            )
        if isinstance(sae, MatryoshkaSAE) and not isinstance(self, MatryoshkaLoss):
            raise TypeError(  # it would train as a plain BatchTopK: no prefix losses
                "TopKLoss ignores a Matryoshka SAE's prefixes; use loss=matryoshka"
            )
        mse_term = mse(x, out.x_hat)
        use_aux = self.auxk_coeff > 0 and torch.is_grad_enabled() and sae.training
        aux = self.auxk(x, out, sae) if use_aux else x.new_zeros(())
        return LossOutput(
            loss=mse_term + self.auxk_coeff * aux, mse=mse_term, l1=x.new_zeros(()), aux=aux
        )


@dataclass
class MatryoshkaLoss(TopKLoss):
    """TopKLoss plus the reconstruction error of every inner prefix of a Matryoshka SAE.

    ``loss = sum_m mse(x, x_hat_m) + auxk_coeff * AuxK``: the prefix errors are summed, not
    averaged, as in Bussmann et al. (2025) and SAELens 6.54 (``MatryoshkaBatchTopKTrainingSAE``
    adds each inner level's MSE to the full SAE's loss). AuxK is BatchTopK's, on the full
    dictionary's residual. ``mse`` reports the full dictionary's term alone.

    Example:
        >>> MatryoshkaLoss(auxk_coeff=0.0).k_aux
        512
    """

    def __call__(self, x: Tensor, out: SAEOutput, sae: SAE, step: int) -> LossOutput:
        """The loss of ``sae``'s output ``out`` on input ``x`` at optimiser step ``step``.

        Raises:
            TypeError: If ``sae`` is not a Matryoshka SAE.
        """
        if not isinstance(sae, MatryoshkaSAE):
            raise TypeError(
                f"MatryoshkaLoss needs a Matryoshka SAE, got {type(sae).__name__}; "
                "use loss=topk for TopK and BatchTopK SAEs"
            )
        outer = super().__call__(x, out, sae, step)
        x2 = x.reshape(-1, x.shape[-1])  # [batch, d_in]
        inner = [mse(x2, x_hat) for x_hat in sae.inner_reconstructions(out)]
        loss = outer.loss + torch.stack(inner).sum() if inner else outer.loss
        return LossOutput(loss=loss, mse=outer.mse, l1=outer.l1, aux=outer.aux)


def _require_pre_acts(out: SAEOutput, who: str) -> Tensor:
    if out.pre_acts is None:
        raise TypeError(f"{who} needs an SAE whose forward returns pre_acts")
    return out.pre_acts


@dataclass
class JumpReLULoss:
    """MSE plus ``l0_coeff`` times the L0 norm, whose gradient reaches the thresholds through
    the straight-through estimator (Rajamanoharan et al. 2024).

    Example:
        >>> JumpReLULoss(l0_coeff=0.01, l0_warmup_steps=10).coefficient(5)
        0.005
    """

    l0_coeff: float = 0.01
    """Weight of the L0 term after warm-up."""
    l0_warmup_steps: int = 0
    """Steps over which the coefficient ramps linearly from 0; 0 disables."""

    def __post_init__(self) -> None:
        _check_coeff("l0_coeff", self.l0_coeff)
        _check_steps("l0_warmup_steps", self.l0_warmup_steps)

    def coefficient(self, step: int) -> float:
        """The L0 coefficient at optimiser step ``step``."""
        return warmed_up(self.l0_coeff, self.l0_warmup_steps, step)

    def __call__(self, x: Tensor, out: SAEOutput, sae: SAE, step: int) -> LossOutput:
        pre = _require_pre_acts(out, "JumpReLULoss")
        threshold = getattr(sae, "threshold", None)
        if not isinstance(threshold, torch.nn.Parameter):
            raise TypeError(f"JumpReLULoss needs a JumpReLU SAE, got {type(sae).__name__}")
        mse_term = mse(x, out.x_hat)
        if out.pre_codes is not None:  # sparse: the entries cover every count and gradient
            pre_codes = out.pre_codes
            steps = jump_step(pre_codes.values, threshold[pre_codes.cols], sae.bandwidth)
            l0 = steps.sum() / pre_codes.n_rows
        else:
            l0 = jump_step(pre, threshold, sae.bandwidth).sum(-1).mean()
        return LossOutput(loss=mse_term + self.coefficient(step) * l0, mse=mse_term, l1=l0)


@dataclass
class GatedLoss:
    """The Gated SAE loss: MSE, L1 of ``relu(pi_gate)`` weighted by decoder norms, and the
    auxiliary reconstruction of ``x`` from ``relu(pi_gate)`` through the frozen decoder.

    Example:
        >>> GatedLoss(l1_coeff=2.0, l1_warmup_steps=4).coefficient(1)
        0.5
    """

    l1_coeff: float = 1.0
    """Weight of the L1 term after warm-up."""
    l1_warmup_steps: int = 0
    """Steps over which the coefficient ramps linearly from 0; 0 disables."""

    def __post_init__(self) -> None:
        _check_coeff("l1_coeff", self.l1_coeff)
        _check_steps("l1_warmup_steps", self.l1_warmup_steps)

    def coefficient(self, step: int) -> float:
        """The L1 coefficient at optimiser step ``step``."""
        return warmed_up(self.l1_coeff, self.l1_warmup_steps, step)

    def __call__(self, x: Tensor, out: SAEOutput, sae: SAE, step: int) -> LossOutput:
        gate = torch.relu(_require_pre_acts(out, "GatedLoss"))  # [*batch, d_sae]
        mse_term = mse(x, out.x_hat)
        if out.pre_codes is not None:  # sparse: relu(pi_gate) on the open gates
            gate_codes = out.pre_codes.with_values(torch.relu(out.pre_codes.values))
            l1_term = sparse_l1(gate_codes, sae.W_dec)
            recon = sparse_decode(gate_codes, sae.W_dec.detach()).reshape(x.shape)
        else:
            l1_term = l1(gate, sae.decoder_norms())
            recon = gate @ sae.W_dec.detach()  # [*batch, d_in]
        aux = mse(x, recon + sae.b_dec.detach())
        loss = mse_term + self.coefficient(step) * l1_term + aux
        return LossOutput(loss=loss, mse=mse_term, l1=l1_term, aux=aux)


@dataclass
class CrosscoderLoss:
    """The crosscoder loss (Lindsey et al. 2024): the squared error summed over every source,
    plus L1 of each latent weighted by the SUM over sources of its decoder blocks' norms,
    ``sum_i |f_i| * sum_s ||W_dec[i, block s]||``; the coefficient warms up from 0.

    The squared error of the concatenated ``x`` summed over ``d_in`` is the sum of the
    sources' errors. Summing the block norms (an L1 over sources, not the L2 norm of the
    whole row) makes a latent shared by two sources cost as much as two exclusive ones, so
    the crosscoder has no bias towards calling a feature shared; it is also invariant to
    rescaling a latent against its decoder row (see ``CrosscoderSAE`` on unit norm).

    Example:
        >>> CrosscoderLoss(l1_coeff=2.0, l1_warmup_steps=10).coefficient(5)
        1.0
    """

    l1_coeff: float = 2.0
    """Weight of the L1 term after warm-up; must be >= 0."""
    l1_warmup_steps: int = 0
    """Steps over which the coefficient ramps linearly from 0 to l1_coeff; 0 disables."""

    def __post_init__(self) -> None:
        _check_coeff("l1_coeff", self.l1_coeff)
        _check_steps("l1_warmup_steps", self.l1_warmup_steps)

    def coefficient(self, step: int) -> float:
        """The L1 coefficient at optimiser step ``step`` (0-based)."""
        return warmed_up(self.l1_coeff, self.l1_warmup_steps, step)

    def __call__(self, x: Tensor, out: SAEOutput, sae: SAE, step: int) -> LossOutput:
        """The loss of ``sae``'s output ``out`` on input ``x`` at optimiser step ``step``.

        Raises:
            TypeError: If ``sae`` is not a crosscoder.
        """
        if not isinstance(sae, CrosscoderSAE):
            raise TypeError(
                f"CrosscoderLoss needs a CrosscoderSAE, got {type(sae).__name__}; use loss=l1 "
                "with weight_by_decoder_norm=true for the same penalty on a one-source SAE"
            )
        mse_term = mse(x, out.x_hat)
        if out.codes is not None:  # the sparse path: the active latents' blocks only
            codes = out.codes
            active, inverse = codes.cols.unique(return_inverse=True)
            weights = sae.source_blocks(sae.W_dec[active]).norm(dim=-1).sum(-1)  # [n_active]
            l1_term = (codes.values.abs() * weights[inverse]).sum() / codes.n_rows
        else:
            l1_term = l1(out.feature_acts, sae.source_decoder_norms().sum(-1))
        loss = mse_term + self.coefficient(step) * l1_term
        return LossOutput(loss=loss, mse=mse_term, l1=l1_term)
