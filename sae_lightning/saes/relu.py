"""The ReLU SAE of *Towards Monosemanticity* (SAELens' "standard" architecture)."""

from __future__ import annotations

from typing import ClassVar

import torch
from jaxtyping import Float, Int
from torch import Tensor

from sae_lightning.saes.base import SAE


class ReLUSAE(SAE):
    """``f = relu((x - b_dec) @ W_enc + b_enc)``; the ``- b_dec`` only if ``apply_b_dec_to_input``.

    Example:
        >>> sae = ReLUSAE(d_in=4, d_sae=16)
        >>> out = sae(torch.randn(8, 4))
        >>> tuple(out.feature_acts.shape), tuple(out.x_hat.shape)
        ((8, 16), (8, 4))
    """

    architecture: ClassVar[str] = "standard"

    def encode(self, x: Float[Tensor, "*batch d_in"]) -> Float[Tensor, "*batch d_sae"]:
        """Feature activations ``relu(encode_pre(x))``.

        Raises:
            ValueError: If ``x``'s last dimension is not ``d_in``.
        """
        return torch.relu(self.encode_pre(x))  # [*batch, d_sae]

    def encode_selected(
        self, x: Float[Tensor, "rows pos d_in"], index: Int[Tensor, " rows"]
    ) -> Float[Tensor, "rows pos"]:
        """Activation of feature ``index[r]`` on row ``r``: ReLU features are independent, so
        one dot product per row instead of the whole dictionary."""
        self._check_width(x, "d_in", "input")
        w = self.W_enc.T[index]  # [rows, d_in]
        bias = self.b_enc[index]  # [rows]
        if self.apply_b_dec_to_input:
            bias = bias - w @ self.b_dec
        return torch.relu(torch.einsum("rpd,rd->rp", x, w) + bias[:, None])  # [rows, pos]
