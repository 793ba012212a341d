"""The shared / exclusive histogram of a crosscoder: how many latents live in source A only,
in both, or in source B only, by their relative decoder norm ``||d_B|| / (||d_A|| + ||d_B||)``
(Lindsey et al. 2024, figure "relative decoder norm"), as counts and a self-contained SVG.

``crosscoder_section(sae)`` is the HTML fragment the dashboards page embeds; every piece of
text that comes from outside (source names, title) is escaped.
"""

from __future__ import annotations

import html
import json
import math
from pathlib import Path
from typing import Any

import torch
from jaxtyping import Bool, Float
from torch import Tensor

from sae_lightning.analysis.records import TopActivationsResult, result_of
from sae_lightning.report.svg import svg_frame
from sae_lightning.saes.crosscoder import (
    CLASS_NAMES,
    SHARED_BAND,
    CrosscoderSAE,
    classify_relative_norms,
)

COLOURS = ("#d9822b", "#3b6fb6", "#2e9e5b")  # A only, shared, B only


def relative_norm_summary(
    r: Float[Tensor, " d_sae"],
    n_bins: int = 20,
    band: tuple[float, float] = SHARED_BAND,
    keep: Bool[Tensor, " d_sae"] | None = None,
) -> dict[str, Any]:
    """Histogram of relative decoder norms on [0, 1] and the class counts.

    Args:
        r: Relative decoder norm per latent (``CrosscoderSAE.relative_decoder_norm``).
        n_bins: Bins on [0, 1].
        band: Relative norms inside it count as shared.
        keep: The latents to count (e.g. those that fired: a dead latent keeps its random
            initial split, about 0.5, and would inflate "shared"); default all.

    Returns:
        ``{"n_latents", "n_left_out", "band", "counts": {"A only", "shared", "B only",
        "zero decoder"}, "histogram": {"edges": [n_bins + 1], "counts": [n_bins]}}``;
        latents whose decoder row is zero (NaN ratio) are counted apart, not binned.

    Raises:
        ValueError: If ``n_bins < 1``, ``r`` is not a vector or ``keep`` not a mask like it.
    """
    if isinstance(n_bins, bool) or not isinstance(n_bins, int) or n_bins < 1:
        raise ValueError(f"n_bins must be a positive integer, got {n_bins!r}")
    if r.ndim != 1:
        raise ValueError(f"r must be a vector of relative norms, got shape {tuple(r.shape)}")
    if keep is not None and (keep.dtype != torch.bool or keep.shape != r.shape):
        raise ValueError(
            f"keep must be a boolean mask of shape {tuple(r.shape)}, got {keep.dtype} "
            f"{tuple(keep.shape)}"
        )
    n_all = int(r.numel())
    r = r.detach().double().cpu()
    r = r if keep is None else r[keep.cpu()]
    labels = classify_relative_norms(r, band)
    defined = r[~r.isnan()]
    counts = torch.histc(defined, bins=n_bins, min=0.0, max=1.0).long().tolist()
    return {
        "n_latents": int(r.numel()),
        "n_left_out": n_all - int(r.numel()),
        "band": [float(band[0]), float(band[1])],
        "counts": {
            **{name: int((labels == i).sum()) for i, name in enumerate(CLASS_NAMES)},
            "zero decoder": int((labels == -1).sum()),
        },
        "histogram": {"edges": [i / n_bins for i in range(n_bins + 1)], "counts": counts},
    }


def _bin_colour(centre: float, band: list[float]) -> str:
    label = int(classify_relative_norms(torch.tensor([centre]), (band[0], band[1]))[0])
    return COLOURS[label]


