"""The x16 plan: a GEMV of 2-, 3- and 4-bit integer weights whose float activations run on int8 dots.

`quantized_linear` (and `linear_launcher`, the executor's path) takes it for CPU bfloat16 / float16 / float32
activations on the TVM backend where the CPU has AVX-512 VNNI (`x16_serves`): float16 x at any M in row tiles of
X16_BM, float32 x at any M in three planes ("x24", row tiles of X24_BM), bfloat16 x up to X16_MAX_M rows but
4-bit codes at M = 1, where the bf16 pair GEMV streams faster. Why: the
table-decoded GEMV of 2- and 3-bit codes is compute-bound there (fp32 FMAs, one product each), and so is the
bf16 pair dot of 4-bit codes where memory is fast (a shift and a ternary logic op of decode per 32 codes), while
`lowbit.kernels.gemv_x16` carries x in two int8 planes and multiplies the codes as bytes on vpdpbusd. Two
kernels per call: `quantize_groups_x16` (x -> planes, per-group power-of-two scale, code sums) and
`quantized_gemv_x16`. 4096², bf16 x, 2 threads, on the 2-core AMD EPYC VM (AVX-512 VNNI and BF16, no AMX;
benchmarks/README.md, session 47): int3 hot M = 1 / 2 / 4 0.141 / 0.273 / 0.507 ms against 0.284 / 0.643 / 1.313
for the table GEMV.

Which words the plan reads (`x16_source`, `in_place`): a weight held in the plane layout (`x16_weight`, what
float16 / float32 executors keep: every M runs here) in place; with bfloat16 x and 4-bit codes, whose M = 1 and
wide-M rows run the bf16 float kernels, the column-tiled copy those read (`cpu_weight`: 32-column blocks, 4-bit
codes in pair order), in place too, x gathered by the quantizer to match (`gemv_x16.x_order`) and signed codes
xor-ed to offset binary in the GEMV (FLIP): one copy of the weight for every M. The 1.1B-shaped int4 model's
bf16 executor held 1017 MiB of quantized linears with a plane copy beside the pair copy, 524 MiB with one
(session 58). Time ratios against the two copies (4096², a ring of weights, 2 threads, alternating): M = 1 /
2 / 4 / 16 / 64 0.98 / 0.96 / 1.03 / 1.05 / 1.02; 11008x4096 M = 1 / 4 / 16 0.95 / 1.07 / 1.03 (the flip's
xor a word; uint4, no flip, M = 1 / 4 0.97 / 0.98); decode of the 1.1B-shaped model within the noise (1 / 4 /
16 sequences: medians of 11 alternating rounds' ratios 1.02 / 0.97 / 0.97). The copy's blocks are 32 columns:
over 64 the GEMV took 1.13-1.42x (uint4, no flip, M = 2 / 4). Hot, one thread, L2-resident (256x4096, where the
quantizer's gather is a large share), against the planes: int4 M = 1 / 4 1.08 / 1.17, uint4 1.05 / 1.11 (session
55's in-place GEMV, hot: int4 1.17-1.33x, unsigned at parity). What would remove the flip: codes as the dot's
signed operand (16·q in a byte's top nibble) with x's planes offset to unsigned and per-group column code sums.
Other weights (2- and 3-bit codes with bf16 x: `X16_SHARED_BITS`; the row layout with float16 / float32 x) get a
plane copy of their own.
"""

from __future__ import annotations

import threading
from typing import Any

import numpy as np

from lowbit.codegen.backend import compile_program
from lowbit.dtypes import dtype as as_dtype
from lowbit.kernels.gemv_a8 import tile_group_rows
from lowbit.kernels.gemv_x16 import X16_ADTYPES, X16_GROUPS, plane_words, quantize_groups_x16, quantized_gemv_x16
from lowbit.kernels.launch import bind, serial_options
from lowbit.kernels.layouts import PLANE_BITS, aligned, column_tiled, plane_layout
from lowbit.kernels.spaces import GEMV_PREFETCH_LOCALITY, pair_dot_runs
from lowbit.ops.weight import QuantizedWeight, constant_offset

