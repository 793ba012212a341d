"""Local dataset files and the ``datasets`` builder that reads them.

``path`` (of ``data=hf``) names local data when it is a ``save_to_disk`` folder, a
``.json`` / ``.jsonl`` / ``.parquet`` file, a glob of them or a folder holding them; anything
else is taken for a hub name.
"""

from __future__ import annotations

import glob
from pathlib import Path
from typing import Any

from sae_lightning.data.corpus import CorpusError

FILE_BUILDERS = {".json": "json", ".jsonl": "json", ".parquet": "parquet"}


def local_data(path: str) -> tuple[str, Any] | None:
    """``("disk", folder)``, ``("json" | "parquet", [files])``, or None for a hub name."""
    where = Path(path).expanduser()
    if any(c in path for c in "*?["):
        files = sorted(glob.glob(str(where), recursive=True))
        if not files:
            raise CorpusError(f"no files match {path!r}")
        return dataset_builder(files, path)
    if where.is_dir():
        if (where / "dataset_dict.json").is_file() or (where / "state.json").is_file():
            return "disk", where
        files = sorted(str(f) for f in where.rglob("*") if f.suffix in FILE_BUILDERS)
        if not files:
            raise CorpusError(
                f"folder {path!r} is neither a datasets save_to_disk folder (no dataset_dict.json "
                f"or state.json) nor holds {'/'.join(FILE_BUILDERS)} files"
            )
        return dataset_builder(files, path)
    if where.is_file():
        return dataset_builder([str(where)], path)
    if where.suffix in FILE_BUILDERS or path.startswith(("/", ".", "~")):
        raise CorpusError(f"dataset file {path!r} does not exist")
    return None


def dataset_builder(files: list[str], path: str) -> tuple[str, list[str]]:
    kinds = {FILE_BUILDERS.get(Path(f).suffix) for f in files}
    if None in kinds:
        odd = next(f for f in files if Path(f).suffix not in FILE_BUILDERS)
        raise CorpusError(
            f"{odd!r} (from {path!r}) is not a dataset file: use {', '.join(FILE_BUILDERS)} files "
            "or a datasets save_to_disk folder"
        )
    if len(kinds) > 1:
        raise CorpusError(f"{path!r} mixes json and parquet files: use one kind")
    if all(Path(f).stat().st_size == 0 for f in files):
        raise CorpusError(f"dataset {path!r} is empty: {files[:3]} hold no rows")
    return kinds.pop(), files
