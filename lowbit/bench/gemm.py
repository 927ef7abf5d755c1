"""`lowbit bench gemm`: quantized linear layers against torch, side by side in one run, with the roofline.

    report = run_report(Ms=(1, 16), layers=((4096, 4096),), dtypes=("int4",))
    print(format_table(report))

For every layer (N, K) and batch M it times, in the same process and one after another:
  torch_fp32     F.linear with a dense fp32 weight [N, K]
  torch_bf16     F.linear with bf16 activations and weight
  torch_dequant  the packed weight dequantized in torch on every call, then fp32 F.linear (lowbit.bench.naive);
                 for `naive_dtypes` (default: the first weight dtype), since its cost hardly depends on the dtype
  lowbit         lowbit.ops.quantized_linear for each weight dtype and each backend asked for (activations:
                 fp32 on the CPU, fp16 on a GPU)
  lowbit_bf16    on the CPU (tvm), every weight dtype: the same with bfloat16 activations (as torch_bf16's):
                 4-bit codes run the pair dot (vdpbf16ps where the CPU has AVX-512 BF16, the GEMV at M <= 16
                 and its GEMM form above, AMX-BF16 tiles where it has AMX), other widths the decoded GEMM form
                 (each tile's codes decoded once, then AMX-BF16 tiles or FMA blocks) from a few rows on
  lowbit_a8      on the CPU (tvm), 4-bit int4/uint4 weights: quantized_linear(kernel="quantized_gemv_a8"),
                 the W4A8 GEMV with int8 activations (quantized per row and group in the timed call; M > 16 in
                 row tiles of 16, as a prefill with decode_activations int8 runs); its error vs
                 x @ dequant(W)^T includes that rounding (~0.7%)
  lowbit_fma     with triton (a GPU's backend), M <= FMA_MAX_M: quantized_linear(kernel="quantized_gemv_fma"), the
                 dot-free GEMV (lowbit.kernels.gemv_fma: CUDA-core FMAs into register tiles, no tensor-core operand
                 staging) on the same fp16 x and weight as the lowbit rows, side by side with the default GEMV
  lowbit_w4a8    the QoQ W4A8 weight (`quantize(..., "uint4", scheme="w4a8_group")`: uint4 codes, int8 group
                 scales, per-channel fp16 scales) on x quantized per token inside the timed call: with triton (a
                 GPU's backend) fp16 x and int8 tensor-core dots, the Ms including 1024 and 4096 (`CUDA_MS`); with
                 tvm fp32 x (quantize_tokens_int8) and the a8 GEMV's u8·i8 dots at every M
  stream         with cache "rotate", M <= STREAM_MAX_M: torch `sum` over the bytes of the int4 weight (a ring of
                 buffers), in the same rounds: the rate a plain read got right then, beside the roofline's
                 bandwidth (the best of two measurements, at the run's start and end)
  dram           with cache "rotate", M <= STREAM_MAX_M: the roofline's own bandwidth measurement
                 (`roofline.bandwidth_read`: a 512 MiB `sum` on a CPU) in the same rounds: the M = 1 roofline goal
                 is judged round by round against it (`report.paired_roofline`), since a shared VM's memory rate
                 moves by up to 2x between the run's start, its rows and its end
Timing (`cache`): "rotate" (default): every method calls a ring of copies of its weight in turn
(`lowbit.codegen.tune.timing.benchmark_ring`, `ring_copies`: between two uses of one copy the others move
>= 256 MiB on a CPU (`RING_MIN_BYTES`: 2x the reported L3 left part of a ring in a VM's caches) and >= 2x the
L2 on a GPU), so each call streams its weight from DRAM behind the others, as a decode step meets a layer's
weight after the other layers (torch's dequantize-then-matmul, bound by its dequantization, rotates 2
copies); one untimed pass over the ring (compiles, packs and re-tiles each copy), untimed calls for
RING_WARMUP_MS after it, then >= `repeats` samples; the rows of one (layer, M) in ROUNDS alternating rounds
(`_Bench.measure`), each round's median kept (`Row.round_ms`). "flush": one weight, each sample after a
read-modify-write of a buffer twice the L3 size (`benchmark(flush=True)`; it leaves the cache dirty and the
TLBs cold, so a 9 MB layer's read is slower than the stream the roofline's bandwidth measures). "hot": no
eviction (a 4096^2 W4 layer is 9 MB and is then served from the 32 MiB L3). Threads are set once, first. On a
GPU each ring is captured in one CUDA graph and a sample is a replay's time over its calls
(`benchmark_ring(graph=True)`): no host launch cost in any row.
Each lowbit result is checked against x @ dequant(W)^T from the weight's reference dequantization
(`rel_error`); a non-finite output raises, a relative error above `TOLERANCE` marks the row MISMATCH.
"""

from __future__ import annotations

