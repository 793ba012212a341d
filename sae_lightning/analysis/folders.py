"""Where an analysis writes: an exclusive claim on ``report_dir``, a report published whole.

``analyze(cfg)`` runs inside :class:`ReportFolder`, so two analyses never share a folder by
accident and a re-run never leaves pages of the one before:

- **One writer.** Before the SAE loads, the analysis takes ``fcntl.flock`` (non-blocking) on
  ``<report_dir>/.analysis.lock`` and holds it to the end; a second analysis into the same
  folder stops at once, naming the first one's pid. The lock goes with its process: a
  killed run leaves none behind.
- **Staged, then renamed.** The report is written into a fresh
  ``<report_dir>/.report-<id>.partial/`` and renamed to ``report/`` at the end, replacing
  an earlier report whole. A run that fails leaves the earlier report as it was.
- **Only a report is replaced.** An existing ``report/`` must hold ``criteria.json`` (or be
  empty); any other ``report/`` (a file, a symlink, a folder of other things) is refused
  and left untouched, as is a ``report_dir`` that is itself a report folder.
- **TensorBoard.** The analysis's events go to ``<report_dir>/tensorboard/`` in files
  ending ``.analysis``; publishing deletes the earlier analyses' files there, so TensorBoard
  shows the latest analysis. A training run's events in the same folder
  (``report_dir='${sae_path}'``) are never touched.

Only rank 0 (the process that writes the report) claims the folder; other DDP ranks write
nothing there.
"""

from __future__ import annotations

import fcntl
import logging
import os
import shutil
import uuid
from pathlib import Path
from types import TracebackType

from lightning.pytorch.utilities import rank_zero_only

from sae_lightning.analysis.records import CRITERIA_FILE

log = logging.getLogger(__name__)

LOCK_FILE = ".analysis.lock"
REPORT = "report"
EVENTS_SUFFIX = ".analysis"
"""Ending of the analysis's TensorBoard event files (``SummaryWriter(filename_suffix=)``)."""
_STAGED, _OLD = ".partial", ".old"


class ReportFolderError(ValueError):
    """A ``report_dir`` this analysis must not write: busy, or its ``report/`` is no report."""


def _listing(folder: Path, limit: int = 5) -> str:
    names = sorted(p.name + "/" * p.is_dir() for p in folder.iterdir())
    more = f" and {len(names) - limit} more" if len(names) > limit else ""
    return ", ".join(names[:limit]) + more


def check_replaceable(out: Path) -> None:
    """Refuse a ``report_dir`` whose ``report/`` is not an earlier report (or missing, or
    empty), and one that is itself a report folder.

    Raises:
        ReportFolderError: Naming the folder, what it holds, and what to do instead.
    """
    if (out / CRITERIA_FILE).is_file():
        raise ReportFolderError(
            f"report_dir {out} is itself a report folder (it holds {CRITERIA_FILE}); pass the "
            f"folder above it (report_dir={out.parent}): the analysis writes report/ there"
        )
    report = out / REPORT
    if report.is_symlink() or (report.exists() and not report.is_dir()):
        kind = "a symlink" if report.is_symlink() else "a file"
        raise ReportFolderError(
            f"{report} is {kind}, not an earlier report folder; an analysis replaces "
            "report/ whole, so it refuses: move it away or choose another report_dir"
        )
    if report.is_dir() and not (report / CRITERIA_FILE).is_file() and any(report.iterdir()):
        raise ReportFolderError(
            f"{report} holds {_listing(report)} but no {CRITERIA_FILE}: it is not an earlier "
            "analysis report, and an analysis replaces report/ whole, so it refuses; move "
            "that folder away or choose another report_dir"
        )


def _lock(out: Path) -> int:
    """An open descriptor of ``out/.analysis.lock``, exclusively flocked, holding our pid."""
    path = out / LOCK_FILE
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o644)
    except OSError as err:
        raise ReportFolderError(f"cannot open the lock file {path}: {err.strerror}") from None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "unknown"
        os.close(fd)
        raise ReportFolderError(
            f"report_dir {out} is being written by another analysis (pid {holder}); wait "
            "for it to finish or choose another report_dir"
        ) from None
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
    return fd


def _tidy(out: Path) -> None:
    """Remove what a killed analysis left (we hold the lock: nobody else is using it); if it
    died between the two renames of publishing, first put the earlier report back."""
    old = sorted(out.glob(f".report-*{_OLD}"), key=lambda p: p.stat().st_mtime)
    if old and not (out / REPORT).exists():
        os.rename(old.pop(), out / REPORT)
    for path in [*old, *out.glob(f".report-*{_STAGED}")]:
        shutil.rmtree(path, ignore_errors=True)


class ReportFolder:
    """``with ReportFolder(out) as folder:`` write the report into ``folder.report``; it
    becomes ``out/report`` when the block ends without an error.

    Args:
        out: The ``report_dir``: ``report/`` and ``tensorboard/`` go inside.
        writer: Whether this process writes the report; None: rank 0 only.

    Raises:
        ReportFolderError: On entering, if another analysis holds ``out`` or its
            ``report/`` is not an earlier report (see :func:`check_replaceable`).
    """

    def __init__(self, out: str | Path, writer: bool | None = None) -> None:
        self.out = Path(out)
        self.writer = rank_zero_only.rank == 0 if writer is None else writer
        self.target = self.out / REPORT
        self.report = self.target
        """Where to write: the staging folder while entered (on the writer)."""
        self._fd: int | None = None
        self._stale: list[Path] = []

    def __enter__(self) -> ReportFolder:
        if not self.writer:
            return self
        if self.out.is_dir():
            check_replaceable(self.out)  # a refused folder is left without even a lock file
        try:
            self.out.mkdir(parents=True, exist_ok=True)
        except OSError as err:
            raise ReportFolderError(f"report_dir {self.out} cannot be made: {err}") from None
        self._fd = _lock(self.out)
        try:
            check_replaceable(self.out)  # again, now that no other analysis can change it
            _tidy(self.out)
            self._stale = sorted((self.out / "tensorboard").glob(f"*tfevents*{EVENTS_SUFFIX}"))
            self.report = self.out / f".report-{uuid.uuid4().hex[:12]}{_STAGED}"
            self.report.mkdir()
        except BaseException:
            self._unlock()
            raise
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        trace: TracebackType | None,
    ) -> None:
        try:
            if kind is None and self.writer:
                self._publish()
        finally:
            if self.report != self.target:
                shutil.rmtree(self.report, ignore_errors=True)
            self._unlock()

    def final(self, path: str | Path) -> Path:
        """Where ``path``, written inside :attr:`report`, lies once published."""
        return self.target / Path(path).relative_to(self.report)

    def _publish(self) -> None:
        check_replaceable(self.out)  # again: something may have appeared at report/ since
        old = None
        if self.target.exists():
            old = self.out / f".report-{uuid.uuid4().hex[:12]}{_OLD}"
            os.rename(self.target, old)
        os.rename(self.report, self.target)
        self.report = self.target
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
        for events in self._stale:  # earlier analyses' TensorBoard events
            events.unlink(missing_ok=True)
        log.info("report published: %s", self.target)

    def _unlock(self) -> None:
        if self._fd is not None:
            os.close(self._fd)  # closing the descriptor releases the flock
            self._fd = None
