"""``analyze(cfg)``: load an SAE, its frozen model and a token stream; run every criterion.

One streaming pass (``trainer.validate`` on :class:`AnalysisModule`) feeds the criteria;
the per-feature results go to ``<out>/report/criteria.json``, TensorBoard
(``<out>/tensorboard``) and a scorecard in the log; with ``dashboards=true`` also the HTML
dashboards (``report/index.html``, ``report/features/<i>.html``, and ``report/prompts.html``
for ``prompt=...``).
"""

from __future__ import annotations

import logging
import math
from pathlib import Path
from typing import Any

import lightning as L
from hydra.utils import instantiate
from jaxtyping import Int
from lightning.pytorch.loggers import TensorBoardLogger
from lightning.pytorch.utilities import rank_zero_info
from omegaconf import DictConfig
from torch import Tensor

from sae_lightning.analysis.comparison import Comparison, load_comparison
from sae_lightning.analysis.criterion import AnalysisContext, Criterion
from sae_lightning.analysis.folders import EVENTS_SUFFIX, REPORT, ReportFolder
from sae_lightning.analysis.loading import check_compatible, is_multi_source, latest_run, load_sae
from sae_lightning.analysis.module import AnalysisModule
from sae_lightning.analysis.options import check_options
from sae_lightning.analysis.ordering import checked_criteria
from sae_lightning.analysis.reader import Reader
from sae_lightning.analysis.records import CRITERIA_FILE
from sae_lightning.analysis.results import AnalysisResults
from sae_lightning.analysis.selection import select_features
from sae_lightning.analysis.sources import crosscoder_info, load_sources
from sae_lightning.cpu_bf16 import warn_emulated_bf16
from sae_lightning.hooks import context_length, model_device
from sae_lightning.models import EMBEDDED_NAME, load_model_by_name
from sae_lightning.report.windows import add_window_activations
from sae_lightning.training import instantiate_dict

log = logging.getLogger(__name__)

REPORT_FILE = Path(REPORT) / CRITERIA_FILE


def vocab_strings(model) -> list[str]:
    """Every token id of the model decoded on its own (ids past the tokenizer: ``""``)."""
    tokenizer, d_vocab = model.tokenizer, int(model.cfg.d_vocab)
    known = min(len(tokenizer), d_vocab)
    return list(tokenizer.batch_decode([[i] for i in range(known)])) + [""] * (d_vocab - known)


def load_contexts(cfg: DictConfig, model, n_ctx: int) -> Int[Tensor, "n n_ctx"]:
    """``ceil(tokens / n_ctx)`` contexts of ``cfg.data``'s split (all of them if fewer)."""
    source = instantiate(cfg.data.source)
    reader = source.reader(cfg.data.split, model.tokenizer, n_ctx, int(model.cfg.d_vocab))
    if cfg.tokens is None:
        return reader[:]
    if cfg.tokens < 1:
        raise ValueError(f"tokens must be a positive integer or null (all), got {cfg.tokens!r}")
    wanted = math.ceil(cfg.tokens / n_ctx)
    contexts = reader[:wanted]  # a streamed or memory-mapped source reads only these
    if len(contexts) < wanted:
        log.warning(
            "tokens=%d asks for %d contexts of %d, but split %r has only %d (%d tokens): using all",
            cfg.tokens,
            wanted,
            n_ctx,
            cfg.data.split,
            len(contexts),
            len(contexts) * n_ctx,
        )
    return contexts[:wanted]


def _context_length(cfg: DictConfig, metadata: dict[str, Any], reader: Reader) -> int:
    """``data.n_ctx``, else the SAE's context size, else the model's, checked to fit every
    model read (a crosscoder's too)."""
    n_ctx = cfg.data.get("n_ctx") or metadata.get("context_size")
    return min(context_length(m, n_ctx, key="data.n_ctx") for m in reader.models)


