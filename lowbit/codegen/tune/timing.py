"""Timing a kernel call: cache flushing, repeated samples, thread settings and the device's name.

    t = benchmark(lambda: kernel(args), repeats=5)          # flushes the caches before every sample
    print(t.median, t.iqr)                                   # milliseconds

A 4096² W4 weight (9 MB) fits in a 32 MiB L3, so a hot loop overstates memory-bound speed; `benchmark`
therefore writes and reads a buffer larger than the last-level cache before each sample (not timed).
CPU samples use `time.perf_counter_ns`; CUDA samples use `torch.cuda.Event` pairs and synchronize.
"""

from __future__ import annotations

import functools
import importlib.util
import os
import re
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

FALLBACK_FLUSH_BYTES = 256 * 2**20  # when the L3 size cannot be read
CUDA_FLUSH_BYTES = 256 * 2**20  # larger than any GPU L2 (H100/H200: 50 MiB)


@dataclass(frozen=True)
class Timing:
    """Samples of one measurement, in milliseconds."""

    samples: tuple[float, ...]

    @property
    def median(self) -> float:
        return float(np.median(self.samples))

    @property
    def min(self) -> float:
        return min(self.samples)

    @property
    def max(self) -> float:
        return max(self.samples)

    @property
    def iqr(self) -> float:
        """Interquartile range (75th − 25th percentile): the spread that one outlier does not move."""
        q75, q25 = np.percentile(self.samples, [75, 25])
        return float(q75 - q25)

    def __str__(self) -> str:
        spread = f"min {self.min:.4g}, max {self.max:.4g}, iqr {self.iqr:.3g}, n={len(self.samples)}"
        return f"{self.median:.4g} ms ({spread})"


def _parse_size(text: str) -> int | None:
    """'32768K', '32 MiB', '1M' -> bytes."""
    m = re.match(r"\s*([\d.]+)\s*([KMG]?)i?B?", text, re.IGNORECASE)
    if not m:
        return None
    scale = {"": 1, "K": 2**10, "M": 2**20, "G": 2**30}[m.group(2).upper()]
    return int(float(m.group(1)) * scale)


@functools.cache
def last_level_cache_bytes() -> int | None:
    """The size of the largest CPU cache level (L3 on x86), from /sys, else `lscpu`; None if unknown."""
    best: tuple[int, int] | None = None  # (level, bytes)
    for index in Path("/sys/devices/system/cpu/cpu0/cache").glob("index*"):
        try:
            level = int((index / "level").read_text())
            size = _parse_size((index / "size").read_text())
        except (OSError, ValueError):
            continue
        if size and (best is None or (level, size) > best):
            best = (level, size)
    if best:
        return best[1]
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, timeout=5).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    m = re.search(r"L3 cache:\s*([\d.]+\s*[KMG]i?B?)", out)  # "L3 cache: 32 MiB (1 instance)"
    return _parse_size(m.group(1)) if m else None


@functools.cache
def _flush_buffer(device: str, nbytes: int) -> Any:
    """Allocated once per (device, size) and reused, so flushing does not page-fault fresh memory."""
    if device.startswith("cuda"):
        import torch

        return torch.empty(nbytes, dtype=torch.int8, device=device)
    return np.zeros(nbytes // 8, dtype=np.int64)


def flush_cache(device: str = "cpu", nbytes: int | None = None) -> None:
    """Evict the caches before a timed call. CPU: read and write every line of a buffer twice the L3 size
    (256 MiB when the size is unknown). CUDA: zero a 256 MiB buffer (evicts L2)."""
    if device.startswith("cuda"):
        _flush_buffer(device, nbytes or CUDA_FLUSH_BYTES).zero_()
        return
    if nbytes is None:
        llc = last_level_cache_bytes()
        nbytes = 2 * llc if llc else FALLBACK_FLUSH_BYTES
    buf = _flush_buffer("cpu", nbytes)
    buf += 1  # read-modify-write of every cache line


def benchmark(
    fn: Callable[[], Any],
    *,
    repeats: int = 5,
    warmup: int = 1,
    flush: bool = True,
    device: str = "cpu",
    min_time_ms: float = 0,
) -> Timing:
    """Call `fn` `warmup` times untimed, then time at least `repeats` calls (more until the samples add up
    to `min_time_ms`), flushing caches before each sample when `flush` (the flush is not timed)."""
    if repeats < 1:
        raise ValueError(f"benchmark: repeats={repeats}; use repeats >= 1")
    cuda = device.startswith("cuda")
    if cuda:
        import torch

        sync = functools.partial(torch.cuda.synchronize, device)
    for _ in range(warmup):
        fn()
    if cuda:
        sync()
    samples: list[float] = []
    while len(samples) < repeats or sum(samples) < min_time_ms:
        if flush:
            flush_cache(device)
        if cuda:
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            sync()
            start.record()
            fn()
            end.record()
            sync()
            samples.append(float(start.elapsed_time(end)))
        else:
            t0 = time.perf_counter_ns()
            fn()
            samples.append((time.perf_counter_ns() - t0) / 1e6)
    return Timing(tuple(samples))


def set_threads(n: int | None = None) -> int:
    """Use `n` threads (default: every core) in torch, TVM and OpenMP. TVM reads TVM_NUM_THREADS when its
    thread pool first starts, so call this before the first TVM kernel runs; it defaults to half the
    cores on x86 otherwise (1 thread on a 2-core VM)."""
    n = n or os.cpu_count() or 1
    os.environ["TVM_NUM_THREADS"] = str(n)
    os.environ["OMP_NUM_THREADS"] = str(n)
    if importlib.util.find_spec("torch") is not None:
        import torch

        torch.set_num_threads(n)
    return n


@functools.cache
def device_name(device: str = "cpu") -> str:
    """A readable name for the device timings are taken on: "AMD EPYC (2 cores)" or "NVIDIA H200"."""
    if device.startswith("cuda"):
        import torch

        return torch.cuda.get_device_name(device)
    model = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    if not model:
        import platform

        model = platform.processor() or platform.machine() or "unknown cpu"
    return f"{model} ({os.cpu_count()} cores)"


__all__ = ["Timing", "benchmark", "device_name", "flush_cache", "last_level_cache_bytes", "set_threads"]
