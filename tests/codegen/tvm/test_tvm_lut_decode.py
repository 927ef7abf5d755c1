"""The table decode of <= 6-bit dot operands (`lower._Emitter.lut_plan` / `dot_lut`, option lut "avx512"): the
float GEMV on column-tiled weights of every <= 4-bit format (signed / unsigned ints, float formats, zero
points) equals the fp64 `x @ dequant(W)` with the table path in the source, ragged N takes the guarded generic
loops for the edge tile, and lut "none" or 8-bit codes keep the generic decode. Each form is checked: one code
per lookup (4 bits), several per 4-bit field with tables from x (1-2 bits), the word-row walk (ten 3-bit codes
per word; 4-bit word fields for linear ints), vpermi2ps for 5-bit and sign-magnitude 6-bit codes, and the
weight-stream prefetch. Needs AVX-512 (vpermps on 16 fp32 lanes); elsewhere the option resolves to "none"
and the module is skipped."""

from __future__ import annotations

import re

import numpy as np
import pytest
from backend_harness import prefetch_localities
from hypothesis import given, settings
from hypothesis import strategies as st

from lowbit.artifact.fingerprint import isa_flags
from lowbit.codegen.backend import compile_program
from lowbit.codegen.tvm.runtime import amx_permitted
from lowbit.kernels.gemv import quantized_gemv
from lowbit.kernels.layouts import column_tiled
from lowbit.ops.linear import plans_of
from lowbit.ops.weight import quantize, retile_columns

pytestmark = pytest.mark.skipif("avx512f" not in isa_flags(), reason="the table decode needs AVX-512")
LUT = "llvm.x86.avx512.permvar.sf.512"
BN = 64  # the GEMV's column tile = the column-tiled block
TOL = 2e-6  # fp32 accumulation over K = 256, relative to Σ|x|·(|w| + |z·s|) (one wrong code: ~1e-3)


def run(dtype: str, M: int, N: int, K: int, G: int, options: dict, seed: int = 0, rows: int = 1, **quant):
    rng = np.random.default_rng(seed)
    qw = quantize(rng.standard_normal((N, K)).astype(np.float32), dtype, G, **quant)
    tiled = retile_columns(qw, BN)
    assert tiled.layout == column_tiled((K, N), qw.dtype.bits, BN)
    x = rng.standard_normal((M, K)).astype(np.float32)
    y = np.full((M, N), np.nan, np.float32)
    consts = dict(wdtype=dtype, G=G, zero_mode=qw.zero_mode, adtype="float32", sdtype=str(qw.scales.dtype))
    consts.update(wlayout=tiled.layout, BM=rows, BN=BN, BK=G)
    kernel = compile_program(quantized_gemv.trace(**consts), "tvm", {"tm": 1, "vector": 16, **options})
    args = dict(x=x, w=tiled.words, scales=qw.scales, y=y, M=M, N=N, K=K)
    args["zeros"] = qw.zeros if qw.zeros is not None else np.zeros_like(qw.scales)
    kernel(args)
    w = qw.dequantize().astype(np.float64).T
    ref = x.astype(np.float64) @ w
    # the error relative to the magnitudes fp32 rounding scales with: Σ|x|·(|w| + |z·s|), the kernel summing
    # x·q·s and x·z·s apart ((p − Σx·z)·s). |ref| alone can be far smaller: int1's {−1, 0} codes with zero
    # points cancel (2.6e-6 against |ref|, 1.7e-6 against Σ|x·w|, at N = 64, K = 256, g = 128)
    zs = 0.0 if qw.zeros is None else np.repeat(np.abs(qw.zeros * qw.scales).astype(np.float64), G, axis=0)
    scale = np.abs(x.astype(np.float64)) @ (np.abs(w) + zs)
    err = float(np.linalg.norm(y - ref) / np.linalg.norm(scale))
    assert np.isfinite(y).all() and np.isfinite(err)
    return err, kernel.source


@settings(max_examples=12, deadline=None)
@given(
    dtype=st.sampled_from(["int4", "uint4", "int3", "int2", "uint2", "int1", "fp4_e2m1", "fp4_e3m0", "fp3_e2m0"]),
    n=st.sampled_from([64, 128, 100]),  # 100: a ragged last column tile (the generic loops)
    g=st.sampled_from([32, 128]),
    asym=st.booleans(),
)
def test_table_decode_equals_the_fp64_reference(dtype, n, g, asym):
    quant = dict(symmetric=False, zero_mode="post") if asym and dtype.startswith("int") else {}
    err, src = run(dtype, 1, n, 256, g, {"lut": "avx512"}, seed=n + g, **quant)
    assert LUT in src
    assert err < TOL


