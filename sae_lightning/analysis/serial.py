"""Records: dataclasses written to and read from JSON by field name, in field order.

:class:`Record` is the base of the typed per-feature results in
:mod:`sae_lightning.analysis.records`. A field holding another record is declared with
:func:`nested_field` (it is expanded on write and rebuilt on read); a field filled only in
some cases with :func:`optional_field` (left out of the JSON when it is None).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, field
from functools import cache
from typing import Any, TypeVar

R = TypeVar("R", bound="Record")


def nested_field(kind: type[Record], many: bool = False, omit_none: bool = False) -> Any:
    """A field holding a record (or a list of them, ``many``) of ``kind``."""
    meta = {"record": kind, "many": many, "omit_none": omit_none}
    return (
        field(default_factory=list, metadata=meta) if many else field(default=None, metadata=meta)
    )


def optional_field() -> Any:
    """A field left out of the JSON when it is None (it is filled only in some cases)."""
    return field(default=None, metadata={"omit_none": True})


@cache
def _fields(kind: type) -> tuple[dataclasses.Field, ...]:
    return dataclasses.fields(kind)


@dataclass(slots=True)
class Record:
    """Base of the typed records: JSON (de)serialisation by field name, in field order."""

    def to_dict(self) -> dict[str, Any]:
        """The fields as a dict (nested records stay records; the JSON writer expands them)."""
        out: dict[str, Any] = {}
        for f in _fields(type(self)):
            value = getattr(self, f.name)
            if value is None and f.metadata.get("omit_none"):
                continue
            out[f.name] = value
        return out

    @classmethod
    def from_dict(cls: type[R], data: Mapping[str, Any] | R, nested: bool = True) -> R:
        """The record of a JSON dict (unknown keys ignored, missing ones left at defaults).

        Args:
            nested: False leaves nested records (examples, histograms, ablations) at their
                defaults: a fast read of the scalars alone, for every feature of a report.
        """
        if isinstance(data, cls):
            return data
        names, inner = _plan(cls)
        kwargs = {k: v for k, v in data.items() if k in names}
        for name, kind, many in inner:
            value = kwargs.pop(name, None)
            if value is not None and nested:
                kwargs[name] = [kind.from_dict(v) for v in value] if many else kind.from_dict(value)
        return cls(**kwargs)


@cache
def _plan(kind: type) -> tuple[frozenset[str], tuple[tuple[str, type[Record], bool], ...]]:
    """A record type's field names, and its nested fields: (name, record type, many)."""
    fields = _fields(kind)
    nested = tuple(
        (f.name, f.metadata["record"], f.metadata["many"]) for f in fields if "record" in f.metadata
    )
    return frozenset(f.name for f in fields), nested
