"""The replication's write-up: ``README.md`` (markdown), ``numbers.json``, density SVGs.

The paper's numbers and where this replication differs from it are in
:mod:`sae_lightning.replication.paper`.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from sae_lightning.analysis.records import (
    NotANeuronResult,
    SensitivityResult,
    SpecificityResult,
    UniversalityResult,
)
from sae_lightning.replication.density import density_svg
from sae_lightning.replication.numbers import UNIVERSAL, collect
from sae_lightning.replication.paper import DIFFERENCES, PAPER, recipe_label, recipe_note
from sae_lightning.replication.universality import LABELS, universality_table

NUMBERS_FILE = "numbers.json"
"""Every number of the write-up (:func:`~sae_lightning.replication.numbers.collect`)."""
RUN_LABELS = {"a": "A", "b": "B", "a_prime": "A'"}
CRITERIA_SHOWN = tuple(
    kind.criterion
    for kind in (SpecificityResult, SensitivityResult, NotANeuronResult, UniversalityResult)
)


def md_token(token: str) -> str:
    """A token as a markdown code span of its JSON string (whitespace visible, ``|`` safe)."""
    text = json.dumps(token, ensure_ascii=False).replace("|", "\\|")
    return f"`` {text} ``" if "`" in text else f"`{text}`"


def _num(value: Any, digits: int = 3) -> str:
    if value is None:
        return "–"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, int):
        return f"{value:,}"
    return f"{value:.{digits}f}"


def _mark(verdict: Any) -> str:
    return "–" if verdict is None else ("pass" if verdict else "fail")


def _universality(p: dict[str, Any]) -> str:
    both = p["groups"]["passing specificity and sensitivity"]
    return (
        f"{_num(p['median_best_match_corr'])} over all {p['n_compared']:,}; "
        f"{_num(both['median_best_match_corr'])} over the {both['n']:,} passing specificity "
        "and sensitivity"
    )


def _glance(n: dict[str, Any]) -> list[str]:
    a, b = n["runs"]["a"], n["runs"]["b"]
    da, db = n["density"]["a"], n["density"]["b"]
    found = [name for name, c in n["concepts"].items() if c["a"] is not None]

    def both(key: str, digits: int = 3) -> tuple[str, str]:
        return _num(a["metrics"][key], digits), _num(b["metrics"][key], digits)

    rows = [
        ("SAE features", "4,096 (8 × 512 neurons)", _num(a["d_sae"]), _num(b["d_sae"])),
        (
            "training activations",
            "8 billion",
            _num((a["steps"] or 0) * (a["batch_size"] or 0)),
            _num((b["steps"] or 0) * (b["batch_size"] or 0)),
        ),
        ("loss recovered (vs zero-ablating the MLP)", _num(PAPER["loss_recovered"], 2),
         *both("val/loss_recovered")),
        ("L0 (features per token)", "not stated (target < 10–20)", *both("val/l0", 1)),
        (
            "dead features",
            f"{PAPER['dead']} (no firing on 100M tokens)",
            f"{da['dead']} (no firing on {da['n_tokens']:,} held-out tokens)",
            f"{db['dead']}",
        ),
        (
            "ultralow density",
            f"{PAPER['ultralow']} (density < {PAPER['ultralow_threshold']})",
            f"{da['below_1e-4'] - da['dead']} below 1e-4 (1e-6 is below what "
            f"{da['n_tokens']:,} tokens resolve)",
            f"{db['below_1e-4'] - db['dead']}",
        ),
        ("full stop / import / for / else", "found (gelu-1l replication)",
         f"{len(found)} of {len(n['concepts'])} found", ""),
    ]  # fmt: skip
    head = [
        f"| | paper (A/1) | ours, A (`{a['model']}`) | ours, B (`{b['model']}`) |",
        "|---|---|---|---|",
    ]
    return head + [f"| {' | '.join(r)} |" for r in rows]


def _training(n: dict[str, Any]) -> list[str]:
    lines = [
        "| run | model | seed | steps × batch | SAE | minutes | loss recovered | L0 | "
        "explained variance | silent on the validation tokens | CE clean / SAE / zero-ablated |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for role, r in n["runs"].items():
        m = r["metrics"]
        ce = " / ".join(_num(m[f"val/ce_loss_{k}"]) for k in ("clean", "sae", "zero_ablation"))
        dead = m["val/dead_fraction"]
        lines.append(
            f"| {RUN_LABELS[role]} (job {r['job']}) | `{r['model']}` | {r['seed']} | "
            f"{r['steps']} × {r['batch_size']} | "
            f"{recipe_label(r)} | {_num(r['train_minutes'], 1)} | "
            f"{_num(m['val/loss_recovered'])} | {_num(m['val/l0'], 1)} | "
            f"{_num(m['val/explained_variance'])} | "
            f"{'–' if dead is None else round(dead * (r['d_sae'] or 0))} | {ce} |"
        )
    return lines


def _density(n: dict[str, Any]) -> list[str]:
    lines = [
        "| run | features | never fired | density < 1e-5 | < 1e-4 | > 1e-2 | median live density |",
        "|---|---|---|---|---|---|---|",
    ]
    for role, d in n["density"].items():
        label = RUN_LABELS[role]
        med = d["median_live_log10"]
        lines.append(
            f"| {label} | {d['n_features']:,} | {d['dead']} | {d['below_1e-5']} | "
            f"{d['below_1e-4']} | {d['above_1e-2']} | {'–' if med is None else f'{10**med:.2e}'} |"
        )
    return lines


def _proxy(feature: dict[str, Any], shown: int = 6) -> str:
    """An automatic proxy in a table cell: its first tokens, how many more, its condition."""
    tokens = feature["proxy_tokens"]
    if not tokens:
        return f"`{(feature['proxy'] or 'none').replace('|', '/')}`"
    text = ", ".join(md_token(t) for t in tokens[:shown])
    if len(tokens) > shown:
        text += f" (+{len(tokens) - shown} more)"
    return text + (f"; *{feature['proxy_condition']}*" if feature["proxy_condition"] else "")


def _own_pick(b: dict[str, Any], same: bool) -> str:
    """Run B's own feature for a concept: the best match itself, or another with its proxy."""
    if same:
        return f"{b['feature']} (the best match)"
    tokens = ", ".join(md_token(t) for t in b["proxy_tokens"][:3])
    return (
        f"{b['feature']} (another: {tokens}; {_num(b['specificity'])} × {_num(b['sensitivity'])})"
    )


