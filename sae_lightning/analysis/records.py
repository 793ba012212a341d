"""Typed per-feature results of the built-in criteria, and the ``criteria.json`` format.

Every built-in criterion (``plugins/``) returns one record per analysed feature; the
dashboards (:mod:`sae_lightning.report`) and the replication read the same records back
from ``criteria.json`` with :func:`result_of`. Field order is the JSON key order. A
criterion of your own may return records of its own (subclass :class:`Record`) or plain
dicts of JSON-able values with a ``verdict``.

``criteria.json`` (:data:`CRITERIA_FILE`, format :data:`FORMAT_VERSION`) holds::

    {"version": 2, "metadata": {...}, "criteria": {name: summary scalars},
     "headlines": {name: headline key or null},
     "features": {"<index>": {name: {...record fields..., "verdict": ...}}}}

Version 1 (no ``version`` key) had no ``headlines``; a reader resolves them with
:func:`headline_key`, the one headline rule.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar, TypeVar

from sae_lightning.analysis.serial import Record, nested_field, optional_field

CRITERIA_FILE = "criteria.json"
"""The analysis's per-feature results, in ``<report_dir>/report/``."""
FORMAT_VERSION = 2
"""``criteria.json``'s ``version``: 2 added ``version`` and ``headlines``."""

R = TypeVar("R", bound=Record)


class Result(Record):
    """A built-in criterion's per-feature result: its criterion's name and headline key."""

    __slots__ = ()
    criterion: ClassVar[str] = ""
    headline: ClassVar[str | None] = None


@dataclass(slots=True)
class Example(Record):
    """One activating token with its context window (``tokens[highlight]`` is the token)."""

    token_index: int = -1
    """context * n_ctx + position."""
    activation: float = 0.0
    context: int = -1
    position: int = -1
    tokens: list[str] = field(default_factory=list)
    highlight: int = 0
    acts: list[float] | None = optional_field()
    """Every window token's activation (filled for the dashboards after the pass)."""


@dataclass(slots=True)
class QuantileSample(Record):
    """Random examples from one interval ``[lo, hi)`` of the max activation (hi None: open)."""

    interval: list[float | None] = field(default_factory=list)
    examples: list[Example] = nested_field(Example, many=True)


@dataclass(slots=True)
class TopActivationsResult(Result):
    criterion: ClassVar[str] = "top_activations"
    headline: ClassVar[str | None] = "max_activation"

    density: float | None = None
    max_activation: float | None = None
    top_examples: list[Example] = nested_field(Example, many=True)
    quantile_samples: list[QuantileSample] = nested_field(QuantileSample, many=True)
    auto_proxy: list[str] = field(default_factory=list)
    auto_proxy_ids: list[int] = field(default_factory=list)
    verdict: bool | None = None


@dataclass(slots=True)
class SpecificityHistogram(Record):
    """Activation histogram split by the proxy; ``llr`` per bin."""

    edges: list[float] = field(default_factory=list)
    proxy_counts: list[int] = field(default_factory=list)
    other_counts: list[int] = field(default_factory=list)
    llr: list[float] = field(default_factory=list)


@dataclass(slots=True)
class ProxyResult(Result):
    """The proxy a specificity or sensitivity result judged."""

    proxy: str = "none"
    proxy_tokens: list[str] = field(default_factory=list)
    """Up to 32 of its tokens, as strings."""
    proxy_vocab_size: int = 0


@dataclass(slots=True)
class SpecificityResult(ProxyResult):
    criterion: ClassVar[str] = "specificity"
    headline: ClassVar[str | None] = "specificity"

    specificity: float | None = None
    specificity_source: str = "exact"
    specificity_histogram: float | None = None
    threshold_activation: float = 0.0
    n_above_threshold: int = 0
    max_activation: float | None = None
    histogram: SpecificityHistogram | None = nested_field(SpecificityHistogram)
    verdict: bool | None = None


@dataclass(slots=True)
class SensitivityResult(ProxyResult):
    criterion: ClassVar[str] = "sensitivity"
    headline: ClassVar[str | None] = "sensitivity"

    sensitivity: float | None = None
    n_proxy_tokens: int = 0
    n_proxy_fired: int = 0
    verdict: bool | None = None


@dataclass(slots=True)
class LogitHistogram(Record):
    edges: list[float] = field(default_factory=list)
    counts: list[int] = field(default_factory=list)


@dataclass(slots=True)
class Ablation(Record):
    """The feature removed at the hook on its top contexts (prefixes up to ``context_ends``)."""

    contexts: list[int] = field(default_factory=list)
    context_ends: list[int] = field(default_factory=list)
    mean_delta_logprob_where_fired: float | None = None
    mean_delta_logprob: float | None = None
    top_context_tokens: list[str] = field(default_factory=list)
    top_context_delta: list[float] = field(default_factory=list)
    """``[p]``: change in log-prob of token ``p + 1`` of the first context."""
    top_context_acts: list[float] | None = optional_field()
    """The feature's activation on each shown token (filled for the dashboards)."""


