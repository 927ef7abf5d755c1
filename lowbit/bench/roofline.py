"""The roofline of a linear layer: bytes it must move, flops it must do, and what this machine can deliver.

    machine = measure_machine("cpu")                      # bandwidth GB/s, peak GFLOP/s fp32/bf16, threads, L3
    nbytes = layer_bytes(4096, 4096, M=1, bits=4, group_size=128, scale_bytes=4, zero_bits=8)
    t = roofline_ms(nbytes, linear_flops(1, 4096, 4096), machine.bandwidth_gbs, machine.peak_gflops["float32"])

Model (ANCHORS.md, "Roofline"): T = max(bytes / BW, flops / P). Bytes are the minimum a kernel must read
or write once from memory: the packed weight, its scales and zeros, the activations and the output.
GB and GFLOP are decimal (1e9). Bandwidth is measured read-only (a streaming `sum` over a buffer much
larger than the last-level cache) because a GEMV's traffic is almost all reads; on CUDA it is a
device-to-device copy with read + write bytes counted.
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass, field, replace
from typing import Any

from lowbit.codegen.tune.timing import device_name, last_level_cache_bytes

MiB = 2**20
BANDWIDTH_BYTES = 512 * MiB  # 16x a 32 MiB L3: the sum streams from DRAM
PEAK_SHAPE = {"cpu": (512, 4096, 4096), "cuda": (8192, 8192, 8192)}  # (M, N, K) of the peak's F.linear


# the compute "dtype" of fp32 rows multiplied as three exact bf16 parts on the bf16 units (AMX-BF16 in the TVM
# backend, `_Emitter._amx_fp32_rows`): `Machine.peak` gives a third of the bfloat16 peak
BF16X3 = "bfloat16x3"
# the compute "dtypes" of 16-bit / fp32 rows carried as two / three int8 planes (`lowbit.ops.x16`: x16 and x24,
# each product two / three int8 ones on VNNI): `Machine.peak` gives a half / a third of the int8 peak
INT8X2, INT8X3 = "int8x2", "int8x3"


def _best_ms(fn: Any, device: str, repeats: int) -> float:
    """Shortest wall time of `fn()` in ms over `repeats` calls after one warm-up (synchronizing on CUDA).
    The roofline is a ceiling, so it takes the best sample: a median would fold the noise of a shared
    machine into the limit and let measured kernels "beat" it."""
    import torch

    sync = torch.cuda.synchronize if device.startswith("cuda") else (lambda: None)
    fn()
    sync()
    samples = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        sync()
        samples.append((time.perf_counter() - t0) * 1e3)
    return min(samples)


def bandwidth_read(device: str = "cpu", nbytes: int = BANDWIDTH_BYTES) -> tuple[Any, int]:
    """(fn, bytes it moves per call): the operation `measure_bandwidth` times. CPU: read-only `sum` over an fp32
    buffer of `nbytes`; CUDA: a device copy of `nbytes`, read + write counted. `lowbit bench gemm` times it in
    its rounds too (the `dram` rows), next to the kernels."""
    import torch

    n = nbytes // 4
    if device.startswith("cuda"):
        src = torch.ones(n, dtype=torch.float32, device=device)
        dst = torch.empty_like(src)
        return (lambda: dst.copy_(src)), 2 * n * 4
    return torch.ones(n, dtype=torch.float32).sum, n * 4


def bandwidth_bytes(device: str = "cpu", *, quick: bool = False) -> int:
    """The buffer `measure_machine` measures bandwidth over: CPU 512 MiB (16x the L3; `quick` 256), CUDA 2 GiB
    (`quick` 1 GiB)."""
    cuda = device.startswith("cuda")
    return (1024 if cuda else 256) * MiB if quick else (2048 * MiB if cuda else BANDWIDTH_BYTES)


def measure_bandwidth(device: str = "cpu", nbytes: int = BANDWIDTH_BYTES, repeats: int = 5) -> float:
    """Sustained memory bandwidth in GB/s (1e9 B/s), best of `repeats` calls of `bandwidth_read`
    (CPU: a read of 512 MiB >> L3 by default)."""
    fn, moved = bandwidth_read(device, nbytes)
    ms = _best_ms(fn, device, repeats)
    return moved / (ms * 1e-3) / 1e9


def measure_peak_flops(dtype: str = "float32", device: str = "cpu", n: int | None = None, repeats: int = 5) -> float:
    """Dense matmul throughput in GFLOP/s (1e9 flop/s), best of `repeats`, through F.linear(x, W) = x @ W^T,
    the layout a linear layer uses (torch's CPU bf16 `a @ b` can be far slower). Operands: n x n when `n` is
    given; else the shape of a big linear layer (PEAK_SHAPE: CPU x [512, 4096] W [4096, 4096], whose bf16
    rate is ~10% above that of 1024^2 squares; CUDA 8192^3).
    `dtype` is "float32", "bfloat16", "float16" or "int8" (torch._int_mm: int8 x int8 -> int32, oneDNN's VNNI
    kernel on x86; counted in GOP/s, the bound of the W4A8 rows' int8 main loop)."""
    import torch
    import torch.nn.functional as F

    kind = "cuda" if device.startswith("cuda") else "cpu"
    m, nn, k = (n, n, n) if n else PEAK_SHAPE[kind]
    if dtype == "int8":
        m = max(m, 32)  # _int_mm needs m > 16 and k, n multiples of 8
        xi = torch.randint(-127, 128, (m, k), dtype=torch.int8, device=device)
        if kind == "cuda":  # cuBLASLt's fast int8 path takes W [N, K] row-major (the "TN" form of a linear
            # layer): 952 against 127 TOP/s for a row-major [K, N] on an H200 (session 30)
            wi = torch.randint(-127, 128, (nn, k), dtype=torch.int8, device=device).t()
        else:
            wi = torch.randint(-127, 128, (k, nn), dtype=torch.int8, device=device)
        ms = _best_ms(lambda: torch._int_mm(xi, wi), device, repeats)
        return 2 * m * nn * k / (ms * 1e-3) / 1e9
    try:
        tdtype = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}[dtype]
    except KeyError:
        raise ValueError(
            f"measure_peak_flops: dtype {dtype!r}; use 'float32', 'bfloat16', 'float16' or 'int8'"
        ) from None
    x = torch.randn(m, k, device=device).to(tdtype)
    w = torch.randn(nn, k, device=device).to(tdtype)
    ms = _best_ms(lambda: F.linear(x, w), device, repeats)
    return 2 * m * nn * k / (ms * 1e-3) / 1e9


def linear_flops(M: int, N: int, K: int) -> int:
    """y[M, N] = x[M, K] @ W[N, K]^T: one multiply and one add per (m, n, k)."""
    return 2 * M * N * K


def layer_bytes(
    N: int,
    K: int,
    M: int = 1,
    *,
    bits: int = 4,
    group_size: int | None = 128,
    scale_bytes: int = 4,
    zero_bits: int = 0,
    act_bytes: int = 4,
    out_bytes: int = 4,
    per_word: int | None = None,
) -> int:
    """Bytes a linear layer must move at least once: packed weight + scales + zeros + activations + output.

    bits:       bits per weight element (32 or 16 for a dense weight, 4 for W4...)
    group_size: elements of K sharing a scale; None (or 0) for a dense weight (no scales, no zeros);
                -1 for one scale per output channel
    zero_bits:  bits per stored zero point (0: symmetric, no zeros; 8: uint8 zeros)
    per_word:   word-aligned packing (per_word elements in each 32-bit word along K, e.g. 10 for int3);
                None: dense bit packing (ceil(N*K*bits / 8) bytes)
    Example: W4 4096x4096 g128, fp32 scales, u8 zeros, M=1 fp32 in/out
             = 8388608 + 524288 + 131072 + 16384 + 16384 = 9076736.
    """
    if per_word:
        weight = N * math.ceil(K / per_word) * 4
    else:
        weight = math.ceil(N * K * bits / 8)
    groups = 0
    if group_size:
        groups = N if group_size == -1 else N * math.ceil(K / group_size)
    params = groups * scale_bytes + math.ceil(groups * zero_bits / 8)
    return weight + params + M * K * act_bytes + M * N * out_bytes


def roofline_ms(nbytes: float, flops: float, bandwidth_gbs: float, peak_gflops: float) -> float:
    """Lower bound on the time in ms: max(bytes / bandwidth, flops / peak) with GB/s and GFLOP/s."""
    return max(nbytes / (bandwidth_gbs * 1e9), flops / (peak_gflops * 1e9)) * 1e3


@dataclass(frozen=True)
class Machine:
    """What the roofline needs to know about the device a benchmark ran on, recorded in its output."""

    device: str  # "cpu" or "cuda:0"
    name: str  # device_name(): "AMD EPYC 9R14 (2 cores)"
    threads: int
    l3_bytes: int | None  # last-level cache (CPU); None where unknown or on CUDA
    bandwidth_gbs: float
    peak_gflops: dict[str, float] = field(default_factory=dict)  # "float32" / "bfloat16" -> GFLOP/s

    def peak(self, dtype: str) -> float:
        """Peak for the dtype a kernel computes in; float16 falls back to bfloat16's, unknown to fp32's;
        BF16X3 (fp32 operands as three bf16 parts, three bf16 products per fp32 one) a third of bfloat16's;
        INT8X2 / INT8X3 (x in two / three int8 planes) a half / a third of int8's."""
        if dtype == BF16X3 and "bfloat16" in self.peak_gflops:
            return self.peak_gflops["bfloat16"] / 3
        if dtype in (INT8X2, INT8X3) and "int8" in self.peak_gflops:
            return self.peak_gflops["int8"] / (2 if dtype == INT8X2 else 3)
        if dtype in self.peak_gflops:
            return self.peak_gflops[dtype]
        if dtype == "float16" and "bfloat16" in self.peak_gflops:
            return self.peak_gflops["bfloat16"]
        return self.peak_gflops.get("float32") or max(self.peak_gflops.values())

    def ceiling(self, other: Machine) -> Machine:
        """The better bandwidth and peaks of two measurements of the same machine."""
        peaks = {k: max(v, other.peak_gflops.get(k, v)) for k, v in self.peak_gflops.items()}
        return replace(self, bandwidth_gbs=max(self.bandwidth_gbs, other.bandwidth_gbs), peak_gflops=peaks)

    def header(self) -> str:
        l3 = f"{self.l3_bytes / MiB:.0f} MiB" if self.l3_bytes else "n/a"
        peaks = ", ".join(f"{k} {v:.0f}" for k, v in self.peak_gflops.items())
        return (
            f"device {self.name} [{self.device}] | threads {self.threads} | L3 {l3} | "
            f"bandwidth {self.bandwidth_gbs:.1f} GB/s | peak GFLOP/s: {peaks}"
        )

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def measure_machine(device: str = "cpu", threads: int = 1, *, quick: bool = False) -> Machine:
    """Measure bandwidth and matmul peaks (fp32, bf16 and int8, on CUDA too: fp32 bounds the torch_fp32 rows).
    `quick` uses a 256 MiB buffer and smaller matmuls (~1 s on CPU) for smoke runs; the numbers are then
    rougher."""
    cuda = device.startswith("cuda")
    nbytes = bandwidth_bytes(device, quick=quick)
    n = (4096 if cuda else 1024) if quick else None  # quick: squares, ~5x cheaper on CPU
    dtypes = ["float32", "bfloat16", "int8"]  # a missing one would fall back to the largest peak (`Machine.peak`)
    return Machine(
        device=device,
        name=device_name(device),
        threads=threads,
        l3_bytes=None if cuda else last_level_cache_bytes(),
        bandwidth_gbs=measure_bandwidth(device, nbytes),
        peak_gflops=_peaks(dtypes, device, n),
    )


def _peaks(dtypes: list[str], device: str, n: int | None) -> dict[str, float]:
    peaks = {}
    for d in dtypes:
        try:
            peaks[d] = measure_peak_flops(d, device, n)
        except RuntimeError:  # no int8 matmul in this torch build / on this device: that peak stays unmeasured
            if d != "int8":
                raise
    return peaks


__all__ = [
    "Machine",
    "layer_bytes",
    "linear_flops",
    "measure_bandwidth",
    "measure_machine",
    "measure_peak_flops",
    "roofline_ms",
]
