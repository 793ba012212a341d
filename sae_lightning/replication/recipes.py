"""The universality recipe sweep: which training recipe makes the replication's SAEs most
universal across the two transformers, at a loss recovered of at least 0.85 on both.

Each recipe trains SAE A on ``toy-1l`` and SAE B on ``toy-1l-b`` (``conf/replication_sae/``;
the job's ``replication.recipe`` names the recipe). A recipe is scored as the replication
report's first table scores it: one analysis pass of every feature of A against B on the whole
held-out split (criteria ``top_activations`` and ``universality``, no neuron baseline), the
median best-match ``|correlation|`` of the features firing on at least ``min_density`` of the
tokens. Beside it: L0 and loss recovered of A and B, A's dense (> 1e-2) and rare (< 1e-4)
feature counts, and the training minutes.

    python train.py -m hparams_search=universality       # trains and scores (conf/hparams_search)
    python -m sae_lightning.replication.recipes SWEEP    # re-scores a finished sweep

Writes ``<sweep>/recipes/``: ``recipes.md``, ``recipes.json``, ``density_<recipe>.svg``.
"""

from __future__ import annotations

import argparse
import json
import logging
import statistics
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf

from sae_lightning.analysis.records import UniversalityResult, result_of
from sae_lightning.analysis.run import REPORT_FILE, analyze
from sae_lightning.replication.density import densities, density_summary, density_svg
from sae_lightning.replication.numbers import run_numbers
from sae_lightning.replication.run import analysis_config
from sae_lightning.replication.universality import comparison_numbers
from sae_lightning.report import load_report
from sae_lightning.sweep import METRICS_FILE, exit_on_failure, finished_jobs

log = logging.getLogger(__name__)
ROLES = ("a", "b")
OUT_DIR = "recipes"
MIN_LOSS_RECOVERED = 0.85
BANDS = ((1e-5, 1e-4), (1e-4, 1e-3), (1e-3, 1e-2), (1e-2, 1.0))
"""Density bands (``[low, high)``, the last closed) of the per-band medians."""


def _select(cfg: DictConfig, key: str) -> Any:
    return OmegaConf.select(cfg, key, default=None, throw_on_resolution_failure=False)


def find_pairs(sweep_dir: str | Path) -> dict[str, dict[str, Path]]:
    """The sweep's finished jobs (``metrics.json`` and an exported SAE) by recipe and role.

    Raises:
        ValueError: when no recipe has both a finished A and a finished B.
    """
    sweep = Path(sweep_dir)
    pairs: dict[str, dict[str, Path]] = {}
    for run in finished_jobs(sweep):
        config = run / ".hydra" / "config.yaml"
        if not config.is_file():
            continue
        cfg = OmegaConf.load(config)
        recipe, role = _select(cfg, "replication.recipe"), _select(cfg, "replication.role")
        if recipe is not None and role in ROLES:
            pairs.setdefault(str(recipe), {}).setdefault(role, run)
    complete = {name: runs for name, runs in pairs.items() if set(runs) == set(ROLES)}
    if not complete:
        found = {name: sorted(runs) for name, runs in pairs.items()}
        raise ValueError(
            f"no recipe under {sweep} has a finished run of each role {ROLES} (jobs with "
            f"{METRICS_FILE}, sae/cfg.json and replication.recipe / replication.role in their "
            f"config); found {found}: run "
            "'python train.py -m hparams_search=universality'"
        )
    return complete