def relative_norm_svg(
    summary: dict[str, Any],
    title: str,
    source_names: tuple[str, str] = ("A", "B"),
    width: int = 640,
    height: int = 260,
) -> str:
    """A self-contained SVG bar chart of :func:`relative_norm_summary`, bars coloured by the
    class of their centre (A only, shared, B only)."""
    edges, counts = summary["histogram"]["edges"], summary["histogram"]["counts"]
    a, b = (html.escape(str(name)) for name in source_names)
    left, right, top, bottom = 48, 12, 28, 40
    plot_w, plot_h = width - left - right, height - top - bottom
    step = plot_w / len(counts)
    peak = max(1, *counts)
    parts = svg_frame(width, height, title, left, right, top + plot_h)
    for i, count in enumerate(counts):
        x, h = left + i * step, plot_h * count / peak
        colour = _bin_colour((edges[i] + edges[i + 1]) / 2, summary["band"])
        parts.append(
            f'<rect x="{x + 1:.1f}" y="{top + plot_h - h:.1f}" width="{step - 2:.1f}" '
            f'height="{h:.1f}" fill="{colour}"><title>{edges[i]:.2f}-{edges[i + 1]:.2f}: '
            f"{count}</title></rect>"
        )
    for value, label in ((0.0, f"0 ({a} only)"), (0.5, "0.5"), (1.0, f"1 ({b} only)")):
        anchor = {0.0: "start", 0.5: "middle", 1.0: "end"}[value]
        parts.append(
            f'<text x="{left + value * plot_w:.1f}" y="{top + plot_h + 14}" '
            f'text-anchor="{anchor}">{label}</text>'
        )
    parts += [
        f'<text x="{left + plot_w / 2}" y="{height - 6}" text-anchor="middle">'
        f"relative decoder norm ||d_{b}|| / (||d_{a}|| + ||d_{b}||)</text>",
        f'<text x="12" y="{top + plot_h / 2}" text-anchor="middle" '
        f'transform="rotate(-90 12 {top + plot_h / 2})">latents</text>',
        f'<text x="{left - 4}" y="{top + 4}" text-anchor="end">{peak}</text>',
        "</svg>",
    ]
    return "\n".join(parts) + "\n"


def crosscoder_section(
    sae: CrosscoderSAE,
    source_names: tuple[str, str] | None = None,
    sources: tuple[int, int] = (0, 1),
    n_bins: int = 20,
    band: tuple[float, float] = SHARED_BAND,
    keep: Bool[Tensor, " d_sae"] | None = None,
) -> str:
    """An HTML fragment: the class counts of ``sae``'s latents and their histogram.

    Args:
        sae: The crosscoder.
        source_names: Display names of the two sources compared (e.g. the export's
            ``metadata.sources`` model names); default ``source 0`` / ``source 1``.
        sources: The indices ``(a, b)`` of the sources compared (``n_sources > 2``).
        n_bins: Histogram bins on [0, 1].
        band: Relative norms inside it count as shared.
        keep: The latents to count, e.g. ``density > 0`` from the analysis (dead latents
            keep their random initial split); default all.

    Raises:
        TypeError: If ``sae`` is not a crosscoder.
        ValueError: For a bad source index, bin count or band (the message names it).
    """
    if not isinstance(sae, CrosscoderSAE):
        raise TypeError(f"crosscoder_section needs a CrosscoderSAE, got {type(sae).__name__}")
    a, b = sources
    names = source_names or (f"source {a}", f"source {b}")
    summary = relative_norm_summary(sae.relative_decoder_norm(a, b), n_bins, band, keep)
    return summary_section(summary, (str(names[0]), str(names[1])))


