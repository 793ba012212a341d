"""The feature-splitting report in Markdown (``splitting.md``) and a page of SVG family trees
(``splitting.html``), from the result that
:func:`sae_lightning.replication.splitting.split_features` also writes as JSON."""

from __future__ import annotations

import json
from html import escape
from typing import Any

from sae_lightning.replication.writeup import md_token

SUMMARY_COLUMNS = (
    ("sizes", "sizes"),
    ("n_live_large", "live larger features"),
    ("median_best_correlation", "median best correlation"),
    ("median_best_cosine", "median best decoder cosine"),
    ("fraction_matched", "matched ≥ threshold"),
    ("parents_with_children", "parents with children"),
    ("parents_split", "parents split (≥ 2 children)"),
    ("largest_family", "largest family"),
)
MEASURE_TEXT = {
    "correlation": "activation correlation over the tokens",
    "cosine": "cosine of the decoder rows",
}


def _num(value: Any, digits: int = 3) -> str:
    if value is None:
        return "–"
    if isinstance(value, int):
        return f"{value:,}"
    return f"{value:.{digits}f}"


def _density(value: float) -> str:
    return "0" if value == 0 else f"{value:.2e}"


def _tokens(top: list[dict]) -> str:
    return ", ".join(f"{md_token(t['token'])} {t['share']:.0%}" for t in top) or "–"


def _node_lines(node: dict, sizes: list[int], depth: int = 0) -> list[str]:
    pad = "  " * depth
    parts = [f"**#{node['index']}** (of {sizes[node['level']]:,})"]
    if node["correlation"] is not None:
        parts.append(f"corr {node['correlation']:.2f} · cos {node['cosine']:.2f}")
    parts += [f"density {_density(node['density'])}", f"fires on {_tokens(node['top_tokens'])}"]
    lines = [f"{pad}- " + " · ".join(parts)]
    for child in node["children"]:
        lines += _node_lines(child, sizes, depth + 1)
    hidden = node["n_children"] - len(node["children"])
    if hidden > 0:
        lines.append(f"{pad}  - … and {hidden} more children (all in the JSON)")
    return lines


def _picks_line(picks: list[dict | None], sizes: list[int], in_tree: list[set[int]]) -> str:
    cells = []
    for k, pick in enumerate(picks):
        if pick is None:
            cells.append(f"{sizes[k]:,}: none fires on it")
            continue
        where = "in the tree" if pick["feature"] in in_tree[k] else "not in the tree"
        if k and pick["feature"] not in in_tree[k]:
            where += (
                f"; its parent #{pick['parent']}: corr {pick['parent_correlation']:.2f}, "
                f"cos {pick['parent_cosine']:.2f}"
            )
        cells.append(f"{sizes[k]:,}: #{pick['feature']} (score {pick['score']:.3f}, {where})")
    return "Best feature for the concept in each dictionary: " + "; ".join(cells) + "."


def _family(name: str, family: dict, sizes: list[int]) -> list[str]:
    tokens = ", ".join(md_token(t) for t in family["tokens"])
    lines = [f"### {name} ({tokens})", ""]
    tree = family["tree"]
    if tree is None:
        return [*lines, "No feature of the smallest dictionary fires on these tokens.", ""]
    in_tree = [set() for _ in sizes]
    stack = [tree]
    while stack:
        node = stack.pop()
        in_tree[node["level"]].add(node["index"])
        stack += node["children"]
    lines += [_picks_line(family["picks"], sizes, in_tree), "", *_node_lines(tree, sizes), ""]
    return lines


def write_markdown(result: dict[str, Any]) -> str:
    """The report: the dictionaries, the population figures of each pair of sizes, and each
    concept's family tree (index, density, correlation and cosine to the parent, top tokens)."""
    sizes = [s["d_sae"] for s in result["saes"]]
    measure, threshold = result["match"], result["threshold"]
    lines = [
        "# Feature splitting across dictionary sizes",
        "",
        f"{result['n_tokens']:,} tokens of the {result['split']} split, model "
        f"`{result['model_name']}`, hook `{result['hook_name']}`.",
        "",
        "| dictionary | d_sae | architecture | source |",
        "|---|---|---|---|",
        *(
            f"| {k} | {s['d_sae']:,} | {s['architecture']} | `{s['source']}` |"
            for k, s in enumerate(result["saes"])
        ),
        "",
        f"Each feature's **parent** is the feature of the next smaller dictionary it matches "
        f"best by {measure} ({MEASURE_TEXT.get(measure, measure)}); "
        f"it is a **child** when that match is ≥ {threshold}. *corr* is the activation "
        "correlation and *cos* the decoder cosine with the parent; *density* the fraction of "
        "tokens the feature fires on; the tokens it fires on most often, with their share of "
        "its firings. A concept's tree starts at the smallest dictionary's feature with the "
        "largest (share of its activation on the concept's tokens) × (share of those tokens "
        "it fires on).",
        "",
        "## Matching between sizes",
        "",
        "| " + " | ".join(title for _, title in SUMMARY_COLUMNS) + " |",
        "|" + "---|" * len(SUMMARY_COLUMNS),
    ]
    for k, summary in enumerate(result["summaries"]):
        row = {"sizes": f"{sizes[k]:,} → {sizes[k + 1]:,}", **summary}
        lines.append(
            "| "
            + " | ".join(
                _num(row[key]) if key != "sizes" else row[key] for key, _ in SUMMARY_COLUMNS
            )
            + " |"
        )
    lines += ["", "## Concept families", ""]
    for name, family in result["families"].items():
        lines += _family(name, family, sizes)
    if result.get("command"):
        lines += ["Made by:", "", f"    {result['command']}", ""]
    return "\n".join(lines)


