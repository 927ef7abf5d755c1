"""Search spaces of the library kernels: defaults valid for common problems, constraints give reasons."""

from __future__ import annotations

import importlib

import pytest

from lowbit.codegen.backend import Config
from lowbit.kernels.spaces import KERNELS, default_config, space
from lowbit.ops.linear import plans_of

PROBLEM = {"M": 1, "N": 4096, "K": 4096, "G": 128, "wdtype": "int4", "adtype": "float16"}


@pytest.mark.parametrize("backend", ["reference", "triton", "tvm"])
@pytest.mark.parametrize("kernel", KERNELS)
def test_default_is_valid_and_traces(kernel, backend):
    import lowbit.kernels as K

    problem = dict(PROBLEM, wdtype="uint4" if kernel.startswith("w4a8") else "int4")
    sp = space(kernel, backend)
    assert sp.check(sp.default, problem) is None
    chosen = default_config(kernel, backend, problem)
    assert sp.check(chosen, problem) is None
    if backend != "tvm":
        assert chosen == sp.default
    elif kernel == "quantized_gemv":  # on the CPU the GEMV tile is exactly as tall as M (a power of two)
        for m, bm in ((1, 1), (3, 4), (16, 16)):
            assert default_config(kernel, backend, dict(problem, M=m)).constant_dict["BM"] == bm
        # past 16 rows (a weight `ops.linear.gemv_serves`): the GEMM form's tiles (`gemm_row_tile`, `gemm_column_tile`)
        from lowbit.artifact.fingerprint import isa_flags

        pair = "avx512_bf16" in isa_flags()  # bf16 x runs the pair dot, whose 256-row tiles M = 256 takes
        for m, n, bm, bn in ((17, 4096, 32, 256), (40, 384, 64, 128), (100, 11008, 128, 256), (256, 4000, 128, 64)):
            for adtype in ("bfloat16", "float16"):
                cfg = default_config(kernel, backend, dict(problem, M=m, N=n, adtype=adtype)).constant_dict
                want = 256 if m == 256 and pair and adtype == "bfloat16" else bm
                assert (cfg["BM"], cfg["BN"]) == (want, bn)
    assert sp.valid(problem)
    fixed = {"wdtype": problem["wdtype"]}
    if kernel != "w4a8_gemm_per_channel":
        fixed["G"] = 128
    getattr(K, kernel).trace(**fixed, **sp.default.constant_dict)


def reason(kernel, backend, problem, constants, options=None):
    sp = space(kernel, backend)
    cfg = Config.make({**sp.default.constant_dict, **constants}, {**sp.default.option_dict, **(options or {})})
    return sp.check(cfg, {**PROBLEM, **problem})


def test_constraint_reasons():
    assert "group size G=96" in reason("quantized_gemm", "tvm", {"G": 96}, {"BK": 64})
    assert "codes per 32-bit word" in reason("quantized_gemm", "tvm", {"wdtype": "int2"}, {"BK": 8})
    assert reason("quantized_gemm", "tvm", {"wdtype": "int3"}, {"BK": 32}) is None  # waived: 10 per word
    assert "tensor-core minimum for int8" in reason("w4a8_gemm_per_group", "triton", {"G": 16}, {"BK": 16})
    assert "tensor-core minimum" in reason("quantized_gemv", "triton", {"G": 8}, {"BK": 32})
    big = reason("quantized_gemm", "triton", {"wdtype": "int8"}, {"BM": 256, "BN": 256, "BK": 128}, {"num_stages": 4})
    assert "shared memory" in big
    assert reason("quantized_gemm", "tvm", {}, {"BM": 128, "BN": 128, "BK": 128}) is None  # no smem on CPU


def test_unknown_names():
    with pytest.raises(ValueError, match="has no search space"):
        space("gemm", "tvm")
    with pytest.raises(ValueError, match="no options table"):
        space("quantized_gemm", "cuda")


