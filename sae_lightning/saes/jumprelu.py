"""JumpReLU SAE (Rajamanoharan et al. 2024): ``f = relu(pre) * (pre > threshold)``.

The threshold gets gradients through straight-through estimators with a rectangle kernel of
width ``bandwidth`` (the pseudo-derivatives of the paper), both through the activations and
through the L0 penalty (``step``, used by ``JumpReLULoss``).

Sparse path (batch density at most ``sparse_threshold``): the entries kept are
``S = {pre > threshold} | {|pre - threshold| < bandwidth / 2}``. The first set carries every
nonzero code and every L0 count; the second is where the rectangle kernel is nonzero, so
the threshold's straight-through gradient (which reads ``dL/df`` there, even at latents that
did not fire: the decoder's SDDMM gives it) is summed over the same entries as dense.
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch
from jaxtyping import Float, Int
from torch import Tensor
from torch.autograd.function import FunctionCtx

from sae_lightning.saes.base import SAE, SAEOutput
from sae_lightning.saes.sparse_codes import (
    check_sparse_threshold,
    gather_pre,
    select_sparse,
    sparse_decode,
)
from sae_lightning.sparse import SparseEntries


def _rectangle(u: Tensor) -> Tensor:
    return ((u > -0.5) & (u < 0.5)).to(u.dtype)


class _JumpReLU(torch.autograd.Function):
    @staticmethod
    def forward(ctx: FunctionCtx, pre: Tensor, threshold: Tensor, bandwidth: float) -> Tensor:
        ctx.save_for_backward(pre, threshold)
        ctx.bandwidth = bandwidth
        return torch.relu(pre) * (pre > threshold)

    @staticmethod
    def backward(ctx: FunctionCtx, grad: Tensor):  # type: ignore[override]
        pre, threshold = ctx.saved_tensors
        eps = ctx.bandwidth
        grad_pre = grad * ((pre > threshold) & (pre > 0))
        # d/dθ [pre * H(pre - θ)] ~ -(θ / ε) K((pre - θ) / ε)
        grad_t = -(threshold / eps) * _rectangle((pre - threshold) / eps) * grad
        return grad_pre, grad_t.reshape(-1, threshold.shape[-1]).sum(0), None


class _Step(torch.autograd.Function):
    @staticmethod
    def forward(ctx: FunctionCtx, pre: Tensor, threshold: Tensor, bandwidth: float) -> Tensor:
        ctx.save_for_backward(pre, threshold)
        ctx.bandwidth = bandwidth
        return (pre > threshold).to(pre.dtype)

    @staticmethod
    def backward(ctx: FunctionCtx, grad: Tensor):  # type: ignore[override]
        pre, threshold = ctx.saved_tensors
        eps = ctx.bandwidth
        # d/dθ H(pre - θ) ~ -(1 / ε) K((pre - θ) / ε); no gradient to pre (as in the paper)
        grad_t = -(1.0 / eps) * _rectangle((pre - threshold) / eps) * grad
        return None, grad_t.reshape(-1, threshold.shape[-1]).sum(0), None


def jumprelu(pre: Tensor, threshold: Tensor, bandwidth: float) -> Tensor:
    """``relu(pre) * (pre > threshold)`` with the straight-through gradient to ``threshold``."""
    return _JumpReLU.apply(pre, threshold, bandwidth)


def step(pre: Tensor, threshold: Tensor, bandwidth: float) -> Tensor:
    """``(pre > threshold)`` as floats, with the straight-through gradient to ``threshold``."""
    return _Step.apply(pre, threshold, bandwidth)


class JumpReLUSAE(SAE):
    """``f = relu(pre) * (pre > threshold)``, ``pre = (x - b_dec) @ W_enc + b_enc``.

    Args:
        d_in: Width of the activations.
        d_sae: Number of latents.
        apply_b_dec_to_input: Subtract ``b_dec`` from the input before encoding.
        threshold_init: Initial threshold of every latent (> 0).
        bandwidth: Width of the straight-through estimator's kernel (> 0); training only.
        sparse_threshold: Largest density of the kept entries ``S`` (see the module) at
            which ``forward`` takes the sparse path; 0 always dense, 1 always sparse.

    Example:
        >>> sae = JumpReLUSAE(d_in=4, d_sae=16, threshold_init=0.5)
        >>> f = sae.encode(torch.randn(8, 4))
        >>> bool(((f == 0) | (f > 0.5)).all())
        True
    """

    architecture: ClassVar[str] = "jumprelu"
    feature_params: ClassVar[dict[str, int]] = {**SAE.feature_params, "threshold": 0}

    def __init__(
        self,
        d_in: int,
        d_sae: int,
        apply_b_dec_to_input: bool = True,
        threshold_init: float = 0.001,
        bandwidth: float = 0.001,
        sparse_threshold: float = 0.05,
    ) -> None:
        super().__init__(d_in, d_sae, apply_b_dec_to_input)
        for name, value in (("threshold_init", threshold_init), ("bandwidth", bandwidth)):
            if not value > 0:
                raise ValueError(f"{name} must be > 0, got {value!r}")
        self.bandwidth = float(bandwidth)
        self.threshold_init = float(threshold_init)
        self.sparse_threshold = check_sparse_threshold(sparse_threshold)
        self.threshold = torch.nn.Parameter(torch.full((d_sae,), float(threshold_init)))

    def config(self) -> dict[str, Any]:
        return super().config()  # the thresholds are weights; bandwidth is training-only

    def encode(self, x: Float[Tensor, "*batch d_in"]) -> Float[Tensor, "*batch d_sae"]:
        """``relu(pre) * (pre > threshold)``.

        Raises:
            ValueError: If ``x``'s last dimension is not ``d_in``.
        """
        return jumprelu(self.encode_pre(x), self.threshold, self.bandwidth)

    def forward(self, x: Float[Tensor, "*batch d_in"]) -> SAEOutput:
        """Encode and decode; the pre-activations go to the loss (L0 through ``step``)."""
        self._check_width(x, "d_in", "input")
        flat = x.reshape(-1, self.d_in)  # [batch, d_in]
        bias = self.encoder_bias()  # [d_sae]
        pre = torch.addmm(bias, flat, self.W_enc)  # [batch, d_sae]; unused by autograd if sparse
        with torch.no_grad():  # u as in the estimators; u > -1/2 is {pre > θ} | {|u| < 1/2}
            kept = (pre - self.threshold).div_(self.bandwidth) > -0.5  # [batch, d_sae]
        picked = select_sparse(kept, self.sparse_threshold)
        if picked is None:
            pre = pre.to(bias.dtype)  # autocast: the product is bf16, the codes float32
            f = jumprelu(pre, self.threshold, self.bandwidth)  # [batch, d_sae]
            shape = (*x.shape[:-1], self.d_sae)
            return SAEOutput(self.decode(f).reshape(x.shape), f.reshape(shape), pre.reshape(shape))
        rows, cols, crow = picked
        b_dec = self.input_bias()
        pre_s = gather_pre(flat, self.W_enc, self.b_enc, pre.detach(), rows, cols, b_dec)  # [nnz]
        values = jumprelu(pre_s, self.threshold[cols], self.bandwidth)  # zero off {pre > θ}
        codes = SparseEntries(rows, cols, values, flat.shape[0], self.d_sae, "row", crow)
        x_hat = (sparse_decode(codes, self.W_dec) + self.b_dec).reshape(x.shape)
        pre_codes = codes.with_values(pre_s)
        pre_seen = pre.detach().reshape(*x.shape[:-1], self.d_sae)
        return SAEOutput(x_hat, None, pre_seen, codes, pre_codes)  # dense codes only if read

    def encode_selected(
        self, x: Float[Tensor, "rows pos d_in"], index: Int[Tensor, " rows"]
    ) -> Float[Tensor, "rows pos"]:
        """One dot product per row: JumpReLU latents are independent."""
        self._check_width(x, "d_in", "input")
        w = self.W_enc.T[index]  # [rows, d_in]
        bias = self.b_enc[index]  # [rows]
        if self.apply_b_dec_to_input:
            bias = bias - w @ self.b_dec
        pre = torch.einsum("rpd,rd->rp", x, w) + bias[:, None]  # [rows, pos]
        return torch.relu(pre) * (pre > self.threshold[index][:, None])

    def scale_features(
        self, state: dict[str, Tensor], scale: Float[Tensor, " d_sae"]
    ) -> dict[str, Tensor]:
        state = super().scale_features(state, scale)
        state["threshold"] = state["threshold"] * scale
        return state

    @torch.no_grad()
    def reinit_features(self, index: Tensor, directions: Tensor, encoder_norm: float) -> None:
        super().reinit_features(index, directions, encoder_norm)
        self.threshold[index] = self.threshold_init
