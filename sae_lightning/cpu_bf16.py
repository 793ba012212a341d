"""Whether this CPU does bfloat16 arithmetic in hardware, and a warning when it does not.

``trainer.precision=bf16-mixed`` autocasts the SAE's products to bfloat16. On a CPU with
bf16 instructions (x86 AVX-512 BF16 or AMX, Arm's BF16 extension) oneDNN runs them natively;
on one without (an AVX2-only x86) torch falls back to an emulated kernel: on an AVX2 AMD
EPYC a ``[4096, 1024] @ [1024, 4096]`` product took 88 s in bfloat16 against 0.21 s in
float32 (0.4 against 160 GFLOP/s), so a bf16-mixed run trains hundreds of times slower.
Even with AVX-512 BF16 and no AMX, bf16 products ran at about half the float32 rate on the
Intel Xeon this project was measured on (README, Benchmarks). The same holds for a frozen
model loaded in bfloat16 on the CPU (``model.dtype=bfloat16``): its forward is emulated too.
"""

from __future__ import annotations

import functools
import logging
from pathlib import Path

import torch
from omegaconf import DictConfig

log = logging.getLogger(__name__)

# /proc/cpuinfo flags that mean bf16 products run in hardware: x86 AVX-512 BF16 and AMX
# (``flags``), aarch64 FEAT_BF16 (``Features``)
BF16_FLAGS = ("avx512_bf16", "amx_bf16", "bf16")
CPUINFO = Path("/proc/cpuinfo")


def cpu_flags(path: Path = CPUINFO) -> set[str] | None:
    """The CPU's feature flags as Linux lists them (``flags`` / ``Features`` lines), or None
    where the file cannot be read (another OS)."""
    try:
        text = path.read_text()
    except OSError:
        return None
    flags: set[str] = set()
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key.strip() in ("flags", "Features"):
            flags.update(value.split())
    return flags


def native_bf16(flags: set[str] | None) -> bool | None:
    """True if ``flags`` include a bf16 arithmetic extension, False if not, None if unknown."""
    if flags is None:
        return None
    return any(flag in flags for flag in BF16_FLAGS)


def is_bf16(value: object) -> bool:
    """Whether a precision or dtype setting means bfloat16 (``bf16-mixed``, ``bf16-true``,
    ``bfloat16``, ``torch.bfloat16``)."""
    name = str(value).removeprefix("torch.")
    return name.startswith("bf16") or name == "bfloat16"


def emulated_bf16_warning(
    key: str, value: object, fix: str, on_cpu: bool, flags: set[str] | None
) -> str | None:
    """The warning for a bf16 setting ``key=value`` on a CPU whose ``flags`` have no bf16
    arithmetic, naming ``fix`` (None when the value is not bf16, the work is not on the CPU,
    or the flags are unknown)."""
    if not is_bf16(value) or not on_cpu or native_bf16(flags) is not False:
        return None
    return (
        f"{key}={value} on a CPU without bf16 arithmetic (none of {', '.join(BF16_FLAGS)} "
        "among its flags): torch emulates bfloat16 matrix products here, hundreds of times "
        f"slower than float32 (on an AVX2 EPYC, 0.4 against 160 GFLOP/s); set {fix}"
    )


def warn_emulated_bf16(cfg: DictConfig, flags: set[str] | None = None) -> str | None:
    """Log (and return) :func:`emulated_bf16_warning` for ``cfg.trainer.precision`` on this
    machine (the run is on the CPU with ``accelerator: cpu``, or ``auto`` without CUDA)."""
    trainer = cfg.get("trainer") or {}
    accelerator = str(trainer.get("accelerator", "auto"))
    on_cpu = accelerator == "cpu" or (accelerator == "auto" and not torch.cuda.is_available())
    message = emulated_bf16_warning(
        "trainer.precision",
        trainer.get("precision"),
        "trainer.precision=32-true",
        on_cpu,
        cpu_flags() if flags is None else flags,
    )
    if message:
        log.warning(message)
    return message


def warn_emulated_model(model: torch.nn.Module) -> str | None:
    """Log (once per message) and return the warning for a frozen model whose weights are
    bfloat16 on a CPU without bf16 arithmetic: every loader's model passes here
    (``models.freeze``), whichever config or code path asked for it."""
    param = next(model.parameters(), None)
    if param is None:
        return None
    message = emulated_bf16_warning(
        "model.dtype",
        str(param.dtype).removeprefix("torch."),
        "model.dtype=float32 (model_b.dtype for a second model)",
        param.device.type == "cpu",
        cpu_flags(),
    )
    if message:
        _warn_once(message)
    return message


@functools.cache
def _warn_once(message: str) -> None:
    log.warning(message)
