"""Flush denormal floats to zero on CPU during training.

Adam's first moment of a parameter that gets no gradient decays by ``beta1`` (0.9) every
step. A latent that stops firing, dead in a TopK SAE without AuxK or past its reach, gets
exactly zero gradient in its encoder column and decoder row, so about 700 steps after it
dies its moments pass below float32's smallest normal number (1.2e-38) and stay there: a
denormal times 0.9 rounds back to a denormal. Arithmetic on denormals takes the CPU's slow
path (tens of cycles an operation on x86), so the fused Adam step and every pass that reads
those moments slow down as latents die: in the replication's k-6 TopK runs, 21% of both
matrices' first moments (438k of 2.1M each) were denormal after 7,200 steps, and training
ran at 13k instead of 17k tokens/s in its second half. Flushing them (x86's FTZ and DAZ
flags) makes them zero, which they are for every purpose: an Adam update of 1e-38 / 1e-8
changes no float32 weight. GPUs run at full speed on denormals; this is for CPUs only.
"""

from __future__ import annotations

import logging

import torch

log = logging.getLogger(__name__)


def flush_denormals() -> bool:
    """Treat denormal float inputs and results as zero in this process's CPU arithmetic.

    Returns:
        ``True`` if set; ``False`` on a CPU without the flags (not x86 with SSE3), where
        nothing changes.
    """
    ok = bool(torch.set_flush_denormal(True))
    if ok:
        log.debug("CPU arithmetic flushes denormals to zero")
    return ok
