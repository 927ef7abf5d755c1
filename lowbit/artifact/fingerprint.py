"""The environment an artifact was compiled in: OS, CPU model and the ISA extensions kernels use, core
count, the CUDA device. Read-only, cheap (no TVM import); the CUDA part imports torch when it is installed.

Compiled kernels depend on it (they are regenerated when it differs); packed weights do not.
"""

from __future__ import annotations

import functools
import importlib.util
import os
import platform
from pathlib import Path
from typing import Any

# ISA extensions that change the code LLVM/TVM emit for our kernels (x86 /proc/cpuinfo "flags", Arm "Features")
ISA_FLAGS = (
    "sse4_2",
    "avx",
    "avx2",
    "fma",
    "f16c",
    "avx512f",
    "avx512bw",
    "avx512vl",
    "avx512_vnni",
    "avx512_bf16",
    "avx512_fp16",
    "avx_vnni",
    "amx_tile",
    "amx_int8",
    "amx_bf16",
    "asimd",
    "asimddp",
    "asimdhp",
    "sve",
    "sve2",
    "i8mm",
    "bf16",
)


def _cpuinfo() -> tuple[str, set[str]]:
    """(model name, flags) from /proc/cpuinfo's first processor; ("", set()) where there is none."""
    model, flags = "", set[str]()
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return model, flags
    for line in text.splitlines():
        key, _, value = line.partition(":")
        key = key.strip()
        if key == "model name" and not model:
            model = value.strip()
        elif key in ("flags", "Features") and not flags:
            flags = set(value.split())
    return model, flags


@functools.cache
def cpu_model() -> str:
    model, _ = _cpuinfo()
    return model or platform.processor() or platform.machine() or "unknown cpu"


@functools.cache
def isa_flags() -> tuple[str, ...]:
    """The `ISA_FLAGS` this CPU has, in `ISA_FLAGS` order."""
    _, flags = _cpuinfo()
    return tuple(f for f in ISA_FLAGS if f in flags)


def fp32_lanes() -> int:
    """fp32 lanes of one vector register of this CPU: 8 on x86 with AVX2 and no AVX-512, else 16 (AVX-512, and
    the width the TVM backend assumes off x86)."""
    flags = isa_flags()
    return 8 if "avx2" in flags and "avx512f" not in flags else 16


@functools.cache
def cuda_device() -> dict[str, Any] | None:
    """{"name", "capability", "count"} of CUDA device 0 when torch sees one, else None."""
    if importlib.util.find_spec("torch") is None:
        return None
    import torch

    if not torch.cuda.is_available():
        return None
    major, minor = torch.cuda.get_device_capability(0)
    return {"name": torch.cuda.get_device_name(0), "capability": f"{major}.{minor}", "count": torch.cuda.device_count()}


def fingerprint(cuda: bool = True) -> dict[str, Any]:
    """This machine: {"os", "machine", "cpu", "isa", "cores", "cuda"} (plain JSON values)."""
    return {
        "os": platform.system(),
        "machine": platform.machine(),
        "cpu": cpu_model(),
        "isa": list(isa_flags()),
        "cores": os.cpu_count() or 1,
        "cuda": cuda_device() if cuda else None,
    }


def differences(recorded: dict[str, Any], here: dict[str, Any]) -> list[str]:
    """Readable "field: recorded -> here" lines for the fields that differ (missing fields count as None)."""
    out = []
    for k in sorted(set(recorded) | set(here)):
        a, b = recorded.get(k), here.get(k)
        if a != b:
            out.append(f"{k}: {a!r} -> {b!r}")
    return out


__all__ = ["ISA_FLAGS", "cpu_model", "cuda_device", "differences", "fingerprint", "fp32_lanes", "isa_flags"]
