"""The decoded GEMM form (`lower._Emitter.decoded_plan` / `_dot_decoded_gemm`, option decode_gemm): the GEMV's
dot over column-tiled codes of any width the table decode has no GEMM form for (1-3 and 5-8 bits, integer and
float formats, inf/NaN codes included), with more rows than a register block, decodes each tile's codes once
(`_word_walk`: aligned word rows, or the guarded walk where per_word does not divide the tile's first k) and
runs the tile's dot as AMX-BF16 tiles (bf16 x, or fp32 x as three exact bf16 parts from AMX_FP32_ROWS rows) or
fp32 FMA register blocks. Checked against the fp64 `x @ dequant(W)` (relative to Σ|x|·(|w| + |z·s|), as in
test_tvm_lut_decode.py) over widths, zero modes, group sizes, activation dtypes and ragged row tiles, with the
form's markers in the source; decode_gemm False keeps the generic loops. Needs AVX-512."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from lowbit.artifact.fingerprint import isa_flags
from lowbit.codegen.backend import compile_program
from lowbit.codegen.tvm.runtime import amx_permitted
from lowbit.kernels.gemv import quantized_gemv
from lowbit.ops.weight import quantize, retile_columns

pytestmark = pytest.mark.skipif("avx512f" not in isa_flags(), reason="the decoded GEMM form needs AVX-512")
AMX_BF16 = "amx_bf16" in isa_flags() and "avx512_bf16" in isa_flags() and amx_permitted()
BN = 64
# fp32 sums over K = 256 (the AMX form's three parts: 3x the roundings); bf16 / fp16 x: the output's rounding
TOL = {"float32": 4e-6, "bfloat16": 2.0**-8, "float16": 2.0**-10}
WIDTHS = ["int1", "uint2", "int3", "uint3", "int5", "uint6", "int7", "int8", "uint8"]
FLOATS = ["fp3_e1m1", "fp5_e2m2", "fp6_e3m2", "fp6_e2m3", "fp7_e4m2", "fp8_e4m3", "fp8_e5m2"]


def run(dtype, M, G, adtype, BM, options=None, seed=0, zero_mode=None, N=128, K=256):
    import torch

    rng = np.random.default_rng(seed)
    quant = dict(symmetric=False, zero_mode=zero_mode) if zero_mode else {}
    qw = quantize(rng.standard_normal((N, K)).astype(np.float32), dtype, G, **quant)
    tiled = retile_columns(qw, BN)
    x = torch.from_numpy(rng.standard_normal((M, K)).astype(np.float32)).to(getattr(torch, adtype))
    y = torch.full((M, N), float("nan"), dtype=x.dtype)
    consts = dict(wdtype=dtype, G=G, zero_mode=qw.zero_mode, adtype=adtype, sdtype=str(qw.scales.dtype))
    consts.update(wlayout=tiled.layout, BM=BM, BN=BN, BK=G if G != -1 else 128)
    kernel = compile_program(quantized_gemv.trace(**consts), "tvm", {"tm": 2, "vector": 16, **(options or {})})
    args = dict(x=x, w=tiled.words, scales=qw.scales, y=y, M=M, N=N, K=K)
    args["zeros"] = qw.zeros if qw.zeros is not None else np.zeros_like(qw.scales)
    kernel(args)
    w = qw.dequantize().astype(np.float64).T
    xd = x.double().numpy()
    ref = xd @ w
    group = K if G == -1 else G
    zs = 0.0 if qw.zeros is None else np.repeat(np.abs(qw.zeros * qw.scales).astype(np.float64), group, axis=0)
    scale = np.abs(xd) @ (np.abs(w) + zs)
    out = y.double().numpy()
    assert np.isfinite(out).all()
    return float(np.linalg.norm(out - ref) / np.linalg.norm(scale)), kernel.source


def marker(adtype, BM):
    """What the source holds where the decoded form runs: AMX tiles (bf16 x, or fp32 x from 64 rows) or the
    fp32 tile the FMA blocks read."""
    amx = AMX_BF16 and (adtype == "bfloat16" or (adtype == "float32" and BM >= 64))
    return "llvm.x86.tdpbf16ps" if amx else "wd = T.decl_buffer"


@settings(max_examples=14, deadline=None)
@given(
    dtype=st.sampled_from(WIDTHS + FLOATS),
    adtype=st.sampled_from(["float32", "bfloat16", "float16"]),
    g=st.sampled_from([32, 64, 128, -1]),
    rows=st.sampled_from([(16, 16), (20, 16), (40, 32), (64, 64), (70, 64)]),  # (M, BM): ragged row tiles too
    zero=st.booleans(),
)
def test_decoded_form_equals_the_fp64_reference(dtype, adtype, g, rows, zero):
    M, BM = rows
    zero_mode = "post" if zero and dtype.startswith("int") else None
    err, src = run(dtype, M, g, adtype, BM, seed=M + BM, zero_mode=zero_mode)
    assert err < TOL[adtype], (dtype, adtype, g, rows, err)
    assert marker(adtype, BM) in src


@pytest.mark.parametrize("dtype", ["int3", "int8", "fp6_e3m2", "fp8_e4m3"])
@pytest.mark.parametrize("adtype,BM", [("bfloat16", 16), ("float32", 32), ("float32", 64)])
def test_each_path_of_the_form(dtype, adtype, BM):
    """Aligned words (int8: four a word), the guarded walk (int3: ten a word against groups of 32; fp6: five),
    direct pairs (even per_word) and the fp32 tile then pairs (odd), on each dot (AMX bf16, FMA, AMX fp32)."""
    err, src = run(dtype, BM + 3, 32, adtype, BM)
    assert err < TOL[adtype], err
    assert marker(adtype, BM) in src


@pytest.mark.skipif("avx512_bf16" not in isa_flags(), reason="vdpbf16ps needs AVX-512 BF16")
@pytest.mark.parametrize("dtype", ["int8", "int3", "fp6_e3m2"])
def test_bf16_rows_without_amx_take_the_pair_dot(dtype):
    """bf16_dot "avx512bf16" (a CPU with AVX-512 BF16 but no AMX): the same decoded pairs, dotted by vdpbf16ps
    register blocks (the stand-in in the source, no AMX tiles), within the output's bf16 rounding."""
    from lowbit.codegen.tvm.bf16_dot import uses_stand_in

    err, src = run(dtype, 21, 128, "bfloat16", 16, {"bf16_dot": "avx512bf16"})
    assert err < TOL["bfloat16"], err
    assert uses_stand_in(src) and "tdpbf16ps" not in src