X16_DTYPES = ("int2", "int3", "uint2", "uint3", "int4", "uint4")  # widths measured faster than the other GEMVs
# 2 and 3 bits: session 47, against the table GEMV. 4 bits: the bf16 pair dot's decode (a shift and a ternary logic
# op per 32 codes, beside the dot) costs more than two int8 dots a plane. Session 53, int4, bf16 x, a ring of
# weights, 2 threads, alternating, ms: 4096² M = 2 / 4 0.335 / 0.499 against 0.494 / 0.653, 11008x4096 0.800 /
# 1.234 against 1.204 / 1.631. Session 54, 4096², us: int4 M = 1 hot 119 against 157 (a C loop of each inner body:
# 1.17 against 1.80 ns per 128 codes, the x16 one at its vpdpbusd bound); streamed in slow memory states (~32 GB/s)
# 250-285 against 253-287, 11008x4096 761-781 against 735 (1.03-1.06x): both there wait on DRAM. Session 52's
# fast states had x16 at 0.86-0.93x. uint4 with zeros (session 54, after the VNNI chain kept each row's
# accumulators in registers), streamed: post M = 1 / 2 / 4 310 / 318 / 479 against 287 / 477 / 754; pre 258 /
# 312 / 549 against 254 / 566 / 848; pre hot M = 1 / 2 159 / 245 against 186 / 560.
X16_BM = 4  # rows a program: 2·BM plane rows of one register block (the TVM backend's VNNI chain, `_vnni_chain`)
# More rows run in row tiles of X16_BM (the GEMV's grid, row tiles innermost): the time grows with ⌈M / 4⌉ where the
# float kernels' GEMM forms step at 8, 16 and 32 rows. Session 56, 2 threads, a ring of weights (4096²: 11, 11008x4096:
# 4), in one process against the kernel the rule chose before (`linear_launcher`), time ratios:
#   bfloat16 x, 4096², M = 5 / 8 / 16 / 24 / 32: int4 0.80 / 0.80 / 0.93 / 0.77 / 1.03, int3 0.73 / 0.71 / 0.91 /
#     0.79 / 1.04, int2 0.80 / 0.78 / 0.92 / 0.80 / 1.05, uint4 (post zeros) 0.50 / 0.75 / 0.78 / 0.64 / 0.99;
#     11008x4096, M = 5 / 16 / 28 / 32: int4 0.83 / 0.93 / 0.87 / 1.00, uint4 0.45 / 0.82 / 0.71 / 0.94. Past 32 rows
#     the bf16 GEMM forms win (4096² int4 M = 64, hot: 5.4 against 5.9 ms).
#   float16 x (no AVX-512 FP16 here: the float kernels multiply in fp32), 4096², M = 5 / 16 / 64 / 256: int4 0.40 /
#     0.47 / 0.59 / 0.59, uint4 0.31 / 0.42 / 0.59 / 0.59, int3 0.42 / 0.47 / 0.57 / 0.59; int4 hot, M = 1024: 104.8
#     against 164.9 ms (0.64).
X16_PARALLEL_QUANT_ROWS = 64  # from this many rows x's quantizer runs its row tiles on the thread pool (else serially,
# `serial_options`). Session 56, fp16 x, K = 4096, 2 threads, the quantizer alone serial / parallel, us: M = 16 37 / 21,
# 64 148 / 100, 256 616 / 325, 1024 3119 / 1531; 2-3% of the plan's time, within the noise of its total.
X16_MAX_M = 28  # bfloat16 x: the most rows the x16 plan runs (float16 x: any number)
# bfloat16 x, 4-bit codes, M = 1, on a CPU with AVX-512 BF16: the bf16 pair GEMV instead. x16 wins hot (int4 4096²:
# 119 against 157 us), but a decode step streams its weights from DRAM, where the pair GEMV's lighter mix keeps more of
# the read (session 57, a ring of ~256 MB of weights, 2 threads, the plain `sum` of the same bytes alternating in one
# process, medians of 9 rounds, us): int4 11008x4096 751 / 775 against x16's 792 / 787, 4096² 204 / 273 against 217 /
# 302, uint4 (post zeros) 4096² 302 against 312; each 0.90-0.98x. From 2 rows x16 wins streamed too (int4 11008x4096
# M = 2: 768 against 1017), and 2- and 3-bit codes at M = 1 (int3 11008x4096 547 against 801, int2 4096² 149 / 203).
X16_SHARED_BITS = (4,)  # code widths whose column-tiled copy the plan reads. 2-bit codes keep their own planes:
# their M = 1 rows run on this plan, where the flip of signed codes and the quantizer's gather cost int2 1.02-1.04x
# (4096², a ring of weights, 2 threads, alternating; hot, one thread, L2-resident, 256x4096: int2 1.05x, uint2
# 1.00x against the planes), and the W2 / W4 time ratio at M = 1 sits near its goal (bytes·1.1 = 0.57)
X16_BN = 32  # column tile: one per program (one weight stream a thread), 8 KiB software prefetch to L2.
X16_TILES = 1  # Session 50, 2 threads, bf16 x, M = 1, a ring of 30 (4096²) / 12 (11008x4096) weights, alternating
# in one process, medians in ms, 32 x 2 tiles with 2 KiB (the session 47-49 default) against 32 x 1 with 8 KiB:
# int2 4096² 0.170 / 0.164, 11008 0.448 / 0.384; int3 4096² 0.255 / 0.225 and 0.252 / 0.228, 11008 0.645 / 0.584
# (32 x 1 with 2 / 4 KiB in between; 16 x 1 and 64 x 1 slower). Session 47 had measured int3 at 32 x 2 tiles
# 0.288-0.299, 32 x 1 0.296-0.336, 64 x 1 0.341-0.356 with L1 hints. The prefetch aims at L2 (prefetcht1;
# session 49: to L1 int3 0.95, to L2 0.81 of int4's bf16 GEMV time. A likely cause, not measured: hints to L1
# occupy the few L1 miss buffers the kernel's own loads need, while the L2 tracks many more outstanding misses).
X16_PREFETCH = 8192  # bytes ahead in a tile's stream (8 groups of 2-bit codes at G = 128)
# 4-bit codes prefetch the same 8 groups ahead. Session 54, int4 4096², M = 1, streamed, us, 8 / 16 KiB: 299.8 /
# 268.8, 284.7 / 250.5; 11008x4096 780.9 / 761.0; hot (1 thread) 241 / 244.
X16_PREFETCH_WIDE = 16384


