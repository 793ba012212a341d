"""Find a named concept's feature (full stop, ``import``, ...) in an analysed SAE.

Feature indices differ between training runs, so the replication names its features by
concept: a set of token strings. A feature is a candidate for a concept when its automatic
proxy (``specificity.proxy_tokens`` in ``criteria.json``) contains one of the concept's
tokens; the chosen one has the largest ``specificity * sensitivity`` of that proxy (ties: more
proxy tokens fired, then the smaller index). Both factors lie in [0, 1], so a broad feature
with a vague proxy loses to a clean one, and a feature that fires on a handful of the
concept's tokens loses on sensitivity.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from sae_lightning.analysis.records import SensitivityResult, SpecificityResult, result_of


@dataclass(frozen=True)
class Pick:
    """The feature chosen for a concept, with the score that chose it."""

    feature: int
    score: float
    n_candidates: int
    runner_up: int | None
    runner_up_score: float | None


def concept_tokens(spec: Any) -> list[str]:
    """The token strings of a concept entry (``{tokens: [...]}``), checked."""
    tokens = spec.get("tokens") if hasattr(spec, "get") else None
    if not tokens or isinstance(tokens, str) or not all(isinstance(t, str) for t in tokens):
        raise ValueError(
            f"a replication concept needs tokens: a non-empty list of token strings, "
            f"e.g. {{tokens: [' for']}}; got {spec!r}"
        )
    return list(tokens)


def _score(
    spec: SpecificityResult | None, sens: SensitivityResult | None
) -> tuple[float, int] | None:
    if spec is None or sens is None or spec.specificity is None or sens.sensitivity is None:
        return None
    return float(spec.specificity) * float(sens.sensitivity), int(sens.n_proxy_fired or 0)


def select_concept(features: dict[str, dict[str, Any]], tokens: list[str]) -> Pick | None:
    """The best feature for ``tokens`` among a report's ``features`` (None: no candidate).

    Args:
        features: ``criteria.json["features"]``: index (a string) -> per-criterion results;
            the specificity and sensitivity criteria must have run.
        tokens: The concept's token strings, exactly as the tokenizer decodes them.
    """
    wanted = set(tokens)
    ranked = []
    for key, entry in features.items():
        spec = result_of(entry, SpecificityResult, nested=False)
        score = _score(spec, result_of(entry, SensitivityResult, nested=False))
        if score is not None and spec is not None and wanted.intersection(spec.proxy_tokens):
            ranked.append((-score[0], -score[1], int(key)))
    if not ranked:
        return None
    ranked.sort()
    best, second = ranked[0], ranked[1] if len(ranked) > 1 else None
    return Pick(
        feature=best[2],
        score=-best[0],
        n_candidates=len(ranked),
        runner_up=None if second is None else second[2],
        runner_up_score=None if second is None else -second[0],
    )
