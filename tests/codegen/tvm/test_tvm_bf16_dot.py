"""The bf16 pair-dot GEMV (`lower._Emitter._dot_lut_bf16`, `bf16_dot.py`): bfloat16 activations against
4-bit codes in pair order (`column_tiled(pairs=True)`) multiply with vdpbf16ps after the LLVM IR rewrite of
the stand-in. Checked against the fp64 `x @ dequant(W)` of the same bf16 x (the products are exact; the
pair sums and the accumulation round to fp32), with the stand-in in the source exactly when the CPU has
AVX-512 BF16 and the layout/dtype qualify, through an exported and reloaded library, and the IR rewrite
itself on text."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from backend_harness import prefetch_localities
from hypothesis import given, settings
from hypothesis import strategies as st

from lowbit.artifact.fingerprint import isa_flags
from lowbit.codegen.backend import compile_program
from lowbit.codegen.tvm.bf16_dot import DPBF16, STAND_IN, PatchError, patch_ir
from lowbit.codegen.tvm.runtime import amx_permitted
from lowbit.kernels.gemv import quantized_gemv
from lowbit.kernels.layouts import column_tiled
from lowbit.ops import quantize, quantized_linear
from lowbit.ops.linear import plans_of, tvm_int8_dot
from lowbit.ops.weight import retile_columns

HAS_BF16 = "avx512_bf16" in isa_flags()
AMX_BF16 = HAS_BF16 and "amx_bf16" in isa_flags() and amx_permitted()
needs_bf16 = pytest.mark.skipif(not HAS_BF16, reason="vdpbf16ps needs AVX-512 BF16")
BN = 64
TOL = 2e-6  # fp32 pair sums and accumulation over K = 256, relative to Σ|x|·(|w| + |z·s|)


def run(dtype, M, N, K, G, options, pairs=True, seed=0, BM=None, tile_n=BN, **quant):
    rng = np.random.default_rng(seed)
    qw = quantize(rng.standard_normal((N, K)).astype(np.float32), dtype, G, **quant)
    tiled = retile_columns(qw, BN, pairs=pairs)
    assert tiled.layout == column_tiled((K, N), 4, BN, pairs=pairs)
    x = torch.from_numpy(rng.standard_normal((M, K)).astype(np.float32)).bfloat16()
    y = torch.full((M, N), float("nan"), dtype=torch.float32)
    consts = dict(wdtype=dtype, G=G, zero_mode=qw.zero_mode, adtype="bfloat16", sdtype=str(qw.scales.dtype))
    consts.update(wlayout=tiled.layout, BM=BM or M, BN=tile_n, BK=G if G > 0 else 128)
    # the vdpbf16ps forms unless asked otherwise ("auto" takes AMX's tiles where the CPU has them)
    form = {"bf16_dot": "avx512bf16"} if HAS_BF16 else {}
    kernel = compile_program(quantized_gemv.trace(**consts), "tvm", {"tm": 4, "vector": 16, **form, **options})
    yb = torch.empty((M, N), dtype=torch.bfloat16)
    args = dict(x=x, w=tiled.words, scales=qw.scales, y=yb, M=M, N=N, K=K)
    args["zeros"] = qw.zeros if qw.zeros is not None else np.zeros_like(qw.scales)
    kernel(args)
    y = yb.double().numpy()
    w = qw.dequantize().astype(np.float64).T
    x64 = x.double().numpy()
    ref = x64 @ w
    rows = G if G > 0 else K
    zs = 0.0 if qw.zeros is None else np.repeat(np.abs(qw.zeros * qw.scales).astype(np.float64), rows, axis=0)
    scale = np.abs(x64) @ (np.abs(w) + zs)
    # y is rounded to bf16 once (2^-9 relative): the bound is that rounding plus TOL
    err = float(np.linalg.norm(y - ref) / np.linalg.norm(scale))
    assert np.isfinite(y).all() and np.isfinite(err)
    return err, float(np.linalg.norm(ref) / np.linalg.norm(scale)) * 2.0**-8 + TOL, kernel


def linear_bf16(dtype, m, n, k, seed):
    """quantized_linear (tvm) of bf16 x [m, k] and a `dtype` g128 weight [n, k]: (weight, y, relative error
    against the fp64 x @ dequant(W)^T)."""
    rng = np.random.default_rng(seed)
    qw = quantize(rng.standard_normal((n, k)).astype(np.float32), dtype, 128)
    x = torch.from_numpy(rng.standard_normal((m, k)).astype(np.float32)).bfloat16()
    y = quantized_linear(x, qw, backend="tvm")
    ref = x.double().numpy() @ qw.dequantize().astype(np.float64).T
    return qw, y, float(np.linalg.norm(y.double().numpy() - ref) / np.linalg.norm(ref))


@needs_bf16
@settings(max_examples=10, deadline=None)
@given(
    dtype=st.sampled_from(["int4", "uint4", "fp4_e2m1"]),
    m=st.sampled_from([1, 3, 8, 16]),  # 8, 16 > tm: the tile's pairs staged, the GEMM form (gemm_rows 4)
    n=st.sampled_from([64, 128, 100]),  # 100: a ragged last column tile (the guarded generic loops)
    g=st.sampled_from([32, 128, -1]),
    asym=st.booleans(),
)
def test_bf16_pair_dot_equals_the_fp64_reference(dtype, m, n, g, asym):
    quant = dict(symmetric=False, zero_mode="post") if asym and dtype == "int4" else {}
    err, bound, kernel = run(dtype, m, n, 256, g, {}, seed=n + m, **quant)
    assert STAND_IN in kernel.source
    assert "llvm.prefetch.p0" in kernel.source  # both walk orders hint the weight stream ahead
    assert err < bound


@needs_bf16
@pytest.mark.parametrize("bf16_dot", ["avx512bf16", "amx"])
def test_gemm_form_prefetches_the_next_tile_to_l2(bf16_dot):
    """The pair GEMM form (16 rows > tm) hints its word stream with locality 2 (prefetcht1, the option
    gemm_prefetch_locality's default) and the M = 1 walk with 3; the hint's level changes no result."""
    if bf16_dot == "amx" and not AMX_BF16:
        pytest.skip("AMX-BF16 tiles are not available (CPU or kernel permission)")
    forms = {"bf16_dot": bf16_dot, "tm": 2}
    err, bound, l2 = run("int4", 16, 128, 256, 128, forms, seed=3)
    err_l1, _, l1 = run("int4", 16, 128, 256, 128, {**forms, "gemm_prefetch_locality": 3}, seed=3)
    assert err < bound and err_l1 == err  # same inputs (seed): the same y to the bit, so the same error
    assert prefetch_localities(l2.source) == {2} and prefetch_localities(l1.source) == {3}
    _, _, walk = run("int4", 1, 128, 256, 128, {"bf16_dot": bf16_dot, "tm": 1}, seed=3)
    assert prefetch_localities(walk.source) == {3}


def test_gemm_prefetch_locality_is_checked():
    from lowbit.codegen.backend import BackendError
    from lowbit.codegen.tvm.lower import check_options

    for bad in (7, -1, 2.0, True):  # a float or bool would be printed into the intrinsic call as it is
        with pytest.raises(BackendError, match=f"gemm_prefetch_locality={bad!r}"):
            check_options({"gemm_prefetch_locality": bad})


@needs_bf16
@settings(max_examples=6, deadline=None)
@given(
    dtype=st.sampled_from(["int4", "uint4", "fp4_e2m1"]),
    n=st.sampled_from([256, 512, 300]),  # 300: a ragged last column tile
    g=st.sampled_from([32, 128, -1]),
    asym=st.booleans(),
)
def test_m1_pair_dot_over_256_column_tiles(dtype, n, g, asym):
    """M = 1 with the kernel's 256-column tile (spaces._pair_dot: 16 accumulators) over the layout's 64-column
    blocks: four weight streams per tile."""
    quant = dict(symmetric=False, zero_mode="post") if asym and dtype == "int4" else {}
    err, bound, kernel = run(dtype, 1, n, 256, g, {"tm": 1}, seed=n, tile_n=256, **quant)
    assert STAND_IN in kernel.source
    assert err < bound


def test_affine_codes_finds_tables_one_apart():
    from lowbit.codegen.tvm.lower import _affine_codes

    u = np.arange(16)
    assert _affine_codes(list(np.where(u < 8, u, u - 16))) == (8, -8.0)  # int4: two's complement
    assert _affine_codes(list(u)) == (0, 0.0)  # uint4
    assert _affine_codes(list(u - 3.0)) == (0, -3.0)
    assert _affine_codes(list(2.0 * u)) is None  # two apart
    assert _affine_codes([0, 0.5, 1, 1.5, 2, 3, 4, 6, -0.0, -0.5, -1, -1.5, -2, -3, -4, -6]) is None  # fp4_e2m1


@needs_bf16
@pytest.mark.parametrize("dtype, asym", [("int4", False), ("int4", True), ("uint4", True), ("fp4_e2m1", False)])
@pytest.mark.parametrize("g", [8, 24, 32, -1])  # 8, 24: tiles of K whose lanes do not fill 16 (the table form)
def test_m1_affine_decode_where_codes_are_one_apart(dtype, asym, g):
    """int4 / uint4 codes at M = 1 decode as 1 + u/16 with a shift and a vpternlogd, the tile's Σa removed
    after (`lower._affine_codes`); fp4's values are not one apart and keep the table; both within the bound."""
    quant = dict(symmetric=False, zero_mode="post") if asym else {}
    k = 96 if g in (8, 24) else 256
    err, bound, kernel = run(dtype, 1, 128, k, g, {"tm": 1}, seed=g % 7, **quant)
    off, bound_off, table = run(dtype, 1, 128, k, g, {"tm": 1, "bf16_affine": False}, seed=g % 7, **quant)
    assert err < bound and off < bound_off
    affine = dtype != "fp4_e2m1" and g not in (8, 24)
    assert ("T.int16(120)" in kernel.source) == affine and "T.int16(120)" not in table.source  # the mask 0x78
    assert ("permvar.hi" in kernel.source) != affine


@needs_bf16
@pytest.mark.parametrize("m, tile_n, tm", [(1, 256, 1), (2, 128, 2)])
def test_pair_dot_sums_stay_in_registers(m, tile_n, tm):
    """Up to `tm` rows the sums are one 64-byte buffer per row and column vector (SROA keeps them in
    registers over the k loop), no word vector or decode is a named value (TVM 0.27 gives each a heap
    workspace buffer, stored in the loop), and each k step clamps its prefetch row once."""
    import re

    import tvm

    err, bound, kernel = run("int4", m, 512, 256, 128, {"tm": tm}, seed=m, tile_n=tile_n)
    assert err < bound
    src = kernel.source
    # the sums, and per row the 16 lanes of Σa that the affine decode of int4 codes removes (`_affine_codes`)
    assert src.count('T.decl_buffer((16,), "float32"') == m * tile_n // 16 + m * (tm == m)
    assert ("T.int16(120)" in src) == (tm == m)  # (w & 0x78) | 0x3F80: the affine decode in the M = 1 form
    assert not re.search(r"^\s*(wv|dec)\w* = ", src, re.M)
    hints = re.findall(r"address_of\(w_1\[(T\.max\(T\.min\(.*\)) \+ \d+\]\)", src)
    assert len(hints) == tile_n // 16 and len(set(hints)) == 1  # one line per column vector, one clamp
    ll = getattr(ex := tvm.compile(kernel.module, target=kernel.target), "mod", ex).inspect_source("ll")
    sizes = re.findall(r"tail call ptr %\w+\(i32 1, i32 %dev_id, i64 (\d+),", ll)  # TVMBackendAllocWorkspace
    assert sizes and all(int(b) != 64 for b in sizes), sizes  # 64 bytes: a named int16x32 / an accumulator


@needs_bf16
@settings(max_examples=8, deadline=None)
@given(
    dtype=st.sampled_from(["int4", "uint4", "fp4_e2m1"]),
    m=st.sampled_from([17, 40, 64, 100]),  # ragged row tiles: staged with checked reads, still the fast path
    bm=st.sampled_from([24, 32, 64]),
    n=st.sampled_from([128, 100]),  # 100: a ragged last column tile (the guarded generic loops)
    g=st.sampled_from([32, 128, -1]),
    asym=st.booleans(),
    block=st.sampled_from([(8, 2), (4, 4), (3, 1)]),  # (3, 1) at 32 rows: no block divides, the rows-outer GEMV
)
def test_bf16_pair_gemm_equals_the_fp64_reference(dtype, m, bm, n, g, asym, block):
    """More than 16 rows: the GEMM form (codes decoded once per tile into pair-order vectors, register blocks
    of block_rows x block_vectors), with the per-group `acc += dot · s` fused into the blocks (`_dot_scaled`)
    when the weight has no zero points."""
    quant = dict(symmetric=False, zero_mode="post") if asym and dtype == "int4" else {}
    options = {"block_rows": block[0], "block_vectors": block[1]}
    err, bound, kernel = run(dtype, m, n, 256, g, options, seed=n + m, BM=bm, **quant)
    assert STAND_IN in kernel.source
    gemm_form = np.gcd(block[0], bm) > 1  # the block's rows cut to a divisor of the tile's (`_block_shape`)
    # the per-group update `acc += dot · s` fuses into the blocks; per channel it is there only with zeros (each
    # K tile a group: `quantized_gemv`), without them the scale applies once after the K loop
    zeros = dict(kernel.program.constants)["zero_mode"] != "none"
    assert ("# fused:" in kernel.source) == (gemm_form and (g != -1 or zeros))
    assert err < bound


needs_amx_bf16 = pytest.mark.skipif(not AMX_BF16, reason="needs AMX-BF16 and Linux's grant of the tile state")


@needs_amx_bf16
@settings(max_examples=8, deadline=None)
@given(
    dtype=st.sampled_from(["int4", "uint4", "fp4_e2m1"]),
    m=st.sampled_from([16, 17, 40, 64, 100]),  # ragged row tiles: a's rows staged with checked reads
    bm=st.sampled_from([16, 32, 64]),
    n=st.sampled_from([128, 100]),  # 100: a ragged last column tile (the guarded generic loops)
    g=st.sampled_from([32, 128, -1]),
    asym=st.booleans(),
)
def test_amx_pair_gemm_equals_the_fp64_reference(dtype, m, bm, n, g, asym):
    """bf16_dot "amx": the GEMM form's whole 16x16 tiles run tdpbf16ps (a's rows tile-loaded from x where the
    row tile lies inside it, else from the staged pairs), with or without the fused per-group scale; the same
    bound as the vdpbf16ps form, and the same sums to fp32 rounding."""
    quant = dict(symmetric=False, zero_mode="post") if asym and dtype == "int4" else {}
    err, bound, kernel = run(dtype, m, n, 256, g, {"bf16_dot": "amx"}, seed=n + m, BM=bm, **quant)
    assert "llvm.x86.tdpbf16ps" in kernel.source and "llvm.x86.ldtilecfg" in kernel.source
    assert err < bound
    fma_err, _, fma = run(dtype, m, n, 256, g, {"bf16_dot": "avx512bf16"}, seed=n + m, BM=bm, **quant)
    assert "llvm.x86.tdpbf16ps" not in fma.source
    assert abs(err - fma_err) < 1e-5


@needs_amx_bf16
def test_amx_pair_gemm_reads_x_in_place_and_stages_only_a_ragged_row_tile():
    _, _, whole = run("int4", 64, 128, 256, 128, {"bf16_dot": "amx"}, BM=64)
    loads = [ln for ln in whole.source.splitlines() if "tileloadd64" in ln and "T.int8(0)" in ln]
    assert loads and all("x_1[" in ln or "xp[" in ln for ln in loads) and any("x_1[" in ln for ln in loads)
    # b's decoded pairs are stored as whole B tiles, 64 bytes from a pair row to the next (`_pair_vector`)
    b_loads = [ln for ln in whole.source.splitlines() if "tileloadd64" in ln and "bp" in ln]
    assert b_loads and all(ln.rstrip().endswith("T.int64(64)))") for ln in b_loads)
    err, bound, ragged = run("int4", 40, 128, 256, 128, {"bf16_dot": "amx"}, BM=64)  # one tile, 24 rows past x
    assert err < bound and "if not (" in ragged.source


@needs_bf16
def test_quantized_linear_runs_the_pair_gemm_past_16_rows():
    """bf16 x with a 4-bit weight runs `quantized_gemv` at every M on the CPU: past 16 rows its GEMM form in
    row tiles of `gemm_row_tile(M, pair=True)` (M = 40: one tile of 64 rows, 24 of them padding; M = 256: one
    of 256 rows, where the fp32 form takes two of 128)."""
    from lowbit.kernels.spaces import gemm_row_tile

    assert [gemm_row_tile(m) for m in (17, 40, 64, 100, 256)] == [32, 64, 64, 128, 128]
    assert [gemm_row_tile(m, pair=True) for m in (17, 40, 64, 100, 200, 256)] == [32, 64, 64, 128, 256, 256]
    qw, _, err = linear_bf16("int4", 40, 128, 512, seed=3)
    assert err < 2.0**-8
    (kernel,) = [k for k in plans_of(qw).values() if getattr(k, "backend", "") == "tvm"]
    assert kernel.program.name == "quantized_gemv" and dict(kernel.program.constants)["BM"] == 64
    assert "# fused:" in kernel.source


@needs_bf16
@pytest.mark.parametrize("m", [200, 256])
def test_pair_gemm_takes_256_row_tiles(m):
    """From ~200 rows the pair GEMM runs one 256-row tile (M = 200: 56 padding rows, staged as zeros and
    dropped at the store) and equals the fp64 reference."""
    qw, y, err = linear_bf16("int4", m, 256, 256, seed=m)
    assert err < 2.0**-8 and bool(torch.isfinite(y).all())
    (kernel,) = [k for k in plans_of(qw).values() if getattr(k, "backend", "") == "tvm"]
    assert dict(kernel.program.constants)["BM"] == 256 and "# fused:" in kernel.source


@pytest.mark.parametrize(
    ("options", "pairs", "dtype"),
    [({"bf16_dot": "none"}, True, "int4"), ({}, False, "int4"), ({}, True, "int8")],
    ids=["option-off", "plain-word-order", "8-bit-codes"],
)
def test_other_cases_keep_the_fp32_table_decode(options, pairs, dtype):
    """bf16_dot "none", words not in pair order or codes that are not 4-bit: no stand-in, same numerics."""
    if dtype == "int8":
        qw, _, err = linear_bf16("int8", 1, 64, 256, seed=0)
        assert err < 2.0**-8
        src = "\n".join(getattr(k, "source", "") for k in plans_of(qw).values())
        assert src and STAND_IN not in src
        return
    err, bound, kernel = run(dtype, 1, 128, 256, 128, options, pairs=pairs)
    assert STAND_IN not in kernel.source and err < bound


@needs_bf16
def test_patched_kernel_exports_and_reloads(tmp_path):
    from lowbit.codegen.tvm.runtime import load_module

    _, _, kernel = run("int4", 1, 64, 256, 128, {})
    assert STAND_IN in kernel.source
    path = str(tmp_path / "k.so")
    kernel.export(path)
    assert load_module(path)["main"] is not None


@needs_bf16
def test_quantized_linear_takes_the_pair_layout_for_bf16():
    """bf16 x with int4 codes (past the x16 plan's X16_MAX_M rows) reads the pair-ordered copy; a ragged N (96)
    reads its padded copy (`cpu_padded`) in that layout."""
    from lowbit.ops.x16 import X16_MAX_M

    m = X16_MAX_M + 1
    for n, held in ((256, "_cpu_pairs"), (96, "_cpu_padded_bfloat16")):
        qw, y, err = linear_bf16("int4", m, n, 512, seed=1)
        assert y.dtype == torch.bfloat16 and tuple(y.shape) == (m, n)
        assert err < 2.0**-8
        copy = qw.__dict__[held]
        # 32-column blocks where the x16 plan reads the same copy (`cpu_block`), else 64
        block = 32 if tvm_int8_dot() in ("vnni", "amx") else 64
        assert copy.layout == column_tiled((512, copy.shape[0]), 4, block, pairs=True) and copy.shape[0] % 256 == 0
        src = "\n".join(getattr(k, "source", "") for k in plans_of(qw).values())
        assert ("llvm.x86.tdpbf16ps" if AMX_BF16 else STAND_IN) in src  # one AMX tile of rows where AMX runs


IR = (
    "  %7 = tail call <16 x i32> @llvm.x86.avx512.vpdpwssd.512(<16 x i32> %acc.1, <32 x i16> %4, <32 x i16> %6),"
    " !dbg !9\n  ret void\n"
)


def test_patch_ir_rewrites_each_stand_in_call():
    out, count = patch_ir(IR + IR.replace("%7", "%8"))
    assert count == 2
    assert out.count(f"call <16 x float> @{DPBF16}(") == 2 and f"declare <16 x float> @{DPBF16}" in out
    assert "bitcast <32 x i16> %4 to <32 x bfloat>" in out and "%7 = bitcast <16 x float>" in out
    assert f"@{STAND_IN}(" not in out
    assert patch_ir("  ret void\n") == ("  ret void\n", 0)


def test_patch_ir_takes_constant_operands_and_refuses_a_form_it_cannot_rewrite():
    out, count = patch_ir(IR.replace("<16 x i32> %acc.1", "<16 x i32> zeroinitializer"))
    assert count == 1 and "bitcast <16 x i32> zeroinitializer to <16 x float>" in out
    odd = IR.replace("<32 x i16> %4", "<32 x i16> bitcast (<16 x i32> %3 to <32 x i16>)")
    with pytest.raises(PatchError, match="bf16_dot='none'"):
        patch_ir(odd)


@needs_bf16
@pytest.mark.parametrize("dtype,G", [("int4", 128), ("uint3", 64), ("fp6_e3m2", -1), ("int8", 32), ("fp8_e4m3", 128)])
def test_bf16_gemms_of_every_width_take_a_gemm_form_and_match_the_oracle(dtype, G):
    """M > 16, bf16 x: every code width runs `quantized_gemv`'s GEMM form (4-bit codes the pair form, others the
    decoded form, `_dot_decoded_gemm`) with the bf16 dot in the source (AMX-BF16's tdpbf16ps where "auto" picks
    AMX, else the vdpbf16ps stand-in); nothing is rounded before the fp32 sums, so the error is the output's
    bf16 rounding (2^-8 bound)."""
    rng = np.random.default_rng(7)
    qw = quantize(rng.standard_normal((64, 256)).astype(np.float32), dtype, G)
    x = torch.from_numpy(rng.standard_normal((40, 256)).astype(np.float32)).bfloat16()
    y = quantized_linear(x, qw, backend="tvm").double().numpy()
    ref = x.double().numpy() @ qw.dequantize().astype(np.float64).T
    err = np.linalg.norm(y - ref) / np.linalg.norm(ref)
    assert np.isfinite(err) and err < 2.0**-8, err
    (kernel,) = [k for k in plans_of(qw).values() if getattr(k, "backend", "") == "tvm"]
    dot = "llvm.x86.tdpbf16ps" if AMX_BF16 else STAND_IN  # AMX's tiles, else vdpbf16ps blocks (both forms)
    assert kernel.program.name == "quantized_gemv" and dot in kernel.source


@needs_bf16
@pytest.mark.parametrize("dtype,G", [("uint3", 64), ("fp6_e3m2", -1)])
def test_bf16_gemm_dot_takes_vdpbf16ps_and_matches_the_oracle(dtype, G):
    """`quantized_gemm` asked for by name (the GEMM with the dequantization in the IR): its dot of bf16 x and
    the bf16-rounded dequantized weight tile is `_dot_bf16_gemm` (both operands in local buffers), the stand-in
    in the source (AMX-BF16's tdpbf16ps over the same staged pairs where "auto" picks AMX), the error within
    the GEMM's bf16 bound (each weight rounded to bf16, 2^-9, plus the output's)."""
    rng = np.random.default_rng(7)
    qw = quantize(rng.standard_normal((64, 256)).astype(np.float32), dtype, G)
    x = torch.from_numpy(rng.standard_normal((40, 256)).astype(np.float32)).bfloat16()
    y = quantized_linear(x, qw, backend="tvm", kernel="quantized_gemm").double().numpy()
    yr = quantized_linear(x, qw, backend="reference").double().numpy()
    ref = x.double().numpy() @ qw.dequantize().astype(np.float64).T
    assert np.linalg.norm(y - ref) / np.linalg.norm(ref) < 2.0**-6
    assert np.linalg.norm(y - yr) / np.linalg.norm(yr) < 2.0**-7  # the same rounded weights, other sum order
    (kernel,) = [k for k in plans_of(qw).values() if getattr(k, "backend", "") == "tvm"]
    dot = "llvm.x86.tdpbf16ps" if AMX_BF16 else STAND_IN  # AMX's tiles where "auto" has them (whole tiles here)
    assert kernel.program.name == "quantized_gemm" and dot in kernel.source