X24_BM = 2  # float32 x (three planes): 3·BM plane rows, within the VNNI chain's 8 (`VNNI_CHAIN_ROWS`)
# float32 x: against the fp32 FMA kernels the rule chose before (session 57, a ring of weights streamed from DRAM, 2
# threads, alternating in one process, time ratios x24 / before): int4 4096² M = 1 / 2 / 4 / 8 / 16 / 28 / 64 / 256
# 0.88 / 0.63 / 0.46 / 0.56 / 0.65 / 0.69 / 0.81 / 0.85; int3 M = 1 / 4 / 16 / 64 0.72 / 0.40 / 0.65 / 0.81; int2
# M = 1 / 16 0.99 / 0.65; uint4 (post zeros) M = 1 / 4 0.95 / 0.43; int4 11008x4096 M = 1 / 16 0.93 / 0.64. Error
# against float64: 3.0e-7 relative (Frobenius) against the FMA kernels' 2.1e-7.


def x16_parts(adtype: str) -> int:
    """The int8 planes that carry x of `adtype`: two for 16-bit floats (14 bits a group), three for float32 (22)."""
    return 3 if adtype == "float32" else 2


def x16_prefetch(bits: int) -> int:
    """The x16 GEMV's software prefetch distance in bytes for `bits`-wide codes."""
    return X16_PREFETCH_WIDE if bits >= 4 else X16_PREFETCH


def _dot_serves(adtype: str, int8_dot: str) -> bool:
    return int8_dot in (("vnni",) if adtype == "float32" else ("vnni", "amx"))


def x16_every_m(adtype: str, int8_dot: str) -> bool:
    """Whether the x16 plan runs every row count of `adtype` x that it serves (`x16_serves`): float16 and float32
    x, so an executor of that dtype can hold its weights in the plane layout alone (`x16_weight`)."""
    return adtype in ("float16", "float32") and _dot_serves(adtype, int8_dot)


def x16_serves(qw: QuantizedWeight, m: int, adtype: str, int8_dot: str) -> bool:
    """Whether the x16 plan runs `qw` for m rows of `adtype` activations on the TVM CPU backend whose int8 dot
    form is `int8_dot` ("vnni" or "amx": the CPU has AVX-512 VNNI). float32 x (three planes) only where the
    int8 dot is VNNI's: on a CPU with AMX its fp32 rows run as three bf16 parts on the tiles, not measured
    against x24."""
    return (
        qw.scheme == "w_a16"
        and qw.dtype.name in X16_DTYPES
        and adtype in X16_ADTYPES
        and m >= 1
        and (adtype != "bfloat16" or m <= X16_MAX_M)
        and not (m == 1 and pair_dot_runs(adtype, qw.dtype.bits))
        and _dot_serves(adtype, int8_dot)
        and qw.group_size in X16_GROUPS
        and qw.in_features % qw.group_size == 0
    )


