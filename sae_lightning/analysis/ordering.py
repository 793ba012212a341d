"""The order in which the selected criteria finish: every provider of an artefact before
the criteria that need or use it (:mod:`sae_lightning.analysis.artefacts`), otherwise the
order selected; and the checks that the selection is a list of distinctly named criteria."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from sae_lightning.analysis.criterion import Criterion


def checked_criteria(criteria: Sequence[Any]) -> list[Criterion]:
    """``criteria`` in the order they finish (:func:`order_criteria`), after checking that
    each is a :class:`Criterion` and that their names are distinct and non-empty.

    Raises:
        ValueError: Naming the objects that are not criteria, or the repeated/empty names.
    """
    wrong = [type(c).__qualname__ for c in criteria if not isinstance(c, Criterion)]
    if wrong:
        raise ValueError(f"criteria must subclass sae_lightning.analysis.Criterion; got {wrong}")
    names = [c.name for c in criteria]
    repeated = sorted({n for n in names if names.count(n) > 1 or not n})
    if repeated:
        raise ValueError(f"criteria need distinct non-empty names; repeated or empty: {repeated}")
    return order_criteria(criteria)


def order_criteria(criteria: Sequence[Criterion]) -> list[Criterion]:
    """The criteria in the order they finish: each provider before the criteria that need or
    use its artefacts, otherwise as given (the order selected).

    Raises:
        ValueError: If a needed artefact has no provider among ``criteria``, if two criteria
            provide one artefact, or if criteria wait on each other (a cycle); the message
            names the criteria and artefacts.
    """
    providers: dict[str, Criterion] = {}
    for c in criteria:
        for a in c.provides:
            if a.name in providers:
                raise ValueError(
                    f"artefact {a.name!r} is provided by both {providers[a.name].name!r} and "
                    f"{c.name!r}: select one of them"
                )
            providers[a.name] = c
    selected = [c.name for c in criteria]
    for c in criteria:
        for a in c.needs:
            if a.name not in providers:
                hint = (
                    f" (select {a.provider!r}: criteria=[{a.provider},...])" if a.provider else ""
                )
                raise ValueError(
                    f"criterion {c.name!r} needs artefact {a.name!r}, which none of the "
                    f"selected criteria {selected} provides{hint}"
                )
    waits = {  # criterion -> the providers it waits for, with the artefact
        id(c): [(providers[a.name], a.name) for a in (*c.needs, *c.uses)
                if a.name in providers and providers[a.name] is not c]
        for c in criteria
    }  # fmt: skip
    done: list[Criterion] = []
    left = list(criteria)
    while left:
        ready = next(
            (c for c in left if all(any(p is d for d in done) for p, _ in waits[id(c)])), None
        )
        if ready is None:
            cycle = "; ".join(
                f"{c.name!r} waits for {a!r} from {p.name!r}"
                for c in left for p, a in waits[id(c)] if any(p is x for x in left)
            )  # fmt: skip
            raise ValueError(f"criteria wait on each other, so none can finish first: {cycle}")
        done.append(ready)
        left.remove(ready)
    return done