def _concepts(n: dict[str, Any]) -> list[str]:
    lines = [
        "| concept | feature (dashboard) | automatic proxy | specificity | sensitivity | max "
        "neuron corr | top logit weights | ablation Δ log-prob | best match in B (act. / logit "
        "corr) | B's own pick |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for name, c in n["concepts"].items():
        a, b = c["a"], c["b"]
        tokens = ", ".join(md_token(t) for t in c["tokens"])
        if a is None:
            lines.append(f"| {name} ({tokens}) | not found | | | | | | | | |")
            continue
        link = f"[{a['feature']}](dashboards/features/{a['feature']}.html)"
        logits = ", ".join(md_token(t) for t in a["top_logits"][:6])
        sens = f"{_num(a['sensitivity'])} ({a['n_proxy_fired']}/{a['n_proxy_tokens']})"
        match = f"{a['best_match']} ({_num(a['activation_corr'])} / {_num(a['logit_weight_corr'])})"
        own = "–" if b is None else _own_pick(b, c["b_is_best_match"])
        lines.append(
            f"| {name} ({tokens}) | {link} | {_proxy(a)} | "
            f"{_num(a['specificity'])} | {sens} | {_num(a['max_neuron_corr'])} (neuron "
            f"{a['neuron']}) | {logits} | {_num(a['ablation_delta_logprob'])} | {match} | {own} |"
        )
    lines += ["", "| concept | feature | " + " | ".join(CRITERIA_SHOWN) + " |"]
    lines.append("|---|---|" + "---|" * len(CRITERIA_SHOWN))
    for name, c in n["concepts"].items():
        if c["a"] is not None:
            v = c["a"]["verdicts"]
            marks = " | ".join(_mark(v.get(k)) for k in CRITERIA_SHOWN)
            lines.append(f"| {name} | {c['a']['feature']} | {marks} |")
    return lines


def _population(n: dict[str, Any]) -> list[str]:
    pops = n["population"]
    names = [LABELS[k] for k in pops]
    first = next(iter(pops.values()))
    skip = ("n_compared", "groups", "median", "share")
    keys = [k for k in first if not k.startswith(skip)]
    lines = ["| criterion | pass rate, " + " | ".join(names) + " |", "|---|" + "---|" * len(pops)]
    lines += [f"| {k} | " + " | ".join(_num(p.get(k)) for p in pops.values()) + " |" for k in keys]
    lines += [
        "",
        "Universality by group of features (each SAE against the other of its pair, "
        f"{' / '.join(names)}): the median over the group of each feature's best-match activation "
        f"correlation, the share of the group with a best match ≥ {UNIVERSAL}, and the median "
        "of each feature's best-neuron correlation (its own model's neurons). Here every feature "
        "that fired counts, and correlations keep their sign (the first table takes "
        "`|correlation|` over the live features).",
        "",
        f"| features | count | median best match | share ≥ {UNIVERSAL} | median best neuron |",
        "|---|---|---|---|---|",
    ]
    for group in first["groups"]:
        gs = [p["groups"][group] for p in pops.values()]

        def cell(key: str, gs: list[dict[str, Any]] = gs) -> str:
            return " / ".join(_num(g[key]) for g in gs)

        count = " / ".join(f"{g['n']:,}" for g in gs)
        lines.append(
            f"| {group} | {count} | {cell('median_best_match_corr')} | "
            f"{cell('share_best_match_universal')} | {cell('median_neuron_corr')} |"
        )
    return lines


def render(n: dict[str, Any], command: str = "") -> str:
    """The markdown report of :func:`~sae_lightning.replication.numbers.collect`'s numbers."""
    secs, runs = n["analysis"]["seconds"], n["runs"]
    parts = [
        "# *Towards Monosemanticity* on the embedded models: replication report",
        "",
        f"Hook `{n['hook']}`. Three SAEs trained with one recipe ({recipe_label(runs['a'])}, "
        f"{_num(runs['a']['d_sae'])} features): A on `{runs['a']['model']}`, "
        f"B on the second transformer `{runs['b']['model']}` (as the paper's A/1 and B/1), and "
        f"A' on `{runs['a_prime']['model']}` with another seed; then every criterion of the "
        f"detailed investigation on all {_num(n['analysis']['n_tokens'])} held-out tokens (the "
        "val split), with universality A vs B and B vs A across transformers and A vs A' on one"
        + (f" ({sum(secs.values()):.0f} s of analysis)." if secs else "."),
        "",
        f"Command: `{command}`" if command else "",
        "",
        "## Universality across transformers, beside the paper's",
        "",
        *universality_table(n["universality"]),
        "",
        "## Our numbers beside the paper's",
        "",
        *_glance(n),
        "",
        "## Training",
        "",
        *_training(n),
        "",
        "## Feature density (run A, held-out tokens)",
        "",
        "![feature density of run A](density_a.svg)",
        "",
        *_density(n),
        "",
        "## The four features, with their scorecards (run A)",
        "",
        *_concepts(n),
        "",
        "Prompt-centric view of the four features: [dashboards/prompts.html]"
        "(dashboards/prompts.html); scorecard of the four: [dashboards/index.html]"
        "(dashboards/index.html).",
        "",
        "## Population",
        "",
        *_population(n),
        "",
        "## Where this differs from the paper",
        "",
        *recipe_note(runs["a"]),
        *DIFFERENCES,
        "",
    ]
    return "\n".join(parts) + "\n"


def write_writeup(
    out: Path,
    runs: dict[str, Path],
    reports: dict[str, dict[str, Any]],
    picks: dict[str, dict[str, Any]],
    concepts: dict[str, list[str]],
    focus: dict[str, Any] | None = None,
    analysis_seconds: dict[str, float] | None = None,
    command: str = "",
    notes: str = "",
) -> Path:
    """Write ``numbers.json``, ``density_a.svg``, ``density_b.svg`` and ``README.md`` (the
    arguments are :func:`~sae_lightning.replication.numbers.collect`'s)."""
    out.mkdir(parents=True, exist_ok=True)
    numbers = collect(runs, reports, picks, concepts, focus, analysis_seconds)
    (out / NUMBERS_FILE).write_text(json.dumps(numbers, indent=1) + "\n")
    for role, summary in numbers["density"].items():
        title = f"Feature density, run {RUN_LABELS[role]} ({summary['n_tokens']:,} held-out tokens)"
        (out / f"density_{role}.svg").write_text(density_svg(summary, title))
    path = out / "README.md"
    path.write_text(render(numbers, command) + notes)
    return path
