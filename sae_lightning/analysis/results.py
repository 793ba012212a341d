"""The results of an analysis: per feature, per criterion, numbers and a verdict.

:class:`AnalysisResults` collects them, prints the scorecard and writes ``criteria.json``
(the format is described in :mod:`sae_lightning.analysis.records`); it is strict JSON (NaN
and infinities become ``null``, tensors become numbers or lists).
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from numbers import Real
from pathlib import Path
from typing import Any

import numpy as np
import torch

from sae_lightning.analysis.records import (
    FORMAT_VERSION,
    Record,
    TopActivationsResult,
    headline_key,
    is_number,
    result_of,
    value_of,
)

MARKS = {True: "✓", False: "✗", None: "·"}


def json_safe(value: Any) -> Any:
    """``value`` as strict JSON: tensors and arrays to lists, NaN/inf to None, tuples to lists."""
    if isinstance(value, (torch.Tensor, np.ndarray, np.generic)):
        value = value.tolist()
    if isinstance(value, Record):
        value = value.to_dict()
    if isinstance(value, dict):
        return {str(k): json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple, set)):
        return [json_safe(v) for v in value]
    if isinstance(value, bool) or value is None or isinstance(value, (int, str)):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, Real):
        return json_safe(float(value))
    return str(value)


def _scalar_safe(value: Any) -> Any:
    """Top-level cleaning of one result value: tensors/arrays to Python, non-finite to None.

    Nested lists and dicts are left as they are (cheap for thousands of features); the
    writer makes them strict JSON (:meth:`AnalysisResults.to_json`)."""
    if isinstance(value, (torch.Tensor, np.ndarray, np.generic)):
        value = value.tolist()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def _encode_default(value: Any) -> Any:
    """``json`` fallback for records, tensors, arrays and sets (the C encoder calls it)."""
    if isinstance(value, Record):
        return value.to_dict()
    if isinstance(value, (torch.Tensor, np.ndarray, np.generic)):
        return value.tolist()
    if isinstance(value, set):
        return list(value)
    if isinstance(value, Real):
        return float(value)
    return str(value)


class AnalysisResults:
    """Collects every criterion's per-feature results for one analysis.

    Args:
        features: Indices of the analysed features, in analysis order.
        metadata: About the run (SAE source, model, hook, tokens...): written to the JSON.

    Example:
        >>> r = AnalysisResults([3, 7], {"model_name": "toy-1l"})
        >>> r.add("fires", {3: {"density": 0.1, "verdict": True}, 7: {"density": 0.0,
        ...        "verdict": False}}, {"pass_rate": 0.5})
        >>> r.features[7]["fires"]["verdict"]
        False
    """

    def __init__(self, features: list[int], metadata: dict[str, Any]) -> None:
        self.feature_list = [int(f) for f in features]
        self.metadata = dict(metadata)
        self.summaries: dict[str, dict[str, Any]] = {}
        self.headlines: dict[str, str | None] = {}
        self.features: dict[int, dict[str, Record | dict[str, Any]]] = {
            f: {} for f in self.feature_list
        }

    def add(
        self,
        criterion: str,
        results: Mapping[int, Record | dict[str, Any]],
        summary: dict[str, Any],
        headline: str | None = None,
    ) -> None:
        """Record one criterion's results (keyed by feature index) and its summary scalars.

        Records are kept as they are; a dict's values are cleaned (tensors to Python,
        non-finite to None).

        Args:
            headline: The result key shown in the scorecard; None: see :func:`headline_key`.

        Raises:
            ValueError: If ``results`` names a feature that is not analysed.
        """
        unknown = sorted(set(map(int, results)) - set(self.features))
        if unknown:
            raise ValueError(
                f"criterion {criterion!r} reported features {unknown[:10]} that are not "
                f"analysed; analysed: {self.feature_list[:10]}{'...' * (len(self.features) > 10)}"
            )
        for feature, numbers in results.items():
            self.features[int(feature)][criterion] = (
                numbers
                if isinstance(numbers, Record)
                else {str(k): _scalar_safe(v) for k, v in numbers.items()}
            )
        self.summaries[criterion] = json_safe(summary)
        self.headlines[criterion] = headline

    @property
    def criteria(self) -> list[str]:
        return list(self.summaries)

    def headline(self, criterion: str) -> str | None:
        """The key of ``criterion``'s headline number (:func:`headline_key`)."""
        results = (per_feature[criterion] for per_feature in self.features.values()
                   if criterion in per_feature)  # fmt: skip
        return headline_key(self.headlines.get(criterion), results)

    def _raw_dict(self) -> dict[str, Any]:
        return {
            "version": FORMAT_VERSION,
            "metadata": json_safe(self.metadata),
            "criteria": self.summaries,
            "headlines": {c: self.headline(c) for c in self.criteria},
            "features": {str(f): self.features[f] for f in self.feature_list},
        }

    def to_dict(self) -> dict[str, Any]:
        """The report as strict-JSON-able Python objects (what ``criteria.json`` holds)."""
        return json_safe(self._raw_dict())

    def to_json(self, path: str | Path) -> Path:
        """Write ``criteria.json`` (creating its folder); returns the path written.

        Compact (no indent): thousands of features make tens of MB, and only the C encoder,
        which ``indent`` disables, writes that in seconds. Results are encoded as they are;
        only if one holds a NaN or infinity deep inside is the whole report cleaned first.
        """
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        options: dict[str, Any] = {"allow_nan": False, "separators": (",", ":")}
        try:
            text = json.dumps(self._raw_dict(), default=_encode_default, **options)
        except ValueError:  # a non-finite float somewhere: clean everything (slow path)
            text = json.dumps(self.to_dict(), **options)
        path.write_text(text + "\n")
        return path

    def _density(self, feature: int) -> float | None:
        top = result_of(self.features[feature], TopActivationsResult)
        return None if top is None or top.density is None else float(top.density)

    def scorecard(self, max_rows: int = 40) -> str:
        """A fixed-width table: one row per feature, each criterion's headline and verdict."""
        has_density = any(self._density(f) is not None for f in self.feature_list)
        heads = {c: self.headline(c) for c in self.criteria}
        header = ["feature"] + ["density"] * has_density
        header += [f"{c}:{heads[c]}" if heads[c] else c for c in self.criteria]
        rows = []
        for f in self.feature_list[:max_rows]:
            row = [str(f)]
            if has_density:
                d = self._density(f)
                row.append("-" if d is None else f"{d:.2e}")
            for c in self.criteria:
                numbers = self.features[f].get(c)
                value = value_of(numbers, heads[c]) if heads[c] else None
                shown = f"{value:.3g}" if is_number(value) else "-"
                verdict = value_of(numbers, "verdict")
                row.append(f"{shown} {MARKS.get(None if verdict is None else bool(verdict))}")
            rows.append(row)
        widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
        lines = [
            "  ".join(cell.rjust(w) for cell, w in zip(r, widths, strict=True))
            for r in [header, *rows]
        ]
        lines.insert(1, "  ".join("-" * w for w in widths))
        if len(self.feature_list) > max_rows:
            lines.append(f"... {len(self.feature_list) - max_rows} more features in criteria.json")
        for c in self.criteria:
            rate = self.summaries[c].get("pass_rate")
            if is_number(rate):
                lines.append(f"{c}: {rate:.1%} of {len(self.feature_list)} features pass")
        return "\n".join(lines)
