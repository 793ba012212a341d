"""The command lines' way with mistakes a user can fix: one line on stderr, exit status 1.

``train.py`` and ``analyze.py`` run their job inside :func:`user_errors`. A missing file, a
bad value, a hook that cannot be read or a hub that cannot be reached ends with its message
alone (Hydra's wrapping of a constructor's error is unwrapped); any other exception is a bug
and keeps its traceback. ``HYDRA_FULL_ERROR=1`` shows the traceback of user errors too.
A training run stopped by SIGTERM or Ctrl-C ends with its resume command and exit status
128 + the signal (143, 130).
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager

from hydra.errors import InstantiationException

from sae_lightning.disk import DiskFullError
from sae_lightning.guards import TrainingDiverged, TrainingInterrupted
from sae_lightning.hub import HubUnavailableError

USER_ERRORS: tuple[type[BaseException], ...] = (
    FileNotFoundError,
    ValueError,
    HubUnavailableError,
    TrainingDiverged,
    DiskFullError,
)
"""What a user can cause and fix (``CorpusError`` is a ``ValueError``)."""


def _user_error(err: BaseException) -> BaseException | None:
    """The user error behind ``err`` (through Hydra's ``InstantiationException``), if any."""
    seen: BaseException | None = err
    while isinstance(seen, InstantiationException):
        seen = seen.__cause__
    return seen if isinstance(seen, USER_ERRORS) else None


@contextmanager
def user_errors(prog: str) -> Iterator[None]:
    """Turn a user error raised inside into ``SystemExit("<prog>: <Type>: <message>")``, and
    a run stopped by a signal (:class:`TrainingInterrupted`: checkpoint saved, resume
    command in its message) into that message and exit status 128 + the signal."""
    try:
        yield
    except TrainingInterrupted as stop:
        sys.stderr.write(f"{prog}: {stop}\n")
        raise SystemExit(stop.exit_code) from None
    except Exception as err:  # noqa: BLE001  (re-raised unless it is the user's to fix)
        cause = _user_error(err)
        if cause is None or os.environ.get("HYDRA_FULL_ERROR") == "1":
            raise
        raise SystemExit(f"{prog}: {type(cause).__name__}: {cause}") from None