@dataclass(slots=True)
class DownstreamResult(Result):
    criterion: ClassVar[str] = "downstream"
    headline: ClassVar[str | None] = "ablation_delta_logprob"

    top_tokens: list[str] = field(default_factory=list)
    top_values: list[float] = field(default_factory=list)
    bottom_tokens: list[str] = field(default_factory=list)
    bottom_values: list[float] = field(default_factory=list)
    histogram: LogitHistogram | None = nested_field(LogitHistogram)
    logit_note: str | None = optional_field()
    """Why there are no logit weights (a hook without a linear path to the residual)."""
    ablation_delta_logprob: float | None = None
    ablation: Ablation | None = nested_field(Ablation)
    verdict: bool | None = None


@dataclass(slots=True)
class NotANeuronResult(Result):
    criterion: ClassVar[str] = "not_a_neuron"
    headline: ClassVar[str | None] = "max_neuron_corr"

    max_neuron_corr: float | None = None
    neuron: int = -1
    decoder_basis_alignment: float | None = None
    verdict: bool | None = None


@dataclass(slots=True)
class UniversalityResult(Result):
    """A best match in the ``compare_with`` SAE; without one, only ``note`` and
    ``neuron_corr`` (and ``verdict`` None) are set and written.

    The ``compare_with`` SAE may read another model that shares the tokenizer (cross-model
    universality; ``metadata.compare_model`` names it): the match is then by activation on
    the same tokens through each model, and the logit weights go through each model's own
    unembedding. The criterion's summary holds the population numbers, medians of the best
    ``|correlation|``: ``median_best_match_corr`` over the live features (``density >=
    min_density``; also ``n_live_features`` and ``min_density``),
    ``median_neuron_baseline_corr`` (their best correlation with a neuron of their own
    model) and, across models, the paper's baseline ``median_neuron_best_match_corr``: each
    MLP neuron of model A against the neurons of model B (``n_neurons`` of them). Files
    written before ``density`` read it as None.
    """

    criterion: ClassVar[str] = "universality"
    headline: ClassVar[str | None] = "activation_corr"

    note: str | None = optional_field()
    best_match: int | None = None
    activation_corr: float | None = None
    logit_weight_corr: float | None = None
    neuron_corr: float | None = None
    density: float | None = optional_field()
    """Fraction of the analysed tokens the feature fired on (its liveness)."""
    verdict: bool | None = None

    def to_dict(self) -> dict[str, Any]:
        if self.note is not None:
            return {"note": self.note, "neuron_corr": self.neuron_corr, "verdict": self.verdict}
        return Record.to_dict(self)


BUILT_IN: dict[str, type[Result]] = {
    kind.criterion: kind
    for kind in (
        TopActivationsResult,
        SpecificityResult,
        SensitivityResult,
        DownstreamResult,
        NotANeuronResult,
        UniversalityResult,
    )
}
"""Criterion name -> its record type."""


def result_of(per_feature: Mapping[str, Any], kind: type[R], nested: bool = True) -> R | None:
    """The ``kind`` result of one feature (``{criterion: result}``, from a report in memory
    or read from ``criteria.json``), or None if that criterion did not run. ``nested=False``
    reads the scalars alone (see :meth:`Record.from_dict`)."""
    value = per_feature.get(kind.criterion)  # type: ignore[attr-defined]
    return None if value is None else kind.from_dict(value, nested)


def items_of(result: Record | Mapping[str, Any]) -> Iterable[tuple[str, Any]]:
    """``(key, value)`` of any criterion's result (a record or a dict), in JSON order."""
    return result.to_dict().items() if isinstance(result, Record) else result.items()


def value_of(result: Record | Mapping[str, Any] | None, key: str) -> Any:
    """One value of any criterion's result (None if absent): the headline, the verdict."""
    if result is None:
        return None
    return getattr(result, key, None) if isinstance(result, Record) else result.get(key)


def is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def headline_key(declared: str | None, results: Iterable[Record | Mapping[str, Any]]) -> str | None:
    """The key of a criterion's headline number: as declared (``Criterion.headline``), else
    its first float key over ``results`` (integers are often counts or indices), else its
    first numeric key; ``verdict`` is never one."""
    if declared:
        return declared
    numeric: list[str] = []
    for result in results:
        for key, value in items_of(result):
            if key != "verdict" and isinstance(value, float):
                return key
            if key != "verdict" and is_number(value):
                numeric.append(key)
    return numeric[0] if numeric else None
