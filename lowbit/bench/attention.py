"""`lowbit bench attention`: paged decode attention over fp16/bf16/int8/int4 KV caches and causal prefill,
against torch `scaled_dot_product_attention` on the same (dequantized) data, side by side in one run.

    report = run_report(cells=((8, 4096),), prefill=((1, 512),), kv_dtypes=("int8", "int4"))
    print(format_table(report))

Decode cell (B sequences, C cached tokens each; one new query token per sequence):
  torch_fp32   F.scaled_dot_product_attention on the dequantized K/V in fp32, [B, HKV, C, D] contiguous, the
               GQ = HQ/HKV query heads of a KV head passed as GQ query rows (q [B, HKV, GQ, D]): exact for
               decode, reads K/V once, and beats enable_gqa=True (fp32 1.6x, bf16 9x on the 2-core VM)
  torch_bf16   the same in bf16
  lowbit       lowbit.ops.attention.paged_decode_attention on the paged cache, for each KV dtype and backend
Gathering the pages into the dense layout is not part of torch's time (torch gets the best layout for free).
Prefill cell (B sequences of L tokens): SDPA(is_causal=True, enable_gqa=True) on [B, H, L, D] vs lowbit
prefill_attention on the ragged [B·L, H, D] batch (cu_seqlens).
Timing, threads, flushing and the measured machine as in `lowbit bench gemm` (see README.md). Each lowbit row is
checked against torch fp32 SDPA on the same dequantized data; rel err > TOLERANCE or NaN marks it FAIL.
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

from lowbit.bench.gemm import TORCH, BenchError, _choose_backends, _relative_error, default_device
from lowbit.bench.roofline import Machine, measure_machine, roofline_ms
from lowbit.codegen.tune.timing import benchmark, set_threads
from lowbit.dtypes import dtype as lookup_dtype

BATCHES = (1, 8, 32)
CONTEXTS = (512, 2048, 8192)
GOAL_CELL = {"cpu": (8, 4096), "cuda": (32, 8192)}  # (batch, context) the decode goals are judged at
GOALS = {"int4": 3.0, "int8": 2.0}  # decode speedup over torch fp32 SDPA at GOAL_CELL
PREFILL_GOAL = 1.5  # lowbit prefill at most this many times torch fp32 SDPA's time
PREFILL = {"cpu": ((1, 512), (1, 2048)), "cuda": ((1, 2048), (8, 2048), (1, 8192))}
QUICK_PREFILL = {"cpu": ((1, 512),), "cuda": ((1, 2048),)}
KV_DTYPES = ("float16", "int8", "int4")
KV_FORMATS = ("float16", "bfloat16", "float32", "fp8_e4m3", "int8", "int4")  # what paged_decode_attention reads
MAX_BASELINE_GB = {"cpu": 2.0, "cuda": 40.0}  # larger torch fp32 K/V (or q/k/v/out) cells are skipped
TOLERANCE = 1e-2
PHASES = ("decode", "prefill")


@dataclass(frozen=True)
class Heads:
    """Attention shape of one layer (default: Llama-3-8B) and the KV cache's page size."""

    q_heads: int = 32
    kv_heads: int = 8
    head_dim: int = 128
    page_size: int = 16


@dataclass(frozen=True)
class Row:
    """One (phase, batch, context, method) measurement. Times in ms; speedups = torch time / this time."""

    phase: str  # decode | prefill
    batch: int
    context: int  # decode: cached tokens per sequence; prefill: tokens per sequence
    method: str  # torch_fp32 | torch_bf16 | lowbit
    kv_dtype: str  # decode: the cache's dtype; prefill: q/k/v's dtype
    backend: str  # torch | tvm | triton | reference
    median_ms: float
    min_ms: float
    max_ms: float
    bytes: int  # decode: K/V codes + scales + zeros + q + out; prefill: q + k + v + out
    flops: int
    peak_dtype: str = "float32"  # the dtype whose matmul peak bounds this row's compute
    bandwidth_ms: float = math.nan  # bytes / measured DRAM bandwidth
    roofline_ms: float = math.nan  # max(bandwidth_ms, flops / peak)
    gbs: float = math.nan  # bytes / median: bandwidth achieved
    bandwidth_fraction: float = math.nan  # bandwidth_ms / median_ms
    roofline_fraction: float = math.nan  # roofline_ms / median_ms
    speedup_fp32: float = math.nan
    speedup_bf16: float = math.nan
    rel_error: float | None = None  # lowbit rows: vs torch fp32 SDPA on the same dequantized data
    note: str = ""


