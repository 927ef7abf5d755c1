"""Timing a kernel call: cache flushing, weight rotation, repeated samples, thread settings and the device's name.

    t = benchmark(lambda: kernel(args), repeats=5)          # flushes the caches before every sample
    t = benchmark_ring([lambda w=w: kernel(w) for w in copies], repeats=5)   # rotates weight copies
    print(t.median, t.iqr)                                   # milliseconds

A 4096² W4 weight (9 MB) fits in a 32 MiB L3, so a hot loop overstates memory-bound speed. Two remedies:
`benchmark` writes and reads a buffer larger than the last-level cache before each sample (not timed);
`benchmark_ring` calls a ring of `ring_copies` copies of the operands in turn, so each call finds its weight
evicted by the others, as a decode step finds a layer's weight after the other layers streamed through. The
flush leaves the cache full of dirty lines and the TLBs cold: on the 2-core AVX-512 VM, torch's own 2-thread
sum of a 9 MB buffer right after it read 20.8 GB/s against 40.5 GB/s streaming 512 MB, so a flushed sample of
a 9 MB layer times the flush's aftermath as much as the kernel; a ring times the steady stream a model's
layers make.
CPU samples use `time.perf_counter_ns`; CUDA samples use `torch.cuda.Event` pairs and synchronize (a ring with
`graph=True`: one replay of the ring captured in a CUDA graph per sample, its time over the calls).
"""

from __future__ import annotations

import functools
import importlib.util
import os
import re
import subprocess
import time
from collections.abc import Callable, Sequence
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
    graphed: bool = False  # CUDA: each sample is one replay of the ring captured in a CUDA graph, per call

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


MAX_RING = 64  # copies at most: a smaller operand's ring may stay in the cache (its rows are then partly hot)
# The bytes a CPU ring moves between two uses of one copy, at least. Twice the L3 that /sys reports is not
# enough on a VM: on the 2-core Zen 5 VM (32 MiB L3 reported) a C `sum` over rings of 8.65 MB buffers (2
# threads, best of 5) read 55 GB/s with 69 MB in the ring, 49 at 138 MB, 47.7 at 277 MB, 45.7 at 554 MB and
# 44.9 at 1 GB: the two vCPUs' caches (or the host's) held part of a 2x-L3 ring, and the M = 1 GEMV rows of
# `lowbit bench gemm` read up to 109% of the roofline. 256 MiB: within ~5% of the 512 MiB stream that
# measures the roofline's bandwidth, at half the bench's memory (its rings of every row of a layer: a peak
# RSS of 16.5 GB with 512 MiB); the bench's `stream` row reads the same ring and raises the roofline when it
# is faster.
RING_MIN_BYTES = 256 * 2**20
# ... and at most this much: a VM can report its host's L3 (480 MiB on the 2-core Xeon VM with AMX), whose
# 2x made every ring of a layer move 960 MiB, and the bench's rings of an 11008x4096 layer took its 24 GiB
# (killed by the OOM killer at M = 256). There a torch `sum` over rings of 8.65 MB buffers read 51-52 GB/s
# with 32-64 MiB in the ring, 30 at 128 MiB and 25.6 / 26.5 / 25.6 at 256 / 512 / 1024 MiB: the cache that
# held part of a ring was ~100 MiB, not 480.
RING_MAX_BYTES = 512 * 2**20


