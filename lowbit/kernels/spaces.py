"""Search spaces of the kernel library: `space(kernel_name, backend) -> SearchSpace`.

Constants (change the IR): BM, BN, BK. Options (do not): Triton `num_warps`, `num_stages`; TVM `vector`,
`parallel` ("fused": one parallel loop over the grid, "none": serial — the values lowbit.codegen.tvm
accepts), `unroll`; the reference interpreter has none; the GEMVs on Triton also `split_k` (every backend's
option: the K loop split over more programs, `lowbit.ir.passes.split_k`). Constraints return a reason naming the value:

* split_k leaves no split without a K step (split_k <= ceil(K / BK));
* BK is a multiple of the group size G or divides it (a K tile holds whole groups or sits in one group);
* BK is a multiple of the codes per 32-bit word (32/bits, the row layout packs along K), so a K tile is
  whole words; BN needs no packing constraint in the row layout (N is not packed). For 3/5/6/7 bits
  (⌊32/bits⌋ = 10/6/5/4 codes per word) no power-of-two BK is whole words, so the constraint is waived and
  tiles share boundary words (a backend must load them unaligned);
* Triton only: the dot's K tile (a group slice in the GEMV / W4A8 kernels) is >= 16 (fp16/bf16) or >= 32
  (int8) — the tensor-core minimum — and the software-pipeline buffers fit shared memory:
  stages·(BM·BK·abytes + BK·BN·bits/8) <= 227 KB (H100/H200 per block).
The `problem` mapping of a constraint holds the kernel's fixed values: M, N, K, G, wdtype, adtype.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from typing import Any

from lowbit.codegen.backend import Config
from lowbit.codegen.tune.space import Constraint, SearchSpace
from lowbit.dtypes import dtype
from lowbit.kernels.gemv_fma import magic_offset

SHARED_MEMORY_BYTES = 227 * 1024
KERNELS = ("quantized_gemm", "quantized_gemv", "w4a8_gemm_per_group", "w4a8_gemm_per_channel")
FMA = "quantized_gemv_fma"  # the dot-free GEMV (lowbit.kernels.gemv_fma): asked for by name, M <= 4
FMA_ACCUMULATORS = 64  # fp32 accumulators per thread the FMA GEMV may keep (BM · BN · K sub-step / threads)

# tile axes per kernel; GEMV keeps BM small (M <= 16; 64: the TVM GEMM form past 16 rows) and walks K in long steps
_TILES: dict[str, dict[str, tuple[int, ...]]] = {
    "quantized_gemm": {"BM": (16, 32, 64, 128), "BN": (32, 64, 128), "BK": (32, 64, 128)},
    "quantized_gemv": {"BM": (1, 4, 16, 64), "BN": (16, 32, 64, 128, 256), "BK": (32, 64, 128, 256)},
    "w4a8_gemm_per_group": {"BM": (16, 32, 64, 128), "BN": (32, 64, 128), "BK": (32, 64, 128)},
    "w4a8_gemm_per_channel": {"BM": (16, 32, 64, 128), "BN": (32, 64, 128), "BK": (32, 64, 128)},
    # FOLD: the dot-free GEMV's folded form (`gemv_fma`: 4 consecutive k a slot, offsets once a group)
    FMA: {"BM": (1, 2, 4), "BN": (16, 32, 64, 128), "BK": (32, 64, 128, 256), "FOLD": (0, 4)},
}
_DEFAULT_TILES: dict[str, dict[str, int]] = {
    "quantized_gemm": {"BM": 16, "BN": 32, "BK": 64},
    "quantized_gemv": {"BM": 16, "BN": 32, "BK": 128},
    "w4a8_gemm_per_group": {"BM": 16, "BN": 32, "BK": 128},
    "w4a8_gemm_per_channel": {"BM": 16, "BN": 32, "BK": 128},
    FMA: {"BM": 1, "BN": 32, "BK": 128, "FOLD": 0},
}
# options a kernel adds on a backend: the FMA GEMV transposes its codes tile to its accumulator's [BN, K]
# orientation, free only when the packed codes are split inside each thread (lowbit.kernels.gemv_fma)
# The GEMVs on a GPU also take split-K (`lowbit.ir.passes.split_k`, the compile option split_k): at M <= 16 an
# 8192-column layer in 32-column tiles is 256 programs, two per H200 SM; splitting K multiplies the grid.
SPLITS = (1, 2, 4, 8)
# The CPU GEMVs' (M <= 16) software prefetch of their weight stream aims at L2 (prefetcht1), not L1: session 49,
# 4096² int4 g128, a ring of 30 weights streamed from DRAM, 2 threads, 8 alternating rounds of the default
# config against it with only this option changed: bf16 x M = 1 0.81-0.92x the time in three runs (the memory
# rate moved 1.6x between them), M = 4 1.00x, M = 16 0.95x; fp32 x M = 1 0.96x (int4), 0.98x (int3)
GEMV_PREFETCH_LOCALITY = 2
_KERNEL_OPTIONS: dict[tuple[str, str], dict[str, tuple[Any, ...]]] = {
    (FMA, "triton"): {"codes_last": (True,), "split_k": SPLITS},
    ("quantized_gemv", "triton"): {"split_k": SPLITS},
    ("quantized_gemv", "tvm"): {"prefetch_locality": (GEMV_PREFETCH_LOCALITY, 3)},
}
# constants a kernel adds on a backend: the GEMV's swapped dot (yᵀ = Wᵀ·xᵀ, `lowbit.kernels.gemv` SWAP) is a
# tensor-core form (sm_90 warpgroup MMAs take the wide operand on the left); its first value is the default
_KERNEL_CONSTANTS: dict[tuple[str, str], dict[str, tuple[Any, ...]]] = {
    ("quantized_gemv", "triton"): {"SWAP": (0, 1)},
}
_OPTIONS: dict[str, dict[str, tuple[Any, ...]]] = {
    "reference": {},
    "triton": {"num_warps": (4, 8), "num_stages": (2, 3, 4)},
    "tvm": {"vector": (8, 16, 32), "parallel": ("fused", "none"), "unroll": (1, 4, 8)},
}
_DEFAULT_OPTIONS: dict[str, dict[str, Any]] = {
    "reference": {},
    "triton": {"num_warps": 4, "num_stages": 3},
    "tvm": {"vector": 16, "parallel": "fused", "unroll": 8},
}


def _group(problem: Mapping[str, Any]) -> int:
    g = problem.get("G", -1)
    return -1 if g is None else int(g)


def _bits(problem: Mapping[str, Any], kernel: str) -> int:
    default = "uint4" if kernel.startswith("w4a8") else "int4"
    return dtype(problem.get("wdtype", default)).bits


def _dot_k(config: Config, problem: Mapping[str, Any], kernel: str) -> int:
    # the K extent of one T.dot: GEMV and per-group W4A8 dot one group (slice) at a time
    bk, g = config.constant_dict["BK"], _group(problem)
    if kernel in ("quantized_gemv", "w4a8_gemm_per_group", FMA) and g != -1:
        return min(bk, g)
    return bk


def group_fits(kernel: str) -> Constraint:
    def check(config: Config, problem: Mapping[str, Any]) -> str | None:
        bk, g = config.constant_dict["BK"], _group(problem)
        if g != -1 and g >= int(problem.get("K") or 0) > 0:  # one group spans all of K (W4A8 per channel, G = K)
            # any K step up to G lies inside it (a step past G would be one group of G rows: not a power of two)
            return None if bk <= g else f"BK={bk} exceeds the single group G={g} (= K); use BK <= {g}"
        if g != -1 and bk % g and g % bk:
            return f"BK={bk} is neither a multiple nor a divisor of the group size G={g}; use BK in {{{g}, {2 * g}}}"
        return None

    return check


def whole_words(kernel: str) -> Constraint:
    def check(config: Config, problem: Mapping[str, Any]) -> str | None:
        bits = _bits(problem, kernel)
        bk, per_word = config.constant_dict["BK"], 32 // bits
        if 32 % bits == 0 and bk % per_word:
            return f"BK={bk} is not a multiple of the {per_word} codes per 32-bit word; a K tile must be whole words"
        return None

    return check


def triton_dot_k(kernel: str) -> Constraint:
    def check(config: Config, problem: Mapping[str, Any]) -> str | None:
        k = _dot_k(config, problem, kernel)
        need = 32 if kernel.startswith("w4a8") else 16
        if k < need:
            operand = "int8" if need == 32 else "fp16/bf16"
            return f"the dot's K tile is {k} < {need}, the tensor-core minimum for {operand}; use a larger BK or G"
        return None

    return check


def triton_shared_memory(kernel: str) -> Constraint:
    def check(config: Config, problem: Mapping[str, Any]) -> str | None:
        c, o = config.constant_dict, config.option_dict
        stages = int(o.get("num_stages", 1))
        abytes = 1 if kernel.startswith("w4a8") else max(dtype(problem.get("adtype", "float16")).bits // 8, 1)
        need = stages * (c["BM"] * c["BK"] * abytes + c["BK"] * c["BN"] * _bits(problem, kernel) // 8)
        if need > SHARED_MEMORY_BYTES:
            return (
                f"{stages} stages × (BM·BK·{abytes} + BK·BN·bits/8) = {need} bytes exceeds {SHARED_MEMORY_BYTES} "
                f"bytes of shared memory; fewer stages or smaller tiles"
            )
        return None

    return check


def split_fits(kernel: str) -> Constraint:
    def check(config: Config, problem: Mapping[str, Any]) -> str | None:
        split = int(config.option_dict.get("split_k", 1))
        steps = math.ceil(int(problem.get("K") or 0) / config.constant_dict["BK"])
        if split > 1 and steps < split:
            k = problem.get("K")
            return f"split_k={split} leaves splits without a K step (K={k} is {steps} steps of BK); use <= {steps}"
        return None

    return check


def fma_accumulators(bm: int, bn: int, step: int, warps: int, fold: int = 0) -> int:
    """fp32 accumulators per thread of the FMA GEMV: BM rows of a [BN, K sub-step] tile over the block's threads
    (the folded form, `fold` > 0: a [BN, K sub-step / fold] tile)."""
    return bm * bn * (step // max(1, fold)) // (32 * int(warps))


def fma_registers(kernel: str) -> Constraint:
    def check(config: Config, problem: Mapping[str, Any]) -> str | None:
        c = config.constant_dict
        warps = config.option_dict.get("num_warps", 4)
        wdtype = problem.get("wdtype", "int4")
        fold = int(c.get("FOLD", 0)) if magic_offset(wdtype) is not None else 0  # float codes run unfolded
        if fold and c["BM"] > 1:
            return (
                f"FOLD={fold} with BM={c['BM']}: the folded form repeats its sums per row (sm_90, M = 4: twice the "
                "instructions a code); use FOLD 0 for more than one row"
            )
        held = fma_accumulators(c["BM"], c["BN"], _dot_k(config, problem, kernel), warps, fold)
        if held > FMA_ACCUMULATORS:
            return (
                f"BM·BN·K step / threads = {held} fp32 accumulators per thread > {FMA_ACCUMULATORS} (they would "
                "spill); use a smaller BN or BK, or more warps"
            )
        return None

    return check


def space(kernel: str, backend: str) -> SearchSpace:
    """The search space of library kernel `kernel` (a name in KERNELS, or the Kernel itself) on `backend`."""
    kernel = getattr(kernel, "name", kernel)
    if kernel not in _TILES:
        raise ValueError(f"kernel {kernel!r} has no search space; use one of {[*KERNELS, FMA]}")
    if backend not in _OPTIONS:
        raise ValueError(f"backend {backend!r} has no options table; use one of {sorted(_OPTIONS)}")
    constraints: tuple[Constraint, ...] = (group_fits(kernel), whole_words(kernel))
    if backend == "triton" and kernel == FMA:  # no tensor-core dot: its limit is the register file
        constraints += (fma_registers(kernel), triton_shared_memory(kernel))
    elif backend == "triton":
        constraints += (triton_dot_k(kernel), triton_shared_memory(kernel))
    extra = _KERNEL_OPTIONS.get((kernel, backend), {})
    constants = _KERNEL_CONSTANTS.get((kernel, backend), {})
    if "split_k" in extra:
        constraints += (split_fits(kernel),)
    return SearchSpace.make(
        {**_TILES[kernel], **constants},
        {**_OPTIONS[backend], **extra},
        default={
            **_DEFAULT_TILES[kernel],
            **{k: v[0] for k, v in constants.items()},
            **_DEFAULT_OPTIONS[backend],
            **{k: v[0] for k, v in extra.items()},
        },
        constraints=constraints,
    )


# Float weight formats whose GEMV dot the TVM backend runs only as the table decode of one row block (no GEMM
# form, no bit-twiddled decode): with tm < BM their dot took the generic loops, 10-30x slower. One row block
# (tm = BM, BN = 16 accumulator vectors / BM) instead, measured on the 2-core Xeon VM (AVX-512), 4096x4096
# g128, hot, 2 threads: fp5_e2m2 M = 4 / 8 / 16 23.95 / 24.75 / 25.85 -> 0.88 / 1.72 / 4.20 ms, fp6_e3m2
# 8.62 / 6.71 / 8.05 -> 0.97 / 1.72 / 4.26, fp3_e1m1 23.7 / 27.5 / 26.0 -> 0.91 / 1.65 / 5.69 (fp7_e4m2 has
# a faster form: one row block moved it by 0.94-1.17x, so it keeps two). Integer codes of 2, 3, 5 and 6 bits
# took 4 rows per block at M = 4 (int2 1.77 -> 0.71 ms, int3 1.83 -> 1.30, int5 1.40 -> 0.92, int6 1.47 ->
# 1.20; 5 bits still do, 2, 3 and 6 take the AMX tile on AMX machines now: `_amx_at_four`; at M = 8 and 16
# two rows stay faster, 4-, 7- and 8-bit codes too; fp2 has a faster form with two rows at M = 16: 3.21 vs
# 6.35 ms). Since the decoded GEMM form (lowbit/codegen/tvm README), 16 rows take it
# (tm 2): fp32 x, hot, 2 threads, alternating: fp6_e3m2 M = 16 3.64 -> 2.38 ms, fp3_e1m1 3.98 -> 2.20; at M = 4
# and 8 the table walk stays faster (fp6 0.79 / 1.40 against 1.20 / 1.57 ms).
TABLE_ONLY_FLOAT_BITS = (3, 5, 6)


def _cpu_default(kernel: str, problem: Mapping[str, Any]) -> Config | None:
    """The TVM (CPU) default, sized to the register file: a dot keeps tm accumulator rows of BN / lanes
    vectors in registers, so tm · BN / lanes is held at 8 (16 registers on AVX2: the rest hold the broadcast
    activations and the unpacked weights). M = 1 GEMV: 8 vectors of columns, tm 1; other GEMVs (rows up to
    16, the tile as tall as M rounded up to a power of two) and GEMMs (64-row tiles): 4 vectors, tm 2. One
    group per K step (GEMV), K steps of 64 (GEMM). Measured on the AVX2 VM, 4096x4096 int4 g128, warm, 2
    threads, against the former 64-column / 16-lane / tm 4 default (32 accumulators, spilled): M = 1 0.70x the
    time, M = 4 0.47x, M = 16 0.44x, M = 64 0.38x."""
    m, g = int(problem.get("M", 16) or 16), _group(problem)
    from lowbit.artifact.fingerprint import fp32_lanes

    lanes = fp32_lanes()
    opts = {**_DEFAULT_OPTIONS["tvm"], "vector": lanes}
    if kernel == "quantized_gemv":
        bm = _row_tile(m, 16)
        wd = dtype(problem.get("wdtype", "int4"))
        amx_rows = _amx_bf16_rows(problem)
        amx_tile = 1 < m <= 16 and amx_rows and (m > 4 or wd.bits == 4 or wd.bits > 6 or _amx_at_four(m, wd))
        if amx_tile:
            bm = 16  # one AMX tile of rows: the GEMM form on AMX-BF16 (`_amx_bf16_rows`)
        bk = g if g in (32, 64, 128, 256) else 128
        if m > 16:  # the dot's GEMM form (lowbit.ops.linear.gemv_serves)
            tall = _pair_dot(problem) or amx_rows
            return Config.make(
                {"BM": gemm_row_tile(m, tall), "BN": gemm_column_tile(int(problem["N"])), "BK": bk},
                {**opts, "tm": 2},
            )
        bn, tm = (8 * lanes, 1) if bm == 1 else (4 * lanes, 2)
        # a GEMM form's tile (the AMX tile of `_amx_bf16_rows`, or 16 rows of AVX-512's decoded form) keeps tm 2;
        # smaller tiles of the table decode take their measured register blocks
        walk = not (amx_tile or (bm == 16 and lanes == 16))
        if walk and bm > 1 and wd.is_float and wd.bits in TABLE_ONLY_FLOAT_BITS:
            bn, tm = lanes * max(1, 16 // bm), bm  # one row block: the table decode (TABLE_ONLY_FLOAT_BITS)
        elif walk and bm == 4 and wd.bits in (2, 3, 5, 6):
            tm = 4
        if bm == 1 and _pair_dot(problem) and int(problem["N"]) % (2 * bn) == 0:
            bn *= 2  # the pair dot: 16 accumulators (`_pair_dot`)
        # the weight stream's software prefetch aims at L2 (GEMV_PREFETCH_LOCALITY)
        return Config.make(
            {"BM": bm, "BN": bn, "BK": bk}, {**opts, "tm": tm, "prefetch_locality": GEMV_PREFETCH_LOCALITY}
        )
    if kernel == "quantized_gemm":
        bk = 64 if g == -1 or g >= 64 else g
        return Config.make({"BM": 64, "BN": 4 * lanes, "BK": bk}, {**opts, "tm": 2})
    if kernel == FMA:  # a GPU form; on the CPU it runs (generic loops), it is not the CPU's fast path
        return Config.make({"BM": _fma_rows(m), "BN": 4 * lanes, "BK": g if g in (32, 64, 128) else 64}, opts)
    return None


def _amx_at_four(m: int, wd: Any) -> bool:
    """Whether M = 4 rows of these codes take the 16-row AMX tile (the decoded GEMM form, decoded and multiplied
    in parts) rather than the table walk of one 4-row block: 2-, 3- and 6-bit integer codes. Measured on the
    2-core Xeon VM, 4096² g128, bf16 x, weights streamed, 2 threads, one ring, alternating: int3 0.785 -> 0.565
    ms, int2 0.506 -> 0.389, int6 1.86 -> 1.40; int5 0.757 against 0.876 (its walk stays), and at M = 2 the walk
    stays faster for int2 / int3 / int5 (0.291 / 0.530 / 0.612 against 0.368 / 0.639 / 0.802 ms)."""
    return m == 4 and not wd.is_float and wd.bits in (2, 3, 6)


def _row_tile(m: int, most: int) -> int:
    """A GEMV's row tile for M rows: M rounded up to a power of two, at most `most`."""
    return min(most, 1 << max(0, (m - 1).bit_length()))