def test_off_and_wide_codes_keep_the_generic_decode():
    err, src = run("int4", 1, 128, 256, 128, {"lut": "none"})
    assert LUT not in src and err < TOL
    err, src = run("int8", 1, 128, 256, 128, {"lut": "avx512"})  # 8-bit codes: 256 values, no 16-entry table
    assert LUT not in src and err < TOL


@pytest.mark.parametrize(
    ("dtype", "form"),
    [
        ("int2", "fields"),
        ("uint2", "fields"),
        ("int1", "fields"),
        ("int3", "words"),
        ("fp3_e2m0", "words"),
        ("int4", "codes"),
        ("fp4_e2m1", "codes"),
    ],
)
@pytest.mark.parametrize("g", [32, 128])
def test_each_width_takes_its_table_form(dtype, form, g):
    """1-2-bit codes: several codes per 4-bit field, the table built from x per field (`rtbl`); ten codes per
    word (3 bits), which never divide a group of 32 or 128: the walk over word rows (`for wr`, constant
    shifts, out-of-tile codes against x = 0); 4 bits: one code per lookup. All equal the fp64 reference, and
    every form prefetches its word stream (the weight buffer `w` in an llvm.prefetch)."""
    err, src = run(dtype, 1, 128, 256, g, {"lut": "avx512"}, seed=g)
    assert err < TOL
    assert LUT in src
    assert ("rtbl" in src) == (form == "fields")
    assert ("for wr in" in src) == (form == "words")
    assert any("llvm.prefetch" in line and "w_1[" in line for line in src.splitlines())


