"""Training precision: ``run.precision`` = ``auto``, ``fp32`` or ``bf16`` (bf16 autocast of the forward pass).

bf16 autocast only pays where the hardware computes in bf16. Measured on CPUs (benchmarks/README.md §6):
1.3–1.8× faster training with AMX / AVX512-BF16, but 10–20× *slower* on a CPU without native bf16
(AVX2 only: a 64-channel 3×3 convolution, forward and backward at batch 64 and 28×28, took 15.2 s instead of
1.48 s; a 512×512 linear layer 10.6 s instead of 0.57 s). So ``auto`` chooses bf16 only on

- a CUDA device that supports bf16 (``torch.cuda.is_bf16_supported()``), or
- a CPU that reports native bf16: the x86 flags ``avx512_bf16`` or ``amx_bf16`` in ``/proc/cpuinfo``
  (Linux), or, where that file cannot be read, ``torch.backends.cpu.get_cpu_capability()`` naming AMX or
  BF16;

and fp32 everywhere else, including CPUs it cannot inspect. Forcing ``bf16`` on a CPU without native bf16
trains, with a warning that states the expected slowdown (likewise on a GPU without native bf16).
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from pathlib import Path

import torch

from ..errors import OptionError

__all__ = ["PRECISIONS", "NATIVE_BF16_FLAGS", "SLOWDOWN_WITHOUT_NATIVE_BF16", "Precision", "cpu_native_bf16",
           "resolve_precision", "autocast"]

PRECISIONS = ("auto", "fp32", "bf16")
NATIVE_BF16_FLAGS = ("avx512_bf16", "amx_bf16")
SLOWDOWN_WITHOUT_NATIVE_BF16 = "10-20x slower than fp32"

_CPUINFO = Path("/proc/cpuinfo")


@dataclass(frozen=True)
class Precision:
    """A resolved ``run.precision``: ``name`` (``fp32`` or ``bf16``), what was ``requested``, the ``reason``
    in words, and a ``warning`` (``None`` unless bf16 was forced where it is slow)."""

    name: str
    requested: str
    reason: str
    warning: str | None = None

    @property
    def bf16(self) -> bool:
        return self.name == "bf16"

    def as_dict(self) -> dict[str, str | None]:
        return {"name": self.name, "requested": self.requested, "reason": self.reason}


def _read_cpuinfo() -> str | None:
    try:
        return _CPUINFO.read_text()
    except OSError:
        return None


def cpu_native_bf16(cpuinfo: str | None = None) -> tuple[bool, str]:
    """Whether this CPU computes bf16 natively, and how that was decided.

    ``cpuinfo``: the text of ``/proc/cpuinfo`` (read from the file when ``None``). Its ``flags`` lines decide:
    any of :data:`NATIVE_BF16_FLAGS` → True, flags without them → False. Without readable flags (not
    Linux), ``torch.backends.cpu.get_cpu_capability()`` decides: True only if it names AMX or BF16; unknown
    → False (fp32 is the safe choice: slow bf16 costs 10–20×, missing fast bf16 1.3–1.8×)."""
    text = _read_cpuinfo() if cpuinfo is None else cpuinfo
    flags: set[str] = set()
    seen_flags = False
    for line in (text or "").splitlines():
        key, sep, value = line.partition(":")
        if sep and key.strip().lower() == "flags":
            seen_flags = True
            flags.update(value.split())
    if seen_flags:
        found = [f for f in NATIVE_BF16_FLAGS if f in flags]
        if found:
            return True, f"CPU flags {', '.join(found)} in /proc/cpuinfo"
        return False, f"no {' or '.join(NATIVE_BF16_FLAGS)} in the CPU flags of /proc/cpuinfo"
    try:
        capability = str(torch.backends.cpu.get_cpu_capability())
    except (AttributeError, RuntimeError):
        return False, "CPU features unknown (no /proc/cpuinfo flags, no torch CPU capability)"
    if "AMX" in capability.upper() or "BF16" in capability.upper():
        return True, f"torch CPU capability {capability}"
    return False, f"CPU features unknown (no /proc/cpuinfo flags; torch CPU capability {capability})"


def resolve_precision(requested: str, device: torch.device | str, *, cpuinfo: str | None = None) -> Precision:
    """``run.precision`` → :class:`Precision` for ``device`` (see the module doc). ``cpuinfo`` as in
    :func:`cpu_native_bf16`. Unknown values are an :class:`OptionError` naming ``run.precision``."""
    if requested not in PRECISIONS:
        raise OptionError(f"run.precision must be one of {', '.join(PRECISIONS)}, got {requested!r}")
    device = torch.device(device)
    if device.type == "cuda":
        native = bool(torch.cuda.is_available() and torch.cuda.is_bf16_supported(including_emulation=False))
        how = "CUDA device supports bf16" if native else "CUDA device without bf16 support"
    elif device.type == "cpu":
        native, how = cpu_native_bf16(cpuinfo)
    else:
        native, how = False, f"device type {device.type!r} not measured"
    if requested == "fp32":
        return Precision("fp32", requested, "requested")
    if requested == "bf16":
        warning = None
        if device.type == "cpu" and not native:
            warning = (f"run.precision=bf16 on a CPU without native bf16 ({how}): bf16 autocast is expected to be "
                       f"{SLOWDOWN_WITHOUT_NATIVE_BF16} here; use run.precision=auto or fp32")
        elif device.type == "cuda" and not native:
            warning = (f"run.precision=bf16 on a {how}: bf16 is emulated or unsupported there (slow or failing); "
                       "use run.precision=auto or fp32")
        return Precision("bf16", requested, f"requested ({how})", warning)
    return Precision("bf16" if native else "fp32", requested, how)


def autocast(precision: Precision, device: torch.device) -> contextlib.AbstractContextManager:
    """The autocast context of one forward pass: bf16 autocast on ``device`` or nothing."""
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=precision.bf16)
