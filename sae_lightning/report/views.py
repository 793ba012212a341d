"""What each page shows, built from the report's JSON: plain dicts and lists for the templates.

The plotly figures are plain ``{"data": [...], "layout": {...}}`` dicts, drawn in the page
by ``Plotly.newPlot`` (``assets/dashboard.js``) from a JSON block, never per-page HTML.
"""

from __future__ import annotations

from typing import Any

from sae_lightning.analysis.records import (
    Ablation,
    DownstreamResult,
    Example,
    LogitHistogram,
    NotANeuronResult,
    QuantileSample,
    SpecificityHistogram,
    SpecificityResult,
    TopActivationsResult,
    UniversalityResult,
    is_number,
    result_of,
    value_of,
)
from sae_lightning.report.data import fmt, scalars, tokens_view, verdict_mark

_AXIS = {"automargin": True}
_LOG_TOGGLE = [
    {
        "type": "buttons",
        "direction": "right",
        "x": 1.0,
        "y": 1.15,
        "xanchor": "right",
        "buttons": [
            {"label": "linear", "method": "relayout", "args": [{"yaxis.type": "linear"}]},
            {"label": "log", "method": "relayout", "args": [{"yaxis.type": "log"}]},
        ],
    }
]


LLR_LOW, LLR_MID, LLR_HIGH = "#b2182b", "#f7f7f7", "#2166ac"  # LLR < 0: red; > 0: blue


def llr_colour(t: float) -> str:
    """``t`` in [-1, 1] on the red-white-blue scale (hex)."""
    t = max(-1.0, min(1.0, t))
    end = LLR_HIGH if t > 0 else LLR_LOW
    a = [int(LLR_MID[i : i + 2], 16) for i in (1, 3, 5)]
    b = [int(end[i : i + 2], 16) for i in (1, 3, 5)]
    return "#" + "".join(f"{round(x + abs(t) * (y - x)):02x}" for x, y in zip(a, b, strict=True))


def _r(values: list[Any]) -> list[Any]:
    return [round(v, 5) if isinstance(v, float) else v for v in values]


def _bins(edges: list[float], *counts: list[int]) -> tuple[list[float], list[float], int]:
    """Bin centres and widths, and how many bins to draw (trailing empty bins dropped)."""
    last = max((i for c in counts for i, n in enumerate(c) if n), default=len(edges) - 2)
    n = last + 1
    centres = [(edges[i] + edges[i + 1]) / 2 for i in range(n)]
    widths = [edges[i + 1] - edges[i] for i in range(n)]
    return _r(centres), _r(widths), n


def specificity_figure(hist: SpecificityHistogram | None, proxy: str) -> dict[str, Any] | None:
    """Activation histogram stacked proxy / other, the proxy bars coloured by the bin's LLR."""
    if hist is None or not hist.edges:
        return None
    edges, pc, oc = hist.edges, hist.proxy_counts, hist.other_counts
    x, w, n = _bins(edges, pc, oc)
    llr = [v if is_number(v) else 0.0 for v in (hist.llr or [0.0] * n)[:n]]
    span = max((abs(v) for v in llr), default=1.0) or 1.0
    proxy_bar = {
        "type": "bar",
        "name": "proxy",
        "x": x,
        "y": pc[:n],
        "width": w,
        "marker": {"color": [llr_colour(v / span) for v in llr]},
        "customdata": _r(llr),
        "hovertemplate": "act %{x:.3g}<br>proxy tokens %{y}<br>LLR %{customdata:.2f}",
    }
    colourbar = {  # plotly 7 colours bars by name only: the scale is a hidden scatter's
        "type": "scatter",
        "mode": "markers",
        "x": [None],
        "y": [None],
        "showlegend": False,
        "hoverinfo": "skip",
        "marker": {
            "color": [-span, span],
            "cmin": -span,
            "cmax": span,
            "showscale": True,
            "colorscale": [[0, LLR_LOW], [0.5, LLR_MID], [1, LLR_HIGH]],
            "colorbar": {"title": {"text": "LLR"}},
        },
    }
    other_bar = {
        "type": "bar", "name": "not proxy", "x": x, "y": oc[:n], "width": w,
        "marker": {"color": "#bbbbbb"},
    }  # fmt: skip
    layout = {
        "barmode": "stack", "height": 340, "margin": {"t": 40, "b": 40},
        "title": {"text": f"activation density; proxy: {proxy}", "font": {"size": 12}},
        "xaxis": {"title": {"text": "activation"}, **_AXIS},
        "yaxis": {"title": {"text": "tokens"}, **_AXIS},
        "legend": {"orientation": "h", "y": -0.25}, "updatemenus": _LOG_TOGGLE,
    }  # fmt: skip
    return {"data": [proxy_bar, other_bar, colourbar], "layout": layout}