import dataclasses
import functools
import importlib
import math
import platform
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from lowbit.bench.roofline import (
    BF16X3,
    INT8X2,
    INT8X3,
    Machine,
    bandwidth_bytes,
    bandwidth_read,
    layer_bytes,
    linear_flops,
    measure_machine,
    roofline_ms,
)
from lowbit.codegen.tune.timing import benchmark, benchmark_ring, ring_copies, set_threads
from lowbit.dtypes import dtype as lookup_dtype

DTYPES = ("int4", "int3", "int2", "int8", "fp6_e3m2", "fp4_e2m1")
MS = (1, 4, 16, 64, 256)
CUDA_MS = (*MS, 1024, 4096)  # the GPU's W4A8 goal is at M >= 1024
CPU_LAYERS = ((4096, 4096), (11008, 4096))  # Llama-2-7B q/o/k/v and up/gate
CUDA_LAYERS = ((8192, 8192), (28672, 8192))  # Llama-3-70B q/o and up/gate
QUICK_LAYERS = ((2048, 2048),)
QUICK_MS = (1, 16)
QUICK_REPEATS = 3
# cache "rotate": the rows of one (layer, M) are timed in ROUNDS alternating rounds (every row once per round,
# each round warmed up anew), their samples pooled, so that a change of the shared VM's speed over seconds
# moves every row of the comparison, not one: 4096² int4 M = 1 on the 2-core VM timed one row after another
# read 0.19-0.41 ms in runs minutes apart while torch's fp32 row stayed within 15% (2.82-3.25 ms). A row
# whose samples passed SLOW_ROUND_MS (torch's dequantize-then-matmul at large M after one round) takes no more
# rounds; the 33-copy ring of a 4096² W4 weight at M = 256 (10-20 ms a call) takes 0.3-0.7 s a round, so 3-7.
# Seven, not three (session 52): over three rounds of 4096² M = 1 the int3 x16 row read 0.26 / 0.45 / 0.21 ms
# against int4's 0.27 / 0.32 / 0.27, ratios 0.97 / 1.43 / 0.78, whose median (0.97) followed the minute
# (`report.paired_ratio`); the cheap rows (a ring pass of 10-30 ms) pay ~50 ms a round each.
ROUNDS = 7
SLOW_ROUND_MS = 2000.0
# "reference" only when asked for explicitly; on a GPU only triton: lowbit's TVM kernels are built for the CPU
FAST_BACKENDS = {"cpu": ("tvm",), "cuda": ("triton",)}
TOLERANCE = 1e-2  # relative Frobenius error vs x @ dequant(W)^T; fp16 activations on CUDA round at ~1e-3
TORCH = "torch"
STREAM = "stream"  # a plain read of the int4 weight's bytes in the same rounds (`_Bench.stream_row`)
STREAM_MAX_M = 16  # stream and dram rows up to this M, where a W4 layer's time is its weight's read
DRAM = "dram"  # the roofline's bandwidth measurement in the same rounds (`_Bench.dram_row`)
A8 = "quantized_gemv_a8"  # the CPU decode GEMV with int8 activations (lowbit.kernels.gemv_a8): lowbit_a8 rows
FMA = "quantized_gemv_fma"  # the dot-free GEMV (lowbit.kernels.gemv_fma): lowbit_fma rows on a GPU
FMA_MAX_M = 4  # its tiles hold up to 4 rows; decode's batch sizes where a GEMV's time is its weight's read
A8_TOLERANCE = 2e-2  # lowbit_a8: plus the int8 rounding of x (~0.7% relative for Gaussian x, groups of 128)
W4A8 = "lowbit_w4a8"  # the QoQ w4a8_group weight, int8 x per token (a GPU kernel with triton, the a8 GEMV with tvm)
CACHE_MODES = {
    "rotate": "a ring of weight copies moving >= 256 MiB (GPU: 2x L2) between two uses of one (decode's layers)",
    "flush": "read-modify-write of 2x L3 before every sample",
    "hot": "none (hot caches)",
}


@dataclass(frozen=True)
class _Pending:
    """A row whose calls are built (compiled, checked, ring made) and not yet timed."""

    row: Row
    fns: list[Callable[[], Any]]


class BenchError(RuntimeError):
    """A benchmark that cannot run as asked, or a kernel whose output is not finite."""


