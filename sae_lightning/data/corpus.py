"""Text corpora as ordered lists of documents, with a stable document-level split.

The default corpus is the running Python's own standard library (every ``.py`` file outside
``site-packages`` and test code) plus the English documentation in ``pydoc_data.topics``:
English prose and Python code, like ``gelu-1l``'s web text plus code, and present on every
Python installation. The same functions read a user folder or a ``.jsonl`` file.
"""

from __future__ import annotations

import hashlib
import json
import sysconfig
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

FOLDER_SUFFIXES = (".py", ".txt", ".md")
Split = Literal["train", "val", "all"]


class CorpusError(ValueError):
    """A corpus that cannot be read: missing path, no documents, or a malformed record."""


@dataclass(frozen=True)
class Document:
    """One document: a stable name (used for the split) and its text."""

    name: str
    text: str


def _is_test_path(rel: Path) -> bool:
    folders = rel.parts[:-1]
    if any(part in ("test", "tests", "idle_test") or part.startswith("test") for part in folders):
        return True
    return rel.name.startswith("test_")


def stdlib_documents(stdlib_dir: str | Path | None = None) -> list[Document]:
    """The standard library's modules (no tests, no site-packages) and the pydoc topics."""
    root = Path(stdlib_dir or sysconfig.get_paths()["stdlib"])
    docs = []
    for path in sorted(root.rglob("*.py")):
        rel = path.relative_to(root)
        if "site-packages" in rel.parts or _is_test_path(rel):
            continue
        text = path.read_text(encoding="utf-8", errors="replace")
        if text.strip():
            docs.append(Document(f"stdlib/{rel.as_posix()}", text))
    from pydoc_data.topics import topics

    docs.extend(Document(f"pydoc/{key}", topics[key]) for key in sorted(topics))
    return docs


def folder_documents(
    folder: str | Path, suffixes: Sequence[str] = FOLDER_SUFFIXES
) -> list[Document]:
    """Every file under ``folder`` whose suffix is in ``suffixes``, in sorted path order."""
    root = Path(folder)
    if not root.is_dir():
        raise CorpusError(f"corpus folder {str(root)!r} does not exist or is not a directory")
    docs = []
    for path in sorted(p for p in root.rglob("*") if p.is_file() and p.suffix in suffixes):
        text = path.read_text(encoding="utf-8", errors="replace")
        if text.strip():
            docs.append(Document(path.relative_to(root).as_posix(), text))
    if not docs:
        raise CorpusError(
            f"corpus folder {str(root)!r} has no non-empty documents; expected files ending in "
            f"{', '.join(suffixes)}"
        )
    return docs


def jsonl_documents(path: str | Path, text_field: str = "text") -> list[Document]:
    """One document per line of a ``.jsonl`` file, read from ``text_field``."""
    path = Path(path)
    if not path.is_file():
        raise CorpusError(f"corpus file {str(path)!r} does not exist")
    docs = []
    with path.open(encoding="utf-8") as handle:
        for lineno, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as err:
                raise CorpusError(f"{str(path)!r} line {lineno} is not valid JSON: {err}") from err
            if not isinstance(record, dict) or not isinstance(record.get(text_field), str):
                keys = sorted(record) if isinstance(record, dict) else type(record).__name__
                raise CorpusError(
                    f"{str(path)!r} line {lineno} has no string field {text_field!r}; it has {keys}"
                )
            if record[text_field].strip():
                docs.append(Document(f"{path.name}:{lineno}", record[text_field]))
    if not docs:
        raise CorpusError(f"corpus file {str(path)!r} has no non-empty {text_field!r} records")
    return docs


def load_documents(source: str | Path = "stdlib", text_field: str = "text") -> list[Document]:
    """``"stdlib"`` (the default corpus), a folder, or a ``.jsonl`` file."""
    if str(source) == "stdlib":
        return stdlib_documents()
    path = Path(source)
    if path.suffix == ".jsonl":
        return jsonl_documents(path, text_field)
    return folder_documents(path)


def is_validation(name: str, val_fraction: float = 0.05) -> bool:
    """Stable split: a document is held out iff the hash of its name falls below the fraction."""
    digest = hashlib.sha256(name.encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "big") / 2**64 < val_fraction


def split_documents(
    docs: Iterable[Document], split: Split, val_fraction: float = 0.05
) -> list[Document]:
    """The ``train`` or ``val`` part of ``docs`` (or ``all``), order preserved."""
    if split not in ("train", "val", "all"):
        raise CorpusError(f"split must be 'train', 'val' or 'all', got {split!r}")
    if not 0.0 <= val_fraction < 1.0:
        raise CorpusError(f"val_fraction must be in [0, 1), got {val_fraction!r}")
    if split == "all":
        return list(docs)
    want_val = split == "val"
    return [d for d in docs if is_validation(d.name, val_fraction) == want_val]