def ring_copies(nbytes: int, device: str = "cpu") -> int:
    """How many copies of an operand of `nbytes` a ring needs so that the copies called between two uses of
    one copy move at least twice the last-level cache (CUDA L2) or, on a CPU, the larger of that and
    `RING_MIN_BYTES`, capped at `RING_MAX_BYTES`: 1 + ceil(moved / nbytes), at most `MAX_RING` (a CPU
    operand under RING_MIN_BYTES / 63, ~4 MiB, then cycles through less than that)."""
    if device.startswith("cuda"):
        import torch

        cache = int(getattr(torch.cuda.get_device_properties(device), "L2_cache_size", 0)) or CUDA_FLUSH_BYTES // 4
        moved = 2 * cache
    else:
        cache = last_level_cache_bytes() or FALLBACK_FLUSH_BYTES // 2
        moved = min(max(2 * cache, RING_MIN_BYTES), RING_MAX_BYTES)
    return min(MAX_RING, 1 + -(-moved // max(int(nbytes), 1)))


# Untimed calls before a ring's samples: a decode step streams its layers back to back, and on the 2-core
# AVX-512 VM the first ~20 calls of a 4096² W4 GEMV ring after other work (a torch op, a 50 ms sleep) ramp
# from 0.33-0.47 ms down to 0.21-0.24 ms (torch's own 9 MB `sum` ring from 0.36-0.46 to 0.20-0.22 ms), so a
# median of 9 samples taken at once timed that ramp: 0.287 ms, against 0.213 ms with 45 samples in the next run.
RING_WARMUP_MS = 20.0


def capture_ring(fns: Sequence[Callable[[], Any]], device: str) -> Callable[[], None] | None:
    """The calls of `fns`, in order, captured in one CUDA graph: its `replay` (one launch runs them back to
    back, as a decode step's graph runs its layers), or None when a call cannot be captured (it synchronizes
    or copies to the host). Each call runs once first on a side stream (compiles, copies weights, warms the
    allocator), as torch.cuda.graph requires."""
    import torch

    side = torch.cuda.Stream(device)
    side.wait_stream(torch.cuda.current_stream(device))
    with torch.cuda.stream(side):
        for fn in fns:
            fn()
    torch.cuda.current_stream(device).wait_stream(side)
    torch.cuda.synchronize(device)
    graph = torch.cuda.CUDAGraph()
    try:
        with torch.cuda.graph(graph):
            for fn in fns:
                fn()
    except Exception:  # not capturable: the caller times eager calls
        torch.cuda.synchronize(device)
        return None
    return graph.replay


def benchmark_ring(
    fns: Sequence[Callable[[], Any]],
    *,
    repeats: int = 5,
    warmup: int = 1,
    device: str = "cpu",
    warmup_ms: float = RING_WARMUP_MS,
    graph: bool = False,
) -> Timing:
    """Time calls that cycle through `fns` (one per copy of the operands, `ring_copies` of them): `warmup`
    untimed passes over the whole ring (each copy's first call compiles, packs or re-tiles), then untimed calls
    in ring order for `warmup_ms` after them (the steady state of back-to-back calls, `RING_WARMUP_MS`; at
    least one call, and after building passes at least one more whole pass), then samples of one call each, in
    ring order, at least `repeats` and a whole number of passes.

    `graph=True` on a CUDA device: the ring is captured in one CUDA graph (`capture_ring`) and each sample is
    one replay's time over the number of calls, so the host's launch cost (Python dispatch, tens of us, more
    than a 9 us GEMV) is not timed, for torch's calls and lowbit's alike; where capture fails the eager
    samples are taken (`Timing.graphed` False)."""
    if repeats < 1 or not fns:
        raise ValueError(f"benchmark_ring: repeats={repeats} over {len(fns)} calls; use repeats >= 1 and >= 1 call")
    sync = _synchronizer(device)
    if graph and sync is not None:
        replay = capture_ring(fns, device)
        if replay is not None:
            return _replays(replay, len(fns), repeats, warmup, warmup_ms, sync)
    for _ in range(warmup):  # the first calls: compile, pack, re-tile
        for fn in fns:
            fn()
    if sync is not None:
        sync()
    # then `warmup_ms` of back-to-back calls, counted from here: counted from the start, a ring whose first pass
    # built its plans (seconds: the x16 plans pack 30 weights) was timed from its first steady pass on, and
    # that round's medians ran 1.9-3.2x the next rounds' (int3 / int2 x16, 4096² and 11008x4096, session 52)
    # and after building passes, one whole pass more: each copy's first call after its ring was built ran 2-15x
    # its steady time (11008x4096 int2 x16, 23 copies: 0.8-7 ms, then 0.37-0.55; session 53), and 20 ms of
    # calls reach ~45 of them, so a round that built its rings timed some copies' first calls
    start, i, least = time.perf_counter(), 0, len(fns) if warmup > 0 else 0
    while i < least or (time.perf_counter() - start) * 1e3 < warmup_ms:
        fns[i % len(fns)]()
        if sync is not None:
            sync()
        i += 1
    n = len(fns) * -(-repeats // len(fns))
    return Timing(tuple(_sample(fns[i % len(fns)], sync) for i in range(n)))


def _replays(
    replay: Callable[[], None], calls: int, repeats: int, warmup: int, warmup_ms: float, sync: Callable[[], None]
) -> Timing:
    start, passes = time.perf_counter(), 0
    while passes < warmup or (time.perf_counter() - start) * 1e3 < warmup_ms:
        replay()
        sync()
        passes += 1
    return Timing(tuple(_sample(replay, sync) / calls for _ in range(repeats)), graphed=True)


def _synchronizer(device: str) -> Callable[[], None] | None:
    """torch.cuda.synchronize for a CUDA device, else None (CPU calls are synchronous)."""
    if not device.startswith("cuda"):
        return None
    import torch

    return functools.partial(torch.cuda.synchronize, device)


def _sample(fn: Callable[[], Any], sync: Callable[[], None] | None) -> float:
    """One timed call in ms: CUDA events around it when `sync` (the device's synchronize) is given, else
    `time.perf_counter_ns`."""
    if sync is None:
        t0 = time.perf_counter_ns()
        fn()
        return (time.perf_counter_ns() - t0) / 1e6
    import torch

    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    sync()
    start.record()
    fn()
    end.record()
    sync()
    return float(start.elapsed_time(end))


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
    sync = _synchronizer(device)
    for _ in range(warmup):
        fn()
    if sync is not None:
        sync()
    samples: list[float] = []
    while len(samples) < repeats or sum(samples) < min_time_ms:
        if flush:
            flush_cache(device)
        samples.append(_sample(fn, sync))
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


__all__ = [
    "MAX_RING",
    "RING_MAX_BYTES",
    "RING_MIN_BYTES",
    "Timing",
    "benchmark",
    "benchmark_ring",
    "device_name",
    "flush_cache",
    "last_level_cache_bytes",
    "ring_copies",
    "set_threads",
]