@dataclass(frozen=True)
class Row:
    """One (layer, M, method) measurement. Times in ms; speedups are t(torch) / t(this row), same run."""

    M: int
    N: int
    K: int
    method: str  # torch_fp32 | torch_bf16 | torch_dequant | lowbit | lowbit_bf16 | lowbit_a8 | lowbit_fma | ...
    dtype: str  # weight dtype: float32, bfloat16, int4, fp6_e3m2, ...
    backend: str  # torch | tvm | triton | reference
    median_ms: float
    min_ms: float
    max_ms: float
    bytes: int  # the roofline's bytes: stored weight + scales + zeros + activations + output
    roofline_ms: float
    roofline_fraction: float = math.nan  # roofline_ms / median_ms: 1.0 = at the limit
    speedup_fp32: float = math.nan
    speedup_bf16: float = math.nan
    rel_error: float | None = None  # lowbit and torch_dequant rows: vs x @ dequant(W)^T
    note: str = ""
    peak_dtype: str = "float32"  # the dtype whose matmul peak bounds this row's compute
    # cache "rotate": the median of each round's samples (`_Bench.measure`), in round order; rows of one
    # (layer, M) share their rounds, so two of them compare round by round (`report.paired_ratio`)
    round_ms: tuple[float, ...] = ()


@dataclass
class Report:
    machine: Machine
    rows: list[Row] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    config: dict[str, Any] = field(default_factory=dict)

    @property
    def mismatches(self) -> list[Row]:
        return [r for r in self.rows if "MISMATCH" in r.note]


def default_device() -> str:
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def default_layers(device: str) -> tuple[tuple[int, int], ...]:
    return CUDA_LAYERS if device.startswith("cuda") else CPU_LAYERS


def _relative_error(y: Any, ref: Any) -> float:
    import torch

    y64, ref64 = torch.as_tensor(y).double().cpu(), torch.as_tensor(ref).double().cpu()
    return float((y64 - ref64).norm() / ref64.norm().clamp_min(1e-30))


# -- lowbit.ops integration (imported lazily: the torch rows run without it) --------------------------------


def _load_ops() -> Any | None:
    try:
        return importlib.import_module("lowbit.ops")
    except ImportError:
        return None


def _reference_weight(ops: Any, qw: Any) -> Any | None:
    """The float [N, K] weight `qw` stands for, from lowbit's NumPy dequantization (`qw.dequantize()` or
    `ops.dequantize(qw)`), or None when neither exists."""
    if callable(getattr(qw, "dequantize", None)):
        return qw.dequantize()
    if callable(getattr(ops, "dequantize", None)):
        return ops.dequantize(qw)
    return None


def _stored_bytes(qw: Any) -> int | None:
    """Bytes of the arrays a quantized weight stores (words, scales, zeros...), if it exposes them."""
    total = 0
    for name in ("words", "scales", "zeros", "channel_scales", "scales2", "zeros2"):
        a = getattr(qw, name, None)
        if a is not None and hasattr(a, "nbytes"):
            total += int(a.nbytes)
        elif a is not None and hasattr(a, "element_size"):
            total += int(a.numel() * a.element_size())
    return total or None


# -- the run ----------------------------------------------------------------------------------------------------


@dataclass
class _Case:
    """Everything timed for one (N, K): weights in every form, built once per layer."""

    N: int
    K: int
    w32: Any
    w16: Any
    naive: dict[str, Any]
    lowbit: dict[str, Any]  # dtype -> QuantizedWeight
    lowbit_ref: dict[str, Any]  # dtype -> float [N, K] reference weight (or None)
    w4a8: Any = None  # with triton or tvm: the w4a8_group QuantizedWeight (uint4, group_size) of the same weight
    w4a8_ref: Any = None  # its float [N, K] reference weight
    rings: dict[str, list[Any]] = field(default_factory=dict)  # cache "rotate": key -> the weight's copies


def default_ms(device: str) -> tuple[int, ...]:
    return CUDA_MS if device.startswith("cuda") else MS