@dataclass(frozen=True)
class Skipped:
    phase: str
    batch: int
    context: int
    reason: str


@dataclass
class Report:
    machine: Machine
    rows: list[Row] = field(default_factory=list)
    skipped: list[Skipped] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    config: dict[str, Any] = field(default_factory=dict)

    @property
    def failures(self) -> list[Row]:
        return [r for r in self.rows if r.note.startswith("FAIL")]


# -- the bytes and flops model ------------------------------------------------------------------------------


def kv_bytes(tokens: int, heads: Heads, kv_dtype: str) -> int:
    """K and V of `tokens` cached tokens at their stored width: codes, plus an fp16 scale and an fp16 zero per
    (token, KV head) for the integer formats."""
    d = lookup_dtype(kv_dtype)
    codes = math.ceil(tokens * heads.kv_heads * heads.head_dim * d.bits / 8)
    side = 0 if d.is_float else tokens * heads.kv_heads * 2 * 2
    return 2 * (codes + side)


def decode_bytes(batch: int, context: int, heads: Heads, kv_dtype: str, act_bytes: int) -> int:
    """One decode step: the KV cache of every sequence + q [B, HQ, D] + out [B, HQ, D] (block tables not counted)."""
    return kv_bytes(batch * context, heads, kv_dtype) + 2 * batch * heads.q_heads * heads.head_dim * act_bytes


def decode_flops(batch: int, context: int, heads: Heads) -> int:
    return 4 * batch * heads.q_heads * context * heads.head_dim  # q·k and p·v: 2 flops per (head, token, d) each


def prefill_bytes(batch: int, length: int, heads: Heads, elem_bytes: int) -> int:
    return batch * length * heads.head_dim * (2 * heads.q_heads + 2 * heads.kv_heads) * elem_bytes  # q, out, k, v


