"""The losses of SAEs sparse by construction: TopK / BatchTopK (MSE + AuxK) and Matryoshka
(plus every inner prefix's reconstruction)."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from jaxtyping import Float
from torch import Tensor

from sae_lightning.losses.terms import LossOutput, check_coeff, mse
from sae_lightning.saes.base import SAE, SAEOutput
from sae_lightning.saes.matryoshka import MatryoshkaSAE
from sae_lightning.saes.topk import TopKSAE


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
        check_coeff("auxk_coeff", self.auxk_coeff)
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