def summary_section(summary: dict[str, Any], names: tuple[str, str], what: str = "latents") -> str:
    """The HTML fragment of a :func:`relative_norm_summary`: the class counts and the
    histogram, ``what`` naming the latents counted; every name is escaped."""
    na, nb = (html.escape(str(n)) for n in names)
    counts = summary["counts"]
    low, high = summary["band"]
    rows = [
        (f"{na} only", f"r &le; {low:g}", counts["A only"]),
        ("shared", f"{low:g} &lt; r &lt; {high:g}", counts["shared"]),
        (f"{nb} only", f"r &ge; {high:g}", counts["B only"]),
    ]
    if counts["zero decoder"]:
        rows.append(("zero decoder row", "r undefined", counts["zero decoder"]))
    if summary["n_left_out"]:
        rows.append(("left out (not kept, e.g. dead)", "", summary["n_left_out"]))
    table = "".join(
        f"<tr><td>{label}</td><td>{rule}</td><td>{count}</td></tr>" for label, rule, count in rows
    )
    title = f"Relative decoder norm of {summary['n_latents']} {what}: {names[0]} vs {names[1]}"
    svg = relative_norm_svg(summary, title, names)
    return (
        '<section class="crosscoder">\n<h2>Shared and exclusive latents</h2>\n'
        f"<p>r = ||d<sub>{nb}</sub>|| / (||d<sub>{na}</sub>|| + ||d<sub>{nb}</sub>||) per "
        "latent, from its decoder blocks: about 0.5 when both sources use it.</p>\n"
        f'<table class="crosscoder-counts"><tr><th>latents</th><th>rule</th><th>count</th></tr>'
        f"{table}</table>\n{svg}</section>\n"
    )


def write_crosscoder_page(
    folder: str | Path,
    sae: CrosscoderSAE,
    source_names: tuple[str, str] | None = None,
    keep: Bool[Tensor, " d_sae"] | None = None,
) -> Path:
    """Write ``folder/crosscoder.html`` (the section in a page of its own) and
    ``folder/crosscoder.json`` (:func:`relative_norm_summary` of sources 0 and 1, with the
    source names); returns the page."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    summary = relative_norm_summary(sae.relative_decoder_norm(0, 1), keep=keep)
    summary["sources"] = list(source_names or ("source 0", "source 1"))
    (folder / "crosscoder.json").write_text(json.dumps(summary, indent=2) + "\n")
    body = crosscoder_section(sae, source_names, keep=keep)
    page = folder / "crosscoder.html"
    page.write_text(
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        "<title>crosscoder: shared and exclusive latents</title></head>\n"
        f"<body>\n{body}</body></html>\n"
    )
    return page


def report_section(report: dict[str, Any]) -> str | None:
    """The index page's fragment for a crosscoder's report (None for another SAE's): the
    histogram of the relative decoder norms in ``metadata.crosscoder`` over the analysed
    latents that fired on the analysed tokens (all analysed ones without top_activations)."""
    info = report["metadata"].get("crosscoder")
    if not info:
        return None
    norms = info["relative_decoder_norm"]
    keys = list(norms)
    r = torch.tensor([math.nan if norms[k] is None else float(norms[k]) for k in keys])
    density = [_density(report["features"].get(k)) for k in keys]
    keep = None
    if any(d is not None for d in density):
        keep = torch.tensor([bool(d) for d in density])
    band, names = _band_and_names(info)
    summary = relative_norm_summary(r.double(), band=band, keep=keep)
    what = "analysed latents" + (" that fired" if keep is not None else "")
    return summary_section(summary, names, what)


def feature_line(report: dict[str, Any], index: int) -> dict[str, str] | None:
    """A crosscoder feature's relative decoder norm and class for its page (None for
    another SAE's report or a feature it does not list)."""
    info = report["metadata"].get("crosscoder")
    r = None if not info else info["relative_decoder_norm"].get(str(index))
    if r is None:
        return None
    band, names = _band_and_names(info)
    label = int(classify_relative_norms(torch.tensor([float(r)]), band)[0])
    where = {0: f"{names[0]} only", 1: f"shared by {names[0]} and {names[1]}"}
    return {"r": f"{float(r):.3f}", "where": where.get(label, f"{names[1]} only")}


def _density(per_feature: dict[str, Any] | None) -> float | None:
    top = result_of(per_feature or {}, TopActivationsResult, nested=False)
    return None if top is None else top.density


def _band_and_names(info: dict[str, Any]) -> tuple[tuple[float, float], tuple[str, str]]:
    """The shared band and the two sources' display names of a report's ``crosscoder``."""
    low, high = info.get("band") or SHARED_BAND
    names = info.get("sources") or ["source 0", "source 1"]
    return (float(low), float(high)), (str(names[0]), str(names[1]))
