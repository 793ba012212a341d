"""Universality as the paper measured it: features vs neurons across two transformers.

*Towards Monosemanticity* matches each feature of A/1 (an SAE on transformer A) with its
best-correlated feature of B/1 (an SAE on transformer B, another seed) and each neuron of A
with its best-correlated neuron of B, over the same tokens, and reports the medians (0.72 for
features, 0.46 for neurons) with dead and ultralow-density features left out. The numbers
here are the ``universality`` criterion's population summary of each analysis pass (medians
of the best ``|correlation|`` over the features firing on at least ``min_density`` of the
tokens; :mod:`plugins.universality`), for A vs B and B vs A across transformers and A vs A'
(two seeds on one transformer) for contrast.
"""

from __future__ import annotations

import math
from typing import Any

from sae_lightning.analysis.records import UniversalityResult
from sae_lightning.replication.paper import PAPER, WELL_BELOW

LABELS = {
    "a_vs_b": "A vs B",
    "b_vs_a": "B vs A",
    "a_vs_a_prime": "A vs A'",
}


def comparison_numbers(report: dict[str, Any]) -> dict[str, Any]:
    """One pass's universality summary: the medians, what they were taken over, the models."""
    summary = report.get("criteria", {}).get(UniversalityResult.criterion, {})
    meta = report["metadata"]

    def count(key: str) -> int | None:
        return None if summary.get(key) is None else int(summary[key])

    return {
        "model": meta.get("model_name"),
        "compare_model": meta.get("compare_model") or meta.get("model_name"),
        "across_transformers": bool(meta.get("compare_model")),
        "min_density": summary.get("min_density"),
        "n_tokens": meta.get("n_analysed_tokens") or meta.get("n_tokens"),  # density's divisor
        "n_features": len(report["features"]),
        "n_live_features": count("n_live_features"),
        "features": summary.get("median_best_match_corr"),
        "feature_best_neuron": summary.get("median_neuron_baseline_corr"),
        "neurons": summary.get("median_neuron_best_match_corr"),
        "n_neurons": count("n_neurons"),
    }


def target(cross: dict[str, Any]) -> dict[str, Any]:
    """Whether A vs B meets the paper's figure: features at least ``PAPER`` 0.72 and neurons
    at least :data:`WELL_BELOW` below them (None where a median is missing)."""
    features, neurons = cross.get("features"), cross.get("neurons")
    reached = None if features is None else features >= PAPER["feature_universality"]
    gap = None if features is None or neurons is None else features - neurons
    below = None if gap is None else gap >= WELL_BELOW - 1e-9  # 0.72 - 0.62 is 0.0999...
    met = None if reached is None or below is None else reached and below
    return {"features_reached": reached, "gap": gap, "neurons_well_below": below, "met": met}


def universality_numbers(reports: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """The headline table's numbers: the paper's, each pass's, and the target's verdict."""
    out: dict[str, Any] = {
        "paper": {
            "features": PAPER["feature_universality"],
            "neurons": PAPER["neuron_universality"],
            "min_density": PAPER["ultralow_threshold"],
        },
        **{name: comparison_numbers(reports[name]) for name in LABELS if name in reports},
    }
    out["target"] = target(out.get("a_vs_b", {}))
    return out


def _num(value: Any) -> str:
    return "–" if value is None else f"{value:.3f}"


def _over(c: dict[str, Any]) -> str:
    return f"{_num(c['features'])} ({c['n_live_features'] or 0:,} of {c['n_features']:,} features)"


def _threshold(c: dict[str, Any]) -> str:
    """``min_density`` in words: the fraction, and the fewest tokens it means here."""
    density, n = c.get("min_density"), c.get("n_tokens")
    if density is None:
        return "– of the held-out tokens"
    if not n:
        return f"{density} of the held-out tokens"
    return f"{density} of the held-out tokens, {math.ceil(density * n):,} of {n:,} here"


def _verdict(u: dict[str, Any]) -> str:
    t, cross = u["target"], u.get("a_vs_b", {})
    paper = PAPER["feature_universality"]
    if t["met"]:
        return (
            f"**Target met**: features {_num(cross['features'])} ≥ {paper} across transformers, "
            f"neurons {_num(t['gap'])} below them (at least {WELL_BELOW} asked)."
        )
    parts = []
    if t["features_reached"] is not None and not t["features_reached"]:
        parts.append(f"features reach {_num(cross['features'])}, below the paper's {paper}")
    if t["neurons_well_below"] is not None and not t["neurons_well_below"]:
        where = (
            f"only {_num(t['gap'])} below features"
            if t["gap"] >= 0
            else f"{_num(-t['gap'])} above features"
        )
        parts.append(
            f"neurons ({_num(cross['neurons'])}) are {where} (at least {WELL_BELOW} below "
            f"asked; the paper's gap is "
            f"{PAPER['feature_universality'] - PAPER['neuron_universality']:.2f})"
        )
    if t["met"] is None:
        parts.append("a median is missing, so the target cannot be judged")
    return "**Target missed**: " + "; ".join(parts) + "."


def universality_table(u: dict[str, Any]) -> list[str]:
    """The markdown table of :func:`universality_numbers`, the threshold and the verdict."""
    ab, ba, same = u.get("a_vs_b"), u.get("b_vs_a"), u.get("a_vs_a_prime")
    paper = u["paper"]
    rows = [
        "| median best-match correlation | paper (A/1 vs B/1) | ours |",
        "|---|---|---|",
    ]
    if ab is not None:
        rows += [
            f"| features across transformers: A (`{ab['model']}`) vs B (`{ab['compare_model']}`)"
            f" | {paper['features']} | {_over(ab)} |",
            f"| neurons across transformers: `{ab['model']}` vs `{ab['compare_model']}` "
            f"(the baseline) | {paper['neurons']} | {_num(ab['neurons'])} "
            f"({ab['n_neurons'] or 0:,} neurons that fired) |",
        ]
    if ba is not None:
        rows.append(f"| features across transformers: B vs A | – | {_over(ba)} |")
    if same is not None:
        rows.append(
            f"| features on the same transformer: A vs A' (`{same['model']}`, two SAE seeds; "
            f"contrast) | not reported | {_over(same)} |"
        )
    return [
        *rows,
        "",
        "Dead and ultralow-density features are left out as the paper did: a feature counts "
        f"when it fires on at least {_threshold(ab or same or {})} "
        "(`criteria.universality.min_density`; the paper's ultralow threshold "
        f"was {paper['min_density']} on 100M tokens, below what the held-out split resolves). "
        "Neurons that never fire are left out of the neuron median. A match maximises "
        "`|correlation|`, for features and neurons alike.",
        "",
        _verdict(u),
    ]