def unsigned_codes(qw: QuantizedWeight) -> tuple[np.ndarray, int]:
    """(u [K, N], offset): the codes as unsigned values u = q + offset in [0, 2^bits) (signed ints offset binary,
    offset 2^(bits-1); unsigned ints as they are, offset 0)."""
    bits = qw.dtype.bits
    codes = qw.codes().astype(np.int64) & ((1 << bits) - 1)  # the bit patterns
    if qw.dtype.is_signed:
        return (codes + (1 << (bits - 1))) & ((1 << bits) - 1), 1 << (bits - 1)
    return codes, 0


def x16_weight(qw: QuantizedWeight) -> QuantizedWeight | None:
    """`qw` as the x16 GEMV reads it in place: its codes in the plane layout (`plane_layout(X16_BN)`), a signed
    weight without zero point as the equal offset-binary unsigned one (u = q + 2^(b-1) with zero point 2^(b-1):
    ŵ = (u − 2^(b-1))·s, the same values; the plan runs it with the signed weight's constant offset, no zeros
    read). For an executor whose every M runs the x16 plan (float16 or float32 x, `x16_every_m`), so the weight
    is held once: the plan makes no plane copy of it. None where the plan does not serve `qw`, its codes have no
    plane layout (3 bits) or it is signed with zero points."""
    n, k = qw.shape
    bits = qw.dtype.bits
    if not x16_serves(qw, 1, "float16", "vnni") or bits not in PLANE_BITS:
        return None
    layout = plane_layout((k, n), bits, qw.group_size, X16_BN)
    if qw.layout == layout:
        return qw
    if qw.dtype.is_signed and qw.zero_mode != "none":
        return None
    words = plane_words(unsigned_codes(qw)[0], bits, qw.group_size, X16_BN).view(np.uint32).reshape(-1)
    if not qw.dtype.is_signed:
        dtype, zero_mode, zeros = qw.dtype, qw.zero_mode, qw.zeros
    else:
        dtype, zero_mode = as_dtype(f"uint{bits}"), "post"
        zeros = np.full(qw.scales.shape, 1 << (bits - 1), dtype=qw.scales.dtype)
    return QuantizedWeight(
        dtype, qw.group_size, zero_mode, qw.shape, layout, aligned(words), qw.scales, zeros, qw.scheme,
        qw.channel_scales,
    )  # fmt: skip


def in_place(qw: QuantizedWeight) -> tuple[str, int] | None:
    """(order, column tile) where the x16 GEMV reads `qw`'s own words: the plane layout (`x16_weight`, unsigned
    or offset-binary codes) or, for 4-bit codes (`X16_SHARED_BITS`), the column-tiled words the CPU float kernels read
    (`column_tiled`, 4-bit ones also in bf16 pair order; signed codes xor-ed to offset binary in the GEMV,
    FLIP), so one copy of the weight serves every row count. None: the plan makes a plane copy."""
    n, k = qw.shape
    g, bits = qw.group_size, qw.dtype.bits
    if bits in PLANE_BITS and qw.layout == plane_layout((k, n), bits, g, X16_BN):
        return "planes", X16_BN
    if bits not in X16_SHARED_BITS:
        return None
    for order in ("words", "pairs") if bits == 4 else ("words",):
        if qw.layout == column_tiled((k, n), bits, X16_BN, pairs=order == "pairs"):
            return order, X16_BN
    return None


def x16_source(qw: QuantizedWeight, adtype: str) -> QuantizedWeight:
    """The weight the x16 plan of `qw` reads: `qw` itself where its words serve in place (`in_place`); with
    bfloat16 x, whose M = 1 and wide-M rows run the bf16 float kernels over `cpu_weight`'s column-tiled copy,
    that copy where it serves (one copy, not a plane copy beside it: the module docstring); else `qw` (the plan
    makes its planes)."""
    if in_place(qw) is None and adtype == "bfloat16":
        from lowbit.ops.linear import cpu_weight  # linear imports this module

        tiled = cpu_weight(qw, adtype)
        if in_place(tiled) is not None:
            return tiled
    return qw


