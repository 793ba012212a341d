"""Reading ``criteria.json`` and turning one feature's results into what a page shows.

Everything here is pure Python over the report's JSON (no torch, no plugins); its format is
described in :mod:`sae_lightning.analysis.records`. The built-in criteria, whose results the
dashboards read as typed records (``result_of``), get their own sections; every criterion,
built in or not, shows its verdict and scalar numbers.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from sae_lightning.analysis.records import BUILT_IN, CRITERIA_FILE, FORMAT_VERSION, headline_key

Token = tuple[str, str, str, str]
"""One rendered token: (shown text, hover title, highlight alpha, underline class)."""

_SHOWN = {"\n": "↵", "\t": "⇥", "\r": "␍"}


def load_report(path: str | Path) -> dict[str, Any]:
    """``criteria.json`` (or a folder holding it) as a dict, checked for the report's keys.

    Raises:
        FileNotFoundError: If the file is missing (the message names the path looked at).
        ValueError: If it is not JSON, lacks ``metadata``/``features``, or has a format
            version newer than this code reads.
    """
    path = Path(path)
    if path.is_dir():
        path = path / CRITERIA_FILE
    if not path.is_file():
        raise FileNotFoundError(
            f"no analysis report at {path}: pass a criteria.json or the report/ folder holding "
            "it (python analyze.py writes <out>/report/criteria.json)"
        )
    try:
        report = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ValueError(f"{path} is not a valid criteria.json (corrupt JSON: {err})") from None
    keys = report if isinstance(report, dict) else {}
    missing = [k for k in ("metadata", "features") if k not in keys]
    if missing:
        raise ValueError(f"{path} is not a criteria.json: it lacks the keys {missing}")
    version = report.get("version", 1)
    if not isinstance(version, int) or version > FORMAT_VERSION:
        raise ValueError(
            f"{path} has format version {version!r}; this sae_lightning reads versions 1 to "
            f"{FORMAT_VERSION}: upgrade it, or re-run the analysis"
        )
    report.setdefault("criteria", {})
    return report


def check_features(report: dict[str, Any], features: list[int] | None) -> list[int]:
    """The requested features (all of the report's when None), each checked to be in it."""
    known = [int(k) for k in report["features"]]
    if features is None:
        return known
    present = set(known)
    bad = [f for f in features if f not in present]
    if bad:
        shown = f"{known[:10]}{'...' if len(known) > 10 else ''}"
        raise ValueError(
            f"features {bad[:10]} are not in the report ({len(known)} analysed features: {shown})"
        )
    return [int(f) for f in features]


def fmt(value: Any) -> str:
    """A number as a short string (``-`` for None)."""
    if value is None:
        return "-"
    if isinstance(value, bool):
        return str(value)
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def shown(token: str) -> str:
    """A token as displayed: newlines and tabs made visible (the template escapes it)."""
    return "".join(_SHOWN.get(c, c) for c in token) if token else "∅"


def criteria_of(report: dict[str, Any]) -> list[str]:
    """The criteria in the report, in the order the analysis ran them."""
    names = list(report["metadata"].get("criteria") or report.get("criteria") or [])
    for per_feature in report["features"].values():
        names += [c for c in per_feature if c not in names]
        break
    return names


def headlines(report: dict[str, Any], criteria: list[str]) -> dict[str, str | None]:
    """Each criterion's headline key: as the analysis wrote it (``headlines``, format 2), or
    for an older report as :func:`headline_key` picks it (a built-in criterion's declared
    one, else its first float key)."""
    written = report.get("headlines") or {}
    out: dict[str, str | None] = {}
    for name in criteria:
        if name in written:
            out[name] = written[name]
            continue
        declared = BUILT_IN[name].headline if name in BUILT_IN else None
        results = (per_feature[name] for per_feature in report["features"].values()
                   if isinstance(per_feature.get(name), dict))  # fmt: skip
        out[name] = headline_key(declared, results)
    return out


def verdict_mark(verdict: Any) -> tuple[str, str]:
    """(symbol, css class) of a verdict: pass, fail or none."""
    if verdict is None:
        return "·", "none"
    return ("✓", "pass") if verdict else ("✗", "fail")


def scalars(numbers: dict[str, Any]) -> list[tuple[str, str]]:
    """A criterion's scalar results (numbers, strings, bools) as (key, text), verdict last."""
    return [
        (k, fmt(v))
        for k, v in numbers.items()
        if k != "verdict" and (v is None or isinstance(v, (int, float, str)))
    ]


def _alpha(value: float | None, scale: float) -> str:
    if not value or value <= 0 or scale <= 0:
        return ""
    return f"{min(value / scale, 1.0):.2f}"


def _underline(delta: float | None, scale: float) -> str:
    """``fell1..3`` / ``rose1..3`` by the size of the log-prob change (``""``: negligible)."""
    if delta is None or scale <= 0 or abs(delta) < 0.05 * scale:
        return ""
    level = 1 + int(abs(delta) / scale >= 0.35) + int(abs(delta) / scale >= 0.7)
    return f"{'fell' if delta < 0 else 'rose'}{level}"


def tokens_view(
    tokens: list[str],
    acts: list[float] | None,
    scale: float,
    highlight: int | None = None,
    highlight_act: float | None = None,
    deltas: list[float | None] | None = None,
) -> list[Token]:
    """Tokens with background alpha ∝ activation / ``scale`` and the value in the title.

    ``acts`` gives every token's activation; without it only ``highlight`` (with
    ``highlight_act``) is coloured. ``deltas[p]`` is the change in log-prob of token ``p``
    (underline fell/rose by sign, darker for a larger share of the largest change).
    """
    if acts is None:
        acts = [None] * len(tokens)  # type: ignore[list-item]
        if highlight is not None and 0 <= highlight < len(tokens):
            acts[highlight] = highlight_act  # type: ignore[call-overload]
    big = max((abs(d) for d in deltas or [] if d is not None), default=0.0)
    out = []
    for p, token in enumerate(tokens):
        act = acts[p] if p < len(acts) else None
        title = f"{token!r}  act {fmt(act)}"
        delta = deltas[p] if deltas and p < len(deltas) else None
        if delta is not None:
            title += f"  Δlogp {delta:+.3f}"
        classes = " ".join(c for c in (_underline(delta, big), "hl" * (p == highlight)) if c)
        out.append((shown(token), title, _alpha(act, scale), classes))
    return out
