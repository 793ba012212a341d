"""``replicate(sweep_dir, settings)``: the analysis half of the replication.

Given a finished sweep of three SAE runs of one recipe (``conf/replication_sae/``: A on
toy-1l seed 0, A' on toy-1l seed 1, B on toy-1l-b seed 0; each job's ``replication.role``
says which), it runs ``analyze(cfg)`` four times, in process, on the held-out split of the
training corpus:

1. every feature of A with every criterion and universality against B, across transformers
   (both models run on the same tokens; neurons of A's model matched against B's: the paper's
   baseline), the density histogram and the concept features of A;
2. the same for B against A (B's own concept features, and the symmetric statistics);
3. every feature of A against A', on the same transformer (the contrast row);
4. only A's concept features against B, with dashboards and a prompt-centric page (these
   pages are the ones the published report links to; every number on them equals pass 1's).

Then :mod:`sae_lightning.replication.writeup` writes ``<sweep>/replication/``.
"""

from __future__ import annotations

import logging
import shutil
import time
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf, open_dict

from sae_lightning.analysis.run import REPORT_FILE, analyze
from sae_lightning.replication.concepts import concept_tokens, select_concept
from sae_lightning.replication.writeup import NUMBERS_FILE, write_writeup
from sae_lightning.report import load_report
from sae_lightning.sweep import FINISHED_FILES, finished_jobs

log = logging.getLogger(__name__)

CONF_DIR = Path(__file__).resolve().parents[2] / "conf"
ROLES = ("a", "b", "a_prime")
"""The runs' ``replication.role`` values (conf/replication_sae/): A and B on two transformers,
A' on A's transformer with another seed."""
COMPARISONS = {"a_vs_b": ("a", "b"), "b_vs_a": ("b", "a"), "a_vs_a_prime": ("a", "a_prime")}
"""Each full analysis pass: (the SAE analysed, the ``compare_with`` SAE)."""


def run_role(run: Path) -> str | None:
    """A job folder's ``replication.role`` (from its ``.hydra/config.yaml``), or None."""
    config = run / ".hydra" / "config.yaml"
    if not config.is_file():
        return None
    return OmegaConf.select(OmegaConf.load(config), "replication.role", default=None)


def find_runs(sweep_dir: str | Path) -> dict[str, Path]:
    """The sweep's finished job folders (with ``METRICS_FILE`` and an exported SAE) by role;
    one of each of :data:`ROLES` is required (the first in job order when repeated)."""
    sweep = Path(sweep_dir)
    done = [p for p in finished_jobs(sweep) if p.name.isdigit()]
    runs: dict[str, Path] = {}
    for run in done:
        role = run_role(run)
        if role in ROLES:
            runs.setdefault(role, run)
    missing = [r for r in ROLES if r not in runs]
    if missing:
        found = {p.name: run_role(p) for p in done}
        raise ValueError(
            f"the replication needs three finished runs with replication.role {', '.join(ROLES)}"
            f" (job folders with {' and '.join(FINISHED_FILES)}) under {sweep}; missing {missing}, "
            f"found jobs {found}: run 'python train.py -m experiment=replicate_monosemanticity' "
            "(note the -m)"
        )
    return {role: runs[role] for role in ROLES}


def publish(report: Path, target: Path) -> None:
    """Replace ``target`` by a copy of the report folder (only an earlier report is replaced)."""
    if target.exists() and any(target.iterdir()) and not (target / NUMBERS_FILE).is_file():
        raise ValueError(
            f"replication.publish_dir={target} exists and is not an earlier replication report "
            f"(no {NUMBERS_FILE}): give a new or empty folder, e.g. docs/replication"
        )
    if target.exists():
        shutil.rmtree(target)
    shutil.copytree(report, target)
    log.info("replication report published to %s", target)


def compose_analysis(criteria: list[str]) -> DictConfig:
    """``conf/analyze.yaml`` with these criteria (inside a running Hydra app or standalone)."""
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    overrides = [f"criteria=[{','.join(criteria)}]"]
    if GlobalHydra.instance().is_initialized():
        return compose("analyze", overrides=overrides)
    if not (CONF_DIR / "analyze.yaml").is_file():
        raise FileNotFoundError(f"no analyze.yaml in {CONF_DIR}: run from a source checkout")
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        return compose("analyze", overrides=overrides)


def analysis_config(
    settings: DictConfig, source: DictConfig | None, out: Path, **values: Any
) -> DictConfig:
    """An analysis config: the settings' criteria and overrides, then ``values`` set on it."""
    cfg = compose_analysis(list(settings.criteria))
    with open_dict(cfg):
        if source is not None:  # the training corpus, so that the val split is held out
            cfg.data.source = OmegaConf.create(OmegaConf.to_container(source, resolve=True))
        if settings.get("analysis"):  # nested analyze.yaml keys, e.g. {criteria: {...}}
            cfg.merge_with(settings.analysis)
        for key, value in {**values, "report_dir": str(out), "paths.output_dir": str(out)}.items():
            OmegaConf.update(cfg, key, value, merge=False)
    return cfg


def _analyse(settings, source, out: Path, **values: Any) -> tuple[dict[str, Any], float]:
    start = time.perf_counter()
    analyze(analysis_config(settings, source, out, **values))
    return load_report(out / REPORT_FILE), time.perf_counter() - start


def replicate(sweep_dir: str | Path, settings: DictConfig, source: DictConfig | None) -> Path:
    """Analyse the sweep's runs A, B and A' and write ``<sweep>/replication/``; returns it.

    Args:
        sweep_dir: The multirun folder of ``python train.py -m experiment=...``.
        settings: The ``replication`` node of the experiment (criteria, concepts, prompt, ...).
        source: The training runs' ``data.source`` (the analysis reads its val split).
    """
    sweep = Path(sweep_dir)
    runs = find_runs(sweep)
    concepts = {name: concept_tokens(spec) for name, spec in settings.concepts.items()}
    base = {"features": "all", "tokens": settings.tokens, "dashboards": False}
    reports, seconds = {}, {}
    for name, (mine, other) in COMPARISONS.items():
        log.info("replication: every feature of %s against %s", runs[mine], runs[other])
        reports[name], seconds[name] = _analyse(
            settings, source, sweep / "analysis" / name, sae_path=str(runs[mine] / "sae"),
            compare_with=str(runs[other] / "sae"), **base,
        )  # fmt: skip
    own = {"a": reports["a_vs_b"]["features"], "b": reports["b_vs_a"]["features"]}
    picks = {run: {c: select_concept(f, t) for c, t in concepts.items()} for run, f in own.items()}
    chosen = sorted({p.feature for p in picks["a"].values() if p is not None})
    focus_dir, focus = sweep / "analysis" / "focus", None
    if chosen:
        log.info("replication: dashboards of run A's concept features %s", chosen)
        focus, _ = _analyse(
            settings, source, focus_dir, sae_path=str(runs["a"] / "sae"),
            compare_with=str(runs["b"] / "sae"), features=chosen, tokens=settings.tokens,
            dashboards=True, prompt=settings.get("prompt"),
        )  # fmt: skip
    out = sweep / "replication"
    if out.exists():
        shutil.rmtree(out)
    if chosen:
        shutil.copytree(focus_dir / "report", out / "dashboards")
    write_writeup(
        out, runs=runs, reports=reports, picks=picks, concepts=concepts, focus=focus,
        analysis_seconds=seconds, command=settings.get("command") or "",
    )  # fmt: skip
    if settings.get("publish_dir"):
        publish(out, Path(settings.publish_dir))
    log.info("replication report: %s", out / "README.md")
    return out
