"""TopK SAE (Gao et al. 2024): keep the k largest pre-activations of each token.

With ``sparse_decoder`` (the default) the decoder and the encoder's weight gradient read only
the k active latents (``sparse_codes``): past the dense encoder forward a training step costs
O(k * d_in) per token instead of four more d_in x d_sae matmuls.
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch
from jaxtyping import Float
from torch import Tensor

from sae_lightning.saes.base import SAE, SAEOutput
from sae_lightning.saes.sparse_codes import (
    codes_from_flat,
    gather_pre,
    sparse_decode,
)
from sae_lightning.sparse import SparseEntries

AUXK_SPARSE_BELOW = 0.05
"""AuxK keeps its codes sparse while ``k_aux`` is at most this share of the dead latents
(``benchmarks/auxk_step.py`` measures where the dense path starts to win)."""


class TopKSAE(SAE):
    """``f = scatter(topk((x - b_dec) @ W_enc + b_enc, k))``, ReLU on the kept values.

    The SAE tracks, for the AuxK loss, how many training tokens each latent went without
    firing (``tokens_since_fired``, a buffer that is not part of the exported weights).

    Args:
        d_in: Width of the activations.
        d_sae: Number of latents.
        k: Active latents per token, ``1 <= k <= d_sae``.
        apply_b_dec_to_input: Subtract ``b_dec`` from the input before encoding.
        sparse_decoder: Decode and back-propagate over the active latents only; ``False``
            runs the dense reference (same numbers, about 5x the FLOP).

    Example:
        >>> sae = TopKSAE(d_in=4, d_sae=16, k=3)
        >>> (sae(torch.randn(8, 4)).feature_acts > 0).sum(-1).le(3).all().item()
        True
    """

    architecture: ClassVar[str] = "topk"

    def __init__(
        self,
        d_in: int,
        d_sae: int,
        k: int,
        apply_b_dec_to_input: bool = True,
        sparse_decoder: bool = True,
    ) -> None:
        super().__init__(d_in, d_sae, apply_b_dec_to_input)
        if isinstance(k, bool) or not isinstance(k, int) or not 1 <= k <= d_sae:
            raise ValueError(f"k must be an integer in [1, d_sae={d_sae}], got {k!r}")
        self.k = k
        self.sparse_decoder = bool(sparse_decoder)
        tokens = torch.zeros(d_sae, dtype=torch.long)
        self.register_buffer("tokens_since_fired", tokens, persistent=False)  # [d_sae]

    def config(self) -> dict[str, Any]:
        return {**super().config(), "k": self.k}

    def select(self, pre: Float[Tensor, "batch d_sae"]) -> tuple[Tensor, Tensor, Tensor]:
        """``(rows, cols, crow)`` of the latents kept for each row of ``pre`` (the top k)."""
        n = pre.shape[0]
        idx = pre.topk(self.k, dim=-1, sorted=False).indices.sort(dim=-1).values  # [batch, k]
        rows = torch.arange(n, device=pre.device).repeat_interleave(self.k)
        crow = torch.arange(0, n * self.k + 1, self.k, device=pre.device)
        return rows, idx.flatten(), crow

    def encode_codes(self, x: Float[Tensor, "batch d_in"]) -> SparseEntries:
        """The sparse codes of a ``[batch, d_in]`` input (values differentiable)."""
        self._check_width(x, "d_in", "input")
        bias = self.encoder_bias()  # [d_sae]
        if self.sparse_decoder:
            with torch.no_grad():  # addmm: the bias in the product's pass, not a second pass
                pre = torch.addmm(bias, x, self.W_enc)  # [batch, d_sae]
            rows, cols, crow = self.select(pre)
            values = gather_pre(x, self.W_enc, self.b_enc, pre, rows, cols, self.input_bias())
        else:
            pre = x @ self.W_enc + bias  # [batch, d_sae]
            rows, cols, crow = self.select(pre.detach())
            values = pre[rows, cols]
        return SparseEntries(rows, cols, torch.relu(values), x.shape[0], self.d_sae, "row", crow)

    def _flat(self, x: Tensor) -> Tensor:
        return x.reshape(-1, x.shape[-1]) if x.ndim > 0 else x

    def encode(self, x: Float[Tensor, "*batch d_in"]) -> Float[Tensor, "*batch d_sae"]:
        """Dense feature activations (k non-negative entries per token).

        Raises:
            ValueError: If ``x``'s last dimension is not ``d_in``.
        """
        self._check_width(x, "d_in", "input")
        codes = self.encode_codes(self._flat(x))
        return codes.to_dense().reshape(*x.shape[:-1], self.d_sae)

    def decode_codes(self, codes: SparseEntries, bias: bool = True) -> Float[Tensor, "batch d_in"]:
        """Reconstruction from sparse codes (``+ b_dec`` unless ``bias`` is False)."""
        if self.sparse_decoder:
            out = sparse_decode(codes, self.W_dec)  # [batch, d_in]
        else:
            out = codes.to_dense() @ self.W_dec  # [batch, d_in]
        return out + self.b_dec if bias else out

    def forward(self, x: Float[Tensor, "*batch d_in"]) -> SAEOutput:
        """Encode and decode; in training mode, also count tokens since each latent fired."""
        self._check_width(x, "d_in", "input")
        codes = self.encode_codes(self._flat(x))
        if self.training:
            self.note_firing(codes)
        x_hat = self.decode_codes(codes).reshape(x.shape)
        if self.sparse_decoder:  # the dense codes only if read
            return SAEOutput(x_hat=x_hat, codes=codes)
        feature_acts = codes.to_dense().reshape(*x.shape[:-1], self.d_sae)
        return SAEOutput(x_hat=x_hat, feature_acts=feature_acts)

    @torch.no_grad()
    def note_firing(self, codes: SparseEntries) -> None:
        """Advance ``tokens_since_fired`` by the batch and zero it for latents that fired."""
        self.tokens_since_fired += codes.n_rows
        self.tokens_since_fired[codes.cols[codes.values > 0]] = 0

    def auxk_reconstruction(
        self,
        x: Float[Tensor, "batch d_in"],
        dead: Tensor,
        k_aux: int,
        sparse_below: float = AUXK_SPARSE_BELOW,
    ) -> Float[Tensor, "batch d_in"]:
        """``W_dec``-reconstruction (no ``b_dec``) from the top ``k_aux`` dead latents per token.

        Only the dead latents' pre-activations are computed (2 * d_in * n_dead per token). The
        codes are sparse only while ``k_aux`` is at most ``sparse_below`` of the dead latents:
        above it (AuxK's usual 512 of a few hundred to a few thousand dead latents) they are
        decoded and back-propagated by dense matmuls over the dead latents, which on CPU is
        several times faster than gathering ``k_aux`` rows per token. Both paths compute the
        same values and gradients.
        """
        dead_idx = dead.nonzero().squeeze(-1)  # [n_dead]
        k_aux = min(k_aux, dead_idx.numel())
        weight, b_enc = self.W_enc[:, dead_idx], self.b_enc[dead_idx]  # [d_in, n_dead]
        bias = self.fold_input_bias(b_enc, weight)  # encoder_bias() of the dead latents
        if not self.sparse_decoder or k_aux > sparse_below * dead_idx.numel():
            return self._auxk_dense(x, weight, bias, dead_idx, k_aux)
        with torch.no_grad():
            pre = x @ weight + bias  # [batch, n_dead]
        idx = pre.topk(k_aux, dim=-1, sorted=False).indices  # [batch, k_aux]
        rows = torch.arange(x.shape[0], device=x.device).repeat_interleave(k_aux)
        local = idx.flatten()
        values = torch.relu(gather_pre(x, weight, b_enc, pre, rows, local, self.input_bias()))
        flat = rows * self.d_sae + dead_idx[local]
        order = flat.argsort()
        rows, cols, crow = codes_from_flat(flat, x.shape[0], self.d_sae)
        codes = SparseEntries(rows, cols, values[order], x.shape[0], self.d_sae, "row", crow)
        return self.decode_codes(codes, bias=False)

    def _auxk_dense(
        self, x: Tensor, weight: Tensor, bias: Tensor, dead_idx: Tensor, k_aux: int
    ) -> Float[Tensor, "batch d_in"]:
        """The AuxK reconstruction by dense matmuls over the ``n_dead`` dead latents."""
        pre = torch.addmm(bias, x, weight)  # [batch, n_dead]
        idx = pre.detach().topk(k_aux, dim=-1, sorted=False).indices  # [batch, k_aux]
        codes = torch.zeros_like(pre).scatter(1, idx, torch.relu(pre.gather(1, idx)))
        return codes @ self.W_dec[dead_idx]  # [batch, d_in]

    def scale_features(
        self, state: dict[str, Tensor], scale: Float[Tensor, " d_sae"]
    ) -> dict[str, Tensor]:
        """Latents compete, so only one common scale keeps the same top k.

        Raises:
            ValueError: If ``scale`` is not the same for every latent (within 1e-4).
        """
        common = scale.mean()
        if (scale - common).abs().max() > 1e-4 * common:
            raise ValueError(
                f"a {type(self).__name__} cannot fold unequal decoder norms (from "
                f"{scale.min().item():.4g} to {scale.max().item():.4g}) into its encoder: its "
                "latents compete for the top k. Train it with module.unit_norm_decoder=true"
            )
        return super().scale_features(state, torch.full_like(scale, common.item()))
