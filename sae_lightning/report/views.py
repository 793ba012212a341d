"""What each page shows, built from the report's JSON: plain dicts and lists for the templates.

The plotly figures are plain ``{"data": [...], "layout": {...}}`` dicts, drawn in the page
by ``Plotly.newPlot`` (``assets/dashboard.js``) from a JSON block, never per-page HTML.
"""

from __future__ import annotations

from typing import Any

from sae_lightning.report.data import fmt, is_number, scalars, tokens_view, verdict_mark

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


def specificity_figure(hist: dict[str, Any], proxy: str) -> dict[str, Any] | None:
    """Activation histogram stacked proxy / other, the proxy bars coloured by the bin's LLR."""
    edges, pc, oc = hist.get("edges"), hist.get("proxy_counts"), hist.get("other_counts")
    if not edges or pc is None or oc is None:
        return None
    x, w, n = _bins(edges, pc, oc)
    llr = [v if is_number(v) else 0.0 for v in (hist.get("llr") or [0.0] * n)[:n]]
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


def logit_figure(hist: dict[str, Any]) -> dict[str, Any] | None:
    """Histogram of the feature's logit weights over the vocabulary."""
    edges, counts = hist.get("edges"), hist.get("counts")
    if not edges or counts is None:
        return None
    x, w, n = _bins(edges, counts)
    bar = {"type": "bar", "x": x, "y": counts[:n], "width": w, "marker": {"color": "#7b9acc"}}
    layout = {
        "height": 300, "margin": {"t": 30, "b": 40}, "showlegend": False,
        "xaxis": {"title": {"text": "logit weight"}, **_AXIS},
        "yaxis": {"title": {"text": "vocabulary tokens"}, **_AXIS}, "updatemenus": _LOG_TOGGLE,
    }  # fmt: skip
    return {"data": [bar], "layout": layout}


def example_view(example: dict[str, Any], scale: float) -> dict[str, Any]:
    """One context window, each token highlighted by the feature's activation on it."""
    return {
        "activation": fmt(example.get("activation")),
        "where": f"context {example.get('context', '?')}, position {example.get('position', '?')}",
        "tokens": tokens_view(
            example.get("tokens") or [],
            example.get("acts"),
            scale,
            example.get("highlight"),
            example.get("activation"),
        ),
    }


def _quantiles(samples: list[dict[str, Any]], scale: float) -> list[dict[str, Any]]:
    out = []
    for q in reversed(samples):  # highest interval first, as in the paper
        lo, hi = ((q.get("interval") or []) + [None, None])[:2]
        label = f"{fmt(lo)} – {fmt(hi) if hi is not None else 'max'}"
        out.append({"label": label, "examples": [example_view(e, scale) for e in q["examples"]]})
    return out


def ablation_view(ablation: dict[str, Any] | None, scale: float) -> dict[str, Any] | None:
    """The first ablated context, each token underlined by the change of its log-prob."""
    if not ablation or not ablation.get("top_context_tokens"):
        return None
    tokens = ablation["top_context_tokens"]
    deltas = [None, *ablation.get("top_context_delta", [])]  # delta[p] predicts token p+1
    return {
        "tokens": tokens_view(tokens, ablation.get("top_context_acts"), scale, deltas=deltas),
        "mean_where_fired": fmt(ablation.get("mean_delta_logprob_where_fired")),
        "mean": fmt(ablation.get("mean_delta_logprob")),
        "contexts": ablation.get("contexts", []),
    }


def verdicts(per_feature: dict[str, Any], heads: dict[str, str | None]) -> list[dict[str, Any]]:
    """Every criterion of a feature: its verdict, headline number and scalar numbers."""
    out = []
    for name, numbers in per_feature.items():
        mark, css = verdict_mark(numbers.get("verdict"))
        head = heads.get(name)
        out.append({
            "name": name, "mark": mark, "css": css, "headline": head,
            "value": fmt(numbers.get(head)) if head else "-", "numbers": scalars(numbers),
        })  # fmt: skip
    return out


def _logit_rows(down: dict[str, Any], which: str) -> list[tuple[str, str]]:
    tokens, values = down.get(f"{which}_tokens") or [], down.get(f"{which}_values") or []
    return [(t, fmt(v)) for t, v in zip(tokens, values, strict=False)]


def feature_view(
    index: int, per_feature: dict[str, Any], heads: dict[str, str | None]
) -> dict[str, Any]:
    """Everything ``feature.html.j2`` shows for one feature."""
    top = per_feature.get("top_activations") or {}
    spec = per_feature.get("specificity") or {}
    down = per_feature.get("downstream") or {}
    scale = float(top.get("max_activation") or spec.get("max_activation") or 0.0)
    return {
        "index": index,
        "density": fmt(top.get("density")),
        "max_activation": fmt(top.get("max_activation")),
        "auto_proxy": top.get("auto_proxy") or [],
        "verdicts": verdicts(per_feature, heads),
        "has": set(per_feature),
        "spec": spec,
        "spec_fig": specificity_figure(spec.get("histogram") or {}, str(spec.get("proxy", "")))
        if spec
        else None,
        "top_examples": [example_view(e, scale) for e in top.get("top_examples") or []],
        "quantiles": _quantiles(top.get("quantile_samples") or [], scale),
        "logit_fig": logit_figure(down.get("histogram") or {}) if down else None,
        "logit_note": down.get("logit_note"),
        "top_logits": _logit_rows(down, "top"),
        "bottom_logits": _logit_rows(down, "bottom"),
        "ablation": ablation_view(down.get("ablation"), scale),
        "neuron": per_feature.get("not_a_neuron"),
        "universality": per_feature.get("universality"),
    }


def index_rows(
    report: dict[str, Any], criteria: list[str], heads: dict[str, str | None]
) -> list[dict[str, Any]]:
    """One scorecard row per feature: density, max activation, proxy, per-criterion cells.

    Each cell carries ``sort`` (the raw number, ``""`` if none) for the page's sorting."""
    rows = []
    for key, per_feature in report["features"].items():
        top = per_feature.get("top_activations") or {}
        cells = []
        for name in criteria:
            numbers = per_feature.get(name) or {}
            value = numbers.get(heads[name]) if heads.get(name) else None
            mark, css = verdict_mark(numbers.get("verdict"))
            sort = value if is_number(value) else ""
            cells.append((fmt(value) if name in per_feature else "", mark, css, sort))
        rows.append({
            "index": key, "density": top.get("density"), "max": top.get("max_activation"),
            "proxy": top.get("auto_proxy") or [], "cells": cells,
        })  # fmt: skip
    return rows