def recipe_settings(run: Path) -> str:
    """The recipe's training settings in one line, read from the job's config."""
    cfg = OmegaConf.load(run / ".hydra" / "config.yaml")
    arch = str(_select(cfg, "sae._target_") or "?").rsplit(".", 1)[-1]
    parts = [f"{arch} d_sae {_select(cfg, 'sae.d_sae')}"]
    keys = (("sae.k", "k"), ("loss.l1_coeff", "l1"), ("loss.dead_tokens", "AuxK dead after"))
    no_auxk = _select(cfg, "loss.auxk_coeff") == 0
    for key, label in keys:
        if _select(cfg, key) is not None:
            no_dead = key == "loss.dead_tokens" and no_auxk  # dead_tokens is then unused
            parts.append("no AuxK" if no_dead else f"{label} {_select(cfg, key)}")
    steps, batch = _select(cfg, "trainer.max_steps"), _select(cfg, "data.batch_size")
    parts.append(f"{steps} x {batch}")
    lr, decay = _select(cfg, "module.optimizer.lr"), _select(cfg, "module.scheduler.decay")
    parts.append(f"lr {lr}" + ("" if decay in (None, "none") else f" {decay} decay"))
    if _select(cfg, "callbacks.dead_feature_resampler") is not None:
        parts.append("resampling")
    if str(_select(cfg, "trainer.precision") or "32").startswith("bf16"):
        parts.append("bf16-mixed")
    return ", ".join(parts)


def band_medians(features: dict[str, dict[str, Any]]) -> dict[str, list[Any]]:
    """Per density band of :data:`BANDS`: ``[count, median best-match |corr|]`` (median None
    for an empty band)."""
    matches = [
        (u.density, abs(u.activation_corr))
        for u in (result_of(f, UniversalityResult, nested=False) for f in features.values())
        if u is not None and u.density is not None and u.activation_corr is not None
    ]
    out: dict[str, list[Any]] = {}
    for low, high in BANDS:
        band = sorted(c for d, c in matches if low <= d < high or d == high == 1.0)
        out[f"{low:g}-{high:g}"] = [len(band), statistics.median(band) if band else None]
    return out


def score_pair(
    run_a: Path, run_b: Path, out: Path, tokens: int | None = None, min_density: float = 1e-5
) -> dict[str, Any]:
    """Analyse every feature of A against B on the held-out split; the recipe's row."""
    cfg = OmegaConf.load(run_a / ".hydra" / "config.yaml")
    settings = OmegaConf.create(
        {
            "criteria": ["top_activations", "universality"],
            "analysis": {
                "criteria": {"universality": {"neuron_baseline": False, "min_density": min_density}}
            },
        }
    )
    values = {"sae_path": str(run_a / "sae"), "compare_with": str(run_b / "sae")}
    values.update(features="all", tokens=tokens, dashboards=False)
    analyze(analysis_config(settings, _select(cfg, "data.source"), out, **values))
    report = load_report(out / REPORT_FILE)
    cross = comparison_numbers(report)
    density = density_summary(densities(report["features"]), int(report["metadata"]["n_tokens"]))
    a, b = run_numbers(run_a), run_numbers(run_b)
    return {
        "settings": recipe_settings(run_a),
        "median_best_match": cross["features"],
        "n_live_features": cross["n_live_features"],
        "n_features": cross["n_features"],
        "l0": [a["metrics"]["val/l0"], b["metrics"]["val/l0"]],
        "loss_recovered": [a["metrics"]["val/loss_recovered"], b["metrics"]["val/loss_recovered"]],
        "above_1e-2": density["above_1e-2"],
        "below_1e-4": density["below_1e-4"],
        "bands": band_medians(report["features"]),
        "train_minutes": [a["train_minutes"], b["train_minutes"]],
        "runs": [str(run_a), str(run_b)],
        "density": density,
    }


def choose(rows: dict[str, dict[str, Any]], min_lr: float = MIN_LOSS_RECOVERED) -> str | None:
    """The recipe with the largest median best match among those whose A and B both recover
    at least ``min_lr`` of the loss; None when none does."""
    ok = {
        name: row
        for name, row in rows.items()
        if row["median_best_match"] is not None
        and all(v is not None and v >= min_lr for v in row["loss_recovered"])
    }
    return max(ok, key=lambda name: ok[name]["median_best_match"]) if ok else None


def _f(value: Any, digits: int = 3) -> str:
    return "–" if value is None else f"{value:.{digits}f}"


