"""Training from an activation cache (``data=cached``), with the live stream's guarantees.

:class:`CachedStream` is :class:`~sae_lightning.data.activations.ActivationStream` with the
frozen forward replaced by a read of the cache: the same per-epoch permutation of the shard's
contexts, the same groups of ``contexts_per_forward`` contexts, the same shuffle buffer and RNG,
the same resumable :class:`~sae_lightning.data.activations.StreamState` and the same DDP
sharding by rank. So, with the same seed and settings, it yields the batches the live stream
yields on the cached contexts, in the same order; a checkpoint resumes it exactly.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import torch
from jaxtyping import Float
from safetensors import safe_open
from torch import Tensor
from torch.utils.data import DataLoader, TensorDataset

from sae_lightning.data.activations import ActivationStream
from sae_lightning.data.cache import CACHE_FILE, FORMAT_VERSION, VAL_FILE
from sae_lightning.data.datamodule import ActivationDataModule
from sae_lightning.data.readers import RowGroups
from sae_lightning.models import move_model
from sae_lightning.spec import ActivationSpec

log = logging.getLogger(__name__)


def read_cache_info(folder: str | Path) -> dict[str, Any]:
    """``cache.json`` of a complete cache; a clear error for anything else."""
    path = Path(folder) / CACHE_FILE
    if not path.is_file():
        raise FileNotFoundError(
            f"data.path={folder} is not an activation cache (no {CACHE_FILE}); write one with "
            f"python cache_activations.py path={folder}"
        )
    info = json.loads(path.read_text())
    if info.get("format_version") != FORMAT_VERSION:
        raise ValueError(
            f"cache {folder} has format_version={info.get('format_version')}; this version "
            f"reads {FORMAT_VERSION}: write it again with python cache_activations.py"
        )
    if not info.get("complete"):
        raise ValueError(
            f"cache {folder} is incomplete (its caching run was interrupted): run the same "
            f"python cache_activations.py command again to finish it"
        )
    return info


class CachedActivations:
    """Random access, by training context, to the activations of a complete cache.

    ``cache[rows]`` (an index tensor) is ``[len(rows), positions, d_in]`` in the cache's dtype;
    ``shape`` is ``(n_contexts, n_ctx)`` like the token contexts the live stream reads.
    """

    def __init__(self, folder: str | Path) -> None:
        self.folder = Path(folder)
        self.info = read_cache_info(folder)
        config = self.info["config"]
        self.n_ctx, self.drop_bos, self.d_in = config["n_ctx"], config["drop_bos"], config["d_in"]
        self.positions = int(self.info["positions"])
        counts = torch.tensor([s["contexts"] for s in self.info["shards"]])
        self.first = torch.cat([torch.zeros(1, dtype=torch.long), counts.cumsum(0)])
        self._files: dict[int, Any] = {}

    def __len__(self) -> int:
        return int(self.first[-1])

    @property
    def shape(self) -> tuple[int, int]:
        return (len(self), self.n_ctx)

    def _file(self, shard: int):
        if shard not in self._files:
            name = self.info["shards"][shard]["file"]
            self._files[shard] = safe_open(str(self.folder / name), framework="pt")
        return self._files[shard]

    def __getitem__(self, rows: Tensor | slice) -> Float[Tensor, "rows positions d_in"]:
        if isinstance(rows, slice):
            rows = torch.arange(len(self))[rows]
        shards = torch.searchsorted(self.first, rows, right=True) - 1
        parts = []
        for row, shard in zip(rows.tolist(), shards.tolist(), strict=True):
            local = (row - int(self.first[shard])) * self.positions
            parts.append(self._file(shard).get_slice("acts")[local : local + self.positions])
        if not parts:
            return torch.empty(0, self.positions, self.d_in)
        return torch.stack(parts)


class CachedStream(ActivationStream):
    """The live stream over a cache: each forward group is read instead of computed.

    Args:
        cache: the cache's activations.
        others: as :class:`ActivationStream` (no model, hook or BOS handling: the cache's).
    """

    def __init__(
        self,
        cache: CachedActivations,
        batch_size: int,
        buffer_tokens: int,
        refill_fraction: float = 0.5,
        contexts_per_forward: int = 32,
        seed: int = 0,
        rank: int = 0,
        world_size: int = 1,
        epochs: int | None = None,
        device: str | torch.device = "cpu",
    ) -> None:
        hook = cache.info["config"]["hook_name"]
        super().__init__(
            None, cache, hook, batch_size, buffer_tokens, refill_fraction,
            contexts_per_forward, cache.drop_bos, seed, rank, world_size, epochs, device,
        )  # fmt: skip

    def _forward_group(self, order: RowGroups, group: int) -> tuple[Tensor, Tensor]:
        acts = order.read(group).to(self.device).float()  # [k, positions, d_in]
        acts = acts.reshape(-1, acts.shape[-1])  # [k * positions, d_in]
        start = group * self.k * self.positions
        return acts, torch.arange(start, start + len(acts))


class CachedDataModule(ActivationDataModule):
    """Training batches from an activation cache (``python cache_activations.py``).

    Validation splices the SAE into the model named in ``cache.json`` (``train`` loads
    ``model`` and calls :meth:`set_model`, which checks it is that model) on the cached
    held-out contexts; with ``validate_with_model=False`` the module is model-free: validation
    scores reconstruction of the cached held-out activations and no model is ever loaded.

    Args:
        path: the cache folder.
        hook_name: the hook the run trains on; must be the cache's.
        batch_size / buffer_tokens / refill_fraction / contexts_per_forward / seed: as for
            :class:`ActivationDataModule` (the same values give the same batches).
        validate_with_model: load the frozen model for validation (CE loss recovered).
        val_contexts: held-out contexts scored at each validation (None: all cached).
        val_batch_size: contexts per validation batch.
    """

    def __init__(
        self,
        path: str,
        hook_name: str = "blocks.0.mlp.hook_post",
        batch_size: int = 4096,
        buffer_tokens: int = 65536,
        refill_fraction: float = 0.5,
        contexts_per_forward: int = 32,
        validate_with_model: bool = True,
        val_contexts: int | None = None,
        val_batch_size: int = 16,
        seed: int = 0,
    ) -> None:
        self.cache = CachedActivations(path)
        config = self.cache.info["config"]
        if config["hook_name"] != hook_name:
            raise ValueError(
                f"cache {path} holds activations of hook {config['hook_name']!r}, not "
                f"hook_name={hook_name!r}: set hook_name={config['hook_name']} or cache "
                f"{hook_name} with python cache_activations.py hook_name={hook_name}"
            )
        super().__init__(
            None, hook_name, batch_size, buffer_tokens, refill_fraction, contexts_per_forward,
            config["drop_bos"], config["n_ctx"], val_contexts or 0, val_batch_size, seed,
        )  # fmt: skip
        self.path, self.validate_with_model = path, validate_with_model
        self.model_free = not validate_with_model
        self.model_name = config["model_name"]
        self.val_acts: Tensor | None = None

    def set_model(self, model) -> ActivationSpec:
        name = getattr(model.cfg, "model_name", None)
        if name != self.model_name:
            raise ValueError(
                f"cache {self.path} was made with model {self.model_name!r}, but the model "
                f"loaded for validation is {name!r}: select that model, or set "
                f"data.validate_with_model=false (reconstruction metrics, no model)"
            )
        spec = super().set_model(model)
        if spec.d_in != self.cache.d_in:
            raise ValueError(
                f"cache {self.path} has d_in={self.cache.d_in}, but {self.hook_name!r} of "
                f"{name!r} is {spec.d_in} wide: the cache was made from another model"
            )
        return spec

    def prepare_contexts(self) -> None:
        if self.val_acts is None:
            with safe_open(str(Path(self.path) / VAL_FILE), framework="pt") as f:
                tokens, acts = f.get_tensor("tokens"), f.get_tensor("acts")
            n = min(self.val_contexts or len(tokens), len(tokens))
            self.val_ctx, self.val_acts = tokens[:n], acts[: n * self.cache.positions].float()
            self.train_ctx = self.cache

    def setup(self, stage: str | None = None) -> None:
        if self.model is not None:
            move_model(self.model, self.device)
        self.prepare_contexts()

    def d_in(self) -> int:
        return self.cache.d_in

    def sample_activations(self, n: int) -> Float[Tensor, "n d_in"]:
        """The first ``n`` cached activations (the live module's first contexts' ones)."""
        rows = torch.arange(min(len(self.cache), max(1, -(-n // self.cache.positions))))
        acts = self.cache[rows].float().reshape(-1, self.cache.d_in)[:n]
        return acts.to(self.device)

    def make_stream(
        self, rank: int = 0, world_size: int = 1, epochs: int | None = None
    ) -> CachedStream:
        return CachedStream(
            self.cache, self.batch_size, self.buffer_tokens, self.refill_fraction,
            self.contexts_per_forward, self.seed, rank, world_size, epochs, self.device,
        )  # fmt: skip

    def val_dataloader(self) -> DataLoader:
        self.prepare_contexts()
        if self.model_free:  # activation batches [b * positions, d_in]: reconstruction only
            chunks = list(self.val_acts.split(self.val_batch_size * self.cache.positions))
            return DataLoader(chunks, batch_size=None)
        return DataLoader(TensorDataset(self.val_ctx), batch_size=self.val_batch_size)
