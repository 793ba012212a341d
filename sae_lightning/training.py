"""``train(cfg)``: compose the frozen model, data, SAE and module from a Hydra config and fit."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import lightning as L
import torch
from hydra.utils import instantiate
from lightning.pytorch.callbacks import ModelCheckpoint, ProgressBar
from lightning.pytorch.utilities import rank_zero_info
from omegaconf import DictConfig

from sae_lightning.allocator import keep_freed_memory
from sae_lightning.cpu_bf16 import warn_emulated_bf16
from sae_lightning.denormals import flush_denormals
from sae_lightning.disk import DiskCheckedIO, writing
from sae_lightning.finish import SYNTHETIC, crosscoder_page, finish, finish_many
from sae_lightning.guards import end_of_run_warnings
from sae_lightning.hooks import check_hook_name
from sae_lightning.multi import MultiSAEModule, member_factory
from sae_lightning.multi_config import (
    SAELoggers,
    sae_configs,
)
from sae_lightning.preflight import (
    check_checkpoint,
    check_config,
    check_run_folder,
    warn_stale_final_validation,
)
from sae_lightning.progress import human
from sae_lightning.saes.crosscoder import CrosscoderSAE

log = logging.getLogger(__name__)


def instantiate_dict(cfg: DictConfig | None) -> list[Any]:
    """Instantiate every ``_target_`` node of a dict of named nodes (callbacks, loggers)."""
    if not cfg:
        return []
    return [
        instantiate(node)
        for node in cfg.values()
        if isinstance(node, DictConfig) and "_target_" in node
    ]


def build_sae(cfg: DictConfig, d_in: int, hook_name: str, d_out: int | None = None):
    """The SAE of ``cfg.sae`` with ``d_in`` filled from the model (or checked against it),
    and a transcoder's ``d_out`` from its output hook (``hook_name_out``)."""
    if cfg.sae.get("d_in") is not None and cfg.sae.d_in != d_in:
        raise ValueError(
            f"sae.d_in={cfg.sae.d_in} does not match the width {d_in} of hook {hook_name!r}; "
            f"set sae.d_in={d_in} or sae.d_in=null"
        )
    widths = {"d_in": d_in}
    if "d_out" in cfg.sae:  # a transcoder
        if d_out is None:
            raise ValueError(
                f"sae={cfg.sae._target_.rsplit('.', 1)[-1]} reconstructs another hook: set "
                "hook_name_out (e.g. hook_name=blocks.0.ln2.hook_normalized "
                "hook_name_out=blocks.0.hook_mlp_out, or experiment=transcoder); data=cached "
                "and data=synthetic hold one hook only"
            )
        widths["d_out"] = d_out
    elif d_out is not None:
        raise ValueError(
            f"hook_name_out={cfg.get('hook_name_out')!r} is set, but sae="
            f"{cfg.sae._target_.rsplit('.', 1)[-1]} reconstructs its own input: use "
            "sae=transcoder, or hook_name_out=null"
        )
    # seeded here, so that its weights do not depend on what consumed the global RNG before
    # (the model's loading, other SAEs of the run): a multi-SAE run's SAE equals its solo run
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(cfg.seed)
        return instantiate(cfg.sae, **widths)


def build_module(cfg: DictConfig, d_in: int, spec, member: bool = False):
    """The SAEModule of ``cfg.module`` training ``cfg.sae`` with ``cfg.loss``; ``member``:
    one SAE of a :class:`MultiSAEModule`."""
    sae = build_sae(cfg, d_in, cfg.hook_name, spec.d_out if spec is not None else None)
    # objects go in through a partial: instantiate() would turn a dataclass kwarg into a config
    factory = instantiate(cfg.module, _partial_=True)
    module = (member_factory(factory) if member else factory)(sae=sae, loss=instantiate(cfg.loss))
    if spec is not None:
        module.set_spec(spec)
    return module


def settle_process(cfg: DictConfig) -> None:
    """The process-wide settings a training run starts with: seeds, allocator, denormals."""
    L.seed_everything(cfg.seed, workers=True)
    keep_freed_memory()  # CPU steps reuse their large blocks instead of page-faulting anew
    flush_denormals()  # dead latents' Adam moments become 0, not slow denormals