BOX_W, BOX_H, GAP_X, GAP_Y = 250, 40, 70, 12


def _layout(tree: dict) -> list[tuple[dict, float, float]]:
    """``(node, x, y)`` of every node: a column per dictionary size, leaves stacked in
    depth-first order, a parent centred on its children."""
    placed: list[tuple[dict, float, float]] = []
    next_row = [0.0]

    def place(node: dict) -> float:
        if node["children"]:
            ys = [place(child) for child in node["children"]]
            y = (ys[0] + ys[-1]) / 2
        else:
            y, next_row[0] = next_row[0], next_row[0] + BOX_H + GAP_Y
        placed.append((node, node["level"] * (BOX_W + GAP_X), y))
        return y

    place(tree)
    return placed


def family_svg(tree: dict, sizes: list[int]) -> str:
    """The family tree as an SVG: one box per feature (index, density, top tokens), edges
    as thick as the correlation with the parent and labelled with it and the cosine."""
    placed = _layout(tree)
    where = {(n["level"], n["index"]): (x, y) for n, x, y in placed}
    parts = []
    for node, x, y in placed:
        for child in node["children"]:
            cx, cy = where[(child["level"], child["index"])]
            width = 1 + 4 * max(child["correlation"] or 0.0, 0.0)
            x0, y0, y1 = x + BOX_W, y + BOX_H / 2, cy + BOX_H / 2
            parts.append(
                f'<line x1="{x0}" y1="{y0}" x2="{cx}" y2="{y1}" stroke="#888" '
                f'stroke-width="{width:.1f}"/><text x="{cx - GAP_X + 4}" y="{y1 - 4}" '
                f'font-size="9">r {child["correlation"]:.2f} c {child["cosine"]:.2f}</text>'
            )
    for node, x, y in placed:
        top = ", ".join(json.dumps(t["token"], ensure_ascii=False) for t in node["top_tokens"][:3])
        head = f"#{node['index']} of {sizes[node['level']]:,} · density {_density(node['density'])}"
        parts.append(
            f'<rect x="{x}" y="{y}" width="{BOX_W}" height="{BOX_H}" rx="4" fill="#eef" '
            f'stroke="#446"/><text x="{x + 6}" y="{y + 15}" font-size="11">{escape(head)}</text>'
            f'<text x="{x + 6}" y="{y + 31}" font-size="10" font-family="monospace">'
            f"{escape(top or '–')}</text>"
        )
    width = max(x for _, x, _ in placed) + BOX_W + 10
    height = max(y for _, _, y in placed) + BOX_H + 10
    return (
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}">'
        + "".join(parts)
        + "</svg>"
    )


def write_html(result: dict[str, Any]) -> str:
    """A self-contained page with each concept's family tree drawn (no scripts)."""
    sizes = [s["d_sae"] for s in result["saes"]]
    body = [
        "<h1>Feature splitting across dictionary sizes</h1>",
        f"<p>{result['n_tokens']:,} tokens; dictionaries of "
        f"{escape(' → '.join(f'{d:,}' for d in sizes))} features; parent by "
        f"{escape(result['match'])}, child when the match is ≥ {result['threshold']}. "
        "Edge labels: r = activation correlation, c = decoder cosine with the parent.</p>",
    ]
    for name, family in result["families"].items():
        tokens = ", ".join(json.dumps(t, ensure_ascii=False) for t in family["tokens"])
        body.append(f"<h2>{escape(name)} ({escape(tokens)})</h2>")
        tree = family["tree"]
        body.append(family_svg(tree, sizes) if tree else "<p>No feature fires on it.</p>")
    return (
        '<!doctype html><html><head><meta charset="utf-8"><title>Feature splitting</title>'
        "</head><body style='font-family:sans-serif'>" + "\n".join(body) + "</body></html>\n"
    )
