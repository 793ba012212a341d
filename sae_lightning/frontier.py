"""The sparsity / fidelity frontier of a sweep: L0 against loss recovered, per architecture.

``write_frontier(sweep_dir, rows)`` writes ``frontier.md`` (a table sorted by architecture and
L0, with each run's place on the Pareto frontier) and ``frontier.html`` (a plotly scatter,
one trace per architecture, with the frontier drawn as a step line). The page is
self-contained: plotly.js is copied from the installed ``plotly`` package next to it, and
every string that reaches the page is escaped (HTML text with ``html.escape``, script data
as JSON with ``<``, ``>`` and ``&`` written as unicode escapes).
"""

from __future__ import annotations

import html
import json
import shutil
from importlib import resources
from pathlib import Path
from typing import Any

L0, RECOVERED = "val/l0", "val/loss_recovered"
PLOTLY_JS = "plotly.min.js"


def pareto(rows: list[dict[str, Any]]) -> list[bool]:
    """For each row, whether no other row has L0 <= its L0 and loss recovered >= its own
    with at least one strictly better (rows missing either metric are never on it)."""

    def point(row: dict[str, Any]) -> tuple[float, float] | None:
        l0, rec = row.get(L0), row.get(RECOVERED)
        return None if l0 is None or rec is None else (float(l0), float(rec))

    points = [point(r) for r in rows]
    flags = []
    for p in points:
        dominated = p is None or any(
            q is not None and q[0] <= p[0] and q[1] >= p[1] and q != p for q in points
        )
        flags.append(not dominated)
    return flags


def frontier_rows(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The summary rows reduced to the frontier columns, sorted by architecture then L0."""
    flags = pareto(rows)
    table = [
        {
            "architecture": r.get("architecture") or "?",
            "overrides": r.get("overrides", ""),
            "L0": r.get(L0),
            "loss recovered": r.get(RECOVERED),
            "explained variance": r.get("val/explained_variance"),
            "dead fraction": r.get("val/dead_fraction"),
            "pareto": "yes" if on else "",
            "job": r.get("job", ""),
        }
        for r, on in zip(rows, flags, strict=True)
    ]
    return sorted(table, key=lambda r: (r["architecture"], r["L0"] is None, r["L0"] or 0.0))


def _script_json(value: Any) -> str:
    """JSON safe inside a <script> element (no '</script>', no HTML entities)."""
    text = json.dumps(value)
    return text.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")


def _traces(table: list[dict[str, Any]]) -> list[dict[str, Any]]:
    plotted = [r for r in table if r["L0"] is not None and r["loss recovered"] is not None]
    traces = []
    for arch in sorted({r["architecture"] for r in plotted}):
        runs = [r for r in plotted if r["architecture"] == arch]
        traces.append(
            {
                "type": "scatter",
                "mode": "lines+markers",
                "name": arch,
                "x": [r["L0"] for r in runs],
                "y": [r["loss recovered"] for r in runs],
                "text": [f"{r['job']}: {r['overrides']}" for r in runs],
                "hovertemplate": "%{text}<br>L0 %{x:.1f}<br>recovered %{y:.4f}<extra></extra>",
            }
        )
    front = sorted((r for r in plotted if r["pareto"]), key=lambda r: r["L0"])
    traces.append(
        {
            "type": "scatter",
            "mode": "lines",
            "name": "Pareto frontier",
            "line": {"dash": "dot", "color": "black", "shape": "hv"},
            "x": [r["L0"] for r in front],
            "y": [r["loss recovered"] for r in front],
            "hoverinfo": "skip",
        }
    )
    return traces


def _html_table(table: list[dict[str, Any]]) -> str:
    def cell(v: Any) -> str:
        text = f"{v:.4f}" if isinstance(v, float) else ("" if v is None else str(v))
        return f"<td>{html.escape(text)}</td>"

    head = "".join(f"<th>{html.escape(h)}</th>" for h in table[0]) if table else ""
    body = "".join("<tr>" + "".join(cell(v) for v in r.values()) + "</tr>" for r in table)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def frontier_html(table: list[dict[str, Any]], title: str) -> str:
    """The frontier page (expects ``plotly.min.js`` in the same folder)."""
    layout = {
        "title": {"text": title},
        "xaxis": {"title": {"text": "L0 (mean active latents per token)"}, "type": "log"},
        "yaxis": {"title": {"text": "loss recovered"}},
        "hovermode": "closest",
    }
    return f"""<!DOCTYPE html>
<html><head><meta charset="utf-8"><title>{html.escape(title)}</title>
<script src="{PLOTLY_JS}"></script>
<style>body{{font-family:sans-serif;margin:2em}}td,th{{padding:2px 8px;text-align:left}}
table{{border-collapse:collapse}}tr:nth-child(even){{background:#f4f4f4}}</style></head>
<body><h1>{html.escape(title)}</h1><div id="frontier" style="height:520px"></div>
<script>Plotly.newPlot("frontier", {_script_json(_traces(table))}, {_script_json(layout)});
</script>{_html_table(table)}</body></html>
"""


def markdown(table: list[dict[str, Any]]) -> str:
    """The frontier table in Markdown (pipes in cells escaped)."""

    def cell(v: Any) -> str:
        text = f"{v:.4f}" if isinstance(v, float) else ("" if v is None else str(v))
        return text.replace("|", "\\|")

    head = list(table[0])
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    lines += ["| " + " | ".join(cell(r[h]) for h in head) + " |" for r in table]
    return "\n".join(lines) + "\n"


def write_frontier(sweep_dir: str | Path, rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Write ``frontier.md``, ``frontier.html`` and ``plotly.min.js`` into ``sweep_dir``.

    Returns:
        The frontier table (empty, and nothing written, when ``rows`` is empty).
    """
    if not rows:
        return []
    sweep_dir = Path(sweep_dir)
    table = frontier_rows(rows)
    (sweep_dir / "frontier.md").write_text(markdown(table))
    title = f"L0 vs loss recovered: {sweep_dir.name}"
    (sweep_dir / "frontier.html").write_text(frontier_html(table, title))
    source = resources.files("plotly") / "package_data" / PLOTLY_JS
    with resources.as_file(source) as path:
        shutil.copyfile(path, sweep_dir / PLOTLY_JS)
    return table
