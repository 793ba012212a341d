"""The feature-splitting report in Markdown (``splitting.md``), from the result that
:func:`sae_lightning.replication.splitting.split_features` also writes as JSON."""

from __future__ import annotations

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
