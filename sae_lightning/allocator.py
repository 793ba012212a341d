"""Keep large freed CPU blocks for reuse instead of returning them to the OS (glibc).

A CPU training step allocates and frees the same large tensors every step (the
``[batch, d_sae]`` pre-activations, masks, dense codes: 64 MB each at batch 4096, d_sae
4096). glibc serves every block above its mmap threshold (at most 32 MB, however it adapts)
with a fresh ``mmap`` and unmaps it on free, so each step page-faults and zero-fills every
such tensor again: tens of milliseconds per tensor, on top of the arithmetic. Raising the
mmap and trim thresholds makes glibc keep those blocks on its heap and hand them out again.
The resident memory then stays at the step's peak, which it reaches every step anyway.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import sys

log = logging.getLogger(__name__)

_M_TRIM_THRESHOLD = -1  # mallopt parameters (glibc malloc.h)
_M_MMAP_THRESHOLD = -3
_THRESHOLD = 1 << 30  # 1 GiB: every per-step tensor of a CPU run is below it


def keep_freed_memory() -> bool:
    """Raise glibc's mmap and trim thresholds to 1 GiB for this process.

    Returns:
        ``True`` if both were set; ``False`` on a C library without ``mallopt`` (macOS,
        musl, Windows), where nothing changes.
    """
    if not sys.platform.startswith("linux"):
        return False
    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    ok = bool(mallopt(_M_MMAP_THRESHOLD, _THRESHOLD)) and bool(
        mallopt(_M_TRIM_THRESHOLD, _THRESHOLD)
    )
    if ok:
        log.debug("glibc keeps freed blocks under %d bytes for reuse", _THRESHOLD)
    return ok
