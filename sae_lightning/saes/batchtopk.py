"""BatchTopK SAE (Bussmann et al. 2024): the top ``k * batch`` activations of the whole batch.

Training selects across the batch, so a token may use more or fewer than k latents. Each
training batch also yields a threshold that reproduces its selection (any value between the
smallest kept and the largest dropped activation does; we take the midpoint), and a running
average of it makes the SAE a JumpReLU for inference: in eval mode ``encode`` is
``relu(pre) * (pre > threshold)``, and the export is a ``jumprelu`` SAE.
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch
from jaxtyping import Float
from torch import Tensor

from sae_lightning.saes.jumprelu import JumpReLUSAE
from sae_lightning.saes.sparse_codes import codes_from_flat, gather_pre
from sae_lightning.saes.topk import TopKSAE
from sae_lightning.sparse import SparseEntries


class BatchTopKSAE(TopKSAE):
    """TopK over the flattened batch in training, a fixed threshold in eval.

    Args:
        d_in: Width of the activations.
        d_sae: Number of latents.
        k: Mean active latents per token.
        apply_b_dec_to_input: Subtract ``b_dec`` from the input before encoding.
        sparse_decoder: Decode and back-propagate over the active latents only.
        threshold_momentum: Weight of each batch's threshold in the running average
            (the first batch sets it); in ``(0, 1]``.

    Example:
        >>> sae = BatchTopKSAE(d_in=4, d_sae=16, k=2)
        >>> codes = sae(torch.randn(8, 4)).feature_acts
        >>> int((codes > 0).sum()) <= 16, sae.threshold.item() > 0
        (True, True)
    """

    architecture: ClassVar[str] = "batchtopk"

    def __init__(
        self,
        d_in: int,
        d_sae: int,
        k: int,
        apply_b_dec_to_input: bool = True,
        sparse_decoder: bool = True,
        threshold_momentum: float = 0.01,
    ) -> None:
        super().__init__(d_in, d_sae, k, apply_b_dec_to_input, sparse_decoder)
        if not 0 < threshold_momentum <= 1:
            raise ValueError(f"threshold_momentum must be in (0, 1], got {threshold_momentum!r}")
        self.threshold_momentum = float(threshold_momentum)
        self.register_buffer("threshold", torch.tensor(0.0))  # running estimate
        self.register_buffer("threshold_batches", torch.tensor(0, dtype=torch.long))

    def config(self) -> dict[str, Any]:
        return {**super().config(), "threshold_momentum": self.threshold_momentum}

    def select(self, pre: Float[Tensor, "batch d_sae"]) -> tuple[Tensor, Tensor, Tensor]:
        """The top ``k * batch`` positive pre-activations of the batch (training), or those
        above ``threshold`` (eval); updates the threshold estimate in training."""
        n, d_sae = pre.shape
        acts = torch.relu(pre).flatten()  # [batch * d_sae]
        if not self.training:
            return codes_from_flat((acts > self.threshold).nonzero().squeeze(-1), n, d_sae)
        n_keep = min(self.k * n + 1, acts.numel())
        top = acts.topk(n_keep, sorted=True)
        kept = top.values[: self.k * n] > 0
        if self.k * n < acts.numel():
            self._update_threshold(top.values[: self.k * n][kept], top.values[-1])
        return codes_from_flat(top.indices[: self.k * n][kept], n, d_sae)

    @torch.no_grad()
    def _update_threshold(self, kept: Tensor, largest_dropped: Tensor) -> None:
        if kept.numel() == 0:
            return
        batch_threshold = (kept.min() + largest_dropped) / 2
        m = 1.0 if int(self.threshold_batches) == 0 else self.threshold_momentum
        self.threshold.mul_(1 - m).add_(m * batch_threshold)
        self.threshold_batches += 1

    def encode_codes(self, x: Float[Tensor, "batch d_in"]) -> SparseEntries:
        if self.training:
            return super().encode_codes(x)
        self._check_width(x, "d_in", "input")
        bias = self.encoder_bias()
        with torch.no_grad():
            pre = torch.addmm(bias, x, self.W_enc)  # [batch, d_sae]
        rows, cols, crow = self.select(pre)
        values = gather_pre(x, self.W_enc, self.b_enc, pre, rows, cols, self.input_bias())
        return SparseEntries(rows, cols, torch.relu(values), x.shape[0], self.d_sae, "row", crow)

    def to_jumprelu(self) -> JumpReLUSAE:
        """The inference SAE: the same weights and the running threshold for every latent."""
        jump = JumpReLUSAE(self.d_in, self.d_sae, self.apply_b_dec_to_input)
        state = {k: v.detach().clone() for k, v in self.state_dict().items()}
        threshold = state.pop("threshold").expand(self.d_sae).clone()
        state.pop("threshold_batches")
        jump.load_state_dict({**state, "threshold": threshold})
        return jump.to(self.W_enc.device).train(self.training)

    def for_export(self) -> JumpReLUSAE:
        return self.to_jumprelu()

    def scale_features(
        self, state: dict[str, Tensor], scale: Float[Tensor, " d_sae"]
    ) -> dict[str, Tensor]:
        state = super().scale_features(state, scale)
        state["threshold"] = state["threshold"] * scale.mean()
        return state