@pytest.mark.parametrize("flags", [("avx512f", "avx512_bf16"), ("avx512f",), ("avx2", "fma")])
def test_m1_pair_dot_takes_256_column_tiles(flags, monkeypatch):
    """TVM's M = 1 GEMV: 256-column tiles (16 accumulators) for the vdpbf16ps pair dot (bf16 x, 4-bit codes,
    AVX-512 BF16) where they divide N; else 8 vectors of columns (128 on AVX-512, 64 on AVX2)."""
    # the module itself: the package re-exports a function of that name
    fingerprint = importlib.import_module("lowbit.artifact.fingerprint")
    monkeypatch.setattr(fingerprint, "isa_flags", lambda: flags)
    pair = "avx512_bf16" in flags
    wide = 128 if "avx512f" in flags else 64

    def bn(**over):
        return default_config("quantized_gemv", "tvm", dict(PROBLEM, **over)).constant_dict["BN"]

    assert bn(adtype="bfloat16", N=4096) == (256 if pair else wide)
    assert bn(adtype="bfloat16", N=11008) == (256 if pair else wide)  # 43 tiles of 256
    assert bn(adtype="bfloat16", N=4224) == wide  # 256 does not divide it
    assert bn(adtype="float32", N=4096) == wide  # the fp32 form would spill 16 accumulators
    assert bn(adtype="bfloat16", N=4096, wdtype="int3") == wide  # no pair dot for 3-bit codes
    assert bn(adtype="bfloat16", N=4096, M=4) == wide // 2  # M > 1: 4 vectors, tm 2


@pytest.mark.parametrize("wdtype", ["fp3_e1m1", "fp5_e2m2", "fp6_e3m2", "int4", "int2", "int7"])
@pytest.mark.parametrize("m", [2, 4, 8, 16])
def test_table_decoded_float_gemvs_take_one_row_block(wdtype, m):
    """TVM GEMV defaults: float formats the backend decodes only by table in one row block (3, 5, 6 bits)
    get tm = BM (16 accumulator vectors) up to 8 rows (16 rows: tm 2, the decoded GEMM form, on AVX-512);
    2-, 3-, 5- and 6-bit codes take 4 rows per block at M = 4; others keep two. The chosen config runs and
    equals x @ dequant(W)."""
    import numpy as np
    import torch

    from lowbit.artifact.fingerprint import fp32_lanes
    from lowbit.dtypes import dtype
    from lowbit.ops import quantize, quantized_linear

    problem = dict(PROBLEM, M=m, wdtype=wdtype, N=64, K=256, adtype="float32")
    cfg = default_config("quantized_gemv", "tvm", problem)
    bm, bn, tm = cfg.constant_dict["BM"], cfg.constant_dict["BN"], cfg.option_dict["tm"]
    d = dtype(wdtype)
    if d.is_float and d.bits in (3, 5, 6) and (m < 16 or fp32_lanes() != 16):
        assert tm == bm and bn * bm // fp32_lanes() <= 16
    elif m == 4 and d.bits in (2, 3, 5, 6):
        assert tm == 4
    else:
        assert tm == 2
    rng = np.random.default_rng(m)
    qw = quantize(rng.standard_normal((64, 256)).astype(np.float32), wdtype, 128)
    x = torch.from_numpy(rng.standard_normal((m, 256)).astype(np.float32))
    y = quantized_linear(x, qw, backend="tvm", config=cfg).double().numpy()
    ref = x.double().numpy() @ qw.dequantize().astype(np.float64).T
    err = float(np.linalg.norm(y - ref) / np.linalg.norm(ref))
    assert np.isfinite(err) and err < 1e-5, err


