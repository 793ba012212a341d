"""Checks ``train(cfg)`` makes before the model loads: hyper-parameters, the checkpoint to
resume from, and the run folder. Each raises one message naming the bad value; one only warns
(a final validation that comes before the last step)."""

from __future__ import annotations

import importlib
import logging
import math
import pickle
import re
import zipfile
from pathlib import Path
from typing import Any

import torch
from hydra.errors import InstantiationException
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

log = logging.getLogger(__name__)

RESUME_HINT = "resume from a .ckpt that train.py wrote, e.g. <run>/checkpoints/last.ckpt"


def check_config(cfg: DictConfig) -> None:
    """Refuse non-finite numbers anywhere, a learning rate <= 0, and optimizer, scheduler
    or loss settings their constructors refuse (built here on a dummy parameter).

    Raises:
        ValueError: naming the key and its value.
    """
    for key, value in _leaves(_container(cfg)):
        if isinstance(value, float) and not math.isfinite(value):
            raise ValueError(f"{key}={value} is not a finite number; give a finite value")
    module = cfg.get("module") or {}
    optimizer = module.get("optimizer")
    lr = optimizer.get("lr") if optimizer is not None else None
    if isinstance(lr, (int, float)) and lr <= 0:
        raise ValueError(
            f"module.optimizer.lr={lr} must be > 0: the SAE would never change; "
            "typical values for Adam are 1e-4 to 1e-3"
        )
    if optimizer is None:
        return
    dummy = [torch.nn.Parameter(torch.zeros(1))]
    opt = _built("module.optimizer", lambda: instantiate(optimizer)(dummy))
    if module.get("scheduler") is not None:
        steps = cfg.trainer.max_steps
        _built("module.scheduler", lambda: instantiate(module.scheduler)(opt, total_steps=steps))
    if cfg.get("loss") is not None:
        _built("loss", lambda: instantiate(cfg.loss))
    check_monitor(cfg)


def warn_stale_final_validation(cfg: DictConfig) -> str | None:
    """Warn (and return the warning) when the last validation comes before the last step.

    Validation runs every ``trainer.val_check_interval`` steps, so when ``max_steps`` is not
    a multiple of it the final metrics (``metrics.json``, the export's, a sweep's summary)
    describe the SAE as it was some steps before the end. Fewer steps than one interval is
    left to the end-of-run warning that validation never ran."""
    trainer = cfg.get("trainer") or {}
    steps, every = trainer.get("max_steps"), trainer.get("val_check_interval")
    if not all(isinstance(v, int) and not isinstance(v, bool) for v in (steps, every)):
        return None
    if every <= 0 or steps < every or steps % every == 0:
        return None
    last = steps - steps % every
    divisor = max(d for d in range(1, every + 1) if steps % d == 0)
    message = (
        f"trainer.max_steps={steps} is not a multiple of trainer.val_check_interval={every}: "
        f"the last validation runs at step {last}, so the run's final metrics are "
        f"{steps - last} steps old; set trainer.max_steps={last + every} or "
        f"trainer.val_check_interval={divisor}"
    )
    log.warning(message)
    return message


def check_monitor(cfg: DictConfig) -> None:
    """Refuse a checkpoint monitor on ``val/loss_recovered`` when validation has no model to
    splice into (planted synthetic data, or a cache read with ``validate_with_model=false``):
    Lightning would stop at the first validation, after the first training steps.

    Raises:
        ValueError: naming the data option, the monitor and the metrics to monitor instead.
    """
    data = cfg.get("data") or {}
    monitor = OmegaConf.select(cfg, "callbacks.model_checkpoint.monitor", default=None)
    if monitor != "val/loss_recovered":
        return
    # the data module's own ``model_free`` (the class's; a cache's follows validate_with_model)
    if _model_free_class(data.get("_target_")) or data.get("validate_with_model") is False:
        raise ValueError(
            f"callbacks.model_checkpoint.monitor={monitor}, but data={data.get('_target_')} "
            "validates without a model, so nothing logs it: use experiment=synthetic (monitors "
            "val/mmcs) or experiment=cached_model_free, or set "
            "callbacks.model_checkpoint.monitor=val/explained_variance "
            "callbacks.model_checkpoint.mode=max"
        )


def _built(key: str, build: Any) -> Any:
    """``build()``; a ValueError it raises (or Hydra wraps) is re-raised naming ``key``."""
    try:
        return build()
    except (ValueError, InstantiationException) as err:
        cause: BaseException | None = err
        while isinstance(cause, InstantiationException):
            cause = cause.__cause__
        if not isinstance(cause, ValueError):
            raise
        raise ValueError(f"{key}: {cause}") from None