def run_report(
    Ms: Sequence[int] | None = None,
    layers: Sequence[tuple[int, int]] | None = None,
    dtypes: Sequence[str] = DTYPES,
    group_size: int = 128,
    backends: Sequence[str] | None = None,
    repeats: int = 5,
    quick: bool = False,
    *,
    threads: int | None = None,
    tune: bool = False,
    flush: bool = True,
    cache: str = "rotate",
    naive_dtypes: Sequence[str] | None = None,
    device: str | None = None,
    machine: Machine | None = None,
    log: Callable[[str], None] | None = None,
) -> Report:
    """Run the benchmark (see the module docstring) and return the machine facts, rows and notes.
    `quick`: one 2048x2048 layer, M in {1, 16}, 3 repeats, quick machine measurements, unless the
    corresponding argument is given explicitly (pass layers/Ms/repeats to override). Ms default: `MS` on the
    CPU, `CUDA_MS` on a GPU. `cache`: "rotate",
    "flush" or "hot" (the module docstring); flush=False is cache="hot"."""
    import torch

    if cache not in CACHE_MODES:
        raise BenchError(f"cache={cache!r} is not a cache mode; use one of {sorted(CACHE_MODES)}")
    cache = cache if flush else "hot"

    n_threads = set_threads(threads)  # before torch runs anything and before TVM starts its pool
    device = device or default_device()
    if layers is None:
        layers = QUICK_LAYERS if quick else default_layers(device)
    if Ms is None:
        Ms = QUICK_MS if quick else default_ms(device)
    if quick and repeats == 5:
        repeats = QUICK_REPEATS
    naive_dtypes = tuple(dtypes[:1]) if naive_dtypes is None else tuple(naive_dtypes)
    for N, K in layers:
        if K % group_size:
            raise BenchError(f"group_size {group_size} does not divide K={K} of layer {N}x{K}; use 128, 64 or 32")
    say = log or (lambda s: None)
    measured = machine is None
    machine = machine or measure_machine(device, n_threads, quick=quick)
    say(f"# {machine.header()}")
    report = Report(machine)
    report.config = {
        "Ms": list(Ms),
        "layers": [list(layer) for layer in layers],
        "dtypes": list(dtypes),
        "naive_dtypes": list(naive_dtypes),
        "group_size": group_size,
        "repeats": repeats,
        "warmup": 1,
        "cache": cache,
        "flush": CACHE_MODES[cache],
        "tune": tune,
        "torch": torch.__version__,
        "python": platform.python_version(),
    }

    ops = _load_ops()
    chosen = _choose_backends(backends, device, ops, report.notes)
    report.config["backends"] = list(chosen)
    bench = _Bench(machine, device, repeats, cache, tune, group_size, ops, chosen, report.notes, say, quick)
    gen = torch.Generator().manual_seed(0)
    for N, K in layers:
        say(f"preparing layer {N}x{K}")
        # the W4A8 (QoQ) rows: a GPU kernel with triton (the interpreter when asked for on a CPU); with tvm, the a8
        # GEMV at every M (`lowbit.ops.linear.w4a8_runs_a8`)
        qoq = "triton" in chosen or "tvm" in chosen
        case = _prepare(N, K, dtypes, naive_dtypes, group_size, ops if chosen else None, device, gen, say, qoq)
        for M in Ms:
            x = torch.randn(M, K, generator=gen).to(device)  # x: [M, K] fp32
            report.rows.extend(_finish(bench.rows(case, x)))
        del case  # free this layer's weights before the next one is built
    if measured:  # ceilings = the best of a measurement before and after the rows (a shared VM's load varies)
        report.machine = machine.ceiling(measure_machine(device, n_threads, quick=quick))
        report.notes.append(
            "roofline ceilings: best of the measurements before and after the timings; at start: "
            + machine.header().split(" | ", 3)[-1]
        )
        # a ceiling is at least what a plain read sustained in the run: a stream or dram row's median (a stream
        # row's fastest single sample of 0.2-0.7 ms is an outlier: 74 GB/s once, against medians of 34-60)
        reads = [r for r in report.rows if r.method in (STREAM, DRAM)]
        streamed = max((r.bytes / r.median_ms / 1e6 for r in reads), default=0.0)
        if streamed > report.machine.bandwidth_gbs:
            report.notes.append(
                f"roofline bandwidth raised from {report.machine.bandwidth_gbs:.1f} to {streamed:.1f} GB/s: the "
                "fastest stream or dram row (median)"
            )
            report.machine = dataclasses.replace(report.machine, bandwidth_gbs=streamed)
    report.rows = [_with_roofline(r, report.machine) for r in report.rows]
    return report


def run(
    Ms: Sequence[int] | None = None,
    layers: Sequence[tuple[int, int]] | None = None,
    dtypes: Sequence[str] = DTYPES,
    group_size: int = 128,
    backends: Sequence[str] | None = None,
    repeats: int = 5,
    quick: bool = False,
    **kwargs: Any,
) -> list[Row]:
    """`run_report(...).rows`: the rows only."""
    return run_report(Ms, layers, dtypes, group_size, backends, repeats, quick, **kwargs).rows


def _choose_backends(asked: Sequence[str] | None, device: str, ops: Any, notes: list[str]) -> tuple[str, ...]:
    from lowbit.codegen.backend import available_backends

    kind = "cuda" if device.startswith("cuda") else "cpu"
    if ops is None:
        notes.append("lowbit.ops not available (not installed or not written yet): no lowbit rows, torch rows only")
        return ()
    have = available_backends()
    wanted = tuple(asked) if asked is not None else FAST_BACKENDS[kind]
    chosen = []
    for b in wanted:
        if b not in have:
            if asked is not None:
                notes.append(f"backend {b!r} skipped: its toolchain is not installed here (available: {have})")
            continue
        if b == "triton" and kind == "cpu":  # asked for: its rows are checked, their times mean nothing
            notes.append("triton on the CPU runs in the Triton interpreter: its rows check numerics, not speed")
        chosen.append(b)
    if kind == "cpu" and asked is None:
        notes.append("triton skipped on CPU: it would run in the Triton interpreter, far too slow to benchmark")
    if kind == "cuda" and asked is None:
        notes.append(
            "tvm not run on the GPU by default: its CUDA lowering is a plain SIMT form (scalar FMAs over shared-memory"
            " tiles, no tensor cores); the Triton kernels are the GPU path (--backends triton,tvm adds it)"
        )
    return tuple(chosen)