def train(cfg: DictConfig) -> dict[str, float]:
    """Train an SAE as configured (or the SAEs of ``cfg.saes`` side by side, see
    :mod:`sae_lightning.multi_config`); returns the final validation metrics (``<name>/val/*``
    for several SAEs)."""
    settle_process(cfg)
    out = Path(cfg.paths.output_dir)
    check_hook_name(cfg.hook_name)  # before the model loads, like the checks below
    subs = sae_configs(cfg)  # {} for one SAE
    for sub in [cfg, *(c for c, _ in subs.values())]:
        check_config(sub)
    warn_stale_final_validation(cfg)  # once: a multi run's SAEs share its trainer
    warn_emulated_bf16(cfg)
    check_checkpoint(cfg.get("ckpt_path"))
    check_run_folder(out, cfg.get("ckpt_path"))
    datamodule = instantiate(cfg.data)
    # what the SAE reads, built once (None for model-free data: synthetic has no model)
    spec = None if datamodule.model_free else attach_models(cfg, datamodule)
    # before training; model-free data names its source model (a cache) or none (synthetic)
    model_name = (
        exported_model_name(spec.model)
        if spec is not None
        else getattr(datamodule, "model_name", SYNTHETIC)
    )
    loggers = instantiate_dict(cfg.get("logger"))
    module, members, member_loggers = _modules(cfg, subs, datamodule.d_in(), spec)
    trainer_loggers = [SAELoggers(loggers, member_loggers)] if subs else loggers
    if spec is None and hasattr(datamodule, "dictionary"):
        datamodule.dictionary.save(out)  # the ground truth beside the SAE it should match
    trainer: L.Trainer = instantiate(
        cfg.trainer, callbacks=_callbacks(cfg, multi=bool(subs)), logger=trainer_loggers or False
    )
    for sae_module in members.values() or [module]:
        _announce(cfg, sae_module.sae, model_name, datamodule)
    trainer.strategy.checkpoint_io = DiskCheckedIO(trainer.strategy.checkpoint_io)
    with writing(out):  # a full disk under the TensorBoard events says so
        # weights_only: a checkpoint to resume from is read without running pickled code
        ckpt_path = cfg.get("ckpt_path")
        trainer.fit(module, datamodule=datamodule, ckpt_path=ckpt_path, weights_only=True)
        # not reached when training diverged or was interrupted (guards.py): last.ckpt stays
        # the last finite, resumable state. Here: the final state, whatever step the last
        # validation fell on (all ranks take part)
        trainer.save_checkpoint(out / "checkpoints" / "last.ckpt", weights_only=False)
    # val/*, or <name>/val/* for each of several SAEs
    metrics = {
        k: float(v)
        for k, v in trainer.callback_metrics.items()
        if k.startswith("val/") or (subs and k.split("/", 1)[0] in subs and "/val/" in k)
    }
    positions = _positions(spec, datamodule)
    if subs:
        if trainer.is_global_zero:
            finish_many(out, subs, members, member_loggers, metrics, (positions, model_name))
        return metrics
    notes = end_of_run_warnings(metrics, cfg.module.optimizer.get("lr"))
    if trainer.is_global_zero:
        for note in notes:
            log.warning(note)
        finish(cfg, out, module, positions, model_name, metrics, loggers, notes)
        if isinstance(module.sae, CrosscoderSAE):
            crosscoder_page(out, module)
    return metrics


def attach_models(cfg: DictConfig, datamodule):
    """Load ``cfg.model`` (and ``cfg.model_b``, a crosscoder's second model) into the data
    module; returns its spec."""
    model = instantiate(cfg.model)
    if cfg.get("model_b") is None:
        return datamodule.set_model(model)
    model_b = instantiate(cfg.model_b)
    names = (exported_model_name(model), exported_model_name(model_b))
    return datamodule.set_model(model, model_b, names)


def _modules(
    cfg: DictConfig, subs: dict[str, tuple[DictConfig, list[str]]], d_in: int, spec
) -> tuple[Any, dict[str, Any], dict[str, list]]:
    """(the module to fit, the SAEs of ``subs`` by name, their loggers by name): the
    :class:`MultiSAEModule` of ``subs``, or the one SAEModule of ``cfg`` and two empty dicts."""
    if not subs:
        return build_module(cfg, d_in, spec), {}, {}
    members = {name: build_module(sub, d_in, spec, member=True) for name, (sub, _) in subs.items()}
    loggers = {name: instantiate_dict(sub.get("logger")) for name, (sub, _) in subs.items()}
    return MultiSAEModule(members), members, loggers


def _callbacks(cfg: DictConfig, multi: bool = False) -> list[Any]:
    """``cfg.callbacks``, less the progress bar when ``trainer.enable_progress_bar=false``
    (Lightning refuses a progress bar callback then) and, with several SAEs (``multi``),
    less the checkpoints that keep the best by a ``val/`` metric (each SAE has its own)."""
    callbacks = instantiate_dict(cfg.get("callbacks"))
    if multi:
        callbacks = [
            c
            for c in callbacks
            if not (isinstance(c, ModelCheckpoint) and str(c.monitor).startswith("val/"))
        ]
    if cfg.trainer.get("enable_progress_bar", True):
        return callbacks
    return [c for c in callbacks if not isinstance(c, ProgressBar)]


def _announce(cfg: DictConfig, sae, model_name: str, datamodule) -> None:
    """One line saying what is trained on what, for how long."""
    batch = getattr(datamodule, "batch_size", None)
    steps = cfg.trainer.get("max_steps")
    rank_zero_info(
        f"training a {sae.architecture} SAE ({sae.d_in} -> {sae.d_sae}) on {model_name} "
        f"{cfg.hook_name}: {steps} steps of {batch} activations "
        f"({human(steps * batch) if steps and batch else '?'} tokens)"
    )


def exported_model_name(model) -> str:
    """The name the exported SAE records for its model (analyze.py loads the model by it)."""
    name = getattr(model.cfg, "model_name", None)
    if not name:
        raise ValueError(
            f"the frozen model {type(model).__name__} has no cfg.model_name; the exported SAE "
            f"must name its model so that analyze.py can load it (set model_name when booting)"
        )
    return str(name)


def _positions(spec, datamodule) -> tuple[int, int]:
    """(context length, first trained position) of the activations; (1, 0) without contexts."""
    if spec is not None:
        return spec.n_ctx, spec.start
    return getattr(datamodule, "n_ctx", None) or 1, int(getattr(datamodule, "drop_bos", False))