def _fma_rows(m: int) -> int:
    return _row_tile(m, 4)


def pair_dot_runs(adtype: str, bits: int) -> bool:
    """Whether the TVM GEMV multiplies `bits`-wide codes and `adtype` x on the vdpbf16ps pair dot here
    (lowbit/codegen/tvm README, "bf16 dot"): bf16 activations, 4-bit codes, a CPU with AVX-512 BF16. The
    weight's CPU copy then holds its codes in pair order (`ops.linear.cpu_weight`)."""
    from lowbit.artifact.fingerprint import isa_flags

    return adtype == "bfloat16" and bits == 4 and "avx512_bf16" in isa_flags()


def _pair_dot(problem: Mapping[str, Any]) -> bool:
    """Whether the GEMV's dot is the vdpbf16ps pair dot here (`pair_dot_runs`). At M = 1 its 256-column tiles keep
    16 accumulators (16 independent vdpbf16ps chains, one per column vector) where 128-column tiles keep 8. Weights
    streamed (a ring of copies), 2 threads, alternating in one process: 0.222 against 0.241-0.256 ms at 4096²,
    0.670-0.676 against 0.695-0.713 ms at 11008x4096 (the torch `sum` of the same bytes: 0.216 and 0.621 ms). The
    fp32 form spills there (0.40 against 0.24 ms), so it keeps 128."""
    return pair_dot_runs(str(problem.get("adtype")), _bits(problem, "quantized_gemv"))


