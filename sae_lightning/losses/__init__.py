"""The SAE objectives: ``loss(x, out, sae, step) -> LossOutput``, one class per family
(the ``loss=`` config group's ``_target_`` names them here, ``sae_lightning.losses.<Class>``).

- :mod:`~sae_lightning.losses.terms`: ``mse``, ``l1``, the warm-up, ``LossOutput``.
- :mod:`~sae_lightning.losses.penalties`: ``L1Loss``, ``JumpReLULoss``, ``GatedLoss``,
  ``CrosscoderLoss`` (a warmed-up sparsity penalty each).
- :mod:`~sae_lightning.losses.topk`: ``TopKLoss``, ``MatryoshkaLoss``.
"""

from sae_lightning.losses.penalties import CrosscoderLoss, GatedLoss, JumpReLULoss, L1Loss
from sae_lightning.losses.terms import LossOutput, WarmedPenalty, l1, mse, warmed_up
from sae_lightning.losses.topk import MatryoshkaLoss, TopKLoss

__all__ = [
    "CrosscoderLoss",
    "GatedLoss",
    "JumpReLULoss",
    "L1Loss",
    "LossOutput",
    "MatryoshkaLoss",
    "TopKLoss",
    "WarmedPenalty",
    "l1",
    "mse",
    "warmed_up",
]
