"""What a training run writes when it ends: the SAELens export, ``metrics.json``, the
hyper-parameters with the final metrics, a crosscoder's histogram page; for several SAEs
in one process, each SAE's own folder, then their summary and frontier."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

from lightning.pytorch.loggers import TensorBoardLogger
from lightning.pytorch.utilities import rank_zero_info
from omegaconf import DictConfig, OmegaConf

from sae_lightning.data.synthetic import DICTIONARY_FILE
from sae_lightning.disk import tensor_bytes, writing
from sae_lightning.formats import save_saelens
from sae_lightning.guards import end_of_run_warnings
from sae_lightning.multi_config import SAES_DIR, member_metrics, run_overrides
from sae_lightning.paired import PairedSpec
from sae_lightning.sweep import METRICS_FILE, summarize

log = logging.getLogger(__name__)

SYNTHETIC = "synthetic"
"""The model name an SAE trained on model-free (synthetic) activations records."""


def finish(
    cfg: DictConfig,
    out: Path,
    module,
    positions: tuple[int, int],
    model_name: str,
    metrics: dict,
    loggers: list,
    notes: list[str],
    overrides: list[str] | None = None,
) -> None:
    """Export the SAE, write metrics.json (with ``warnings``: ``notes``; ``overrides``: the
    command line that trains it, this run's by default), log hyper-parameters with the
    final metrics."""
    if cfg.get("export", True):
        metadata = {
            "model_name": model_name,
            "hook_name": cfg.hook_name,
            **({"hook_name_out": cfg.hook_name_out} if cfg.get("hook_name_out") else {}),
            **({"sources": sources} if (sources := _sources(module)) else {}),
            "context_size": positions[0],
            "prepend_bos": True,
            # SAELens' name for the positions trained on: [1, None] skips BOS (drop_bos)
            "seqpos_slice": [positions[1], None] if positions[1] else [None],
        }
        scale = float(module.act_scale)
        with writing(out / "sae", tensor_bytes(module.sae.state_dict())):
            folder = save_saelens(module.sae.cpu(), out / "sae", metadata, activation_scale=scale)
        if model_name == SYNTHETIC:  # no model: compare with the planted dictionary instead
            hint = f"no model to analyse: val/mmcs compares it with {out / DICTIONARY_FILE}"
        else:
            hint = (
                f"next: python analyze.py sae_path={out}  (the detailed investigation, HTML "
                f"dashboards in {out}/report)"
            )
        rank_zero_info(f"exported the SAE to {folder}\n{hint}")
    record = {
        "metrics": metrics,
        "overrides": run_overrides() if overrides is None else overrides,
        "architecture": module.sae.architecture,
        "warnings": notes,
    }
    with writing(out / METRICS_FILE):
        (out / METRICS_FILE).write_text(json.dumps(record, indent=2) + "\n")
    params = OmegaConf.to_container(cfg, resolve=False)
    flat = {k: v for k, v in _flatten(params).items() if isinstance(v, (int, float, str, bool))}
    final = {f"hparams/{k}": v for k, v in metrics.items()}
    for lg in loggers:
        # only TensorBoard's takes metrics (its hparams tab); CSV, W&B and MLflow take params
        if isinstance(lg, TensorBoardLogger):
            lg.log_hyperparams(flat, final)
        else:
            lg.log_hyperparams(flat)


def finish_many(
    out: Path,
    subs: dict[str, tuple[DictConfig, list[str]]],
    members: dict[str, Any],
    member_loggers: dict[str, list],
    metrics: dict[str, float],
    source: tuple[tuple[int, int], str],
) -> None:
    """Each SAE's export, metrics.json, config.yaml and hyper-parameters in
    ``<run>/saes/<name>`` (``source``: positions and model name, as for :func:`_finish`),
    then the summary and the frontier of the SAEs there, as after a ``-m`` sweep."""
    positions, model_name = source
    for name, (sub, solo) in subs.items():
        mine = member_metrics(metrics, name)
        notes = end_of_run_warnings(mine, sub.module.optimizer.get("lr"))
        for note in notes:
            log.warning("SAE %s: %s", name, note)
        folder = Path(sub.paths.output_dir)
        folder.mkdir(parents=True, exist_ok=True)
        OmegaConf.save(sub, folder / "config.yaml")
        member = members[name]
        finish(sub, folder, member, positions, model_name, mine, member_loggers[name], notes, solo)
    summarize(out / SAES_DIR)


def crosscoder_page(out: Path, module) -> None:
    """The shared / exclusive histogram of a trained crosscoder, over the latents that fired
    in the last density window (a dead latent keeps its random split)."""
    from sae_lightning.report.crosscoder import write_crosscoder_page

    sources = _sources(module)
    names = tuple(s["model_name"] for s in sources) if sources else None
    keep = module.density.compute() > 0 if int(module.density.n) > 0 else None
    page = write_crosscoder_page(out, module.sae.cpu(), names, keep)
    rank_zero_info(f"crosscoder histogram: file://{page.resolve()}")


def _sources(module) -> list[dict[str, str]] | None:
    """A two-model crosscoder's sources (model and hook of each part), else None."""
    spec = getattr(module, "spec", None)
    return spec.source_names if isinstance(spec, PairedSpec) else None


def _flatten(tree: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    flat: dict[str, Any] = {}
    for key, value in tree.items():
        name = f"{prefix}{key}"
        flat.update(_flatten(value, name + ".") if isinstance(value, dict) else {name: value})
    return flat
