"""Tile IR -> TVM TensorIR, written as TVMScript text (readable, dumpable, parsed by `tvm.script`).

How a tile program becomes loops:

* the grid becomes one `T.parallel` loop over all blocks (option `parallel="fused"`; `"none"` runs
  blocks serially); `pid0, pid1, ...` are let-bound from the fused index;
* every tile is an **index function** `idx -> TIR expression` (loads, casts, dequantize, arithmetic,
  broadcast, reshape, transpose are pure index arithmetic and are *inlined* into their consumers, the way
  TE's compute_inline fuses them), or a **local buffer** when it must exist in memory: dot and reduce
  results, loop-carried tiles (Assign targets), tiles read inside a deeper loop than the one defining
  them, and dot operands reused by more than one row/column (a dequantized [BK, BN] weight tile in a GEMM
  is unpacked once per k-step, not once per row of the activation tile);
* a consumer loop nest (materialisation, dot, reduce, store) whose inlined loads all fall inside their
  tensors is emitted twice: a fast path with no bounds checks and a vectorized innermost loop, guarded by a
  uniform scalar condition, and a checked path (clamped addresses, `T.if_then_else`) for ragged edges;
* dots run `for i-block, k, i (unrolled TM rows), j (vectorized)`, so TM rows of accumulators stay in
  registers and each operand element is read once per TM rows; `acc += dot(a, b)` updates the
  loop-carried accumulator in place.

Values (matching `lowbit.codegen.reference`): integer tiles are int32 (int64 for 64-bit types) wrapped to
their width after every op; every float tile is held as float32 whose value is rounded to the tile dtype
(fp16/bf16 through native casts, narrower formats by exact bit arithmetic); sub-byte codes are extracted
from 32-bit words with shifts and masks from the packed layout's symbolic `locate`, signed codes
sign-extended by a shift pair, float codes rebuilt from their bit fields.
"""

from __future__ import annotations

import functools
import itertools
import math
import re
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import sympy

from lowbit.codegen.backend import BackendError
from lowbit.codegen.tvm.bf16_dot import stand_in
from lowbit.dtypes import DataType, decode, holds_exactly
from lowbit.dtypes import dtype as lookup_dtype
from lowbit.ir import instructions as I
from lowbit.ir.layout import PackedLayout
from lowbit.ir.layout.symbolic import SourcePrinter, xor
from lowbit.ir.program import Program
from lowbit.ir.statements import (
    STATEMENTS,
    Assign,
    For,
    If,
    Let,
    ScalarLoad,
    Stmt,
    Store,
    child_bodies,
    tiles_read,
    walk,
)
from lowbit.ir.values import TensorParam, Tile

OPTIONS: dict[str, Any] = {
    # SIMD lanes of the innermost loop: "auto" = one fp32 register of the build target (AVX-512: 16, AVX2: 8;
    # 16 off x86 / on GPUs), resolved by lowbit.codegen.tvm.runtime. On AVX2, 16 lanes of a 4-bit cache row span
    # two words, so the word index is no longer one broadcast: decode attention gathered (B=8 ctx=4096 int4,
    # 2 threads: 22 ms at 8 lanes vs 29-31 ms at 16)
    "vector": "auto",
    "parallel": "fused",  # "fused": one parallel loop over the whole grid; "none": serial blocks
    "unroll": 8,  # unroll factor of a dot's k loop (8 makes int4 shift amounts constants)
    "tm": 4,  # accumulator rows kept in registers by a dot
    # 8-bit integer dots: "avx2" lowers them to vpmaddubsw/vpmaddwd when value ranges make that exact,
    # "vnni" to AVX-512 VNNI's vpdpbusd (u8·i8 quads into i32, 16 lanes; "avx2"'s form where a tile is not
    # 16 columns wide) (see `_Emitter.int8_dot_plan`), "none" keeps the generic loops; "auto" = "vnni" on an
    # x86 CPU with AVX-512 VNNI, else "avx2" where it has AVX2 (resolved by lowbit.codegen.tvm.runtime);
    # "amx": AMX's tdpbssd on 16x64-byte tiles where a dot's tile is whole AMX tiles (rows and columns in
    # 16s, K in 64s), "vnni"'s form elsewhere; "auto" picks it where the target has AMX-INT8 and the OS
    # grants the tile state (`runtime.amx_permitted`)
    "int8_dot": "auto",
    # software prefetch, in bytes ahead: a large tile loaded from a read-only tensor inside a loop has its cache
    # lines prefetched that many bytes' worth of iterations ahead (0: off); see `_Emitter.prefetch`
    "prefetch": 4096,
    # the cache level `_Emitter.prefetch`'s hints aim at, as llvm.prefetch's locality: 3 = L1 (prefetcht0),
    # 2 = L2 (prefetcht1), 0 = non-temporal (prefetchnta)
    "prefetch_locality": 3,
    # the cache level that the table GEMM forms' word prefetches aim at (`_Emitter._prefetch_lut` in the decode
    # loop of `_dot_lut_bf16`'s and `_dot_lut_gemm`'s GEMM forms), as llvm.prefetch's locality: 3 = L1
    # (prefetcht0), 2 = L2 (prefetcht1). Such a form decodes its tile in a burst, then runs its dot (AMX, FMA
    # blocks) over the decoded tile; the hints for the next tile are all issued in the burst. One ring of
    # streamed weights for both settings, 2 threads, alternating in one process, 4096² int4: bf16 x (16-row
    # AMX tile) M = 4 / 8 / 16 0.531 / 0.944 / 0.653 -> 0.515 / 0.659 / 0.595 ms, fp32 x M = 16 2.23 -> 2.18.
    # The M = 1 walks keep 3 (2 there: int4 bf16 0.340 against 0.332 ms, int2 0.210 against 0.203), and so does
    # the decoded GEMM form's word walk (int3 bf16 M = 16: 1.195 against 1.173 ms)
    "gemm_prefetch_locality": 2,
    # ten-per-word linear int codes (int3) in `_Emitter._dot_lut_words`: 4 = one vpermps per 4-bit field of the
    # word (`_words_by_field`), 0 = one per code
    "lut_field": 4,
    # parts of k in which the AMX GEMM forms of one pass (16 rows, <= 64 columns: the GEMV at M <= 16) decode
    # their tile and run its tile products, part by part (`_Emitter._amx_bf16_block`'s `decode`); 1: the whole
    # tile decoded, then multiplied
    "amx_parts": 2,
    # int32 scalar parameters (the sizes) declared int64, so the address arithmetic is 64-bit (see `emit`). Off by
    # default: measured per kernel (streamed M = 1 GEMVs, 4096x4096 int4, 2 threads): the a8 GEMV 0.92x the time
    # (1 thread, hot: 0.87x), the W4A16 LUT GEMV 1.03-1.05x; decode attention unchanged
    "index64": False,
    # a float dot whose b operand is a transposed tile with few rows of a (decode attention's q·Kᵀ) runs as
    # row·column inner products over `inner_dot` contiguous lanes of k (see `_Emitter.dot_inner`; 0: off)
    "inner_dot": 8,
    # independent i32 accumulator chains a vpdpbusd dot keeps in flight (rows of the block x chains per row);
    # its latency is ~4.7 cycles at ~1.4 per cycle on Zen 5, so 8 are needed to issue at full rate
    "vnni_chains": 8,
    # a float dot whose register block is fewer than `fma_chains` vectors (tm rows x the column vectors: decode
    # attention's [4 heads, 16] tiles are 4) splits k into interleaved partial sums so that many independent FMA
    # chains are in flight (FMA latency ~4 cycles x 2 pipes on Zen 5); 0 or 1: one chain per vector
    "fma_chains": 1,
    # a reduction along the last axis runs in vector lane partials (`_reduce_lanes`) from this many vectors of
    # elements; shorter ones loop over the reduced axis with the kept axes vectorized
    "reduce_vectors": 2,
    # tiles computed from constants only stay inline where used (see `_Emitter.const_tiles`); False: stored when
    # read in a deeper loop, as other tiles
    "inline_consts": True,
    # a float dot whose b operand is <= 4-bit codes cast to float, read as a packed tile whose 16 consecutive
    # columns are 16 consecutive words (the column-tiled GEMV layouts), decodes each code with one vpermps
    # from a 16-entry table of the dtype's values (`_Emitter.dot_lut`): "avx512", "none", or "auto" =
    # "avx512" on an x86 CPU with AVX-512 (resolved by lowbit.codegen.tvm.runtime)
    "lut": "auto",
    # a `dot_lut` GEMV with bfloat16 activations over 4-bit codes in pair order (`column_tiled(pairs=True)`)
    # multiplies with AVX-512 BF16's vdpbf16ps, two products per lane, on codes decoded 32 at a time by vpermw
    # (`_Emitter._dot_lut_bf16`, `bf16_dot.py`): "avx512bf16", "none", "amx" (its GEMM form's whole 16x16
    # tiles on AMX-BF16's tdpbf16ps, `_Emitter._amx_bf16_block`; the rest as "avx512bf16"), or "auto" = "amx"
    # where the CPU has AMX-BF16 and Linux grants its tile state, else "avx512bf16" on an x86 CPU with AVX-512
    # BF16 (resolved by lowbit.codegen.tvm.runtime)
    "bf16_dot": "auto",
    # the M = 1 pair dot over int4/uint4 codes (values one apart, `_affine_codes`) builds each bf16 weight as
    # 1 + u/16 with a shift and one vpternlogd instead of vpermw's table lookup (two uops on Intel cores),
    # then removes the 1 with the tile's Σa (`_affine_pair_codes`); False: the table lookup
    "bf16_affine": True,
    # AVX-512 VBMI's vpmultishiftqb, which places any byte-wide field of a qword in any byte: the decoded GEMM
    # form on AMX (`_Emitter._dot_decoded_gemm`) builds a pair of integer codes of up to 7 bits as the bf16 pair
    # (1 + u/2^bits, 1 + u'/2^bits) with it and one vpternlogd (`_multishift_pairs`; with `bf16_affine`, the
    # tile's Σa removing the 1), where the table form shifts and masks each code and looks the pair up with
    # vpermi2w: "avx512vbmi", "none", or "auto" = "avx512vbmi" where the build target has it (resolved by
    # lowbit.codegen.tvm.runtime)
    "multishift": "auto",
    # the register block of the table-decoded dot's GEMM forms (`_Emitter._block_dot`): rows x 16-column
    # vectors of fp32 accumulators held over all of k, each decoded weight vector loaded once per block of
    # rows and each row's element (fp32) or pair (bf16) broadcast once per block of vectors (vdpbf16ps: ~6
    # cycles latency, 2 per cycle on Zen 5, so >= 12 independent accumulators)
    "block_rows": 8,
    "block_vectors": 2,
    # a table-decoded dot of at least this many rows (and more than `tm`) runs a GEMM form (`_gemm_form`): 4096²
    # int4 bf16 x, weights streamed, 2 threads, against the GEMV walks: M = 16 1.00 vs 1.30 ms, M = 8 0.71 vs
    # 0.78, M = 4 0.44 vs 0.51
    "gemm_rows": 4,
    # a dot of codes of any other width (1-8 bits: 5-8-bit, 3-bit codes whose ten per word do not divide a tile,
    # 1-2-bit, float formats with inf/NaN codes) cast to float, read as `lut`'s column-tiled words, with as many
    # rows as a GEMM form takes: its tile's codes decoded once into fp32 (shift, sign or mask, convert; floats by
    # their bit assembly) and the GEMM form's dot over them (`_Emitter._dot_decoded_gemm`); False: the generic loops
    "decode_gemm": True,
    # the build target: "cpu" (LLVM for this CPU) or "cuda" (`arch`): on CUDA every grid program is a thread
    # block of `threads` threads, each tile op a loop over the tile's elements strided across the threads,
    # tiles in shared memory (see `_Emitter.gpu_nest`)
    "target": "cpu",
    "arch": "sm_90",
    "threads": 128,
}
TARGETS = ("cpu", "cuda")
# shared memory a CUDA block declares statically. Not more: TVM's ThreadSync takes every dynamic ("shared.dyn")
# buffer for an alias of every other and then wants barriers under the last round's guard (`gpu_nest`), and
# merging static buffers (tirx.merge_static_smem) reuses memory across loops without barriers of its own
SHARED_BYTES = 48 * 1024

BF16_DOT = ("auto", "amx", "avx512bf16", "none")
INT8_DOT = ("auto", "amx", "vnni", "avx2", "none")
MULTISHIFT = ("auto", "avx512vbmi", "none")
AMX_TILES = 8  # AMX tile registers (palette 1), each configured as 16 rows x 64 bytes
AMX_BF16_SUMS = 4  # accumulator tiles `_amx_bf16_block` holds per pass (registers 3 .. 6)
AMX_FP32_ROWS = 64  # the fp32 table-decoded GEMM form runs on AMX-BF16 (three bf16 parts of x) from this row tile
# an elementwise loop over a tile's last axis is unrolled into at most this many vectors; longer rows run a
# serial loop over such groups. Fully unrolled rows of 1024 elements (silu_mul's block) made TVM's
# CommonSubexprElim and StmtSimplify take ~40 s for one bf16 kernel and the body outgrew the L1 i-cache
MAX_UNROLLED_VECTORS = 8
# the smallest tile `_Emitter.prefetch` hints. At 256 the M = 1 GEMV's scale row (256 B per group, 8 KiB apart)
# was hinted too: no change beyond noise (4096² int4 bf16 x, streamed, alternating: 0.235 / 0.235 ms against
# 0.226 / 0.236 ms; an earlier noisier pair 0.269 / 0.271 against 0.275 / 0.285)
PREFETCH_MIN_BYTES = 512
# instructions whose result is a constant tile when every operand is one (see `_Emitter.const_tiles`)
_CONST_PRESERVING = (I.Binary, I.Unary, I.Cast, I.Reshape, I.Broadcast, I.Transpose, I.Where)


def check_options(options: Mapping[str, Any]) -> dict[str, Any]:
    unknown = set(options) - set(OPTIONS)
    if unknown:
        raise BackendError(f"tvm backend: unknown options {sorted(unknown)}; it takes {sorted(OPTIONS)}")
    out = {**OPTIONS, **options}
    if out["parallel"] not in ("fused", "none"):
        raise BackendError(f"tvm backend: parallel={out['parallel']!r}; use 'fused' or 'none'")
    if out["lut"] not in ("auto", "avx512", "none"):
        raise BackendError(f"tvm backend: lut={out['lut']!r}; use 'auto', 'avx512' or 'none'")
    if out["bf16_dot"] not in BF16_DOT:
        raise BackendError(f"tvm backend: bf16_dot={out['bf16_dot']!r}; use one of {list(BF16_DOT)}")
    if out["int8_dot"] not in INT8_DOT:
        raise BackendError(f"tvm backend: int8_dot={out['int8_dot']!r}; use one of {list(INT8_DOT)}")
    if not (isinstance(out["inner_dot"], int) and out["inner_dot"] >= 0):
        raise BackendError(f"tvm backend: option inner_dot={out['inner_dot']!r} must be an int >= 0 (lanes; 0: off)")
    if out["vector"] != "auto" and not (isinstance(out["vector"], int) and out["vector"] >= 1):
        raise BackendError(f"tvm backend: option vector={out['vector']!r} must be 'auto' or a positive int (lanes)")
    for name in (
        "unroll",
        "tm",
        "vnni_chains",
        "fma_chains",
        "reduce_vectors",
        "block_rows",
        "block_vectors",
        "gemm_rows",
        "amx_parts",
    ):
        if not (isinstance(out[name], int) and out[name] >= 1):
            raise BackendError(f"tvm backend: option {name}={out[name]!r} must be a positive int")
    for name in ("inline_consts", "decode_gemm", "bf16_affine"):
        if not isinstance(out[name], bool):
            raise BackendError(f"tvm backend: option {name}={out[name]!r} must be True or False")
    if not (isinstance(out["prefetch"], int) and out["prefetch"] >= 0):
        raise BackendError(f"tvm backend: option prefetch={out['prefetch']!r} must be an int >= 0 (bytes ahead)")
    if out["target"] not in TARGETS:
        raise BackendError(f"tvm backend: option target={out['target']!r}; use one of {list(TARGETS)}")
    if not (isinstance(out["arch"], str) and re.fullmatch(r"sm_\d+a?", out["arch"])):
        raise BackendError(f"tvm backend: option arch={out['arch']!r}; use a CUDA arch such as 'sm_90'")
    threads = out["threads"]
    if not (isinstance(threads, int) and 32 <= threads <= 1024 and threads % 32 == 0):
        raise BackendError(f"tvm backend: option threads={threads!r} must be a multiple of 32 in 32..1024")
    for name in ("prefetch_locality", "gemm_prefetch_locality"):
        if not (type(out[name]) is int and 0 <= out[name] <= 3):
            raise BackendError(
                f"tvm backend: option {name}={out[name]!r}; use 0..3 (llvm.prefetch's locality: 3 = L1, 2 = L2)"
            )
    if out["multishift"] not in MULTISHIFT:
        raise BackendError(f"tvm backend: multishift={out['multishift']!r}; use one of {list(MULTISHIFT)}")
    if out["lut_field"] not in (0, 4):
        raise BackendError(f"tvm backend: option lut_field={out['lut_field']!r}; use 4 (4-bit fields) or 0 (per code)")
    return out


# ---- scalar expressions ------------------------------------------------------------------------------


class _TirPrinter(SourcePrinter):
    """sympy index expressions as TVMScript: `//` and `%` are floordiv/floormod on PrimExprs there too."""

    def _print_ceiling(self, expr: sympy.ceiling) -> str:
        num, den = self._fraction(expr.args[0])
        return f"T.floordiv({self._print(num)} + {self._print(den)} - 1, {self._print(den)})"

    def _print_floor(self, expr: sympy.floor) -> str:
        num, den = self._fraction(expr.args[0])
        if den == 1:
            return self._print(num)
        return f"T.floordiv({self._print(num)}, {self._print(den)})"

    def _print_Mod(self, expr: sympy.Mod) -> str:
        a, b = expr.args
        return f"T.floormod({self._print(a)}, {self._print(b)})"

    def _print_Min(self, expr: sympy.Min) -> str:
        return _fold("T.min", [self._print(a) for a in expr.args])

    def _print_Max(self, expr: sympy.Max) -> str:
        return _fold("T.max", [self._print(a) for a in expr.args])

    def _print_xor(self, expr: xor) -> str:
        a, b = expr.args
        return f"T.bitwise_xor({self._print(a)}, {self._print(b)})"

    def _print_BooleanTrue(self, expr: Any) -> str:
        return "True"

    def _print_BooleanFalse(self, expr: Any) -> str:
        return "False"

    def _print_Relational(self, expr: Any) -> str:
        return f"({self._print(expr.lhs)} {expr.rel_op} {self._print(expr.rhs)})"

    def _print_And(self, expr: Any) -> str:
        return " and ".join(f"({self._print(a)})" for a in expr.args)

    def _print_Or(self, expr: Any) -> str:
        return " or ".join(f"({self._print(a)})" for a in expr.args)

    def _print_Not(self, expr: Any) -> str:
        return f"not ({self._print(expr.args[0])})"


def _chain_q(c0: str, q: int) -> str:
    """`_vnni_chain`: the index of quad q after c0 (folded where c0 is a number)."""
    return str(int(c0) + q) if c0.isdigit() else f"{c0} + {q}"


def _chain_k(c0: str, q: int, r: int) -> str:
    """`_vnni_chain`: the k of byte r of quad q after c0 (folded where c0 is a number)."""
    return str((int(c0) + q) * 4 + r) if c0.isdigit() else f"({c0} + {q}) * 4 + {r}"


def _chain_b_index(col: str, k_of: Callable[[int], str], r: int) -> tuple[str, str]:
    """`_vnni_chain`: b's (k, column) index of byte r of a quad."""
    return k_of(r), col


def _chain_a_index(row: str, k_of: Callable[[int], str], r: int) -> tuple[str, str]:
    """`_vnni_chain`: a's (row, k) index of byte r of a quad."""
    return row, k_of(r)


VNNI_CHAIN_ROWS = 8  # a VNNI chain's rows (`_vnni_chain`): rows x chains accumulators in registers


def _quad(f: Any, idx: Callable[[int], tuple[str, str]], ctx: Any) -> str:
    """The four bytes f(idx(0)) .. f(idx(3)) (four consecutive k of an 8-bit operand) as one i32 lane."""
    return _fold("T.bitwise_or", [f"T.shift_left(T.bitwise_and({f(idx(r), ctx)}, 255), {8 * r})" for r in range(4)])


def _bf16_parts(x: str, lanes: int) -> list[str]:
    """Three fp32 vector expressions (`lanes` wide), each exact in bf16, that sum to the fp32 vector x exactly:
    hi (x truncated to its top 16 bits), mid (x − hi truncated likewise) and lo (the rest: at most 8
    significant bits). A non-finite x has hi = x and zero parts (x − hi would be NaN for an infinity)."""
    fty, ity = f"float32x{lanes}", f"int32x{lanes}"

    def top(v: str) -> str:
        return (
            f'T.reinterpret("{fty}", T.bitwise_and(T.reinterpret("{ity}", {v}), T.Broadcast(T.int32(-65536), {lanes})))'
        )

    exp = f'T.bitwise_and(T.reinterpret("{ity}", {x}), T.Broadcast(T.int32(2139095040), {lanes}))'
    finite = f"{exp} != T.Broadcast(T.int32(2139095040), {lanes})"
    hi = top(x)
    rest = f"T.Select({finite}, {x} - {hi}, T.Broadcast(T.float32(0), {lanes}))"
    mid = top(rest)
    return [hi, mid, top(f"{rest} - {mid}")]


def _pair_vector(q: str, jv: str, BN: int, tiled: bool) -> str:
    """The flat index in a decoded pair tile bp ([KP, BN] bf16 pairs) of the 16 lanes of pair row q and column
    vector jv: row-major (q·BN + 16·jv, what `_block_dot`'s vectors read) or, `tiled`, AMX B tiles one after
    another (tile (q / 16, jv) of 1 KiB, its 16 pair rows 64 bytes apart). Row-major rows of BN = 256 columns lie
    1 KiB apart, so one B tile's 16 rows fell in 4 of L1's 64 sets and a pass's 64 pair rows x 4 tiles in 16
    lines a set (12 ways): every 16-row block of a re-read the pass's B tiles from L2."""
    if not tiled:
        return f"({q}) * {BN} + ({jv}) * 16"
    return f"(T.floordiv({q}, 16) * {BN // 16} + {jv}) * 256 + T.floormod({q}, 16) * 16"


def _pair_rows(buf: str, kp: int) -> Callable[[str, str], str]:
    """(row, c) -> the address of pair 16·c of `row` in the staged pairs `buf` [rows, kp] (int32)."""
    return lambda r, c: f"T.address_of({buf}[({r}) * {kp} + {c} * 16])"


def _quad_rows(t: str, j: str) -> Callable[[int], tuple[str, str]]:
    """r -> the index (4·t + r, j): the four k of quad t of column j (`_quad`)."""
    return lambda r: (f"{t} * 4 + {r}", j)


def _element_address(buf: str) -> Callable[[Any, Any], str]:
    """(row, column) -> the address of that element of the 2-D local buffer `buf`."""
    return lambda r, c: f"T.address_of({buf}[{r}, {c}])"


def _fold(fn: str, args: list[str]) -> str:
    out = args[0]
    for a in args[1:]:
        out = f"{fn}({out}, {a})"
    return out


_PRINTER = _TirPrinter()


def scalar(expr: Any) -> str:
    if isinstance(expr, bool):
        return "True" if expr else "False"
    if isinstance(expr, int):
        return str(expr)
    return _PRINTER.doprint(sympy.sympify(expr))


def _field_tables(
    table: list[float], bits: int, per: int, word_bits: int, width: int = 4
) -> list[tuple[int, list[tuple[int, list[float]]]]] | None:
    """For a word of `per` codes of `bits` bits (code u at bit u·bits) whose value is linear in the bits
    (value(c) = Σ_j bit_j(c)·value(2^j), value(0) = 0: two's complement and unsigned ints; not the float
    formats), cut into fields of `width` bits from bit 0 (the emitter uses 4, vpermps's index; 5-bit fields
    through vpermi2ps, six lookups for ten int3 codes, measured 1.51x the time of 4-bit fields hot on the
    Zen 5 VM and were dropped; on the AMX Xeon VM, 4096x1024 fp32 x M = 1 hot, 69.3 against 59.9 us, and
    streamed 4096² 0.328 / 0.317 ms fp32 / bf16 x against 0.317 / 0.309): per field, its first bit
    and the codes u with bits in it, each with the constant vector C_{f,u} of 2^width entries, C[i] = the value
    that u's bits among i's contribute. None when the decode is not linear or a field would touch more than
    three codes."""
    if 4 % bits == 0 or bits > 4:
        return None
    vals = [table[c] for c in range(1 << bits)]
    if vals[0] != 0 or any(vals[c] != sum(vals[1 << j] for j in range(bits) if c >> j & 1) for c in range(1 << bits)):
        return None
    out = []
    for start in range(0, per * bits, width):
        parts: dict[int, list[float]] = {}
        for t in range(width):
            u, j = divmod(start + t, bits)
            if u >= per or start + t >= word_bits:
                continue  # unused bits above the word's codes
            col = parts.setdefault(u, [0.0] * (1 << width))
            for i in range(1 << width):
                if i >> t & 1:
                    col[i] += vals[1 << j]
        if len(parts) > 3:
            return None
        out.append((start, sorted(parts.items())))
    return out


def _amx_one_pass(BM: int, BN: int, sources: int = 1) -> bool:
    """Whether `_amx_bf16_block` covers a [BM, BN] output in one pass: one 16-row tile and every column tile's
    sums held at once (AMX_BF16_SUMS accumulator tiles for one a operand, 2 for several)."""
    held = AMX_BF16_SUMS if sources == 1 else 2
    return BM == 16 and held * 16 >= BN


