"""torchmetrics ``Metric``s for SAE training: reconstruction, feature density, downstream loss."""

from sae_lightning.metrics.density import (
    FeatureDensity,
    dead_fraction,
    log10_density,
    ultralow_fraction,
)
from sae_lightning.metrics.downstream import DownstreamLoss, per_token_ce_and_kl
from sae_lightning.metrics.reconstruction import ExplainedVariance, MeanL0

__all__ = [
    "DownstreamLoss",
    "ExplainedVariance",
    "FeatureDensity",
    "MeanL0",
    "dead_fraction",
    "log10_density",
    "per_token_ce_and_kl",
    "ultralow_fraction",
]
