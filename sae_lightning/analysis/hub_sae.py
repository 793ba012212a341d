"""Published SAEs by name: ``hf://<owner>/<repo>[@<revision>]/<path-in-repo>``.

The files are fetched with ``huggingface_hub.hf_hub_download`` into the normal hub cache, so
a populated cache works with ``HF_HUB_OFFLINE=1``. ``<path-in-repo>`` names

- a ``.pt`` state dict of Neel Nanda's 1L-Sparse-Autoencoder: it and its ``<stem>_cfg.json``
  beside it are fetched. ``hf://NeelNanda/sparse_autoencoder/25.pt`` is the final checkpoint
  of his first gelu-1l run (``47.pt`` of the second);
- a folder holding a SAELens SAE (``cfg.json`` + ``sae_weights.safetensors``), or nothing
  for one at the repo root.

``<revision>`` is a branch, tag or commit without ``/`` (default: ``main``). This module only
resolves and fetches; :func:`sae_lightning.analysis.loading.load_sae` reads the files with
its loaders, which never unpickle.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from sae_lightning.formats import CFG_FILE, WEIGHTS_FILE
from sae_lightning.hub import hub_unavailable, is_hub_error

HF_SCHEME = "hf://"
EXAMPLE = "hf://NeelNanda/sparse_autoencoder/25.pt"
FORM = (
    "hf://<owner>/<repo>[@<revision>]/<path-in-repo>, where the path names a .pt with its "
    f"<stem>_cfg.json beside it, or a folder holding {CFG_FILE} + {WEIGHTS_FILE} (nothing: "
    f"the repo root), e.g. {EXAMPLE}"
)
LOCAL_OPTION = "sae_path=PATH or compare_with=PATH on a local copy of its files"
# suffixes of one file of an SAE, which the URI must not name on its own
PART_SUFFIXES = (".json", ".safetensors", ".ckpt", ".pth", ".bin")


@dataclass(frozen=True)
class HubSAE:
    """An ``hf://`` URI split into its parts."""

    repo_id: str
    """``owner/name`` of the model repo."""
    revision: str | None
    """A branch, tag or commit; None: ``main``."""
    path: str
    """The path inside the repo without leading or trailing ``/`` ('' for the root)."""

    @property
    def is_neel(self) -> bool:
        """Whether the path names a Neel-format ``.pt`` (else a SAELens folder)."""
        return self.path.endswith(".pt")

    @property
    def files(self) -> tuple[str, str]:
        """The two repo files the SAE needs; load_sae reads the first (or its folder)."""
        if self.is_neel:
            pt = PurePosixPath(self.path)
            return self.path, str(pt.with_name(f"{pt.stem}_cfg.json"))
        folder = f"{self.path}/" if self.path else ""
        return f"{folder}{CFG_FILE}", f"{folder}{WEIGHTS_FILE}"

    def where(self) -> str:
        """``repo 'owner/name'`` plus the revision when one was asked for."""
        at = f" at revision {self.revision!r}" if self.revision else ""
        return f"repo {self.repo_id!r}{at}"

    def fetch_command(self) -> str:
        """The command that puts this SAE's files in the hub cache."""
        rev = f" --revision {self.revision}" if self.revision else ""
        return f"hf download {self.repo_id} {' '.join(self.files)}{rev}"


def is_hf_uri(path: object) -> bool:
    """Whether ``path`` is meant as an ``hf://`` URI (``hf:`` and anything after it)."""
    return isinstance(path, str) and path.startswith("hf:")


def parse_hf_uri(uri: str) -> HubSAE:
    """The parts of ``uri``.

    Raises:
        ValueError: If ``uri`` is not of the form :data:`FORM` (the message shows it).
    """
    from huggingface_hub.utils import HFValidationError, validate_repo_id

    malformed = ValueError(f"malformed SAE URI {uri!r}: expected {FORM}")
    if not uri.startswith(HF_SCHEME):
        raise malformed
    parts = uri[len(HF_SCHEME) :].strip("/").split("/")
    if len(parts) < 2 or not all(parts) or {".", ".."} & set(parts):
        raise malformed
    name, at, revision = parts[1].partition("@")
    if at and (not revision or "@" in revision):
        raise malformed
    repo_id, path = f"{parts[0]}/{name}", "/".join(parts[2:])
    try:
        validate_repo_id(repo_id)
    except HFValidationError:
        raise malformed from None
    if PurePosixPath(path).suffix in PART_SUFFIXES:
        raise ValueError(f"SAE URI {uri!r} names one file of an SAE, not a .pt or folder: {FORM}")
    return HubSAE(repo_id, revision or None, path)


