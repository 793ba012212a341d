"""Losses with a warmed-up sparsity penalty: ReLU's L1, JumpReLU's L0, Gated's, and the
crosscoder's L1 weighted by its per-source decoder norms."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
from jaxtyping import Float
from torch import Tensor

from sae_lightning.losses.terms import LossOutput, WarmedPenalty, l1, mse
from sae_lightning.saes.base import SAE, SAEOutput
from sae_lightning.saes.crosscoder import CrosscoderSAE
from sae_lightning.saes.jumprelu import step as jump_step
from sae_lightning.saes.sparse_codes import sparse_decode, sparse_l1


@dataclass
class L1Loss(WarmedPenalty):
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


def _require_pre_acts(out: SAEOutput, who: str) -> Tensor:
    if out.pre_acts is None:
        raise TypeError(f"{who} needs an SAE whose forward returns pre_acts")
    return out.pre_acts


@dataclass
class JumpReLULoss(WarmedPenalty):
    """MSE plus ``l0_coeff`` times the L0 norm, whose gradient reaches the thresholds through
    the straight-through estimator (Rajamanoharan et al. 2024).

    Example:
        >>> JumpReLULoss(l0_coeff=0.01, l0_warmup_steps=10).coefficient(5)
        0.005
    """

    coeff_field: ClassVar[str] = "l0_coeff"
    warmup_field: ClassVar[str] = "l0_warmup_steps"

    l0_coeff: float = 0.01
    """Weight of the L0 term after warm-up."""
    l0_warmup_steps: int = 0
    """Steps over which the coefficient ramps linearly from 0; 0 disables."""

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
class GatedLoss(WarmedPenalty):
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
class CrosscoderLoss(WarmedPenalty):
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
