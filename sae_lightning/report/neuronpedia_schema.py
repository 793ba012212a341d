"""The rows of Neuronpedia's bulk-import layout, field by field, and their validation.

Neuronpedia imports a folder ``<modelId>/<sourceId>/`` holding ``release.jsonl``,
``model.jsonl``, ``sourceset.jsonl``, ``source.jsonl`` (one row each) and
``features/*.jsonl.gz`` / ``activations/*.jsonl.gz`` (rows of its ``Neuron`` and
``Activation`` tables). The types below are the Prisma column types of Neuronpedia's
``apps/webapp/prisma/schema.prisma`` (``String``, ``Float[]``, ``Int?``, ...), restricted to
the columns that its exporters (``neuronpedia-utils`` ``db_models``, SAEDashboard's
``neuronpedia_export.py``) write. ``?`` allows null; ``[]`` is a JSON array of that type.

Every row is checked before it is written: exactly these fields, each of its type (floats
finite; a ``DateTime`` an ISO-8601 string; ``Visibility`` one of its enum values), the
fields in :data:`FILLED` non-empty, and the arrays in :data:`PARALLEL` of equal length
(Neuronpedia's pages zip them).
"""

from __future__ import annotations

import math
from datetime import datetime
from typing import Any

FEATURE: dict[str, str] = {
    "modelId": "String",
    "layer": "String",  # the source id, "<layer>-<source set>"
    "index": "String",
    "creatorId": "String?",
    "createdAt": "DateTime",
    "maxActApprox": "Float?",
    "hasVector": "Boolean",
    "vector": "Float[]",
    "vectorLabel": "String?",
    "vectorDefaultSteerStrength": "Float?",
    "hookName": "String?",
    "topkCosSimIndices": "Int[]",
    "topkCosSimValues": "Float[]",
    "neuron_alignment_indices": "Int[]",
    "neuron_alignment_values": "Float[]",
    "neuron_alignment_l1": "Float[]",
    "correlated_neurons_indices": "Int[]",
    "correlated_neurons_pearson": "Float[]",
    "correlated_neurons_l1": "Float[]",
    "correlated_features_indices": "Int[]",
    "correlated_features_pearson": "Float[]",
    "correlated_features_l1": "Float[]",
    "neg_str": "String[]",
    "neg_values": "Float[]",
    "pos_str": "String[]",
    "pos_values": "Float[]",
    "frac_nonzero": "Float",
    "freq_hist_data_bar_heights": "Float[]",
    "freq_hist_data_bar_values": "Float[]",
    "logits_hist_data_bar_heights": "Float[]",
    "logits_hist_data_bar_values": "Float[]",
    "decoder_weights_dist": "Float[]",
    "sourceSetName": "String?",
}
"""A row of ``features/*.jsonl.gz`` (Neuronpedia's ``Neuron`` table)."""

ACTIVATION: dict[str, str] = {
    "id": "String",
    "tokens": "String[]",
    "index": "String",
    "layer": "String",
    "modelId": "String",
    "maxValue": "Float",
    "maxValueTokenIndex": "Int",
    "minValue": "Float",
    "values": "Float[]",
    "creatorId": "String",
    "dataSource": "String?",
    "dataIndex": "String?",
    "dfaValues": "Float[]",
    "dfaTargetIndex": "Int?",
    "dfaMaxValue": "Float?",
    "createdAt": "DateTime",
    "lossValues": "Float[]",
    "logitContributions": "String?",
    "binMin": "Float?",
    "binMax": "Float?",
    "binContains": "Float?",
    "qualifyingTokenIndex": "Int?",
}
"""A row of ``activations/*.jsonl.gz``: one example context of one feature."""

MODEL: dict[str, str] = {
    "id": "String",
    "instruct": "Boolean",
    "creatorId": "String",
    "displayNameShort": "String",
    "displayName": "String",
    "tlensId": "String?",
    "dimension": "Int?",
    "visibility": "Visibility",
    "inferenceEnabled": "Boolean",
    "layers": "Int",
    "neuronsPerLayer": "Int",
    "createdAt": "DateTime",
    "owner": "String",
    "updatedAt": "DateTime",
    "website": "String?",
}

SOURCE: dict[str, str] = {
    "id": "String",
    "modelId": "String",
    "setName": "String",
    "creatorId": "String",
    "hasDashboards": "Boolean",
    "inferenceEnabled": "Boolean",
    "saelensRelease": "String?",
    "saelensSaeId": "String?",
    "hfRepoId": "String?",
    "hfFolderId": "String?",
    "visibility": "Visibility",
    "hasUmap": "Boolean",
    "hasUmapLogSparsity": "Boolean",
    "hasUmapClusters": "Boolean",
    "num_prompts": "Int?",
    "num_tokens_in_prompt": "Int?",
    "dataset": "String?",
    "notes": "String?",
    "createdAt": "DateTime",
}

SOURCE_SET: dict[str, str] = {
    "modelId": "String",
    "name": "String",
    "creatorId": "String",
    "hasDashboards": "Boolean",
    "visibility": "Visibility",
    "description": "String",
    "type": "String",
    "creatorName": "String",
    "urls": "String[]",
    "creatorEmail": "String?",
    "releaseName": "String?",
    "defaultRange": "Int",
    "defaultShowBreaks": "Boolean",
    "showDfa": "Boolean",
    "showCorrelated": "Boolean",
    "showHeadAttribution": "Boolean",
    "showUmap": "Boolean",
    "createdAt": "DateTime",
}

