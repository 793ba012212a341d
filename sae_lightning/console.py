"""What the terminal shows: the known noise of the libraries we build on is filtered out.

Removed: Lightning's ``_pytree`` deprecation warning (its own code, fixed upstream, nothing a
user can act on) and its advertisement for a cloud logger. Every other warning stays.
"""

from __future__ import annotations

import logging
import warnings

_NOISE_WARNINGS = (r".*isinstance\(treespec, LeafSpec\)` is deprecated.*",)
_NOISE_LOGS = ("💡 Tip:",)


class _DropNoise(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.getMessage()).startswith(_NOISE_LOGS)


def quiet_known_noise() -> None:
    """Install the filters (idempotent); the command lines call it first."""
    for pattern in _NOISE_WARNINGS:
        warnings.filterwarnings("ignore", message=pattern)
    logger = logging.getLogger("lightning.pytorch.utilities.rank_zero")
    if not any(isinstance(f, _DropNoise) for f in logger.filters):
        logger.addFilter(_DropNoise())
