"""Writing an activation cache: a model's activations at one hook, once, in safetensors shards.

A cache folder holds:

- ``cache.json``: ``format_version``, ``config`` (what made the activations: ``model_name``,
  ``hook_name``, ``n_ctx``, ``drop_bos``, ``d_in``, ``dtype``, ``source`` (the data source's
  config), ``contexts_per_shard``, ``val_contexts``) and, once complete, ``n_contexts``,
  ``positions`` (activations per context), ``n_activations`` and ``shards`` (``file``,
  ``contexts``, ``activations`` of each).
- ``shard_00000.safetensors`` ...: ``contexts_per_shard`` training contexts each, in the
  source's order: ``acts [n, d_in]`` (float32 or bfloat16) and, per activation, ``tokens``
  (its token id), ``context`` (the index of its training context) and ``position`` (its
  position in that context). Context ``c`` owns rows ``c * positions .. (c+1) * positions - 1``
  of the concatenated shards.
- ``val.safetensors``: the held-out validation contexts, ``tokens [v, n_ctx]``, and their
  activations ``acts [v * positions, d_in]`` (model-free validation).

Every file is written to a temporary name and renamed, so a file that exists is complete; an
interrupted run resumes by skipping the shards that exist.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from hydra.utils import instantiate
from jaxtyping import Float, Int
from omegaconf import DictConfig, OmegaConf
from safetensors.torch import save_file
from torch import Tensor
from tqdm import tqdm

from sae_lightning.data.readers import StreamedContexts
from sae_lightning.hooks import check_hook_name
from sae_lightning.spec import ActivationSpec

log = logging.getLogger(__name__)

FORMAT_VERSION = 1
CACHE_FILE = "cache.json"
VAL_FILE = "val.safetensors"
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}


def shard_name(index: int) -> str:
    return f"shard_{index:05d}.safetensors"


def save_atomic(tensors: dict[str, Tensor], path: Path) -> None:
    """``save_file`` to a temporary name, then rename: ``path`` exists only when complete."""
    tmp = path.with_name(path.name + ".tmp")
    save_file({k: v.contiguous() for k, v in tensors.items()}, str(tmp))
    os.replace(tmp, path)


def write_json(record: dict[str, Any], path: Path) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(record, indent=2) + "\n")
    os.replace(tmp, path)


def open_folder(folder: Path, config: dict[str, Any]) -> None:
    """Refuse a non-empty ``folder`` unless it is an earlier cache of the same ``config``."""
    if not folder.exists() or not any(folder.iterdir()):
        return
    info = folder / CACHE_FILE
    if not info.is_file():
        raise ValueError(
            f"cache folder {folder} is not empty and holds no {CACHE_FILE}: refusing to write "
            f"into it; give path=<an empty or new folder>"
        )
    old = json.loads(info.read_text()).get("config")
    if old != config:
        diff = {
            k: (old.get(k) if old else None, v)
            for k, v in config.items()
            if not old or old.get(k) != v
        }
        raise ValueError(
            f"cache folder {folder} holds a cache of another config (was, now: {diff}): "
            f"refusing to overwrite it; give path=<an empty or new folder>"
        )
    log.info("resuming the cache in %s (complete shards are kept)", folder)


def context_chunks(contexts: Any, size: int) -> Iterator[Int[Tensor, "rows n_ctx"]]:
    """The training contexts in source order, ``size`` at a time (the last may be shorter)."""
    if isinstance(contexts, StreamedContexts):
        rows: list[Tensor] = []
        for _, _, ctx in contexts.iterate(contexts.start, 0):
            rows.append(ctx)
            if len(rows) == size:
                yield torch.stack(rows)
                rows = []
        if rows:
            yield torch.stack(rows)
        return
    for start in range(0, len(contexts), size):
        yield contexts[start : start + size]


def capture_rows(
    spec: ActivationSpec, tokens: Int[Tensor, "rows n_ctx"], per_forward: int
) -> Float[Tensor, "n d_in"]:
    """The trained positions' float32 activations of ``tokens``, ``per_forward`` contexts at a
    time (the live stream's forward size)."""
    parts = []
    with torch.inference_mode():
        for group in tokens.split(per_forward):
            parts.append(spec.trained(spec.capture(group)).clone())
    return torch.cat(parts)


def shard_tensors(
    spec: ActivationSpec, tokens: Int[Tensor, "rows n_ctx"], first: int, per_forward: int, dtype
) -> dict[str, Tensor]:
    """One shard: activations of contexts ``first ..`` with their token, context and position."""
    acts = capture_rows(spec, tokens, per_forward).to(dtype)  # [rows * positions, d_in]
    positions = torch.arange(spec.start, tokens.shape[1])
    return {
        "acts": acts,
        "tokens": tokens[:, spec.start :].reshape(-1),
        "context": torch.arange(first, first + len(tokens)).repeat_interleave(len(positions)),
        "position": positions.repeat(len(tokens)),
    }


def cache_config(cfg: DictConfig, spec: ActivationSpec, model_name: str) -> dict[str, Any]:
    return {
        "model_name": model_name,
        "hook_name": spec.hook_name,
        "n_ctx": spec.n_ctx,
        "drop_bos": spec.drop_bos,
        "d_in": spec.d_in,
        "dtype": cfg.dtype,
        "source": OmegaConf.to_container(cfg.data.source, resolve=True),
        "contexts_per_shard": int(cfg.contexts_per_shard),
        "val_contexts": int(cfg.data.val_contexts),
    }


def cache_activations(cfg: DictConfig) -> Path:
    """Write the activations that ``cfg.data`` and ``cfg.model`` give at ``cfg.hook_name`` into
    ``cfg.path``; returns the folder. Resumes an interrupted cache of the same config."""
    check_hook_name(cfg.hook_name)
    if cfg.dtype not in DTYPES:
        raise ValueError(f"dtype={cfg.dtype!r} is not a cache dtype; valid: {sorted(DTYPES)}")
    if int(cfg.contexts_per_shard) < 1:
        raise ValueError(f"contexts_per_shard={cfg.contexts_per_shard} must be >= 1")
    datamodule = instantiate(cfg.data)
    spec = datamodule.set_model(instantiate(cfg.model))
    model_name = getattr(spec.model.cfg, "model_name", None) or "unknown"
    datamodule.prepare_contexts()  # a source error stops before the folder is touched
    folder = Path(cfg.path)
    config = cache_config(cfg, spec, model_name)
    open_folder(folder, config)
    folder.mkdir(parents=True, exist_ok=True)
    write_json(
        {"format_version": FORMAT_VERSION, "config": config, "complete": False}, folder / CACHE_FILE
    )
    dtype, k = DTYPES[cfg.dtype], datamodule.contexts_per_forward
    if not (folder / VAL_FILE).is_file():
        val = datamodule.val_ctx
        save_atomic(
            {"tokens": val, "acts": capture_rows(spec, val, k).to(dtype)}, folder / VAL_FILE
        )
    shards = _write_shards(
        folder, datamodule.train_ctx, spec, int(cfg.contexts_per_shard), k, dtype
    )
    positions = spec.n_ctx - spec.start
    n_contexts = sum(s["contexts"] for s in shards)
    write_json(
        {
            "format_version": FORMAT_VERSION,
            "config": config,
            "complete": True,
            "n_contexts": n_contexts,
            "positions": positions,
            "n_activations": n_contexts * positions,
            "shards": shards,
        },
        folder / CACHE_FILE,
    )
    log.info(
        "cached %d activations in %s\nnext: python train.py data=cached data.path=%s",
        n_contexts * positions,
        folder,
        folder,
    )
    return folder


def _write_shards(
    folder: Path, contexts: Any, spec: ActivationSpec, per_shard: int, k: int, dtype
) -> list[dict[str, Any]]:
    """Write each missing shard; returns every shard's ``file``, ``contexts``, ``activations``."""
    total = None if isinstance(contexts, StreamedContexts) else len(contexts)
    positions = spec.n_ctx - spec.start
    shards, first = [], 0
    with tqdm(total=total, desc="caching", unit="ctx", dynamic_ncols=True) as bar:
        for index, tokens in enumerate(context_chunks(contexts, per_shard)):
            path = folder / shard_name(index)
            if not path.is_file():  # an existing shard was renamed into place complete
                save_atomic(shard_tensors(spec, tokens, first, k, dtype), path)
            shards.append(
                {"file": path.name, "contexts": len(tokens), "activations": len(tokens) * positions}
            )
            first += len(tokens)
            bar.update(len(tokens))
    if first == 0:
        raise ValueError("the data source gave no training contexts: nothing to cache")
    return shards