def test_off_keeps_the_generic_loops():
    err, src = run("int8", 32, 128, "float32", 32, {"decode_gemm": False})
    assert err < TOL["float32"]
    assert "wd = T.decl_buffer" not in src and "tdpbf16ps" not in src


def test_non_finite_codes_decode_to_their_values():
    """fp8_e5m2 weights with inf and NaN codes: the decoded form carries them (NaN where the reference has NaN,
    inf where it has inf), not zeros."""
    import torch

    from lowbit.dtypes import dtype as lookup

    dt = lookup("fp8_e5m2")
    rng = np.random.default_rng(3)
    qw = quantize(rng.standard_normal((64, 256)).astype(np.float32), "fp8_e5m2", 128)
    codes = qw.codes().copy()  # [K, N]
    codes[5, 3] = 0x7C  # +inf
    codes[9, 7] = 0x7F  # NaN
    qw = type(qw)(qw.dtype, qw.group_size, qw.zero_mode, qw.shape, qw.layout, qw.layout.pack(codes), qw.scales,
                  qw.zeros, qw.scheme, qw.channel_scales)  # fmt: skip
    tiled = retile_columns(qw, BN)
    x = torch.ones((32, 256), dtype=torch.float32)
    y = torch.zeros((32, 64), dtype=torch.float32)
    consts = dict(wdtype="fp8_e5m2", G=128, zero_mode="none", adtype="float32", sdtype=str(qw.scales.dtype))
    consts.update(wlayout=tiled.layout, BM=32, BN=BN, BK=128)
    kernel = compile_program(quantized_gemv.trace(**consts), "tvm", {"tm": 2, "vector": 16})
    args = dict(x=x, w=tiled.words, scales=qw.scales, zeros=np.zeros_like(qw.scales), y=y, M=32, N=64, K=256)
    kernel(args)
    assert "wd = T.decl_buffer" in kernel.source and dt.has_inf
    out = y.numpy()
    assert np.isposinf(out[:, 3]).all() and np.isnan(out[:, 7]).all()
    others = np.delete(out, [3, 7], axis=1)
    assert np.isfinite(others).all()