@pytest.mark.parametrize("m,wdtype", [(2, "int4"), (3, "int4"), (8, "int4"), (2, "int8"), (3, "int3"), (8, "int3")])
def test_bf16_gemvs_take_one_amx_tile_of_rows_where_amx_runs_them(m, wdtype):
    """bf16 x, 2-16 rows: one 16-row tile (the pair GEMM form of 4-bit codes, the decoded GEMM form of others,
    on tdpbf16ps; padding rows dropped at the store) where TVM runs AMX-BF16 (codes of <= 6 bits other than 4
    from 5 rows), else M rounded up to a power of two; either equals x @ dequant(W)."""
    import numpy as np
    import torch

    from lowbit.kernels.spaces import _amx_bf16_rows
    from lowbit.ops import quantize, quantized_linear

    problem = dict(PROBLEM, M=m, N=128, K=256, adtype="bfloat16", wdtype=wdtype)
    amx = _amx_bf16_rows(problem) and (m > 4 or wdtype in ("int4", "int8"))
    cfg = default_config("quantized_gemv", "tvm", problem)
    assert cfg.constant_dict["BM"] == (16 if amx else 1 << (m - 1).bit_length())
    rng = np.random.default_rng(m)
    qw = quantize(rng.standard_normal((128, 256)).astype(np.float32), wdtype, 128)
    x = torch.from_numpy(rng.standard_normal((m, 256)).astype(np.float32)).bfloat16()
    y = quantized_linear(x, qw, backend="tvm").double().numpy()
    ref = x.double().numpy() @ qw.dequantize().astype(np.float64).T
    err = float(np.linalg.norm(y - ref) / np.linalg.norm(ref))
    assert np.isfinite(err) and err < 2.0**-7, err
    sources = [getattr(k, "source", "") for k in plans_of(qw).values()]
    assert any("llvm.x86.tdpbf16ps" in src for src in sources) == amx


GPU_SHAPES = [(m, n, 8192) for m in (1, 16, 64, 256, 1024, 4096) for n in (8192, 28672)]


@pytest.mark.parametrize("kernel", KERNELS)
def test_gpu_defaults_fit_the_space_and_feed_every_sm(kernel):
    """The native Triton defaults for an H200 (132 SMs) at the benchmark's GPU layers: valid in the space
    (shared memory, dot K, groups, words) for every bit width, a program per SM unless the column tile is
    already the narrowest, 4 warps and 3 stages, and the GEMV's K steps of 256 up to 64 columns, else 128 (the
    rule measured on an H200, `gpu_default`)."""
    import math

    from lowbit.kernels.spaces import gpu_default

    wdtypes = ("uint4", "uint8", "uint2") if kernel.startswith("w4a8") else ("int4", "int3", "int8", "fp6_e3m2")
    for (m, n, k), wdtype in ((s, w) for s in GPU_SHAPES for w in wdtypes):
        if (kernel == "quantized_gemv") != (m <= 16):
            continue
        problem = {"M": m, "N": n, "K": k, "G": -1 if kernel == "w4a8_gemm_per_channel" else 128, "wdtype": wdtype}
        problem["adtype"] = "int8" if kernel.startswith("w4a8") else "float16"
        cfg = gpu_default(kernel, problem, 132)
        assert cfg is not None and space(kernel, "triton").check(cfg, problem) is None, (problem, cfg)
        c = cfg.constant_dict
        split = cfg.option_dict.get("split_k", 1)
        assert math.ceil(m / c["BM"]) * math.ceil(n / c["BN"]) * split >= 132 or c["BN"] == 32, (problem, c)
        codes_last = {"codes_last": True} if kernel == "quantized_gemm" and c["BM"] == 64 else {}
        # the 64-row GEMM's 32-column tile became 64 columns split 2 ways (session 48's H200 sweep)
        split_k = {"split_k": 2} if codes_last and n == 8192 else {}
        assert cfg.option_dict == {"num_warps": 4, "num_stages": 3, **codes_last, **split_k}, (problem, cfg)
        if kernel == "quantized_gemv":
            assert c["BK"] == (256 if c["BN"] <= 64 else 128)


def test_gpu_defaults_apply_only_to_native_triton(monkeypatch):
    spaces = importlib.import_module("lowbit.kernels.spaces")
    problem = dict(PROBLEM, N=8192, K=8192)
    assert default_config("quantized_gemv", "triton", problem) == space("quantized_gemv", "triton").default
    monkeypatch.setattr(spaces, "native_triton", lambda: True)
    monkeypatch.setattr(importlib.import_module("lowbit.kernels.launch"), "device_units", lambda: 132)
    cfg = default_config("quantized_gemv", "triton", problem)
    assert cfg == spaces.gpu_default("quantized_gemv", problem, 132) and cfg.constant_dict["BN"] == 32