def _walk_steps(KT: int, span: int, steps: int, aligned: bool, c: int, n: int) -> int:
    """The steps (word rows of `span` k) of a word walk over a tile of KT k that parts 0 .. c of n cover: enough
    that every k before KT·(c + 1)/n is decoded (a step holds tile k span·w − lead .. span·w − lead + span − 1,
    lead 0 when `aligned`, else at most span − 1), at most `steps`; 0 for c < 0."""
    if c < 0:
        return 0
    if c == n - 1:
        return steps
    end = KT * (c + 1) // n  # the k before this are the parts' own
    lead = 0 if aligned else span - 1
    return min(steps, (end - 1 + lead) // span + 1)


def _tile_locations(load: I.Load) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """(word, bit) [rows, cols] of every code of the packed tile `load` reads, with the tile placed at a few
    aligned origins inside the layout's concrete shape: the numerical checks of the table decode's plans."""
    lay = load.tensor.layout
    rows, cols = (int(n) for n in load.shape)
    shape = tuple(int(n) for n in lay.shape)
    for r0, c0 in sorted({(0, 0), (rows, cols), (3 * rows, 2 * cols)}):
        if r0 + rows > shape[0] or c0 + cols > shape[1]:
            continue
        k, j = np.meshgrid(np.arange(r0, r0 + rows), np.arange(c0, c0 + cols), indexing="ij")
        word, bit = (np.broadcast_to(np.asarray(v, np.int64), k.shape) for v in lay.locate(k, j))
        yield word, bit


def _accumulate(acc: str, x: str) -> str:
    """acc + x for float32x16 vectors as an FMA x·1 + acc (the same single rounding): on the Zen 5 VM adds share
    the vector pipes with the shifts and vpermps of a table decode, FMAs do not."""
    one = "T.Broadcast(T.float32(1), 16)"
    return f'T.call_llvm_pure_intrin("float32x16", "llvm.x86.avx512.vfmadd.ps.512", {x}, {one}, {acc}, 4)'


def _lut_decode(tbl: str, idx: str, entries: int) -> str:
    """The float32x16 values of the codes in the low bits of `idx`'s lanes from the table buffer `tbl`: 16
    entries: vpermps; 32: vpermi2ps (bits 0-4 pick from tbl[0:16] and tbl[16:32]); 64 (a sign-magnitude 6-bit
    format, `tbl` holding the 32 magnitudes): vpermi2ps on bits 0-4, then bit 5 xor-ed onto the float's sign."""
    if entries == 16:
        return _permvar(f"{tbl}[T.Ramp(0, 1, 16)]", idx)
    lo, hi = f"{tbl}[T.Ramp(0, 1, 16)]", f"{tbl}[T.Ramp(16, 1, 16)]"
    mag = f'T.call_llvm_pure_intrin("float32x16", "llvm.x86.avx512.vpermi2var.ps.512", {lo}, {idx}, {hi})'
    if entries == 32:
        return mag
    sign = f"T.bitwise_and(T.shift_left({idx}, T.Broadcast(T.int32(26), 16)), T.Broadcast(T.int32(-2147483648), 16))"
    return f'T.reinterpret("float32x16", T.bitwise_xor(T.reinterpret("int32x16", {mag}), {sign}))'


def _bf16_pair(lo: str, hi: str, lanes: int = 1) -> str:
    """int32 of two bf16 values given as fp32 expressions (exact: a bf16 value's fp32 bits are its own << 16):
    lo's bf16 bits in the low half, hi's in the high half, the operand order of a vdpbf16ps pair (`lanes`: of
    vectors of that many fp32)."""
    ty = "int32" if lanes == 1 else f"int32x{lanes}"
    lo, hi = (f'T.reinterpret("{ty}", {v})' for v in (lo, hi))
    return f"T.bitwise_or(T.shift_right({lo}, 16) & T.int32(65535), {hi} & T.int32(-65536))"


def _pair_codes(table: str, words: str, step: str) -> str:
    """vpermw: the bf16 bit patterns of pair step `step` (0..3) of 16 pair-order words (`words`, int16x32):
    lane 2j the code k + 2·step of column j, lane 2j + 1 the code k + 2·step + 1, looked up in the 32-entry
    int16 `table` (vpermw reads 5 bits; entry i is the value of code i mod 16)."""
    idx = f'T.shift_right({words}, T.Broadcast(T.Cast("int16", {step} * 4), 32))'
    return f'T.call_llvm_pure_intrin("int16x32", "llvm.x86.avx512.permvar.hi.512", {table}[T.Ramp(0, 1, 32)], {idx})'


def _affine_codes(table: list[float]) -> tuple[int, float] | None:
    """(flip, β) when the 16 codes' values are q = (code ^ flip) + β, integers one apart (int4: flip 8, β = -8,
    two's complement read as an offset binary; uint4: 0, 0): what `_affine_pair_codes` decodes without a
    table. None for any other table (fp4's values)."""
    return _affine_values(np.asarray(table[:16], np.float64), 4)


def _affine_values(values: np.ndarray, bits: int) -> tuple[int, float] | None:
    """(flip, β) when the 2^bits codes' values (`values`, indexed by code) are (code ^ flip) + β, integers one
    apart: two's complement read as an offset binary (flip 2^(bits-1), β = -2^(bits-1)) or unsigned (0, 0).
    None for any other values (the float formats)."""
    t = np.asarray(values[: 1 << bits], np.float64)
    u = np.arange(1 << bits)
    for flip in (0, 1 << (bits - 1)):
        if np.array_equal(t[u ^ flip], u + t[flip]):
            return flip, float(t[flip])
    return None


def _multishift_pairs(words: str, first: int, bits: int, flip: int) -> str:
    """int32x16: per 32-bit word of `words` (int32x16), the bf16 pair (1 + u/2^bits, 1 + v/2^bits) of its two
    codes of `bits` (<= 7) bits at bit `first` (u = code ^ flip, the low half) and `first + bits` (v, the high
    half), each code in its half's top mantissa bits: one vpmultishiftqb (AVX-512 VBMI: each byte of a qword
    takes the 8 bits of that qword from any bit offset on, wrapping past bit 63; here bytes 0 and 2 of each
    dword take the windows whose top bits are its two codes) and one vpternlogd ((picked & fields) ^ const: the
    flip inside the fields, 0x3F80, the exponent of 1, outside them). Exact in bf16 (at most 8 significant
    bits); the dot's caller removes the 1 with Σa (`_amx_bf16_block`'s `affine`)."""
    top = 7 - bits  # the code's lowest bit within its half's low byte (mantissa bits top .. 6)
    lo, hi = (first - top) % 64, (first + bits - top) % 64
    ctl = lo | hi << 16 | (lo + 32) % 64 << 32 | (hi + 32) % 64 << 48  # the odd dword of a qword: bits 32 on
    field = ((1 << bits) - 1) << top
    const = 0x3F80 | flip << top
    picked = (
        'T.reinterpret("int32x16", T.call_llvm_pure_intrin("int8x64", "llvm.x86.avx512.pmultishift.qb.512", '
        f'T.reinterpret("int8x64", T.Broadcast(T.int64({ctl}), 8)), T.reinterpret("int8x64", {words})))'
    )
    fields, consts = (f"T.Broadcast(T.int32({v | v << 16}), 16)" for v in (field, const))
    return f"T.bitwise_xor(T.bitwise_and({picked}, {fields}), {consts})"


def _affine_pair_codes(words: str, step: int, flip: int) -> str:
    """The bf16 bit patterns of 1 + u'/16 for pair step `step` (0..3) of 16 pair-order words (as `_pair_codes`),
    u' = code ^ flip placed in the mantissa's top 4 bits: one 16-bit shift and one vpternlogd ((w ^ flip·8) &
    0x78 | 0x3F80, a function of the shifted words and two constants), where the table form's vpermw costs
    two uops on Intel cores. Exact in bf16 (5 significant bits); the dot's caller removes the 1 with Σa."""
    shifted = (
        f"T.shift_left({words}, T.Broadcast(T.int16(3), 32))"
        if step == 0
        else f"T.shift_right({words}, T.Broadcast(T.int16({4 * step - 3}), 32))"
    )
    if flip:
        shifted = f"T.bitwise_xor({shifted}, T.Broadcast(T.int16({flip << 3}), 32))"
    return f"T.bitwise_or(T.bitwise_and({shifted}, T.Broadcast(T.int16(120), 32)), T.Broadcast(T.int16(16256), 32))"


def _permvar(table: str, idx: str) -> str:
    """vpermps: lane i of the 16-float `table` vector at the low 4 bits of lane i of the int32x16 `idx`."""
    return f'T.call_llvm_pure_intrin("float32x16", "llvm.x86.avx512.permvar.sf.512", {table}, {idx})'


# ---- value representation ----------------------------------------------------------------------------


def value_type(dt: DataType) -> str:
    """The TIR type a tile of `dt` is computed in."""
    if dt.is_bool:
        return "bool"
    if dt.is_float:
        return "float32"
    return "int64" if dt.bits > 32 or (dt.kind == "uint" and dt.bits == 32) else "int32"


def buffer_type(dt: DataType) -> str:
    """The element type of a local buffer holding a tile of `dt`: booleans live as int8 (TVM legalizes bool
    buffers to int8 and then rejects selects on what it reads back), everything else as its value type."""
    return "int8" if dt.is_bool else value_type(dt)


def to_buffer(value: str, dt: DataType) -> str:
    return f'T.Cast("int8", {value})' if dt.is_bool else value


def is_nan(x: str) -> str:
    """NaN test on the bits (LLVM may fold `x != x` under fast-math)."""
    return f'(T.bitwise_and(T.reinterpret("int32", {x}), 2147483647) > 2139095040)'


# IEEE 754 semantics of float32 values in TIR. TVM's arithmetic simplifier treats floats as reals: it folds
# `x == x` to true and `x != x` to false and rewrites `not (a < b)` as `a >= b` (true where a NaN made the
# compare false); its LLVM code generator emits `!=` as an ordered compare (false with a NaN operand) and
# `max` / `min` as `select(a > b, a, b)`, which returns b when a is NaN (CUDA C's fmaxf drops a NaN on either
# side). LLVM itself keeps IEEE semantics (no fast-math flags). So: `==`, `<`, `<=`, `>`, `>=` of two
# expressions as they are (ordered compares: false with a NaN, on the CPU and in CUDA C); `!=` and a boolean
# `not` as a select of the compare (`select(a == b, false, true)`: unordered, left alone by the simplifier); a
# compare of an expression with itself by `T.isnan` (an unordered compare on the CPU, `x != x` in CUDA C,
# never simplified); max / min by LLVM's NaN-propagating `llvm.maximum` / `llvm.minimum` on the CPU, a select
# on CUDA. None of these repeats an operand on the CPU, so chains of them (kv_append's rounding) do not grow.
_CMP = {"eq": "==", "ne": "!=", "lt": "<", "le": "<=", "gt": ">", "ge": ">="}


def float_compare(op: str, a: str, b: str) -> str:
    """`a op b` for float32 values, IEEE: false when either is NaN, except `ne` (true)."""
    if a == b:  # one expression on both sides: ordered compares are true iff it is not NaN (<, >: never)
        return {"eq": "not T.isnan({})", "le": "not T.isnan({})", "ge": "not T.isnan({})", "ne": "T.isnan({})"}.get(
            op, "False"
        ).format(a)
    if op == "ne":
        return f"T.Select({a} == {b}, False, True)"
    return f"({a} {_CMP[op]} {b})"


def logical_not(v: str) -> str:
    """`not v` for a boolean expression; a select, because the simplifier would turn `not (a < b)` of floats
    into `a >= b`."""
    return f"T.Select({v}, False, True)"


def float_extreme(op: str, a: str, b: str, cpu: bool) -> str:
    """max / min of float32 values, NaN if either is NaN (NumPy's maximum / minimum). On CUDA (`cpu` False) a
    select that reads a three times and b twice (`_Emitter.repeatable`)."""
    if cpu:
        return f'T.call_llvm_pure_intrin("float32", "llvm.{op}imum", {a}, {b})'
    return f"T.Select(({a} {'>=' if op == 'max' else '<='} {b}) or T.isnan({a}), {a}, {b})"


def reduce_extreme(op: str, acc: str, v: str) -> str:
    """One step `acc = max(acc, v)` (or min) of a float reduction, NaN-propagating: v replaces acc when it is
    larger or NaN, so a NaN enters and, as nothing compares larger than it, stays. A CUDA thread's step (v a
    register); the CPU's loops keep NaN off the loop-carried chain instead (`_reduce_lanes`). Reads v twice."""
    return f"T.Select(({v} {'>' if op == 'max' else '<'} {acc}) or T.isnan({v}), {v}, {acc})"


def storage_type(dt: DataType) -> str:
    """The TIR element type of a global (non-packed) tensor of `dt`."""
    if dt.is_bool:
        return "bool"
    if dt.is_float:
        if dt.name in ("float16", "bfloat16", "float32"):
            return dt.name
        if dt.bits == 8:
            return "uint8"  # 8-bit float formats are stored as their codes
        raise BackendError(f"tvm backend: a {dt.name} tensor must be packed (give it a packed layout)")
    if dt.is_subbyte:
        raise BackendError(f"tvm backend: a {dt.name} tensor must be packed (give it a packed layout)")
    return f"{dt.kind}{dt.bits}"


def f32(x: float) -> str:
    if math.isnan(x):
        return 'T.float32("nan")'
    if math.isinf(x):
        return f'T.float32("{"inf" if x > 0 else "-inf"}")'
    return f"T.float32({float(x)!r})"


def wrap_int(e: str, dt: DataType) -> str:
    """Two's complement wrap of an int32/int64 value to dt's width (the reference's `wrap`)."""
    if dt.bits >= 32 and not (dt.kind == "uint" and dt.bits == 32):
        return e
    if dt.kind == "uint":
        return f"T.bitwise_and({e}, T.{value_type(dt)}({dt.code_mask}))"
    s = 32 - dt.bits
    return f"T.shift_right(T.shift_left({e}, {s}), {s})"


def round_float(e: str, dt: DataType) -> str:
    """Round a float32 value to the float dtype `dt` (RNE), result still float32."""
    if dt.name == "float32":
        return e
    if dt.name == "float16":
        return f'T.Cast("float32", T.Cast("float16", {e}))'
    if dt.name == "bfloat16":  # RNE on the bits (TVM's CPU bf16 cast does not round to nearest even)
        b = f'T.reinterpret("int32", {e})'
        rne = f"T.bitwise_and({b} + 32767 + T.bitwise_and(T.shift_right({b}, 16), 1), T.int32(-65536))"
        return f'T.Select({is_nan(e)}, {e}, T.reinterpret("float32", {rne}))'
    return f"_round_{dt.name}({e})"


def decode_code(c: str, dt: DataType) -> str:
    """An int32 code (low `bits` bits) -> its value in the value type."""
    if dt.is_bool:
        return f"({c} != 0)"
    if dt.is_integer:
        return wrap_int(c, dt) if dt.is_signed else c
    return f"_decode_{dt.name}({c})"


# helper functions emitted as TVMScript macros are not available in 0.27's plain TIR; instead the
# decoders/rounders are expanded as Python-level string templates (see _helpers)


def _decode_float_expr(c: str, dt: DataType) -> str:
    """A float code -> float32, exactly, in integer ops, with no float32 subnormal on the way and no select for
    finite codes but one blend: the magnitude bits go under float32's exponent field and an integer add
    re-biases the exponent (normal codes: exact); a code whose exponent field is zero (zero and the format's
    subnormals, 0.m · 2^(1 − bias)) takes exponent field 1 instead, 1.m · 2^(1 − bias), less its implicit one
    (an exact subtraction); then the sign bit goes to bit 31. A subnormal float32 operand would cost an x86 core
    a microcode assist per instruction: with the former form (the bits placed with exponent field 0, then a
    multiply by 2^(127 − bias)), the decoded GEMM form of Gaussian fp6_e3m2 weights (one code in 16 lanes
    subnormal in most vectors) took 6.7 ms at M = 16 (4096², hot), 2.1 ms with this one. Only formats with
    inf/NaN codes select those out."""
    m, mag_mask = dt.mantissa_bits, dt.sign_mask - 1
    mag = f"T.bitwise_and({c}, {mag_mask})"
    sign = f"T.bitwise_and(T.shift_left({c}, {32 - dt.bits}), T.int32(-2147483648))"
    placed = f"T.shift_left({mag}, {23 - m}) + {(127 - dt.bias) << 23}"
    normal = f'T.reinterpret("float32", {placed})'
    low = f'T.reinterpret("float32", {placed} + {1 << 23}) - {f32(math.ldexp(1.0, 1 - dt.bias))}'
    magnitude = f"T.Select({mag} < {1 << m}, {low}, {normal})"
    value = f'T.reinterpret("float32", T.bitwise_or(T.reinterpret("int32", {magnitude}), {sign}))'
    if dt.has_inf:  # IEEE: all-ones exponent is ±inf (mantissa 0) or NaN
        signed_inf = f"T.Select(T.bitwise_and({c}, {dt.sign_mask}) != 0, {f32(-math.inf)}, {f32(math.inf)})"
        special = f"T.Select(T.bitwise_and({c}, {dt.mantissa_mask}) == 0, {signed_inf}, {f32(math.nan)})"
        value = f"T.Select({mag} >= {dt.exponent_mask}, {special}, {value})"
    elif dt.has_nan:  # fn: all-ones magnitude is NaN
        value = f"T.Select({mag} == {mag_mask}, {f32(math.nan)}, {value})"
    return value


def _round_float_expr(x: str, dt: DataType) -> str:
    """float32 -> nearest `dt` value (RNE), as float32: scale by the format's quantum at x's binade,
    round to an integer (nearbyint = RNE), scale back; saturate (fn) or overflow to inf (ieee)."""
    m = dt.mantissa_bits
    emin = 1 - dt.bias
    bits = f'T.reinterpret("int32", {x})'
    ex = f"T.bitwise_and(T.shift_right({bits}, 23), 255) - 127"  # unbiased exponent of |x| (normal x)
    # log2 of the quantum at x's binade: subnormal x -> emin; beyond the largest binade (inf/NaN too) the
    # largest binade's quantum, then saturation below decides
    q_exp = f"T.min(T.max({ex}, {emin}), {dt.max_exponent}) - {m}"
    # 2^q as float32 built from bits (q in [emin - m, 127]); 2^-q likewise
    pow2 = f'T.reinterpret("float32", T.shift_left({q_exp} + 127, 23))'
    inv = f'T.reinterpret("float32", T.shift_left(127 - ({q_exp}), 23))'
    r = f"T.nearbyint({x} * {inv}) * {pow2}"
    mx = f32(float(dt.max))
    if dt.has_inf:
        big = f"T.Select({x} > T.float32(0), {f32(math.inf)}, {f32(-math.inf)})"
        # values at or beyond max + half a quantum overflow to inf
        half_over = float(dt.max) + math.ldexp(1.0, dt.max_exponent - m - 1)
        r = f"T.Select(T.fabs({x}) >= {f32(half_over)}, {big}, {r})"
    else:
        r = f"T.max(T.min({r}, {mx}), T.float32(0) - {mx})"
    if dt.has_nan:
        r = f"T.Select({is_nan(x)}, {x}, {r})"
    else:
        r = f"T.Select({is_nan(x)}, T.float32(0), {r})"  # no NaN in the format: the reference encodes 0
    return r


def _encode_float_expr(x: str, dt: DataType) -> str:
    """float32 holding a value of float format `dt` (after rounding to it) -> its code as int32: the exponent
    re-biased and the top mantissa bits for normal values, an exact integer multiple of the smallest
    subnormal below, the sign on top; inf/NaN to the format's codes (no NaN code: +0, as the reference)."""
    m, b = dt.mantissa_bits, dt.bias
    bits = f'T.reinterpret("int32", {x})'
    mag = f"T.bitwise_and({bits}, 2147483647)"
    normal = (
        f"T.bitwise_or(T.shift_left(T.shift_right({mag}, 23) - {127 - b}, {m}), "
        f"T.bitwise_and(T.shift_right({mag}, {23 - m}), {(1 << m) - 1}))"
    )
    subnormal = f'T.Cast("int32", T.reinterpret("float32", {mag}) * {f32(math.ldexp(1.0, b + m - 1))})'
    code = f"T.Select({mag} < {(128 - b) << 23}, {subnormal}, {normal})"
    if dt.has_inf:
        code = f"T.Select({mag} == 2139095040, {dt.inf_code}, {code})"
    code = f"T.bitwise_or({code}, T.shift_left(T.bitwise_and(T.shift_right({bits}, 31), 1), {dt.bits - 1}))"
    return f"T.Select({mag} > 2139095040, {dt.nan_code or 0}, {code})"  # NaN: the canonical code, or +0


# exp(x) for float32 without libm (LLVM turns `exp` into one scalar library call per lane): Cephes' expf. Range
# reduction n = round(x·log2 e), r = x − n·ln 2 in two parts (C1 exact in 9 bits: n·C1 is exact), a degree-7
# polynomial for e^r on |r| <= ln2/2, times 2^(n−1)·2 built in the exponent field. About 1 ulp (within 2^-22
# relative of the correctly rounded result) for x in [-86.99, 88.72]; below, 0 (the true result is under
# 2^-125 ≈ 2.4e-38: softmax's -inf masks give exactly 0), above, inf; NaN stays NaN.
_EXP_POLY = (1.9875691500e-4, 1.3981999507e-3, 8.3334519073e-3, 4.1665795894e-2, 1.6666665459e-1, 5.0000001201e-1)


def _exp_float32_expr(x: str) -> str:
    lo, hi = -86.99, 88.72283905
    xc = f"T.max(T.min({x}, T.float32({hi})), T.float32({lo}))"
    n = f"T.floor({xc} * T.float32(1.44269504088896341) + T.float32(0.5))"
    r = f"(({xc} - {n} * T.float32(0.693359375)) - {n} * T.float32(-2.12194440e-4))"
    p = f32(_EXP_POLY[0])
    for c in _EXP_POLY[1:]:
        p = f"({p} * {r} + {f32(c)})"
    e = f"({p} * ({r} * {r}) + {r} + T.float32(1))"
    half = f'T.reinterpret("float32", T.shift_left(T.Cast("int32", {n}) + 126, 23))'  # 2^(n-1), n in [-126, 128]
    value = f"T.Select({x} > T.float32({hi}), {f32(math.inf)}, {e} * {half} * T.float32(2))"
    value = f"T.Select({x} < T.float32({lo}), T.float32(0), {value})"
    return f"T.Select({is_nan(x)}, {x}, {value})"


def _expand_helpers(text: str) -> str:
    """Replace `_decode_<dtype>(arg)` / `_round_<dtype>(arg)` / `_encode_<dtype>(arg)` / `_exp_float32(arg)`
    calls with their expressions."""
    from lowbit.dtypes import dtype as lookup

    pattern = re.compile(r"_(decode|round|encode|exp)_([A-Za-z0-9_]+?)\(")
    while True:
        m = pattern.search(text)
        if not m:
            return text
        start, depth, i = m.end(), 1, m.end()
        while depth:
            depth += {"(": 1, ")": -1}.get(text[i], 0)
            i += 1
        arg = text[start : i - 1]
        if m.group(1) == "exp":
            body = _exp_float32_expr(arg)
        else:
            expand = {"decode": _decode_float_expr, "round": _round_float_expr, "encode": _encode_float_expr}
            body = expand[m.group(1)](arg, lookup(m.group(2)))
        text = text[: m.start()] + "(" + body + ")" + text[i:]


# ---- the emitter -------------------------------------------------------------------------------------


INLINE_CHARS = 4000  # the longest expression of a tile computed from loop-carried state that is inlined
REPEAT_CHARS = 400  # the longest operand expression a form that reads it twice repeats (`_Emitter.repeatable`)
# consumers that read each element of an operand once (a tile inlined into anything else, a broadcast or a dot,
# would be recomputed per element read)
_ONCE_PER_ELEMENT = (I.Binary, I.Unary, I.Cast, I.Where, I.Reshape, I.Transpose, I.Reduce)


@dataclass
class _Ctx:
    """One loop nest being emitted: checked (ragged) or fast path, and the fast path's uniform guards."""

    checked: bool
    guards: list[str] = field(default_factory=list)
    data_dependent: bool = False  # a masked load: no fast path


IndexFn = Callable[[tuple[str, ...], _Ctx], str]


@dataclass(frozen=True)
class LoweredTir:
    source: str  # TVMScript text of the PrimFunc `main`
    arg_names: tuple[str, ...]  # call order: tensors then scalars
    buffers: tuple[tuple[str, str], ...] = ()  # (TIR buffer name, tensor parameter) of each tensor argument


class _Emitter:
    def __init__(self, program: Program, options: Mapping[str, Any], cpu: bool = True):
        self.p = program
        self.opt = check_options(options)
        if self.opt["vector"] == "auto":  # not resolved for a target (runtime.resolve_options): the portable width
            self.opt["vector"] = 16
        # where tile buffers live: on a CPU a "local"-scope buffer becomes a TVMBackendAllocWorkspace call per
        # parallel iteration (heap memory LLVM cannot keep in registers); default-scope ones up to 1 KiB are
        # stack allocas that SROA turns into registers
        self.scope = "" if cpu else 'scope="shared"'
        self.cpu = cpu
        self.amx = False  # an AMX dot was emitted: the block loads the tile configuration first
        self.shared_bytes = 0  # GPU: the bytes of the tile buffers, all block-shared
        self.lines: list[str] = []
        self.depth = 0
        self.fn: dict[int, IndexFn] = {}  # tile -> index function
        self.buf: dict[int, str] = {}  # tile -> local buffer name (materialized tiles)
        self.names: set[str] = set()
        # tiles computed from an assigned (T.assign-ed, loop-carried) tile, through buffers or not
        self.from_state: set[int] = set()
        # tiles computed from constants only (full / arange through elementwise and shape ops): never stored,
        # so their values stay visible to TVM's simplifier and LLVM where they are used (a shift amount
        # `arange(0, 8) * 4` read from a buffer inside the decode loop cost a load, a clamp and a range select
        # per use)
        self.const_tiles: set[int] = set()
        # tile -> the assigned tiles its inlined index fn reads; such a tile stays inlined (`pending`) until
        # one of those is written (`before_write`): then it is materialized first
        self.mut_reads: dict[int, frozenset[int]] = {}
        self.pending: dict[int, Tile] = {}
        self.defs: dict[int, I.Inst] = {}  # tile -> the instruction that defined it (value-range analysis)
        self.loops: list[For] = []  # the enclosing T.range loops while emitting (innermost last)
        # scalar symbols an enclosing branch condition proves nonnegative (`nonnegative_in`)
        self.nonnegative: set[sympy.Symbol] = set()
        self._analyse()

    @property
    def gpu(self) -> bool:
        """A CUDA target: the threads of a block split each tile op's elements (`gpu_nest`)."""
        return not self.cpu

    # ---- analysis ----
    def _analyse(self) -> None:
        self.assigned: set[int] = set()
        self.stored = self.p.stored
        self.loaded = {s.tensor.name for s in walk(self.p.body) if isinstance(s, ScalarLoad)} | {
            s.inst.tensor.name for s in walk(self.p.body) if isinstance(s, Let) and isinstance(s.inst, I.Load)
        }
        self.scalar_vars = {s.var for s in walk(self.p.body) if isinstance(s, ScalarLoad)}
        self.uses: dict[int, int] = {}
        self.use_depth: dict[int, int] = {}
        self.consumer: dict[int, Stmt] = {}  # tile -> the (last) statement reading it

        def visit(body: tuple[Stmt, ...], depth: int) -> None:
            for s in body:
                if isinstance(s, Assign):
                    self.assigned.add(id(s.dst))
                for t in tiles_read(s):
                    self.uses[id(t)] = self.uses.get(id(t), 0) + 1
                    self.consumer[id(t)] = s
                    self.use_depth[id(t)] = max(self.use_depth.get(id(t), 0), depth)
                if isinstance(s, For):
                    visit(s.body, depth + 1)
                elif isinstance(s, If):
                    visit(s.then_body, depth)
                    visit(s.else_body, depth)

        visit(self.p.body, 0)
        # the in-place accumulate pattern: `%r = dot a, b, %acc ; %acc <- %r`
        self.inplace: dict[int, Tile] = {}
        # tiles read from a staged copy of their rows while `_ragged_rows` emits a fast path over them: AMX
        # must not tile-load them from their tensor (`_direct_rows`)
        self.restaged: set[int] = set()
        self._find_inplace(self.p.body)
        # the scaled accumulate pattern `%p = dot a, b ; %r = mul %p, %s ; %u = add %acc, %r ; %acc <- %u` (%s
        # broadcasts a [1, BN] row defined before the dot): dot tile -> (that row, %acc, %r, %u), which a dot
        # form may fuse (the GEMM forms, `_dot_scaled`: acc += each register block x s)
        self.scaled: dict[int, tuple[Tile, Tile, Tile, Tile]] = {}
        self.fused: dict[int, str] = {}  # tiles a fused dot computed: %r -> "" (never read), %u -> acc's buffer
        self.writes_in: dict[int, set[int]] = {}  # For / If statement -> the tiles assigned in its bodies
        # dot chains `%p1 = dot a1, b1 [, %c] ; %p2 = dot a2, b2, %p1 ; ...` (each sum read only by the next dot):
        # first dot tile -> the later dots, which an AMX dot runs with its sums kept in tile registers
        self.chains: dict[int, list[Let]] = {}
        self._find_scaled(self.p.body)
        self._find_chains(self.p.body)
        for s in walk(self.p.body):
            for body in child_bodies(s):
                self._find_inplace(body)
                self._find_scaled(body)
                self._find_chains(body)
                self.writes_in.setdefault(id(s), set()).update(id(a.dst) for a in walk(body) if isinstance(a, Assign))

    def _find_inplace(self, body: tuple[Stmt, ...]) -> None:
        for a, b in itertools.pairwise(body):
            if (
                isinstance(a, Let)
                and isinstance(a.inst, I.Dot)
                and a.inst.c is not None
                and isinstance(b, Assign)
                and b.src is a.tile
                and b.dst is a.inst.c
                and self.uses.get(id(a.tile), 0) == 1
            ):
                self.inplace[id(a.tile)] = a.inst.c

    def _find_scaled(self, body: tuple[Stmt, ...]) -> None:
        lets = {id(st.tile): (i, st.inst) for i, st in enumerate(body) if isinstance(st, Let)}
        for i, st in enumerate(body):
            if not (isinstance(st, Let) and isinstance(st.inst, I.Dot) and st.inst.c is None):
                continue
            p = st.tile
            mul = self._only_use(p, body)
            if not (isinstance(mul, Let) and isinstance(mul.inst, I.Binary) and mul.inst.op == "mul"):
                continue
            sc = mul.inst.b if mul.inst.a is p else mul.inst.a
            bc = lets.get(id(sc))
            if bc is None or not isinstance(bc[1], I.Broadcast) or bc[1].x.shape[0] != 1:
                continue
            if lets.get(id(bc[1].x), (-1,))[0] > i:  # the row of scales must exist when the dot is emitted
                continue
            add = self._only_use(mul.tile, body)
            if not (isinstance(add, Let) and isinstance(add.inst, I.Binary) and add.inst.op == "add"):
                continue
            acc = add.inst.b if add.inst.a is mul.tile else add.inst.a
            assign = self._only_use(add.tile, body)
            if not (isinstance(assign, Assign) and assign.dst is acc and id(acc) in self.assigned):
                continue
            if acc.dtype.name == "float32" and acc.shape == p.shape and p.dtype.name == "float32":
                self.scaled[id(p)] = (bc[1].x, acc, mul.tile, add.tile)

    def _find_chains(self, body: tuple[Stmt, ...]) -> None:
        """Runs of dots where each adds to the previous one's sum: `%q = dot a2, b2, %p` right after %p's dot,
        either in place (`%p <- %q` follows, `_find_inplace`) or with %p read by nothing else."""
        i = 0
        while i < len(body):
            st = body[i]
            if not (isinstance(st, Let) and isinstance(st.inst, I.Dot)):
                i += 1
                continue
            # the tile holding the sum so far, and the statement after the dot (and its write-back, if in place)
            acc, j = (self.inplace[id(st.tile)], i + 2) if id(st.tile) in self.inplace else (st.tile, i + 1)
            run: list[Let] = []
            while j < len(body):
                nx = body[j]
                if not (
                    isinstance(nx, Let)
                    and isinstance(nx.inst, I.Dot)
                    and nx.inst.c is acc
                    and nx.tile.shape == st.tile.shape
                    and nx.inst.acc_dtype == st.inst.acc_dtype
                ):
                    break
                if self.inplace.get(id(nx.tile)) is acc:
                    j += 2
                elif self.uses.get(id(acc), 0) == 1:
                    acc, j = nx.tile, j + 1
                else:
                    break
                run.append(nx)
            if run:
                self.chains[id(st.tile)] = run
            i = max(j, i + 1)

    def _only_use(self, t: Tile, body: tuple[Stmt, ...]) -> Stmt | None:
        """The statement of `body` reading `t`, when that is t's only use in the program, else None."""
        use = self.consumer.get(id(t))
        return use if self.uses.get(id(t), 0) == 1 and any(use is st for st in body) else None

    # ---- text ----
    def line(self, text: str) -> None:
        self.lines.append("    " * self.depth + text)

    def fresh(self, base: str) -> str:
        base = re.sub(r"\W", "_", base or "t")
        if base[0].isdigit():
            base = "t" + base
        name, i = base, 1
        while name in self.names:
            name, i = f"{base}_{i}", i + 1
        self.names.add(name)
        return name

    def tile_name(self, t: Tile) -> str:
        return self.fresh(t.name if t.name and not t.name.isdigit() else f"t{t.name}")

    # ---- program ----
    def emit(self) -> LoweredTir:
        p = self.p
        self.names.update(["T", "main"] + [q.name for q in p.params])
        self.names.update(str(s.var) for s in walk(p.body) if isinstance(s, (For, ScalarLoad)))
        tensors, scalars = p.tensor_params, p.scalar_params
        # int32 scalars (sizes) as int64 when `index64`: every index computed from them is then 64-bit, so LLVM
        # folds the constant parts of an address into the load's displacement instead of sign-extending each
        # int32 sum (4 instructions per vector load, with the per-row offsets spilled to the stack)
        wide = {s.name for s in scalars if self.opt["index64"] and value_type(s.dtype) == "int32"}
        args = [f"{t.name}_h: T.handle" for t in tensors] + [
            f"{s.name}: T.{'int64' if s.name in wide else value_type(s.dtype)}" for s in scalars
        ]
        for s in scalars:
            if not s.dtype.is_integer:
                raise BackendError(f"tvm backend: float scalar parameter {s.name} is not supported; pass a tensor")
        self.line("@T.prim_func")
        self.line(f"def main({', '.join(args)}):")
        self.depth += 1
        self.line('T.func_attr({"global_symbol": "main", "tirx.noalias": True})')
        self.gbuf: dict[str, str] = {}
        for t in tensors:
            name = self.fresh(t.name)
            self.gbuf[t.name] = name
            if isinstance(t.layout, PackedLayout):
                if t.layout.word_bits != 32:
                    raise BackendError(f"tvm backend: {t.name} is packed into {t.layout.word_bits}-bit words; use 32")
                size, dt = t.layout.num_words, "int32"
            elif t.layout is not None:
                size, dt = t.layout.cosize, storage_type(t.dtype)
            else:
                size, dt = sympy.Mul(*t.shape), storage_type(t.dtype)
            # a CUDA build takes no element offsets: a kernel launched through the driver (`cuda_launch`) gets
            # exactly the program's pointers and sizes, with nothing for TVM's host code to compute
            offset = "" if self.gpu else ", offset_factor=1"
            self.line(f'{name} = T.match_buffer({t.name}_h, ({scalar(size)},), "{dt}", align=4{offset})')
        grid = [scalar(g) for g in p.grid]
        pids = [str(s) for s in p.program_ids]
        self.names.update(pids)
        total = " * ".join(f"({g})" for g in grid)
        if self.gpu:
            self.line(f'for blk in T.thread_binding({total}, thread="blockIdx.x"):')
        else:
            kind = "T.parallel" if self.opt["parallel"] == "fused" else "T.serial"
            self.line(f"for blk in {kind}({total}):")
        self.depth += 1
        stride = "1"
        for pid, g in reversed(list(zip(pids, grid))):
            self.line(
                f"{pid} = T.floormod(T.floordiv(blk, {stride}), {g})"
                if stride != "1"
                else f"{pid} = T.floormod(blk, {g})"
            )
            stride = f"{stride} * ({g})" if stride != "1" else f"({g})"
        block_start, block_depth = len(self.lines), self.depth
        self.body(p.body, 0)
        if self.amx:  # the tile configuration, per block: a block runs on one worker thread
            self.depth = block_depth
            self.line('T.evaluate(T.call_llvm_intrin("void", "llvm.x86.tilerelease"))')
            tail = self.lines[block_start:]
            del self.lines[block_start:]
            self._amx_config()
            self.lines.extend(tail)
        if self.shared_bytes > SHARED_BYTES:
            raise BackendError(
                f"tvm backend (cuda): the tiles of {p.name} need {self.shared_bytes} bytes of shared memory, over "
                f"the {SHARED_BYTES} a block declares statically; use smaller tiles (BM, BN, BK)"
            )
        return LoweredTir(
            _expand_helpers("\n".join(self.lines)) + "\n",
            tuple(t.name for t in tensors) + tuple(s.name for s in scalars),
            tuple((self.gbuf[t.name], t.name) for t in tensors),
        )

    def body(self, stmts: tuple[Stmt, ...], depth: int) -> None:
        n0 = len(self.lines)
        for s in stmts:
            rule = _STMT_RULES.get(type(s))
            if rule is None:
                raise BackendError(f"tvm backend has no lowering rule for statement {type(s).__name__}")
            rule(self, s, depth)
        if len(self.lines) == n0:
            self.line("T.evaluate(0)")

    def branch_body(self, stmts: tuple[Stmt, ...], depth: int, facts: set[sympy.Symbol]) -> None:
        """`body` of an If branch, with the symbols its condition proves nonnegative (`nonnegative_in`) known
        to be so (tile offsets through them need no lower-bound test)."""
        outer = self.nonnegative
        self.nonnegative = outer | facts
        self.body(stmts, depth)
        self.nonnegative = outer

    # ---- tiles ----
    def define(self, t: Tile, inst: I.Inst, depth: int) -> None:
        rule = _RULES.get(type(inst))
        if rule is None:
            raise BackendError(f"tvm backend has no lowering rule for {type(inst).__name__}")
        self.defs[id(t)] = inst
        if id(t) in self.fused:  # computed by a fused dot (`_dot_scaled`): the sum is the accumulator's buffer
            for o in inst.operands:
                self.pending.pop(id(o), None)
            if self.fused[id(t)]:
                self.bind_buffer(t, self.fused[id(t)])
            return
        fn = rule(self, inst, t)
        for o in inst.operands:  # a pending operand lives on inlined in t (or its rule read it just now)
            self.pending.pop(id(o), None)
        if fn is None:  # the rule materialised the tile itself
            return
        self.fn[id(t)] = fn
        reads = frozenset().union(*(self.mut_reads.get(id(o), frozenset()) for o in inst.operands))
        if reads:
            self.mut_reads[id(t)] = reads
            self.pending[id(t)] = t
        if any(id(o) in self.from_state for o in inst.operands):
            self.from_state.add(id(t))
        if self.opt["inline_consts"] and (
            isinstance(inst, (I.Full, I.Arange))
            or (isinstance(inst, _CONST_PRESERVING) and all(id(o) in self.const_tiles for o in inst.operands))
        ):
            self.const_tiles.add(id(t))
        if self._must_materialize(t, inst, depth):
            self.materialize(t)

    def _inline_once(self, t: Tile) -> bool:
        # whether a tile computed from loop-carried state may stay inlined: one use that reads each element
        # once, and a short expression. Anything else is stored when defined: shared subexpressions (online
        # softmax's m, l, p) or rules reading an operand several times (kv_append's fp16 rounding chains)
        # would be recomputed per use, exponentially along a chain
        use = self.consumer.get(id(t))
        if self.uses.get(id(t), 0) != 1:
            return False
        if isinstance(use, Let):
            if not isinstance(use.inst, _ONCE_PER_ELEMENT):
                return False
            if isinstance(use.inst, (I.Binary, I.Unary, I.Cast, I.Where)) and use.tile.shape != t.shape:
                return False
        elif not isinstance(use, (Assign, Store)):
            return False
        probe = tuple(f"i{d}" for d in range(len(t.shape)))
        return len(self.get(t)(probe, _Ctx(checked=True))) <= INLINE_CHARS

    def _must_materialize(self, t: Tile, inst: I.Inst, depth: int) -> bool:
        if id(t) in self.assigned:
            return True
        if isinstance(inst, I.Load) and inst.tensor.name in self.stored:
            return True  # read it now: inlined into a consumer after a store to the tensor, it would see the store
        constant = isinstance(inst, (I.Full, I.Arange)) or id(t) in self.const_tiles
        if self.use_depth.get(id(t), depth) > depth and not constant:
            return True  # read inside a deeper loop: compute once here
        return id(t) in self.from_state and not self._inline_once(t)

    def before_write(self, written: set[int], keep: int | None = None) -> None:
        """Materialize the inlined tiles that read one of the `written` assigned tiles (but `keep`): an
        assignment is about to change what their index functions would read. Deferred to here rather than
        done at definition, an elementwise chain over an accumulator (`acc += f(p)·s`) stays one loop nest
        instead of one buffer per op."""
        for tid, t in list(self.pending.items()):
            if tid != keep and tid in self.pending and self.mut_reads[tid] & written:
                self.materialize(t)

    def pointwise_in(self, t: Tile, dst: Tile) -> bool:
        """Whether t's index fn reads dst only at t's own index (through elementwise ops of one shape), so
        `dst <- t` can be written in place element by element."""
        if t is dst or id(dst) not in self.mut_reads.get(id(t), frozenset()):
            return True
        inst = self.defs.get(id(t))
        if id(t) in self.buf or not isinstance(inst, (I.Binary, I.Unary, I.Cast, I.Where)):
            return False
        return all(o.shape == t.shape and self.pointwise_in(o, dst) for o in inst.operands)

    def get(self, t: Tile) -> IndexFn:
        return self.fn[id(t)]

    def repeatable(self, t: Tile) -> None:
        """Materialize t if its inlined expression (helpers expanded) is longer than `REPEAT_CHARS`: a form that
        reads an operand more than once (CUDA's NaN-propagating max / min) would otherwise repeat that text,
        and along a chain of such ops (kv_append's rounding) the source grows exponentially."""
        if id(t) in self.buf or id(t) in self.const_tiles:
            return
        probe = tuple(f"i{d}" for d in range(len(t.shape)))
        if len(_expand_helpers(self.get(t)(probe, _Ctx(checked=True)))) > REPEAT_CHARS:
            self.materialize(t)

    def alloc(self, t: Tile, name: str | None = None) -> str:
        name = name or self.tile_name(t)
        shape = ", ".join(str(s) for s in t.shape) or "1"
        if self.gpu:  # the buffer's element type (floats as float32, ints as int32 or int64, booleans as int8)
            elem = int(re.sub(r"\D", "", buffer_type(t.dtype))) // 8
            self.shared_bytes += math.prod(int(n) for n in t.shape) * elem
        self.line(f'{name} = T.decl_buffer(({shape},), "{buffer_type(t.dtype)}", {self.scope})')
        return name

    def bind_buffer(self, t: Tile, name: str) -> None:
        self.buf[id(t)] = name

        def read(idx: tuple[str, ...], ctx: _Ctx) -> str:
            v = f"{name}[{', '.join(idx) or '0'}]"
            return f"({v} != T.int8(0))" if t.dtype.is_bool else v

        self.fn[id(t)] = read
        if id(t) in self.assigned:
            self.mut_reads[id(t)] = frozenset({id(t)})
            self.from_state.add(id(t))
        else:  # a copy: later assignments do not change it
            self.mut_reads.pop(id(t), None)
            self.pending.pop(id(t), None)

    def materialize(self, t: Tile, into: str | None = None) -> str:
        fn = self.get(t)
        name = into or self.alloc(t)
        self.nest(t.shape, lambda idx, ctx: [f"{name}[{', '.join(idx) or '0'}] = {to_buffer(fn(idx, ctx), t.dtype)}"])
        self.bind_buffer(t, name)
        return name

    # ---- loop nests with a fast and a checked path ----
    def nest(
        self,
        shape: tuple[int, ...],
        body: Callable[[tuple[str, ...], _Ctx], list[str]],
        vector_last: bool = True,
    ) -> None:
        """Emit `for idx in shape: body(idx)`, twice when loads can run past tensor edges (on a GPU: once,
        checked, the elements strided across the block's threads)."""
        if self.gpu:
            self.gpu_nest(shape, body)
            return
        fast_loops, fast_idx = self._plan(shape, vector_last)
        probe = _Ctx(checked=False)
        fast = body(fast_idx, probe)
        if not probe.guards and not probe.data_dependent:
            self._loops(fast_loops, fast)
            return
        if not probe.data_dependent:
            self.line(f"if {' and '.join(sorted(set(probe.guards)))}:")
            self.depth += 1
            self._loops(fast_loops, fast)
            self.depth -= 1
            self.line("else:")
            self.depth += 1
        slow_loops, slow_idx = self._plan(shape, vector_last=False)
        self._loops(slow_loops, body(slow_idx, _Ctx(checked=True)))
        if not probe.data_dependent:
            self.depth -= 1

    def _plan(self, shape: tuple[int, ...], vector_last: bool) -> tuple[list[str], tuple[str, ...]]:
        """Loop headers for `shape` and the index expression of each axis. The last axis is vectorized
        (split into unrolled chunks of `vector` lanes when longer); no let-bindings inside vector loops."""
        headers: list[str] = []
        idx: list[str] = []
        for d, n in enumerate(shape):
            i = self.fresh(f"i{d}")
            last = d == len(shape) - 1
            vec = self.opt["vector"]
            if last and vector_last and n > 1:
                if n > vec and n % vec == 0:
                    chunks = n // vec
                    group = math.gcd(chunks, MAX_UNROLLED_VECTORS) if chunks > MAX_UNROLLED_VECTORS else chunks
                    if group > 1 and group < chunks:  # a serial loop over unrolled groups
                        headers += [f"for {i}o in T.serial({chunks // group}):", f"for {i}u in T.unroll({group}):"]
                        idx.append(f"(({i}o * {group} + {i}u) * {vec} + {i}v)")
                    else:  # a row of at most the cap, or one no group divides (e.g. 17 vectors): all unrolled
                        headers.append(f"for {i}o in T.unroll({chunks}):")
                        idx.append(f"({i}o * {vec} + {i}v)")
                    headers.append(f"for {i}v in T.vectorized({vec}):")
                    continue
                headers.append(f"for {i} in T.vectorized({n}):")
            else:
                headers.append(f"for {i} in T.serial({n}):")
            idx.append(i)
        return headers, tuple(idx)

    def _loops(self, headers: list[str], stmts: list[str]) -> None:
        for h in headers:
            self.line(h)
            self.depth += 1
        for s in stmts:
            self.line(s)
        self.depth -= len(headers)

    # ---- GPU: tile ops strided across a block's threads ----
    def gpu_nest(self, shape: tuple[int, ...], body: Callable[[tuple[str, ...], _Ctx], list[str]]) -> None:
        """`for idx in shape: body(idx)` on a CUDA block: element f of the row-major tile goes to thread
        f mod threads, in full rounds of all threads and then one round of the first (size mod threads)
        threads under a guard; the checked form (clamped addresses, selects) always. Each such loop is one
        `T.thread_binding` of threadIdx.x (the same extent in every loop of the kernel); TVM's ThreadSync pass
        puts a __syncthreads() between loops where a shared tile written by one is read by another (and across
        iterations of an enclosing loop), which is where the tile program's order needs it. No loop reads the
        shared tile it writes (dots and reductions accumulate in registers and write a fresh tile, an update
        of an assigned tile reads a copy: `dot`, `_reduce`, `_assign`): ThreadSync cannot tell one thread's
        element from another's and would want a barrier between such a read and write, under the guard of
        the last round, which TVM refuses ("Cannot insert syncs inside condition") rather than deadlock.
        Statements outside these loops (scalars, `For` / `If` of the program) run in every thread alike.
        """
        nt = int(self.opt["threads"])
        total = math.prod(int(n) for n in shape)
        full, tail = divmod(total, nt)
        tx = self.fresh("tx")
        self.line(f'for {tx} in T.thread_binding({nt}, thread="threadIdx.x"):')
        self.depth += 1

        def elements(flat: str) -> None:
            # the coordinates as expressions of the thread and round, not let-bound names: TVMScript binds an
            # assigned name as a one-element buffer, whose loads hide from ThreadSync that each thread reads and
            # writes its own elements
            idx: list[str] = []
            for d, n in enumerate(shape):
                stride = math.prod(int(m) for m in shape[d + 1 :])
                value = flat if stride == 1 else f"T.floordiv({flat}, {stride})"
                idx.append(f"({value})" if d == 0 else f"T.floormod({value}, {n})")
            for st in body(tuple(idx), _Ctx(checked=True)):
                self.line(st)

        if full == 1:
            elements(tx)
        elif full > 1:
            e = self.fresh("e")
            self.line(f"for {e} in T.serial({full}):")
            self.depth += 1
            elements(f"({e} * {nt} + {tx})")
            self.depth -= 1
        if tail:
            self.line(f"if {tx} < {tail}:")
            self.depth += 1
            elements(f"({full * nt} + {tx})" if full else tx)
            self.depth -= 1
        self.depth -= 1

    def dot_gpu(self, inst: I.Dot, out: str) -> None:
        """`out = c + a @ b` (c: the dot's accumulator operand, else 0) on a CUDA block: each thread takes output
        elements (`gpu_nest`) and runs their k loop in a register, reading a and b from shared tiles (operands
        reused across rows / columns were materialized by `dot`) or from their inlined index functions (a
        GEMV's codes, decoded in place)."""
        a, b = inst.a, inst.b
        BM, KT = a.shape
        BN = b.shape[1]
        fa, fb = self.get(a), self.get(b)
        fc = self.get(inst.c) if inst.c is not None else None
        conv = _to_value_type(a.dtype, inst.acc_dtype)
        k, acc = self.fresh("k"), self.fresh("acc")
        vt = buffer_type(inst.acc_dtype)

        def body(idx: tuple[str, ...], ctx: _Ctx) -> list[str]:
            i, j = idx
            prod = f"({conv(fa((i, k), ctx))}) * ({conv(fb((k, j), ctx))})"
            init = fc(idx, ctx) if fc is not None else self.const(0, inst.acc_dtype)
            return [
                f'{acc} = T.decl_buffer((1,), "{vt}", scope="local")',
                f"{acc}[0] = {init}",
                f"for {k} in T.serial({KT}):",
                f"    {acc}[0] = {acc}[0] + {prod}",
                f"{out}[{i}, {j}] = {acc}[0]",
            ]

        self.gpu_nest((BM, BN), body)

    # ---- memory ----
    def tensor_read(
        self,
        t: TensorParam,
        coords: list[str],
        ctx: _Ctx,
        inside: str | None,
        other: Any,
        signed: Sequence[bool] = (),
    ) -> str:
        """Read element `coords` of global tensor t as a value (checked: clamped address + select). `signed`:
        per axis, whether its coordinate may be negative (`may_be_negative`); the checked address of such an
        axis is clamped at 0 as well."""
        g = self.gbuf[t.name]
        syms = [sympy.Symbol(f"__c{d}", integer=True, nonnegative=True) for d in range(len(coords))]
        clamp = ctx.checked and inside is not None
        subst = {}
        for d, (s, c) in enumerate(zip(syms, coords)):
            top = f"T.min({c}, {scalar(t.shape[d])} - 1)"
            subst[str(s)] = (f"T.max({top}, 0)" if d < len(signed) and signed[d] else top) if clamp else c
        if isinstance(t.layout, PackedLayout):
            word, bit = t.layout.locate(*syms)
            w_expr = _substitute(scalar(word), subst)
            b_expr = f'T.Cast("int32", {_substitute(scalar(bit), subst)})'  # a shift amount: int32 under index64
            bits = t.dtype.bits
            raw = f"T.shift_right({g}[{w_expr}], {b_expr})"  # arithmetic: masked below
            if t.layout.dense and 32 % bits:  # a field may continue in the next word: logical shifts
                nw = scalar(t.layout.num_words)
                lo = f'T.shift_right(T.Cast("uint32", {g}[{w_expr}]), T.Cast("uint32", {b_expr}))'
                hi = (
                    f'T.Select({b_expr} + {bits} > 32, T.shift_left(T.Cast("uint32", '
                    f'{g}[T.min({w_expr} + 1, {nw} - 1)]), T.Cast("uint32", 32 - ({b_expr}))), T.uint32(0))'
                )
                raw = f'T.Cast("int32", T.bitwise_or({lo}, {hi}))'
            if t.dtype.is_integer and t.dtype.is_signed and not t.layout.dense:
                # a field inside one word: shift it to the top, arithmetic-shift it down (sign-extends)
                value = f"T.shift_right(T.shift_left({g}[{w_expr}], {32 - bits} - ({b_expr})), {32 - bits})"
            else:
                value = decode_code(f"T.bitwise_and({raw}, {t.dtype.code_mask})", t.dtype)
        else:
            elem = f"{g}[{_flat_address(t, [subst[str(s)] for s in syms])}]"
            value = self._from_storage(elem, t.dtype)
        if inside is None:
            return value
        if not ctx.checked:
            return value
        return f"T.if_then_else({inside}, {value}, {self.const(other, t.dtype)})"

    def _from_storage(self, elem: str, dt: DataType) -> str:
        if dt.is_bool:
            return elem
        if dt.is_float:
            if dt.name in ("float16", "bfloat16", "float32"):
                return f'T.Cast("float32", {elem})' if dt.name != "float32" else elem
            return decode_code(f'T.Cast("int32", {elem})', dt)
        return f'T.Cast("{value_type(dt)}", {elem})'

    def to_storage(self, value: str, dt: DataType) -> str:
        if dt.is_bool:
            return value
        if dt.is_float:
            if dt.name in ("float16", "bfloat16"):
                return f'T.Cast("{dt.name}", {value})'
            if dt.name == "float32":
                return value
            if dt.bits == 8:  # stored as its codes (storage_type)
                return f'T.Cast("uint8", _encode_{dt.name}({value}))'
            raise BackendError(f"tvm backend: stores of {dt.name} tensors are not supported; store float16/32")
        return f'T.Cast("{storage_type(dt)}", {value})'

    def const(self, v: Any, dt: DataType) -> str:
        vt = value_type(dt)
        if dt.is_bool:
            return "True" if v else "False"
        if dt.is_float:
            return f32(float(v))
        return f"T.{vt}({int(v)})"

    # ---- dot ----
    def dot(self, inst: I.Dot, t: Tile) -> None:
        a, b = inst.a, inst.b
        BM, KT = a.shape
        BN = b.shape[1]
        scaled = self.scaled.get(id(t))
        if scaled is not None:
            lut = self.lut_plan(inst)
            if lut is not None and self._gemm_form(inst, *lut):
                table = lut
                self._dot_scaled(inst, t, lambda out, rg, sc: self.dot_lut(inst, out, table, rg, sc), scaled)
                return
            words = self.decoded_plan(inst) if lut is None else None
            if words is not None:
                fast_words = lambda out, rg, sc: self._dot_decoded_gemm(inst, out, words, sc, rg)  # noqa: E731
                self._dot_scaled(inst, t, fast_words, scaled)
                return
        if self.gpu:  # a fresh tile (see `gpu_nest`); operands read by more than one row / column staged once
            out = self.alloc(t)
            for opnd, reuse in ((b, BM), (a, BN)):
                if reuse > 1 and id(opnd) not in self.buf:
                    self.materialize(opnd)
            self.dot_gpu(inst, out)
            self.bind_buffer(t, out)
            return
        plan = self.int8_dot_plan(inst)
        if inst.c is not None and id(t) in self.inplace:
            self.before_write({id(inst.c)})
            chain = self._amx_chain(inst, t, plan)  # after the write: operands that read the sum are copies now
            out = self.buf[id(inst.c)]
            self.bind_buffer(t, out)
        else:
            chain = self._amx_chain(inst, t, plan)
            out = self.alloc(t)
            zero = self.const(0, inst.acc_dtype)
            if inst.c is not None:
                cf = self.get(inst.c)
                self.nest(t.shape, lambda idx, ctx: [f"{out}[{idx[0]}, {idx[1]}] = {cf(idx, ctx)}"])
            elif plan is not None and plan[2] == "amx":  # AMX starts from zeroed tiles: only the slow path fills
                self.bind_buffer(t, out)

                def slow() -> None:
                    self.nest(t.shape, lambda idx, ctx: [f"{out}[{idx[0]}, {idx[1]}] = {zero}"])
                    for d in chain:
                        self._dot_generic(d, out)

                # a ragged row tile of one dot: AMX over a staged copy of its rows (`_ragged_rows`)
                ragged = self._row_guard(inst) if len(chain) == 1 and int(BM) > 1 else None
                amx = lambda: self._dot_amx(chain, out, zeroed=True)  # noqa: E731
                fast = lambda: self._ragged_rows(inst, ragged, amx, twice=True)  # noqa: E731
                self._guarded(chain, out, fast, slow_path=slow, drop=ragged)
                self._bind_chain(t, out)
                return
            else:
                self.nest(t.shape, lambda idx, ctx: [f"{out}[{idx[0]}, {idx[1]}] = {zero}"])
            self.bind_buffer(t, out)
        if len(chain) > 1:

            def slow_chain() -> None:
                for d in chain:
                    self._dot_generic(d, out)

            if plan is not None and plan[2] == "vnni":
                self._guarded(chain, out, lambda: self._vnni_chain(chain, out, plan), slow_path=slow_chain)
            else:
                self._guarded(chain, out, lambda: self._dot_amx(chain, out), slow_path=slow_chain)
            self._bind_chain(t, out)
            return
        if plan is not None:
            self.dot_int8(inst, out, plan)
            return
        if self.inner_dot_applies(inst):
            self.dot_inner(inst, out)
            return
        lut = self.lut_plan(inst)
        if lut is not None:
            ragged = self._row_guard(inst)
            if self._gemm_form(inst, *lut):  # stages a's rows itself, checked on a ragged row tile
                self._guarded(inst, out, lambda: self.dot_lut(inst, out, lut, ragged), drop=ragged)
            else:  # the walks of more than one row read a copy of a's rows, zero rows past M (`_ragged_rows`); one
                # row is never ragged (its guard fails only for a tile past M, whose store writes nothing)
                ragged = ragged if int(BM) > 1 else None
                walk = lambda: self._ragged_rows(inst, ragged, lambda: self.dot_lut(inst, out, lut))  # noqa: E731
                self._guarded(inst, out, walk, drop=ragged)
            return
        words = self.decoded_plan(inst)
        if words is not None:
            ragged = self._row_guard(inst)
            self._guarded(inst, out, lambda: self._dot_decoded_gemm(inst, out, words, None, ragged), drop=ragged)
            return
        # operands reused across rows/columns are unpacked once into a local buffer; with `fma_chains` on, b is
        # not when the dot's rows are one block of unrolled rows and its columns unrolled vectors: each b vector
        # is then computed once per k in registers and used by every row (LLVM merges the identical unrolled
        # reads), where the buffer cost a store and a reload per vector
        tm = self.opt["tm"] if BM % self.opt["tm"] == 0 else 1
        vec = self.opt["vector"]
        col_vectors = -(-BN // vec)
        one_block = BM // tm == 1 and (col_vectors == 1 or (BN % vec == 0 and col_vectors <= MAX_UNROLLED_VECTORS))
        b_reuse = 1 if self.opt["fma_chains"] > 1 and one_block else BM
        for opnd, reuse in ((b, b_reuse), (a, BN)):
            if reuse > 1 and id(opnd) not in self.buf:
                self.materialize(opnd)
        if self._bf16_gemm_applies(inst):
            self._dot_bf16_gemm(inst, out, tm)
            return
        self._dot_generic(inst, out, unroll=self.opt["unroll"] if KT % self.opt["unroll"] == 0 else 1)
        if not inst.acc_dtype.is_float and inst.acc_dtype.bits < 32:
            raise BackendError(f"tvm backend: dot accumulating in {inst.acc_dtype.name}; use int32")

    def _amx_chain(self, inst: I.Dot, t: Tile, plan: tuple[str, int, str] | None) -> list[I.Dot]:
        """The dots an int8 dot runs at once: `inst` and the rest of its chain (`_find_chains`) when every one
        of them is an AMX dot, or a VNNI dot of the same side and shape with one row block of at most
        VNNI_CHAIN_ROWS rows (`_vnni_chain`), whose operands are defined by now (the sums then stay in
        registers from dot to dot, with no store and reload between them), else `inst` alone."""
        later = [let.inst for let in self.chains.get(id(t), []) if isinstance(let.inst, I.Dot)]
        if plan is None or not later or len(later) != len(self.chains[id(t)]):
            return [inst]
        if plan[2] == "vnni" and not self._vnni_chain_shape(inst):
            return [inst]
        if plan[2] not in ("amx", "vnni"):
            return [inst]
        sums = {id(t), *(id(let.tile) for let in self.chains[id(t)]), *(id(d.c) for d in later)}
        for d in later:
            p = self.int8_dot_plan(d)
            if p is None or p[::2] != plan[::2] or not all(id(o) in self.fn for o in (d.a, d.b)):
                return [inst]
            if p[2] == "vnni" and (d.a.shape[0] != inst.a.shape[0] or d.b.shape[1] != inst.b.shape[1]):
                return [inst]
            if any(self.mut_reads.get(id(o), frozenset()) & sums for o in (d.a, d.b)):
                return [inst]  # an operand reads a sum of the chain: it must see the dots before it
        return [inst, *later]

    def _bind_chain(self, t: Tile, out: str) -> None:
        """The later dots of t's chain, run by t's AMX dot: their sums are `out` (see `define`'s `fused`)."""
        for let in self.chains.get(id(t), []):
            self.fused[id(let.tile)] = out

    # ---- software prefetch ----
    def prefetch(self, inst: I.Load) -> None:
        """Prefetch the cache lines this load will read a few iterations of the innermost loop ahead: the
        tile's rows at the loop variable advanced by ceil(prefetch / tile bytes) steps (clamped into the
        tensor). Only for loads of >= 512 bytes from row-major, not packed, read-only tensors whose offsets
        move with the loop (a streaming GEMV's weight tiles); a CPU hint (x86 `prefetcht0`), never a fault.
        Offsets through scalars read in the loop (a page from a block table) use those scalars re-read at
        the advanced loop variable (`_scalars_ahead`), so paged KV tiles are prefetched too; paged rows
        narrower than a line count the lines they touch and hint once per line."""
        t, dist = inst.tensor, self.opt["prefetch"]
        packed = isinstance(t.layout, PackedLayout) and t.layout.word_bits == 32
        if not dist or not self.loops or not self.cpu or (t.layout is not None and not packed) or t.name in self.stored:
            return
        if inst.mask is not None or t.dtype.is_bool or (t.dtype.is_subbyte and not packed):
            return
        loop = self.loops[-1]
        offsets = [sympy.sympify(o) for o in inst.offsets]
        free = set().union(*(o.free_symbols for o in offsets))
        if (loop.var not in free and not free & self.scalar_vars) or not sympy.sympify(loop.step).is_Integer:
            return  # loop-invariant: no address to predict
        bits = t.dtype.bits if packed else max(t.dtype.bits, 8)
        row_elems = int(inst.shape[-1])
        rows = list(itertools.product(*(range(int(n)) for n in inst.shape[:-1])))
        dependent = free & self.scalar_vars
        row_bytes = row_elems * bits // 8
        tile_bytes = len(rows) * row_bytes
        if dependent and row_bytes < 64:
            # paged rows narrower than a line (column chunks): count the lines they touch, one hint per row
            # from the chunk at the line's start only
            if not offsets[-1].is_Integer or (int(offsets[-1]) * bits) % 512:
                return
            tile_bytes = len(rows) * 64
        if tile_bytes < PREFETCH_MIN_BYTES or len(rows) > 64:
            return
        ahead = -(-dist // tile_bytes) * int(loop.step)
        moved = [o.subs(loop.var, loop.var + ahead) for o in offsets]
        if dependent:  # data-dependent (a page from a block table): re-read the scalars that many steps ahead
            subst = self._scalars_ahead(loop, dependent, ahead)
            if subst is None:
                return
            moved = [o.subs(subst) for o in moved]
        # Every hint clamps its own address. One clamped base with the hints at constant deltas from it (32
        # back-to-back prefetcht0 per 2 KiB tile) cut the warm-cache CPU time of the M = 1 decode GEMV by a
        # third but streamed from DRAM slower in 17 of 18 alternating flushed pairs (4096x4096 and 11008x4096
        # int4, 2 threads; 0.8-1.8x the time): the address arithmetic between hints spaces them out.
        g = self.gbuf[t.name]
        per_line = max(512 // bits, 1)  # elements per 64-byte line
        for r in rows:
            for j in range(0, row_elems, per_line):
                coords = [o + i for o, i in zip(moved[:-1], r)] + [moved[-1] + j]
                if packed:  # the word holding the element (packed along the last axis: a row's words are contiguous)
                    addr = f"T.min({scalar(t.layout.locate(*coords)[0])}, {scalar(t.layout.num_words)} - 1)"
                else:
                    flat = _flat_address(t, [scalar(c) for c in coords])
                    addr = f"T.min({flat}, {scalar(sympy.Mul(*t.shape))} - 1)"
                self.line(
                    f'T.evaluate(T.call_llvm_intrin("void", "llvm.prefetch.p0", T.address_of({g}[{addr}]), 0, '
                    f"{self.opt['prefetch_locality']}, 1))"
                )

    def _scalars_ahead(self, loop: For, names: set[Any], ahead: int) -> dict[Any, sympy.Symbol] | None:
        """For the scalars `names` (ScalarLoads directly in `loop`'s body, read before this point, whose
        indices use only the loop variable and block-uniform symbols): emit each one's read at the loop
        variable advanced by `ahead` (clamped into its tensor, as the ScalarLoad itself) and return the
        substitution to those new names; None when some scalar is not of that form."""
        defs = {s.var: s for s in loop.body if isinstance(s, ScalarLoad)}
        out: dict[Any, sympy.Symbol] = {}
        for var in sorted(names, key=str):
            s = defs.get(var)
            if s is None:
                return None
            idx = [sympy.sympify(i) for i in s.indices]
            if any(i.free_symbols & self.scalar_vars for i in idx):
                return None
            name = self.fresh(f"{var}_ahead")
            t = s.tensor
            coords = [scalar(i.subs(loop.var, loop.var + ahead)) for i in idx]
            clamped = [f"T.max(T.min({c}, {scalar(n)} - 1), 0)" for c, n in zip(coords, t.shape)]
            value = self.tensor_read(t, clamped, _Ctx(checked=False), None, 0)
            self.line(f'{name} = T.Cast("int32", {value})')
            out[var] = sympy.Symbol(name, integer=True)
        return out

    # ---- 8-bit integer dots on x86 (vpmaddubsw + vpmaddwd) ----
    def maybe_bits(self, t: Tile) -> int:
        """A mask of the bits that may be set in t's values, as two's complement patterns of t's width (all
        ones when nothing is known). Tracks constants, and/or/xor, shifts by constants, value-preserving
        casts, integer views and layout-only ops: what proves `(w >> 4) & 0x0F0F0F0F` viewed as bytes is
        0..15."""
        dt = t.dtype
        if not dt.is_integer or dt.bits > 32:
            return -1
        full = (1 << dt.bits) - 1
        if id(t) in self.assigned:
            return full  # T.assign overwrites it later: its definition says nothing about its values
        inst = self.defs.get(id(t))
        if isinstance(inst, I.Full):
            v = sympy.sympify(inst.value)
            return int(v) & full if v.is_Integer else full
        if isinstance(inst, (I.Transpose, I.Reshape, I.Broadcast)):
            return self.maybe_bits(inst.x) & full
        if isinstance(inst, I.Binary) and inst.a.dtype.is_integer:
            a, b = self.maybe_bits(inst.a), self.maybe_bits(inst.b)
            if inst.op == "and":
                return a & b
            if inst.op in ("or", "xor"):
                return (a | b) & full
            shift = self.defs.get(id(inst.b))
            if inst.op in ("shr", "shl") and isinstance(shift, I.Full) and sympy.sympify(shift.value).is_Integer:
                n = int(shift.value)
                if not 0 <= n < dt.bits:
                    return full
                if inst.op == "shl":
                    return (a << n) & full
                sign = 1 << (dt.bits - 1)
                fill = full ^ (full >> n) if dt.is_signed and a & sign else 0
                return (a >> n) | fill
            return full
        if isinstance(inst, I.Cast) and inst.x.dtype.is_integer:
            src, m = inst.x.dtype, self.maybe_bits(inst.x)
            nonneg = not src.is_signed or not m & (1 << (src.bits - 1))
            return m if nonneg and m <= int(dt.max) else full
        if isinstance(inst, I.View) and inst.x.dtype.is_integer and inst.x.dtype.bits > dt.bits:
            m, out = self.maybe_bits(inst.x), 0
            for r in range(inst.x.dtype.bits // dt.bits):
                out |= (m >> (r * dt.bits)) & full
            return out
        return full

    def int8_dot_plan(self, inst: I.Dot) -> tuple[str, int, str] | None:
        """(the operand read as unsigned bytes, quads per unrolled chunk, "vnni" or "avx2") when this dot can
        run on x86's u8·i8 multiply-adds exactly, else None.

        "vnni" (vpdpbusd, AVX-512 VNNI): four u8·i8 products of a lane summed into its i32 accumulator, no
        intermediate width, so it is exact whenever the unsigned operand's bytes are its values (a uint8 tile,
        or an int8 one proven in [0, 127]) and the other one's are int8 patterns; 16 columns per vector, so b
        must be a multiple of 16 columns wide (else the "avx2" form, which every AVX-512 CPU also runs).
        "avx2" (vpmaddubsw + vpmaddwd): adjacent pairs summed in i16 with saturation; with the unsigned operand
        in [0, U], U <= 127, and the signed one in [-128, 127] a pair is at most 256·U in magnitude, so
        32767 // (256·U) pair sums (`chunk` quads of K) add up in i16 exactly before vpmaddwd widens them."""
        a, b = inst.a, inst.b
        mode = self.opt["int8_dot"]
        if mode not in ("avx2", "vnni", "amx") or inst.acc_dtype.name != "int32" or a.dtype.bits != 8:
            return None
        amx = mode == "amx" and self.cpu and a.shape[0] % 16 == 0 and b.shape[1] % 16 == 0 and a.shape[1] % 64 == 0
        mode = "vnni" if mode == "amx" else mode
        if not a.dtype.is_integer or b.shape[1] % 8 or a.shape[1] % 4:
            return None
        ma, mb = self.maybe_bits(a), self.maybe_bits(b)

        def signed_ok(t: Tile, m: int) -> bool:  # its values are the int8 patterns
            return t.dtype.is_signed or m <= 127

        vnni = mode == "vnni" and b.shape[1] % 16 == 0
        # tdpbssd reads both operands' bytes as int8: exact when both tiles' values are int8 patterns
        if amx and signed_ok(a, ma) and signed_ok(b, mb):
            return "b", 16, "amx"
        for side, u, t_u, t_s, m_s in (("b", mb, b, a, ma), ("a", ma, a, b, mb)):
            if vnni and (not t_u.dtype.is_signed or u <= 127) and signed_ok(t_s, m_s):
                return side, min(16, a.shape[1] // 4), "vnni"
            # the unsigned operand's values are in [0, u] (u <= 127: nonnegative in either 8-bit dtype, and a
            # pair sum of at most 2·127·128 fits i16); the other one's are int8 patterns
            if u <= 127 and signed_ok(t_s, m_s):
                return side, min(16, 32767 // (256 * max(u, 1)), a.shape[1] // 4), "avx2"
        return None

    def dot_int8(self, inst: I.Dot, out: str, plan: tuple[str, int, str]) -> None:
        """out[BM, BN] += a[BM, KT] @ b[KT, BN] on bytes: four consecutive k of a column of b form one i32
        lane (8 columns per vector), the same four k of a row of a are broadcast, vpmaddubsw gives i16 pair
        sums that accumulate for `chunk` quads, vpmaddwd with ones widens them into the i32 accumulators.
        One row block (tm >= BM): `_dot_int8_rows`; several: `_dot_int8_columns`. A "vnni" plan runs
        `_dot_vnni` instead (vpdpbusd, 16 columns per vector, no i16 stage). The fast path needs every load in
        bounds but a's rows: a ragged row tile runs over a staged copy of them (`_ragged_rows`)."""
        ragged = self._row_guard(inst) if int(inst.a.shape[0]) > 1 else None
        body = lambda: self._dot_int8_fast(inst, out, plan)  # noqa: E731
        fast = lambda: self._ragged_rows(inst, ragged, body, twice=True)  # noqa: E731
        self._guarded(inst, out, fast, drop=ragged)

    def _guarded(
        self,
        inst: I.Dot | Sequence[I.Dot],
        out: str,
        fast_path: Callable[[], None],
        slow_path: Callable[[], None] | None = None,
        drop: str | None = None,
    ) -> None:
        """Emit `fast_path` (loads unchecked) under the operands' uniform in-bounds guards (of every dot of a
        chain) but `drop` (one the fast path checks itself), `slow_path` (the generic loops; given for a
        chain) in the else branch; only `slow_path` when a load is data-dependent (masked)."""
        dots = [inst] if isinstance(inst, I.Dot) else list(inst)
        slow_path = slow_path or (lambda: self._dot_generic(dots[0], out))
        probe = _Ctx(checked=False)
        for d in dots:
            self.get(d.a)(("0", "0"), probe)
            self.get(d.b)(("0", "0"), probe)
        if probe.data_dependent:
            slow_path()
            return
        probe.guards = [g for g in probe.guards if g != drop]
        if probe.guards:
            self.line(f"if {' and '.join(sorted(set(probe.guards)))}:")
            self.depth += 1
        fast_path()
        if probe.guards:
            self.depth -= 1
            self.line("else:")
            self.depth += 1
            slow_path()
            self.depth -= 1

    def _row_guard(self, inst: I.Dot) -> str | None:
        """The fast-path guard "the tile's rows lie inside a's tensor", when a is an unmasked load: a GEMM form
        (`_gemm_form`) stages a's rows with checked reads on a ragged row tile instead (rows past the
        tensor read 0; only their own output rows see them, and the store drops those), so the ragged last
        row tile of any M runs the fast path (the generic loops there took ~200x the time)."""
        load = self.defs.get(id(inst.a))
        if not isinstance(load, I.Load) or load.mask is not None:
            return None
        return f"{scalar(load.offsets[0])} + {load.shape[0]} <= {scalar(load.tensor.shape[0])}"

    def _row_inside(self, inst: I.Dot) -> Callable[[str], str]:
        """row -> "row `row` of the dot's a tile lies inside a's tensor" (a an unmasked load: `_row_guard`)."""
        load = self.defs[id(inst.a)]
        assert isinstance(load, I.Load)
        return lambda row: f"{scalar(load.offsets[0])} + {row} < {scalar(load.tensor.shape[0])}"

    def _stage_checked_rows(
        self, inst: I.Dot, buf: str, per_row: int, value: Callable[[str, str, _Ctx], str], zero: str
    ) -> None:
        """buf[i * per_row + q] = value(i, q) for the dot's a rows that lie inside a's tensor (`_row_inside`:
        one test per row, then a vectorized loop of unchecked reads), `zero` for those past it: a ragged row
        tile staged at the speed of a whole one (element-wise checked reads took 2-3x the whole dot at M = 5-13,
        4096², bf16 x on one 16-row AMX tile)."""
        ii, q = self.fresh("ii"), self.fresh("q")
        inside = self._row_inside(inst)
        self.line(f"for {ii} in T.serial({int(inst.a.shape[0])}):")
        self.line(f"    if {inside(ii)}:")
        self.line(f"        for {q} in T.vectorized({per_row}):")
        self.line(f"            {buf}[{ii} * {per_row} + {q}] = {value(ii, q, _Ctx(checked=False))}")
        self.line("    else:")
        self.line(f"        for {q} in T.vectorized({per_row}):")
        self.line(f"            {buf}[{ii} * {per_row} + {q}] = {zero}")

    def _ragged_rows(self, inst: I.Dot, ragged: str | None, body: Callable[[], None], twice: bool = False) -> None:
        """`body()` (a fast path that reads the dot's a tile) over a copy of a's tile in a local buffer, staged
        under `ragged` (the rows guard, `_row_guard`, dropped from the caller's guards) by one vectorized copy,
        else with zero rows past the tensor (`_stage_rows`): a ragged row tile runs the fast path, not the
        generic loops (int3 / fp6 M = 3 on 4-row tiles: 36 / 51 ms, 4096², bf16 x). One body over the copy:
        the body twice (x in place under the guard, the copy past it) made the whole tile's int2 walk 1.6x
        slower (fp32 x, M = 4, 4096², hot: 0.88 against 0.55 ms); the copy costs nothing measurable there (0.52
        against 0.52 ms without it). `twice`: the int8 dots, whose AMX form reads a whole tile's rows in place
        (`_direct_rows`), keep that under `ragged` and run over the copy only past it (W4A8 per group, 4096²,
        M = 16, hot, alternating: 2.20 ms, against 2.75 with the copy always; M = 13 2.98 against 2.97)."""
        if ragged is None:
            body()
            return
        a = inst.a
        KT = int(a.shape[1])
        fa, staged = self.get(a), self.fresh("ar")
        zero = self.const(0, a.dtype)
        if twice:
            self.line(f"if {ragged}:")
            self.depth += 1
            body()
            self.depth -= 1
            self.line("else:")
            self.depth += 1
        self.line(f'{staged} = T.decl_buffer(({int(a.shape[0]) * KT},), "{buffer_type(a.dtype)}", {self.scope})')
        if twice:
            self._stage_checked_rows(inst, staged, KT, lambda i, q, ctx: fa((i, q), ctx), zero)
        else:
            self._stage_rows(inst, staged, KT, lambda i, q, ctx: fa((i, q), ctx), ragged, zero)
        self.fn[id(a)] = lambda idx, ctx: f"{staged}[({idx[0]}) * {KT} + ({idx[1]})]"
        self.restaged.add(id(a))
        try:
            body()
        finally:
            self.fn[id(a)] = fa
            self.restaged.discard(id(a))
        if twice:
            self.depth -= 1

    def _gemm_form(self, inst: I.Dot, load: I.Load, table: list[float]) -> bool:
        """Whether a table-decoded dot runs a GEMM form (codes decoded once per tile into a buffer, then
        `_block_dot`'s register blocks): at least `gemm_rows` rows and more than `tm`, a register block of
        more than one row (`_block_shape`), and either pair-order codes (`_bf16_pairs`: `_dot_lut_bf16`)
        or one 4-bit-or-narrower code per field with whole word rows per tile (`_dot_lut_gemm`, fp32 FMAs)."""
        BM, KT = (int(n) for n in inst.a.shape)
        if max(self.opt["gemm_rows"] - 1, self.opt["tm"]) >= BM:
            return False
        if self._block_shape(BM, int(inst.b.shape[1]))[0] < 2:
            return False
        c = self._lut_codes(load, KT)
        if self._bf16_pairs(inst, load, table, c):
            return True
        per = load.tensor.layout.per_word or 1
        return c == 1 and load.tensor.dtype.bits <= 4 and KT % per == 0 and self._whole_words(load)

    def _dot_scaled(
        self,
        inst: I.Dot,
        t: Tile,
        fast_path: Callable[[str, str | None, tuple[str, str]], None],
        scaled: tuple[Tile, Tile, Tile, Tile],
    ) -> None:
        """`acc += (a @ decode(b)) * s` (`self.scaled`: the GEMV's per-group update) as one fused dot: each
        register block of the GEMM form adds its sums times the row of scales straight into the accumulator
        (`_block_dot`), instead of storing [BM, BN] sums and a second pass reading them with acc. The ragged
        edge runs the generic loops into a buffer and that second pass. `fast_path(out, ragged, (acc, s))`
        emits the GEMM form (`dot_lut` or `_dot_decoded_gemm`). Measured in lowbit/codegen/tvm/README.md
        ("GEMM forms of the table-decoded dot")."""
        row, acc, prod, total = scaled  # row: the [1, BN] tile of scales
        self.before_write({id(acc)})
        accbuf = self.buf[id(acc)]
        srow = self.buf.get(id(row)) or self.materialize(row)
        out = self.alloc(t)
        self.bind_buffer(t, out)

        def slow() -> None:
            zero = self.const(0, inst.acc_dtype)
            self.nest(t.shape, lambda idx, ctx: [f"{out}[{idx[0]}, {idx[1]}] = {zero}"])
            self._dot_generic(inst, out)
            self.nest(
                t.shape,
                lambda idx, ctx: [
                    f"{accbuf}[{idx[0]}, {idx[1]}] = {accbuf}[{idx[0]}, {idx[1]}] + {out}[{idx[0]}, {idx[1]}] * "
                    f"{srow}[0, {idx[1]}]"
                ],
            )

        ragged = self._row_guard(inst)
        self.line(f"# fused: %{acc.name} += (dot) * %{row.name} (`_dot_scaled`)")
        fast = lambda: fast_path(out, ragged, (accbuf, srow))  # noqa: E731
        self._guarded(inst, out, fast, slow, ragged)
        self.fused[id(prod)] = ""
        self.fused[id(total)] = accbuf

    def _dot_int8_fast(self, inst: I.Dot, out: str, plan: tuple[str, int, str]) -> None:
        side, chunk, kind = plan
        BM = inst.a.shape[0]
        tm = self.opt["tm"] if BM % self.opt["tm"] == 0 else 1
        tm = min(tm, BM)
        fast = _Ctx(checked=False)

        def quad(f: IndexFn, idx: Callable[[int], tuple[str, str]]) -> str:
            return _quad(f, idx, fast)

        if kind == "amx":
            self._dot_amx([inst], out)
            return
        # vpdpbusd with several row blocks: two column vectors per pass, their quads in 16 registers (`_dot_vnni`)
        cv = 2 if kind == "vnni" and tm < BM and inst.b.shape[1] % 32 == 0 else 1
        if cv == 2:
            chunk = min(chunk, 8)

        def chunk_body(c0: str, n: int) -> None:  # quads c0 .. c0 + n - 1
            if kind == "vnni":
                self._dot_vnni(inst, out, side, tm, cv, quad, c0, n)
            elif tm < BM:  # several row blocks share b's quads
                self._dot_int8_columns(inst, out, side, tm, quad, c0, n)
            else:
                self._dot_int8_rows(inst, out, side, quad, c0, n)

        c = self.fresh("c")
        whole, tail = divmod(inst.a.shape[1] // 4, chunk)
        if whole:
            self.line(f"for {c} in T.serial({whole}):")
            self.depth += 1
            chunk_body(f"{c} * {chunk}", chunk)
            self.depth -= 1
        if tail:
            chunk_body(str(whole * chunk), tail)

    def _dot_int8_rows(self, inst: I.Dot, out: str, side: str, quad: Callable[..., str], c0: str, n: int) -> None:
        """The int8 dot of one row block (all BM rows' accumulators in registers) over the n quads from c0: per
        quad, b's BN / 8 quad vectors are unpacked once and used by every row."""
        a, b = inst.a, inst.b
        BM, BN = a.shape[0], b.shape[1]
        fa, fb = self.get(a), self.get(b)
        nv = BN // 8
        # buffers declared per chunk, zeroed a whole vector at a time: LLVM keeps them in registers
        acc16, bq = self.fresh("acc16"), self.fresh("bq")
        tq, ii, jv, j = (self.fresh(v) for v in ("tq", "ii", "jv", "j"))
        self.line(f'{acc16} = T.decl_buffer(({BM * 2 * BN},), "int16", {self.scope})')
        self.line(f'{bq} = T.decl_buffer(({BN},), "int32", {self.scope})')
        self.line(f"for {ii} in T.unroll({BM * 2 * BN // 16}):")
        self.line(f"    {acc16}[T.Ramp({ii} * 16, 1, 16)] = T.Broadcast(T.int16(0), 16)")
        self.line(f"for {tq} in T.unroll({n}):")
        self.depth += 1
        t = f"{c0} + {tq}"
        self.line(f"for {j} in T.vectorized({BN}):")
        self.line(f"    {bq}[{j}] = " + quad(fb, lambda r: (f"({t}) * 4 + {r}", j)))
        self.line(f"for {ii} in T.unroll({BM}):")
        self.depth += 1
        aq = f'T.reinterpret("int8x32", T.Broadcast({quad(fa, lambda r: (ii, f"({t}) * 4 + {r}"))}, 8))'
        self.line(f"for {jv} in T.unroll({nv}):")
        bv = f'T.reinterpret("int8x32", {bq}[T.Ramp({jv} * 8, 1, 8)])'
        u, sg = (bv, aq) if side == "b" else (aq, bv)
        lanes = f"T.Ramp({ii} * {2 * BN} + {jv} * 16, 1, 16)"
        self._madd_pairs(acc16, lanes, u, sg, "    ")
        self.depth -= 2
        self.line(f"for {ii} in T.unroll({BM}):")
        self.line(f"    for {jv} in T.unroll({nv}):")
        self._widen_pairs(out, ii, f"T.Ramp({jv} * 8, 1, 8)", acc16, lanes, "        ")

    def _vnni_chain_shape(self, inst: I.Dot) -> bool:
        """Whether a VNNI dot can run a chain (`_vnni_chain`): one row block of at most VNNI_CHAIN_ROWS rows, whose
        accumulators (rows x chains x column vectors) stay in registers over every dot of the chain."""
        return int(inst.a.shape[0]) <= VNNI_CHAIN_ROWS and int(inst.b.shape[1]) % 16 == 0 and self.cpu

    def _quad_words(self, b: Tile) -> IndexFn | None:
        """(q, n) -> quad q (k = 4q .. 4q + 3) of column n of the int8 dot operand b [K, N] as one int32, when b is
        the bytes of int32 words W [K / 4, N] (`cast(view(transpose(W), uint8).T, int8)`: the x16 GEMV's planes):
        the quad is W[q, n] itself. `_quad` rebuilt it from four byte extractions of the word, which LLVM folds
        back into the word, but whose TVMScript text parsed for most of a compile (an x16 GEMV of 4 rows: ~29 of
        37 s). None for any other b, or where a tile on the way is held in a buffer or loop-carried."""
        inst = self.defs.get(id(b))
        if isinstance(inst, I.Cast) and inst.x.dtype.is_integer and inst.x.dtype.bits == 8:
            b, inst = inst.x, self.defs.get(id(inst.x))
        if not isinstance(inst, I.Transpose) or inst.perm != (1, 0) or id(b) in self.buf:
            return None
        view = self.defs.get(id(inst.x))
        if not isinstance(view, I.View) or id(inst.x) in self.buf:
            return None
        if not (view.x.dtype.is_integer and view.x.dtype.bits == 32 and view.dtype.bits == 8):
            return None
        words = self.defs.get(id(view.x))
        if not isinstance(words, I.Transpose) or words.perm != (1, 0) or id(view.x) in self.buf:
            return None
        if id(words.x) in self.assigned:
            return None
        return self.get(words.x)

    def _vnni_chain(self, dots: Sequence[I.Dot], out: str, plan: tuple[str, int, str]) -> None:
        """out[BM, BN] += Σ_d a_d @ b_d on vpdpbusd for a chain of int8 dots (`_amx_chain`) of one row block:
        per column vector, the rows' i32 accumulators are zeroed once, every dot's quads go through them (each
        dot's chunk loop as `_dot_vnni`'s: b's quad vector unpacked where it is used, a's quad broadcast) and
        they are summed into `out` once at the end. Per dot they were zeroed and summed per chunk: the x16
        GEMV's eight planes are eight dots of four quads a group, and that overhead matched their vpdpbusd.
        Quads and rows are unrolled here (constant accumulator lanes)."""
        side, chunk = plan[0], plan[1]
        BM, BN = int(dots[0].a.shape[0]), int(dots[0].b.shape[1])
        fast = _Ctx(checked=False)
        chains = max(1, -(-self.opt["vnni_chains"] // BM))
        jv, j, c = (self.fresh(v) for v in ("jv", "j", "c"))
        bq = self.fresh("bq")
        # the rows x chains accumulators, 16 lanes each: in one buffer for one or two rows (the M = 1 x16 GEMV);
        # past two rows a buffer each. One buffer for four rows kept every accumulator in memory in the x16 GEMV
        # with zero points at M = 2 (LLVM stored each after every vpdpbusd), and a buffer each for two rows
        # took the broadcasts of x out of the vpdpbusd operands. Session 53, hot, us per 4096 columns (K = 4096,
        # 2 threads), one buffer against a buffer each: int2 M = 1 124 / 135; M = 2 241 / 202, with post zeros
        # 1150 / 205; M = 4 401 / 350, with post zeros 825 / 361; int3 with post zeros, M = 2 510 / 194.
        n_acc = BM * chains
        split = BM > 2
        accs = [self.fresh("acc32") for _ in range(n_acc)] if split else [self.fresh("acc32")]

        def lanes(k: int) -> str:  # accumulator k = row·chains + chain
            return f"{accs[k]}[T.Ramp(0, 1, 16)]" if split else f"{accs[0]}[T.Ramp({k * 16}, 1, 16)]"

        self.line(f"for {jv} in T.unroll({BN // 16}):")
        self.depth += 1
        self.line(f'{bq} = T.decl_buffer((16,), "int32", {self.scope})')
        for acc in accs:
            self.line(f'{acc} = T.decl_buffer(({16 if split else 16 * n_acc},), "int32", {self.scope})')
        for k in range(n_acc):
            self.line(f"{lanes(k)} = T.Broadcast(T.int32(0), 16)")
        col = f"{jv} * 16 + {j}"

        def quads(
            fa: IndexFn, fb: IndexFn, words: IndexFn | None, a_words: Callable[[int, str], str] | None, c0: str, n: int
        ) -> None:  # quads c0 .. c0 + n - 1 of one dot
            for tq in range(n):
                self.line(f"for {j} in T.vectorized(16):")
                k_of = functools.partial(_chain_k, c0, tq)  # r -> this quad's k expression
                if words is not None:  # b's bytes are words' (`_quad_words`)
                    self.line(f"    {bq}[{j}] = " + words((_chain_q(c0, tq), col), fast))
                else:
                    self.line(f"    {bq}[{j}] = " + _quad(fb, functools.partial(_chain_b_index, col, k_of), fast))
                for i in range(BM):
                    if a_words is not None:
                        aq = a_words(i, _chain_q(c0, tq))
                    else:
                        aq = _quad(fa, functools.partial(_chain_a_index, str(i), k_of), fast)
                    av = f'T.reinterpret("int8x64", T.Broadcast({aq}, 16))'
                    bv = f'T.reinterpret("int8x64", {bq}[T.Ramp(0, 1, 16)])'
                    u, sg = (bv, av) if side == "b" else (av, bv)
                    acc = lanes(i * chains + tq % chains)
                    self.line(
                        f'{acc} = T.call_llvm_pure_intrin("int32x16", "llvm.x86.avx512.vpdpbusd.512", {acc}, {u}, {sg})'
                    )

        for d in dots:
            fa, fb, words, a_words = self.get(d.a), self.get(d.b), self._quad_words(d.b), self._direct_quad(d.a)
            step = min(chunk, int(d.a.shape[1]) // 4)
            whole, tail = divmod(int(d.a.shape[1]) // 4, step)
            if whole > 1:
                self.line(f"for {c} in T.serial({whole}):")
                self.depth += 1
                quads(fa, fb, words, a_words, f"{c} * {step}", step)
                self.depth -= 1
            elif whole:
                quads(fa, fb, words, a_words, "0", step)
            if tail:
                quads(fa, fb, words, a_words, str(whole * step), tail)
        cols = f"T.Ramp({jv} * 16, 1, 16)"
        for i in range(BM):
            parts = [lanes(i * chains + h) for h in range(chains)]
            self.line(f"{out}[{i}, {cols}] = {out}[{i}, {cols}] + {' + '.join(parts)}")
        self.depth -= 1

    def _dot_vnni(
        self, inst: I.Dot, out: str, side: str, tm: int, cv: int, quad: Callable[..., str], c0: str, n: int
    ) -> None:
        """The int8 dot over the n quads from c0 on vpdpbusd, `cv` column vectors (16 columns each) at a time.
        Each row keeps `chains` i32 accumulators per column vector that take the quads in turn, so that
        `vnni_chains` independent vpdpbusd chains are in flight (latency ~4.7 cycles at ~1.4 per cycle on Zen
        5), summed into `out` at the end; a's quad is broadcast (from memory: LLVM folds it into the
        instruction's {1to16} operand). One row block (tm >= BM, the M = 1 GEMV): b's quads are used where
        they are unpacked (a stack buffer of them was stored and reloaded). Several (BM > tm): the n quads of
        `cv` column vectors (2 where b is 32 columns wide, n <= 8: 16 registers) are unpacked into a buffer
        once and every block of tm rows reuses them, each broadcast of a's quad feeding cv vpdpbusd (one column
        vector per pass: one broadcast per vpdpbusd; a C loop of that shape ran 4.7 vs 6.1 per ns at 8
        chains)."""
        a, b = inst.a, inst.b
        BM, BN = a.shape[0], b.shape[1]
        fa, fb = self.get(a), self.get(b)
        reuse = tm < BM
        chains = max(1, -(-self.opt["vnni_chains"] // (tm * cv)))
        jv, j, tq, io, ii = (self.fresh(v) for v in ("jv", "j", "tq", "io", "ii"))
        acc, bq = self.fresh("acc32"), self.fresh("bq")
        self.line(f"for {jv} in T.unroll({BN // (16 * cv)}):")
        self.depth += 1

        def col(c: int) -> str:
            return f"({jv} * {cv} + {c}) * 16 + {j}"

        if reuse:
            self.line(f'{bq} = T.decl_buffer(({n * cv * 16},), "int32", {self.scope})')
            self.line(f"for {tq} in T.unroll({n}):")
            for c in range(cv):
                self.line(f"    for {j} in T.vectorized(16):")
                value = quad(fb, lambda r, c=c: (f"({c0} + {tq}) * 4 + {r}", col(c)))
                self.line(f"        {bq}[({tq} * {cv} + {c}) * 16 + {j}] = " + value)
        else:  # one quad vector at a time, unpacked inside the quad loop below (64 bytes: LLVM keeps it in a register)
            self.line(f'{bq} = T.decl_buffer((16,), "int32", {self.scope})')
        self.line(f"for {io} in T.serial({BM // tm}):")
        self.depth += 1
        self.line(f'{acc} = T.decl_buffer(({tm * cv * chains * 16},), "int32", {self.scope})')
        self.line(f"for {ii} in T.unroll({tm * cv * chains}):")
        self.line(f"    {acc}[T.Ramp({ii} * 16, 1, 16)] = T.Broadcast(T.int32(0), 16)")
        row = f"{io} * {tm} + {ii}"
        self.line(f"for {tq} in T.unroll({n}):")
        if not reuse:
            self.line(f"    for {j} in T.vectorized(16):")
            self.line(f"        {bq}[{j}] = " + quad(fb, lambda r: (f"({c0} + {tq}) * 4 + {r}", col(0))))
        self.line(f"    for {ii} in T.unroll({tm}):")
        aq = f'T.reinterpret("int8x64", T.Broadcast({quad(fa, lambda r: (row, f"({c0} + {tq}) * 4 + {r}"))}, 16))'
        for c in range(cv):
            bvec = f"{bq}[T.Ramp(({tq} * {cv} + {c}) * 16, 1, 16)]" if reuse else f"{bq}[T.Ramp(0, 1, 16)]"
            bv = f'T.reinterpret("int8x64", {bvec})'
            u, sg = (bv, aq) if side == "b" else (aq, bv)
            lanes = f"T.Ramp((({ii} * {cv} + {c}) * {chains} + {tq} % {chains}) * 16, 1, 16)"
            self.line(
                f'        {acc}[{lanes}] = T.call_llvm_pure_intrin("int32x16", "llvm.x86.avx512.vpdpbusd.512", '
                f"{acc}[{lanes}], {u}, {sg})"
            )
        self.line(f"for {ii} in T.unroll({tm}):")
        for c in range(cv):
            cols = f"T.Ramp(({jv} * {cv} + {c}) * 16, 1, 16)"
            parts = [f"{acc}[T.Ramp((({ii} * {cv} + {c}) * {chains} + {h}) * 16, 1, 16)]" for h in range(chains)]
            self.line(f"    {out}[{row}, {cols}] = {out}[{row}, {cols}] + {' + '.join(parts)}")
        self.depth -= 2

    def _dot_amx(self, dots: Sequence[I.Dot], out: str, zeroed: bool = False) -> None:
        """out[BM, BN] += Σ_d a_d[BM, KT_d] @ b_d[KT_d, BN] on AMX (BM, BN multiples of 16, each KT of 64) for a
        dot or a chain of dots (`_amx_chain`) summing into one tile. Per dot, a's rows are read in place where
        they are rows of an int8 tensor (`_direct_rows`), else copied byte by byte to a stack buffer, and b's
        quads (four consecutive k of a column as one i32, AMX's "VNNI" B layout) are written to one; then per
        16x16 block of out an accumulator tile loads the block (i32, 64-byte rows; `zeroed`: a first dot without
        accumulator, whose out was not filled, starts from `tilezero`), each dot's 16-row a tiles and 16 quad-row
        b tiles per 64 k are tiles too, tdpbssd adds their int8 products, and the block is stored back once
        after the whole chain (see the register assignment below). The tile configuration (`_amx_config`) is
        loaded at the start of each grid block (a block runs on one worker thread) and released at its end (a
        thread holding tile state makes every context switch save 8 KiB more)."""
        BM, BN = int(dots[0].a.shape[0]), int(dots[0].b.shape[1])
        self.amx = True
        fast = _Ctx(checked=False)
        mi, ni, kc = (self.fresh(v) for v in ("mi", "ni", "kc"))
        a_rows: list[Callable[[str, str], str]] = []  # dot -> (row, k) -> the address of a's byte there
        a_stride: list[str] = []  # dot -> bytes from one of a's rows to the next
        b_tile: list[Callable[[Any, Any], str]] = []  # dot -> (quad row, column) -> the address in b's quads
        for d in dots:
            KT = int(d.a.shape[1])
            direct = self._direct_rows(d.a)
            if direct is not None:
                a_rows.append(direct[0])
                a_stride.append(direct[1])
            else:
                fa, ab, i, t = self.get(d.a), self.fresh("amxa"), self.fresh("i"), self.fresh("t")
                self.line(f'{ab} = T.decl_buffer(({BM}, {KT}), "int8", {self.scope})')
                self.line(f"for {i} in T.serial({BM}):")  # a's rows byte by byte: 64-byte vector copies
                self.line(f"    for {t} in T.vectorized({KT}):")
                self.line(f'        {ab}[{i}, {t}] = T.Cast("int8", {fa((i, t), fast)})')
                a_rows.append(_element_address(ab))
                a_stride.append(f"T.int64({KT})")
            fb, bb, t, j = self.get(d.b), self.fresh("amxb"), self.fresh("t"), self.fresh("j")
            self.line(f'{bb} = T.decl_buffer(({KT // 4}, {BN}), "int32", {self.scope})')
            self.line(f"for {t} in T.serial({KT // 4}):")
            self.line(f"    for {j} in T.vectorized({BN}):")
            self.line(f"        {bb}[{t}, {j}] = " + _quad(fb, _quad_rows(t, j), fast))
            b_tile.append(_element_address(bb))

        def tile(op: str, reg: int, addr: str, stride: str) -> None:
            self.line(f'T.evaluate(T.call_llvm_intrin("void", "llvm.x86.{op}", T.int8({reg}), {addr}, {stride}))')

        def tdp(c: int, a_: int, b_: int) -> None:
            self.line(
                f'T.evaluate(T.call_llvm_intrin("void", "llvm.x86.tdpbssd", T.int8({c}), T.int8({a_}), T.int8({b_})))'
            )

        def start(reg: int, r: str, c: str) -> None:  # the accumulator tile of out's block (r, c)
            if zeroed:
                self.line(f'T.evaluate(T.call_llvm_intrin("void", "llvm.x86.tilezero", T.int8({reg})))')
            else:
                tile("tileloadd64", reg, f"T.address_of({out}[{r}, {c}])", f"T.int64({BN * 4})")

        nb = BN // 16
        steps = [(di, kk) for di, d in enumerate(dots) for kk in range(int(d.a.shape[1]) // 64)]  # (dot, 64 k)
        b_stride = f"T.int64({BN * 4})"
        if nb * len(steps) + 1 + nb <= AMX_TILES:
            # b's tiles loaded once (registers 1 .. nb·steps); per 16 rows, a's tile (register 0) per dot and 64 k
            # and one accumulator register per 16 columns, so consecutive tdpbssd do not wait on each other
            acc0 = 1 + nb * len(steps)
            for s_, (di, kk) in enumerate(steps):
                for n_ in range(nb):
                    tile("tileloadd64", 1 + s_ * nb + n_, b_tile[di](kk * 16, n_ * 16), b_stride)
            self.line(f"for {mi} in T.serial({BM // 16}):")
            self.depth += 1
            for n_ in range(nb):
                start(acc0 + n_, f"{mi} * 16", str(n_ * 16))
            for s_, (di, kk) in enumerate(steps):
                tile("tileloadd64", 0, a_rows[di](f"{mi} * 16", str(kk * 64)), a_stride[di])
                for n_ in range(nb):
                    tdp(acc0 + n_, 0, 1 + s_ * nb + n_)
            for n_ in range(nb):
                tile("tilestored64", acc0 + n_, f"T.address_of({out}[{mi} * 16, {n_ * 16}])", b_stride)
            self.depth -= 1
            return
        self.line(f"for {mi} in T.serial({BM // 16}):")
        self.line(f"    for {ni} in T.serial({BN // 16}):")
        self.depth += 2
        start(0, f"{mi} * 16", f"{ni} * 16")
        for di, d in enumerate(dots):
            self.line(f"for {kc} in T.serial({int(d.a.shape[1]) // 64}):")
            self.depth += 1
            tile("tileloadd64", 1, a_rows[di](f"{mi} * 16", f"{kc} * 64"), a_stride[di])
            tile("tileloadd64", 2, b_tile[di](f"{kc} * 16", f"{ni} * 16"), b_stride)
            tdp(0, 1, 2)
            self.depth -= 1
        tile("tilestored64", 0, f"T.address_of({out}[{mi} * 16, {ni} * 16])", b_stride)
        self.depth -= 2

    def _direct_rows(self, t: Tile) -> tuple[Callable[[str, str], str], str] | None:
        """(row, k) -> the address of element (row, k) of tile t, and the int64 bytes from a row to the next,
        when t is a load of an int8 or bf16 tensor (possibly reshaped: unit axes dropped or added) whose elements along
        k are adjacent in memory and whose rows are a constant stride apart, unmasked: AMX loads its tiles
        from there, with no copy. None otherwise."""
        direct = self._direct_index(t)
        if direct is None:
            return None
        index, g, stride = direct
        return (lambda r, k: f"T.address_of({g}[{index(r, k)}])"), stride

    def _direct_quad(self, t: Tile) -> Callable[[int, str], str] | None:
        """(row, q) -> quad q (k = 4q .. 4q + 3) of row `row` (a number) of the int8 tile t [R, K] as one int32: a
        4-byte load, where t is read from its tensor directly (`_plain_load`; possibly reshaped: t's rows any of
        the load's leading axes merged, its k the load's last axis, adjacent in memory). `_quad` spelled it as four
        byte loads (LLVM merges them, but their text was most of the VNNI chain's TVMScript). None otherwise."""
        plain = self._plain_load(t) if t.dtype.name == "int8" and len(t.shape) == 2 else None
        if plain is None:
            return None
        inst, syms, offset = plain
        if int(inst.shape[-1]) != int(t.shape[1]) or sympy.simplify(offset.subs(syms[-1], syms[-1] + 1) - offset) != 1:
            return None
        lead = [int(n) for n in inst.shape[:-1]]
        tensor, g = inst.tensor, self.gbuf[inst.tensor.name]

        def quad(row: int, q: str) -> str:
            coords = [*(int(c) for c in np.unravel_index(row, lead)), f"({q}) * 4"]
            flat = _flat_address(tensor, [f"{scalar(o)} + {c}" for o, c in zip(inst.offsets, coords)])
            return f'T.reinterpret("int32", {g}[T.Ramp({flat}, 1, 4)])'

        return quad

    def _plain_load(self, t: Tile) -> tuple[I.Load, list[sympy.Symbol], Any] | None:
        """The unmasked load t reads (t itself, or the source of t's reshape) when its tensor is plain: t's dtype,
        not packed, never stored by this kernel, and t not held in a buffer: (the load, the tensor's index
        symbols, the element offset in them). None otherwise. `_direct_index` and `_direct_quad` read t there."""
        if id(t) in self.buf or id(t) in self.restaged:
            return None
        inst = self.defs.get(id(t))
        if isinstance(inst, I.Reshape):
            inst = self.defs.get(id(inst.x))
        if not isinstance(inst, I.Load) or inst.mask is not None:
            return None
        tensor = inst.tensor
        if tensor.dtype != t.dtype or isinstance(tensor.layout, PackedLayout) or tensor.name in self.stored:
            return None
        if len(inst.shape) != len(tensor.shape):
            return None
        syms = [sympy.Symbol(f"__c{d}", integer=True, nonnegative=True) for d in range(len(tensor.shape))]
        offset = tensor.layout(*syms) if tensor.layout is not None else _row_major(syms, tensor.shape)
        return inst, syms, offset

    def _direct_index(self, t: Tile) -> tuple[Callable[[str, str], str], str, str] | None:
        """`_direct_rows`' tile: ((row, k) -> the flat index of element (row, k) in its tensor's buffer, the
        buffer, the int64 bytes from a row to the next); None for any other tile."""
        reshape = self.defs.get(id(t))
        keep = [0, 1]  # the load's axes that are t's rows and columns
        if isinstance(reshape, I.Reshape):
            src = reshape.x.shape
            keep = [ax for ax, n in enumerate(src) if n != 1]
            if [src[ax] for ax in keep] != [n for n in t.shape if n != 1] or len(keep) != 2 or 1 in t.shape:
                return None
        plain = self._plain_load(t)
        size = {"int8": 1, "bfloat16": 2}.get(t.dtype.name)
        if plain is None or size is None:
            return None
        inst, syms, offset = plain
        tensor = inst.tensor
        r_ax, k_ax = keep
        row = sympy.simplify(offset.subs(syms[r_ax], syms[r_ax] + 1) - offset)
        col = sympy.simplify(offset.subs(syms[k_ax], syms[k_ax] + 1) - offset)
        if col != 1 or row.free_symbols & set(syms):
            return None
        g = self.gbuf[tensor.name]

        def index(r: str, k: str) -> str:
            idx = ["0"] * len(tensor.shape)
            idx[r_ax], idx[k_ax] = r, k
            coords = [f"{scalar(o)} + {i}" for o, i in zip(inst.offsets, idx)]
            return _flat_address(tensor, coords)

        return index, g, f'T.Cast("int64", {scalar(row * size)})'

    def _amx_config(self) -> None:
        """Load AMX's tile configuration: palette 1, all AMX_TILES tiles of 16 rows x 64 bytes (the 64-byte
        config as 16 int32: byte 0 the palette, bytes 16-31 the tiles' bytes per row as u16, 48-55 their rows)."""
        cfg = self.fresh("amxcfg")
        words = {0: 1, **{4 + w: 64 | 64 << 16 for w in range(AMX_TILES // 2)}}
        words.update({12 + w: 0x10101010 for w in range(AMX_TILES // 4)})
        self.line(f'{cfg} = T.decl_buffer((16,), "int32", {self.scope})')
        for w in range(16):
            self.line(f"{cfg}[{w}] = T.int32({words.get(w, 0)})")
        self.line(f'T.evaluate(T.call_llvm_intrin("void", "llvm.x86.ldtilecfg", T.address_of({cfg}[0])))')

    def _madd_pairs(self, acc16: str, lanes: str, u: str, sg: str, indent: str) -> None:
        """acc16[lanes] += vpmaddubsw(u, sg): the u8·i8 products, adjacent pairs summed in i16."""
        self.line(
            f'{indent}{acc16}[{lanes}] = {acc16}[{lanes}] + T.call_llvm_pure_intrin("int16x16", '
            f'"llvm.x86.avx2.pmadd.ub.sw", {u}, {sg})'
        )

    def _widen_pairs(self, out: str, row: str, cols: str, acc16: str, lanes: str, indent: str) -> None:
        """out[row, cols] += vpmaddwd(acc16[lanes], 1): the i16 sums widened pairwise into the i32 accumulators."""
        self.line(
            f'{indent}{out}[{row}, {cols}] = {out}[{row}, {cols}] + T.call_llvm_pure_intrin("int32x8", '
            f'"llvm.x86.avx2.pmadd.wd", {acc16}[{lanes}], T.Broadcast(T.int16(1), 16))'
        )

    def _dot_int8_columns(
        self, inst: I.Dot, out: str, side: str, tm: int, quad: Callable[..., str], c0: str, n: int
    ) -> None:
        """The int8 dot of several row blocks (tm < BM) over the n quads from c0, one column vector (8
        columns) at a time: per column vector, b's n quad vectors are unpacked once into registers, then every
        block of tm rows accumulates tm i16 vectors from them and one broadcast of a's quad per row and
        quad; the live set is chunk + tm + 1 vector registers (<= 14 of AVX2's 16 for chunk 8, tm 4), so
        nothing spills, and no operand is re-read from a stack buffer that LLVM would hoist into registers."""
        a, b = inst.a, inst.b
        BM, BN = a.shape[0], b.shape[1]
        fa, fb = self.get(a), self.get(b)
        nv = BN // 8
        jv, j, tq, io, ii = (self.fresh(v) for v in ("jv", "j", "tq", "io", "ii"))
        acc16, bq = self.fresh("acc16"), self.fresh("bq")
        self.line(f"for {jv} in T.unroll({nv}):")
        self.depth += 1
        self.line(f'{bq} = T.decl_buffer(({n * 8},), "int32", {self.scope})')
        self.line(f"for {tq} in T.unroll({n}):")
        self.line(f"    for {j} in T.vectorized(8):")
        col = f"{jv} * 8 + {j}"
        self.line(f"        {bq}[{tq} * 8 + {j}] = " + quad(fb, lambda r: (f"({c0} + {tq}) * 4 + {r}", col)))
        self.line(f"for {io} in T.serial({BM // tm}):")
        self.depth += 1
        self.line(f'{acc16} = T.decl_buffer(({tm * 16},), "int16", {self.scope})')
        self.line(f"for {ii} in T.unroll({tm}):")
        self.line(f"    {acc16}[T.Ramp({ii} * 16, 1, 16)] = T.Broadcast(T.int16(0), 16)")
        row = f"{io} * {tm} + {ii}"
        self.line(f"for {tq} in T.unroll({n}):")
        self.line(f"    for {ii} in T.unroll({tm}):")
        aq = f'T.reinterpret("int8x32", T.Broadcast({quad(fa, lambda r: (row, f"({c0} + {tq}) * 4 + {r}"))}, 8))'
        bv = f'T.reinterpret("int8x32", {bq}[T.Ramp({tq} * 8, 1, 8)])'
        u, sg = (bv, aq) if side == "b" else (aq, bv)
        lanes = f"T.Ramp({ii} * 16, 1, 16)"
        self._madd_pairs(acc16, lanes, u, sg, "        ")
        self.line(f"for {ii} in T.unroll({tm}):")
        self._widen_pairs(out, row, f"T.Ramp({jv} * 8, 1, 8)", acc16, lanes, "    ")
        self.depth -= 2

    def lut_plan(self, inst: I.Dot) -> tuple[I.Load, list[float]] | None:
        """(b's packed load, the 16-entry decode table) when `out += a @ cast(codes)` can decode b with vpermps
        (`dot_lut`), else None: option lut "avx512" with 16 lanes, an fp32 accumulator, one row block (BM <=
        tm: more rows decode b once into a buffer), b a cast to a float dtype of an unmasked load of <= 4-bit
        word-aligned codes, and a layout in which, wherever the tile sits (checked numerically at aligned
        origins), the codes of 16 consecutive columns of a row are one field of 16 consecutive words. vpermps
        reads the low 4 bits of each lane, so table entry i is the value of code i mod 2^bits (a narrower
        code's neighbour bits above it select the same value). 5- and 6-bit codes: the table of all 2^bits
        values, decoded by `_lut_decode` (vpermi2ps) in the word walk."""
        a = inst.a
        if self.opt["lut"] != "avx512" or self.opt["vector"] != 16:
            return None
        load = self._column_codes(inst)
        if load is None or load.tensor.dtype.bits > 6:
            return None
        t = load.tensor
        lay, dt = t.layout, t.dtype
        values = decode(dt, np.arange(max(16, 1 << dt.bits)) % (1 << dt.bits)).astype(np.float64)
        if not np.isfinite(values).all() or (values.astype(np.float32) != values).any():
            return None
        if dt.bits > 4:
            # 5 bits: vpermi2ps over 32 entries; 6 bits: only a sign-magnitude format (code i + 32 = −code i,
            # bit for bit), its 5-bit magnitude through vpermi2ps and the sign bit moved onto the float's. Their
            # five or six codes per word never divide a tile's rows: the word walk only.
            bits32 = values.astype(np.float32).view(np.uint32)
            if dt.bits == 6 and (bits32[32:] != bits32[:32] ^ np.uint32(0x80000000)).any():
                return None
            if int(load.shape[0]) % (lay.per_word or 1) == 0 or not self._whole_words(load):
                return None
        table = [float(v) for v in values]
        if a.shape[0] > self.opt["tm"] and not (
            self._bf16_pairs(inst, load, table, self._lut_codes(load, a.shape[1])) or self._gemm_form(inst, load, table)
        ):
            return None  # more rows than the register block: the bf16 pair dot or a GEMM form only
        return load, table

    def dot_lut(
        self,
        inst: I.Dot,
        out: str,
        plan: tuple[I.Load, list[float]],
        ragged: str | None = None,
        scale: tuple[str, str] | None = None,
    ) -> None:
        """out[BM, BN] += a @ decode(b) with b's codes decoded 16 columns at a time by vpermps, which reads the
        low 4 bits of each lane. Codes of 3-4 bits: per k and column vector, one 16-word load (the word row of
        those columns), one shift by the code's bit offset, one vpermps from the dtype's table (`lut_plan`),
        then one FMA per row with a's element broadcast, instead of per code two shifts and a convert (signed
        ints) or the float format's bit assembly. Codes of 1-2 bits whose `c` = 4 / bits consecutive k sit
        side by side in a word (`_lut_codes`): one 4-bit field holds c codes, and the table is built per row
        from a, T[i] = Σ_t a[k + t]·decode(field t of i) (one multiply and c − 1 FMAs per c rows of k, shared
        by all BN columns), so each field costs a shift, a vpermps and an add (`_accumulate`): per weight,
        1/c of the 3-4-bit cost, so the work per byte of weights is the same at every width. T's entries are
        rounded to fp32 once (a pair's sum) before the fp32 accumulation. Codes whose per-word count does not
        divide the tile's rows (ten 3-bit codes): `_dot_lut_words`."""
        load, table = plan
        a = inst.a
        BM, KT = a.shape
        BN = inst.b.shape[1]
        t = load.tensor
        fa = self.get(a)
        conv = _to_value_type(a.dtype, inst.acc_dtype)
        g = self.gbuf[t.name]
        c = self._lut_codes(load, KT)
        per = t.layout.per_word or 1
        if c == 1 and KT % per and self._whole_words(load):
            self._dot_lut_words(inst, out, load, table)
            return
        if self._bf16_pairs(inst, load, table, c):
            self._dot_lut_bf16(inst, out, load, table, scale, ragged)
            return
        if self._gemm_form(inst, load, table):
            self._dot_lut_gemm(inst, out, load, table, scale, ragged)
            return
        unroll = self.opt["unroll"] if KT % self.opt["unroll"] == 0 else 1
        if c > 1 and KT % math.lcm(unroll, per) == 0:
            unroll = math.lcm(unroll, per)  # one word row per k step: the fields' shifts are constants
        elif unroll % c:
            # a k step takes whole fields of c codes (KT % c == 0: `_lut_codes`); an unroll below c made the
            # inner loop empty (a 2-bit tile of 4 rows under unroll 1 summed nothing: all-zero output)
            unroll = math.lcm(unroll, c) if KT % math.lcm(unroll, c) == 0 else c
        ko, ku, jv, ii = (self.fresh(v) for v in ("ko", "ku", "jv", "ii"))
        k = sympy.Symbol(f"{ko}", integer=True) * unroll + sympy.Symbol(f"{ku}", integer=True) * c
        j0 = sympy.Symbol(f"{jv}", integer=True) * 16
        word, bit = t.layout.locate(sympy.sympify(load.offsets[0]) + k, sympy.sympify(load.offsets[1]) + j0)
        wvec = f"{g}[T.Ramp({scalar(word)}, 1, 16)]"
        idx = f'T.shift_right({wvec}, T.Broadcast(T.Cast("int32", {scalar(bit)}), 16))'
        fast = _Ctx(checked=False)
        cols = f"T.Ramp({jv} * 16, 1, 16)"
        mask = (1 << t.dtype.bits) - 1
        # per field position t: the value of that code for each of the 16 table indices
        columns = [[table[(i >> (p * t.dtype.bits)) & mask] for i in range(16)] for p in range(c)]
        names = [self.fresh("tbl") for _ in columns]
        for name, vals in zip(names, columns):
            self.line(f'{name} = T.decl_buffer((16,), "float32", {self.scope})')
            for i, v in enumerate(vals):
                self.line(f"{name}[{i}] = {f32(v)}")
        self.line(f"for {ko} in T.serial({KT // unroll}):")
        self.depth += 1
        self._prefetch_lut(t, load, k.subs(sympy.Symbol(ku, integer=True), 0), unroll, BN)
        self.line(f"for {ku} in T.unroll({unroll // c}):")
        self.depth += 1
        if c == 1:
            self.line(f"for {jv} in T.unroll({BN // 16}):")
            bv = self.fresh("bv")
            self.line(f"    {bv} = {_permvar(f'{names[0]}[T.Ramp(0, 1, 16)]', idx)}")
            self.line(f"    for {ii} in T.unroll({BM}):")
            av = conv(fa((ii, scalar(k)), fast))
            self.line(f"        {out}[{ii}, {cols}] = {out}[{ii}, {cols}] + T.Broadcast({av}, 16) * {bv}")
        else:
            rows = self.fresh("rtbl")
            self.line(f'{rows} = T.decl_buffer(({BM * 16},), "float32", {self.scope})')
            self.line(f"for {ii} in T.unroll({BM}):")
            terms = [
                f"T.Broadcast({conv(fa((ii, scalar(k + p)), fast))}, 16) * {name}[T.Ramp(0, 1, 16)]"
                for p, name in enumerate(names)
            ]
            self.line(f"    {rows}[T.Ramp({ii} * 16, 1, 16)] = {' + '.join(terms)}")
            self.line(f"for {jv} in T.unroll({BN // 16}):")
            iv = self.fresh("iv")
            self.line(f"    {iv} = {idx}")
            self.line(f"    for {ii} in T.unroll({BM}):")
            # the add as an FMA by 1.0 (the same single rounding): adds share the vector pipes with the shifts and
            # vpermps, FMAs do not (Zen 5, 4096² int2 M = 1, hot, 2 threads: 0.091-0.092 vs 0.100-0.102 ms)
            acc = f"{out}[{ii}, {cols}]"
            self.line(f"        {acc} = {_accumulate(acc, _permvar(f'{rows}[T.Ramp({ii} * 16, 1, 16)]', iv))}")
        self.depth -= 2

    def _bf16_pairs(self, inst: I.Dot, load: I.Load, table: list[float], c: int) -> bool:
        """Whether `_dot_lut_bf16` applies: option bf16_dot "avx512bf16", bfloat16 a, one 4-bit code per
        table index (c = 1), whole word rows per tile (KT % 8 == 0), table values exact in bf16 (int4, uint4,
        fp4: at most 8 significant bits), and words in pair order: wherever the tile sits (checked
        numerically), k = 8w + 2s + h of a column sits in the word of k = 8w at bit 16h + 4s
        (`column_tiled(pairs=True)`)."""
        if self.opt["bf16_dot"] not in ("avx512bf16", "amx") or inst.a.dtype.name != "bfloat16" or c != 1:
            return False
        lay = load.tensor.layout
        rows = int(load.shape[0])
        if lay.bits != 4 or lay.per_word != 8 or rows % 8 or int(inst.a.shape[1]) != rows:
            return False
        if (np.asarray(table[:16], np.float32).view(np.uint32) & 0xFFFF).any():
            return False
        r = np.arange(rows)
        want = 16 * (r % 2) + 4 * ((r % 8) // 2)
        for word, bit in _tile_locations(load):
            if (word != word[r - r % 8]).any() or (bit != want[:, None]).any():
                return False
        return True

    def _dot_lut_bf16(
        self,
        inst: I.Dot,
        out: str,
        load: I.Load,
        table: list[float],
        scale: tuple[str, str] | None = None,
        ragged: str | None = None,
    ) -> None:
        """out[BM, BN] += a @ decode(b) for bf16 a and 4-bit codes in pair order, with AVX-512 BF16: per word
        row (8 k) and 16 columns, the 16 words as 32 int16 lanes (lane 2j: codes k, k+2, k+4, k+6 of column
        j; lane 2j+1: k+1, k+3, k+5, k+7); per pair step s, one 16-bit shift by 4s, one vpermw from a
        32-entry table of the codes' bf16 bit patterns (entry i: the value of code i mod 16; vpermw reads 5
        bits) and per row one vdpbf16ps with a's pair (k + 2s, k + 2s + 1) broadcast: 11 vector ops per 128
        weights, against 23 for the fp32 form (shift, vpermps, FMA per 16). The products are exact (bf16 ×
        bf16); each pair's sum and its add to the accumulator round to fp32 (`bf16_dot.py` on the
        instruction's numerics). a's pairs are the two bf16 bit patterns of a row's elements k + 2s and
        k + 2s + 1 in one int32. Up to `tm` rows: word rows outermost (the weight stream in order, prefetched),
        all column vectors' accumulators in registers, pairs built per word row. More rows: the pairs of the
        whole tile staged once (checked reads on a ragged row tile when the caller dropped that guard:
        `_row_guard`); then, from `gemm_rows` rows (`_gemm_form`), the GEMM form: the tile's codes decoded
        once into pair-order vectors and `_block_dot`'s register blocks over them (`scale`: the fused per-group
        update of `_dot_scaled`); else per column vector its BM accumulators in registers over all of k (the
        word-row-outer order would keep BM x BN/16 of them, which spill)."""
        a = inst.a
        BM, KT = a.shape
        BN = inst.b.shape[1]
        t = load.tensor
        fa = self.get(a)
        conv = _to_value_type(a.dtype, inst.acc_dtype)  # bf16 -> fp32: exact, its bits are the bf16's << 16
        g = self.gbuf[t.name]
        ko, jv, ii, s = (self.fresh(v) for v in ("ko", "jv", "ii", "s"))
        k = sympy.Symbol(ko, integer=True) * 8
        jv_sym = sympy.Symbol(jv, integer=True)
        word, _ = t.layout.locate(sympy.sympify(load.offsets[0]) + k, sympy.sympify(load.offsets[1]) + jv_sym * 16)
        word = sympy.sympify(word)
        tbl, xp = self.fresh("tblh"), self.fresh("xp")
        patterns = np.asarray([table[i % 16] for i in range(32)], np.float32).view(np.uint32) >> 16
        self.line(f'{tbl} = T.decl_buffer((32,), "int16", {self.scope})')
        for i, v in enumerate(patterns.astype(np.int64)):
            self.line(f"{tbl}[{i}] = T.int16({int(v) - 65536 if v >= 32768 else int(v)})")
        fast = _Ctx(checked=False)

        def pair(row: str, k0: Any) -> str:  # a[row, k0] and a[row, k0 + 1]
            return _bf16_pair(conv(fa((row, scalar(k0)), fast)), conv(fa((row, scalar(k0 + 1)), fast)))

        rows_outer = self.opt["tm"] < BM
        per_row = KT // 2 if rows_outer else 4  # pairs staged per row: the whole tile's, or one word row's
        gemm = self._gemm_form(inst, load, table)
        amx = gemm and self._amx_tiles(BM, KT, BN)
        # AMX reads a's rows where they lie (a bf16 tensor's rows are A tiles as they are); staged only for a
        # ragged row tile, with checked reads (rows past the tensor read 0)
        direct = self._direct_rows(a) if amx else None
        if direct is None or ragged is not None:  # else AMX reads every row tile in place: no staging buffer
            self.line(f'{xp} = T.decl_buffer(({BM * per_row},), "int32", {self.scope})')
        if rows_outer:
            self._stage_pairs(inst, xp, direct, ragged)
        if gemm:
            # the GEMM form: the tile's codes decoded once into pair-order bf16 vectors, then register blocks
            mr, nr = self._block_shape(BM, BN)
            bp = self.fresh("bp")
            self.line(f'{bp} = T.decl_buffer(({KT // 2 * BN},), "int32", {self.scope})')

            def decode(c: int, n: int) -> None:  # word rows (8 k) of part c of n
                rows = KT // 8 // n
                self.line(f"for {ko} in T.serial({c * rows}, {(c + 1) * rows}):")
                self.depth += 1
                self._prefetch_lut(t, load, k, 8, BN, self.opt["gemm_prefetch_locality"])
                self.line(f"for {jv} in T.unroll({BN // 16}):")
                wv = self.fresh("wv")
                self.line(f'    {wv} = T.reinterpret("int16x32", {g}[T.Ramp({scalar(word)}, 1, 16)])')
                self.line(f"    for {s} in T.unroll(4):")
                dst = f"{bp}[T.Ramp({_pair_vector(f'{ko} * 4 + {s}', jv, BN, amx)}, 1, 16)]"
                self.line(f'        {dst} = T.reinterpret("int32x16", {_pair_codes(tbl, wv, s)})')
                self.depth -= 1

            if amx:
                self._amx_rows_block(out, direct, xp, bp, BM, KT // 2, BN, scale, ragged, True, None, decode)
            else:
                decode(0, 1)
                self._block_dot(out, xp, bp, BM, KT // 2, BN, mr, nr, scale)
            return
        assert scale is None, "a fused scale needs the GEMM form (`_gemm_form`)"
        if not rows_outer:
            # word rows outermost, every column vector's sums in registers (`_register_sums`; accumulated in
            # `out`, whose zeroing and readers loop over it, they were loaded and stored around each column
            # vector's four vdpbf16ps)
            regs = self._register_sums(BM, BN // 16)
            affine = _affine_codes(table) if self.opt["bf16_affine"] and KT % 16 == 0 else None
            sums = [self.fresh("sx") for _ in range(BM)] if affine else []
            for m, name in enumerate(sums):  # Σ a[m, :KT]: the affine decode's offset (`_affine_pair_codes`)
                # in 16 lanes (vector loads and adds, once per tile), then a tree over the lanes
                kv, lane = self.fresh("kv"), self.fresh("l")
                self.line(f'{name} = T.decl_buffer((16,), "float32", {self.scope})')
                self.line(f"{name}[T.Ramp(0, 1, 16)] = T.Broadcast(T.float32(0), 16)")
                self.line(f"for {kv} in T.serial({KT // 16}):")
                self.line(f"    for {lane} in T.vectorized(16):")
                read = conv(fa((str(m), f"{kv} * 16 + {lane}"), fast))
                self.line(f"        {name}[{lane}] = {name}[{lane}] + {read}")
                terms = [f"{name}[{i}]" for i in range(16)]
                while len(terms) > 1:
                    terms = [f"({terms[i]} + {terms[i + 1]})" for i in range(0, len(terms), 2)]
                self.line(f"{name}[0] = {terms[0]}")
            self.line(f"for {ko} in T.serial({KT // 8}):")
            self.depth += 1
            self._prefetch_lut(t, load, k, 8, BN)
            for m in range(BM):
                for p in range(4):
                    self.line(f"{xp}[{m * 4 + p}] = {pair(str(m), k + 2 * p)}")
            for v in range(BN // 16):  # unrolled here: each column vector's sums by name
                # the words and their decode inline, not named: TVM 0.27 gives each named value a workspace
                # buffer (heap memory), and each column vector's own name kept its stores in the loop
                wv = f'T.reinterpret("int16x32", {g}[T.Ramp({scalar(word.subs(jv_sym, v))}, 1, 16)])'
                if affine:  # the steps unrolled here: each one's shift is a constant of its own direction
                    for step in range(4):
                        codes = _affine_pair_codes(wv, step, affine[0])
                        for m in range(BM):
                            xpair = f'T.reinterpret("int16x32", T.Broadcast({xp}[{m * 4 + step}], 16))'
                            self.line(f"{regs[m][v]} = {stand_in(regs[m][v], codes, xpair)}")
                    continue
                self.line(f"for {s} in T.unroll(4):")
                for m in range(BM):
                    xpair = f'T.reinterpret("int16x32", T.Broadcast({xp}[{m * 4} + {s}], 16))'
                    self.line(f"    {regs[m][v]} = {stand_in(regs[m][v], _pair_codes(tbl, wv, s), xpair)}")
            self.depth -= 1
            for m in range(BM):
                for v in range(BN // 16):
                    o = f"{out}[{m}, T.Ramp({v * 16}, 1, 16)]"
                    if affine:  # Σ a·q = 16·Σ a·(1 + u'/16) + (β − 16)·Σ a, with q = u' + β
                        off = f"T.Broadcast({sums[m]}[0] * {f32(affine[1] - 16)}, 16)"
                        self.line(f"{o} = {o} + ({regs[m][v]} * T.Broadcast(T.float32(16), 16) + {off})")
                    else:
                        self.line(f"{o} = {o} + {regs[m][v]}")
            return
        self.line(f"for {jv} in T.serial({BN // 16}):")
        self.line(f"    for {ko} in T.serial({KT // 8}):")
        self.depth += 2
        # the column-vector-outer walk reads every 4th line of the tile's words per pass, a stream the
        # hardware prefetcher does not follow: during the first pass, the word row `prefetch` bytes ahead
        # (the next K tile) is hinted, each line once
        self.line(f"if {jv} == 0:")
        self.depth += 1
        self._prefetch_lut(t, load, k, 8, BN)
        self.depth -= 1
        wv = self.fresh("wv")
        self.line(f'{wv} = T.reinterpret("int16x32", {g}[T.Ramp({scalar(word)}, 1, 16)])')
        self.line(f"for {s} in T.unroll(4):")
        dec = self.fresh("dec")
        self.line(f"    {dec} = {_pair_codes(tbl, wv, s)}")
        self.line(f"    for {ii} in T.unroll({BM}):")
        acc = f"{out}[{ii}, T.Ramp({jv} * 16, 1, 16)]"
        xpair = f'T.reinterpret("int16x32", T.Broadcast({xp}[{ii} * {per_row} + {ko} * 4 + {s}], 16))'
        self.line(f"        {acc} = {stand_in(acc, dec, xpair)}")
        self.depth -= 2

    def _stage_rows(
        self,
        inst: I.Dot,
        buf: str,
        per_row: int,
        value: Callable[[str, str, _Ctx], str],
        ragged: str | None,
        zero: str,
    ) -> None:
        """buf[i * per_row + q] = value(i, q) for the dot's BM a rows: one vectorized loop of unchecked reads;
        with `ragged` (the rows guard a caller dropped, `_row_guard`) that loop under it and, past it, the rows
        inside the tensor staged and those past it `zero` (`_stage_checked_rows`)."""
        ii, q = self.fresh("ii"), self.fresh("q")
        if ragged is not None:
            self.line(f"if {ragged}:")
            self.depth += 1
        self.line(f"for {ii} in T.serial({int(inst.a.shape[0])}):")
        self.line(f"    for {q} in T.vectorized({per_row}):")
        self.line(f"        {buf}[{ii} * {per_row} + {q}] = {value(ii, q, _Ctx(checked=False))}")
        if ragged is not None:
            self.depth -= 1
            self.line("else:")
            self.depth += 1
            self._stage_checked_rows(inst, buf, per_row, value, zero)
            self.depth -= 1

    def _dot_lut_gemm(
        self,
        inst: I.Dot,
        out: str,
        load: I.Load,
        table: list[float],
        scale: tuple[str, str] | None = None,
        ragged: str | None = None,
    ) -> None:
        """out[BM, BN] += a @ decode(b), the fp32 GEMM form of `dot_lut` (`_gemm_form`: more than `tm` rows,
        codes of <= 4 bits, whole word rows): a's rows staged once as fp32 (checked reads on a ragged row tile:
        `_row_guard`), the tile's codes decoded once into fp32 vectors (per word row and 16 columns: one load,
        then per code a shift and a vpermps from the 16-entry table, stored), then `_block_dot`'s register
        blocks of FMAs (`fp32`), `scale` fused as in `_dot_scaled`. The walks of `dot_lut` decode each code
        again for every `tm` rows; this decodes it once per tile."""
        a = inst.a
        BM, KT = (int(n) for n in a.shape)
        BN = int(inst.b.shape[1])
        t = load.tensor
        per = t.layout.per_word or 1
        fa = self.get(a)
        conv = _to_value_type(a.dtype, inst.acc_dtype)
        g = self.gbuf[t.name]
        ko, u, jv = (self.fresh(v) for v in ("ko", "u", "jv"))
        k = sympy.Symbol(ko, integer=True) * per + sympy.Symbol(u, integer=True)
        _, bit = t.layout.locate(
            sympy.sympify(load.offsets[0]) + k, sympy.sympify(load.offsets[1]) + sympy.Symbol(jv, integer=True) * 16
        )
        row_word, _ = t.layout.locate(
            sympy.sympify(load.offsets[0]) + sympy.Symbol(ko, integer=True) * per,
            sympy.sympify(load.offsets[1]) + sympy.Symbol(jv, integer=True) * 16,
        )
        tbl, xa, wd, wv = self.fresh("tbl"), self.fresh("xa"), self.fresh("wd"), self.fresh("wv")
        self.line(f'{tbl} = T.decl_buffer((16,), "float32", {self.scope})')
        for i, v in enumerate(table[:16]):
            self.line(f"{tbl}[{i}] = {f32(v)}")
        self.line(f'{xa} = T.decl_buffer(({BM * KT},), "float32", {self.scope})')
        self._stage_rows(inst, xa, KT, lambda row, kk, ctx: conv(fa((row, kk), ctx)), ragged, "T.float32(0)")
        self.line(f'{wd} = T.decl_buffer(({KT * BN},), "float32", {self.scope})')
        self.line(f"for {ko} in T.serial({KT // per}):")
        self.depth += 1
        self._prefetch_lut(t, load, sympy.Symbol(ko, integer=True) * per, per, BN, self.opt["gemm_prefetch_locality"])
        self.line(f"for {jv} in T.unroll({BN // 16}):")
        self.line(f"    {wv} = {g}[T.Ramp({scalar(row_word)}, 1, 16)]")
        self.line(f"    for {u} in T.unroll({per}):")
        idx = f'T.shift_right({wv}, T.Broadcast(T.Cast("int32", {scalar(bit)}), 16))'
        dst = f"{wd}[T.Ramp(({ko} * {per} + {u}) * {BN} + {jv} * 16, 1, 16)]"
        self.line(f"        {dst} = {_permvar(f'{tbl}[T.Ramp(0, 1, 16)]', idx)}")
        self.depth -= 1
        exact = not (np.asarray(table[:16], np.float32).view(np.uint32) & 0xFFFF).any()  # codes exact in bf16
        self._fp32_rows_dot(
            inst, out, xa, lambda: wd, lambda: self._pair_tile(wd, KT // 2, BN, tiled=True), exact, scale
        )

    def _fp32_rows_dot(
        self,
        inst: I.Dot,
        out: str,
        xa: str,
        words: Callable[[], str],
        pairs: Callable[[], str],
        exact: bool,
        scale: tuple[str, str] | None,
    ) -> None:
        """The dot of a's rows staged as fp32 (xa [BM, KT]) and the tile's decoded codes, the last step of the
        fp32 GEMM forms: on AMX-BF16 from AMX_FP32_ROWS rows of fp32 x when the codes' values are exact in bf16
        (`exact`), over `pairs()` (int32 [KT / 2, BN] bf16 pairs), else `_block_dot`'s register blocks of FMAs
        over `words()` (fp32 [KT, BN]); each emits the form's decode when called. `scale` fused as in
        `_dot_scaled`."""
        a = inst.a
        BM, KT = (int(n) for n in a.shape)
        BN = int(inst.b.shape[1])
        # fp32 rows on AMX from 64 rows (4096², M = 64 / 256: 0.59x / 0.50x the FMA form's time; M = 16: 1.05x)
        fp32 = a.dtype.name == "float32" and inst.acc_dtype.name == "float32"
        if exact and self._amx_tiles(BM, KT, BN) and BM >= AMX_FP32_ROWS and fp32:
            self._amx_fp32_rows(out, xa, pairs(), BM, KT, BN, scale)  # pairs(): AMX B tiles (`_pair_vector`)
            return
        mr, nr = self._block_shape(BM, BN)
        self._block_dot(out, xa, words(), BM, KT, BN, mr, nr, scale, fp32=True)

    def _amx_tiles(self, BM: int, KT: int, BN: int) -> bool:
        """Whether a [BM, KT] x [KT, BN] bf16 dot runs on AMX-BF16 here: option bf16_dot "amx" and whole tiles
        (rows and columns in 16s, k in 32s)."""
        return self.opt["bf16_dot"] == "amx" and BM % 16 == 0 and BN % 16 == 0 and KT % 32 == 0

    def _stage_pairs(
        self, inst: I.Dot, xp: str, direct: tuple[Callable[[str, str], str], str] | None, ragged: str | None
    ) -> None:
        """xp[i, q] (int32 [BM, KT / 2]) = the bf16 pair (a[i, 2q], a[i, 2q + 1]) of the dot's a rows: every row
        staged (`_stage_rows`, checked reads past `ragged`) where AMX cannot read them in place (`direct` None),
        else only a ragged row tile's, with checked reads (the in-place tiles run under `ragged`)."""
        a = inst.a
        KT = int(a.shape[1])
        fa, conv = self.get(a), _to_value_type(a.dtype, inst.acc_dtype)

        def pair(row: str, q: str, ctx: _Ctx) -> str:
            k0 = 2 * sympy.Symbol(q, integer=True)
            return _bf16_pair(conv(fa((row, scalar(k0)), ctx)), conv(fa((row, scalar(k0 + 1)), ctx)))

        if direct is None:
            self._stage_rows(inst, xp, KT // 2, pair, ragged, "T.int32(0)")
        elif ragged is not None:
            self.line(f"if not ({ragged}):")
            self.depth += 1
            self._stage_checked_rows(inst, xp, KT // 2, pair, "T.int32(0)")
            self.depth -= 1

    def _amx_fp32_rows(
        self, out: str, xa: str, bp: str, BM: int, KT: int, BN: int, scale: tuple[str, str] | None
    ) -> None:
        """The GEMM forms' dot of fp32 rows xa [BM, KT] and decoded codes bp (int32 [KT / 2, BN]: bf16 pairs,
        `_pair_tile`; values exact in bf16) on AMX-BF16: each fp32 x as three bf16 parts, x =
        hi + mid + lo exactly (hi: x's top 16 bits, mid the top 16 of x − hi, lo the rest, which has at most 8
        significant bits; a non-finite x keeps hi = x and zero parts), and `_amx_bf16_block` sums the three
        parts' dots against the same pair tiles: every product exact, the sums rounded to fp32 (3x the
        roundings of one pass, within fp32's bounds), 3x the tile products of a bf16 x."""
        KP = KT // 2
        i = self.fresh("i")
        parts = [self.fresh(f"xp{n}") for n in range(3)]
        for name in parts:
            self.line(f'{name} = T.decl_buffer(({BM * KP},), "int32", {self.scope})')
        # the odd int16 lanes of two vectors of fp32 bits: the bf16 halves of 32 consecutive k as 16 pairs
        odd = self.fresh("odd")
        self.line(f'{odd} = T.decl_buffer((32,), "int16", {self.scope})')
        for n in range(32):
            self.line(f"{odd}[{n}] = T.int16({2 * n + 1})")
        v = self.fresh("v")
        self.line(f"for {i} in T.serial({BM}):")
        self.line(f"    for {v} in T.serial({KT // 32}):")
        halves = [f"{xa}[T.Ramp({i} * {KT} + {v} * 32 + {h * 16}, 1, 16)]" for h in (0, 1)]
        for name, p0, p1 in zip(parts, _bf16_parts(halves[0], 16), _bf16_parts(halves[1], 16)):
            a16, b16 = (f'T.reinterpret("int16x32", T.reinterpret("int32x16", {p}))' for p in (p0, p1))
            pairs = (
                f'T.call_llvm_pure_intrin("int16x32", "llvm.x86.avx512.vpermi2var.hi.512", {a16}, '
                f"{odd}[T.Ramp(0, 1, 32)], {b16})"
            )
            self.line(f'        {name}[T.Ramp({i} * {KP} + {v} * 16, 1, 16)] = T.reinterpret("int32x16", {pairs})')
        sources = [(_pair_rows(name, KP), f"T.int64({KP * 4})") for name in parts]
        self._amx_bf16_block(out, sources, bp, BM, KP, BN, scale, tiled=True)

    def _pair_tile(self, wd: str, KP: int, BN: int, tiled: bool) -> str:
        """bp (int32 [KP, BN]): the decoded codes wd (fp32 [2·KP, BN], values exact in bf16) as bf16 pairs, k
        = 2q in the low half and 2q + 1 in the high half of entry (q, j), AMX's pair layout; `tiled`: stored as
        whole B tiles (`_pair_vector`)."""
        bp, q, jv = self.fresh("bp"), self.fresh("q"), self.fresh("jv")
        self.line(f'{bp} = T.decl_buffer(({KP * BN},), "int32", {self.scope})')
        self.line(f"for {q} in T.serial({KP}):")
        self.line(f"    for {jv} in T.unroll({BN // 16}):")
        lo, hi = (f"{wd}[T.Ramp(({q} * 2 + {h}) * {BN} + {jv} * 16, 1, 16)]" for h in (0, 1))
        self.line(f"        {bp}[T.Ramp({_pair_vector(q, jv, BN, tiled)}, 1, 16)] = {_bf16_pair(lo, hi, 16)}")
        return bp

    def _amx_rows_block(
        self,
        out: str,
        direct: tuple[Callable[[str, str], str], str] | None,
        xp: str,
        bp: str,
        BM: int,
        KP: int,
        BN: int,
        scale: tuple[str, str] | None,
        ragged: str | None,
        tiled: bool,
        affine: tuple[float, float] | None = None,
        decode: Callable[[int, int], None] | None = None,
    ) -> None:
        """`_amx_bf16_block` (bp `tiled` or not, `affine` and `decode` as there) over a's bf16 rows: in place where
        `_direct_rows` found them (`direct`), else the staged pairs xp [BM, KP]; with both and `ragged` (the rows
        guard), in place under it and the staged pairs (zero rows past the tensor) past it."""
        in_place = (lambda r, kc: direct[0](r, f"{kc} * 32"), direct[1]) if direct is not None else None
        staged_rows = (_pair_rows(xp, KP), f"T.int64({KP * 4})")
        if in_place is None or ragged is None:
            self._amx_bf16_block(out, in_place or staged_rows, bp, BM, KP, BN, scale, tiled, affine, decode)
            return
        self.line(f"if {ragged}:")
        self.depth += 1
        self._amx_bf16_block(out, in_place, bp, BM, KP, BN, scale, tiled, affine, decode)
        self.depth -= 1
        self.line("else:")
        self.depth += 1
        self._amx_bf16_block(out, staged_rows, bp, BM, KP, BN, scale, tiled, affine, decode)
        self.depth -= 1

    def decoded_plan(self, inst: I.Dot) -> I.Load | None:
        """b's packed load when `_dot_decoded_gemm` runs the dot (option decode_gemm, where `lut_plan` has no
        GEMM form for it): a CPU with 16 fp32 lanes, an fp32 accumulator, float a, b a cast to a float dtype
        that holds every code's value exactly of an unmasked load of word-aligned codes of at most 8 bits whose
        16 consecutive columns of a row are one field of 16 consecutive words (checked numerically at aligned
        origins, as `lut_plan`) and whose words hold whole runs of k (`_whole_words`), and rows enough for a
        GEMM form (more than `tm`, at least `gemm_rows`, a register block of two or more rows)."""
        a, b = inst.a, inst.b
        if not (self.cpu and self.opt["decode_gemm"] and self.opt["vector"] == 16):
            return None
        load = self._column_codes(inst)
        if load is None or not all(sympy.sympify(n).is_Integer for n in a.shape):
            return None
        dt = load.tensor.dtype
        if dt.is_bool or dt.bits > 8 or not holds_exactly(b.dtype, dt):
            return None
        BM, BN = int(a.shape[0]), int(b.shape[1])
        if max(self.opt["gemm_rows"] - 1, self.opt["tm"]) >= BM or self._block_shape(BM, BN)[0] < 2:
            return None
        return load if self._whole_words(load) else None

    def _column_codes(self, inst: I.Dot) -> I.Load | None:
        """b's packed load when the dot is float a times b = a cast to a float dtype of an unmasked load (not
        staged) of word-aligned codes in 32-bit words (2-D, concrete shapes) whose 16 consecutive columns of a
        row are one field of 16 consecutive words wherever the tile sits (checked numerically at aligned
        origins), into fp32: the column-tiled words the table decode and the decoded GEMM form read."""
        a, b = inst.a, inst.b
        if inst.acc_dtype.name != "float32" or not a.dtype.is_float or not b.dtype.is_float or b.shape[1] % 16:
            return None
        cast = self.defs.get(id(b))
        if not isinstance(cast, I.Cast) or id(cast.x) in self.buf:
            return None
        load = self.defs.get(id(cast.x))
        if not isinstance(load, I.Load) or load.mask is not None:
            return None
        lay = load.tensor.layout
        if not isinstance(lay, PackedLayout) or lay.dense or lay.word_bits != 32 or len(load.tensor.shape) != 2:
            return None
        if any(not sympy.sympify(n).is_Integer for n in (*lay.shape, *load.shape)):
            return None
        rows, cols = (int(n) for n in load.shape)
        for word, bit in _tile_locations(load):
            w16, b16 = word.reshape(rows, cols // 16, 16), bit.reshape(rows, cols // 16, 16)
            if (w16 - w16[..., :1] != np.arange(16)).any() or (b16 != b16[..., :1]).any():
                return None
        return load

    def _dot_decoded_gemm(
        self, inst: I.Dot, out: str, load: I.Load, scale: tuple[str, str] | None, ragged: str | None
    ) -> None:
        """out[BM, BN] += a @ decode(b), the GEMM form of a dot over codes of any width (`decoded_plan`): the
        tile's codes decoded once (`_decoded_pairs`: bf16 pairs; `_decode_words`: fp32), then the dot of a's
        rows with them: bf16 a on AMX-BF16 (whole tiles) as one pass of `tdpbf16ps` over a's rows in place
        (staged pairs on a ragged row tile), or with AVX-512 BF16 as `vdpbf16ps` register blocks over staged
        pairs; otherwise a's rows staged as fp32, then AMX-BF16 from AMX_FP32_ROWS rows (`_amx_fp32_rows`) or
        fp32 FMA blocks. Every code's value is exact in bf16 and fp32 (at most 8 significant bits), so the products are
        exact and only the fp32 sums round. `scale`: the fused per-group update (`_dot_scaled`)."""
        a = inst.a
        BM, KT = (int(n) for n in a.shape)
        BN = int(inst.b.shape[1])
        dt = load.tensor.dtype
        values = decode(dt, np.arange(1 << dt.bits)).astype(np.float32)
        exact = not (values.view(np.uint32) & 0xFFFF).any()  # NaN's canonical bits included
        fa = self.get(a)
        conv = _to_value_type(a.dtype, inst.acc_dtype)
        amx = exact and self._amx_tiles(BM, KT, BN)
        pairs = self.opt["bf16_dot"] in ("avx512bf16", "amx") and exact and KT % 2 == 0
        if pairs and a.dtype.name == "bfloat16":
            direct = self._direct_rows(a) if amx else None
            xp = self.fresh("xp")
            KP = KT // 2
            if direct is None or ragged is not None:
                self.line(f'{xp} = T.decl_buffer(({BM * KP},), "int32", {self.scope})')
                self._stage_pairs(inst, xp, direct, ragged)
            # one pass of 16 rows only: with more row tiles every pass repeats the Σa products (4096² bf16 x M = 64,
            # streamed: int2 1.20 -> 1.47 ms, int3 1.31 -> 1.56 against the table pairs)
            shifted = self._multishift_plan(load, KT) if amx and _amx_one_pass(BM, BN) else None
            bp, decode_part = self._decoded_pairs(load, KT, BN, tiled=amx, multishift=shifted)
            if amx:
                # the multishift pairs hold 1 + u/2^bits for the value u + β: a·value = 2^bits·(a·pair) +
                # (β − 2^bits)·a, the second term from the tile's Σa
                affine = (float(1 << dt.bits), shifted[1] - (1 << dt.bits)) if shifted is not None else None
                self._amx_rows_block(out, direct, xp, bp, BM, KP, BN, scale, ragged, True, affine, decode_part)
            else:  # AVX-512 BF16: vdpbf16ps register blocks over the same pairs
                decode_part(0, 1)
                mr, nr = self._block_shape(BM, BN)
                self._block_dot(out, xp, bp, BM, KP, BN, mr, nr, scale)
            return
        xa = self.fresh("xa")
        self.line(f'{xa} = T.decl_buffer(({BM * KT},), "float32", {self.scope})')
        self._stage_rows(inst, xa, KT, lambda row, kk, ctx: conv(fa((row, kk), ctx)), ragged, "T.float32(0)")
        words = lambda: self._decode_words(load, KT, BN)  # noqa: E731
        self._fp32_rows_dot(inst, out, xa, words, lambda: self._whole_pairs(load, KT, BN), exact, scale)

    def _whole_pairs(self, load: I.Load, KT: int, BN: int) -> str:
        """`_decoded_pairs` as AMX B tiles, the whole tile decoded here."""
        bp, decode_part = self._decoded_pairs(load, KT, BN, tiled=True)
        decode_part(0, 1)
        return bp

    def _decode_words(self, load: I.Load, KT: int, BN: int) -> str:
        """wd (fp32 [KT, BN]): the values of the packed tile `load`'s codes, decoded once (`decoded_plan`'s
        layouts) by `_word_walk`, one code slot at a time."""
        wd = self.fresh("wd")
        self.line(f'{wd} = T.decl_buffer(({KT * BN},), "float32", {self.scope})')
        self._word_walk(
            load, KT, BN, 1, lambda kk, jv, ln, vals: [f"{wd}[({kk}) * {BN} + {jv} * 16 + {ln}] = {vals[0]}"]
        )
        return wd

    def _multishift_plan(self, load: I.Load, KT: int) -> tuple[int, float] | None:
        """(flip, β) when `_decoded_pairs` builds the tile's pairs with `_multishift_pairs`: options multishift
        "avx512vbmi" and bf16_affine, integer codes of at most 7 bits whose values are (code ^ flip) + β
        (`_affine_values`), an even count of them a word (a pair never straddles two words) and a tile that
        starts at an even k and has an even count of them; else None."""
        dt = load.tensor.dtype
        if self.opt["multishift"] != "avx512vbmi" or not self.opt["bf16_affine"] or dt.is_float or dt.bits > 7:
            return None
        per = load.tensor.layout.per_word
        if not per or per % 2 or KT % 2 or not self._multiple_of(sympy.sympify(load.offsets[0]), 2):
            return None
        return _affine_values(decode(dt, np.arange(1 << dt.bits)).astype(np.float64), dt.bits)

    def _decoded_pairs(
        self, load: I.Load, KT: int, BN: int, tiled: bool, multishift: tuple[int, float] | None = None
    ) -> tuple[str, Callable[[int, int], None]]:
        """bp (int32 [KT / 2, BN]): the tile's decoded codes as bf16 pairs (`_pair_tile`'s layout, `tiled` as
        there; values exact in bf16). Where the tile starts at an even k, straight from the words (`_word_walk`
        by pairs: an odd per_word walks two word rows a step): each pair of codes decoded and packed into one
        int32 lane (no fp32 tile stored and read again); else through `_decode_words`. With `multishift` =
        `_multishift_plan`'s (flip, β): each pair is (1 + u/2^bits, 1 + v/2^bits) for the values u + β and
        v + β, built from its word by `_multishift_pairs` (two vector ops per 32 codes, where the table form
        takes six and a two-source permute); the caller's dot removes the affine map. Returns bp (declared)
        and decode(c, n), which emits the decode of part c of n of the tile's k (`_word_walk`'s `part`: the
        AMX form runs each part's tile products while the next part decodes), or all of it at (0, 1)."""
        if KT % 2 or not self._multiple_of(sympy.sympify(load.offsets[0]), 2):
            assert multishift is None, "`_multishift_plan` takes only tiles that start at an even k"
            return self._pair_tile(self._decode_words(load, KT, BN), KT // 2, BN, tiled), lambda c, n: None
        bp = self.fresh("bp")
        self.line(f'{bp} = T.decl_buffer(({KT // 2 * BN},), "int32", {self.scope})')
        dt = load.tensor.dtype
        if multishift is not None:
            flip = multishift[0]

            def build(kk: str, jv: str, ln: str | None, vals: list[str]) -> list[str]:
                at = _pair_vector(f"T.floordiv({kk}, 2)", jv, BN, tiled)
                return [f"{bp}[T.Ramp({at}, 1, 16)] = {_multishift_pairs(vals[0], int(vals[1]), dt.bits, flip)}"]

            return bp, lambda c, n: self._word_walk(load, KT, BN, 2, build, codes=True, raw=True, part=(c, n))
        if dt.bits <= 6:
            # one vpermi2w per 16 pairs: the pair's two codes as the two int16 halves of a lane index the
            # 64-entry table of the values' bf16 bits (entry i: code i mod 2^bits), which yields the pair as is
            tbl = self.fresh("tblp")
            values = decode(dt, np.arange(64) % (1 << dt.bits)).astype(np.float32)
            patterns = (values.view(np.uint32) >> 16).astype(np.int64)
            self.line(f'{tbl} = T.decl_buffer((64,), "int16", {self.scope})')
            for i, v in enumerate(patterns):
                self.line(f"{tbl}[{i}] = T.int16({int(v) - 65536 if v >= 32768 else int(v)})")

            def lookup(kk: str, jv: str, ln: str | None, codes: list[str]) -> list[str]:
                high = f"T.shift_left({codes[1]}, T.Broadcast(T.int32(16), 16))"
                idx = f'T.reinterpret("int16x32", T.bitwise_or({codes[0]}, {high}))'
                pair = (
                    f'T.call_llvm_pure_intrin("int16x32", "llvm.x86.avx512.vpermi2var.hi.512", '
                    f"{tbl}[T.Ramp(0, 1, 32)], {idx}, {tbl}[T.Ramp(32, 1, 32)])"
                )
                at = _pair_vector(f"T.floordiv({kk}, 2)", jv, BN, tiled)
                return [f'{bp}[T.Ramp({at}, 1, 16)] = T.reinterpret("int32x16", {pair})']

            return bp, lambda c, n: self._word_walk(load, KT, BN, 2, lookup, codes=True, part=(c, n))

        def store(kk: str, jv: str, ln: str | None, vals: list[str]) -> list[str]:
            return [
                f"{bp}[{_pair_vector(f'T.floordiv({kk}, 2)', jv, BN, tiled)} + {ln}] = {_bf16_pair(vals[0], vals[1])}"
            ]

        return bp, lambda c, n: self._word_walk(load, KT, BN, 2, store, part=(c, n))

    def _multiple_of(self, expr: Any, m: int) -> bool:
        """Whether `expr` (sympy) is a multiple of m wherever it is evaluated: the variables of the enclosing
        loops taken as start + step·i (integer start and step), every other symbol as any integer."""
        subs = {}
        for loop in self.loops:
            start, step = sympy.sympify(loop.start), sympy.sympify(loop.step)
            if start.is_Integer and step.is_Integer:
                var = str(loop.var)
                for sym in expr.free_symbols:
                    if sym.name == var:
                        subs[sym] = start + step * sympy.Symbol(f"{var}__i", integer=True)
        return bool(sympy.Mod(expr.subs(subs), m) == 0)

    def _word_walk(
        self,
        load: I.Load,
        KT: int,
        BN: int,
        step: int,
        store: Callable[[str, str, str | None, list[str]], list[str]],
        codes: bool = False,
        raw: bool = False,
        part: tuple[int, int] = (0, 1),
    ) -> None:
        """Decode the packed tile `load`'s codes (`decoded_plan`'s layouts) by a walk over its word rows (per_word
        consecutive k of 16 columns in 16 consecutive words), `rows` = step / gcd(per_word, step) of them a
        step (a run of `step` codes never straddles two steps: five 6-bit codes a word, pairs over two words):
        per step, column vector and run of `step` code slots, the codes (shift, mask) and their fp32 values
        (`decode_code`: sign extension and a convert for ints, the bit assembly for floats), 16 lanes at a time,
        passed to `store`(k of the run's first slot in the tile, the column offset in the tile, the values) for
        the lines that keep them. When a step's k count does not provably divide the tile's first k (int3: ten a
        word against groups of 128), the walk covers the steps the tile overlaps and keeps only its own k (a
        run lies inside or outside the tile as a whole: the callers' first k and `step` are even together).
        `codes`: `store` gets the codes themselves as int32x16 vectors and the column offset of the vector (no
        vectorized loop: the caller writes vector expressions). `raw` (with `codes`, a run inside one word):
        `store` gets the run's word vector (int32x16) and its first code's bit offset instead. `part` = (c, n):
        only the steps of part c of n (`_walk_steps`), every k of the tile's first KT·(c + 1)/n decoded once
        parts 0 .. c have run."""
        t = load.tensor
        lay, dt = t.layout, t.dtype
        per = lay.per_word
        rows = step // math.gcd(per, step)
        span = per * rows  # k a step covers
        g = self.gbuf[t.name]
        off, col0 = sympy.sympify(load.offsets[0]), sympy.sympify(load.offsets[1])
        aligned = KT % span == 0 and self._multiple_of(off, span)
        wr, jv, ln = (self.fresh(v) for v in ("wr", "jv", "ln"))
        first = (off / span if aligned else sympy.floor(off / span)) + sympy.Symbol(wr, integer=True)
        nw = KT // span if aligned else (KT - 1) // span + 2
        jcol = col0 + sympy.Symbol(jv, integer=True) * 16
        addrs = [scalar(lay.locate(span * first + per * r, jcol)[0]) for r in range(rows)]
        words = [f"{g}[T.Ramp({a}, 1, 16)]" if codes else f"{g}[{a} + {ln}]" for a in addrs]
        fp32 = _to_value_type(dt, lookup_dtype("float32"))
        lo, hi = (_walk_steps(KT, span, nw, aligned, part[0] + d, part[1]) for d in (-1, 0))
        if hi <= lo:
            return
        self.line(f"for {wr} in T.serial({lo}, {hi}):" if lo else f"for {wr} in T.serial({hi}):")
        self.depth += 1
        self._prefetch_lut(t, load, span * first - off, span, BN)
        self.line(f"for {jv} in T.serial({BN // 16}):")
        self.depth += 1
        for u in range(0, span, step):  # unrolled here: each slot's word row and shift are constants
            vals = []
            if raw:
                assert codes and rows == 1, "a raw run lies inside one word of 16 columns"
                vals = [words[u // per], str(u % per * dt.bits)]
            for slot in range(u, u + step) if not raw else ():
                if codes:
                    shift, mask = (f"T.Broadcast(T.int32({v}), 16)" for v in (slot % per * dt.bits, dt.code_mask))
                    vals.append(f"T.bitwise_and(T.shift_right({words[slot // per]}, {shift}), {mask})")
                    continue
                code = f"T.bitwise_and(T.shift_right({words[slot // per]}, {slot % per * dt.bits}), {dt.code_mask})"
                vals.append(fp32(decode_code(code, dt)))
            kk = scalar(sympy.simplify(span * first + u - off))
            depth = self.depth
            if not aligned:
                self.line(f"if 0 <= {kk} and {kk} < {KT}:")
                self.depth += 1
            if codes:
                for text in store(kk, jv, None, vals):
                    self.line(text)
            else:
                self.line(f"for {ln} in T.vectorized(16):")
                for text in store(kk, jv, ln, vals):
                    self.line(f"    {text}")
            self.depth = depth
        self.depth -= 2

    def _whole_words(self, load: I.Load) -> bool:
        """Whether, at word rows w and columns j (checked numerically), the per_word codes k = per_word·w + u
        (u < per_word) of column j fill one word in order: bit u·bits of the word of k = per_word·w."""
        lay = load.tensor.layout
        per = lay.per_word
        if not per or per < 2:
            return False
        shape = tuple(int(n) for n in lay.shape)
        k = np.arange(shape[0])[:, None]  # every k, a last word row of fewer than per_word included (K = 8, int3)
        j = np.arange(shape[1])[None, :: max(1, shape[1] // 64)]
        word, bit = (np.broadcast_to(np.asarray(v, np.int64), (k.size, j.size)) for v in lay.locate(k, j))
        first = k[:, 0] - k[:, 0] % per  # the first k of each k's word row
        return bool((word == word[first]).all() and (bit == (k % per) * lay.bits).all())

    def _dot_lut_words(self, inst: I.Dot, out: str, load: I.Load, table: list[float]) -> None:
        """`dot_lut` for codes whose words hold a count that does not divide the tile's rows (int3: ten per
        word, against a group of 128): a walk over the tile's word rows instead of its k. Word row r holds k
        = per_word·r + u, so every code's shift is the constant u·bits and its word address has no division;
        the codes of a word row outside the tile (the rows before its first k and after its last, at most one
        word row's worth at each end) meet an a element of 0 (a staged per tile, `_tile_rows`). Per word of a
        column vector: one lookup (`_lut_decode`) and FMA per code, or, for linear integer codes, per 4-bit
        field of the word (`_words_by_field`), over ceil(KT / per_word) + 1 word rows (int3, KT 128: 140
        codes for 128, against per-k word and shift arithmetic on the k walk)."""
        a = inst.a
        BM, KT = a.shape
        BN = inst.b.shape[1]
        t = load.tensor
        lay, per = t.layout, t.layout.per_word
        g = self.gbuf[t.name]
        off = sympy.sympify(load.offsets[0])
        wr, ku, jv = (self.fresh(v) for v in ("wr", "ku", "jv"))
        tbl = self.fresh("tbl")
        entries = table[:32]  # a 6-bit table: the magnitudes (`_lut_decode` adds the sign)
        self.line(f'{tbl} = T.decl_buffer(({len(entries)},), "float32", {self.scope})')
        for i, v in enumerate(entries):
            self.line(f"{tbl}[{i}] = {f32(v)}")
        wrow = sympy.floor(off / per) + sympy.Symbol(wr, integer=True)
        k0 = per * wrow  # the first k of the word row
        j0 = sympy.Symbol(f"{jv}", integer=True) * 16
        word, _ = lay.locate(k0, sympy.sympify(load.offsets[1]) + j0)
        width = self.opt["lut_field"]
        fields = _field_tables(table, lay.bits, per, lay.word_bits, width) if width else None
        consts: list[list[tuple[int, str]]] = []  # per field: (code, its constant vector's buffer)
        for f, (_, parts) in enumerate(fields or []):
            consts.append([])
            for u, vals in parts:
                cname = self.fresh(f"c{f}_{u}")
                self.line(f'{cname} = T.decl_buffer(({len(vals)},), "float32", {self.scope})')
                for i, v in enumerate(vals):
                    self.line(f"{cname}[{i}] = {f32(v)}")
                consts[-1].append((u, cname))
        nw = (KT - 1) // per + 2
        # a's rows over the walk's code slots, 0 outside the tile: the walk reads its elements from memory
        # (broadcast loads, no shuffle), not from per-code selects
        xt = self._tile_rows(inst, per * sympy.floor(off / per) - off, nw * per)
        self.line(f"for {wr} in T.serial({nw}):")
        self.depth += 1
        self._prefetch_lut(t, load, k0 - off, per, BN)
        if fields is not None:
            starts = [start for start, _ in fields]
            self._words_by_field(inst, out, (xt, nw * per, f"{wr} * {per}"), word, starts, consts, g, jv)
            self.depth -= 1
            return
        self.line(f"for {ku} in T.unroll({per}):")
        self.depth += 1
        xs = [f"{xt}[{i * nw * per} + {wr} * {per} + {ku}]" for i in range(BM)]
        self.line(f"for {jv} in T.unroll({BN // 16}):")
        idx = f"T.shift_right({g}[T.Ramp({scalar(word)}, 1, 16)], T.Broadcast({ku} * {lay.bits}, 16))"
        bv = self.fresh("bv")
        self.line(f"    {bv} = {_lut_decode(tbl, idx, len(table))}")
        cols = f"T.Ramp({jv} * 16, 1, 16)"
        for i, xv in enumerate(xs):
            self.line(f"    {out}[{i}, {cols}] = {out}[{i}, {cols}] + T.Broadcast({xv}, 16) * {bv}")
        self.depth -= 2

    def _words_by_field(
        self,
        inst: I.Dot,
        out: str,
        xrow: tuple[str, int, str],
        word: Any,
        starts: list[int],
        consts: list[list[tuple[int, str]]],
        g: str,
        jv: str,
    ) -> None:
        """The body of one word row of `_dot_lut_words` for codes whose value is linear in their bits
        (`_field_tables`): one vpermps per 4-bit field of the word instead of one per code. Field f's table is
        built per row from a, T_f = Σ_u a[k_u]·C_{f,u} over the codes u with bits in it (`consts`: per field,
        the buffers of the constant vectors C, declared before the walk; `starts`: each field's first bit), so
        a word of ten 3-bit codes costs 8 lookups. Each lookup accumulates through an FMA by 1.0
        (the FMA pipes, not the adds', which the shifts and permutes share); the word row's column vectors are
        loaded first and the lookups go field by field across them (consecutive FMAs into different
        accumulators)."""
        BM = inst.a.shape[0]
        BN = inst.b.shape[1]
        codes = sorted({u for parts in consts for u, _ in parts})
        xt, stride, at = xrow  # `_tile_rows`' buffer, its row stride, the word row's first slot
        xs = {(i, u): f"{xt}[{i * stride} + {at} + {u}]" for i in range(BM) for u in codes}
        tabs = []
        for f, parts in enumerate(consts):
            tb = self.fresh(f"ft{f}")
            self.line(f'{tb} = T.decl_buffer(({BM * 16},), "float32", {self.scope})')
            for i in range(BM):
                terms = [f"T.Broadcast({xs[i, u]}, 16) * {c}[T.Ramp(0, 1, 16)]" for u, c in parts]
                self.line(f"{tb}[T.Ramp({i * 16}, 1, 16)] = {' + '.join(terms)}")
            tabs.append(tb)
        wv = self.fresh("wv")
        self.line(f'{wv} = T.decl_buffer(({BN},), "int32", {self.scope})')
        self.line(f"for {jv} in T.unroll({BN // 16}):")
        self.line(f"    {wv}[T.Ramp({jv} * 16, 1, 16)] = {g}[T.Ramp({scalar(word)}, 1, 16)]")
        cols = f"T.Ramp({jv} * 16, 1, 16)"
        w16 = f"{wv}[T.Ramp({jv} * 16, 1, 16)]"
        for start, tb in zip(starts, tabs):
            self.line(f"for {jv} in T.unroll({BN // 16}):")
            idx = w16 if start == 0 else f"T.shift_right({w16}, T.Broadcast(T.int32({start}), 16))"
            for i in range(BM):
                acc = f"{out}[{i}, {cols}]"
                self.line(f"    {acc} = {_accumulate(acc, _permvar(f'{tb}[T.Ramp({i * 16}, 1, 16)]', idx))}")

    def _tile_rows(self, inst: I.Dot, rel0: Any, count: int) -> str:
        """A local buffer [BM, count] of the dot's a tile read from column rel0 (sympy, may be negative) on,
        0 where a column lies outside the tile: the word walk's code slots before the tile's first k and after
        its last. Filled once per tile; returns its name."""
        BM, KT = inst.a.shape
        conv = _to_value_type(inst.a.dtype, inst.acc_dtype)
        fa = self.get(inst.a)
        xt, s = self.fresh("xt"), self.fresh("s")
        self.line(f'{xt} = T.decl_buffer(({BM * count},), "float32", {self.scope})')
        rel = f"({scalar(rel0)} + {s})"
        inside = f"0 <= {rel} and {rel} < {KT}"
        clamped = f"T.max(T.min({rel}, {KT - 1}), 0)"
        for i in range(BM):
            value = conv(fa((str(i), clamped), _Ctx(checked=False)))
            self.line(f"for {s} in T.serial({count}):")
            self.line(f"    {xt}[{i * count} + {s}] = T.if_then_else({inside}, {value}, T.float32(0))")
        return xt

    def _lut_codes(self, load: I.Load, KT: int) -> int:
        """Codes per 4-bit vpermps field for `dot_lut`: 4 / bits for 1- and 2-bit codes when, at aligned tile
        origins (checked numerically, as `lut_plan`), every run of that many consecutive k (from a multiple
        of it) of a column sits in one word at consecutive bit offsets; else 1."""
        t = load.tensor
        lay, bits = t.layout, t.dtype.bits
        c = 4 // bits if bits in (1, 2) else 1
        if c == 1 or KT % c:
            return 1
        rows, cols = (int(n) for n in load.shape)
        for word, bit in _tile_locations(load):
            w, b = word.reshape(rows // c, c, cols), bit.reshape(rows // c, c, cols)
            if (w != w[:, :1]).any() or (b - b[:, :1] != (np.arange(c) * bits)[None, :, None]).any():
                return 1
            if (b[:, 0] + 4 > lay.word_bits).any():
                return 1
        return c

    def _prefetch_lut(self, t: Any, load: I.Load, kk: Any, unroll: int, BN: int, locality: int | None = None) -> None:
        """Software prefetch of the word stream `dot_lut` walks: per step of the k loop, one hint per 16-word
        vector (one 64-byte line) of the word row `prefetch` bytes ahead along the layout's k direction. The
        distance in steps comes from the layout: the words one word's worth of k (per_word rows) moves at the
        origin. Clamped into the tensor; a hint, never a fault. On the 2-core AVX-512 VM, 4096² int4 M = 1, 2
        threads, weights streamed from DRAM: 0.207-0.217 ms against 0.252 ms without it (one thread 0.329 vs
        0.424 ms), while the hardware prefetchers alone left the kernel's compute and its stream serialized."""
        dist = self.opt["prefetch"]
        if not dist or not self.cpu:
            return
        locality = self.opt["prefetch_locality"] if locality is None else locality
        lay = t.layout
        per = lay.per_word or 1
        k0s, j0s = sympy.sympify(load.offsets[0]), sympy.sympify(load.offsets[1])
        step_bytes = abs(int(np.asarray(lay.locate(per, 0)[0])) - int(np.asarray(lay.locate(0, 0)[0]))) * 4 / per
        if step_bytes == 0:
            return
        ahead = -(-int(-(-dist // step_bytes)) // unroll) * unroll  # whole k steps, >= dist bytes ahead
        g = self.gbuf[t.name]
        words = [sympy.sympify(lay.locate(k0s + kk + ahead, j0s + jvi * 16)[0]) for jvi in range(BN // 16)]
        offs = [sympy.simplify(w - words[0]) for w in words]
        if all(o.is_Integer for o in offs):
            # one clamp per step (written inline, a named value being a workspace buffer; LLVM computes it
            # once), the hints at constant offsets from it: clamped one by one, LLVM packed the clamps into
            # vectors and took each address out again (vpextrd, movslq: ~3 instructions a hint, 48 a step of
            # the M = 1 GEMV next to its 64 vdpbf16ps)
            top = max(int(o) for o in offs)
            base = f"T.max(T.min({scalar(words[0])}, {scalar(lay.num_words)} - {top + 1}), 0)"
            addrs = [f"{base} + {int(o)}" for o in offs]
        else:
            addrs = [f"T.min({scalar(w)}, {scalar(lay.num_words)} - 1)" for w in words]
        for addr in addrs:
            hint = f'T.call_llvm_intrin("void", "llvm.prefetch.p0", T.address_of({g}[{addr}]), 0, {locality}, 1)'
            self.line(f"T.evaluate({hint})")

    def inner_dot_applies(self, inst: I.Dot) -> bool:
        """Whether `out += a @ b` runs as inner products (`dot_inner`): on a CPU, a float dot into fp32 whose b
        is a not-yet-materialised transpose (its k axis is the source's contiguous one) and whose a has at most
        `tm`·2 rows. The generic loops vectorize over b's columns and would first gather the transpose, one
        element per lane (decode attention's q·Kᵀ: 16 tokens' codes, strided by a page row, per k)."""
        a, b = inst.a, inst.b
        lanes = self.opt["inner_dot"]
        return (
            self.cpu
            and lanes > 0
            and inst.acc_dtype.name == "float32"
            and a.dtype.is_float
            and isinstance(self.defs.get(id(b)), I.Transpose)
            and id(b) not in self.buf
            and a.shape[0] <= 2 * self.opt["tm"]
            and a.shape[1] % lanes == 0
        )

    def dot_inner(self, inst: I.Dot, out: str) -> None:
        """out[BM, BN] += a[BM, KT] @ b[KT, BN] as BM·BN inner products: `lanes` consecutive k of a column of b
        are read (unpacked and converted once) into a vector and multiplied into one vector accumulator per
        row of a. Two columns of b go together (2·BM independent FMA chains, each a-vector loaded once for
        both), then their accumulators' lanes are summed (`_sum_lanes`). Per element of b: its unpack and BM
        FMAs, nothing gathered. The fast path needs every load in bounds; otherwise the generic loops."""
        self._guarded(inst, out, lambda: self._dot_inner_fast(inst, out))

    def _dot_inner_fast(self, inst: I.Dot, out: str) -> None:
        a, b = inst.a, inst.b
        BM, KT = a.shape
        BN = b.shape[1]
        V = self.opt["inner_dot"]
        JU = 2 if BN % 2 == 0 else 1  # columns of b per step
        fa, fb = self.get(a), self.get(b)
        fast = _Ctx(checked=False)
        conv, convb = _to_value_type(a.dtype, inst.acc_dtype), _to_value_type(b.dtype, inst.acc_dtype)
        jo, ju, ko, v, ii = (self.fresh(x) for x in ("jo", "ju", "ko", "v", "ii"))
        accv, bv, av = self.fresh("accv"), self.fresh("bv"), self.fresh("av")
        j = f"{jo} * {JU} + {ju}"
        self.line(f"for {jo} in T.serial({BN // JU}):")
        self.depth += 1
        self.line(f'{accv} = T.decl_buffer(({JU * BM * V},), "float32", {self.scope})')
        self.line(f"for {ii} in T.unroll({JU * BM}):")
        self.line(f"    {accv}[T.Ramp({ii} * {V}, 1, {V})] = T.Broadcast(T.float32(0), {V})")
        self.line(f"for {ko} in T.serial({KT // V}):")
        self.depth += 1
        k = f"({ko} * {V} + {v})"
        self.line(f'{bv} = T.decl_buffer(({JU * V},), "float32", {self.scope})')
        self.line(f"for {ju} in T.unroll({JU}):")
        self.line(f"    for {v} in T.vectorized({V}):")
        self.line(f"        {bv}[{ju} * {V} + {v}] = {convb(fb((k, j), fast))}")
        self.line(f"for {ii} in T.unroll({BM}):")
        self.depth += 1
        self.line(f'{av} = T.decl_buffer(({V},), "float32", {self.scope})')
        self.line(f"for {v} in T.vectorized({V}):")
        self.line(f"    {av}[{v}] = {conv(fa((ii, k), fast))}")
        acc = f"{accv}[({ju} * {BM} + {ii}) * {V} + {v}]"
        self.line(f"for {ju} in T.unroll({JU}):")
        self.line(f"    for {v} in T.vectorized({V}):")
        self.line(f"        {acc} = {acc} + {av}[{v}] * {bv}[{ju} * {V} + {v}]")
        self.depth -= 2
        self._sum_lanes(out, accv, BM, JU, V, jo)
        self.depth -= 1

    def _sum_lanes(self, out: str, accv: str, BM: int, JU: int, V: int, jo: str) -> None:
        """out[ii, jo·JU + ju] += Σ lanes of accumulator (ju, ii). On x86 with 8 lanes and rows in fours: three
        vhaddps per four accumulators leave each one's low- and high-half sums side by side, one 4-lane add
        finishes them (~5 instructions per 4 sums instead of 4 trees of 7 adds and shuffles); else a tree."""
        ii, ju, r = self.fresh("ii"), self.fresh("ju"), self.fresh("r")
        col = f"{jo} * {JU} + {ju}"
        if self.opt["int8_dot"] in ("avx2", "vnni", "amx") and V == 8 and BM % 4 == 0:
            hb, h01, h23 = self.fresh("hb"), self.fresh("h01"), self.fresh("h23")
            self.line(f"for {ju} in T.unroll({JU}):")
            self.line(f"    for {ii} in T.unroll({BM // 4}):")
            self.depth += 2
            base = f"({ju} * {BM} + {ii} * 4)"

            def hadd(x: str, y: str) -> str:
                return f'T.call_llvm_pure_intrin("float32x8", "llvm.x86.avx.hadd.ps.256", {x}, {y})'

            def vec(q: int) -> str:
                return f"{accv}[T.Ramp(({base} + {q}) * 8, 1, 8)]"

            self.line(f'{hb} = T.decl_buffer((8,), "float32", {self.scope})')
            self.line(f"{h01} = {hadd(vec(0), vec(1))}")
            self.line(f"{h23} = {hadd(vec(2), vec(3))}")
            self.line(f"{hb}[T.Ramp(0, 1, 8)] = {hadd(h01, h23)}")
            self.line(f"for {r} in T.unroll(4):")
            cell = f"{out}[{ii} * 4 + {r}, {col}]"
            self.line(f"    {cell} = {cell} + ({hb}[{r}] + {hb}[4 + {r}])")
            self.depth -= 2
            return
        parts = [f"{accv}[({ju} * {BM} + {ii}) * {V} + {q}]" for q in range(V)]
        while len(parts) > 1:  # a balanced tree: log2(V) dependent adds
            parts = [f"({x} + {y})" for x, y in zip(parts[::2], parts[1::2])] + parts[len(parts) // 2 * 2 :]
        self.line(f"for {ju} in T.unroll({JU}):")
        self.line(f"    for {ii} in T.unroll({BM}):")
        self.line(f"        {out}[{ii}, {col}] = {out}[{ii}, {col}] + {parts[0]}")

    def _bf16_gemm_applies(self, inst: I.Dot) -> bool:
        """Whether `_dot_bf16_gemm` runs this dot: option bf16_dot "avx512bf16" on a CPU, bfloat16 a and b
        both in local buffers (materialized: every read in bounds), an fp32 accumulator, even KT and whole
        16-column vectors."""
        a, b = inst.a, inst.b
        return (
            self.cpu
            and self.opt["bf16_dot"] in ("avx512bf16", "amx")
            and a.dtype.name == "bfloat16"
            and b.dtype.name == "bfloat16"
            and inst.acc_dtype.name == "float32"
            and int(a.shape[1]) % 2 == 0
            and int(b.shape[1]) % 16 == 0
            and id(a) in self.buf
            and id(b) in self.buf
        )

    def _dot_bf16_gemm(self, inst: I.Dot, out: str, tm: int) -> None:
        """out[BM, BN] += a @ b for bf16 tiles in local buffers, with AVX-512 BF16 `vdpbf16ps` (two products
        per fp32 lane and instruction; `bf16_dot.py`): a's pairs ap[i, q] = bits(a[i, 2q]) | bits(a[i, 2q+1])
        << 16 and b's bp[q, j] = bits(b[2q, j]) | bits(b[2q+1, j]) << 16 (int32, built vectorized once per
        tile), then per block of `tm` rows and per pair q, one load of each 16-column vector of bp, one
        broadcast of each row's pair, and tm x BN/16 dpbf16ps into accumulators held over all of k. Exact
        products, fp32 pair sums and accumulation (the generic loops: one rounding per product-add). With
        bf16_dot "amx" and whole AMX tiles, ap and bp are AMX's A and B tiles as they are (`_amx_bf16_block`)."""
        a, b = inst.a, inst.b
        BM, KT = (int(n) for n in a.shape)
        BN = int(b.shape[1])
        fa, fb = self.get(a), self.get(b)
        conv = _to_value_type(a.dtype, inst.acc_dtype)  # bf16 -> fp32: exact, its bits are the bf16's << 16
        fast = _Ctx(checked=False)
        KP = KT // 2
        ap, bp = self.fresh("ap"), self.fresh("bp")
        i, q, j = (self.fresh(v) for v in ("i", "q", "j"))

        def pair(lo: str, hi: str) -> str:
            return _bf16_pair(conv(lo), conv(hi))

        qs = sympy.Symbol(q, integer=True)
        self.line(f'{ap} = T.decl_buffer(({BM * KP},), "int32", {self.scope})')
        self.line(f'{bp} = T.decl_buffer(({KP * BN},), "int32", {self.scope})')
        self.line(f"for {i} in T.serial({BM}):")
        self.line(f"    for {q} in T.vectorized({KP}):")
        a_pair = pair(fa((i, scalar(2 * qs)), fast), fa((i, scalar(2 * qs + 1)), fast))
        self.line(f"        {ap}[{i} * {KP} + {q}] = {a_pair}")
        self.line(f"for {q} in T.serial({KP}):")
        self.line(f"    for {j} in T.vectorized({BN}):")
        self.line(
            f"        {bp}[{q} * {BN} + {j}] = {pair(fb((scalar(2 * qs), j), fast), fb((scalar(2 * qs + 1), j), fast))}"
        )
        if self.opt["bf16_dot"] == "amx" and BM % 16 == 0 and KP % 16 == 0:  # whole AMX tiles (BN: 16s)
            self._amx_bf16_block(out, (_pair_rows(ap, KP), f"T.int64({KP * 4})"), bp, BM, KP, BN)
            return
        mr, nr = self._block_shape(BM, BN)
        if mr == 1:  # no row block of the option divides BM: tm rows, all vectors
            mr, nr = tm, BN // 16
        self._block_dot(out, ap, bp, BM, KP, BN, mr, nr)

    def _block_shape(self, BM: int, BN: int) -> tuple[int, int]:
        """(rows, vectors) of `_block_dot`'s register block for a [BM, BN] output: option block_rows cut to its
        greatest common divisor with BM; then block_vectors, or more when the rows are few (at least 16
        accumulators in flight: M = 4 takes 4 x 4, 0.44 against 0.53 ms for 4 x 2), cut to a divisor of the
        tile's vectors."""
        mr = math.gcd(self.opt["block_rows"], BM)
        return mr, math.gcd(max(self.opt["block_vectors"], 16 // mr), BN // 16)

    def _block_dot(
        self,
        out: str,
        ap: str,
        bp: str,
        BM: int,
        KP: int,
        BN: int,
        mr: int,
        nr: int,
        scale: tuple[str, str] | None = None,
        fp32: bool = False,
    ) -> None:
        """out[BM, BN] += the pair dot of ap (int32 [BM, KP]: a row's bf16 pairs) and bp (int32 [KP, BN]: a
        column's pairs, 16-column vectors contiguous), in register blocks of mr rows x nr vectors: per block and
        pair q, nr vector loads of bp, mr broadcasts of ap and mr x nr vdpbf16ps into accumulators that stay in
        registers over all of q (LLVM promotes the block's loop-invariant `out` vectors). With `scale` =
        (acc, s): the block starts from zero in a register buffer and ends with acc[i, j] += sum · s[0, j]
        (`out` is not touched). `fp32`: ap [BM, KP] and bp [KP, BN] hold fp32 values (rows of a, decoded
        weights), one FMA per row and vector instead of the pair dot (`_dot_lut_gemm`)."""
        io, jo, q, ii, jv = (self.fresh(v) for v in ("io", "jo", "q", "ii", "jv"))
        row, col = f"{io} * {mr} + {ii}", f"({jo} * {nr} + {jv}) * 16"
        # column blocks outermost: a block's slice of bp (KP x nr vectors, 8 KiB at KP 64, nr 2) stays in L1
        # while the rows' pairs stream past it; rows outermost streamed all of bp (64 KiB at BN 256) per row
        # block (4096² int4 M = 256, hot, 2 threads: 0.93-0.98x the time)
        self.line(f"for {jo} in T.serial({BN // (16 * nr)}):")
        self.line(f"    for {io} in T.serial({BM // mr}):")
        self.depth += 2
        bvec = f"{bp}[T.Ramp({q} * {BN} + {col}, 1, 16)]"
        avec = f"T.Broadcast({ap}[({row}) * {KP} + {q}], 16)"
        if not fp32:
            bvec, avec = (f'T.reinterpret("int16x32", {v})' for v in (bvec, avec))

        def update(acc: str, b: str, a: str) -> str:
            return f"{acc} + {a} * {b}" if fp32 else stand_in(acc, b, a)

        if scale is None:
            acc = f"{out}[{row}, T.Ramp({col}, 1, 16)]"
            self.line(f"for {q} in T.serial({KP}):")
            self.line(f"    for {ii} in T.unroll({mr}):")
            self.line(f"        for {jv} in T.unroll({nr}):")
            self.line(f"            {acc} = {update(acc, bvec, avec)}")
            self.depth -= 2
            return
        # one 64-byte buffer per accumulator (unrolled here): stack allocas that SROA turns into registers (a
        # single [mr·nr·16] buffer of 1 KiB became workspace memory, its stores kept)
        total, srow = scale
        regs = self._register_sums(mr, nr)
        blocks = [(i, j, {ii: str(i), jv: str(j)}) for i in range(mr) for j in range(nr)]
        self.line(f"for {q} in T.serial({KP}):")
        for i, j, sub in blocks:
            r = regs[i][j]
            self.line(f"    {r} = {update(r, _substitute(bvec, sub), _substitute(avec, sub))}")
        for i, j, sub in blocks:
            dst = _substitute(f"{total}[{row}, T.Ramp({col}, 1, 16)]", sub)
            scl = _substitute(f"{srow}[0, T.Ramp({col}, 1, 16)]", sub)
            self.line(f"{dst} = {dst} + {regs[i][j]} * {scl}")
        self.depth -= 2

    def _amx_bf16_block(
        self,
        out: str,
        a_rows: tuple[Callable[[str, str], str], str] | list[tuple[Callable[[str, str], str], str]],
        bp: str,
        BM: int,
        KP: int,
        BN: int,
        scale: tuple[str, str] | None = None,
        tiled: bool = False,
        affine: tuple[float, float] | None = None,
        decode: Callable[[int, int], None] | None = None,
    ) -> None:
        """`_block_dot`'s pair dot on AMX-BF16. a_rows = ((row, c) -> the address of a's bf16 element (row,
        32·c), the int64 bytes from a row to the next): a's rows in k order, 16 of them an A tile of 32 k (a
        bf16 tensor's rows where they lie, or the staged pairs); bp (int32 [KP, BN], a column's pairs: 16 pair
        rows x 16 columns are a B tile in AMX's pair layout; row-major, or `tiled`: whole B tiles one after
        another, `_pair_vector`: 4096², int4, M = 256 / 64, hot, alternating: 5.46 / 1.84 ms against 6.00 /
        2.03 row-major, int8 5.89 / 1.69 against 6.14 / 1.82); tdpbf16ps adds 16x16x32 products into fp32 tiles
        (each pair's two exact products and the accumulator rounded to fp32 by the instruction, as vdpbf16ps
        does). Columns outermost: a pass's AMX_BF16_SUMS x 16 columns of bp (16 KiB at KP 64) stay in L1 while
        every 16-row A tile streams past (rows outermost re-read all of bp, 64 KiB at BN 256, from L2 per
        16 rows). Per 16 rows the pass's sums are held over all of k: register 0 a's tile, 1 and 2 b's tiles in
        turn, 3 .. the sums. Without `scale` they start from `out` and are stored back; with `scale` = (acc,
        s) they start from zero and each is stored to a 1 KiB stack tile, then acc[i, j] += sum · s[0, j]
        (`out` is not touched). A list of a_rows: several a operands against the same b, summed (`_amx_fp32_rows`:
        fp32 rows as three bf16 parts). `affine` = (α, γ) (one a operand): bp holds w' with w = α·w' + γ
        (`_multishift_pairs`), so the sums start from zero, register 7 sums each row's a against a B tile of
        ones (Σa in every column of the row), and the epilogue adds α·sum + γ·Σa (times s with `scale`).
        `decode(c, n)` emits the decode of bp's part c of n (its pair rows 16·KP/n·c on, `_decoded_pairs`). One
        pass (BN <= 64 and 16 rows): option amx_parts parts, each decoded right before its tile products, so that
        the AMX unit multiplies part c while the vector units decode part c + 1 (tdpbf16ps waits for the stores
        it reads; a decode-then-multiply tile left the two in series). More passes: all decoded first."""
        self.amx = True
        sources = a_rows if isinstance(a_rows, list) else [a_rows]
        assert affine is None or len(sources) == 1, "the affine form's Σa takes register 7, one a operand"
        nb = BN // 16
        # accumulator tiles per pass: AMX_BF16_SUMS, or 2 for several sources (b's tiles then stay in registers)
        most = AMX_BF16_SUMS if len(sources) == 1 else 2
        cols = max(c for c in range(1, most + 1) if nb % c == 0)
        mi, nj, kc, ii = (self.fresh(v) for v in ("mi", "nj", "kc", "ii"))

        def call(op: str, *regs: Any) -> None:
            self.line(f'T.evaluate(T.call_llvm_intrin("void", "llvm.x86.{op}", {", ".join(str(r) for r in regs)}))')

        def reg(r: int) -> str:
            return f"T.int8({r})"

        tmp = self.fresh("amxc") if scale is not None or affine is not None else None
        if tmp is not None:
            self.line(f'{tmp} = T.decl_buffer((16, 16), "float32", {self.scope})')
        ones = sums = None
        if affine is not None:  # a B tile of bf16 pairs (1, 1), and the stored Σa tile
            ones, sums, q = self.fresh("ones"), self.fresh("asum"), self.fresh("q")
            self.line(f'{ones} = T.decl_buffer((256,), "int32", {self.scope})')
            self.line(f'{sums} = T.decl_buffer((16, 16), "float32", {self.scope})')
            self.line(f"for {q} in T.serial(16):")
            self.line(f"    {ones}[T.Ramp({q} * 16, 1, 16)] = T.Broadcast(T.int32({0x3F803F80}), 16)")
        parts = math.gcd(self.opt["amx_parts"], KP // 16) if _amx_one_pass(BM, BN, len(sources)) else 1
        if decode is not None and parts == 1:
            decode(0, 1)
        self.line(f"for {nj} in T.serial({nb // cols}):")
        self.line(f"    for {mi} in T.serial({BM // 16}):")
        self.depth += 2
        col = lambda c: f"({nj} * {cols} + {c}) * 16"  # noqa: E731
        if affine is not None:
            call("tilezero", reg(7))
        for c in range(cols):
            if scale is None and affine is None:
                call("tileloadd64", reg(3 + c), f"T.address_of({out}[{mi} * 16, {col(c)}])", f"T.int64({BN * 4})")
            else:
                call("tilezero", reg(3 + c))
        per_part = KP // 16 // parts
        for part in range(parts):
            if decode is not None and parts > 1:
                decode(part, parts)
            lo = part * per_part
            self.line(f"for {kc} in T.serial({lo}, {lo + per_part}):" if lo else f"for {kc} in T.serial({per_part}):")
            self.depth += 1
            if tiled:  # bp's B tiles one after another (`_pair_vector`): 64 bytes from a pair row to the next
                b_addr = lambda c: f"T.address_of({bp}[({kc} * {nb} + {nj} * {cols} + {c}) * 256])"  # noqa: E731
                b_stride = "T.int64(64)"
            else:
                b_addr = lambda c: f"T.address_of({bp}[{kc} * {16 * BN} + {col(c)}])"  # noqa: E731
                b_stride = f"T.int64({BN * 4})"
            if len(sources) == 1:  # a's tile once, b's tiles in turn through registers 1 and 2
                a_tile, a_stride = sources[0]
                call("tileloadd64", reg(0), a_tile(f"{mi} * 16", kc), a_stride)
                for c in range(cols):
                    b = 1 + c % 2
                    call("tileloadd64", reg(b), b_addr(c), b_stride)
                    call("tdpbf16ps", reg(3 + c), reg(0), reg(b))
                if ones is not None:  # Σa: a's tile against the ones, into register 7
                    b = 1 + cols % 2
                    call("tileloadd64", reg(b), f"T.address_of({ones}[0])", "T.int64(64)")
                    call("tdpbf16ps", reg(7), reg(0), reg(b))
            else:  # b's tiles held (registers 1, 2), the sources' a tiles in turn through registers 0 and 7
                for c in range(cols):
                    call("tileloadd64", reg(1 + c), b_addr(c), b_stride)
                for n, (a_tile, a_stride) in enumerate(sources):
                    a = 0 if n % 2 == 0 else 7
                    call("tileloadd64", reg(a), a_tile(f"{mi} * 16", kc), a_stride)
                    for c in range(cols):
                        call("tdpbf16ps", reg(3 + c), reg(a), reg(1 + c))
            self.depth -= 1
        if sums is not None:
            call("tilestored64", reg(7), f"T.address_of({sums}[0, 0])", "T.int64(64)")
        for c in range(cols):
            if tmp is None:
                call("tilestored64", reg(3 + c), f"T.address_of({out}[{mi} * 16, {col(c)}])", f"T.int64({BN * 4})")
                continue
            call("tilestored64", reg(3 + c), f"T.address_of({tmp}[0, 0])", "T.int64(64)")
            value = f"{tmp}[{ii}, T.Ramp(0, 1, 16)]"
            if affine is not None:
                alpha, gamma = (f"T.Broadcast({f32(v)}, 16)" for v in affine)
                value = f"({value} * {alpha} + {sums}[{ii}, T.Ramp(0, 1, 16)] * {gamma})"
            if scale is None:
                dst = f"{out}[{mi} * 16 + {ii}, T.Ramp({col(c)}, 1, 16)]"
                self.line(f"for {ii} in T.serial(16):")
                self.line(f"    {dst} = {dst} + {value}")
                continue
            total, srow = scale
            dst = f"{total}[{mi} * 16 + {ii}, T.Ramp({col(c)}, 1, 16)]"
            self.line(f"for {ii} in T.serial(16):")
            self.line(f"    {dst} = {dst} + {value} * {srow}[0, T.Ramp({col(c)}, 1, 16)]")
        self.depth -= 2

    def _register_sums(self, rows: int, vectors: int) -> list[list[str]]:
        """rows x vectors fp32 sums of 16 lanes, zeroed: one 64-byte buffer each (the name's full vector
        returned), which SROA keeps in registers when every access is by a constant index; a single buffer
        of them, indexed by a loop, stays in memory (1 KiB or more: TVM's heap workspace)."""
        regs = [[self.fresh(f"r{i}_{j}") for j in range(vectors)] for i in range(rows)]
        for r in (r for row in regs for r in row):
            self.line(f'{r} = T.decl_buffer((16,), "float32", {self.scope})')
            self.line(f"{r}[T.Ramp(0, 1, 16)] = T.Broadcast(T.float32(0), 16)")
        return [[f"{r}[T.Ramp(0, 1, 16)]" for r in row] for row in regs]

    def _dot_generic(self, inst: I.Dot, out: str, unroll: int = 1) -> None:
        """The scalar-operand dot loops, `out += a @ b` with rows in blocks of `tm` and the K loop unrolled by
        `unroll` (no operand materialisation here, so the bindings stay as they are). A float dot whose block
        holds fewer than `fma_chains` vectors accumulates its fast path in `parts` interleaved partial sums
        (k mod parts), added into `out` after the k loop."""
        a, b = inst.a, inst.b
        BM, KT = a.shape
        BN = b.shape[1]
        fa, fb = self.get(a), self.get(b)
        tm = self.opt["tm"] if BM % self.opt["tm"] == 0 else 1
        conv = _to_value_type(a.dtype, inst.acc_dtype)
        io, kk = self.fresh("io"), self.fresh("k")
        self._ii = self.fresh("ii")
        parts = self._k_parts(inst, tm, BN, KT)
        if parts > 1 and unroll % parts:
            unroll = parts
        accp = self.fresh("accp") if parts > 1 else ""

        def body(idx: tuple[str, ...], k: str, ctx: _Ctx, part: str | None = None) -> list[str]:
            _, j = idx
            row = f"{io} * {tm} + {self._ii}" if BM > 1 else "0"
            prod = f"({conv(fa((row, k), ctx))}) * ({conv(fb((k, j), ctx))})"
            acc = f"{out}[{row}, {j}]" if part is None else f"{accp}[{part}, {row}, {j}]"
            return [f"{acc} = {acc} + {prod}"]

        self._dot_loops(BM // tm, KT, unroll, io, kk, (tm, BN), body, parts, accp, out, BM)

    def _k_parts(self, inst: I.Dot, tm: int, BN: int, KT: int) -> int:
        """Interleaved partial sums of a float dot's k loop: `fma_chains` / (vectors in the register block),
        at most 4, a power of two dividing KT; 1 when off or not a float dot."""
        chains, vec = self.opt["fma_chains"], self.opt["vector"]
        vectors = tm * -(-BN // vec)
        if chains <= 1 or vectors >= chains or inst.acc_dtype.name != "float32" or not self.cpu:
            return 1
        parts = 1
        while parts * 2 <= min(4, chains // vectors) and KT % (parts * 2) == 0:
            parts *= 2
        return parts

    def _dot_loops(
        self,
        n_io: int,
        KT: int,
        unroll: int,
        io: str,
        kk: str,
        inner: tuple[int, int],
        body: Any,
        parts: int,
        accp: str,
        out: str,
        BM: int,
    ) -> None:
        """k outer (unrolled by `unroll`), TM accumulator rows unrolled, j vectorized; the fast/slow split
        is uniform over the whole dot, so it is hoisted above the k loop. With `parts` > 1 the fast path
        accumulates k mod parts into the partial sums `accp` [parts, BM, BN], added into `out` after the loop."""
        tm, BN = inner
        ii = self._ii
        k_fast = f"({kk}o * {unroll} + {kk}u)" if unroll > 1 else kk
        j_loops, (j_fast,) = self._plan((BN,), vector_last=True)
        probe = _Ctx(checked=False)
        fast = body((ii, j_fast), k_fast, probe, f"T.floormod({kk}u, {parts})" if parts > 1 else None)

        def fast_nest() -> None:
            if parts > 1:
                self.line(f'{accp} = T.decl_buffer(({parts}, {BM}, {BN}), "float32", {self.scope})')
                self.nest((parts, BM, BN), lambda idx, ctx: [f"{accp}[{', '.join(idx)}] = T.float32(0)"])
            self._dot_nest(n_io, KT, unroll, io, kk, tm, j_loops, fast, True)
            if parts > 1:
                total = " + ".join(f"{accp}[{p}, {{0}}, {{1}}]" for p in range(parts))
                self.nest(
                    (BM, BN),
                    lambda idx, ctx: [f"{out}[{idx[0]}, {idx[1]}] = {out}[{idx[0]}, {idx[1]}] + " + total.format(*idx)],
                )

        if probe.data_dependent or probe.guards:
            if not probe.data_dependent:
                self.line(f"if {' and '.join(sorted(set(probe.guards)))}:")
                self.depth += 1
                fast_nest()
                self.depth -= 1
                self.line("else:")
                self.depth += 1
            j_slow_loops, (j_slow,) = self._plan((BN,), vector_last=False)
            slow = body((ii, j_slow), kk, _Ctx(checked=True))
            self._dot_nest(n_io, KT, 1, io, kk, tm, j_slow_loops, slow, False)
            if not probe.data_dependent:
                self.depth -= 1
        else:
            fast_nest()

    def _dot_nest(
        self,
        n_io: int,
        KT: int,
        unroll: int,
        io: str,
        kk: str,
        tm: int,
        j_loops: list[str],
        stmts: list[str],
        fast: bool,
    ) -> None:
        headers = [f"for {io} in T.serial({n_io}):"]
        if unroll > 1:
            headers += [f"for {kk}o in T.serial({KT // unroll}):", f"for {kk}u in T.unroll({unroll}):"]
        else:
            headers.append(f"for {kk} in T.serial({KT}):")
        headers.append(f"for {self._ii} in T.unroll({tm}):" if fast else f"for {self._ii} in T.serial({tm}):")
        self._loops(headers + j_loops, stmts)


def _to_value_type(src: DataType, acc: DataType) -> Callable[[str], str]:
    """An expression of `src`'s value type as one of `acc`'s (the identity when they are the same)."""
    vt = value_type(acc)
    return (lambda e: e) if value_type(src) == vt else (lambda e: f'T.Cast("{vt}", {e})')


def _substitute(text: str, subst: dict[str, str]) -> str:
    for name, value in subst.items():
        text = re.sub(rf"\b{re.escape(name)}\b", f"({value})", text)
    return text


def may_be_negative(offset: Any, nonnegative: Iterable[sympy.Symbol] = ()) -> bool:
    """Whether a tile offset (sympy) can be negative: not provably nonnegative. Program ids, loop variables and
    sizes are nonnegative symbols, so `pid0 * BN + k` needs no lower-bound test; `pid1 * B - 1` or an offset
    through a scalar read from memory does, unless an enclosing branch proved that scalar `nonnegative`
    (kv_append's `slot // PS` under `if slot >= 0`)."""
    e = sympy.sympify(offset)
    known = {x: sympy.Symbol(x.name, integer=True, nonnegative=True) for x in nonnegative if x in e.free_symbols}
    return not (e.subs(known) if known else e).is_nonnegative


def nonnegative_in(cond: Any) -> set[sympy.Symbol]:
    """The integer symbols that branch condition `cond` proves nonnegative: the atoms `x >= c` (c > -1) and
    `x > c` (c >= -1) of its top-level conjunction, either way round."""
    atoms = cond.args if isinstance(cond, sympy.And) else (cond,)
    out = set()
    for a in atoms:
        if isinstance(a, (sympy.GreaterThan, sympy.StrictGreaterThan)):
            big, small = a.lhs, a.rhs
        elif isinstance(a, (sympy.LessThan, sympy.StrictLessThan)):
            big, small = a.rhs, a.lhs
        else:
            continue
        if not (isinstance(big, sympy.Symbol) and big.is_integer and small.is_number):
            continue
        strict = isinstance(a, (sympy.StrictGreaterThan, sympy.StrictLessThan))
        if (small >= -1) if strict else (small > -1):  # integer x: x > c means x >= floor(c) + 1
            out.add(big)
    return out


def _inside_terms(coords: list[str], extents: tuple[Any, ...], signed: Sequence[bool]) -> list[str]:
    """The checked form's per-element bounds test at `coords`: below each extent, and at least 0 on the axes
    whose offset may be negative (`signed`)."""
    terms = []
    for c, n, neg in zip(coords, extents, signed):
        if neg:
            terms.append(f"{c} >= 0")
        terms.append(f"{c} < {scalar(n)}")
    return terms


def _tile_guards(
    offsets: tuple[Any, ...], shape: tuple[int, ...], extents: tuple[Any, ...], signed: Sequence[bool]
) -> list[str]:
    """The fast path's uniform guards for a tile of `shape` at `offsets`: it ends inside each extent and, on the
    axes that may be negative (`signed`), starts at or after 0."""
    guards = []
    for o, n, ext, neg in zip(offsets, shape, extents, signed):
        if neg:
            guards.append(f"{scalar(o)} >= 0")
        guards.append(f"{scalar(o)} + {n} <= {scalar(ext)}")
    return guards


def _flat_address(t: TensorParam, coords: list[str]) -> str:
    """TIR text of the buffer offset of element `coords` (TIR expressions) of a non-packed tensor."""
    syms = [sympy.Symbol(f"__c{d}", integer=True, nonnegative=True) for d in range(len(coords))]
    offset = t.layout(*syms) if t.layout is not None else _row_major(syms, t.shape)
    return _substitute(scalar(offset), {str(x): c for x, c in zip(syms, coords)})


def _row_major(syms: list[sympy.Symbol], shape: tuple[Any, ...]) -> Any:
    off: Any = sympy.Integer(0)
    for s, n in zip(syms, shape):
        off = off * n + s
    return off


# ---- statement rules -----------------------------------------------------------------------------------

_STMT_RULES: dict[type, Callable[[_Emitter, Any, int], None]] = {}
_RULES: dict[type, Callable[[_Emitter, Any, Tile], IndexFn | None]] = {}


def stmt_rule(cls: type):
    def register(fn):
        _STMT_RULES[cls] = fn
        return fn

    return register


def rule(cls: type):
    def register(fn):
        _RULES[cls] = fn
        return fn

    return register


@stmt_rule(Let)
def _let(e: _Emitter, s: Let, depth: int) -> None:
    e.line(f"# {_ir_line(s)}")
    if isinstance(s.inst, I.Load):
        e.prefetch(s.inst)
    e.define(s.tile, s.inst, depth)


@stmt_rule(Assign)
def _assign(e: _Emitter, s: Assign, depth: int) -> None:
    if e.buf.get(id(s.src)) == e.buf.get(id(s.dst)):
        return  # updated in place (the dot wrote into the accumulator)
    # an elementwise update of dst (`acc <- acc + f(p)`) is written in place; any other reader of dst is
    # materialized first
    in_place = e.uses.get(id(s.src)) == 1 and e.pointwise_in(s.src, s.dst)
    if e.gpu and id(s.dst) in e.mut_reads.get(id(s.src), frozenset()) and id(s.src) not in e.buf:
        e.materialize(s.src)  # no loop reads the shared tile it writes (`gpu_nest`): the update from a copy
        in_place = False
    e.before_write({id(s.dst)}, keep=id(s.src) if in_place else None)
    e.pending.pop(id(s.src), None)  # read here only (in place, its index fn is stale afterwards)
    dst = e.buf[id(s.dst)]
    src = e.get(s.src)
    e.line(f"# %{s.dst.name} <- %{s.src.name}")
    e.nest(s.dst.shape, lambda idx, ctx: [f"{dst}[{', '.join(idx) or '0'}] = {to_buffer(src(idx, ctx), s.dst.dtype)}"])


@stmt_rule(Store)
def _store(e: _Emitter, s: Store, depth: int) -> None:
    e.line(f"# {_ir_line(s)}")
    t = s.tensor
    if _template_float(t.dtype):  # the code's encoding repeats the value's text
        e.repeatable(s.tile)
    fn = e.get(s.tile)
    mask = e.get(s.mask) if s.mask is not None else None
    g = e.gbuf[t.name]
    if isinstance(t.layout, PackedLayout):
        raise BackendError(f"tvm backend: stores into packed tensor {t.name} are not supported")

    signed = [may_be_negative(o, e.nonnegative) for o in s.offsets]

    def body(idx: tuple[str, ...], ctx: _Ctx) -> list[str]:
        coords = [f"{scalar(o)} + {i}" for o, i in zip(s.offsets, idx)]
        addr = _flat_address(t, coords)
        value = e.to_storage(fn(idx, ctx), t.dtype)
        conds = _inside_terms(coords, t.shape, signed)
        if mask is not None:
            ctx.data_dependent = True
        if not ctx.checked:
            ctx.guards.extend(_tile_guards(s.offsets, s.tile.shape, t.shape, signed))
            return [f"{g}[{addr}] = {value}"]
        cond = " and ".join(conds + ([mask(idx, ctx)] if mask is not None else []))
        return [f"if {cond}:", f"    {g}[{addr}] = {value}"]

    # a CUDA block's threads store and load global memory in loops of their own: a tensor the program also
    # reads gets a barrier on each side of the store (ThreadSync orders shared memory only)
    barrier = e.gpu and t.name in e.loaded
    if barrier:
        e.line('T.tvm_storage_sync("shared")')
    e.nest(s.tile.shape, body)
    if barrier:
        e.line('T.tvm_storage_sync("shared")')
    e.pending.pop(id(s.tile), None)  # read: nothing later needs it


@stmt_rule(ScalarLoad)
def _scalar_load(e: _Emitter, s: ScalarLoad, depth: int) -> None:
    e.line(f"# {_ir_line(s)}")
    t = s.tensor
    coords = [scalar(i) for i in s.indices]
    conds = [f"{c} < {scalar(n)}" for c, n in zip(coords, t.shape)]
    conds += [f"{c} >= 0" for c, i in zip(coords, s.indices) if not sympy.sympify(i).is_nonnegative]
    clamped = [f"T.max(T.min({c}, {scalar(n)} - 1), 0)" for c, n in zip(coords, t.shape)]
    value = f'T.Cast("int32", {e.tensor_read(t, clamped, _Ctx(checked=False), None, 0)})'
    e.line(f"{s.var} = T.if_then_else({' and '.join(conds)}, {value}, 0)")


@stmt_rule(For)
def _for(e: _Emitter, s: For, depth: int) -> None:
    e.before_write(e.writes_in.get(id(s), set()))  # an inlined tile read after the loop must not see its writes
    v = str(s.var)
    e.names.add(v)
    start, stop, step = scalar(s.start), scalar(s.stop), scalar(s.step)
    e.line(f"for {v}_it in T.serial(T.floordiv({stop} - ({start}) + ({step}) - 1, {step})):")
    e.depth += 1
    e.line(f"{v} = {start} + {v}_it * ({step})")
    e.loops.append(s)
    e.body(s.body, depth + 1)
    e.loops.pop()
    e.depth -= 1


@stmt_rule(If)
def _if(e: _Emitter, s: If, depth: int) -> None:
    e.before_write(e.writes_in.get(id(s), set()))  # nor one read in either branch
    then_facts, else_facts = nonnegative_in(s.cond), nonnegative_in(sympy.Not(s.cond))
    if e.gpu:
        # a branch of the program is block-uniform (its condition is scalars), but TVM's ThreadSync takes any
        # `if` on loaded values for a divergent one and refuses the barriers its body needs ("Cannot insert
        # syncs inside condition"): each branch is a loop of 0 or 1 iterations instead, the same in every thread
        for branch, taken, facts in ((s.then_body, "1, 0", then_facts), (s.else_body, "0, 1", else_facts)):
            if branch:
                e.line(f"for {e.fresh('once')} in T.serial(T.Select({scalar(s.cond)}, {taken})):")
                e.depth += 1
                e.branch_body(branch, depth, facts)
                e.depth -= 1
        return
    e.line(f"if {scalar(s.cond)}:")
    e.depth += 1
    e.branch_body(s.then_body, depth, then_facts)
    e.depth -= 1
    if s.else_body:
        e.line("else:")
        e.depth += 1
        e.branch_body(s.else_body, depth, else_facts)
        e.depth -= 1


def _ir_line(s: Stmt) -> str:
    from lowbit.ir.printer import print_stmt

    text = print_stmt(s).strip().splitlines()[0]
    return text + (f"  ({s.location})" if s.location else "")


# ---- instruction rules -----------------------------------------------------------------------------------


@rule(I.Load)
def _load(e: _Emitter, inst: I.Load, t: Tile) -> IndexFn:
    tensor = inst.tensor
    mask = e.get(inst.mask) if inst.mask is not None else None

    signed = [may_be_negative(o, e.nonnegative) for o in inst.offsets]

    def fn(idx: tuple[str, ...], ctx: _Ctx) -> str:
        coords = [f"{scalar(o)} + {i}" for o, i in zip(inst.offsets, idx)]
        inside = " and ".join(_inside_terms(coords, tensor.shape, signed))
        if mask is not None:
            ctx.data_dependent = True
            inside = f"{inside} and {mask(idx, ctx)}"
        if not ctx.checked:
            ctx.guards.extend(_tile_guards(inst.offsets, inst.shape, tensor.shape, signed))
        return e.tensor_read(tensor, coords, ctx, inside, inst.other, signed)

    return fn


@rule(I.Arange)
def _arange(e: _Emitter, inst: I.Arange, t: Tile) -> IndexFn:
    return lambda idx, ctx: f"T.int32({idx[0]} + {inst.start})"


@rule(I.Full)
def _full(e: _Emitter, inst: I.Full, t: Tile) -> IndexFn:
    dt = inst.dtype
    if dt.is_float and isinstance(inst.value, (int, float)):
        v = f32(float(inst.value))
        text = round_float(v, dt)
    elif dt.is_float:
        text = round_float(f'T.Cast("float32", {scalar(inst.value)})', dt)
    elif dt.is_bool:
        text = "True" if inst.value else "False"
    else:
        text = wrap_int(f"T.{value_type(dt)}({scalar(inst.value)})", dt)
    return lambda idx, ctx: text


@rule(I.Dot)
def _dot(e: _Emitter, inst: I.Dot, t: Tile) -> None:
    e.dot(inst, t)
    return None


def _template_float(dt: DataType) -> bool:
    """Whether rounding to (or encoding) float dtype `dt` is the bit template (`_round_float_expr`,
    `_encode_float_expr`), which repeats its operand's text about ten times: such an operand longer than
    REPEAT_CHARS is materialized first (`_Emitter.repeatable`). Without that, kv_append's fp8 store of its
    rounded value wrote 110 KB expressions (442 KB of TVMScript, 66 s to compile on the AMD VM)."""
    return dt.is_float and dt.name not in ("float32", "float16", "bfloat16")


@rule(I.Cast)
def _cast(e: _Emitter, inst: I.Cast, t: Tile) -> IndexFn:
    if _template_float(inst.dtype):
        e.repeatable(inst.x)
    x, src, dst = e.get(inst.x), inst.x.dtype, inst.dtype
    return lambda idx, ctx: cast_expr(x(idx, ctx), src, dst)


def cast_expr(v: str, src: DataType, dst: DataType) -> str:
    if dst.is_bool:
        return float_compare("ne", v, f32(0)) if src.is_float else f"({v} != 0)"
    if dst.is_float:
        # a value-preserving cast (every value of src is one of dst: int8 -> bf16, fp6 -> fp16) needs no rounding
        # (the RNE bit arithmetic cost the bf16 x int8 GEMV 1.4x the time of its fp32 x form)
        exact = not src.is_bool and src.bits <= 16 and holds_exactly(dst, src)
        if src.is_float:
            return v if exact and value_type(src) == value_type(dst) else round_float(v, dst)
        converted = f'T.Cast("float32", {v})'
        return converted if exact else round_float(converted, dst)
    vt = value_type(dst)
    if src.is_float:  # truncate toward zero, saturate, NaN -> 0
        lo, hi = float(dst.min), float(dst.max)
        big = f"T.{vt}({int(dst.max)})"
        small = f"T.{vt}({int(dst.min)})"
        return (
            f"T.Select({is_nan(v)}, T.{vt}(0), T.Select({v} >= {f32(hi)}, {big}, "
            f'T.Select({v} <= {f32(lo)}, {small}, T.Cast("{vt}", {v}))))'
        )
    if src.is_bool:
        return f'T.Cast("{vt}", {v})'
    if value_type(src) != vt:
        v = f'T.Cast("{vt}", {v})'
    return wrap_int(v, dst)


@rule(I.View)
def _view(e: _Emitter, inst: I.View, t: Tile) -> IndexFn:
    src, dst = inst.x.dtype, inst.dtype
    x = e.get(inst.x)
    if src.bits != dst.bits or (src.bits not in (16, 32) and not (src.is_integer and dst.is_integer)):
        if src.is_integer and dst.is_integer and src.bits <= 32 and dst.bits <= 32:
            return _view_ints(e, inst, x)
        raise BackendError(
            f"tvm backend: view {src.name} -> {dst.name} is not supported (integer views and same-width "
            f"16/32-bit float<->int views are)"
        )
    if src.is_float == dst.is_float:
        return lambda idx, ctx: cast_expr(x(idx, ctx), src, dst) if src.is_integer else x(idx, ctx)
    if src.is_float:  # float value -> its bits as an int
        if src.bits == 32:
            return lambda idx, ctx: wrap_int(f'T.reinterpret("int32", {x(idx, ctx)})', dst)
        if src.name == "bfloat16":  # the value is exact in bf16: float32's top half, NaN as the reference encodes it
            return lambda idx, ctx: wrap_int(_bf16_bits(x(idx, ctx)), dst)
        return lambda idx, ctx: wrap_int(
            f'T.Cast("int32", T.reinterpret("uint16", T.Cast("{src.name}", {x(idx, ctx)})))', dst
        )
    if dst.bits == 32:
        return lambda idx, ctx: f'T.reinterpret("float32", {x(idx, ctx)})'
    return lambda idx, ctx: (
        f'T.Cast("float32", T.reinterpret("{dst.name}", T.Cast("uint16", T.bitwise_and({x(idx, ctx)}, 65535))))'
    )


def _bf16_bits(v: str) -> str:
    """The bfloat16 bit pattern (int32, sign-extended from 16 bits) of a float32 value exact in bfloat16: its top
    16 bits, NaN as the quiet NaN with v's sign (0x7FC0 / 0xFFC0, what `lowbit.dtypes.encode` gives). Not through
    a bfloat16 cast: TVM legalizes bfloat16 vectors to twice their lanes and refused the reinterpret ("Cannot
    broadcast lanes=8 to 16")."""
    top = f'T.shift_right(T.reinterpret("int32", {v}), 16)'
    return f"T.Select({is_nan(v)}, T.bitwise_or(T.bitwise_and({top}, -32768), 32704), {top})"


def _view_ints(e: _Emitter, inst: I.View, x: IndexFn) -> IndexFn:
    src, dst = inst.x.dtype, inst.dtype
    if src.bits == dst.bits:
        return lambda idx, ctx: decode_code(f"T.bitwise_and({x(idx, ctx)}, {src.code_mask})", dst)
    if src.bits > dst.bits:  # element j of the narrow view is field j % r of wide element j // r
        r = src.bits // dst.bits

        def narrow(idx: tuple[str, ...], ctx: _Ctx) -> str:
            *lead, j = idx
            wide = x((*lead, f"T.floordiv({j}, {r})"), ctx)
            shift = f'T.Cast("int32", T.floormod({j}, {r}) * {dst.bits})'  # an index expression: int64 under index64
            code = f"T.bitwise_and(T.shift_right({wide}, {shift}), {dst.code_mask})"
            return decode_code(code, dst)

        return narrow
    r = dst.bits // src.bits

    def wide(idx: tuple[str, ...], ctx: _Ctx) -> str:
        *lead, j = idx
        parts = [
            f"T.shift_left(T.bitwise_and({x((*lead, f'{j} * {r} + {p}'), ctx)}, {src.code_mask}), {p * src.bits})"
            for p in range(r)
        ]
        return decode_code(_fold("T.bitwise_or", parts), dst)

    return wide


@rule(I.Dequantize)
def _dequantize(e: _Emitter, inst: I.Dequantize, t: Tile) -> IndexFn:
    q, s = e.get(inst.codes), e.get(inst.scales)
    z = e.get(inst.zeros) if inst.zeros is not None else None
    qdt = inst.codes.dtype
    ax, g = inst.axis, inst.group_size

    def fn(idx: tuple[str, ...], ctx: _Ctx) -> str:
        gidx = tuple(f"T.floordiv({i}, {g})" if d == ax and g > 1 else i for d, i in enumerate(idx))
        qv = q(idx, ctx)
        qf = qv if qdt.is_float else f'T.Cast("float32", {qv})'
        sv = s(gidx, ctx)
        if inst.zero_mode == "none":
            out = f"{qf} * {sv}"
        elif inst.zero_mode == "post":
            out = f"({qf} - {z(gidx, ctx)}) * {sv}"  # type: ignore[misc]
        else:
            out = f"{qf} * {sv} - {z(gidx, ctx)}"  # type: ignore[misc]
        return round_float(f"({out})", inst.dtype)

    return fn


_UNARY_FLOAT = {
    "exp": "_exp_float32({})",
    "exp2": "T.exp2({})",
    "log": "T.log({})",
    "log2": "T.log2({})",
    "sqrt": "T.sqrt({})",
    "rsqrt": "(T.float32(1) / T.sqrt({}))",
    "sin": "T.sin({})",
    "cos": "T.cos({})",
    "tanh": "T.tanh({})",
    "sigmoid": "(T.float32(1) / (T.float32(1) + _exp_float32(T.float32(0) - {})))",
    "floor": "T.floor({})",
    "ceil": "T.ceil({})",
    "neg": "(T.float32(0) - {})",
    "abs": "T.fabs({})",
}


@rule(I.Unary)
def _unary(e: _Emitter, inst: I.Unary, t: Tile) -> IndexFn:
    if _template_float(inst.x.dtype):
        e.repeatable(inst.x)
    x, dt, op = e.get(inst.x), inst.x.dtype, inst.op

    def fn(idx: tuple[str, ...], ctx: _Ctx) -> str:
        v = x(idx, ctx)
        if dt.is_bool:
            return logical_not(v) if op == "not" else v
        if dt.is_float:
            return round_float(_UNARY_FLOAT[op].format(v), dt)
        vt = value_type(dt)
        if op == "not":
            return (
                wrap_int(f"T.bitwise_not({v})", dt)
                if dt.is_signed
                else f"T.bitwise_and(T.bitwise_not({v}), {dt.code_mask})"
            )
        if op == "neg":
            return wrap_int(f"T.{vt}(0) - {v}", dt)
        return wrap_int(f"T.Select({v} < 0, T.{vt}(0) - {v}, {v})", dt)

    return fn


@rule(I.Binary)
def _binary(e: _Emitter, inst: I.Binary, t: Tile) -> IndexFn:
    dt, op = inst.a.dtype, inst.op
    if (dt.is_float and e.gpu and op in ("max", "min")) or _template_float(dt):  # forms that read operands again
        e.repeatable(inst.a)
        e.repeatable(inst.b)
    fa, fb = e.get(inst.a), e.get(inst.b)
    vt = value_type(dt)

    def fn(idx: tuple[str, ...], ctx: _Ctx) -> str:
        a, b = fa(idx, ctx), fb(idx, ctx)
        if op in _CMP:
            if dt.is_float:
                return float_compare(op, a, b) if inst.a is not inst.b else float_compare(op, a, a)
            return f"({a} {_CMP[op]} {b})"
        if dt.is_bool:
            return {"and": f"({a} and {b})", "or": f"({a} or {b})", "xor": f"({a} != {b})"}[op]
        if dt.is_float:
            arith = {"add": f"{a} + {b}", "sub": f"{a} - {b}", "mul": f"{a} * {b}", "div": f"{a} / {b}",
                     "max": float_extreme("max", a, b, e.cpu), "min": float_extreme("min", a, b, e.cpu)}  # fmt: skip
            if op not in arith:
                raise BackendError(f"tvm backend: {op} on float tiles")
            return round_float(f"({arith[op]})", dt)
        if op in ("floordiv", "div"):
            return wrap_int(f"T.floordiv({a}, {b})", dt)
        if op == "mod":
            return wrap_int(f"T.floormod({a}, {b})", dt)
        if op == "shl":
            return wrap_int(
                f"T.Select({b} >= {dt.bits}, T.{vt}(0), T.shift_left({a}, T.max(T.min({b}, {dt.bits - 1}), 0)))", dt
            )
        if op == "shr":
            neg = f"T.Select({a} < 0, T.{vt}(-1), T.{vt}(0))"
            return f"T.Select({b} >= {dt.bits}, {neg}, T.shift_right({a}, T.max(T.min({b}, {dt.bits - 1}), 0)))"
        arith = {"add": f"{a} + {b}", "sub": f"{a} - {b}", "mul": f"{a} * {b}", "max": f"T.max({a}, {b})",
                 "min": f"T.min({a}, {b})", "and": f"T.bitwise_and({a}, {b})", "or": f"T.bitwise_or({a}, {b})",
                 "xor": f"T.bitwise_xor({a}, {b})"}  # fmt: skip
        return wrap_int(f"({arith[op]})", dt)

    return fn


@rule(I.Where)
def _where(e: _Emitter, inst: I.Where, t: Tile) -> IndexFn:
    c, a, b = e.get(inst.cond), e.get(inst.a), e.get(inst.b)
    return lambda idx, ctx: f"T.Select({c(idx, ctx)}, {a(idx, ctx)}, {b(idx, ctx)})"


@rule(I.Reduce)
def _reduce(e: _Emitter, inst: I.Reduce, t: Tile) -> None:
    x, dt, ax = e.get(inst.x), inst.x.dtype, inst.axis
    out = e.alloc(t)
    n = inst.x.shape[ax]
    vt = value_type(dt)
    if inst.op == "sum":
        init = e.const(0, dt)
    elif dt.is_float:
        init = f32(-math.inf if inst.op == "max" else math.inf)
    else:
        init = f"T.{vt}({int(dt.min if inst.op == 'max' else dt.max)})"
    r = e.fresh("r")
    outer = tuple(s for d, s in enumerate(inst.x.shape) if d != ax)

    def full_index(idx: tuple[str, ...]) -> tuple[str, ...]:
        rest = list(idx)
        return (*rest[:ax], r, *rest[ax:])

    def out_index(idx: tuple[str, ...]) -> str:
        if inst.keepdims:
            lst = list(idx)
            lst.insert(ax, "0")
            return ", ".join(lst) or "0"
        return ", ".join(idx) or "0"

    def combine(cur: str, v: str) -> str:
        if inst.op == "sum":
            return f"{cur} + {v}" if dt.is_float else wrap_int(f"({cur} + {v})", dt)
        return reduce_extreme(inst.op, cur, v) if dt.is_float else f"T.{inst.op}({cur}, {v})"

    vec = int(e.opt["vector"])
    if (
        e.cpu
        and ax == len(inst.x.shape) - 1
        and n % vec == 0
        and n >= int(e.opt["reduce_vectors"]) * vec
        and dt.bits <= 32
    ):
        _reduce_lanes(e, inst, x, out, outer, init, combine, out_index)
    elif e.gpu:  # a thread per kept element, the reduced axis in its own loop, in a register
        red = e.fresh("red")
        rounded = inst.op == "sum" and dt.is_float and dt.name != "float32"

        # a float max / min reads the element twice (`float_extreme`): through a register
        val = e.fresh("val") if dt.is_float and inst.op != "sum" else None

        def per_thread(idx: tuple[str, ...], ctx: _Ctx) -> list[str]:
            total = round_float(f"{red}[0]", dt) if rounded else f"{red}[0]"
            element = x(full_index(idx), ctx)
            step = [f"    {red}[0] = {combine(f'{red}[0]', element)}"]
            if val is not None:
                step = [f"    {val}[0] = {element}", f"    {red}[0] = {combine(f'{red}[0]', f'{val}[0]')}"]
            return [
                f'{red} = T.decl_buffer((1,), "{buffer_type(dt)}", scope="local")',
                *([f'{val} = T.decl_buffer((1,), "float32", scope="local")'] if val else []),
                f"{red}[0] = {init}",
                f"for {r} in T.serial({n}):",
                *step,
                f"{out}[{out_index(idx)}] = {total}",
            ]

        e.gpu_nest(outer, per_thread)
        e.bind_buffer(t, out)
        return None
    else:
        e.nest(outer, lambda idx, ctx: [f"{out}[{out_index(idx)}] = {init}"])
        # a float max / min: plain max / min on the chain and the last NaN element kept beside it, merged after
        # the loop (as in `_reduce_lanes`; decode attention's score maxima, 16 per row)
        nan = e.fresh("nan") if dt.is_float and inst.op != "sum" else None
        elem = e.fresh("elem")
        shape = ", ".join(str(s) for s in outer) or "1"
        if nan is not None:
            e.line(f'{nan} = T.decl_buffer(({shape},), "float32", {e.scope})')
            e.line(f'{elem} = T.decl_buffer(({shape},), "float32", {e.scope})')
            e.nest(outer, lambda idx, ctx: [f"{nan}[{', '.join(idx) or '0'}] = {f32(0)}"])

        def step(idx: tuple[str, ...], ctx: _Ctx) -> list[str]:
            acc, value = f"{out}[{out_index(idx)}]", x(full_index(idx), ctx)
            if nan is None:
                return [f"{acc} = {combine(acc, value)}"]
            at, seen = f"{elem}[{', '.join(idx) or '0'}]", f"{nan}[{', '.join(idx) or '0'}]"
            keep = f"{seen} = T.Select(T.isnan({at}), {at}, {seen})"
            return [f"{at} = {value}", f"{acc} = T.{inst.op}({acc}, {at})", keep]

        e.line(f"for {r} in T.serial({n}):")
        e.depth += 1
        e.nest(outer, step)
        e.depth -= 1
        if nan is not None:

            def merge(idx: tuple[str, ...], ctx: _Ctx) -> list[str]:
                acc, seen = f"{out}[{out_index(idx)}]", f"{nan}[{', '.join(idx) or '0'}]"
                return [f"{acc} = T.Select(T.isnan({seen}), {seen}, {acc})"]

            e.nest(outer, merge)
    if inst.op == "sum" and dt.is_float and dt.name != "float32":
        e.nest(
            t.shape,
            lambda idx, ctx: [
                f"{out}[{', '.join(idx) or '0'}] = {round_float(f'{out}[{chr(44).join(idx) or chr(48)}]', dt)}"
            ],
        )
    e.bind_buffer(t, out)
    return None


def _reduce_lanes(
    e: _Emitter,
    inst: I.Reduce,
    x: IndexFn,
    out: str,
    outer: tuple[int, ...],
    init: str,
    combine: Callable[[str, str], str],
    out_index: Callable[[tuple[str, ...]], str],
) -> None:
    """A reduction along the last axis on a CPU in `vector` lane partials: lane l combines elements l,
    l + vector, ... (one vector op per `vector` elements), then the lanes are folded in order. The serial
    loop it replaces was one dependent scalar op per element (a 128-element sum: ~400 cycles of add latency
    per GEMV group). Sums are reassociated (fp32 partial sums; max/min are exact in any order)."""
    vec, n = int(e.opt["vector"]), inst.x.shape[-1]
    width = math.prod(outer) if outer else 1
    lanes = e.fresh("lanes")
    e.line(f'{lanes} = T.decl_buffer(({width * vec},), "{buffer_type(inst.x.dtype)}", {e.scope})')
    ro, rl = e.fresh("ro"), e.fresh("rl")
    outer_vars = [e.fresh(f"o{d}") for d in range(len(outer))]
    flat = "0"
    for v, s in zip(outer_vars, outer):
        flat = v if flat == "0" else f"({flat}) * {s} + {v}"

    few = width <= 8  # a few rows (decode attention's 4 heads): unrolled, so the lane partials stay in registers

    def over_outer(lines: list[str]) -> None:
        for v, s in zip(outer_vars, outer):
            e.line(f"for {v} in T.unroll({s}):" if few else f"for {v} in T.serial({s}):")
            e.depth += 1
        for ln in lines:
            e.line(ln)
        e.depth -= len(outer)

    slot = f"{lanes}[({flat}) * {vec} + {rl}]"
    over_outer([f"for {rl} in T.vectorized({vec}):", f"    {slot} = {init}"])

    # a float max / min keeps NaN out of the loop-carried chain: the lanes take plain max / min (`T.max`:
    # vmaxps, which lets a NaN element in but not keep it) and a second set of lanes keeps the last NaN
    # element seen (an unordered compare of the element and a masked move, off the chain); the two fold
    # separately (the NaN lanes hold NaN or 0: their sum is NaN exactly when one is). A NaN-propagating select
    # as the step (`reduce_extreme`, in the lane loop and the fold) made the max over [4, 128] tiles of a
    # 16 x 4096 matrix 2.1x slower (9.4 against 4.4 us, one thread); this form 1.2x (5.4 us). The element goes
    # through a vector of its own (registers): repeated in the step, TVM's CSE bound it inside the vector
    # loop, which TVM then did not vectorize (gathers)
    nan = e.fresh("nan") if inst.x.dtype.is_float and inst.op != "sum" else None
    elem = e.fresh("elem")
    if nan is not None:
        e.line(f'{nan} = T.decl_buffer(({width * vec},), "float32", {e.scope})')
        e.line(f'{elem} = T.decl_buffer(({vec},), "float32", {e.scope})')
        over_outer([f"for {rl} in T.vectorized({vec}):", f"    {nan}[({flat}) * {vec} + {rl}] = {f32(0)}"])

    def accumulate(r_o: str, r_l: str, value: str) -> None:
        at = f"{lanes}[({flat}) * {vec} + {r_l}]"
        step = [f"        {at} = {combine(at, value)}"]
        if nan is not None:
            v, seen = f"{elem}[{r_l}]", f"{nan}[({flat}) * {vec} + {r_l}]"
            step = [
                f"        {v} = {value}",
                f"        {at} = T.{inst.op}({at}, {v})",
                f"        {seen} = T.Select(T.isnan({v}), {v}, {seen})",
            ]
        over_outer([f"for {r_o} in T.serial({n // vec}):", f"    for {r_l} in T.vectorized({vec}):", *step])

    # like `nest`: unchecked loads under the operands' uniform in-bounds guards, the checked form (clamped
    # addresses, selects: LLVM scalarizes it, one element at a time) only for a tile that crosses a tensor edge
    # (the a8 activation quantizer's two reductions ran scalar on every group: 11-16 us for K = 2048, now 3-4)
    probe = _Ctx(checked=False)
    fast = x((*outer_vars, f"{ro} * {vec} + {rl}"), probe)
    if not probe.guards and not probe.data_dependent:
        accumulate(ro, rl, fast)
    else:
        if not probe.data_dependent:
            e.line(f"if {' and '.join(sorted(set(probe.guards)))}:")
            e.depth += 1
            accumulate(ro, rl, fast)
            e.depth -= 1
            e.line("else:")
            e.depth += 1
        r_o, r_l = e.fresh("ro"), e.fresh("rl")
        accumulate(r_o, r_l, x((*outer_vars, f"{r_o} * {vec} + {r_l}"), _Ctx(checked=True)))
        if not probe.data_dependent:
            e.depth -= 1
    dst = f"{out}[{out_index(tuple(outer_vars))}]"
    if nan is not None:
        # the NaN lanes hold NaN or 0: their sum is NaN exactly when one is (a float max / min row is NaN then),
        # so both fold with plain ops (a NaN-propagating select in the fold made the quantizer 1.7x slower)
        step = f"T.{inst.op}"
        seen = f"{nan}[({flat}) * {vec}]"
        result = f"T.Select(T.isnan({seen}), {seen}, {lanes}[({flat}) * {vec}])"
    else:
        step, seen, result = "", "", f"{lanes}[({flat}) * {vec}]"

    if vec & (vec - 1):
        folds = [f"{dst} = {lanes}[({flat}) * {vec}]", f"for {rl} in T.serial(1, {vec}):"]
        if nan is None:
            over_outer([*folds, f"    {dst} = {combine(dst, slot)}"])
            return
        tail = f"{nan}[({flat}) * {vec} + {rl}]"
        over_outer([*folds, f"    {dst} = {step}({dst}, {slot})", f"    {seen} = {seen} + {tail}"])
        over_outer([f"{dst} = T.Select(T.isnan({seen}), {seen}, {dst})"])
        return
    # the lanes folded as a tree, half onto half (log2(vector) vector ops; in order they were vector - 1 dependent
    # scalar ops: decode attention's softmax reduces 4 rows of 16 scores on every tile)
    fold: list[str] = []
    h = vec // 2
    while h >= 1:
        lo, hi = f"{lanes}[({flat}) * {vec} + {rl}]", f"{lanes}[({flat}) * {vec} + {h} + {rl}]"
        fold.append(f"for {rl} in T.vectorized({h}):" if h > 1 else f"for {rl} in T.serial(1):")
        fold.append(f"    {lo} = {step}({lo}, {hi})" if nan is not None else f"    {lo} = {combine(lo, hi)}")
        if nan is not None:
            nlo, nhi = f"{nan}[({flat}) * {vec} + {rl}]", f"{nan}[({flat}) * {vec} + {h} + {rl}]"
            fold.append(f"    {nlo} = {nlo} + {nhi}")
        h //= 2
    over_outer([*fold, f"{dst} = {result}"])


@rule(I.Broadcast)
def _broadcast(e: _Emitter, inst: I.Broadcast, t: Tile) -> IndexFn:
    x, src = e.get(inst.x), inst.x.shape
    return lambda idx, ctx: x(tuple("0" if s == 1 and n != 1 else i for i, s, n in zip(idx, src, inst.shape)), ctx)


@rule(I.Reshape)
def _reshape(e: _Emitter, inst: I.Reshape, t: Tile) -> IndexFn:
    x, src, dst = e.get(inst.x), inst.x.shape, inst.shape

    def fn(idx: tuple[str, ...], ctx: _Ctx) -> str:
        flat = "0"
        for i, n in zip(idx, dst):
            flat = f"({flat}) * {n} + {i}" if flat != "0" else i
        out = []
        stride = 1
        for n in reversed(src):
            out.append(f"T.floormod(T.floordiv({flat}, {stride}), {n})" if stride > 1 else f"T.floormod({flat}, {n})")
            stride *= n
        return x(tuple(reversed(out)), ctx)

    return fn


@rule(I.Transpose)
def _transpose(e: _Emitter, inst: I.Transpose, t: Tile) -> IndexFn:
    x, perm = e.get(inst.x), inst.perm

    def fn(idx: tuple[str, ...], ctx: _Ctx) -> str:
        src = [""] * len(perm)
        for out_axis, in_axis in enumerate(perm):
            src[in_axis] = idx[out_axis]
        return x(tuple(src), ctx)

    return fn


assert set(_RULES) == set(I.INSTRUCTIONS), "every IR instruction needs a tvm lowering rule"
assert set(STATEMENTS) == set(_STMT_RULES), "every IR statement needs a tvm lowering rule"


def lower(program: Program, options: Mapping[str, Any] | None = None, cpu: bool = True) -> LoweredTir:
    """TVMScript text of `program` (PrimFunc `main`) and its argument order; `cpu` False for a CUDA target
    (blocks and threads bound, tile buffers in shared memory: `_Emitter.gpu_nest`)."""
    return _Emitter(program, options or {}, cpu).emit()


__all__ = ["OPTIONS", "LoweredTir", "check_options", "lower"]
