"""SAE architectures, one file each, and the registry used to build and load them."""

from __future__ import annotations

from typing import Any

from sae_lightning.saes.base import SAE, SAEOutput, load_assigned
from sae_lightning.saes.batchtopk import BatchTopKSAE
from sae_lightning.saes.crosscoder import CrosscoderSAE
from sae_lightning.saes.gated import GatedSAE
from sae_lightning.saes.geometric_median import geometric_median
from sae_lightning.saes.jumprelu import JumpReLUSAE
from sae_lightning.saes.matryoshka import MatryoshkaSAE
from sae_lightning.saes.relu import ReLUSAE
from sae_lightning.saes.topk import TopKSAE
from sae_lightning.saes.transcoder import SkipTranscoderSAE, TranscoderSAE

ARCHITECTURES: dict[str, type[SAE]] = {
    cls.architecture: cls
    for cls in (
        ReLUSAE,
        TopKSAE,
        BatchTopKSAE,
        MatryoshkaSAE,
        JumpReLUSAE,
        GatedSAE,
        TranscoderSAE,
        SkipTranscoderSAE,
        CrosscoderSAE,
    )
}
"""Architecture name (as written in SAELens' ``cfg.json``) -> SAE class."""


def get_architecture(architecture: str) -> type[SAE]:
    """The SAE class registered under ``architecture``.

    Raises:
        ValueError: If ``architecture`` is not registered; the message lists the valid names.
    """
    if architecture not in ARCHITECTURES:
        raise ValueError(
            f"unknown SAE architecture {architecture!r}; valid: {sorted(ARCHITECTURES)}"
        )
    return ARCHITECTURES[architecture]


def build_sae(architecture: str, **kwargs: Any) -> SAE:
    """Construct the SAE registered under ``architecture`` with its constructor arguments.

    Args:
        architecture: A key of ``ARCHITECTURES`` (e.g. ``"standard"``).
        **kwargs: The class's constructor arguments; an unknown one raises ``TypeError``.

    Raises:
        ValueError: If ``architecture`` is not registered; the message lists the valid names.

    Example:
        >>> build_sae("standard", d_in=4, d_sae=8).config()["architecture"]
        'standard'
    """
    return get_architecture(architecture)(**kwargs)


__all__ = [
    "ARCHITECTURES",
    "BatchTopKSAE",
    "CrosscoderSAE",
    "GatedSAE",
    "JumpReLUSAE",
    "MatryoshkaSAE",
    "ReLUSAE",
    "SAE",
    "SAEOutput",
    "SkipTranscoderSAE",
    "TopKSAE",
    "TranscoderSAE",
    "build_sae",
    "geometric_median",
    "get_architecture",
    "load_assigned",
]