def prefill_flops(batch: int, length: int, heads: Heads) -> int:
    return 4 * batch * heads.q_heads * heads.head_dim * (length * (length + 1) // 2)  # causal (query, key) pairs


# -- data --------------------------------------------------------------------------------------------------------


def pack_int4(codes: Any) -> Any:
    """uint8 codes [..., D] -> int32 words [..., D // 8], code j of a word at bits 4j..4j+3."""
    import torch

    c = codes.view(*codes.shape[:-1], codes.shape[-1] // 8, 8)
    words = torch.zeros(c.shape[:-1], dtype=torch.int32, device=codes.device)
    for j in range(8):
        words |= c[..., j].to(torch.int32) << (4 * j)  # j = 7 wraps into the sign bit: the same 32 bits
    return words


def _random_pages(
    shape: tuple[int, ...], kv_dtype: str, gen: Any, keys: bool = False
) -> tuple[Any, tuple[Any, Any] | None, Any]:
    """(stored cache, (scales, zeros) or None, dequantized values [NP, PS, HKV, D] fp32) of random data; int4 /
    int8 keys (`keys`) stored as the kernels hold them, [NP, HKV, D // C, PS] int32 words (`pack_int4_keys` /
    `pack_int8_keys`)."""
    import torch

    dev, d = gen.device, lookup_dtype(kv_dtype)
    if d.is_float:
        tdtype = torch.float8_e4m3fn if kv_dtype == "fp8_e4m3" else getattr(torch, kv_dtype)
        x = torch.randn(shape, generator=gen, device=dev).to(tdtype)
        return x, None, x.float()
    steps = 2**d.bits - 1
    codes = torch.randint(0, steps + 1, shape, generator=gen, device=dev, dtype=torch.uint8)
    scales = ((0.5 + torch.rand(shape[:3], generator=gen, device=dev)) * 4 / steps).half()  # ~ a unit-normal row
    zeros = (steps * (0.375 + 0.25 * torch.rand(shape[:3], generator=gen, device=dev))).half()  # mid-range, real
    pages = (codes.float() - zeros.float()[..., None]) * scales.float()[..., None]
    if keys:  # int32 words of C codes (int8: the little-endian bytes), each page's tokens side by side
        words = pack_int4(codes) if d.bits == 4 else codes.contiguous().view(torch.int32)
        return words.permute(0, 2, 3, 1).contiguous(), (scales, zeros), pages
    return (pack_int4(codes) if d.bits == 4 else codes), (scales, zeros), pages


def _gather(pages: Any, tables: Any, context: int) -> Any:
    """Pages [NP, PS, HKV, D] read through block tables [B, P] -> dense [B, HKV, context, D], contiguous."""
    B, P = tables.shape
    g = pages[tables.long()]  # [B, P, PS, HKV, D]
    return g.view(B, P * g.shape[2], *g.shape[3:])[:, :context].transpose(1, 2).contiguous()


def random_paged_cache(batch: int, context: int, heads: Heads, kv_dtype: str, gen: Any) -> tuple[dict, Any, Any]:
    """Keyword arguments of paged_decode_attention (all but q) for a random cache of `context` tokens per
    sequence in randomly permuted pages, and its dequantized K, V [B, HKV, context, D] fp32."""
    import torch

    PS = heads.page_size
    per_seq = math.ceil(context / PS)
    tables = torch.randperm(batch * per_seq, generator=gen, device=gen.device).view(batch, per_seq).to(torch.int32)
    lens = torch.full((batch,), context, dtype=torch.int32, device=gen.device)
    args: dict[str, Any] = {"block_tables": tables, "context_lens": lens, "kv_dtype": kv_dtype}
    dense = []
    for name in ("k", "v"):
        shape = (batch * per_seq, PS, heads.kv_heads, heads.head_dim)
        stored, side, pages = _random_pages(shape, kv_dtype, gen, keys=name == "k")
        args[f"{name}_cache"] = stored
        if side is not None:
            args[f"{name}_scales"], args[f"{name}_zeros"] = side
        dense.append(_gather(pages, tables, context))
        del pages
    return args, dense[0], dense[1]


def sdpa_decode(q: Any, k: Any, v: Any) -> Any:
    """torch SDPA for one decode step: q [B, HQ, D], k/v [B, HKV, C, D] -> out [B, HQ, D]; query head h reads
    KV head h // GQ, so q is viewed as GQ query rows per KV head."""
    import torch.nn.functional as F

    B, HQ, D = q.shape
    return F.scaled_dot_product_attention(q.view(B, k.shape[1], HQ // k.shape[1], D), k, v).view(B, HQ, D)


def sdpa_prefill(q: Any, k: Any, v: Any) -> Any:
    """torch causal SDPA: q [B, HQ, L, D], k/v [B, HKV, L, D] -> [B, HQ, L, D]."""
    import torch.nn.functional as F

    return F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=True)


# -- the run -----------------------------------------------------------------------------------------------------


def run_report(
    cells: Sequence[tuple[int, int]] | None = None,
    prefill: Sequence[tuple[int, int]] | None = None,
    kv_dtypes: Sequence[str] = KV_DTYPES,
    heads: Heads = Heads(),
    backends: Sequence[str] | None = None,
    repeats: int = 5,
    quick: bool = False,
    *,
    threads: int | None = None,
    flush: bool = True,
    max_baseline_gb: float | None = None,
    device: str | None = None,
    machine: Machine | None = None,
    log: Callable[[str], None] | None = None,
) -> Report:
    """Run the benchmark (module docstring). cells: decode (batch, context) pairs, default BATCHES x CONTEXTS
    plus the goal cell; `quick`: the goal cell only and QUICK_PREFILL. prefill: (batch, length) pairs."""
    import torch

    n_threads = set_threads(threads)  # before torch runs anything and before TVM starts its pool
    device = device or default_device()
    kind = "cuda" if device.startswith("cuda") else "cpu"
    if cells is None:
        grid = [(b, c) for b in BATCHES for c in CONTEXTS]
        cells = [GOAL_CELL[kind]] if quick else sorted({*grid, GOAL_CELL[kind]})
    prefill = (QUICK_PREFILL if quick else PREFILL)[kind] if prefill is None else prefill
    limit = MAX_BASELINE_GB[kind] if max_baseline_gb is None else max_baseline_gb
    if heads.q_heads % heads.kv_heads or heads.head_dim % 8:
        raise BenchError(
            f"{heads}: q_heads must be a multiple of kv_heads and head_dim of 8 (int4 words); e.g. 32/8/128"
        )
    say = log or (lambda s: None)
    measured = machine is None
    machine = machine or measure_machine(device, n_threads, quick=quick)
    say(f"# {machine.header()}")
    report = Report(machine)
    ops = _load_ops()
    chosen = _choose_backends(backends, device, ops, report.notes)
    act = torch.float16 if kind == "cuda" else torch.float32  # lowbit q/out: fp16 on GPU; the CPU kernels are fp32
    report.config = {
        "heads": dataclasses.asdict(heads),
        "decode_cells": [list(c) for c in cells],
        "prefill_cells": [list(c) for c in prefill],
        "kv_dtypes": list(kv_dtypes),
        "backends": list(chosen),
        "lowbit_activations": _name(act),
        "repeats": repeats,
        "warmup": 1,
        "flush": "read-modify-write of 2x L3 before every sample" if flush else "none (hot caches)",
        "max_baseline_gb": limit,
        "torch_layout": "dense [B, HKV, C, D] (decode: q as [B, HKV, GQ, D]); gathering pages is not timed",
        "torch": torch.__version__,
        "python": platform.python_version(),
    }
    bench = _Bench(heads, device, act, repeats, flush, ops, chosen, report.notes, say, torch.Generator(device))
    bench.gen.manual_seed(0)
    for phase, todo in (("decode", cells), ("prefill", prefill)):
        for batch, context in todo:
            decode = phase == "decode"
            need = kv_bytes(batch * context, heads, "float32") if decode else prefill_bytes(batch, context, heads, 4)
            if need > limit * 1e9:
                what = "K/V" if decode else "q/k/v/out"
                reason = f"torch fp32 {what} would need {need / 1e9:.2f} GB > {limit:g} GB (--max-baseline-gb)"
                report.skipped.append(Skipped(phase, batch, context, reason))
                say(f"{phase} B={batch} ctx={context}: skipped, {reason}")
                continue
            say(f"{phase} B={batch} ctx={context}")
            cell = bench.decode(batch, context, kv_dtypes) if decode else bench.prefill(batch, context)
            report.rows.extend(_speedups(cell))
    if measured:  # ceilings = the best of a measurement before and after the rows (a shared VM's load varies)
        report.machine = machine.ceiling(measure_machine(device, n_threads, quick=quick))
        report.notes.append("roofline ceilings: best of the measurements before and after the timings")
    report.rows = [_with_roofline(r, report.machine) for r in report.rows]
    return report


def _load_ops() -> Any | None:
    try:
        return importlib.import_module("lowbit.ops.attention")
    except ImportError:
        return None


@dataclass
class _Bench:
    """Run-wide settings; `decode(B, C, kv_dtypes)` / `prefill(B, L)` time every method for one cell."""

    heads: Heads
    device: str
    act: Any  # torch dtype of lowbit q / out
    repeats: int
    flush: bool
    ops: Any
    backends: tuple[str, ...]
    notes: list[str]
    say: Callable[[str], None]
    gen: Any

    def row(self, cell: tuple[str, int, int], method: str, dt: str, backend: str, fn: Callable[[], Any],
            nbytes: int, flops: int, peak: str, rel: float | None = None) -> Row:  # fmt: skip
        t = benchmark(fn, repeats=self.repeats, warmup=1, flush=self.flush, device=self.device)
        note = "" if rel is None or rel <= TOLERANCE else f"FAIL rel err {rel:.1e} > {TOLERANCE:g}"
        self.say(f"  {method:<11}{dt:<10}{backend:<10}{t.median:10.3f} ms" + (f"  {note}" if note else ""))
        return Row(*cell, method, dt, backend, t.median, t.min, t.max, nbytes, flops, peak, rel_error=rel, note=note)

    def lowbit(self, what: str, call: Callable[..., Any], ref: Any) -> list[tuple[str, Callable[[], Any], float]]:
        """(backend, timed call, rel err vs ref) for every backend that runs; a failure becomes a note."""
        out: list[tuple[str, Callable[[], Any], float]] = []
        for backend in self.backends:
            fn = functools.partial(call, backend=backend)
            try:
                y = fn()  # compiles outside the timed samples
            except Exception as e:  # a backend that cannot run this case: a note, not the end of the run
                self.notes.append(f"lowbit {what} on {backend} failed: {type(e).__name__}: {e}")
                continue
            rel = _relative_error(y, ref)
            out.append((backend, fn, rel if math.isfinite(rel) else math.inf))  # NaN never passes
        return out

    def decode(self, B: int, C: int, kv_dtypes: Sequence[str]) -> list[Row]:
        import torch

        h, cell, flops, rows = self.heads, ("decode", B, C), decode_flops(B, C, self.heads), []
        q32 = torch.randn(B, h.q_heads, h.head_dim, generator=self.gen, device=self.device)  # [B, HQ, D]
        q = q32.to(self.act)
        for i, kv in enumerate(kv_dtypes or ("float32",)):  # no kv dtypes: torch rows on fp32 data
            args, k, v = random_paged_cache(B, C, h, kv, self.gen)
            if i == 0:  # torch is timed once per cell, on the first cache's dequantized K/V
                fn = functools.partial(sdpa_decode, q32, k, v)
                nbytes = decode_bytes(B, C, h, "float32", 4)
                rows.append(self.row(cell, "torch_fp32", "float32", TORCH, fn, nbytes, flops, "float32"))
                fn = functools.partial(sdpa_decode, q32.bfloat16(), k.bfloat16(), v.bfloat16())
                nbytes = decode_bytes(B, C, h, "bfloat16", 2)
                rows.append(self.row(cell, "torch_bf16", "bfloat16", TORCH, fn, nbytes, flops, "bfloat16"))
                del fn  # frees the bf16 copies
            if kv_dtypes and self.ops is not None:
                ref = sdpa_decode(q.float(), k, v)
                call = functools.partial(self.ops.paged_decode_attention, q, **args)
                nbytes = decode_bytes(B, C, h, kv, q.element_size())
                for backend, timed, rel in self.lowbit(f"decode {kv} B={B} ctx={C}", call, ref):
                    rows.append(self.row(cell, "lowbit", kv, backend, timed, nbytes, flops, _name(self.act), rel))
            del args, k, v
        return rows

    def prefill(self, B: int, L: int) -> list[Row]:
        import torch

        h, cell, flops = self.heads, ("prefill", B, L), prefill_flops(B, L, self.heads)
        q = torch.randn(B, h.q_heads, L, h.head_dim, generator=self.gen, device=self.device)  # [B, HQ, L, D]
        k, v = (torch.randn(B, h.kv_heads, L, h.head_dim, generator=self.gen, device=self.device) for _ in "kv")
        fn = functools.partial(sdpa_prefill, q, k, v)
        rows = [self.row(cell, "torch_fp32", "float32", TORCH, fn, prefill_bytes(B, L, h, 4), flops, "float32")]
        fn = functools.partial(sdpa_prefill, q.bfloat16(), k.bfloat16(), v.bfloat16())
        rows.append(self.row(cell, "torch_bf16", "bfloat16", TORCH, fn, prefill_bytes(B, L, h, 2), flops, "bfloat16"))
        del fn
        if self.ops is None:
            return rows
        # q [T, HQ, D], k / v [T, HKV, D] with T = B·L, sequence b at tokens b·L .. b·L + L − 1
        ragged = [x.to(self.act).transpose(1, 2).reshape(B * L, x.shape[1], h.head_dim).contiguous() for x in (q, k, v)]
        ref = sdpa_prefill(*(x.view(B, L, -1, h.head_dim).transpose(1, 2).float() for x in ragged))
        ref = ref.transpose(1, 2).reshape(B * L, h.q_heads, h.head_dim)
        cu = torch.arange(B + 1, dtype=torch.int32, device=self.device) * L
        call = functools.partial(self.ops.prefill_attention, *ragged, cu, causal=True)
        dt, nbytes = _name(self.act), prefill_bytes(B, L, h, ragged[0].element_size())
        for backend, timed, rel in self.lowbit(f"prefill B={B} L={L}", call, ref):
            rows.append(self.row(cell, "lowbit", dt, backend, timed, nbytes, flops, dt, rel))
        return rows


def _name(tdtype: Any) -> str:
    return str(tdtype).removeprefix("torch.")


def _speedups(rows: list[Row]) -> list[Row]:
    """Fill speedups vs the torch rows of the same cell, same run."""
    base = {r.method: r.median_ms for r in rows if r.backend == TORCH}
    t32, t16 = base.get("torch_fp32", math.nan), base.get("torch_bf16", math.nan)
    return [dataclasses.replace(r, speedup_fp32=t32 / r.median_ms, speedup_bf16=t16 / r.median_ms) for r in rows]


def _with_roofline(r: Row, m: Machine) -> Row:
    bw_ms = r.bytes / (m.bandwidth_gbs * 1e9) * 1e3
    roof = roofline_ms(r.bytes, r.flops, m.bandwidth_gbs, m.peak(r.peak_dtype))
    gbs, t = r.bytes / r.median_ms / 1e6, r.median_ms
    return dataclasses.replace(
        r, bandwidth_ms=bw_ms, roofline_ms=roof, gbs=gbs, bandwidth_fraction=bw_ms / t, roofline_fraction=roof / t
    )


# -- goals, table, JSON, plot ------------------------------------------------------------------------------------


def goals(report: Report) -> list[dict[str, Any]]:
    """The issue's targets that this run measured: decode int4/int8 speedup over torch fp32 SDPA at the goal
    cell, and every lowbit prefill row's time over torch fp32 SDPA's."""
    kind = "cuda" if report.machine.device.startswith("cuda") else "cpu"
    out = []
    for r in report.rows:
        if r.method != "lowbit":
            continue
        if r.phase == "decode" and (r.batch, r.context) == GOAL_CELL[kind] and r.kv_dtype in GOALS:
            target, value = GOALS[r.kv_dtype], r.speedup_fp32
            what = f"decode {r.kv_dtype} KV B={r.batch} ctx={r.context} {r.backend}: {value:.2f}x torch fp32 SDPA"
            out.append({"goal": f"{what} (target >= {target:g}x)", "value": value, "met": value >= target})
        elif r.phase == "prefill":
            value = 1 / r.speedup_fp32
            what = f"prefill B={r.batch} L={r.context} {r.backend}: {value:.2f}x torch fp32 SDPA's time"
            out.append({"goal": f"{what} (target <= {PREFILL_GOAL:g}x)", "value": value, "met": value <= PREFILL_GOAL})
    return out


def _f(fmt: str, x: float | None, scale: float = 1.0) -> str:
    return format(x * scale, fmt) if x is not None and math.isfinite(x) else "-"


COLUMNS = (  # header, width, format of one row's value
    ("phase", 7, lambda r: r.phase),
    ("B", 3, lambda r: f"{r.batch}"),
    ("ctx", 5, lambda r: f"{r.context}"),
    ("method", 10, lambda r: r.method),
    ("kv", 9, lambda r: r.kv_dtype),
    ("backend", 8, lambda r: r.backend),
    ("median ms", 10, lambda r: _f(".3f", r.median_ms)),
    ("min ms", 9, lambda r: _f(".3f", r.min_ms)),
    ("max ms", 9, lambda r: _f(".3f", r.max_ms)),
    ("MB", 8, lambda r: f"{r.bytes / 1e6:.2f}"),
    ("GB/s", 6, lambda r: _f(".1f", r.gbs)),
    ("%BW", 5, lambda r: _f(".0f", r.bandwidth_fraction, 100) + "%"),
    ("roof ms", 8, lambda r: _f(".3f", r.roofline_ms)),
    ("%roof", 6, lambda r: _f(".0f", r.roofline_fraction, 100) + "%"),
    ("x fp32", 7, lambda r: _f(".2f", r.speedup_fp32)),
    ("x bf16", 7, lambda r: _f(".2f", r.speedup_bf16)),
    ("rel err", 8, lambda r: _f(".1e", r.rel_error)),
)
LEFT = {"phase", "method", "kv", "backend"}


def format_table(report: Report, *, machine_header: bool = True) -> str:
    """Machine header, config, one line per row (skipped cells in place, a blank line between cells), goals, notes."""
    c, h = report.config, report.config.get("heads", {})
    lines = [f"# {report.machine.header()}"] if machine_header else []
    lines += [
        f"# heads HQ={h.get('q_heads')} HKV={h.get('kv_heads')} D={h.get('head_dim')} page {h.get('page_size')} | "
        f"repeats {c.get('repeats')} (median, warm-up {c.get('warmup')}) | flush: {c.get('flush')} | "
        f"backends {c.get('backends') or 'none'} | lowbit q/out {c.get('lowbit_activations')}",
        f"# torch: SDPA on {c.get('torch_layout')}",
        "# MB: K/V codes + scales + zeros + q + out (prefill: q + k + v + out); GB/s = MB / median; "
        "%BW = (MB / measured bandwidth) / median;",
        "# roof ms = max(MB / BW, flops / peak), %roof = roof ms / median; "
        "x fp32 / x bf16 = torch SDPA time / this time (same cell, same run)",
    ]
    header = " ".join(h.ljust(w) if h in LEFT else h.rjust(w) for h, w, _ in COLUMNS) + "  note"
    lines += [header, "-" * len(header)]
    cell = None
    entries: list[Row | Skipped] = [*report.rows, *report.skipped]
    for r in sorted(entries, key=lambda r: (PHASES.index(r.phase), r.batch, r.context)):
        if cell is not None and cell != (r.phase, r.batch, r.context):
            lines.append("")
        cell = (r.phase, r.batch, r.context)
        if isinstance(r, Skipped):
            lines.append(f"{r.phase:<7} {r.batch:>3} {r.context:>5} skipped: {r.reason}")
            continue
        cols = (fmt(r).ljust(w) if h in LEFT else fmt(r).rjust(w) for h, w, fmt in COLUMNS)
        lines.append(" ".join(cols) + (f"  {r.note}" if r.note else ""))
    lines += [f"goal: {g['goal']}: {'met' if g['met'] else 'NOT met'}" for g in goals(report)]
    lines += [f"note: {n}" for n in report.notes]
    return "\n".join(lines)


def to_json(report: Report) -> dict[str, Any]:
    from lowbit.bench.report import _clean

    return _clean(
        {
            "machine": report.machine.to_json(),
            "config": report.config,
            "rows": [dataclasses.asdict(r) for r in report.rows],
            "skipped": [dataclasses.asdict(s) for s in report.skipped],
            "goals": goals(report),
            "notes": report.notes,
        }
    )


def write_plot(report: Report, path: Any) -> Any:
    """Decode speedup over torch fp32 SDPA vs context, one panel per batch. None without matplotlib."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    from pathlib import Path

    series: dict[int, dict[str, list[tuple[int, float]]]] = {}
    for r in report.rows:
        if r.phase == "decode" and r.method != "torch_fp32":
            label = r.method if r.backend == TORCH else f"lowbit {r.kv_dtype} {r.backend}"
            series.setdefault(r.batch, {}).setdefault(label, []).append((r.context, r.speedup_fp32))
    fig, axes = plt.subplots(1, max(1, len(series)), figsize=(5 * max(1, len(series)), 4), squeeze=False)
    for ax, (batch, lines) in zip(axes[0], sorted(series.items())):
        for label, pts in sorted(lines.items()):
            xs, ys = zip(*sorted(pts))
            ax.plot(xs, ys, marker="o", label=label)
        ax.axhline(1.0, color="gray", linewidth=0.8)
        ax.set_xscale("log", base=2)
        ax.set_xlabel("context (tokens)")
        ax.set_ylabel("speedup over torch fp32 SDPA")
        ax.set_title(f"decode, batch {batch} — {report.machine.name}")
        ax.legend(fontsize=7)
    fig.tight_layout()
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(p, dpi=120)
    plt.close(fig)
    return p


__all__ = [
    "BATCHES",
    "CONTEXTS",
    "KV_DTYPES",
    "KV_FORMATS",
    "BenchError",
    "Heads",
    "Report",
    "Row",
    "Skipped",
    "decode_bytes",
    "decode_flops",
    "format_table",
    "goals",
    "kv_bytes",
    "pack_int4",
    "prefill_bytes",
    "prefill_flops",
    "random_paged_cache",
    "run_report",
    "to_json",
    "write_plot",
]
