"""Gated SAE (Rajamanoharan et al. 2024a): a gate decides which features fire, a magnitude
path (sharing the gate's directions, rescaled per feature) decides how much.

Parameters follow SAELens' ``gated`` architecture: ``W_enc``, ``b_gate``, ``r_mag``,
``b_mag``, ``W_dec``, ``b_dec`` (no ``b_enc``).

Sparse path (batch density of ``pi_gate > 0`` at most ``sparse_threshold``): both paths read
the one projection ``(x - b_dec) @ W_enc``, gathered at the gate's open entries ``G``. The
codes vanish off ``G``, and so do all three loss terms' gradients to the projection (the L1
and the auxiliary reconstruction read ``relu(pi_gate)``), so nothing past the dense encoder
forward needs a dense ``[batch, d_sae]`` tensor: the auxiliary reconstruction decodes
``relu(pi_gate)`` on ``G`` through the detached decoder (``out.pre_codes``).
"""

from __future__ import annotations

from typing import ClassVar

import torch
from jaxtyping import Float
from torch import Tensor, nn

from sae_lightning.saes.base import SAE, SAEOutput
from sae_lightning.saes.sparse_codes import (
    check_sparse_threshold,
    gather_pre,
    select_sparse,
    sparse_decode,
)
from sae_lightning.sparse import SparseEntries


class GatedSAE(SAE):
    """``f = 1[pi_gate > 0] * relu(pi_mag)`` with ``pi_gate = (x - b_dec) @ W_enc + b_gate``,
    ``pi_mag = (x - b_dec) @ (W_enc * exp(r_mag)) + b_mag``.

    ``forward`` returns ``pi_gate`` as ``pre_acts``: ``GatedLoss`` puts its L1 penalty and
    its auxiliary reconstruction on ``relu(pi_gate)``.

    Args:
        d_in: Width of the activations.
        d_sae: Number of latents.
        apply_b_dec_to_input: Subtract ``b_dec`` from the input before encoding.
        sparse_threshold: Largest density of open gates at which ``forward`` takes the
            sparse path; 0 always dense, 1 always sparse.

    Example:
        >>> sae = GatedSAE(d_in=4, d_sae=16)
        >>> tuple(sae(torch.randn(8, 4)).feature_acts.shape)
        (8, 16)
    """

    architecture: ClassVar[str] = "gated"
    feature_params: ClassVar[dict[str, int]] = {
        "W_enc": 1,
        "b_gate": 0,
        "r_mag": 0,
        "b_mag": 0,
        "W_dec": 0,
    }

    def __init__(
        self,
        d_in: int,
        d_sae: int,
        apply_b_dec_to_input: bool = True,
        sparse_threshold: float = 0.05,
    ) -> None:
        super().__init__(d_in, d_sae, apply_b_dec_to_input)
        self.sparse_threshold = check_sparse_threshold(sparse_threshold)
        del self.b_enc
        self.b_gate = nn.Parameter(torch.zeros(d_sae))  # [d_sae]
        self.r_mag = nn.Parameter(torch.zeros(d_sae))  # [d_sae]
        self.b_mag = nn.Parameter(torch.zeros(d_sae))  # [d_sae]

    def _centred_projection(self, x: Tensor) -> Tensor:
        self._check_width(x, "d_in", "input")
        proj = x @ self.W_enc  # [*batch, d_sae]
        if self.apply_b_dec_to_input:
            proj = proj - self.b_dec @ self.W_enc  # cheap b_dec gradient (see encoder_bias)
        return proj

    def _gate_and_mag(self, x: Tensor) -> tuple[Tensor, Tensor]:
        proj = self._centred_projection(x)  # [*batch, d_sae]
        return proj + self.b_gate, proj * torch.exp(self.r_mag) + self.b_mag

    def encode_pre(self, x: Float[Tensor, "*batch d_in"]) -> Float[Tensor, "*batch d_sae"]:
        """The gate pre-activation ``pi_gate``."""
        return self._centred_projection(x) + self.b_gate

    def encode(self, x: Float[Tensor, "*batch d_in"]) -> Float[Tensor, "*batch d_sae"]:
        """``1[pi_gate > 0] * relu(pi_mag)``.

        Raises:
            ValueError: If ``x``'s last dimension is not ``d_in``.
        """
        gate, mag = self._gate_and_mag(x)
        return (gate > 0).to(mag.dtype) * torch.relu(mag)

    def forward(self, x: Float[Tensor, "*batch d_in"]) -> SAEOutput:
        """Encode and decode; sparse (``out.codes`` set) when the batch's density allows."""
        self._check_width(x, "d_in", "input")
        flat = x.reshape(-1, self.d_in)  # [batch, d_in]
        proj = self._centred_projection(flat)  # [batch, d_sae]; unused by autograd if sparse
        with torch.no_grad():
            gate_seen = proj + self.b_gate  # [batch, d_sae]
        picked = select_sparse(gate_seen > 0, self.sparse_threshold)
        shape = (*x.shape[:-1], self.d_sae)
        if picked is None:
            gate, mag = proj + self.b_gate, proj * torch.exp(self.r_mag) + self.b_mag
            f = (gate > 0).to(mag.dtype) * torch.relu(mag)  # [batch, d_sae]
            return SAEOutput(self.decode(f).reshape(x.shape), f.reshape(shape), gate.reshape(shape))
        rows, cols, crow = picked
        b_dec = self.input_bias()
        proj_s = gather_pre(flat, self.W_enc, None, proj.detach(), rows, cols, b_dec)  # [nnz]
        gate = proj_s + self.b_gate[cols]  # [nnz], all > 0
        mag = proj_s * torch.exp(self.r_mag)[cols] + self.b_mag[cols]  # [nnz]
        values = (gate > 0).to(mag.dtype) * torch.relu(mag)  # [nnz]
        codes = SparseEntries(rows, cols, values, len(flat), self.d_sae, "row", crow)
        x_hat = (sparse_decode(codes, self.W_dec) + self.b_dec).reshape(x.shape)
        gate_codes = codes.with_values(gate)
        return SAEOutput(x_hat, None, gate_seen.reshape(shape), codes, gate_codes)  # lazy codes

    def scale_features(
        self, state: dict[str, Tensor], scale: Float[Tensor, " d_sae"]
    ) -> dict[str, Tensor]:
        """Only the magnitude path scales (``r_mag += log s``, ``b_mag *= s``)."""
        state = dict(state)
        state["W_dec"] = state["W_dec"] / scale[:, None]
        state["r_mag"] = state["r_mag"] + torch.log(scale)
        state["b_mag"] = state["b_mag"] * scale
        return state
