"""Gated SAE (Rajamanoharan et al. 2024a): a gate decides which features fire, a magnitude
path (sharing the gate's directions, rescaled per feature) decides how much.

Parameters follow SAELens' ``gated`` architecture: ``W_enc``, ``b_gate``, ``r_mag``,
``b_mag``, ``W_dec``, ``b_dec`` (no ``b_enc``).
"""

from __future__ import annotations

from typing import ClassVar

import torch
from jaxtyping import Float
from torch import Tensor, nn

from sae_lightning.saes.base import SAE, SAEOutput


class GatedSAE(SAE):
    """``f = 1[pi_gate > 0] * relu(pi_mag)`` with ``pi_gate = (x - b_dec) @ W_enc + b_gate``,
    ``pi_mag = (x - b_dec) @ (W_enc * exp(r_mag)) + b_mag``.

    ``forward`` returns ``pi_gate`` as ``pre_acts``: ``GatedLoss`` puts its L1 penalty and
    its auxiliary reconstruction on ``relu(pi_gate)``.

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

    def __init__(self, d_in: int, d_sae: int, apply_b_dec_to_input: bool = True) -> None:
        super().__init__(d_in, d_sae, apply_b_dec_to_input)
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
        gate, mag = self._gate_and_mag(x)
        feature_acts = (gate > 0).to(mag.dtype) * torch.relu(mag)
        return SAEOutput(self.decode(feature_acts), feature_acts, gate)

    def scale_features(
        self, state: dict[str, Tensor], scale: Float[Tensor, " d_sae"]
    ) -> dict[str, Tensor]:
        """Only the magnitude path scales (``r_mag += log s``, ``b_mag *= s``)."""
        state = dict(state)
        state["W_dec"] = state["W_dec"] / scale[:, None]
        state["r_mag"] = state["r_mag"] + torch.log(scale)
        state["b_mag"] = state["b_mag"] * scale
        return state