def _prepare(
    N: int,
    K: int,
    dtypes: Sequence[str],
    naive_dtypes: Sequence[str],
    group_size: int,
    ops: Any | None,
    device: str,
    gen: Any,
    say: Callable[[str], None],
    qoq: bool = False,
) -> _Case:
    import torch

    from lowbit.bench.naive import pack_naive

    w = torch.randn(N, K, generator=gen) * 0.02  # [N, K] like an nn.Linear weight
    naive = {dt: _to_device(pack_naive(w, dt, group_size), device) for dt in naive_dtypes}
    lowbit: dict[str, Any] = {}
    lowbit_ref: dict[str, Any] = {}
    if ops is not None:
        for dt in dtypes:
            say(f"  quantizing {N}x{K} to {dt} with lowbit.ops.quantize")
            qw = ops.quantize(w.numpy(), dt, group_size)
            lowbit[dt] = _to_device(qw, device)
            ref = _reference_weight(ops, qw)
            lowbit_ref[dt] = None if ref is None else torch.as_tensor(np.asarray(ref, dtype=np.float32))
    case = _Case(N, K, w.to(device), w.to(torch.bfloat16).to(device), naive, lowbit, lowbit_ref)
    if ops is not None and qoq:
        say(f"  quantizing {N}x{K} to uint4 w4a8_group (QoQ) with lowbit.ops.quantize")
        case.w4a8 = ops.quantize(w.numpy(), "uint4", group_size, scheme="w4a8_group")
        case.w4a8_ref = torch.as_tensor(np.asarray(case.w4a8.dequantize(), dtype=np.float32))
    return case


def _to_device(obj: Any, device: str) -> Any:
    """Move a dataclass of tensors to `device` (no-op on CPU; lowbit.ops weights are moved by ops itself)."""
    if device == "cpu" or not dataclasses.is_dataclass(obj) or isinstance(obj, type):
        return obj
    moved = {f.name: getattr(obj, f.name) for f in dataclasses.fields(obj)}
    for k, v in moved.items():
        if hasattr(v, "to") and hasattr(v, "device"):
            moved[k] = v.to(device)
    return dataclasses.replace(obj, **moved)


