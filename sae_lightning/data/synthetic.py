"""Activations with planted ground truth: sparse codes over a known, overcomplete dictionary.

``x = Σ_i c_i d_i (+ noise)`` with unit-norm directions ``d_i`` (more of them than
dimensions: superposition), each feature active with a small probability and a random
magnitude, optionally in correlated groups. An SAE trained on these should find the
``d_i`` among its decoder rows; :mod:`sae_lightning.metrics.recovery` measures how well.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path

import lightning as L
import torch
from jaxtyping import Float
from safetensors.torch import save_file
from torch import Tensor
from torch.utils.data import DataLoader, IterableDataset

log = logging.getLogger(__name__)

DICTIONARY_FILE = "true_dictionary.safetensors"


class SyntheticDictionary:
    """The true features and the distribution of their codes.

    Args:
        d_in: Dimension of the activations.
        n_features: Number of true features (``> d_in`` for superposition).
        p_active: Probability that an (ungrouped) feature is active on a sample.
        max_magnitude: Active magnitudes are uniform on ``(0, max_magnitude]``.
        n_groups: Correlated groups among the first ``n_groups * group_size`` features.
        group_size: Features per group.
        p_group: Probability that a group fires on a sample.
        p_member: Probability that a member of a firing group is active.
        noise_std: Standard deviation of isotropic Gaussian noise added to ``x``.
        seed: Seeds the directions.
    """

    def __init__(
        self,
        d_in: int = 64,
        n_features: int = 256,
        p_active: float = 0.02,
        max_magnitude: float = 1.0,
        n_groups: int = 0,
        group_size: int = 4,
        p_group: float = 0.02,
        p_member: float = 0.8,
        noise_std: float = 0.0,
        seed: int = 0,
    ) -> None:
        for name, value in (("d_in", d_in), ("n_features", n_features), ("group_size", group_size)):
            if value < 1:
                raise ValueError(f"{name} must be a positive int, got {value!r}")
        for name, value in (("p_active", p_active), ("p_group", p_group), ("p_member", p_member)):
            if not 0 <= value <= 1:
                raise ValueError(f"{name} must be a probability in [0, 1], got {value!r}")
        if n_groups < 0 or n_groups * group_size > n_features:
            raise ValueError(
                f"n_groups * group_size = {n_groups} * {group_size} must lie in [0, "
                f"n_features={n_features}]"
            )
        if max_magnitude <= 0 or noise_std < 0:
            raise ValueError(
                f"max_magnitude must be > 0 and noise_std >= 0, got {max_magnitude!r}, "
                f"{noise_std!r}"
            )
        self.d_in, self.n_features, self.p_active = d_in, n_features, p_active
        self.max_magnitude, self.noise_std = max_magnitude, noise_std
        self.n_groups, self.group_size = n_groups, group_size
        self.p_group, self.p_member = p_group, p_member
        gen = torch.Generator().manual_seed(seed)
        directions = torch.randn(n_features, d_in, generator=gen)
        self.directions = directions / directions.norm(dim=1, keepdim=True)  # [n, d_in]

    def sample_codes(self, n: int, gen: torch.Generator) -> Float[Tensor, "n n_features"]:
        """Sparse non-negative codes for ``n`` samples."""
        active = torch.rand(n, self.n_features, generator=gen) < self.p_active
        grouped = self.n_groups * self.group_size
        if grouped:
            fires = torch.rand(n, self.n_groups, generator=gen) < self.p_group  # [n, groups]
            members = torch.rand(n, grouped, generator=gen) < self.p_member
            on = fires.repeat_interleave(self.group_size, dim=1) & members  # [n, grouped]
            active[:, :grouped] = on  # grouped features fire only with their group
        magnitude = torch.rand(n, self.n_features, generator=gen) * self.max_magnitude
        return torch.where(active, magnitude.clamp(min=1e-6), 0.0)

    def sample(self, n: int, gen: torch.Generator) -> Float[Tensor, "n d_in"]:
        """Activations ``codes @ directions + noise`` for ``n`` samples."""
        x = self.sample_codes(n, gen) @ self.directions  # [n, d_in]
        if self.noise_std:
            x = x + self.noise_std * torch.randn(x.shape, generator=gen)
        return x

    def save(self, folder: str | Path) -> Path:
        """Write the true directions (``[n_features, d_in]``) as safetensors."""
        path = Path(folder) / DICTIONARY_FILE
        path.parent.mkdir(parents=True, exist_ok=True)
        save_file({"directions": self.directions.contiguous()}, str(path))
        return path


class _Batches(IterableDataset):
    """Batch ``i`` is a pure function of ``(seed, i)``: resuming at step ``s`` starts at ``s``."""

    def __init__(self, dictionary: SyntheticDictionary, batch_size: int, seed: int, start: int):
        super().__init__()
        self.dictionary, self.batch_size, self.seed, self.start = (
            dictionary,
            batch_size,
            seed,
            start,
        )

    def __iter__(self) -> Iterator[Tensor]:
        step = self.start
        while True:
            gen = torch.Generator().manual_seed(self.seed * 1_000_003 + step)
            yield self.dictionary.sample(self.batch_size, gen)
            step += 1


class SyntheticDataModule(L.LightningDataModule):
    """Training batches of synthetic activations; fixed held-out batches for validation.

    Args:
        dictionary: The ground truth.
        batch_size: Samples per training batch.
        val_samples: Held-out samples scored at each validation.
        seed: Seeds the samples (batch ``i`` depends only on ``seed`` and ``i``).
    """

    def __init__(
        self,
        dictionary: SyntheticDictionary,
        batch_size: int = 4096,
        val_samples: int = 16384,
        seed: int = 0,
    ) -> None:
        super().__init__()
        if batch_size < 1 or val_samples < 1:
            raise ValueError(
                f"batch_size and val_samples must be positive, got {batch_size}, {val_samples}"
            )
        self.dictionary, self.batch_size = dictionary, batch_size
        self.val_samples, self.seed = val_samples, seed

    model_free = True
    """No frozen transformer behind these activations: training validates on activations."""
    drop_bos = False

    def d_in(self) -> int:
        return self.dictionary.d_in

    def sample_activations(self, n: int) -> Float[Tensor, "n d_in"]:
        """Samples for initialisations (``b_dec``), from their own seed stream."""
        return self.dictionary.sample(n, torch.Generator().manual_seed(self.seed - 1))

    def train_dataloader(self) -> DataLoader:
        start = self.trainer.global_step if self.trainer is not None else 0
        batches = _Batches(self.dictionary, self.batch_size, self.seed, start)
        return DataLoader(batches, batch_size=None)

    def val_dataloader(self) -> DataLoader:
        gen = torch.Generator().manual_seed(self.seed + 1_000_000_007)
        x = self.dictionary.sample(self.val_samples, gen)  # [val_samples, d_in]
        return DataLoader(list(x.split(self.batch_size)), batch_size=None)