def _amx_bf16_rows(problem: Mapping[str, Any]) -> bool:
    """Whether bf16 GEMVs of this weight run their GEMM forms on AMX-BF16 here (TVM's bf16_dot "auto" = "amx":
    the CPU has AMX-BF16 and AVX-512 BF16 and Linux grants the tile state): 4-bit codes through the pair dot
    (`_pair_dot`), codes of any other width up to 8 bits through the decoded GEMM form
    (`lowbit.codegen.tvm.lower._Emitter._dot_decoded_gemm`). Then 2-16 rows take one 16-row tile (rows past M
    are padding the store drops, and AMX's products cost little next to the decode; codes of <= 6 bits other
    than 4 from 5 rows: below, the table walk's few rows cost less than a 16-row tile's decode, 4096², hot:
    int3 M = 2 / 4 0.42 / 0.87 against 1.15 / 1.21 ms; int8 M = 2 / 4 on AMX 0.75 / 0.67 against 1.76 / 0.84),
    and more rows the tall tiles of `PAIR_GEMM_ROW_TILES`. Measured, 4096², hot, 2 threads, alternating: int4
    M = 2 0.45 -> 0.41 ms, M = 3 0.98 -> 0.43, M = 4 0.80 -> 0.44, M = 8 1.44 -> 0.52; int8 M = 256 with 256-row
    tiles 5.28 against 6.09 ms with 128."""
    from lowbit.artifact.fingerprint import isa_flags

    flags = isa_flags()
    bf16 = problem.get("adtype") == "bfloat16" and "avx512_bf16" in flags and "amx_bf16" in flags
    if not (bf16 and _bits(problem, "quantized_gemv") <= 8):
        return False
    from lowbit.codegen.tvm.runtime import amx_permitted

    return amx_permitted()


