"""Learning-rate schedules: linear warm-up, then constant, linear or cosine decay at the end."""

from __future__ import annotations

import math
from typing import Literal

from torch.optim import Optimizer
from torch.optim.lr_scheduler import LambdaLR

Decay = Literal["none", "linear", "cosine"]
DECAYS: tuple[str, ...] = ("none", "linear", "cosine")


def lr_multiplier(
    step: int,
    total_steps: int,
    warmup_steps: int = 0,
    decay: Decay = "none",
    decay_fraction: float = 0.2,
    min_ratio: float = 0.0,
) -> float:
    """The factor on the base learning rate at optimiser step ``step`` (0-based).

    Linear warm-up from ``1 / warmup_steps`` to 1 over the first ``warmup_steps`` steps; then
    1 until the last ``decay_fraction`` of ``total_steps``, over which it decays (linearly or
    on a half cosine) to ``min_ratio`` (Anthropic's recipe: linear over the last 20%).

    Example:
        >>> [round(lr_multiplier(s, 10, 2, "linear", 0.5), 2) for s in (0, 1, 5, 7, 10)]
        [0.5, 1.0, 1.0, 0.6, 0.0]
    """
    factor = min(1.0, (step + 1) / warmup_steps) if warmup_steps > 0 else 1.0
    decay_steps = int(round(decay_fraction * total_steps))
    start = total_steps - decay_steps
    if decay == "none" or decay_steps == 0 or step < start:
        return factor
    progress = min(1.0, (step - start) / decay_steps)
    shape = 1 - progress if decay == "linear" else 0.5 * (1 + math.cos(math.pi * progress))
    return factor * (min_ratio + (1 - min_ratio) * shape)


def warmup_decay(
    optimizer: Optimizer,
    total_steps: int,
    warmup_steps: int = 0,
    decay: Decay = "none",
    decay_fraction: float = 0.2,
    min_ratio: float = 0.0,
) -> LambdaLR:
    """A per-step ``LambdaLR`` following ``lr_multiplier``.

    In the config (``module.scheduler``) it is a partial: ``SAEModule`` passes the optimizer
    and ``total_steps`` (the trainer's ``max_steps``).

    Raises:
        ValueError: For an unknown ``decay`` (the message lists the valid ones), negative
            ``warmup_steps``, or ``decay_fraction`` / ``min_ratio`` outside [0, 1].
    """
    if decay not in DECAYS:
        raise ValueError(f"unknown lr decay {decay!r}; valid: {list(DECAYS)}")
    if warmup_steps < 0:
        raise ValueError(f"warmup_steps must be >= 0, got {warmup_steps}")
    for name, value in (("decay_fraction", decay_fraction), ("min_ratio", min_ratio)):
        if not 0 <= value <= 1:
            raise ValueError(f"{name} must be in [0, 1], got {value}")
    if total_steps < 1:
        raise ValueError(f"total_steps must be positive (set trainer.max_steps), got {total_steps}")
    return LambdaLR(
        optimizer,
        lambda step: lr_multiplier(
            step, total_steps, warmup_steps, decay, decay_fraction, min_ratio
        ),
    )