def logit_figure(hist: LogitHistogram | None) -> dict[str, Any] | None:
    """Histogram of the feature's logit weights over the vocabulary."""
    if hist is None or not hist.edges:
        return None
    edges, counts = hist.edges, hist.counts
    x, w, n = _bins(edges, counts)
    bar = {"type": "bar", "x": x, "y": counts[:n], "width": w, "marker": {"color": "#7b9acc"}}
    layout = {
        "height": 300, "margin": {"t": 30, "b": 40}, "showlegend": False,
        "xaxis": {"title": {"text": "logit weight"}, **_AXIS},
        "yaxis": {"title": {"text": "vocabulary tokens"}, **_AXIS}, "updatemenus": _LOG_TOGGLE,
    }  # fmt: skip
    return {"data": [bar], "layout": layout}


def example_view(example: Example, scale: float) -> dict[str, Any]:
    """One context window, each token highlighted by the feature's activation on it."""
    return {
        "activation": fmt(example.activation),
        "where": f"context {example.context}, position {example.position}",
        "tokens": tokens_view(
            example.tokens, example.acts, scale, example.highlight, example.activation
        ),
    }


def _quantiles(samples: list[QuantileSample], scale: float) -> list[dict[str, Any]]:
    out = []
    for q in reversed(samples):  # highest interval first, as in the paper
        lo, hi = (list(q.interval) + [None, None])[:2]
        label = f"{fmt(lo)} – {fmt(hi) if hi is not None else 'max'}"
        out.append({"label": label, "examples": [example_view(e, scale) for e in q.examples]})
    return out


def ablation_view(ablation: Ablation | None, scale: float) -> dict[str, Any] | None:
    """The first ablated context, each token underlined by the change of its log-prob."""
    if ablation is None or not ablation.top_context_tokens:
        return None
    deltas = [None, *ablation.top_context_delta]  # delta[p] predicts token p+1
    return {
        "tokens": tokens_view(
            ablation.top_context_tokens, ablation.top_context_acts, scale, deltas=deltas
        ),
        "mean_where_fired": fmt(ablation.mean_delta_logprob_where_fired),
        "mean": fmt(ablation.mean_delta_logprob),
        "contexts": ablation.contexts,
    }


def verdicts(per_feature: dict[str, Any], heads: dict[str, str | None]) -> list[dict[str, Any]]:
    """Every criterion of a feature: its verdict, headline number and scalar numbers."""
    out = []
    for name, numbers in per_feature.items():
        mark, css = verdict_mark(value_of(numbers, "verdict"))
        head = heads.get(name)
        out.append({
            "name": name, "mark": mark, "css": css, "headline": head,
            "value": fmt(value_of(numbers, head)) if head else "-", "numbers": scalars(numbers),
        })  # fmt: skip
    return out


def _logit_rows(tokens: list[str], values: list[float]) -> list[tuple[str, str]]:
    return [(t, fmt(v)) for t, v in zip(tokens, values, strict=False)]


def feature_view(
    index: int, per_feature: dict[str, Any], heads: dict[str, str | None]
) -> dict[str, Any]:
    """Everything ``feature.html.j2`` shows for one feature."""
    top = result_of(per_feature, TopActivationsResult) or TopActivationsResult()
    spec = result_of(per_feature, SpecificityResult)
    down = result_of(per_feature, DownstreamResult) or DownstreamResult()
    neuron = result_of(per_feature, NotANeuronResult)
    universality = result_of(per_feature, UniversalityResult)
    scale = float(top.max_activation or (spec.max_activation if spec else None) or 0.0)
    return {
        "index": index,
        "density": fmt(top.density),
        "max_activation": fmt(top.max_activation),
        "auto_proxy": top.auto_proxy,
        "verdicts": verdicts(per_feature, heads),
        "has": set(per_feature),
        "spec": spec.to_dict() if spec else {},
        "spec_fig": specificity_figure(spec.histogram, spec.proxy) if spec else None,
        "top_examples": [example_view(e, scale) for e in top.top_examples],
        "quantiles": _quantiles(top.quantile_samples, scale),
        "logit_fig": logit_figure(down.histogram),
        "logit_note": down.logit_note,
        "top_logits": _logit_rows(down.top_tokens, down.top_values),
        "bottom_logits": _logit_rows(down.bottom_tokens, down.bottom_values),
        "ablation": ablation_view(down.ablation, scale),
        "neuron": neuron.to_dict() if neuron else None,
        "universality": universality.to_dict() if universality else None,
    }


def index_rows(
    report: dict[str, Any], criteria: list[str], heads: dict[str, str | None]
) -> list[dict[str, Any]]:
    """One scorecard row per feature: density, max activation, proxy, per-criterion cells.

    Each cell carries ``sort`` (the raw number, ``""`` if none) for the page's sorting."""
    rows = []
    for key, per_feature in report["features"].items():
        top = result_of(per_feature, TopActivationsResult, nested=False)
        cells = []
        for name in criteria:
            numbers = per_feature.get(name)
            value = value_of(numbers, heads[name]) if heads.get(name) else None
            mark, css = verdict_mark(value_of(numbers, "verdict"))
            sort = value if is_number(value) else ""
            cells.append((fmt(value) if name in per_feature else "", mark, css, sort))
        rows.append({
            "index": key, "density": top.density if top else None,
            "max": top.max_activation if top else None,
            "proxy": top.auto_proxy if top else [], "cells": cells,
        })  # fmt: skip
    return rows
