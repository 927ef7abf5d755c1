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
from lowbit.codegen.tvm.runtime import amx_permitted, cpu_target, resolve_options
from lowbit.kernels.gemv import quantized_gemv
from lowbit.ops.weight import quantize, retile_columns

pytestmark = pytest.mark.skipif("avx512f" not in isa_flags(), reason="the decoded GEMM form needs AVX-512")
AMX_BF16 = "amx_bf16" in isa_flags() and "avx512_bf16" in isa_flags() and amx_permitted()
VBMI = resolve_options({"multishift": "auto"}, cpu_target())["multishift"] == "avx512vbmi"
needs_amx_vbmi = pytest.mark.skipif(not (AMX_BF16 and VBMI), reason="the multishift pairs need AMX-BF16 and VBMI")
# integer codes an even count a word (a pair inside one word): the ones `_multishift_pairs` builds
EVEN_INTS = ["int1", "uint1", "int2", "uint2", "int3", "uint3", "int5", "uint5", "int7", "uint7"]
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


def takes_decoded_form(src, adtype, BM):
    """Whether the source holds what the decoded form runs: AMX tiles (bf16 x, or fp32 x from 64 rows), the
    vdpbf16ps pair blocks (bf16 x on a CPU with AVX-512 BF16 but no AMX: the Zen VMs) or the fp32 tile the FMA
    blocks read."""
    from lowbit.codegen.tvm.bf16_dot import uses_stand_in

    if AMX_BF16 and (adtype == "bfloat16" or (adtype == "float32" and BM >= 64)):
        return "llvm.x86.tdpbf16ps" in src
    if adtype == "bfloat16" and "avx512_bf16" in isa_flags():
        return uses_stand_in(src) and "tdpbf16ps" not in src
    return "wd = T.decl_buffer" in src


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
    assert takes_decoded_form(src, adtype, BM)


@pytest.mark.parametrize("dtype", ["int3", "int8", "fp6_e3m2", "fp8_e4m3"])
@pytest.mark.parametrize("adtype,BM", [("bfloat16", 16), ("float32", 32), ("float32", 64)])
def test_each_path_of_the_form(dtype, adtype, BM):
    """Aligned words (int8: four a word), the guarded walk (int3: ten a word against groups of 32; fp6: five),
    direct pairs (even per_word) and the fp32 tile then pairs (odd), on each dot (AMX bf16, FMA, AMX fp32)."""
    err, src = run(dtype, BM + 3, 32, adtype, BM)
    assert err < TOL[adtype], err
    assert takes_decoded_form(src, adtype, BM)


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


@needs_amx_vbmi
@settings(max_examples=10, deadline=None)
@given(
    dtype=st.sampled_from(EVEN_INTS),
    g=st.sampled_from([32, 64, 128, -1]),
    rows=st.sampled_from([(16, 16), (5, 16), (13, 16)]),
    zero=st.booleans(),
)
def test_multishift_pairs_match_the_table_pairs(dtype, g, rows, zero):
    """bf16 x on AMX, one 16-row tile: integer codes built as 1 + u/2^bits by vpmultishiftqb and one vpternlogd,
    the tile's Σa (a tile product against ones, register 7) removing the offset, against the vpermi2w table
    pairs: both within the bf16 output's rounding of the fp64 reference, on aligned and guarded walks (int3 ten
    a word, int5 six, against groups of 32..128) and ragged row tiles."""
    M, BM = rows
    zero_mode = "post" if zero and dtype.startswith("int") else None
    err, src = run(dtype, M, g, "bfloat16", BM, {"multishift": "avx512vbmi"}, seed=M, zero_mode=zero_mode)
    ref_err, ref_src = run(dtype, M, g, "bfloat16", BM, {"multishift": "none"}, seed=M, zero_mode=zero_mode)
    assert err < TOL["bfloat16"] and ref_err < TOL["bfloat16"], (err, ref_err)
    assert "pmultishift" in src and "pmultishift" not in ref_src
    assert src.count("tdpbf16ps") > ref_src.count("tdpbf16ps")  # the Σa products