RELEASE: dict[str, str] = {
    "name": "String",
    "description": "String",
    "descriptionShort": "String?",
    "creatorName": "String",
    "creatorNameShort": "String?",
    "creatorId": "String",
    "creatorEmail": "String?",
    "visibility": "Visibility",
    "isNewUi": "Boolean",
    "featured": "Boolean",
    "urls": "String[]",
    "defaultSourceSetName": "String?",
    "defaultSourceId": "String?",
    "defaultUmapSourceIds": "String[]",
    "createdAt": "DateTime",
}

TABLES: dict[str, dict[str, str]] = {
    "feature": FEATURE,
    "activation": ACTIVATION,
    "model": MODEL,
    "source": SOURCE,
    "sourceset": SOURCE_SET,
    "release": RELEASE,
}
"""Each row kind (as in the file names) and its fields."""

FILLED: dict[str, tuple[str, ...]] = {
    "feature": (
        "modelId",
        "layer",
        "index",
        "pos_str",
        "pos_values",
        "neg_str",
        "neg_values",
        "freq_hist_data_bar_heights",
        "freq_hist_data_bar_values",
        "logits_hist_data_bar_heights",
        "logits_hist_data_bar_values",
    ),
    "activation": ("id", "modelId", "layer", "index", "tokens", "values"),
    "model": ("id",),
    "source": ("id", "modelId", "setName"),
    "sourceset": ("modelId", "name"),
    "release": ("name",),
}
"""Fields that must hold data (a non-empty string or array): what a dashboard shows."""

PARALLEL: dict[str, tuple[tuple[str, ...], ...]] = {
    "feature": (
        ("pos_str", "pos_values"),
        ("neg_str", "neg_values"),
        ("freq_hist_data_bar_heights", "freq_hist_data_bar_values"),
        ("logits_hist_data_bar_heights", "logits_hist_data_bar_values"),
        ("neuron_alignment_indices", "neuron_alignment_values", "neuron_alignment_l1"),
        ("correlated_neurons_indices", "correlated_neurons_pearson", "correlated_neurons_l1"),
        ("correlated_features_indices", "correlated_features_pearson", "correlated_features_l1"),
        ("topkCosSimIndices", "topkCosSimValues"),
    ),
    "activation": (("tokens", "values"),),
}
"""Arrays read index by index together: they must have one length."""

VISIBILITY = ("PUBLIC", "UNLISTED", "PRIVATE")


def _is_datetime(value: Any) -> bool:
    if not isinstance(value, str):
        return False
    try:
        datetime.fromisoformat(value)
    except ValueError:
        return False
    return True


def _scalar_ok(kind: str, value: Any) -> bool:
    """Whether ``value`` is one (non-null) value of the Prisma scalar ``kind``."""
    if kind == "String":
        return isinstance(value, str)
    if kind == "Boolean":
        return isinstance(value, bool)
    if kind == "Int":
        return isinstance(value, int) and not isinstance(value, bool)
    if kind == "Float":
        number = isinstance(value, (int, float)) and not isinstance(value, bool)
        return number and math.isfinite(value)
    if kind == "DateTime":
        return _is_datetime(value)
    if kind == "Visibility":
        return value in VISIBILITY
    raise KeyError(f"unknown column type {kind!r}")


def type_ok(spec: str, value: Any) -> bool:
    """Whether ``value`` matches the column type ``spec`` (``Float``, ``Int?``, ``String[]``)."""
    if spec.endswith("?"):
        return value is None or type_ok(spec[:-1], value)
    if spec.endswith("[]"):
        return isinstance(value, list) and all(_scalar_ok(spec[:-2], v) for v in value)
    return value is not None and _scalar_ok(spec, value)


def row_errors(kind: str, row: dict[str, Any]) -> list[str]:
    """Every way ``row`` breaks the schema of ``kind`` (empty: valid)."""
    fields = TABLES[kind]
    errors = [f"lacks the field {k!r} ({t})" for k, t in fields.items() if k not in row]
    errors += [f"has the unknown field {k!r}" for k in row if k not in fields]
    for key, spec in fields.items():
        if key in row and not type_ok(spec, row[key]):
            errors.append(f"{key}={_short(row[key])} is not a {spec}")
    for key in FILLED.get(kind, ()):
        if key in row and row[key] in ("", [], None):
            errors.append(f"{key} is empty: it must hold data")
    for group in PARALLEL.get(kind, ()):
        lengths = {k: len(row[k]) for k in group if isinstance(row.get(k), list)}
        if len(set(lengths.values())) > 1:
            errors.append(f"the arrays {lengths} must have one length")
    return errors


def validate_row(kind: str, row: dict[str, Any], where: str = "") -> None:
    """Raise ``ValueError`` naming every field of ``row`` that breaks the schema of ``kind``."""
    errors = row_errors(kind, row)
    if errors:
        place = f" ({where})" if where else ""
        raise ValueError(f"invalid Neuronpedia {kind} row{place}: " + "; ".join(errors))


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."
