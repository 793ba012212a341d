"""Writing a report folder's files without ever writing outside it.

A report folder may be copied, shared or crafted, so nothing in it is trusted: every page
and asset goes through :class:`ReportFiles`, which

- opens each sub-folder (``features/``, ``assets/``) with ``O_NOFOLLOW``: a sub-folder that
  is a symlink is refused, never followed;
- refuses a page that is a symlink (:meth:`ReportFiles.check` looks at every name first,
  so a refused re-render writes nothing);
- writes a temporary file beside the page and ``os.replace``-s it, which replaces whatever
  sits at the name instead of writing through it.

The folder itself is taken as given (a symlink to it is the user's choice); everything
below it is a plain file or folder once written.
"""

from __future__ import annotations

import os
import stat
import uuid
from collections.abc import Iterable
from pathlib import Path
from types import TracebackType


class UnsafeReportPath(ValueError):
    """A path inside a report folder that would lead a write outside it (a symlink)."""


def _refuse(root: Path, relative: str, what: str) -> UnsafeReportPath:
    path = root / relative
    target = f" -> {os.readlink(path)}" if path.is_symlink() else ""
    return UnsafeReportPath(
        f"{path}{target} is {what}: the dashboards are only written as plain files inside "
        f"the report folder {root}, never through a link; remove it, or render into a fresh "
        "folder with --out DIR"
    )


class ReportFiles:
    """``with ReportFiles(root) as files: files.write("features/3.html", html)``.

    Args:
        root: The report folder (created if missing).
    """

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        self._folders: dict[str, int] = {}

    def __enter__(self) -> ReportFiles:
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        trace: TracebackType | None,
    ) -> None:
        for fd in self._folders.values():
            os.close(fd)
        self._folders.clear()

    def check(self, relatives: Iterable[str]) -> None:
        """Refuse before writing anything if a sub-folder or a file of ``relatives`` is a
        symlink or not of its kind.

        Raises:
            UnsafeReportPath: Naming the path and where its link points.
        """
        seen: set[str] = set()
        for relative in relatives:
            parts = Path(relative).parts
            for depth in range(1, len(parts)):
                folder = "/".join(parts[:depth])
                if folder not in seen:
                    seen.add(folder)
                    path = self.root / folder
                    if path.is_symlink() or (path.exists() and not path.is_dir()):
                        raise _refuse(self.root, folder, "not a folder of the report")
            if (self.root / relative).is_symlink():
                raise _refuse(self.root, relative, "a symlink")

    def _folder(self, sub: str) -> int:
        """A descriptor of ``root/sub`` (made if missing), opened without following links."""
        if sub in self._folders:
            return self._folders[sub]
        fd = os.open(self.root, os.O_RDONLY | os.O_DIRECTORY)
        walked = []
        for part in Path(sub).parts:
            walked.append(part)
            try:
                os.mkdir(part, dir_fd=fd)
            except FileExistsError:
                pass
            try:
                inner = os.open(part, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW, dir_fd=fd)
            except OSError:
                raise _refuse(self.root, "/".join(walked), "not a folder of the report") from None
            finally:
                os.close(fd)
            fd = inner
        self._folders[sub] = fd
        return fd

    def size(self, relative: str) -> int | None:
        """The size of ``root/relative`` if it is a plain file (not a link), else None."""
        sub, name = os.path.split(relative)
        try:
            info = os.stat(name, dir_fd=self._folder(sub), follow_symlinks=False)
        except FileNotFoundError:
            return None
        return info.st_size if stat.S_ISREG(info.st_mode) else None

    def write(self, relative: str, text: str) -> Path:
        """Write ``text`` (UTF-8) to ``root/relative`` as a new plain file; returns its path.

        Raises:
            UnsafeReportPath: If ``relative`` or its folder is a symlink.
        """
        sub, name = os.path.split(relative)
        fd = self._folder(sub)
        try:
            if stat.S_ISLNK(os.stat(name, dir_fd=fd, follow_symlinks=False).st_mode):
                raise _refuse(self.root, relative, "a symlink")
        except FileNotFoundError:
            pass
        temp = f".{name}.{uuid.uuid4().hex[:12]}.tmp"
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW
        handle = os.open(temp, flags, 0o666, dir_fd=fd)
        try:
            with open(handle, "w", encoding="utf-8") as out:
                out.write(text)
            os.replace(temp, name, src_dir_fd=fd, dst_dir_fd=fd)
        except BaseException:
            os.unlink(temp, dir_fd=fd)
            raise
        return self.root / relative
