"""The feature-density histogram of a report: counts per log10-density bin, and an SVG of it.

Density is the fraction of analysed tokens on which a feature fires (``top_activations.
density`` in ``criteria.json``). On ``n`` tokens the smallest non-zero density is ``1/n``, so
the bins start at the decade bin holding ``log10(1/n)``; features that never fired are counted
apart (``dead``), as in the paper's histograms.
"""

from __future__ import annotations

import html
import math
import statistics
from typing import Any

import torch

from sae_lightning.analysis.records import TopActivationsResult, result_of
from sae_lightning.metrics.density import dead_fraction, ultralow_fraction
from sae_lightning.report.svg import svg_frame

BIN_WIDTH = 0.25  # in log10 units: four bins per decade


def densities(features: dict[str, dict[str, Any]]) -> list[float]:
    """Each feature's density from a report's ``features`` (top_activations must have run)."""
    out = []
    for key, entry in features.items():
        top = result_of(entry, TopActivationsResult, nested=False)
        value = None if top is None else top.density
        if value is None:
            raise ValueError(f"feature {key} has no top_activations.density: run top_activations")
        out.append(float(value))
    return out


def density_summary(values: list[float], n_tokens: int) -> dict[str, Any]:
    """Counts of dead and rare features and the log10 histogram of the live ones."""
    if not values or n_tokens < 1:
        raise ValueError(f"need densities and n_tokens >= 1, got {len(values)} and {n_tokens}")
    d = torch.tensor(values, dtype=torch.float64)
    n = len(values)
    live = d[d > 0].log10()
    low = math.floor(math.log10(1 / n_tokens) / BIN_WIDTH) * BIN_WIDTH
    n_bins = max(1, math.ceil(-low / BIN_WIDTH))
    edges = [round(low + i * BIN_WIDTH, 6) for i in range(n_bins + 1)]
    counts = torch.histc(live, bins=n_bins, min=low, max=0.0).long().tolist() if len(live) else []
    return {
        "n_features": n,
        "n_tokens": int(n_tokens),
        "dead": round(float(dead_fraction(d)) * n),
        "below_1e-5": round(float(ultralow_fraction(d, 1e-5)) * n),
        "below_1e-4": round(float(ultralow_fraction(d, 1e-4)) * n),
        "above_1e-2": int((d > 1e-2).sum()),
        "median_live_log10": statistics.median(live.tolist()) if len(live) else None,
        "histogram": {"edges": edges, "counts": counts or [0] * n_bins},
    }


def density_svg(summary: dict[str, Any], title: str, width: int = 640, height: int = 260) -> str:
    """A self-contained SVG bar chart of :func:`density_summary` (dead features: grey bar)."""
    edges, counts = summary["histogram"]["edges"], summary["histogram"]["counts"]
    bars = [("never fired", summary["dead"], "#9e9e9e"), *[(None, c, "#3b6fb6") for c in counts]]
    left, right, top, bottom = 48, 12, 28, 40
    plot_w, plot_h = width - left - right, height - top - bottom
    step = plot_w / (len(bars) + 1)  # one gap between the dead bar and the histogram
    peak = max(1, *(c for _, c, _ in bars))
    parts = svg_frame(width, height, title, left, right, top + plot_h)
    for i, (label, count, colour) in enumerate(bars):
        x = left + (i if i == 0 else i + 1) * step
        h = plot_h * count / peak
        parts.append(
            f'<rect x="{x + 1:.1f}" y="{top + plot_h - h:.1f}" width="{step - 2:.1f}" '
            f'height="{h:.1f}" fill="{colour}"><title>{count}</title></rect>'
        )
        if label:
            parts.append(
                f'<text x="{x + step / 2:.1f}" y="{top + plot_h + 14}" text-anchor="middle">'
                f"{html.escape(label)}</text>"
            )
    for i, edge in enumerate(edges):
        if abs(edge - round(edge)) < 1e-9:  # a tick per decade
            x = left + (i + 2) * step
            parts.append(
                f'<text x="{x:.1f}" y="{top + plot_h + 14}" text-anchor="middle">'
                f"1e{round(edge)}</text>"
            )
    parts += [
        f'<text x="{left + plot_w / 2}" y="{height - 6}" text-anchor="middle">'
        "feature density (fraction of tokens on which it fires, log scale)</text>",
        f'<text x="12" y="{top + plot_h / 2}" text-anchor="middle" '
        f'transform="rotate(-90 12 {top + plot_h / 2})">features</text>',
        f'<text x="{left - 4}" y="{top + 4}" text-anchor="end">{peak}</text>',
        "</svg>",
    ]
    return "\n".join(parts) + "\n"