@pytest.mark.parametrize(
    "kernel,m,n,wdtype",
    [
        ("quantized_gemv", 1, 8192, "int4"),
        ("quantized_gemm", 64, 8192, "int4"),
        ("w4a8_gemm_per_group", 4096, 28672, "uint4"),
        ("quantized_gemv_fma", 1, 28672, "int4"),
        ("quantized_gemv_fma", 4, 8192, "int3"),
    ],
)
def test_gpu_defaults_compile_for_sm90(kernel, m, n, wdtype):
    """What the default picks on an H200 compiles for sm_90 (registers, shared memory, dot shapes)."""
    import lowbit.codegen.triton as triton_backend
    import lowbit.kernels as K
    from lowbit.codegen.backend import compile_program
    from lowbit.kernels.spaces import gpu_default

    problem = {"M": m, "N": n, "K": 8192, "G": 128, "wdtype": wdtype, "adtype": "float16"}
    cfg = gpu_default(kernel, problem, 132)
    fixed = {"wdtype": wdtype, "G": 128} | ({} if kernel.startswith("w4a8") else {"adtype": "float16"})
    program = getattr(K, kernel).trace(**fixed, **cfg.constant_dict)
    stages = triton_backend.compile_sm90(compile_program(program, "triton", cfg.option_dict), aligned=True)
    assert stages["cubin"]


def test_fma_gemv_space_bounds_its_registers():
    """The dot-free GEMV keeps BM·BN·(K sub-step) fp32 accumulators per thread: the space refuses what would
    spill, with the reason; its Triton points carry codes_last (the free transpose of the codes tile); every
    GPU default is in budget."""
    from lowbit.kernels.spaces import FMA, FMA_ACCUMULATORS, gpu_default

    sp = space(FMA, "triton")
    assert sp.default.option_dict["codes_last"] is True and all(c.option_dict["codes_last"] for c in sp)
    problem = dict(PROBLEM, G=128, M=4)
    big = Config.make({"BM": 4, "BN": 128, "BK": 128}, {"num_warps": 4, "num_stages": 3, "codes_last": True})
    assert "512 fp32 accumulators per thread > 64" in sp.check(big, problem)
    sub = Config.make({"BM": 1, "BN": 64, "BK": 256}, {"num_warps": 4, "num_stages": 3, "codes_last": True})
    assert sp.check(sub, dict(problem, G=32)) is None  # K sub-steps of one group: 64·32 / 128 = 16
    for m in (1, 2, 4):
        for n in (4096, 8192, 28672):
            for g in (32, 128, -1):
                prob = dict(PROBLEM, M=m, N=n, K=8192, G=g)
                cfg = gpu_default(FMA, prob, 132)
                assert sp.check(cfg, prob) is None, (m, n, g, cfg)
                c = cfg.constant_dict
                assert c["BM"] == min(4, 1 << (m - 1).bit_length())
                threads = 32 * cfg.option_dict["num_warps"]
                held = c["BM"] * c["BN"] * (c["BK"] if g == -1 else min(c["BK"], g)) // threads
                assert held <= FMA_ACCUMULATORS


def test_one_group_spanning_k_takes_any_k_step_up_to_it():
    """W4A8 per channel runs with G = K: any BK <= G lies in the one group (K = 100: no power of two divides
    it past 4, and BK 32 / 64 are the steps Triton can take); a BK past G is refused with the reason."""
    sp = space("w4a8_gemm_per_group", "triton")
    problem = {"M": 3, "N": 24, "K": 100, "G": 100, "wdtype": "uint4"}
    cfg = default_config("w4a8_gemm_per_group", "triton", problem)
    assert cfg.constant_dict["BK"] <= 100
    too_big = Config.make({**cfg.constant_dict, "BK": 128}, cfg.option_dict)
    assert "exceeds the single group G=100" in (sp.check(too_big, problem) or "")