@dataclass
class _Bench:
    """Run-wide settings; `rows(case, x)` times every method for one layer and one x [M, K]."""

    machine: Machine
    device: str
    repeats: int
    cache: str  # a CACHE_MODES key
    tune: bool
    group_size: int
    ops: Any
    backends: tuple[str, ...]
    notes: list[str]
    say: Callable[[str], None]
    quick: bool = False  # the dram rows' buffer: `bandwidth_bytes(device, quick=quick)`, as `measure_machine`'s
    _dram: tuple[Callable[[], Any], int] | None = None  # made by the first `dram_row`, kept for the run

    def measure(self, pending: list[_Pending]) -> list[Row]:
        """Time the rows of one (layer, M): with cache "rotate", ROUNDS rounds over all of them, each round
        starting further along the rows (samples pooled per row; the first round warms each ring up with a
        pass, later ones for RING_WARMUP_MS only);
        "flush" / "hot": each row once (`benchmark`)."""
        samples: list[list[float]] = [[] for _ in pending]
        per_round: list[list[float]] = [[] for _ in pending]  # each round's median
        rounds = ROUNDS if self.cache == "rotate" else 1
        n = len(pending)
        order = _timing_order([p.row for p in pending])
        for r in range(rounds):
            # round r starts r/rounds of the way along the rows: no row always runs right after torch's
            start = r * -(-n // rounds) % max(n, 1)
            for i in [*order[start:], *order[:start]]:
                p, got = pending[i], samples[i]
                if r and sum(got) > SLOW_ROUND_MS:
                    continue
                if self.cache == "rotate":
                    cuda = self.device.startswith("cuda")
                    warm = 1 if r == 0 else 0
                    t = benchmark_ring(p.fns, repeats=self.repeats, warmup=warm, device=self.device, graph=cuda)
                    if cuda and not t.graphed:
                        what = f"{p.row.method} {p.row.dtype} M={p.row.M} {p.row.N}x{p.row.K}"
                        self.notes.append(f"{what}: not capturable in a CUDA graph; eager calls timed (launch cost in)")
                else:
                    t = benchmark(
                        p.fns[0], repeats=self.repeats, warmup=1, flush=self.cache == "flush", device=self.device
                    )
                got.extend(t.samples)
                per_round[i].append(float(np.median(t.samples)))
        rows = []
        for p, got, by_round in zip(pending, samples, per_round):
            row = dataclasses.replace(
                p.row, median_ms=float(np.median(got)), min_ms=min(got), max_ms=max(got), round_ms=tuple(by_round)
            )
            self.say(f"  M={row.M:<4} {row.method:<14}{row.dtype:<10}{row.backend:<10}{row.median_ms:10.3f} ms")
            rows.append(row)
        return rows

    def copies(self, case: _Case, key: str, weight: Any, nbytes: int, most: int | None = None) -> list[Any]:
        """`weight` and, with cache "rotate", its copies (`ring_copies` in all, at most `most`), made once per
        layer and key."""
        if self.cache != "rotate":
            return [weight]
        ring = case.rings.get(key)
        if ring is None:
            n = ring_copies(nbytes, self.device) if most is None else min(most, ring_copies(nbytes, self.device))
            size = _held_bytes(weight)
            free = _free_host_bytes() if not self.device.startswith("cuda") else None
            if free is not None and size and n > 1 and (n - 1) * size > free - RING_RESERVE_BYTES:
                fit = max(1, 1 + (free - RING_RESERVE_BYTES) // size)
                self.notes.append(
                    f"{key} {case.N}x{case.K}: ring cut from {n} to {fit} copies of {size / 2**20:.1f} MiB "
                    f"({free / 2**30:.1f} GiB of memory available): its rows may be partly served from caches"
                )
                n = fit
            ring = case.rings[key] = [weight] + [_copy(weight) for _ in range(n - 1)]
        return ring

    def row(self, case: _Case, M: int, method: str, dt: str, backend: str, fns: Sequence[Callable[[], Any]],
            nbytes: int, peak_dtype: str, rel: float | None = None, note: str = "") -> _Pending:  # fmt: skip
        """A row to time (`measure`), its times not yet known."""
        row = Row(M, case.N, case.K, method, dt, backend, math.nan, math.nan, math.nan, nbytes, math.nan, math.nan,
                  rel_error=rel, note=note, peak_dtype=peak_dtype)  # fmt: skip
        return _Pending(row, list(fns))

    def rows(self, case: _Case, x32: Any) -> list[Row]:
        import torch
        import torch.nn.functional as F

        from lowbit.bench.naive import naive_dequantize, naive_linear

        M, N, K = x32.shape[0], case.N, case.K
        x16 = x32.to(torch.bfloat16)
        fp32 = layer_bytes(N, K, M, bits=32, group_size=None, act_bytes=4, out_bytes=4)
        bf16 = layer_bytes(N, K, M, bits=16, group_size=None, act_bytes=2, out_bytes=2)
        w32s = self.copies(case, "torch_fp32", case.w32, N * K * 4)
        w16s = self.copies(case, "torch_bf16", case.w16, N * K * 2)
        rows = [
            self.row(case, M, "torch_fp32", "float32", TORCH, [functools.partial(F.linear, x32, w) for w in w32s],
                     fp32, "float32"),
            self.row(case, M, "torch_bf16", "bfloat16", TORCH, [functools.partial(F.linear, x16, w) for w in w16s],
                     bf16, "bfloat16"),
        ]  # fmt: skip
        if self.cache == "rotate" and M <= STREAM_MAX_M:
            rows.extend((self.stream_row(case, M), self.dram_row(case, M)))
        for dt, packed in case.naive.items():
            rel = _relative_error(naive_linear(x32, packed), x32.double() @ naive_dequantize(packed).double().T)
            nbytes = packed.nbytes + M * K * 4 + M * N * 4
            # two copies: this row is bound by torch's dequantization (~130 ms for a 9 MB 4096^2 layer), not by
            # its read, and a full ring's pass would take seconds
            ring = self.copies(case, f"naive_{dt}", packed, nbytes, most=2)
            fns = [functools.partial(naive_linear, x32, p) for p in ring]
            rows.append(self.row(case, M, "torch_dequant", dt, TORCH, fns, nbytes, "float32", rel))
        cuda = self.device.startswith("cuda")
        x = x32.to(torch.float16) if cuda else x32  # lowbit rows: fp16 activations on GPU, fp32 on CPU
        for dt, qw in case.lowbit.items():
            for backend in self.backends:
                row = self.lowbit_row(case, x, dt, qw, backend)
                if row is not None:
                    rows.append(row)
                if not cuda and backend == "tvm":
                    row = self.lowbit_row(case, x16, dt, qw, backend, method="lowbit_bf16")
                    if row is not None:
                        rows.append(row)
                if backend == "triton" and M <= FMA_MAX_M:  # the GPU's backend (the interpreter if asked)
                    row = self.lowbit_row(case, x, dt, qw, backend, kernel=FMA, method="lowbit_fma")
                    if row is not None:
                        rows.append(row)
                if not cuda and backend == "tvm" and _a8_ineligible(qw) is None:
                    row = self.lowbit_row(case, x, dt, qw, backend, kernel=A8)
                    if row is not None:
                        rows.append(row)
        for backend in self.backends if case.w4a8 is not None else ():
            row = self.lowbit_row(case, x, "uint4", case.w4a8, backend, method=W4A8)
            if row is not None:
                rows.append(row)
        return self.measure(rows)

    def stream_row(self, case: _Case, M: int) -> _Pending:
        """The `stream` row: torch `sum` over a ring of buffers of the int4 g128 weight's bytes (fp16 scales),
        timed in the same rounds as the kernels, so the memory rate the machine gives a plain read right then
        stands next to them (the roofline's bandwidth is the best of two measurements at the run's start and
        end, and a shared VM's memory rate moves by up to 2x within a run)."""
        import torch

        nbytes = layer_bytes(case.N, case.K, 0, bits=4, group_size=self.group_size, scale_bytes=2)
        buf = torch.ones(nbytes // 4, device=self.device)
        fns = [b.sum for b in self.copies(case, "stream", buf, nbytes)]
        note = "torch sum over the int4 weight's bytes, side by side"
        return self.row(case, M, STREAM, "float32", TORCH, fns, nbytes, "float32", note=note)

    def dram_row(self, case: _Case, M: int) -> _Pending:
        """The `dram` row: the roofline's bandwidth measurement (`bandwidth_read`) timed in the same rounds as the
        kernels; `report.paired_roofline` judges a row's roofline fraction round by round against it."""
        if self._dram is None:
            self._dram = bandwidth_read(self.device, bandwidth_bytes(self.device, quick=self.quick))
        fn, nbytes = self._dram
        note = "the roofline's bandwidth measurement, side by side"
        return self.row(case, M, DRAM, "float32", TORCH, [fn], nbytes, "float32", note=note)

    def lowbit_row(
        self, case: _Case, x: Any, dt: str, qw: Any, backend: str, kernel: str | None = None, method: str = "lowbit"
    ) -> _Pending | None:
        """`quantized_linear` by its own rule, or (kernel=A8) the CPU decode GEMV with int8 activations
        (method lowbit_a8: the activations are quantized per row and group inside the timed call), or
        (kernel=FMA, method lowbit_fma) the dot-free GEMV; method W4A8: the GPU's w4a8_group weight (its
        activations quantized per token inside the timed call)."""
        M, N, K = x.shape[0], case.N, case.K
        extra = {} if kernel is None else {"kernel": kernel}
        fn = functools.partial(self.ops.quantized_linear, x, qw, backend=backend, tune=self.tune, **extra)
        try:
            y = fn()  # compiles (and tunes, with tune=True) outside the timed samples
        except Exception as e:  # a backend that cannot run this dtype/shape: a note, not the end of the run
            self.notes.append(f"lowbit {dt} on {backend} at M={M} {N}x{K} failed: {type(e).__name__}: {e}")
            return None
        if not bool(np.isfinite(_to_numpy(y)).all()):
            raise BenchError(f"lowbit.ops.quantized_linear({dt}, backend={backend!r}) gave NaN/inf at M={M} {N}x{K}")
        qoq = method == W4A8
        w_ref = case.w4a8_ref if qoq else case.lowbit_ref[dt]
        # the fp64 reference where x lies (a GPU's fp64 GEMM: seconds less per large-M row than the host's)
        rel = None if w_ref is None else _relative_error(y, x.double() @ w_ref.to(x.device).double().T)
        if rel is None:
            note = "unchecked: no reference dequantization"
        else:
            tol = A8_TOLERANCE if kernel == A8 or qoq else TOLERANCE
            note = "" if rel <= tol else f"MISMATCH rel err {rel:.2e} > {tol:g}"
        stored = _stored_bytes(qw)
        if stored is None:  # dense bit packing, fp32 scales, uint8 zeros for integer dtypes
            d = lookup_dtype(dt)
            zero_bits = 0 if d.is_float else 8
            stored = layer_bytes(N, K, 0, bits=d.bits, group_size=self.group_size, zero_bits=zero_bits)
        elem = x.element_size()
        act = str(x.dtype).removeprefix("torch.")  # the roofline's compute peak: this dtype's matmul rate
        method = "lowbit_a8" if kernel == A8 else method
        if kernel == A8 or qoq:
            act = "int8"  # the a8 main loop multiplies int8 codes: its compute bound is the int8 peak
        elif act == "float32" and _runs_tdpbf16ps(qw, M):
            act = BF16X3  # fp32 x as three bf16 parts on AMX-BF16: a third of the bf16 peak bounds it
        elif _runs_x16(qw, M):  # x in two (16-bit) or three (fp32) int8 planes on VNNI: that share of the int8 peak
            act = INT8X3 if act == "float32" else INT8X2
        fns = [
            functools.partial(self.ops.quantized_linear, x, w, backend=backend, tune=self.tune, **extra)
            for w in self.copies(case, f"{method}_{dt}", qw, stored)
        ]
        return self.row(case, M, method, dt, backend, fns, stored + M * K * elem + M * N * elem, act, rel, note)


# memory a ring leaves free for the rest of the run (the next rows' rings, activations, outputs, TVM builds)
RING_RESERVE_BYTES = 4 * 2**30


def _free_host_bytes() -> int | None:
    """Memory available to this process (psutil, which the TVM extra installs), None when unknown."""
    try:
        import psutil
    except ImportError:
        return None
    return int(psutil.virtual_memory().available)


def _held_bytes(weight: Any) -> int:
    """The bytes `_copy(weight)` allocates: a tensor's, or the arrays and tensors of a dataclass's fields."""
    if hasattr(weight, "clone"):
        parts = [weight]
    elif dataclasses.is_dataclass(weight) and not isinstance(weight, type):
        parts = [getattr(weight, f.name) for f in dataclasses.fields(weight)]
    else:
        return 0
    total = 0
    for v in parts:
        if isinstance(v, np.ndarray):
            total += v.nbytes
        elif hasattr(v, "element_size") and hasattr(v, "numel"):
            total += v.element_size() * v.numel()
    return total


def _copy(weight: Any) -> Any:
    """A copy of a weight in its own memory: a torch tensor cloned, a dataclass (QuantizedWeight, the naive
    packing) rebuilt with its arrays and tensors copied (so nothing a kernel cached on the original, such as a
    re-tiled copy or a bound launcher, comes along)."""
    if hasattr(weight, "clone"):
        return weight.clone()
    if dataclasses.is_dataclass(weight) and not isinstance(weight, type):
        fields = {}
        for f in dataclasses.fields(weight):
            v = getattr(weight, f.name)
            fields[f.name] = v.clone() if hasattr(v, "clone") else v.copy() if isinstance(v, np.ndarray) else v
        return dataclasses.replace(weight, **fields)
    raise BenchError(f"cannot copy a {type(weight).__name__} for the weight ring; use cache='flush'")


def _runs_x16(qw: Any, M: int) -> bool:
    """Whether `quantized_linear` ran `qw` at M rows on the x16 plan (`lowbit.ops.x16`, kept on the weight)."""
    plans = getattr(qw, "__dict__", {}).get("_plans", {})
    return any(isinstance(k, tuple) and k and k[0] == M and k[-1] == "x16" for k in plans)


def _runs_tdpbf16ps(qw: Any, M: int) -> bool:
    """Whether the kernel `quantized_linear` compiled for `qw` at M rows (kept on the weight) runs AMX-BF16."""
    plans = getattr(qw, "__dict__", {}).get("_plans", {})
    return any(
        isinstance(k, tuple) and k and k[0] == M and "llvm.x86.tdpbf16ps" in str(getattr(v, "source", ""))
        for k, v in plans.items()
    )


def _a8_ineligible(qw: Any) -> str | None:
    from lowbit.ops.linear import a8_ineligible

    return a8_ineligible(qw)


def _to_numpy(y: Any) -> Any:
    return y.detach().float().cpu().numpy() if hasattr(y, "detach") else np.asarray(y)


def _finish(rows: list[Row]) -> list[Row]:
    """Fill speedups vs the same M, N, K torch rows of this run."""
    base = {r.method: r.median_ms for r in rows if r.backend == TORCH and r.method in ("torch_fp32", "torch_bf16")}
    t32, t16 = base.get("torch_fp32", math.nan), base.get("torch_bf16", math.nan)
    return [dataclasses.replace(r, speedup_fp32=t32 / r.median_ms, speedup_bf16=t16 / r.median_ms) for r in rows]


def _timing_order(rows: Sequence[Row]) -> list[int]:
    """The order in which `_Bench.measure` times the rows of one (layer, M) in a round: torch's rows as listed,
    then lowbit's grouped by method (its dtypes next to each other: the int4 / int3 / int2 rows that the W3 / W2
    goals compare run back to back, seconds apart on a VM whose memory rate drifts over seconds, not one
    dtype's three methods apart)."""
    methods: dict[str, int] = {}
    for r in rows:
        if r.method.startswith("lowbit"):
            methods.setdefault(r.method, len(methods))
    return sorted(range(len(rows)), key=lambda i: (methods.get(rows[i].method, -1), i))


def _with_roofline(r: Row, machine: Machine) -> Row:
    """Fill roofline_ms = max(bytes / BW, flops / peak(r.peak_dtype)) and roofline_fraction = roofline / median."""
    flops = 0 if r.method in (STREAM, DRAM) else linear_flops(r.M, r.N, r.K)
    roof = roofline_ms(r.bytes, flops, machine.bandwidth_gbs, machine.peak(r.peak_dtype))
    return dataclasses.replace(r, roofline_ms=roof, roofline_fraction=roof / r.median_ms)


__all__ = [
    "CPU_LAYERS",
    "CUDA_LAYERS",
    "DTYPES",
    "MS",
    "BenchError",
    "Report",
    "Row",
    "default_device",
    "default_layers",
    "run",
    "run_report",
]