def resolve_drop_bos(option: bool | None, metadata: dict[str, Any]) -> bool:
    """Whether the analysis drops BOS: ``option`` (``drop_bos=``) if set, else as the SAE was
    trained (SAELens' ``metadata.seqpos_slice``: a start of 1 or more skips BOS), else True
    (train.py drops BOS by default)."""
    if option is not None:
        if not isinstance(option, bool):
            raise ValueError(f"drop_bos must be true, false or null, got {option!r}")
        return option
    seqpos = metadata.get("seqpos_slice")
    if isinstance(seqpos, (list, tuple)) and seqpos:
        return int(seqpos[0] or 0) >= 1
    return True


def _criteria(cfg: DictConfig) -> list[Criterion]:
    criteria = instantiate_dict(cfg.get("criteria"))
    if not criteria:
        log.warning("no criteria selected (criteria=[...]): the report lists features only")
    return checked_criteria(criteria)  # providers of artefacts first; a missing one fails here


def _load(cfg: DictConfig) -> tuple[Any, dict[str, Any], Reader, Comparison | None]:
    """The SAE, its metadata, the :class:`Reader` of its model(s) and hook(s), checked to
    fit each other; the ``compare_with`` SAE (with its own model when it reads another one),
    or None."""
    if cfg.get("compare_model") and not cfg.get("compare_with"):
        raise ValueError(
            f"compare_model={cfg.compare_model} is the model of the compare_with SAE, but "
            f"compare_with={cfg.get('compare_with')!r}: pass compare_with=PATH too, or drop "
            "compare_model"
        )
    path = cfg.get("sae_path") or latest_run(cfg.get("runs_root") or "outputs")
    sae, metadata = load_sae(path)
    if is_multi_source(metadata):
        return sae, metadata, _crosscoder_reader(cfg, sae, metadata), None
    hook = cfg.get("hook_name") or metadata.get("hook_name")
    if not hook:
        raise ValueError(f"SAE {metadata.get('source')} names no hook: pass hook_name=...")
    if cfg.get("model"):
        model = instantiate(cfg.model)
    else:
        model = load_model_by_name(metadata.get("model_name") or EMBEDDED_NAME)
    check_compatible(sae, metadata, model, hook)
    other = None
    if cfg.get("compare_with"):
        compare_model = instantiate(cfg.compare_model) if cfg.get("compare_model") else None
        other = load_comparison(cfg.compare_with, metadata, model, hook, compare_model)
    return sae, metadata, Reader(model, hook, metadata.get("hook_name_out")), other


def _crosscoder_reader(cfg: DictConfig, sae, metadata: dict[str, Any]) -> Reader:
    """A crosscoder's sources (:func:`load_sources`); the options that name one model or
    hook, or a second SAE, are refused."""
    for key in ("model", "hook_name", "compare_with"):
        if cfg.get(key):
            raise ValueError(
                f"{key}={cfg.get(key)} does not apply to SAE {metadata.get('source')}: it is a "
                f"crosscoder over {len(metadata['sources'])} sources, analysed on the models "
                f"and hooks its metadata names ({metadata['sources']}); drop {key}="
            )
    return load_sources(sae, metadata)


def analyze(cfg: DictConfig) -> AnalysisResults:
    """Analyse an SAE's features as configured (``conf/analyze.yaml``); returns the results.

    Before anything loads, the options are checked, the criteria built (a bad option fails
    in a second) and ``report_dir`` claimed (:class:`ReportFolder`: one analysis at a time;
    the report is published whole at the end, replacing an earlier one).
    """
    L.seed_everything(cfg.seed, workers=True)
    criteria = _criteria(cfg)
    check_options(cfg, criteria)
    warn_emulated_bf16(cfg)
    out = Path(cfg.report_dir) if cfg.get("report_dir") else Path(cfg.paths.output_dir)
    with ReportFolder(out) as folder:
        return _analyze(cfg, criteria, folder)