# the GEMV's GEMM form's row tiles (past 16 rows) and their relative time per row (taller tiles decode each
# weight tile for more rows). Measured, 4096² int4, hot, 2 threads, 256-column tiles: M = 256 128-row tiles
# 848 GFLOP/s against 64-row 805 (1.05x); M = 64 64-row 784 against 32-row 713 (1.10x more). Three heights (four
# with the pair form's 256), so the kernels of every prompt length are at most three (four) compiles per weight shape.
GEMM_ROW_TILES = ((128, 1.0), (64, 1.05), (32, 1.15))
# the bf16 pair form also takes 256-row tiles: each weight tile's codes are decoded (and its scales read) once
# per row tile, so half as often as with 128 rows. Measured (session 28), weights in a ring, 2 threads,
# alternating in one process, M = 256: 11008x4096 32.5 against 35.3 ms, 4096² 12.8 against 13.9 ms (0.92x
# both). The fp32 form gained nothing there (52.6 against 50.2 ms, within noise), so it keeps 128.
PAIR_GEMM_ROW_TILES = ((256, 0.92), *GEMM_ROW_TILES)


def gemm_row_tile(m: int, pair: bool = False) -> int:
    """Row tile of the GEMV's GEMM form for M = m rows: of `GEMM_ROW_TILES` (`PAIR_GEMM_ROW_TILES` for the
    bf16 pair dot, `pair`), the tile with the fewest padded rows times the cost per row (M = 17: 32; M = 40:
    64; M = 100: 128; M = 256: 128, or 256 with the pair dot)."""
    tiles = PAIR_GEMM_ROW_TILES if pair else GEMM_ROW_TILES
    return min(tiles, key=lambda t: (math.ceil(m / t[0]) * t[0] * t[1], -t[0]))[0]