def fetch_hub_sae(uri: str) -> tuple[Path, str]:
    """The local path load_sae reads (the ``.pt`` or the SAELens folder) and its commit.

    Raises:
        ValueError: If ``uri`` is malformed, or names a revision the repo lacks.
        FileNotFoundError: If the repo, or a file the SAE needs, is not on the hub (online), or
            the cached snapshot of the repo lacks that file (offline).
        HubUnavailableError: If the repo is not cached and the hub cannot be reached (or
            ``HF_HUB_OFFLINE`` is set); the message names both ways out.
    """
    from huggingface_hub import hf_hub_download

    ref = parse_hf_uri(uri)
    local: list[Path] = []
    for filename in ref.files:
        try:
            local.append(Path(hf_hub_download(ref.repo_id, filename, revision=ref.revision)))
        except Exception as err:  # noqa: BLE001  (hub failures become one clear message)
            clear = _clear_error(ref, uri, filename, err)
            if clear is None:
                raise
            raise clear from None
    first = local[0]  # <cache>/snapshots/<commit>/<files[0]>
    commit = first.parents[len(PurePosixPath(ref.files[0]).parts) - 1].name
    return (first if ref.is_neel else first.parent), commit


def _clear_error(ref: HubSAE, uri: str, filename: str, err: Exception) -> Exception | None:
    """One clear error for a failed download of ``filename``; None: not a hub failure."""
    from huggingface_hub.errors import (
        EntryNotFoundError,
        LocalEntryNotFoundError,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    if isinstance(err, LocalEntryNotFoundError):
        cached = _cached_snapshot(ref)
        if cached is not None:  # the repo is cached, without this file
            held = sorted(
                p.relative_to(cached).as_posix() for p in cached.rglob("*") if p.is_file()
            )
            return FileNotFoundError(
                f"{uri}: file {filename!r} is not in the cached snapshot of {ref.where()} (it "
                f"holds {held[:10]}{' ...' if len(held) > 10 else ''}); check the path, or "
                f"fetch it on a machine with network access (`{ref.fetch_command()}`) and run "
                f"with HF_HUB_OFFLINE=1"
            )
    elif isinstance(err, EntryNotFoundError):
        return FileNotFoundError(f"{uri}: {ref.where()} has no file {filename!r}; expected {FORM}")
    elif isinstance(err, RevisionNotFoundError):
        return ValueError(f"{uri}: repo {ref.repo_id!r} has no revision {ref.revision!r}")
    elif isinstance(err, RepositoryNotFoundError):
        return FileNotFoundError(
            f"{uri}: no model repo {ref.repo_id!r} on the hub, or it is private or gated "
            f"(log in with `hf auth login`)"
        )
    if is_hub_error(err):
        at = f" (revision {ref.revision!r})" if ref.revision else ""
        kind = f"SAE file {filename!r}{at} of repo"
        return hub_unavailable(kind, ref.repo_id, err, LOCAL_OPTION, ref.fetch_command())
    return None


def _cached_snapshot(ref: HubSAE) -> Path | None:
    """The cached snapshot folder of ``ref``'s repo at its revision, if the cache has one."""
    from huggingface_hub import constants

    storage = Path(constants.HF_HUB_CACHE) / f"models--{ref.repo_id.replace('/', '--')}"
    revision = ref.revision or "main"
    ref_file = storage / "refs" / revision
    commit = ref_file.read_text().strip() if ref_file.is_file() else revision
    snapshot = storage / "snapshots" / commit
    return snapshot if snapshot.is_dir() else None