@pytest.mark.parametrize(("dtype", "g"), [("int2", 2), ("int2", 4), ("uint2", 4), ("int1", 4), ("int1", 8)])
def test_field_tables_on_tiles_shorter_than_the_unroll(dtype, g):
    """Groups of 2-8 rows of 1-2-bit codes: the tile (BK = G) is shorter than the unroll (8) and than one word's
    codes, so the k step falls back to one field of c = 4 / bits codes. Unroll 1 under c once gave an empty
    inner loop (all-zero output, found by an outside quantized_linear fuzz at int2 g = 4)."""
    err, src = run(dtype, 2, 64, 64, g, {"lut": "avx512", "unroll": 8}, seed=g)
    assert err < TOL
    assert LUT in src and ("rtbl" in src) == (g % (4 // int(dtype[-1])) == 0)


def test_the_word_walk_handles_tiles_that_start_inside_a_word():
    """K = 384 int3 with g = 128: the tiles start at k = 0, 128, 256, i.e. code 0, 8 and 6 of a word, and the
    last tile's final word row reaches past K; zero points (post) on top. Ragged N = 100 adds the edge tile."""
    for n in (128, 100):
        err, src = run("int3", 2, n, 384, 128, {"lut": "avx512"}, seed=n, symmetric=False, zero_mode="post")
        assert err < TOL and "for wr in" in src


@pytest.mark.parametrize("dtype", ["int3", "int2", "int1", "int4", "uint4", "fp4_e2m1", "int5", "fp6_e3m2"])
def test_a_ragged_row_tile_walks_a_staged_copy_of_its_rows(dtype):
    """A 4-row tile over M = 3 rows (M is a runtime argument: one kernel serves both): the walk reads a copy
    of the tile's rows, staged with zero rows past x on a ragged tile (`_ragged_rows`), and keeps its table
    decode; a ragged tile used to take the generic loops (int3 / fp6 M = 3, 4096², 36 / 51 ms against 1.0 /
    0.96 ms now)."""
    quant = dict(symmetric=False, zero_mode="post") if dtype.startswith("uint") else {}
    for m in (3, 4, 1):
        err, src = run(dtype, m, 64, 256, 128, {"lut": "avx512", "tm": 4}, seed=m, rows=4, **quant)
        assert err < TOL, (dtype, m, err)
    lookups = [ln for ln in src.splitlines() if re.search(r"llvm\.x86\.avx512\.(perm|vpermi2)", ln)]
    staged = [ln for ln in src.splitlines() if re.search(r"\bar(_\d+)? = T.decl_buffer", ln)]
    assert staged and lookups, (len(staged), len(lookups))


@pytest.mark.parametrize("dtype", ["int3", "uint3"])
def test_int3_fields_and_codes_both_equal_the_reference(dtype):
    """Linear 3-bit ints take one vpermps per 4-bit field of the word (tables from x over the codes' bits,
    `ft0`..); option lut_field 0 keeps one lookup per code. Both equal the fp64 reference; fp3 (not linear in
    its bits) always looks up per code."""
    err, src = run(dtype, 1, 128, 384, 128, {"lut": "avx512"}, seed=3)
    assert err < TOL and "ft0" in src and "for wr in" in src
    err, src = run(dtype, 1, 128, 384, 128, {"lut": "avx512", "lut_field": 0}, seed=3)
    assert err < TOL and "ft0" not in src and "for wr in" in src
    err, src = run("fp3_e2m0", 1, 128, 384, 128, {"lut": "avx512"}, seed=3)
    assert err < TOL and "ft0" not in src and "for wr in" in src
    with pytest.raises(Exception, match="lut_field"):
        run(dtype, 1, 128, 256, 128, {"lut": "avx512", "lut_field": 5})


@pytest.mark.parametrize("dtype", ["fp6_e3m2", "fp6_e2m3", "fp5_e2m2", "int5", "uint5"])
@pytest.mark.parametrize("g", [32, 128])
def test_five_and_six_bit_codes_decode_through_vpermi2ps(dtype, g):
    """5-bit codes (six per word) look up all 32 values with vpermi2ps; sign-magnitude 6-bit floats (five per
    word) look up their 32 magnitudes and xor the sign bit onto the float. Both walk word rows (no per-word
    count of 5 or 6 divides a group) and equal the fp64 reference; int6 (two's complement, not
    sign-magnitude) keeps the generic decode."""
    err, src = run(dtype, 1, 128, 384, g, {"lut": "avx512"}, seed=g)
    assert err < TOL and "vpermi2var" in src and "for wr in" in src
    err, src = run("int6", 1, 128, 384, g, {"lut": "avx512"}, seed=g)
    assert err < TOL and "vpermi2var" not in src and LUT not in src


def run_rows(dtype, M, BM, N, K, G, options, adtype="float32", seed=0, **quant):
    """The GEMV over M rows in row tiles of BM with `adtype` x; (error as `run`'s, the kernel's source, the
    weight's zero mode)."""
    rng = np.random.default_rng(seed)
    qw = quantize(rng.standard_normal((N, K)).astype(np.float32), dtype, G, **quant)
    tiled = retile_columns(qw, BN)
    x = rng.standard_normal((M, K)).astype(adtype)
    y = np.full((M, N), np.nan, adtype)
    consts = dict(wdtype=dtype, G=G, zero_mode=qw.zero_mode, adtype=adtype, sdtype=str(qw.scales.dtype))
    consts.update(wlayout=tiled.layout, BM=BM, BN=BN, BK=G if G > 0 else 128)
    kernel = compile_program(quantized_gemv.trace(**consts), "tvm", {"tm": 2, "vector": 16, **options})
    args = dict(x=x, w=tiled.words, scales=qw.scales, y=y, M=M, N=N, K=K)
    args["zeros"] = qw.zeros if qw.zeros is not None else np.zeros_like(qw.scales)
    kernel(args)
    w = qw.dequantize().astype(np.float64).T
    x64 = x.astype(np.float64)
    rows = G if G > 0 else K
    zs = 0.0 if qw.zeros is None else np.repeat(np.abs(qw.zeros * qw.scales).astype(np.float64), rows, axis=0)
    scale = np.abs(x64) @ (np.abs(w) + zs)
    err = float(np.linalg.norm(y.astype(np.float64) - x64 @ w) / np.linalg.norm(scale))
    assert np.isfinite(y).all() and np.isfinite(err)
    out_rounding = 2.0**-11 if adtype == "float16" else 0.0  # y rounded to fp16 once
    return err - out_rounding * float(np.linalg.norm(x64 @ w) / np.linalg.norm(scale)), kernel.source, qw.zero_mode


@settings(max_examples=8, deadline=None)
@given(
    dtype=st.sampled_from(["int4", "uint4", "fp4_e2m1"]),
    m=st.sampled_from([4, 16, 40, 100]),  # 40, 100: ragged row tiles (checked staging, the fast path kept)
    bm=st.sampled_from([4, 16, 64]),
    n=st.sampled_from([128, 100]),  # 100: a ragged last column tile (the generic loops)
    g=st.sampled_from([32, 128, -1]),
    asym=st.booleans(),
    adtype=st.sampled_from(["float32", "float16"]),
)
def test_fp32_gemm_form_equals_the_fp64_reference(dtype, m, bm, n, g, asym, adtype):
    """From `gemm_rows` (4) rows, 4-bit codes: the GEMM form (`_dot_lut_gemm`: x rows staged as fp32, codes
    decoded once per tile by vpermps into a buffer, register blocks of FMAs), the per-group `acc += dot · s`
    fused into the blocks when there are no zero points."""
    quant = dict(symmetric=False, zero_mode="post") if asym and dtype == "int4" else {}
    err, src, zero_mode = run_rows(dtype, m, bm, n, 256, g, {}, adtype, seed=n + m, **quant)
    assert "wd = T.decl_buffer" in src and LUT in src
    assert ("# fused:" in src) == (g != -1 or zero_mode != "none")  # per channel: fused with zeros (K tiles)
    assert err < TOL


def test_fp32_gemm_form_prefetches_the_next_tile_to_l2():
    """The fp32 GEMM form decodes a tile in a burst, then runs its FMA blocks: its word hints go to L2 (option
    gemm_prefetch_locality, default 2), 3 puts them back in L1; the level changes no result."""
    err, src, _ = run_rows("int4", 16, 16, 128, 256, 128, {})
    err_l1, src_l1, _ = run_rows("int4", 16, 16, 128, 256, 128, {"gemm_prefetch_locality": 3})
    assert "wd = T.decl_buffer" in src and err < TOL and err_l1 == err
    assert prefetch_localities(src) == {2} and prefetch_localities(src_l1) == {3}


AMX_BF16 = {"amx_bf16", "avx512_bf16"} <= set(isa_flags()) and amx_permitted()
needs_amx_bf16 = pytest.mark.skipif(not AMX_BF16, reason="needs AMX-BF16 and Linux's grant of the tile state")


@needs_amx_bf16
@settings(max_examples=6, deadline=None)
@given(
    dtype=st.sampled_from(["int4", "uint4", "fp4_e2m1"]),
    m=st.sampled_from([64, 100, 130]),  # 100, 130: ragged row tiles
    bm=st.sampled_from([64, 128]),
    g=st.sampled_from([32, 128, -1]),
    asym=st.booleans(),
)
def test_fp32_gemm_form_on_amx_equals_the_fp64_reference(dtype, m, bm, g, asym):
    """From AMX_FP32_ROWS rows with bf16_dot "amx": fp32 x as three bf16 parts (exact), the codes as bf16
    pairs, tdpbf16ps: within the fp32 form's bound; the FMA form (bf16_dot "avx512bf16") has no tiles."""
    quant = dict(symmetric=False, zero_mode="post") if asym and dtype == "int4" else {}
    err, src, _ = run_rows(dtype, m, bm, 128, 256, g, {"bf16_dot": "amx"}, seed=m + bm, **quant)
    assert "llvm.x86.tdpbf16ps" in src and "llvm.x86.avx512.vpermi2var.hi.512" in src
    assert err < TOL
    fma, src, _ = run_rows(dtype, m, bm, 128, 256, g, {"bf16_dot": "avx512bf16"}, seed=m + bm, **quant)
    assert "llvm.x86.tdpbf16ps" not in src and abs(err - fma) < TOL


@needs_amx_bf16
def test_fp32_rows_on_amx_keep_infinities_and_nans_where_the_fma_form_has_them():
    """An infinite x is its own top part (its other parts zero, not inf - inf): the outputs are non-finite
    exactly where the FMA form's are, and equal to fp32 rounding elsewhere (a row of tiny values too)."""
    qw = quantize(np.random.default_rng(0).standard_normal((128, 256)).astype(np.float32), "int4", 128)
    tiled = retile_columns(qw, BN)
    x = np.random.default_rng(1).standard_normal((64, 256)).astype(np.float32)
    x[3, 5], x[7, 9], x[9, 11] = np.inf, -np.inf, np.nan
    x[12] *= 1e-30
    consts = dict(wdtype="int4", G=128, zero_mode="none", adtype="float32", sdtype=str(qw.scales.dtype))
    consts.update(wlayout=tiled.layout, BM=64, BN=BN, BK=128)
    ys = []
    for form in ("amx", "avx512bf16"):
        kernel = compile_program(quantized_gemv.trace(**consts), "tvm", {"tm": 2, "bf16_dot": form})
        y = np.full((64, 128), 7.0, np.float32)
        kernel(dict(x=x, w=tiled.words, scales=qw.scales, zeros=np.zeros_like(qw.scales), y=y, M=64, N=128, K=256))
        ys.append(y.astype(np.float64))
    amx, fma = ys
    assert (np.isnan(amx) == np.isnan(fma)).all() and (np.isinf(amx) == np.isinf(fma)).all()
    assert np.isnan(amx).any() and np.isinf(amx).any()
    fin = np.isfinite(fma)
    for rows in (fin.all(axis=1), np.arange(64) == 12):
        a, f = amx[rows], fma[rows]
        assert np.linalg.norm(a - f) <= 1e-6 * np.linalg.norm(f)


def test_gemm_form_waits_for_gemm_rows():
    """Below `gemm_rows` rows the GEMV keeps its walks (no decode buffer)."""
    _, src, _ = run_rows("int4", 8, 8, 64, 256, 128, {"gemm_rows": 16})
    assert "wd = T.decl_buffer" not in src
    err, src, _ = run_rows("int4", 8, 8, 64, 256, 128, {"gemm_rows": 8})
    assert "wd = T.decl_buffer" in src and err < TOL


def test_quantized_linear_runs_the_gemv_at_every_m_for_weights_up_to_8_bits():
    """`gemv_serves`: a weight of 1-8-bit codes in the row layout runs `quantized_gemv` at M = 70 on TVM (fp32
    x): 4-bit codes the table decode's GEMM form, others the decoded GEMM form (its fp32 tile `wd` in the
    source where the fp32 FMA form runs it; AMX's pairs `bp` on an AMX CPU), but where the x16 plan takes the
    weight (`lowbit.ops.x16`: 2- to 4-bit integer codes on a VNNI CPU) that plan; the reference backend keeps the
    rule's `quantized_gemm`."""
    from lowbit.ops import quantized_linear
    from lowbit.ops.linear import gemv_serves, tvm_int8_dot
    from lowbit.ops.x16 import X16Plan, x16_serves

    rng = np.random.default_rng(5)
    for dtype in ("int4", "int8", "uint2", "fp6_e3m2", "fp8_e5m2"):
        qw = quantize(rng.standard_normal((128, 256)).astype(np.float32), dtype, 128)
        assert gemv_serves(qw, "tvm", "float32")
        assert not gemv_serves(qw, "reference", "float32")
        x = rng.standard_normal((70, 256)).astype(np.float32)
        y = quantized_linear(x, qw, backend="tvm")
        ref = x.astype(np.float64) @ qw.dequantize().astype(np.float64).T
        err = np.linalg.norm(y - ref) / np.linalg.norm(ref)
        assert np.isfinite(err) and err < 1e-5, (dtype, err)
        if x16_serves(qw, 70, "float32", tvm_int8_dot()):
            assert {type(p) for p in plans_of(qw).values()} == {X16Plan}, dtype  # the plan, also as the bound launch
            continue
        (kernel,) = [k for k in plans_of(qw).values() if getattr(k, "backend", "") == "tvm"]
        assert kernel.program.name == "quantized_gemv"
        if dtype != "int4":
            assert "wd = T.decl_buffer" in kernel.source or "tdpbf16ps" in kernel.source, dtype


@pytest.mark.parametrize("dtype", ["int3", "uint3"])
@pytest.mark.parametrize("k", [4, 8, 16])
@pytest.mark.parametrize("layout", ["row", "reordered"])
def test_fewer_k_than_one_word_of_3_bit_codes(dtype, k, layout):
    """K below or not a multiple of the ten 3-bit codes per word (K = 4, 8, 16, per channel): `_whole_words`
    checks the partial last word row too (K = 8 failed with a reshape error), through quantized_linear at M = 1."""
    import torch

    from lowbit.ops import quantized_linear

    rng = np.random.default_rng(k)
    qw = quantize(rng.standard_normal((33, k)).astype(np.float32), dtype, -1, layout=layout)
    x = rng.standard_normal((1, k)).astype(np.float32)  # the M = 1 walk takes the word-row check
    w = qw.dequantize().astype(np.float64).T
    scale = np.abs(x.astype(np.float64)) @ np.abs(w)
    for adtype, tol in (("float32", TOL), ("bfloat16", 2.0**-8)):
        xt = torch.from_numpy(x).to(getattr(torch, adtype))
        y = quantized_linear(xt, qw, backend="tvm").double().numpy()
        ref = xt.double().numpy() @ w
        err = float(np.linalg.norm(y - ref) / np.linalg.norm(scale))
        assert np.isfinite(y).all() and err < tol, (adtype, err)
