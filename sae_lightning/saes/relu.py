"""The ReLU SAE of *Towards Monosemanticity* (SAELens' "standard" architecture).

Once trained, a few dozen of its thousands of latents fire per token: when a batch's code
density is at most ``sparse_threshold``, the forward keeps only the entries ``pre > 0``
(``sparse_codes``), so that past the dense encoder forward the decoder, its gradients and the
encoder's weight gradient cost O(L0 * d_in) per token. Same values and gradients as dense.
"""

from __future__ import annotations

from typing import ClassVar

import torch
from jaxtyping import Float, Int
from torch import Tensor

from sae_lightning.saes.base import SAE, SAEOutput
from sae_lightning.saes.sparse_codes import (
    check_sparse_threshold,
    gather_pre,
    select_sparse,
    sparse_decode,
)
from sae_lightning.sparse import SparseEntries


class ReLUSAE(SAE):
    """``f = relu((x - b_dec) @ W_enc + b_enc)``; the ``- b_dec`` only if ``apply_b_dec_to_input``.

    Args:
        d_in: Width of the activations.
        d_sae: Number of latents.
        apply_b_dec_to_input: Subtract ``b_dec`` from the input before encoding.
        sparse_threshold: Largest code density (active entries / (batch * d_sae)) at which
            ``forward`` takes the sparse path; 0 always dense, 1 always sparse.

    Example:
        >>> sae = ReLUSAE(d_in=4, d_sae=16)
        >>> out = sae(torch.randn(8, 4))
        >>> tuple(out.feature_acts.shape), tuple(out.x_hat.shape)
        ((8, 16), (8, 4))
    """

    architecture: ClassVar[str] = "standard"

    def __init__(
        self,
        d_in: int,
        d_sae: int,
        apply_b_dec_to_input: bool = True,
        sparse_threshold: float = 0.05,
    ) -> None:
        super().__init__(d_in, d_sae, apply_b_dec_to_input)
        self.sparse_threshold = check_sparse_threshold(sparse_threshold)

    def forward(self, x: Float[Tensor, "*batch d_in"]) -> SAEOutput:
        """Encode and decode; sparse (``out.codes`` set) when the batch's density allows."""
        self._check_width(x, "d_in", "input")
        flat = x.reshape(-1, self.d_in)  # [batch, d_in]
        bias = self.encoder_bias()  # [d_sae]
        # the bare product: the bias is compared against, and added to the entries kept (a
        # sparse batch never adds it to all [batch, d_sae], as addmm would)
        xw = flat @ self.W_enc  # [batch, d_sae]; unused by autograd if sparse
        picked = select_sparse(xw.detach() > -bias.detach().to(xw.dtype), self.sparse_threshold)
        if picked is None:
            f = torch.relu((xw + bias).to(bias.dtype))  # [batch, d_sae]; float32 under autocast
            x_hat = self.decode(f).reshape(*x.shape[:-1], -1)  # [*batch, d_out]
            return SAEOutput(x_hat, f.reshape(*x.shape[:-1], -1))
        rows, cols, crow = picked
        b_dec, pre = self.input_bias(), xw.detach()
        pre_s = gather_pre(flat, self.W_enc, self.b_enc, pre, rows, cols, b_dec, bias.detach())
        values = torch.relu(pre_s)  # [nnz]
        codes = SparseEntries(rows, cols, values, flat.shape[0], self.d_sae, "row", crow)
        x_hat = sparse_decode(codes, self.W_dec) + self.b_dec  # [batch, d_out]
        return SAEOutput(x_hat.reshape(*x.shape[:-1], -1), codes=codes)  # dense codes if read

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
