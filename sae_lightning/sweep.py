"""Multirun summary: one row per job (L0, explained variance, loss recovered, dead fraction),
and the L0-vs-loss-recovered frontier across the jobs (``frontier.md``, ``frontier.html``).
A job that trained several SAEs (``saes=``) gives one row per SAE (``<job>/saes/<name>``);
a multi-SAE run's own ``<run>/saes`` folder is summarized the same way, one row per SAE.

Re-run on a finished sweep: ``python -m sae_lightning.sweep multirun/<date>/<time>``
(or ``<run>/saes``).
"""

from __future__ import annotations

import csv
import json
import logging
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig

from sae_lightning.frontier import write_frontier

log = logging.getLogger(__name__)
METRICS_FILE = "metrics.json"
FINISHED_FILES = (METRICS_FILE, "sae/cfg.json")
"""What a finished training job's folder holds: its final metrics and the exported SAE."""
COLUMNS = (
    "val/l0",
    "val/explained_variance",
    "val/loss_recovered",
    "val/dead_fraction",
    "val/ce_loss_sae",
    "val/kl",
)


def summarize(sweep_dir: str | Path) -> list[dict[str, Any]]:
    """Read every job's metrics.json under ``sweep_dir``; write summary.csv, summary.md and the
    frontier (frontier.md, frontier.html)."""
    sweep_dir = Path(sweep_dir)
    # a job that trained several SAEs (saes=) has one row per SAE: <job>/saes/<name>
    found = [*sweep_dir.glob(f"*/{METRICS_FILE}"), *sweep_dir.glob(f"*/saes/*/{METRICS_FILE}")]
    records = [
        (path.parent.relative_to(sweep_dir).as_posix(), json.loads(path.read_text()))
        for path in sorted(found, key=_row_order(sweep_dir))
    ]
    # show only the overrides that vary between jobs: the rest is the same for every row
    shared = (
        set.intersection(*(set(r.get("overrides", [])) for _, r in records)) if records else set()
    )
    rows = [
        {
            "job": job,
            "architecture": record.get("architecture", ""),
            "overrides": " ".join(o for o in record.get("overrides", []) if o not in shared),
            **{c: record.get("metrics", {}).get(c) for c in COLUMNS},
        }
        for job, record in records
    ]
    if not rows:
        log.warning("no %s under %s: nothing to summarize", METRICS_FILE, sweep_dir)
        return rows
    with (sweep_dir / "summary.csv").open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    (sweep_dir / "summary.md").write_text(markdown_table(rows))
    log.info("sweep summary of %d jobs:\n%s", len(rows), markdown_table(rows))
    write_frontier(sweep_dir, rows)
    log.info("frontier: %s", sweep_dir / "frontier.html")
    return rows


def _row_order(sweep_dir: Path):
    """Sort key of metrics.json paths: by job (:func:`job_order`), then SAE name."""

    def key(path: Path) -> tuple[tuple[int, str], str]:
        job, *sae = path.parent.relative_to(sweep_dir).parts
        return job_order(Path(job)), "/".join(sae)

    return key


def job_order(job_dir: Path) -> tuple[int, str]:
    """Sort key of a sweep's job folders: numbered jobs in numeric order, then the rest."""
    name = job_dir.name
    return (int(name), name) if name.isdigit() else (10**9, name)


def finished_jobs(sweep_dir: str | Path) -> list[Path]:
    """A sweep's job folders that finished training (each holds :data:`FINISHED_FILES`), in
    job order; none for a folder that does not exist."""
    sweep = Path(sweep_dir)
    if not sweep.is_dir():
        return []
    done = (p for p in sweep.iterdir() if all((p / f).is_file() for f in FINISHED_FILES))
    return sorted(done, key=job_order)


def markdown_table(rows: list[dict[str, Any]]) -> str:
    def cell(v: Any) -> str:
        return f"{v:.4f}" if isinstance(v, float) else ("" if v is None else str(v))

    head = list(rows[0])
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    lines += ["| " + " | ".join(cell(r[h]) for h in head) + " |" for r in rows]
    return "\n".join(lines) + "\n"


@contextmanager
def exit_on_failure(what: str) -> Iterator[None]:
    """Run a Hydra callback's work so that its failure fails the command.

    Hydra catches an exception from a callback and only warns, so ``python train.py -m``
    would exit with status 0 after a failed report. Here the error is logged with its
    traceback and the process exits with status 1.
    """
    try:
        yield
    except Exception:
        log.exception("%s failed", what)
        raise SystemExit(1) from None


class SweepSummary(Callback):
    """Hydra callback: at the end of a multirun, summarize its jobs into the sweep folder."""

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        with exit_on_failure("the sweep summary"):
            summarize(config.hydra.sweep.dir)


if __name__ == "__main__":
    import sys

    logging.basicConfig(level=logging.INFO, format="%(message)s")
    if len(sys.argv) != 2:
        sys.exit("usage: python -m sae_lightning.sweep MULTIRUN_DIR")
    summarize(sys.argv[1])
