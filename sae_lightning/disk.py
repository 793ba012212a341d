"""A full disk, said plainly: which file could not be written and how many bytes it needed.

Without this a full disk surfaces as whatever the writer raised last (TensorBoard's
"you tried to log 243.88 which is currently not supported", a bare ``OSError``).
"""

from __future__ import annotations

import errno
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
from lightning.fabric.plugins import CheckpointIO
from typing_extensions import override


class DiskFullError(Exception):
    """A write failed for lack of space (a user error: free space or write elsewhere)."""


def _no_space(err: BaseException) -> bool:
    """Whether ``err`` or an exception it was raised from is ENOSPC."""
    seen: set[int] = set()
    cause: BaseException | None = err
    while cause is not None and id(cause) not in seen:
        if isinstance(cause, OSError) and cause.errno == errno.ENOSPC:
            return True
        seen.add(id(cause))
        cause = cause.__cause__ or cause.__context__
    return False


def _size(n: int) -> str:
    for unit in ("bytes", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n} {unit}" if unit == "bytes" else f"{n:.1f} {unit}"
        n /= 1024
    raise AssertionError("unreachable")


def _free_bytes(path: Path) -> int | None:
    for folder in (path, *path.parents):
        if folder.exists():
            return shutil.disk_usage(folder).free
    return None


def disk_full_message(path: Path, needed: int | None = None) -> str:
    """``no space left on the device writing <path> (about N needed, M free there); ...``."""
    free = _free_bytes(Path(path))
    sizes = [f"about {_size(needed)} needed"] if needed else []
    sizes += [f"{_size(free)} free there"] if free is not None else []
    detail = f" ({', '.join(sizes)})" if sizes else ""
    return (
        f"no space left on the device writing {path}{detail}; free some space or write the "
        f"run to another disk (paths.output_dir=... or hydra.run.dir=...)"
    )


@contextmanager
def writing(path: Path, needed: int | None = None) -> Iterator[None]:
    """Turn an ENOSPC raised inside (or behind another error) into :class:`DiskFullError`."""
    try:
        yield
    except DiskFullError:
        raise
    except Exception as err:
        if not _no_space(err):
            raise
        raise DiskFullError(disk_full_message(path, needed)) from err


def tensor_bytes(tree: Any) -> int:
    """Bytes of the tensors in a nested dict / list (what a checkpoint mostly weighs)."""
    if isinstance(tree, torch.Tensor):
        return tree.nelement() * tree.element_size()
    if isinstance(tree, dict):
        return sum(tensor_bytes(v) for v in tree.values())
    if isinstance(tree, (list, tuple)):
        return sum(tensor_bytes(v) for v in tree)
    return 0


class DiskCheckedIO(CheckpointIO):
    """Wraps a strategy's checkpoint IO: a full disk names the checkpoint and its size.

    ``train`` installs it: ``trainer.strategy.checkpoint_io = DiskCheckedIO(...)``.
    """

    def __init__(self, inner: CheckpointIO) -> None:
        self.inner = inner

    @override
    def save_checkpoint(
        self, checkpoint: dict[str, Any], path: Any, storage_options: Any | None = None
    ) -> None:
        with writing(Path(path), tensor_bytes(checkpoint)):
            self.inner.save_checkpoint(checkpoint, path, storage_options)

    @override
    def load_checkpoint(self, *args: Any, **kwargs: Any) -> dict[str, Any]:
        return self.inner.load_checkpoint(*args, **kwargs)

    @override
    def remove_checkpoint(self, path: Any) -> None:
        self.inner.remove_checkpoint(path)

    @override
    def teardown(self) -> None:
        self.inner.teardown()
