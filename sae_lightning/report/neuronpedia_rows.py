"""Rows of the Neuronpedia export, built from one report's ``criteria.json`` results.

Where each feature field comes from (a report lacking one fails, naming the field and the
criterion to run):

- ``maxActApprox`` / ``frac_nonzero``: ``top_activations`` ``max_activation`` / ``density``;
- ``pos_str``/``pos_values``, ``neg_str``/``neg_values``: ``downstream`` top/bottom logit
  tokens and weights; ``logits_hist_*``: its logit-weight histogram (bin centres, counts);
- ``freq_hist_*``: ``specificity``'s histogram of nonzero activations (proxy and other
  counts summed per bin);
- activation rows: ``tokens`` and ``values`` of each example window (the highlighted token
  carries its exact activation), ``maxValue`` its largest value, ``qualifyingTokenIndex``
  the highlight; top examples have ``binMin = binContains = -1`` and ``binMax`` the max
  activation (SAEDashboard's marking), quantile samples their interval.

Neuronpedia's neuron tables (``neuron_alignment_*``, ``correlated_neurons_*``) want per-neuron
decoder cosines that ``not_a_neuron`` does not keep, so they are left empty; the ``Model``
row's ``layers``/``neuronsPerLayer`` are 0, as Neuronpedia's own exporter writes them (the
import keeps an existing model's row). Every row is validated
(:mod:`sae_lightning.report.neuronpedia_schema`) before anything is written.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Any

TOP_BIN = -1.0
"""``binMin``/``binContains`` of a top example (as SAEDashboard marks them)."""


@dataclass(frozen=True)
class Source:
    """Who and what the rows belong to (the fields every row repeats)."""

    model_id: str
    layer: str  # the source id, "<layer>-<set_name>"
    set_name: str
    creator_id: str
    creator_name: str
    created_at: str


def _need(numbers: dict[str, Any], key: str, field: str, feature: str, criterion: str) -> Any:
    """``numbers[key]``, or a ValueError naming the Neuronpedia field that needs it."""
    value = numbers.get(key)
    if value is None:
        raise ValueError(
            f"feature {feature}: criteria.json has no {criterion}.{key}, from which the "
            f"Neuronpedia field {field!r} is derived; run analyze.py with "
            f"{criterion.split('.')[0]} among "
            f"its criteria (criteria=[top_activations,specificity,downstream,...])"
        )
    return value


def _criterion(per_feature: dict[str, Any], name: str, field: str, feature: str) -> dict:
    if not isinstance(per_feature.get(name), dict):
        raise ValueError(
            f"feature {feature}: criteria.json has no {name} results, from which the "
            f"Neuronpedia field {field!r} is derived; run analyze.py with {name} among its "
            f"criteria (present: {sorted(per_feature)})"
        )
    return per_feature[name]


def bars(edges: list[float], counts: list[float]) -> tuple[list[float], list[float]]:
    """(bin centres, heights) of a histogram given by its ``len(counts) + 1`` edges."""
    if len(edges) != len(counts) + 1:
        raise ValueError(f"a histogram with {len(counts)} counts needs {len(counts) + 1} edges")
    return [(lo + hi) / 2 for lo, hi in zip(edges, edges[1:], strict=False)], list(counts)


def feature_row(src: Source, feature: str, per_feature: dict[str, Any], hook: str) -> dict:
    """The ``features/*.jsonl.gz`` row of one feature, from its criteria.json results."""
    top = _criterion(per_feature, "top_activations", "maxActApprox", feature)
    down = _criterion(per_feature, "downstream", "pos_str", feature)
    spec = _criterion(per_feature, "specificity", "freq_hist_data_bar_heights", feature)
    field, name = "freq_hist_data_bar_heights", "specificity.histogram"
    hist = _need(spec, "histogram", field, feature, "specificity")
    pos, neg = (_need(hist, k, field, feature, name) for k in ("proxy_counts", "other_counts"))
    freq_values, freq_heights = bars(
        _need(hist, "edges", field, feature, name), [p + o for p, o in zip(pos, neg, strict=True)]
    )
    field, name = "logits_hist_data_bar_heights", "downstream.histogram"
    logit_hist = _need(down, "histogram", field, feature, "downstream")
    logit_values, logit_heights = bars(
        _need(logit_hist, "edges", field, feature, name),
        _need(logit_hist, "counts", field, feature, name),
    )
    empty: dict[str, list] = {
        key: []
        for key in (
            "vector topkCosSimIndices topkCosSimValues neuron_alignment_indices "
            "neuron_alignment_values neuron_alignment_l1 correlated_neurons_indices "
            "correlated_neurons_pearson correlated_neurons_l1 correlated_features_indices "
            "correlated_features_pearson correlated_features_l1 decoder_weights_dist"
        ).split()
    }
    return {
        "modelId": src.model_id,
        "layer": src.layer,
        "index": feature,
        "creatorId": src.creator_id,
        "createdAt": src.created_at,
        "maxActApprox": _need(top, "max_activation", "maxActApprox", feature, "top_activations"),
        "hasVector": False,
        "vectorLabel": None,
        "vectorDefaultSteerStrength": None,
        "hookName": hook,
        **empty,
        "neg_str": _need(down, "bottom_tokens", "neg_str", feature, "downstream"),
        "neg_values": _need(down, "bottom_values", "neg_values", feature, "downstream"),
        "pos_str": _need(down, "top_tokens", "pos_str", feature, "downstream"),
        "pos_values": _need(down, "top_values", "pos_values", feature, "downstream"),
        "frac_nonzero": _need(top, "density", "frac_nonzero", feature, "top_activations"),
        "freq_hist_data_bar_heights": freq_heights,
        "freq_hist_data_bar_values": freq_values,
        "logits_hist_data_bar_heights": logit_heights,
        "logits_hist_data_bar_values": logit_values,
        "sourceSetName": src.set_name,
    }


def window_values(example: dict[str, Any]) -> list[float]:
    """Per-token activations of an example window, the highlighted token's exact."""
    tokens, highlight = example["tokens"], example.get("highlight")
    values = list(example.get("acts") or [0.0] * len(tokens))
    if highlight is not None and 0 <= highlight < len(values):
        values[highlight] = example["activation"]
    return values


def activation_row(
    src: Source, feature: str, example: dict[str, Any], key: str, bin_: tuple
) -> dict:
    """One ``activations/*.jsonl.gz`` row: an example window of ``feature``."""
    values = window_values(example)
    digest = hashlib.sha1(f"{src.model_id}/{src.layer}/{feature}/{key}".encode()).hexdigest()
    context = example.get("context")
    return {
        "id": "c" + digest[:24],  # deterministic: a re-export replaces, never duplicates
        "tokens": list(example["tokens"]),
        "index": feature,
        "layer": src.layer,
        "modelId": src.model_id,
        "maxValue": max(values),
        "maxValueTokenIndex": values.index(max(values)),
        "minValue": min(values),
        "values": values,
        "creatorId": src.creator_id,
        "dataSource": None,
        "dataIndex": None if context is None else str(context),
        "dfaValues": [],
        "dfaTargetIndex": None,
        "dfaMaxValue": None,
        "createdAt": src.created_at,
        "lossValues": [],
        "logitContributions": None,
        "binMin": bin_[0],
        "binMax": bin_[1],
        "binContains": bin_[2],
        "qualifyingTokenIndex": example.get("highlight"),
    }


def activation_rows(src: Source, feature: str, per_feature: dict[str, Any]) -> list[dict]:
    """The top examples, then each activation-quantile interval's samples."""
    top = _criterion(per_feature, "top_activations", "activations", feature)
    max_act = _need(top, "max_activation", "binMax", feature, "top_activations")
    rows = [
        activation_row(src, feature, ex, f"top/{k}", (TOP_BIN, max_act, TOP_BIN))
        for k, ex in enumerate(top.get("top_examples") or [])
    ]
    for i, interval in enumerate(top.get("quantile_samples") or []):
        lo, hi = interval["interval"]
        bin_ = (lo, max_act if hi is None else hi, None)
        rows += [
            activation_row(src, feature, ex, f"quantile/{i}/{k}", bin_)
            for k, ex in enumerate(interval["examples"])
        ]
    return rows


def metadata_rows(src: Source, metadata: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """The one-row files: release, model, source set and source (visibility PRIVATE, as a
    new Neuronpedia source set starts; the admin publishes it)."""
    common = {"creatorId": src.creator_id, "createdAt": src.created_at, "visibility": "PRIVATE"}
    about = f"{metadata.get('d_sae', '?')}-feature SAE on {metadata.get('hook_name')}"
    release = {
        **common,
        "name": src.set_name,
        "description": f"{about} (sae-lightning)",
        "descriptionShort": about,
        "creatorName": src.creator_name,
        "creatorNameShort": src.creator_name,
        "creatorEmail": None,
        "isNewUi": False,
        "featured": False,
        "urls": [],
        "defaultSourceSetName": src.set_name,
        "defaultSourceId": src.layer,
        "defaultUmapSourceIds": [],
    }
    model = {
        **common,
        "id": src.model_id,
        "instruct": False,
        "displayNameShort": src.model_id,
        "displayName": src.model_id,
        "tlensId": metadata.get("model_name"),
        "dimension": None,
        "inferenceEnabled": False,
        "layers": 0,
        "neuronsPerLayer": 0,
        "owner": "",
        "updatedAt": src.created_at,
        "website": None,
    }
    sourceset = {
        **common,
        "modelId": src.model_id,
        "name": src.set_name,
        "hasDashboards": True,
        "description": about,
        "type": "",
        "creatorName": src.creator_name,
        "urls": [],
        "creatorEmail": None,
        "releaseName": src.set_name,
        "defaultRange": 1,
        "defaultShowBreaks": True,
        "showDfa": False,
        "showCorrelated": False,
        "showHeadAttribution": False,
        "showUmap": False,
    }
    source = {
        **common,
        "id": src.layer,
        "modelId": src.model_id,
        "setName": src.set_name,
        "hasDashboards": True,
        "inferenceEnabled": False,
        "saelensRelease": None,
        "saelensSaeId": None,
        "hfRepoId": None,
        "hfFolderId": None,
        "hasUmap": False,
        "hasUmapLogSparsity": False,
        "hasUmapClusters": False,
        "num_prompts": metadata.get("n_contexts"),
        "num_tokens_in_prompt": metadata.get("n_ctx"),
        "dataset": None,
        "notes": f"analysis of {metadata.get('source')}" if metadata.get("source") else None,
    }
    return {"release": release, "model": model, "sourceset": sourceset, "source": source}