def gemm_column_tile(n: int) -> int:
    """Column tile of the GEMV's GEMM form past 16 rows: the widest of 256, 128, 64 dividing N (a ragged last
    column tile runs the generic loops), 64 when none does."""
    return next((bn for bn in (256, 128) if n % bn == 0), 64)


def native_triton() -> bool:
    """Whether Triton kernels compile for a GPU (False under TRITON_INTERPRET=1, the CPU interpreter)."""
    from lowbit.codegen.triton.runtime import INTERPRET

    return not INTERPRET


def _pow2_at_least(x: float) -> int:
    """The smallest power of two >= x (1 for x <= 1)."""
    return 1 << max(0, math.ceil(math.log2(x))) if x > 1 else 1


def _widest(columns: tuple[int, ...], tiles: Callable[[int], int], units: int) -> int:
    """The widest column tile whose grid gives every SM a program, else the narrowest."""
    return next((bn for bn in columns if tiles(bn) >= units), columns[-1])


def gpu_default(kernel: str, problem: Mapping[str, Any], units: int) -> Config | None:
    """The native Triton (CUDA) default, for a GPU of `units` SMs, used when nothing was tuned (`--tune`
    measures the space instead). Measured (benchmarks/gpu/sweep.py, H200, fp16 x, int4 / QoQ uint4 g128,
    weights streamed, CUDA graphs; benchmarks/README.md, session 30): over the grid BN x BK x warps x stages,
    the best config of every swept shape has the widest column tile that still gives every SM a program, 4
    warps (8 won only on tiles that were not the best, e.g. 64-column GEMV tiles at 8192², 45.5 against 64.5
    us; in W4A8 4 won everywhere, by up to 1.9x) and 3 stages (4 at most 3% faster, up to 1.6x slower). One
    shape was not covered by the sweep: its grid had no 32-column GEMM tile, so the 64-row GEMM at 8192² was
    best at 64 columns there (78.5 us); the rule's 32 columns ran 70.9 us in a later run:

    * GEMV (M <= 16): BN 32 at N = 8192 (41 us against 71 for the former 16-column default), 128 at 28672
      (109 against 158); K steps of 256 with 32 or 64 columns, 128 with 128 (one step's tile <= 16K codes);
    * GEMM (fp16 tensor-core dot of dequantized tiles): 64 rows to M = 64, else 128; K steps of 128 at 64
      rows (codes split by tl.join there, option codes_last) and 64 at 128 rows;
    * W4A8 (int8 dot): K steps of 128 (128 x 128 x 128 at M >= 1024: 456 / 1130 us against 712 / 2031 for the
      former 8-warp default)."""
    m, n = int(problem.get("M", 16) or 16), int(problem.get("N", 4096) or 4096)
    if kernel == "quantized_gemv":
        bn = _widest((128, 64, 32), lambda bn: math.ceil(n / bn), units)
        return Config.make({"BM": 16, "BN": bn, "BK": 256 if bn <= 64 else 128}, {"num_warps": 4, "num_stages": 3})
    if kernel == FMA:
        # not measured yet (no GPU since it was written): the GEMV's rule for the column tile (every SM a
        # program) among the widths whose shortest K sub-step (32) fits FMA_ACCUMULATORS, then the longest
        # sub-step that fits (<= 256); with groups, K steps of whole groups up to 256 (more loads in flight)
        # 128-column tiles take 8 warps: with 4, sm_90's loop converted x's row through shared memory (32
        # barriers per step, 9.0 SASS instructions per code against 6.6 for 8 warps; tests/kernels/test_gemv_fma.py)
        bm, g = _fma_rows(m), _group(problem)
        warps = {128: 8, 64: 4, 32: 4}
        fits = tuple(bn for bn in warps if fma_accumulators(bm, bn, 32, warps[bn]) <= FMA_ACCUMULATORS)
        bn = _widest(fits, lambda bn: math.ceil(n / bn), units)
        step = next(s for s in (256, 128, 64, 32) if fma_accumulators(bm, bn, s, warps[bn]) <= FMA_ACCUMULATORS)
        bk = step if g == -1 or step <= g else max(g, 256 // g * g)
        options = {"num_warps": warps[bn], "num_stages": 3, "codes_last": True}
        if bm == 1 and (g == -1 or g <= 128):
            # one row (decode): 64 columns and split-K to ~8 programs per SM. H200, 8192², int4 g128, streamed
            # (session 48, sweep.py --grid split): 26.6 us at BN 64 split 8 against 34.3 for the 32-column
            # unsplit rule above (torch bf16 37.0); BN 32 split 4 / 8: 27.7 / 27.6; splits past 8 slower
            # K steps of whole groups up to 256 (sub-steps of one group: 64 accumulators per thread), 128 per channel
            bn, tiles, bk = 64, math.ceil(n / 64), 128 if g == -1 else max(g, 256 // g * g)
            split = min(8, max(1, int(problem.get("K", 4096) or 4096) // bk), _pow2_at_least(8 * units / tiles))
            options = {"num_warps": 4, "num_stages": 3, "codes_last": True, "split_k": split}
        # FOLD 0: the folded form (FOLD 4, fewer instructions and registers a code on sm_90) is not yet timed
        return Config.make({"BM": bm, "BN": bn, "BK": bk, "FOLD": 0}, options)
    if kernel in KERNELS:
        bm = 64 if m <= 64 else 128
        bk = (128 if bm == 64 else 64) if kernel == "quantized_gemm" else 128
        bn = _widest((128, 64, 32), lambda bn: math.ceil(m / bm) * math.ceil(n / bn), units)
        options: dict[str, Any] = {"num_warps": 4, "num_stages": 3}
        if kernel == "quantized_gemm" and bm == 64:
            options["codes_last"] = True  # 57.1 against 70.9 us at 8192² M = 64 (lowbit.codegen.triton.lower)
            if bn == 32:  # the same program count in twice the columns and half of K each: 47.8 against 57.8
                bn, options["split_k"] = 64, 2  # us at 8192² M = 64 (H200, session 48, sweep.py --grid split)
        return Config.make({"BM": bm, "BN": bn, "BK": bk}, options)
    return None


def tvm_cuda_default(kernel: str, problem: Mapping[str, Any]) -> Config:
    """Tiles for the TVM backend's CUDA lowering (option target "cuda": every tile in a block's static shared
    memory, 48 KiB; tiles stored as float32 / int32): GEMV rows the next power of two >= M (<= 16) by 128 / BM
    columns (>= 32: every thread of 128 has an output), one group per K step (<= 128); GEMMs and W4A8 32 x 64
    tiles in K steps of 32 (the group when smaller). Reasoned from the shared-memory budget and the thread
    count, not measured (no GPU here); the first valid point of the space otherwise."""
    kernel = getattr(kernel, "name", kernel)
    m, g = int(problem.get("M", 16) or 16), _group(problem)
    group_k = g if g in (32, 64, 128) else (64 if g == -1 or g > 128 else 32)
    if kernel == "quantized_gemv":
        bm = _row_tile(m, 16)
        tiles = {"BM": bm, "BN": max(32, 128 // bm), "BK": group_k}
    elif kernel == "quantized_gemm":
        tiles = {"BM": 32, "BN": 64, "BK": min(32, group_k)}
    elif kernel == FMA:  # each intermediate [BN, BK] tile is its own shared buffer: keep them at 2 KiB
        tiles = {"BM": _fma_rows(m), "BN": 16, "BK": 32}
    else:  # W4A8: the int8 tiles live as int32 in shared memory
        tiles = {"BM": 32, "BN": 64, "BK": 32}
    sp = space(kernel, "tvm")
    cfg = Config.make(tiles, {"target": "cuda"})
    if sp.check(cfg, problem) is None:
        return cfg
    for point in sp:
        if sp.check(point, problem) is None:
            return Config.make(point.constant_dict, {"target": "cuda"})
    raise ValueError(f"no configuration of {kernel} on tvm (cuda) is valid for {dict(problem)}")


def default_config(kernel: str, backend: str, problem: Mapping[str, Any]) -> Config:
    """The space's default point if valid for `problem`, else the first valid point (ValueError if none).
    On the TVM backend the default depends on M (see `_cpu_default`)."""
    sp = space(kernel, backend)
    kernel = getattr(kernel, "name", kernel)
    if backend == "tvm":
        cpu = _cpu_default(kernel, problem)
        if cpu is not None and sp.check(cpu, problem) is None:
            return cpu
    if backend == "triton" and native_triton():
        from lowbit.kernels.launch import device_units

        gpu = gpu_default(kernel, problem, device_units())
        if gpu is not None and sp.check(gpu, problem) is None:
            return gpu
    if sp.check(sp.default, problem) is None:
        return sp.default
    for cfg in sp:
        if sp.check(cfg, problem) is None:
            return cfg
    reason = sp.check(sp.default, problem)
    raise ValueError(
        f"no configuration of {kernel} on {backend} is valid for {dict(problem)}; the default fails: {reason}"
    )


__all__ = [
    "FMA",
    "GEMV_PREFETCH_LOCALITY",
    "KERNELS",
    "SHARED_MEMORY_BYTES",
    "SPLITS",
    "default_config",
    "gemm_column_tile",
    "gemm_row_tile",
    "gpu_default",
    "native_triton",
    "pair_dot_runs",
    "space",
    "tvm_cuda_default",
]
