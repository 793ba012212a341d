"""Export an analysis report to Neuronpedia's bulk-import layout.

``python -m sae_lightning.report.neuronpedia REPORT_DIR OUT`` reads ``REPORT_DIR/criteria.json``
(or a ``criteria.json`` path) and writes ``OUT/<modelId>/<sourceId>/``: ``release.jsonl``,
``model.jsonl``, ``sourceset.jsonl``, ``source.jsonl``, ``features/batch-<n>.jsonl.gz`` (one
row per feature) and ``activations/batch-<n>.jsonl.gz`` (one row per example context: the
top examples, then the activation-quantile samples). ``sourceId`` is
``<layer>-<source set>``, the layer read from the hook name (``blocks.<layer>.``).

The fields and where each comes from: :mod:`sae_lightning.report.neuronpedia_rows`; their
types: :mod:`sae_lightning.report.neuronpedia_schema` (every row is validated before
anything is written).
"""

from __future__ import annotations

import argparse
import gzip
import json
import logging
import re
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from sae_lightning.report.data import load_report
from sae_lightning.report.neuronpedia_rows import (
    Source,
    activation_rows,
    feature_row,
    metadata_rows,
)
from sae_lightning.report.neuronpedia_schema import validate_row

log = logging.getLogger(__name__)
PROG = "python -m sae_lightning.report.neuronpedia"


def layer_of(hook_name: str | None) -> int:
    """The layer of a TransformerLens hook name (``blocks.3.mlp.hook_post`` -> 3)."""
    match = re.match(r"blocks\.(\d+)\.", hook_name or "")
    if match is None:
        raise ValueError(
            f"the report's hook_name {hook_name!r} names no layer (blocks.<layer>.<hook>), "
            "from which the Neuronpedia source id '<layer>-<set>' is derived; pass --layer N"
        )
    return int(match.group(1))


def default_set_name(hook_name: str) -> str:
    """``sl-`` and the hook point in Neuronpedia's style (``blocks.0.mlp.hook_post`` ->
    ``sl-mlp-hook-post``)."""
    point = re.sub(r"^blocks\.\d+\.", "", hook_name)
    return "sl-" + re.sub(r"[^a-z0-9]+", "-", point.lower()).strip("-")


def _jsonl(rows: list[dict[str, Any]]) -> bytes:
    # strict JSON (a NaN would already have failed validation)
    lines = (json.dumps(r, ensure_ascii=False, allow_nan=False) for r in rows)
    return "".join(line + "\n" for line in lines).encode()


def export_neuronpedia(
    report_path: str | Path,
    out: str | Path,
    model_id: str | None = None,
    set_name: str | None = None,
    creator_id: str = "sae-lightning",
    creator_name: str = "sae-lightning",
    layer: int | None = None,
    features_per_file: int = 128,
) -> Path:
    """Write the Neuronpedia import folder of a report; returns ``OUT/<modelId>/<sourceId>``.

    Raises:
        ValueError: If the report lacks what a required field is derived from (the message
            names the field), a row breaks the schema, or ``features_per_file < 1``.
    """
    if features_per_file < 1:
        raise ValueError(f"features_per_file must be >= 1, got {features_per_file!r}")
    report = load_report(report_path)
    metadata = report["metadata"]
    model_id = model_id or metadata.get("model_name")
    if not model_id:
        raise ValueError(
            "criteria.json's metadata has no model_name for 'modelId': pass --model-id"
        )
    model_id = _check_name(model_id, "the model id")
    hook = metadata.get("hook_name") or ""
    layer = layer_of(hook) if layer is None else layer
    set_name = _check_name(set_name or default_set_name(hook), "the source set name")
    created = datetime.now(timezone.utc).isoformat()
    src = Source(model_id, f"{layer}-{set_name}", set_name, creator_id, creator_name, created)
    singles = metadata_rows(src, metadata)
    for kind, row in singles.items():
        validate_row(kind, row)
    names = list(report["features"])
    batches = [  # built, validated and compressed one file at a time: memory stays bounded
        _batch(src, report["features"], names[start : start + features_per_file], hook)
        for start in range(0, len(names), features_per_file)
    ]
    return _write(Path(out) / model_id / src.layer, singles, batches)


def _batch(src: Source, results: dict[str, Any], names: list[str], hook: str) -> tuple:
    """(features .jsonl.gz bytes, activations .jsonl.gz bytes, activation rows) of
    ``names``, every row validated."""
    features, activations = [], []
    for name in names:
        features.append(feature_row(src, name, results[name], hook))
        validate_row("feature", features[-1], f"feature {name}")
        for k, row in enumerate(activation_rows(src, name, results[name])):
            validate_row("activation", row, f"feature {name}, example {k}")
            activations.append(row)
    pack = [
        gzip.compress(_jsonl(rows), compresslevel=5, mtime=0) for rows in (features, activations)
    ]
    return pack[0], pack[1], len(activations)


def _check_name(value: str, what: str) -> str:
    """``value`` as a folder name of the export (Neuronpedia ids: letters, digits, ``.-_``)."""
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]*", value or ""):
        raise ValueError(
            f"{what} {value!r} is not a Neuronpedia id: use letters, digits, '.', '-' and '_' "
            "(e.g. gpt2-small, res-jb)"
        )
    return value


def _write(folder: Path, singles: dict, batches: list[tuple[bytes, bytes, int]]) -> Path:
    """The validated rows to disk; stale ``batch-*.jsonl.gz`` of an earlier export go."""
    for sub in ("features", "activations"):
        (folder / sub).mkdir(parents=True, exist_ok=True)
        for old in (folder / sub).glob("batch-*.jsonl.gz"):
            old.unlink()
    for kind, row in singles.items():
        (folder / f"{kind}.jsonl").write_bytes(_jsonl([row]))
    for n, (features, activations, _) in enumerate(batches):
        (folder / "features" / f"batch-{n}.jsonl.gz").write_bytes(features)
        (folder / "activations" / f"batch-{n}.jsonl.gz").write_bytes(activations)
    n_rows = sum(b[2] for b in batches)
    log.info("wrote %d batches, %d activation rows, to %s", len(batches), n_rows, folder)
    return folder


def main(argv: list[str] | None = None) -> None:
    doc = (__doc__ or "").split("\n\n")[0]
    parser = argparse.ArgumentParser(prog=PROG, description=doc)
    parser.add_argument("report", help="a report/ folder or its criteria.json")
    parser.add_argument("out", help="folder to write <modelId>/<sourceId>/ into")
    parser.add_argument("--model-id", help="Neuronpedia model id (default: metadata.model_name)")
    parser.add_argument("--set-name", help="source set name (default: sl-<hook point>)")
    parser.add_argument("--layer", type=int, help="layer of the source id (default: from the hook)")
    parser.add_argument("--creator-id", default="sae-lightning", help="a Neuronpedia user id")
    parser.add_argument("--creator-name", default="sae-lightning")
    parser.add_argument("--features-per-file", type=int, default=128)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:  # a user error ends with one line (as sae_lightning.cli does; without its torch import)
        export_neuronpedia(
            args.report,
            args.out,
            model_id=args.model_id,
            set_name=args.set_name,
            creator_id=args.creator_id,
            creator_name=args.creator_name,
            layer=args.layer,
            features_per_file=args.features_per_file,
        )
    except (FileNotFoundError, ValueError) as err:
        raise SystemExit(f"{PROG}: {type(err).__name__}: {err}") from None


if __name__ == "__main__":
    main()
