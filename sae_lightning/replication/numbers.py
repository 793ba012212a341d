"""The replication's numbers, gathered from the runs and the analysis reports (``numbers.json``).

Everything the markdown report shows comes from :func:`collect`, so the report can be
re-rendered, compared between runs, or checked by a test without re-running anything.
"""

from __future__ import annotations

import json
import statistics
from pathlib import Path
from typing import Any

from omegaconf import OmegaConf

from sae_lightning.analysis.records import (
    DownstreamResult,
    NotANeuronResult,
    SensitivityResult,
    SpecificityResult,
    TopActivationsResult,
    UniversalityResult,
    result_of,
    value_of,
)
from sae_lightning.replication.concepts import Pick
from sae_lightning.replication.density import densities, density_summary
from sae_lightning.replication.universality import universality_numbers
from sae_lightning.sweep import METRICS_FILE

TRAIN_METRICS = (
    "val/loss_recovered",
    "val/l0",
    "val/explained_variance",
    "val/dead_fraction",
    "val/ce_loss_clean",
    "val/ce_loss_sae",
    "val/ce_loss_zero_ablation",
)
UNIVERSAL = 0.7  # a best-match activation correlation at or above this counts as "found again"


def run_numbers(run: Path) -> dict[str, Any]:
    """A training run's model, settings, final validation metrics and wall time."""
    record = json.loads((run / METRICS_FILE).read_text())
    sae_cfg = run / "sae" / "cfg.json"
    meta = json.loads(sae_cfg.read_text()).get("metadata", {}) if sae_cfg.is_file() else {}
    cfg = OmegaConf.load(run / ".hydra" / "config.yaml") if (run / ".hydra").is_dir() else None

    def setting(key: str) -> Any:
        if cfg is None:
            return None
        return OmegaConf.select(cfg, key, throw_on_resolution_failure=False)

    started = run / ".hydra" / "config.yaml"
    seconds = (run / METRICS_FILE).stat().st_mtime - started.stat().st_mtime
    return {
        "job": run.name,
        "model": meta.get("model_name"),
        "seed": setting("seed"),
        "d_sae": setting("sae.d_sae"),
        "architecture": record.get("architecture"),
        "k": setting("sae.k"),
        "l1_coeff": setting("loss.l1_coeff"),
        "auxk_coeff": setting("loss.auxk_coeff"),
        "lr": setting("module.optimizer.lr"),
        "lr_decay": setting("module.scheduler.decay"),
        "steps": setting("trainer.max_steps"),
        "batch_size": setting("data.batch_size"),
        "train_minutes": round(seconds / 60, 1) if started.is_file() else None,
        "metrics": {k: record["metrics"].get(k) for k in TRAIN_METRICS},
    }


GROUPS = {  # subsets of the compared features over which the universality medians are taken
    "all": lambda f: True,
    "density >= 1e-3": lambda f: f["density"] is not None and f["density"] >= 1e-3,
    "density < 1e-3": lambda f: f["density"] is not None and f["density"] < 1e-3,
    "passing specificity": lambda f: f["specificity"] is True,
    "passing specificity and sensitivity": lambda f: (
        f["specificity"] is True and f["sensitivity"] is True
    ),
}


def _compared(report: dict[str, Any]) -> list[dict[str, Any]]:
    """Per feature that universality judged: its best match, best neuron, density, verdicts."""
    rows = []
    for entry in report["features"].values():
        u = result_of(entry, UniversalityResult)
        if u is None or u.activation_corr is None or u.verdict is None:
            continue
        top = result_of(entry, TopActivationsResult, nested=False)
        spec = result_of(entry, SpecificityResult, nested=False)
        sens = result_of(entry, SensitivityResult)
        rows.append(
            {
                "best": float(u.activation_corr),
                "neuron": u.neuron_corr,
                "density": top.density if top else None,
                "specificity": spec.verdict if spec else None,
                "sensitivity": sens.verdict if sens else None,
            }
        )
    return rows


def _medians(rows: list[dict[str, Any]]) -> dict[str, Any]:
    best = [r["best"] for r in rows]
    neuron = [float(r["neuron"]) for r in rows if r["neuron"] is not None]
    return {
        "n": len(rows),
        "median_best_match_corr": statistics.median(best) if best else None,
        "median_neuron_corr": statistics.median(neuron) if neuron else None,
        "share_best_match_universal": sum(b >= UNIVERSAL for b in best) / len(best)
        if best
        else None,
    }


def population(report: dict[str, Any]) -> dict[str, Any]:
    """Pass rates of each criterion, and the universality medians over the features it
    judged (those that fired), overall (``median_*``) and per :data:`GROUPS` (``groups``)."""
    out: dict[str, Any] = {
        name: summary.get("pass_rate")
        for name, summary in report.get("criteria", {}).items()
        if "pass_rate" in summary
    }
    rows = _compared(report)
    overall = _medians(rows)
    out["n_compared"] = overall.pop("n")
    out.update(overall)
    out["groups"] = {name: _medians([r for r in rows if keep(r)]) for name, keep in GROUPS.items()}
    return out


