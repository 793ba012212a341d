"""One clear error for anything that needs the Hugging Face hub when it cannot be reached."""

from __future__ import annotations

import os


class HubUnavailableError(RuntimeError):
    """A hub model or dataset that is neither cached locally nor downloadable from here."""


def is_hub_error(err: BaseException) -> bool:
    """True for the errors the hub libraries raise when offline or unreachable."""
    from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError, OfflineModeIsEnabled

    if isinstance(
        err, (LocalEntryNotFoundError, OfflineModeIsEnabled, HfHubHTTPError, ConnectionError)
    ):
        return True
    text = str(err)
    # transformers and datasets wrap a cache miss in OSError/ValueError/FileNotFoundError
    return isinstance(err, (OSError, ValueError)) and (
        "huggingface.co" in text or "offline" in text.lower() or "HF_HUB_OFFLINE" in text
    )


def hub_unavailable(
    kind: str, name: str, err: BaseException, local_option: str, fetch: str | None = None
) -> HubUnavailableError:
    """The error to raise (``from None``) instead of a stack of HTTP errors.

    ``fetch``, when given, is the command that populates the cache (e.g. ``hf download ...``).
    """
    offline = os.environ.get("HF_HUB_OFFLINE", "0").lower() not in ("0", "", "false")
    why = (
        "HF_HUB_OFFLINE is set and it is not cached" if offline else "the hub could not be reached"
    )
    first_line = (str(err).strip().splitlines() or [type(err).__name__])[0][:200]
    return HubUnavailableError(
        f"cannot load {kind} {name!r}: {why} ({type(err).__name__}: {first_line}). Either use "
        f"{local_option} (no network needed), or populate the Hugging Face cache with {name!r} on "
        f"a machine with network access{f' (`{fetch}`)' if fetch else ''} and run with "
        f"HF_HUB_OFFLINE=1."
    )


DATA_SUFFIXES = (".parquet", ".json", ".jsonl")


def cached_dataset_files(repo_id: str, split: str) -> list[str] | None:
    """The data files of dataset repo ``repo_id`` in the local hub cache (no network), those
    of ``split`` when the files are named by split (``data/train-*.parquet``); None when the
    repo is not cached. ``datasets`` offline reads only what it prepared itself, not the hub
    cache that ``hf download`` (or ``huggingface_hub``) fills; this reads that."""
    from pathlib import Path

    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import LocalEntryNotFoundError

    try:
        folder = Path(snapshot_download(repo_id, repo_type="dataset", local_files_only=True))
    except LocalEntryNotFoundError:
        return None
    files = sorted(str(f) for f in folder.rglob("*") if f.suffix in DATA_SUFFIXES)
    mine = [f for f in files if Path(f).name.startswith(f"{split}-") or f"/{split}/" in f]
    return mine or files or None
