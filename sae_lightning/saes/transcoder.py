"""Transcoders: a sparse dictionary that reads one hook and reconstructs another.

A transcoder replaces a computation (typically an MLP): it encodes the MLP's input
(``blocks.L.ln2.hook_normalized``) and decodes the MLP's output (``blocks.L.hook_mlp_out``),
``y_hat = relu(x @ W_enc + b_enc) @ W_dec + b_dec`` with ``W_dec [d_sae, d_out]`` and
``b_dec [d_out]`` (Dunefsky et al. 2024; Ge et al. 2024). A skip-transcoder adds a linear
path ``x @ W_skip.T`` (``W_skip [d_out, d_in]``, zero at the start), as EleutherAI's sparsify
and SAELens' ``skip_transcoder`` do. ``b_dec`` lives in the output space, so it is never
subtracted from the input.

Training rows are ``[x_in | x_out]`` (``d_in + d_out`` wide): the data module captures both
hooks in one forward (``ActivationSpec.hook_name_out``), and ``split_target`` takes them
apart. The export is SAELens' ``transcoder`` / ``skip_transcoder`` format: these fields
plus ``d_out``, ``hook_name_out``, ``hook_layer_out`` and ``hook_head_index_out``.
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch
from jaxtyping import Float
from torch import Tensor, nn

from sae_lightning.saes.base import SAEOutput
from sae_lightning.saes.relu import ReLUSAE


class TranscoderSAE(ReLUSAE):
    """A ReLU transcoder (SAELens' ``transcoder``); the sparse path is ReLU's.

    Args:
        d_in: Width of the input hook.
        d_sae: Number of latents.
        d_out: Width of the output hook (the reconstruction).
        sparse_threshold: As for ``ReLUSAE``.

    Example:
        >>> tc = TranscoderSAE(d_in=4, d_sae=16, d_out=6)
        >>> tuple(tc(torch.randn(8, 4)).x_hat.shape)
        (8, 6)
    """

    architecture: ClassVar[str] = "transcoder"

    def __init__(self, d_in: int, d_sae: int, d_out: int, sparse_threshold: float = 0.05) -> None:
        super().__init__(d_in, d_sae, apply_b_dec_to_input=False, sparse_threshold=sparse_threshold)
        if isinstance(d_out, bool) or not isinstance(d_out, int) or d_out < 1:
            raise ValueError(f"d_out must be a positive integer, got {d_out!r}")
        # unit-norm decoder rows in the output space; the encoder's columns are drawn apart
        # (the transpose of the decoder does not fit when d_in != d_out), also of unit norm
        w_dec = torch.randn(d_sae, d_out)  # [d_sae, d_out]
        w_enc = torch.randn(d_in, d_sae)  # [d_in, d_sae]
        self.W_dec = nn.Parameter(w_dec / w_dec.norm(dim=-1, keepdim=True))
        self.W_enc = nn.Parameter(w_enc / w_enc.norm(dim=0, keepdim=True))
        self.b_dec = nn.Parameter(torch.zeros(d_out))  # [d_out]

    def config(self) -> dict[str, Any]:
        config = super().config()
        config["d_out"] = self.d_out
        return config

    def split_target(
        self, x: Float[Tensor, "*batch width"]
    ) -> tuple[Float[Tensor, "*batch d_in"], Float[Tensor, "*batch d_out"]]:
        """``[x_in | x_out]`` -> ``(x_in, x_out)``.

        Raises:
            ValueError: If the row is not ``d_in + d_out`` wide (e.g. the data module was
                not given ``hook_name_out``).
        """
        if x.shape[-1] != self.d_in + self.d_out:
            raise ValueError(
                f"a transcoder's rows are [x_in | x_out], {self.d_in} + {self.d_out} = "
                f"{self.d_in + self.d_out} wide, got width {x.shape[-1]}: set hook_name_out "
                "to the hook it reconstructs (e.g. experiment=transcoder)"
            )
        return x[..., : self.d_in], x[..., self.d_in :]


class SkipTranscoderSAE(TranscoderSAE):
    """A transcoder with a linear skip path: ``y_hat = decode(encode(x)) + x @ W_skip.T``
    (SAELens' ``skip_transcoder``; ``W_skip [d_out, d_in]`` starts at zero)."""

    architecture: ClassVar[str] = "skip_transcoder"

    def __init__(self, d_in: int, d_sae: int, d_out: int, sparse_threshold: float = 0.05) -> None:
        super().__init__(d_in, d_sae, d_out, sparse_threshold)
        self.W_skip = nn.Parameter(torch.zeros(d_out, d_in))  # [d_out, d_in]

    def skip(self, x: Float[Tensor, "*batch d_in"]) -> Float[Tensor, "*batch d_out"]:
        """The linear path ``x @ W_skip.T``."""
        return x @ self.W_skip.T

    def forward(self, x: Float[Tensor, "*batch d_in"]) -> SAEOutput:
        """The transcoder's output plus the skip path."""
        out = super().forward(x)
        out.x_hat = out.x_hat + self.skip(x).to(out.x_hat.dtype)
        return out


def transcoder(
    d_in: int, d_sae: int, d_out: int, skip: bool = False, sparse_threshold: float = 0.05
) -> TranscoderSAE:
    """``conf/sae/transcoder.yaml``'s target: a transcoder, with the skip path if ``skip``."""
    cls = SkipTranscoderSAE if skip else TranscoderSAE
    return cls(d_in, d_sae, d_out, sparse_threshold)