def _container(cfg: DictConfig) -> Any:
    try:
        return OmegaConf.to_container(cfg, resolve=True)
    except Exception:  # noqa: BLE001  (an interpolation only Hydra's runtime can resolve)
        return OmegaConf.to_container(cfg, resolve=False)


def _leaves(tree: Any, prefix: str = "") -> list[tuple[str, Any]]:
    if isinstance(tree, dict):
        items = [(f"{prefix}{k}", v) for k, v in tree.items()]
    elif isinstance(tree, list):
        items = [(f"{prefix[:-1]}[{i}]", v) for i, v in enumerate(tree)]
    else:
        return [(prefix[:-1], tree)]
    return [leaf for key, value in items for leaf in _leaves(value, f"{key}.")]


def _model_free_class(target: str | None) -> bool:
    """The ``model_free`` flag of a data module class (False when it cannot be imported:
    instantiating it reports that)."""
    module, _, name = (target or "").rpartition(".")
    try:
        cls = getattr(importlib.import_module(module), name, None) if module else None
    except ImportError:
        return False
    return bool(getattr(cls, "model_free", False))


def check_checkpoint(ckpt_path: str | Path | None) -> None:
    """Refuse a checkpoint to resume from that is missing, empty, truncated, not a Lightning
    training checkpoint, or holds pickled objects that ``weights_only=True`` refuses. The
    tensors are memory-mapped, not read.

    Raises:
        FileNotFoundError: for a missing file.
        ValueError: for the rest, naming the file.
    """
    if ckpt_path is None:
        return
    path = Path(ckpt_path)
    if not path.exists():
        raise FileNotFoundError(f"ckpt_path={path} does not exist; {RESUME_HINT}")
    if not path.is_file():
        raise ValueError(f"ckpt_path={path} is a folder, not a checkpoint; {RESUME_HINT}")
    size = path.stat().st_size
    if size == 0:
        raise ValueError(
            f"ckpt_path={path} is empty (0 bytes), not a checkpoint: it was never fully "
            f"written (a killed run or a full disk); {RESUME_HINT}"
        )
    if not zipfile.is_zipfile(path):
        raise ValueError(
            f"ckpt_path={path} ({size} bytes) is truncated or not a checkpoint: torch.save "
            f"writes a zip archive and this file is not a whole one; {RESUME_HINT}"
        )
    checkpoint = _load_mapped(path)
    missing = [k for k in ("state_dict", "optimizer_states", "loops") if k not in checkpoint]
    if missing:
        raise ValueError(
            f"ckpt_path={path} is not a Lightning training checkpoint (no {', '.join(missing)}); "
            f"an exported SAE cannot be resumed; {RESUME_HINT}"
        )


def _load_mapped(path: Path) -> dict:
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except pickle.UnpicklingError as err:
        found = re.search(r"GLOBAL ([\w.]+)", str(err))
        what = f"the pickled global {found.group(1)}" if found else "pickled objects"
        raise ValueError(
            f"ckpt_path={path} is not a safe checkpoint: it holds {what}, and only tensors and "
            f"plain containers are ever loaded (anything else could run code); {RESUME_HINT}"
        ) from None
    except (RuntimeError, OSError, EOFError) as err:
        first = str(err).splitlines()[0] if str(err) else type(err).__name__
        raise ValueError(
            f"ckpt_path={path} is truncated or corrupt, not a checkpoint ({first}); {RESUME_HINT}"
        ) from None
    if not isinstance(checkpoint, dict):
        raise ValueError(f"ckpt_path={path} holds a {type(checkpoint).__name__}, not a checkpoint")
    return checkpoint


def check_run_folder(out: Path, ckpt_path: str | Path | None) -> None:
    """Refuse to train into a folder that holds an exported SAE or checkpoints, unless
    resuming from a checkpoint inside it.

    Raises:
        ValueError: naming the folder and the two ways out.
    """
    held = [p for p in (out / "sae" / "cfg.json",) if p.is_file()]
    held += sorted((out / "checkpoints").glob("*.ckpt"))
    if not held:
        return
    if ckpt_path is not None and Path(ckpt_path).resolve().is_relative_to(out.resolve()):
        return
    raise ValueError(
        f"the run folder {out} already holds a trained run ({held[0].relative_to(out)}); "
        f"train into a new folder (paths.output_dir=... or hydra.run.dir=...), or resume "
        f"this run with ckpt_path={out / 'checkpoints' / 'last.ckpt'}"
    )