def recipe_table(rows: dict[str, dict[str, Any]], min_lr: float = MIN_LOSS_RECOVERED) -> str:
    """Markdown: one row per recipe, and the recipe chosen."""
    lines = [
        "| recipe | settings | median best-match \\|corr\\| A vs B (live features) | "
        "loss recovered A / B | L0 A / B | A: density > 1e-2 | A: density < 1e-4 | "
        "train minutes A / B |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for name, r in rows.items():
        lines.append(
            f"| {name} | {r['settings']} | {_f(r['median_best_match'])} "
            f"({r['n_live_features']:,} of {r['n_features']:,}) | "
            f"{' / '.join(_f(v) for v in r['loss_recovered'])} | "
            f"{' / '.join(_f(v, 1) for v in r['l0'])} | {r['above_1e-2']:,} | "
            f"{r['below_1e-4']:,} | {' / '.join(_f(v, 1) for v in r['train_minutes'])} |"
        )
    lines += [
        "",
        "Median best-match \\|corr\\| of A's features by density band on the held-out tokens "
        "(count in brackets):",
        "",
        "| recipe | " + " | ".join(f"{lo:g} – {hi:g}" for lo, hi in BANDS) + " |",
        "|---|" + "---|" * len(BANDS),
    ]
    for name, r in rows.items():
        cells = [f"{_f(median)} ({count:,})" for count, median in r.get("bands", {}).values()]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    best = choose(rows, min_lr)
    verdict = (
        f"No recipe recovers at least {min_lr} of the loss on both A and B."
        if best is None
        else f"Best at loss recovered >= {min_lr} on both: **{best}** "
        f"({_f(rows[best]['median_best_match'])})."
    )
    return "\n".join([*lines, "", verdict]) + "\n"


def score_sweep(
    sweep_dir: str | Path, tokens: int | None = None, min_density: float = 1e-5
) -> dict[str, dict[str, Any]]:
    """Score every recipe of a finished sweep; write ``<sweep>/recipes/``; return the rows."""
    sweep = Path(sweep_dir)
    out = sweep / OUT_DIR
    rows = {}
    for name, runs in find_pairs(sweep).items():
        log.info("recipe %s: every feature of %s against %s", name, runs["a"], runs["b"])
        rows[name] = score_pair(runs["a"], runs["b"], out / name, tokens, min_density)
        density = rows[name]["density"]
        title = f"Feature density, recipe {name}, run A ({density['n_tokens']:,} held-out tokens)"
        svg = density_svg(density, title)
        (out / f"density_{name}.svg").write_text(svg)
    (out / "recipes.json").write_text(json.dumps(rows, indent=1) + "\n")
    (out / "recipes.md").write_text(recipe_table(rows))
    log.info("recipe sweep: %s", out / "recipes.md")
    return rows


class RecipeSweep(Callback):
    """At the end of ``python train.py -m hparams_search=universality``: score each recipe
    (:func:`score_sweep`) on ``tokens`` held-out tokens (null: the whole split)."""

    def __init__(self, tokens: int | None = None, min_density: float = 1e-5) -> None:
        self.tokens, self.min_density = tokens, min_density

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        with exit_on_failure("the recipe sweep's scoring"):  # else Hydra only warns: exit 0
            score_sweep(config.hydra.sweep.dir, self.tokens, self.min_density)


def main(argv: list[str] | None = None) -> dict[str, dict[str, Any]]:
    parser = argparse.ArgumentParser(prog="python -m sae_lightning.replication.recipes")
    parser.add_argument(
        "sweep_dir", type=Path, help="multirun folder of hparams_search=universality"
    )
    parser.add_argument("--tokens", type=int, default=None, help="held-out tokens (default: all)")
    parser.add_argument("--min-density", type=float, default=1e-5)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    return score_sweep(args.sweep_dir, args.tokens, args.min_density)


if __name__ == "__main__":
    main()