def _condition(proxy: str | None) -> str:
    """The context condition of an automatic proxy's description (after its token set)."""
    if not proxy or not proxy.startswith("tokens {"):
        return ""
    return proxy[proxy.rfind("}") + 1 :].lstrip(", ")


def feature_numbers(report: dict[str, Any], feature: int) -> dict[str, Any]:
    """One feature's headline numbers from a report (missing criteria give None)."""
    entry = report["features"][str(feature)]
    top = result_of(entry, TopActivationsResult, nested=False)
    spec = result_of(entry, SpecificityResult, nested=False)
    sens = result_of(entry, SensitivityResult)
    down = result_of(entry, DownstreamResult)
    neuron = result_of(entry, NotANeuronResult)
    uni = result_of(entry, UniversalityResult)
    return {
        "feature": feature,
        "density": top.density if top else None,
        "proxy": spec.proxy if spec else None,
        "proxy_tokens": list(spec.proxy_tokens) if spec else [],
        "proxy_condition": _condition(spec.proxy if spec else None),
        "specificity": spec.specificity if spec else None,
        "n_above_threshold": spec.n_above_threshold if spec else None,
        "sensitivity": sens.sensitivity if sens else None,
        "n_proxy_fired": sens.n_proxy_fired if sens else None,
        "n_proxy_tokens": sens.n_proxy_tokens if sens else None,
        "max_neuron_corr": neuron.max_neuron_corr if neuron else None,
        "neuron": neuron.neuron if neuron else None,
        "top_logits": list(down.top_tokens)[:8] if down else [],
        "ablation_delta_logprob": down.ablation_delta_logprob if down else None,
        "best_match": uni.best_match if uni else None,
        "activation_corr": uni.activation_corr if uni else None,
        "logit_weight_corr": uni.logit_weight_corr if uni else None,
        "verdicts": {
            name: value_of(result, "verdict")
            for name, result in entry.items()
            if isinstance(result, dict) and "verdict" in result
        },
    }


def concept_numbers(
    picks: list[dict[str, Pick | None]], reports: list[dict[str, Any]], focus: dict | None
) -> dict[str, Any]:
    """Per concept: run A's feature (numbers from the focused pass when it has them, which
    include ablations), run B's own pick, and whether B's pick is A's best match."""
    out = {}
    for name, pick in picks[0].items():
        if pick is None:
            out[name] = {"a": None, "b": None, "b_is_best_match": None}
            continue
        source = focus if focus and str(pick.feature) in focus["features"] else reports[0]
        a = {**feature_numbers(source, pick.feature), "score": pick.score}
        a["n_candidates"], a["runner_up"] = pick.n_candidates, pick.runner_up
        other = picks[1].get(name)
        b = None if other is None else {**feature_numbers(reports[1], other.feature)}
        same = None if b is None else b["feature"] == a["best_match"]
        out[name] = {"a": a, "b": b, "b_is_best_match": same}
    return out


def collect(
    runs: dict[str, Path],
    reports: dict[str, dict[str, Any]],
    picks: dict[str, dict[str, Pick | None]],
    concepts: dict[str, list[str]],
    focus: dict[str, Any] | None = None,
    analysis_seconds: dict[str, float] | None = None,
) -> dict[str, Any]:
    """Everything the report shows.

    ``runs`` maps the roles ``a``, ``b``, ``a_prime`` to their job folders; ``reports`` the
    passes ``a_vs_b``, ``b_vs_a``, ``a_vs_a_prime`` to their ``criteria.json``; ``picks``
    runs ``a`` and ``b`` to their concept features (from ``a_vs_b`` and ``b_vs_a``);
    ``concepts`` each concept to its token strings; ``focus`` is the report of the pass over
    A's concept features (its numbers include their ablations), if it ran."""
    meta = reports["a_vs_b"]["metadata"]
    own = {"a": reports["a_vs_b"], "b": reports["b_vs_a"]}  # each SAE's pass (density, picks)
    return {
        "model": meta.get("model_name"),
        "hook": meta.get("hook_name"),
        "analysis": {
            "n_tokens": meta.get("n_tokens"),
            "split": "val",
            "seconds": {k: round(s, 1) for k, s in (analysis_seconds or {}).items()},
        },
        "runs": {role: {"role": role, **run_numbers(run)} for role, run in runs.items()},
        "density": {
            role: density_summary(densities(r["features"]), int(r["metadata"]["n_tokens"]))
            for role, r in own.items()
        },
        "universality": universality_numbers(reports),
        "population": {name: population(r) for name, r in reports.items()},
        "concepts": {
            name: {"tokens": list(concepts[name]), **numbers}
            for name, numbers in concept_numbers(
                [picks["a"], picks["b"]], [own["a"], own["b"]], focus
            ).items()
        },
    }