def x16_operands(qw: QuantizedWeight) -> dict[str, Any]:
    """The x16 GEMV's weight operands of `qw` (torch tensors: "w" its words [⌈N / BN⌉, K // G, BITS, G // 32, BN],
    "scales" and "zeros" column-tiled by BN; no zeros for a `constant_offset` weight) and how to read them
    ("order", "bn", "flip": `in_place`), made once and kept on the weight: the plans of every row count share
    them. A weight whose words serve in place lends them (no copy); else the plan's own plane words."""
    fixed = qw.__dict__.get("_x16_operands")
    if fixed is None:
        import torch

        n, k = qw.shape
        g, bits = qw.group_size, qw.dtype.bits
        own = in_place(qw)
        order, bn = own or ("planes", X16_BN)
        if own is not None:
            words = qw.words.view(np.int32).reshape(-(-n // bn), k // g, bits, g // 32, bn)
        else:
            words = plane_words(unsigned_codes(qw)[0], bits, g, bn)
        flip = int(own is not None and qw.dtype.is_signed)
        fixed = {
            "w": torch.from_numpy(words), "scales": torch.from_numpy(tile_group_rows(qw.scales, bn)),
            "order": order, "bn": bn, "flip": flip,
        }  # fmt: skip
        if qw.zeros is not None and not constant_offset(qw):
            fixed["zeros"] = torch.from_numpy(tile_group_rows(qw.zeros, bn))
        qw.__dict__["_x16_operands"] = fixed
    return dict(fixed)


class X16Plan:
    """The two x16 kernels compiled for one weight, m rows and an activation dtype, with the weight's plane
    words, scales and zeros bound. `run(x2, y2)`: torch tensors, x2 [m, K], y2 [m, N]. Each thread has its
    own scratch, shared by its plans (`_Scratch`; the nano-batch executor runs row ranges of one linear
    concurrently)."""

    def __init__(self, qw: QuantizedWeight, m: int, adtype: str):
        n, k = qw.shape
        g = qw.group_size
        parts = x16_parts(adtype)
        bm = min(m, X16_BM if parts == 2 else X24_BM)
        mp = -(-m // bm) * bm  # rows the quantizer writes (rows >= m read 0)
        self.m, self.mp, self.k, self.groups, self.parts = m, mp, k, k // g, parts
        offset = 1 << (qw.dtype.bits - 1) if qw.dtype.is_signed else constant_offset(qw)
        zero_mode = "none" if constant_offset(qw) else qw.zero_mode
        fixed = x16_operands(qw)
        order, bn, flip = (fixed.pop(key) for key in ("order", "bn", "flip"))
        trace = {
            "BITS": qw.dtype.bits, "OFFSET": offset, "zero_mode": zero_mode, "G": g, "ydtype": adtype,
            "sdtype": str(qw.scales.dtype), "BM": bm, "BN": bn, "TILES": X16_TILES, "PARTS": parts, "FLIP": flip,
        }  # fmt: skip
        gemv = compile_program(
            quantized_gemv_x16.trace(**trace),
            "tvm",
            {
                "tm": 2,
                "index64": True,
                "prefetch": x16_prefetch(qw.dtype.bits),
                "prefetch_locality": GEMV_PREFETCH_LOCALITY,
            },
        )
        quant_options = serial_options("tvm") if m < X16_PARALLEL_QUANT_ROWS else {}
        quant_trace = {"G": g, "adtype": adtype, "BM": bm, "PARTS": parts, "ORDER": order, "BITS": qw.dtype.bits}
        quant = compile_program(quantize_groups_x16.trace(**quant_trace), "tvm", quant_options)
        sizes = {"M": m, "MP": mp, "N": n, "K": k}
        gemv_launch: Any = bind(gemv, {**fixed, **sizes}, ("xq", "xs", "xsum", "y"))  # TVM: has `parts`
        quant_launch: Any = bind(quant, {"M": m, "MP": mp, "K": k}, ("x", "xq", "xs", "xsum"))
        self._gemv, self._quant = gemv_launch, quant_launch
        self._names = (quant_launch.parts[3], gemv_launch.parts[3])
        from lowbit.codegen.tvm.runtime import RECORDING  # here: importing TVM takes ~2.5 s, `lowbit.ops` none

        self._recording = RECORDING
        self._scratch = threading.local()

    def run(self, x2: Any, y2: Any) -> None:
        self.flat(x2.view(-1), y2.view(-1))

    # `linear_launcher` returns the plan itself: a launch whose `flat` the fast path of `quantized_linear` takes
    __call__ = run

    def flat(self, x: Any, y: Any) -> None:
        """`run` with x and y already flat (1-D views): the two compiled functions called on the thread's own
        argument lists, its scratch in them, only x and y set per call (a torch view costs ~1 us here, a kernel
        call ~1 us; 6 views had been 6 of the ~26 us a call at 256x4096; the bound launches' `flat`, which copy
        their argument template per call, took 3.5-4.5 us each against 2.7-3.9 for the bare calls, M = 1,
        64x4096 int2; this `flat` 7.61 us against 7.48 for the two bare calls, session 52). A decode step being
        recorded (`RECORDING`) gets both calls, as the bound launches give; the lists do not keep x and y."""
        mine = self._scratch.__dict__
        calls = mine.get("calls")
        if calls is None or mine["generation"] != _SCRATCH.generation:  # first call here, or the scratch grew
            calls = mine["calls"] = self._thread_calls()
            mine["generation"] = _SCRATCH.generation
        (fq, qargs, qx), (fg, gargs, gy) = calls
        qargs[qx] = x
        gargs[gy] = y
        fq(*qargs)
        fg(*gargs)
        recorded, names = self._recording.calls, self._recording.names
        if recorded is not None and names is not None:  # a step being recorded for replay (runtime.executor)
            recorded += [(fq, tuple(qargs)), (fg, tuple(gargs))]
            names += self._names
        qargs[qx] = gargs[gy] = None  # the caller's tensors are not held past the call

    def _thread_calls(self) -> tuple[tuple[Any, list[Any], int], tuple[Any, list[Any], int]]:
        """This thread's (function, argument list, position of x / y) for the quantizer and the GEMV, with the
        thread's scratch (`_thread_scratch`: x's planes [K // G, MP, PARTS, 8, G // 8], scales and code sums) in
        both lists."""
        sizes = (self.parts * self.mp * self.k, self.mp * self.groups, (self.parts - 1) * self.mp * self.groups)
        bufs = tuple(b[:n] for b, n in zip(_thread_scratch(sizes), sizes))
        out = []
        for launch, values, free in ((self._quant, (None, *bufs), 0), (self._gemv, (*bufs, None), 3)):
            fn, template, slots, _ = launch.parts
            args = template.copy()
            for j, i in slots:
                args[i] = values[j]
            out.append((fn, args, dict(slots)[free]))
        return out[0], out[1]


class _Scratch(threading.local):
    """Per thread: the x16 plans' scratch (x's planes int8, scales fp32, code sums int32; flat torch tensors),
    shared by every plan the thread runs (its calls never overlap), grown to the largest call; `generation`
    counts the growths, so each plan re-takes its views after one. One set a thread, not one a plan and row
    count: a plan per prompt length had each kept its own (a 512-token float32 prefill: 3·512·K bytes a linear,
    ~0.4 GB over the 1.1B model's linears, per length seen). A decode step recorded for replay keeps the
    buffers it was recorded with."""

    bufs: tuple[Any, ...] | None = None
    generation = 0


_SCRATCH = _Scratch()


def _thread_scratch(sizes: tuple[int, int, int]) -> tuple[Any, ...]:
    """This thread's scratch (`_Scratch`), grown to hold `sizes` elements of each buffer."""
    import torch

    have = _SCRATCH.bufs
    if have is None or any(b.numel() < n for b, n in zip(have, sizes)):
        old = (0, 0, 0) if have is None else tuple(b.numel() for b in have)
        _SCRATCH.bufs = tuple(
            torch.empty(max(n, o), dtype=d) for n, o, d in zip(sizes, old, (torch.int8, torch.float32, torch.int32))
        )
        _SCRATCH.generation += 1
    assert _SCRATCH.bufs is not None
    return _SCRATCH.bufs


def x16_plan(qw: QuantizedWeight, m: int, adtype: str) -> X16Plan:
    """The cached `X16Plan` of `qw` for m rows of `adtype` (kept on the weight, like its other plans)."""
    plans = qw.__dict__.setdefault("_plans", {})
    key = (m, "tvm", adtype, "x16")
    plan = plans.get(key)
    if plan is None:
        plan = plans[key] = X16Plan(x16_source(qw, adtype), m, adtype)
    return plan


__all__ = [
    "X16_BM",
    "X16_DTYPES",
    "X16_MAX_M",
    "X16_SHARED_BITS",
    "X24_BM",
    "X16Plan",
    "unsigned_codes",
    "x16_every_m",
    "x16_operands",
    "x16_parts",
    "x16_plan",
    "x16_serves",
    "x16_weight",
]