def _analyze(cfg: DictConfig, criteria: list[Criterion], folder: ReportFolder) -> AnalysisResults:
    """The pass and its outputs, written into ``folder.report`` (published on return)."""
    sae, metadata, reader, other = _load(cfg)
    model, hook = reader.model, reader.hook_name
    contexts = load_contexts(cfg, model, _context_length(cfg, metadata, reader))
    drop_bos = resolve_drop_bos(cfg.get("drop_bos"), metadata)
    features = select_features(cfg.features, sae, reader, contexts, drop_bos)
    ctx = AnalysisContext(
        sae=sae,
        model=model,
        hook_name=hook,
        features=features,
        str_tokens=vocab_strings(model),
        contexts=contexts,
        other_sae=other.sae if other else None,
        other_model=other.model if other else None,
        other_hook_name=other.hook_name if other else None,
        drop_bos=drop_bos,
        hook_name_out=reader.write_hook,
        others=reader.others,
    )
    info = {
        **metadata,
        "hook_name": hook,
        "n_tokens": contexts.numel(),
        "n_contexts": len(contexts),
        "n_ctx": int(contexts.shape[1]),
        "drop_bos": drop_bos,
        "n_analysed_tokens": len(contexts) * (int(contexts.shape[1]) - ctx.start),
        "n_features": len(features),
        "d_sae": sae.d_sae,
        "compare_with": cfg.get("compare_with"),
        **_cross_model_info(other),
        **crosscoder_info(sae, metadata, features),
        "criteria": [c.name for c in criteria],
    }
    results = AnalysisResults(features, info)
    module = AnalysisModule(sae, model, ctx, results, ctx.other_sae, cfg.batch_size)
    logger = TensorBoardLogger(
        folder.out,
        name="tensorboard",
        version="",
        default_hp_metric=False,
        filename_suffix=EVENTS_SUFFIX,  # an analysis's own events: a re-run replaces them
    )
    trainer: L.Trainer = instantiate(
        cfg.trainer, callbacks=criteria, logger=logger, use_distributed_sampler=False
    )
    trainer.validate(module)
    # Lightning returns the validated module (with the SAE) to the CPU, while the frozen
    # model stays where it ran: the windows and prompts below encode next to the model
    sae.to(model_device(model))
    if trainer.is_global_zero:
        if cfg.get("dashboards"):
            add_window_activations(results.features, sae, reader, contexts, start=ctx.start)
        path = results.to_json(folder.report / CRITERIA_FILE)
        rank_zero_info(f"feature scorecard ({folder.final(path)}):\n{results.scorecard()}")
        if cfg.get("dashboards") or cfg.get("prompt"):
            _write_dashboards(cfg, path, sae, reader, logger, folder)
    return results


def _cross_model_info(other: Comparison | None) -> dict[str, Any]:
    """Metadata of a cross-model comparison: the other model and hook (nothing otherwise)."""
    if other is None or other.model is None:
        return {}
    return {"compare_model": other.model_name, "compare_hook_name": other.hook_name}


def _write_dashboards(
    cfg: DictConfig,
    path: Path,
    sae,
    reader: Reader,
    logger: TensorBoardLogger,
    folder: ReportFolder,
) -> None:
    """The HTML report from the criteria.json just written; its (published) paths to
    TensorBoard."""
    from sae_lightning.report import Dashboards, load_report, write_dashboards
    from sae_lightning.report.prompts import analyse_prompts

    written = []
    if cfg.get("dashboards"):
        written.append(write_dashboards(path))
    if cfg.get("prompt"):
        prompts = cfg.prompt
        prompts = [prompts] if isinstance(prompts, str) else [str(p) for p in prompts]
        report = load_report(path)
        analyses = analyse_prompts(prompts, sae, reader, report)
        written.append(Dashboards(report, path.parent).write_prompts(analyses))
    shown = [folder.final(page).resolve() for page in written]
    for page in shown:
        rank_zero_info(f"dashboard: file://{page}")
    text = "\n".join(f"    file://{page}" for page in shown)
    logger.experiment.add_text("report/dashboards", text, 0)
    logger.experiment.flush()