@needs_amx_vbmi
def test_multishift_needs_the_affine_option_and_integer_codes():
    """bf16_affine False, float codes, odd per_word (int6: five a word) and tiles of more than one pass (64 rows:
    each pass would repeat the Σa products) keep the table pairs."""
    _, src = run("int3", 16, 128, "bfloat16", 16, {"multishift": "avx512vbmi", "bf16_affine": False})
    assert "pmultishift" not in src
    err, src = run("int3", 70, 128, "bfloat16", 64, {"multishift": "avx512vbmi"})
    assert err < TOL["bfloat16"] and "pmultishift" not in src
    for dtype in ("fp6_e3m2", "int6", "int8"):
        err, src = run(dtype, 16, 128, "bfloat16", 16, {"multishift": "avx512vbmi"})
        assert err < TOL["bfloat16"] and "pmultishift" not in src, dtype


@pytest.mark.skipif(not AMX_BF16, reason="the parts are the AMX form's")
@pytest.mark.parametrize("dtype", ["int3", "int7", "uint2", "fp6_e3m2", "int4", "fp4_e2m1"])
def test_amx_parts_give_the_same_sums(dtype):
    """amx_parts 1, 2 and 4: the tile decoded whole, or part by part, each part's tile products right after its
    decode. The same tile products in the same order: bit-identical outputs; the source alternates decode loops
    (word walks `wr`; the 4-bit pair-order table form's word rows `ko`) and tile-product loops (`kc`)."""
    import torch

    outs, blocks = [], 0
    for parts in (1, 2, 4):
        rng = np.random.default_rng(7)
        qw = quantize(rng.standard_normal((64, 256)).astype(np.float32), dtype, 128)
        tiled = retile_columns(qw, BN, pairs=qw.dtype.bits == 4)
        x = torch.from_numpy(rng.standard_normal((16, 256)).astype(np.float32)).bfloat16()
        y = torch.zeros((16, 64), dtype=torch.bfloat16)
        consts = dict(wdtype=dtype, G=128, zero_mode=qw.zero_mode, adtype="bfloat16", sdtype=str(qw.scales.dtype))
        consts.update(wlayout=tiled.layout, BM=16, BN=BN, BK=128)
        opts = {"tm": 2, "vector": 16, "amx_parts": parts}
        kernel = compile_program(quantized_gemv.trace(**consts), "tvm", opts)
        kernel(dict(x=x, w=tiled.words, scales=qw.scales, zeros=np.zeros_like(qw.scales), y=y, M=16, N=64, K=256))
        outs.append(y.float().numpy())
        lines = kernel.source.split("\n")
        walks = [i for i, line in enumerate(lines) if line.lstrip().startswith(("for wr", "for ko"))]
        products = [i for i, line in enumerate(lines) if line.lstrip().startswith("for kc")]
        blocks = blocks or len(products)  # AMX blocks (a ragged-rows guard emits two), each with `parts` loops
        assert len(products) == blocks * parts and len(walks) >= parts
        assert all(any(w < p for w in walks) for p in products)  # each part's products follow a decode
        if parts > 1:
            assert walks[-1] > products[0]  # a later part decodes after the first part's products
    if qw.dtype.bits != 4:  # `run`'s layout is the plain column tiling
        assert run(dtype, 16, 128, "bfloat16", 16)[0] < TOL["bfloat16"]
    assert np.isfinite(outs[0]).all()
    assert all(np.array_equal(outs[0], o) for o in outs[1:])


@pytest.mark.parametrize("bad", [{"amx_parts": 0}, {"multishift": "vbmi"}, {"amx_parts": 2.0}])
def test_bad_part_and_multishift_options_are_clear_errors(bad):
    from lowbit.codegen.backend import BackendError

    name = next(iter(bad))
    with pytest.raises(BackendError, match=name):
        run("int3", 16, 128, "bfloat16", 16, bad)


@pytest.mark.parametrize("span,aligned", [(4, True), (16, True), (32, True), (4, False), (6, False), (10, False)])
@pytest.mark.parametrize("n", [1, 2, 4])
def test_walk_parts_cover_their_k(span, n, aligned):
    """`_walk_steps`: for every lead the walk may start with (0 when aligned, else any even lead below span),
    the steps of parts 0 .. c hold every tile k before KT·(c + 1)/n, and the last part ends at the walk's end."""
    from lowbit.codegen.tvm.lower import _walk_steps

    KT = 128
    steps = KT // span if aligned else (KT - 1) // span + 2  # `_word_walk`'s count
    for lead in [0] if aligned else range(0, span, 2):
        prev = 0
        for c in range(n):
            hi = _walk_steps(KT, span, steps, aligned, c, n)
            assert prev <= hi <= steps
            covered = span * hi - lead  # tile k below this are decoded
            assert covered >= KT * (c + 1) // n or hi == steps, (lead, c, hi)
            prev = hi
        assert prev == steps
