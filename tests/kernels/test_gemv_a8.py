"""The int8-activation decode GEMV (`lowbit.kernels.gemv_a8`) against NumPy oracles.

* `quantize_groups_int8` vs the formula of its docstring, computed in float32 by NumPy (codes, scales and
  sums equal; on TVM a code may differ by one where x·(127/amax) + 1/2 lands on an integer within fp32
  rounding, which random data never hits: the test requires equality).
* `quantized_gemv_a8` vs an fp64 oracle of *its own* computation (the same xq, xs, xsum and weight): the
  integer dot is exact, so the only error is the fp32 epilogue per group; bound 1e-5 relative (fp32 output).
* The whole a8 path vs the W4A16 GEMV on float activations: the difference is the int8 rounding of x, one
  half step (amax/254) per element at most; for Gaussian x over groups of 128 that is ≈ 0.7% relative on y,
  bounded here by 2e-2; a bound that a wrong kernel (e.g. a lost nibble, a missed zero) exceeds by far.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from lowbit.artifact.fingerprint import isa_flags
from lowbit.codegen.tvm.runtime import amx_permitted
from lowbit.dtypes import decode
from lowbit.kernels.gemv_a8 import (
    quantize_groups_int8,
    quantize_rows_int8,
    quantize_tokens_int8,
    quantized_gemv_a8,
    regroup_int8,
    tile_group_rows,
)
from lowbit.ops.weight import pack_quantized, quantize, retile_columns

BN = 32
INT8_INTRINSIC = {
    "avx2": "llvm.x86.avx2.pmadd.ub.sw",
    "vnni": "llvm.x86.avx512.vpdpbusd.512",
    "amx": "llvm.x86.tdpbssd",
}
# the x86 int8 dot lowerings this CPU runs
INT8_MODES = ["avx2"] + (["vnni"] if "avx512_vnni" in isa_flags() else []) + (["amx"] if amx_permitted() else [])


def rel(a, b) -> float:
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    err = float(np.linalg.norm(a - b) / max(np.linalg.norm(b), 1e-30))
    assert np.isfinite(err)
    return err


def quantize_oracle(x: np.ndarray, G: int):
    """(xq in even/odd order, xs, xsum, q in natural order) by the kernel's formula, in float32."""
    m, k = x.shape
    xg = x.astype(np.float32).reshape(m, k // G, G)
    amax = np.abs(xg).max(-1)
    inv = np.where(amax > 0, np.float32(127) / np.where(amax > 0, amax, 1), 0).astype(np.float32)
    q = np.floor(xg * inv[..., None] + np.float32(0.5)).astype(np.int8)
    xq = np.concatenate([q[..., 0::2], q[..., 1::2]], -1).reshape(m, k)
    return xq, (amax / np.float32(127)).astype(np.float32), q.astype(np.int32).sum(-1), q.reshape(m, k)


def rows(xq: np.ndarray) -> np.ndarray:
    """The kernels' group-major codes [K // G, MP, G] as rows [MP, K] (the oracle's order)."""
    return xq.transpose(1, 0, 2).reshape(xq.shape[1], -1)


def run_quantize(x, G, MP, backend):
    m, k = x.shape
    xq = np.full((k // G, MP, G), 99, np.int8)  # group-major, as the kernels store it
    xs = np.full((MP, k // G), 9.0, np.float32)
    xsum = np.full((MP, k // G), 9, np.int32)
    quantize_groups_int8.run(backend=backend, x=x, xq=xq, xs=xs, xsum=xsum, M=m, MP=MP, K=k, G=G, BM=MP)
    return xq, xs, xsum


@pytest.mark.parametrize("backend", ["reference", "tvm"])
def test_quantize_groups_matches_formula_and_zero_pads(backend):
    rng = np.random.default_rng(0)
    x = rng.standard_normal((3, 256)).astype(np.float32) * np.array([[1.0], [1e-3], [50.0]], np.float32)
    x[1, :64] = 0.0  # an all-zero group: scale 0, codes 0
    xq, xs, xsum = run_quantize(x, 64, 4, backend)
    oq, os_, osum, _ = quantize_oracle(x, 64)
    assert np.array_equal(rows(xq)[:3], oq) and np.array_equal(xsum[:3], osum)
    assert np.array_equal(xs[:3], os_)
    assert not rows(xq)[3].any() and not xs[3].any() and not xsum[3].any()  # the padding row
    assert np.abs(xq.astype(np.int32)).max() <= 127


def gemv_problem(M, N, K, G, wdtype, zero_mode, seed):
    rng = np.random.default_rng(seed)
    kw = {} if zero_mode == "none" else dict(symmetric=False, zero_mode=zero_mode)
    qw = quantize(rng.standard_normal((N, K)).astype(np.float32), wdtype, G, **kw)
    x = rng.standard_normal((M, K)).astype(np.float32)
    return qw, x


def gemv_oracle(q: np.ndarray, xs: np.ndarray, xsum: np.ndarray, qw) -> np.ndarray:
    """fp64 of the kernel's formula from the natural-order codes q [M, K] (exact integers)."""
    m, k = q.shape
    g = qw.group_size
    wq = decode(qw.dtype, qw.codes()).astype(np.float64)  # [K, N] code values
    s = qw.scales.astype(np.float64)  # [K/G, N]
    z = qw.zeros.astype(np.float64) if qw.zeros is not None else None
    y = np.zeros((m, qw.shape[0]))
    for j in range(k // g):
        p = q[:, j * g : (j + 1) * g].astype(np.float64) @ wq[j * g : (j + 1) * g]  # [M, N] exact
        sx, asum = xs[:, j : j + 1].astype(np.float64), xsum[:, j : j + 1].astype(np.float64)
        if qw.zero_mode == "none":
            y += p * sx * s[j]
        elif qw.zero_mode == "post":
            y += (p - asum * z[j]) * sx * s[j]
        else:
            y += (p * s[j] - asum * z[j]) * sx
    return y


CASES = [
    # M, N, K, G, wdtype, zero_mode
    (1, 64, 256, 128, "int4", "none"),
    (3, 100, 256, 64, "int4", "none"),  # ragged M (row tile 4) and N (column tiles of 32)
    (16, 64, 512, 128, "uint4", "post"),
    (2, 32, 256, 32, "uint4", "pre"),
]


@pytest.mark.parametrize("backend", ["reference", "tvm"])
@pytest.mark.parametrize("M,N,K,G,wdtype,zero_mode", CASES)
@pytest.mark.parametrize("tiles", [1, 2])  # 2: decode's programs of two column tiles, the last one past N at N = 32
def test_gemv_a8_equals_its_fp64_formula(backend, M, N, K, G, wdtype, zero_mode, tiles):
    qw, x = gemv_problem(M, N, K, G, wdtype, zero_mode, seed=M * N)
    bm = 1 << (M - 1).bit_length()
    mp = -(-M // bm) * bm
    xq, xs, xsum = run_quantize(x, G, mp, "reference")
    tiled = retile_columns(qw, BN)
    y = np.full((M, N), np.nan, np.float32)
    args = dict(
        xq=xq,
        xs=xs,
        xsum=xsum,
        w=tiled.words.view(np.int32).reshape(-1, K // 8, BN),
        scales=tile_group_rows(qw.scales, BN),
        y=y,
    )
    if qw.zeros is not None:
        args["zeros"] = tile_group_rows(qw.zeros, BN)
    quantized_gemv_a8.run(
        backend=backend, **args, M=M, MP=mp, N=N, K=K, wdtype=wdtype, zero_mode=zero_mode, G=G, BM=bm, BN=BN,
        TILES=tiles,
    )  # fmt: skip
    _, _, _, q = quantize_oracle(x, G)
    assert rel(y, gemv_oracle(q, xs[:M], xsum[:M], qw)) < 1e-5


@pytest.mark.parametrize("backend", ["reference", "tvm"])
@pytest.mark.parametrize("M,biased", [(16, False), (32, True), (20, True)])
def test_signed_dot_form_equals_its_fp64_formula(backend, M, biased):
    """`signed_dot=True` (int4 codes as 16·q bytes, the AMX form): the same fp64 formula as the unsigned form,
    from two's complement words and from offset-binary (biased) ones; on TVM it runs AMX where granted."""
    from lowbit.codegen.backend import compile_program
    from lowbit.codegen.tvm.runtime import amx_permitted
    from lowbit.ops.weight import offset_binary

    N, K, G = 96, 512, 128
    qw, x = gemv_problem(M, N, K, G, "int4", "none", seed=M)
    bm = 32 if M > 16 else 16
    mp = -(-M // bm) * bm
    xq, xs, xsum = run_quantize(x, G, mp, "reference")
    stored = offset_binary(qw) if biased else qw
    tiled = retile_columns(stored, BN)
    y = np.full((M, N), np.nan, np.float32)
    args = dict(xq=xq, xs=xs, y=y, scales=tile_group_rows(qw.scales, BN))  # no xsum: the form does not read it
    args["w"] = tiled.words.view(np.int32).reshape(-1, K // 8, BN)
    consts = dict(wdtype="int4", zero_mode="none", G=G, BM=bm, BN=BN, biased=biased, signed_dot=True)
    quantized_gemv_a8.run(backend, **args, M=M, MP=mp, N=N, K=K, **consts)
    _, _, _, q = quantize_oracle(x, G)
    assert rel(y, gemv_oracle(q, xs[:M], xsum[:M], qw)) < 1e-5
    if backend == "tvm":
        source = compile_program(quantized_gemv_a8.trace(**consts), "tvm", {}).source
        assert ("llvm.x86.tdpbssd" in source) == amx_permitted()


@pytest.mark.parametrize("G", [32, 64, 128, 256])
def test_a8_plans_run_a_fast_int8_dot_at_every_group_size(G):
    """The a8 path's GEMV (decode M = 16 and prefill) lowers its dots to this CPU's int8 form at every group
    size, never to the generic loops: the signed AMX form only where the dots are whole AMX tiles (G = 32 and
    64 put 16 / 32 codes per dot, which VNNI's form runs, and VNNI needs one unsigned operand)."""
    from lowbit.ops import quantize as quantize_op
    from lowbit.ops.linear import a8_plan

    qw = quantize_op(np.random.default_rng(G).standard_normal((64, 512)).astype(np.float32), "int4", G)
    for m in (16, 64):
        source = a8_plan(qw, m, "tvm", "float32").gemv.source
        assert any(INT8_INTRINSIC[mode] in source for mode in INT8_MODES), (G, m)


def test_a8_is_close_to_float_activations_and_extremes_are_exact():
    """Against float x @ Ŵ the a8 GEMV only adds the activation rounding (bounded, module docstring). With
    the extreme codes (q = -8, 7 and activations ±127) every 16-bit partial sum sits at its bound, which a
    saturating or overflowing lowering gets wrong."""
    qw, x = gemv_problem(4, 64, 512, 128, "int4", "none", seed=7)
    ref = x.astype(np.float64) @ qw.dequantize().astype(np.float64).T
    from lowbit.ops.linear import quantized_linear

    y = quantized_linear(x, qw, backend="tvm", kernel="quantized_gemv_a8")
    assert rel(y, ref) < 2e-2
    # extremes: every weight code -8, x = -1 everywhere (codes -127) -> y = 8 · 512 · s·(1/127·127)
    n, k = 64, 512
    qe = pack_quantized(np.full((n, k), -8.0), np.full((n, k // 128), 0.5), dtype="int4", group_size=128)
    xe = -np.ones((1, k), np.float32)
    ye = quantized_linear(xe, qe, backend="tvm", kernel="quantized_gemv_a8")
    assert rel(ye, xe.astype(np.float64) @ qe.dequantize().astype(np.float64).T) < 1e-6


def test_a8_takes_a_group_size_equal_to_k():
    """A recipe's group size equal to K is stored per channel (group_size -1); the graph's select_kernels
    judges the recipe's group size (a8_reason) and chooses the a8 GEMV, so the ops layer must run such a
    weight as one group of K (it refused it, and its bound launcher traced G = -1)."""
    from lowbit.ops.linear import a8_reason, linear_launcher, quantized_linear, select_kernel

    qw, x = gemv_problem(2, 64, 128, 128, "int4", "none", seed=3)
    assert qw.group_size == -1 and a8_reason("w_a16", "int4", 128, "none", 128) is None
    assert select_kernel(qw, 2, "int8").name == "quantized_gemv_a8"
    ref = x.astype(np.float64) @ qw.dequantize().astype(np.float64).T
    for backend in ("reference", "tvm"):
        assert rel(quantized_linear(x, qw, backend=backend, kernel="quantized_gemv_a8"), ref) < 2e-2
    y = torch.full((2, 64), float("nan"))
    linear_launcher(qw, 2, "tvm", "float32", "quantized_gemv_a8")(torch.from_numpy(x), y)
    assert rel(y.numpy(), ref) < 2e-2


def test_tile_group_rows_blocks_columns_and_pads_with_zeros():
    a = np.arange(3 * 70, dtype=np.float16).reshape(3, 70)  # 3 groups, 70 columns: blocks of 32, 32, 6 + pad
    t = tile_group_rows(a, 32)
    assert t.shape == (3, 3, 32) and t.flags.c_contiguous
    for j in range(3):
        cols = a[:, j * 32 : min(70, j * 32 + 32)]
        assert np.array_equal(t[j, :, : cols.shape[1]], cols)
    assert not t[2, :, 6:].any()
    with pytest.raises(ValueError, match="per-group rows"):
        tile_group_rows(a[0], 32)


@pytest.mark.parametrize("mode", INT8_MODES)
@pytest.mark.parametrize("M,N,K,G,wdtype,zero_mode", [CASES[1], CASES[2], (20, 100, 256, 128, "int4", "pre")])
def test_a8_path_at_avx512_width(M, N, K, G, wdtype, zero_mode, mode):
    """On an AVX-512 machine the TVM options resolve to 16 fp32 lanes (`fp32_lanes`) and, with VNNI, to the
    vpdpbusd dot; the lane reductions then run at that width. LLVM legalizes 16 lanes on an AVX2 CPU too, so
    the width an AVX-512 machine runs is checked on either, with each int8 dot lowering this CPU has: the
    quantizer's codes equal NumPy's, the GEMV its fp64 formula."""
    qw, x = gemv_problem(M, N, K, G, wdtype, zero_mode, seed=M + N)
    bm = 1 << (M - 1).bit_length()
    mp = -(-M // bm) * bm
    wide = {"vector": 16, "int8_dot": mode}
    xq = np.full((K // G, mp, G), 99, np.int8)
    xs = np.full((mp, K // G), 9.0, np.float32)
    xsum = np.full((mp, K // G), 9, np.int32)
    quantize_groups_int8.run("tvm", wide, x=x, xq=xq, xs=xs, xsum=xsum, M=M, MP=mp, K=K, G=G, BM=mp)
    oq, os_, osum, q = quantize_oracle(x, G)
    assert np.array_equal(rows(xq)[:M], oq) and np.array_equal(xs[:M], os_) and np.array_equal(xsum[:M], osum)
    tiled = retile_columns(qw, BN)
    y = np.full((M, N), np.nan, np.float32)
    args = dict(xq=xq, xs=xs, xsum=xsum, y=y, scales=tile_group_rows(qw.scales, BN))
    args["w"] = tiled.words.view(np.int32).reshape(-1, K // 8, BN)
    if qw.zeros is not None:
        args["zeros"] = tile_group_rows(qw.zeros, BN)
    quantized_gemv_a8.run(
        "tvm", wide, **args, M=M, MP=mp, N=N, K=K, wdtype=wdtype, zero_mode=zero_mode, G=G, BM=bm, BN=BN
    )
    assert rel(y, gemv_oracle(q, xs[:M], xsum[:M], qw)) < 1e-5
    from lowbit.codegen.backend import compile_program

    traced = quantized_gemv_a8.trace(wdtype=wdtype, zero_mode=zero_mode, G=G, BM=bm, BN=BN)
    source = compile_program(traced, "tvm", wide).source
    # "amx" takes row tiles of whole 16-row AMX tiles; smaller ones run "vnni"'s form
    want = "vnni" if mode == "amx" and bm % 16 else mode
    assert INT8_INTRINSIC[want] in source and "T.vectorized(16)" in source  # the fast dot, 16 lanes
    assert (INT8_INTRINSIC["amx"] in source) == (want == "amx")


@pytest.mark.parametrize("backend", ["reference", "tvm"])
@pytest.mark.parametrize("M,MP,G,BM", [(3, 4, 64, 4), (1, 1, 128, 1), (16, 16, 32, 16)])
def test_regroup_lays_out_per_token_codes_as_the_quantizer_does(backend, M, MP, G, BM):
    """W4A8 codes quantized per token, regrouped: group-major, even k then odd k, the row's scale per group,
    the group's code sum; padding rows zero (the outputs start as garbage)."""
    rng = np.random.default_rng(M * G)
    K = 4 * G
    codes = rng.integers(-127, 128, (M, K)).astype(np.int8)
    scale = rng.random(M).astype(np.float32)
    xq = np.full((K // G, MP, G), 99, np.int8)
    xs = np.full((MP, K // G), np.nan, np.float32)
    xsum = np.full((MP, K // G), 7, np.int32)
    regroup_int8.run(backend=backend, codes=codes, scale=scale, xq=xq, xs=xs, xsum=xsum, M=M, MP=MP, K=K, G=G, BM=BM)
    assert (xq[:, :M] == rows_to_groups(codes, G)).all() and (xq[:, M:] == 0).all()
    assert (xs[:M] == scale[:, None]).all() and (xs[M:] == 0).all()
    assert (xsum[:M] == codes.astype(np.int32).reshape(M, K // G, G).sum(-1)).all() and (xsum[M:] == 0).all()


def rows_to_groups(codes: np.ndarray, G: int) -> np.ndarray:
    """[M, K] codes as [K // G, M, G], each group's even-k codes then its odd-k codes."""
    m, k = codes.shape
    return codes.reshape(m, k // G, G // 2, 2).transpose(1, 0, 3, 2).reshape(k // G, m, G)


def token_rows(rng: np.random.Generator, M: int, K: int, kind: str) -> np.ndarray:
    """Activations [M, K] float32 of one kind: gaussian at a random scale (1e-9 .. 1e8), halves (x / sa lands
    on .5 ties), a zero row, a row with an inf / a NaN, a value past float16's range of scales."""
    x = rng.standard_normal((M, K)).astype(np.float32) * np.float32(10.0 ** rng.uniform(-9, 8))
    if kind == "halves":  # amax 127 -> sa 1, so every x / sa is its own half: ties to even
        x = rng.integers(-254, 255, (M, K)).astype(np.float32) / 2
        x[:, 0] = 127.0
    elif kind == "zero":
        x[rng.integers(0, M)] = 0.0
    elif kind == "nonfinite":
        x[rng.integers(0, M), rng.integers(0, K)] = rng.choice([np.inf, -np.inf, np.nan])
    elif kind == "huge":
        x[0, 0] = 3e38  # sa saturates at 65504: x / sa past 127, codes clip
    return x


@settings(max_examples=25, deadline=None)
@given(
    M=st.integers(1, 20),
    groups=st.integers(1, 4),
    G=st.sampled_from([32, 64, 128]),
    BM=st.sampled_from([1, 2, 4, 16]),
    kind=st.sampled_from(["gauss", "halves", "zero", "nonfinite", "huge"]),
    adtype=st.sampled_from(["float32", "bfloat16"]),
    seed=st.integers(0, 2**16),
)
@pytest.mark.parametrize("backend", ["reference", "tvm"])
def test_token_quantizer_is_quantize_per_token_int8_bit_for_bit(backend, M, groups, G, BM, kind, adtype, seed):
    """`quantize_tokens_int8` (W4A8's float activations on the a8 path) against `lowbit.quant`'s per-token
    quantizer laid out by `regroup_int8`'s oracle: the same codes, scales and code sums, bit for bit (a
    non-finite row: codes 0 and a NaN scale, as `ops.linear._quantize_tokens`); padding rows zero."""
    check_token_quantizer(backend, M, groups, G, BM, kind, adtype, seed)


def check_token_quantizer(backend, M, groups, G, BM, kind, adtype, seed):
    from lowbit.dtypes import dtype as as_dtype
    from lowbit.ops.linear import _quantize_tokens

    rng = np.random.default_rng(seed)
    K, MP = G * groups, -(-M // BM) * BM
    x = token_rows(rng, M, K, kind)
    if adtype == "bfloat16":
        x = x.astype(as_dtype("bfloat16").host_dtype)
    qa, sa = _quantize_tokens(x.astype(np.float32))
    xq = np.full((K // G, MP, G), 99, np.int8)
    xs = np.full((MP, K // G), -5.0, np.float32)
    xsum = np.full((MP, K // G), 7, np.int32)
    args = dict(x=x, xq=xq, xs=xs, xsum=xsum, M=M, MP=MP, K=K, G=G, BM=BM, adtype=adtype)
    quantize_tokens_int8.run(backend=backend, **args)
    assert (xq[:, :M] == rows_to_groups(qa, G)).all() and (xq[:, M:] == 0).all()
    assert np.array_equal(xs[:M], np.repeat(sa[:, None], K // G, 1), equal_nan=True) and (xs[M:] == 0).all()
    assert (xsum[:M] == qa.astype(np.int32).reshape(M, K // G, G).sum(-1)).all() and (xsum[M:] == 0).all()


@settings(max_examples=20, deadline=None)
@given(
    M=st.integers(1, 12),
    K=st.integers(1, 400),
    BM=st.sampled_from([1, 2, 4]),
    BK=st.sampled_from([32, 128, 256]),
    kind=st.sampled_from(["gauss", "halves", "zero", "nonfinite", "huge"]),
    adtype=st.sampled_from(["float32", "bfloat16"]),
    seed=st.integers(0, 2**16),
)
@pytest.mark.parametrize("backend", ["reference", "tvm"])
def test_row_quantizer_is_quantize_per_token_int8_bit_for_bit(backend, M, K, BM, BK, kind, adtype, seed):
    """`quantize_rows_int8` (W4A8's activations where Triton launches) against `lowbit.quant`'s per-token
    quantizer: the same codes and float16 scales, bit for bit, at any K (ragged K steps); a non-finite row:
    codes 0 and a NaN scale."""
    check_row_quantizer(backend, M, K, BM, BK, kind, adtype, seed)


def check_row_quantizer(backend, M, K, BM, BK, kind, adtype, seed):
    from lowbit.dtypes import dtype as as_dtype
    from lowbit.ops.linear import _quantize_tokens

    x = token_rows(np.random.default_rng(seed), M, max(K, 2), kind)[:, :K]
    if kind == "halves":
        x[:, 0] = 127.0
    if adtype == "bfloat16":
        x = x.astype(as_dtype("bfloat16").host_dtype)
    qa, sa = _quantize_tokens(x.astype(np.float32))
    q = np.full((M, K), 99, np.int8)
    s = np.full((M,), -5.0, np.float32)
    quantize_rows_int8.run(backend=backend, x=x, qa=q, sa=s, M=M, K=K, BM=BM, BK=BK, adtype=adtype)
    assert np.array_equal(q, qa) and np.array_equal(s, sa, equal_nan=True)


@pytest.mark.parametrize("kind,adtype", [("halves", "float32"), ("nonfinite", "bfloat16")])
def test_row_quantizer_on_triton_and_for_sm90(kind, adtype):
    """Through the Triton interpreter, bit for bit, and compiled ahead of time for sm_90 as the GPU runs it
    (`ops.linear.quantize_rows_triton`: BM 1, BK up to 2048, fp16 / bf16 x)."""
    import lowbit.codegen.triton as triton_backend
    from lowbit.codegen.backend import compile_program

    check_row_quantizer("triton", 3, 200, 1, 128, kind, adtype, 11)
    for dt in ("float16", "bfloat16"):
        compiled = compile_program(quantize_rows_int8.trace(adtype=dt, BM=1, BK=2048), "triton")
        assert triton_backend.compile_sm90(compiled)["cubin"]


@pytest.mark.gpu
@pytest.mark.parametrize("m,k", [(1, 4096), (37, 1000), (1024, 8192)])
def test_row_quantizer_on_cuda_is_the_torch_quantizer(m, k):
    """On the GPU the fused kernel gives `quantize_per_token_int8_torch`'s codes and scales bit for bit."""
    from lowbit.ops.linear import quantize_per_token_int8_torch, quantize_rows_triton

    x = torch.randn(m, k, device="cuda", dtype=torch.float16) * 3
    x[0, : k // 2] = torch.arange(k // 2, device="cuda", dtype=torch.float16) % 255 / 2  # ties
    if m > 1:
        x[1, 5] = float("inf")
    qa, sa = quantize_rows_triton(x)
    ta, ts = quantize_per_token_int8_torch(x)
    assert torch.equal(qa, ta) and torch.equal(torch.nan_to_num(sa, 7.0), torch.nan_to_num(ts.float(), 7.0))
