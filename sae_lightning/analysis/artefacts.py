"""What criteria hand each other: named, typed artefacts in one store per analysis.

A criterion declares the artefacts it ``provides`` (it puts them into ``ctx.artefacts`` in
``results``), ``needs`` (it reads them in ``results``: a provider must be selected) and
``uses`` (it reads them if a provider ran). The runner finishes the criteria in an order
where every provider comes before its readers (:func:`sae_lightning.analysis.ordering.
order_criteria`). The built-in artefacts are defined here, once; a criterion of your own
may define more (``Artefact("my_thing", dict)``) next to its class.

Rows and keys are analysed feature indices of the dictionary.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Generic, TypeVar

if TYPE_CHECKING:
    from torch import Tensor

T = TypeVar("T")


@dataclass(frozen=True)
class Artefact(Generic[T]):
    """A named value one criterion provides and others read.

    Args:
        name: Unique among the artefacts of an analysis.
        kind: The runtime type of the value (checked when it is put).
        provider: Which criterion provides it, for error messages (e.g. ``top_activations``).
    """

    name: str
    kind: type
    provider: str = ""


@dataclass
class TokenMass:
    """Per feature and vocabulary token, over the whole pass (rows in ``features`` order)."""

    features: list[int]
    mass: Tensor
    """``[F, vocab]`` float64: activation mass."""
    fires: Tensor
    """``[F, vocab]`` int64: firings."""
    token_counts: Tensor
    """``[vocab]`` int64: occurrences of each token."""


TOP_EXAMPLES: Artefact[dict[int, list[tuple[int, float]]]] = Artefact(
    "top_examples", dict, "top_activations"
)
"""``{feature: [(token_index, activation), ...]}``: its top activations (``> 0``), descending;
``token_index = context * n_ctx + position``."""
AUTO_PROXY: Artefact[dict[int, list[int]]] = Artefact("auto_proxy", dict, "top_activations")
"""``{feature: [token_id, ...]}``: the automatic proxy of the whole pass, heaviest first."""
TOKEN_MASS: Artefact[TokenMass] = Artefact("token_mass", TokenMass, "top_activations")
MAX_ACTIVATION: Artefact[dict[int, float]] = Artefact("max_activation", dict, "top_activations")
DENSITY: Artefact[dict[int, float]] = Artefact("density", dict, "top_activations")
NEURON_MAX_CORR: Artefact[dict[int, float]] = Artefact("neuron_max_corr", dict, "not_a_neuron")
"""``{feature: |Pearson correlation| with its best MLP neuron}``."""


class Artefacts:
    """The store of one analysis (``AnalysisContext.artefacts``).

    Example:
        >>> store = Artefacts()
        >>> store.put(DENSITY, {3: 0.5})
        >>> store.get(DENSITY)[3]
        0.5
    """

    def __init__(self) -> None:
        self._values: dict[str, Any] = {}

    def put(self, artefact: Artefact[T], value: T) -> None:
        """Store ``value`` as ``artefact`` (replacing an earlier one)."""
        if not isinstance(value, artefact.kind):
            raise TypeError(
                f"artefact {artefact.name!r} must be a {artefact.kind.__name__}, "
                f"got {type(value).__name__}"
            )
        self._values[artefact.name] = value

    def get(self, artefact: Artefact[T]) -> T:
        """The value of ``artefact``.

        Raises:
            KeyError: If it was not put, naming its provider and what the store holds.
        """
        if artefact.name not in self._values:
            by = f" (provided by {artefact.provider})" if artefact.provider else ""
            raise KeyError(
                f"artefact {artefact.name!r}{by} is not available; available: "
                f"{sorted(self._values)}. A criterion that reads it declares it in `needs`"
            )
        return self._values[artefact.name]

    def find(self, artefact: Artefact[T]) -> T | None:
        """The value of ``artefact``, or None if no criterion provided it."""
        return self._values.get(artefact.name)

    def __contains__(self, artefact: Artefact[Any]) -> bool:
        return artefact.name in self._values

    def cached(self, artefact: Artefact[T], compute: Callable[[], T]) -> T:
        """The value of ``artefact``, computed by ``compute`` on first use: for values any
        criterion may need first (a shared first pass), which no criterion provides."""
        if artefact.name not in self._values:
            self.put(artefact, compute())
        return self._values[artefact.name]

    def clear(self) -> None:
        self._values.clear()
