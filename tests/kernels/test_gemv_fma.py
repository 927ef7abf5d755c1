"""The dot-free GEMV (`quantized_gemv_fma`) equals float64 x @ dequant(W) on the reference interpreter, Triton
(interpreter, plus an sm_90 compile) and TVM (CPU, and its CUDA lowering run through `simulate`); its magic
decode is exact for every integer width; on sm_90 its main loop keeps the codes in registers.

Bounds (relative Frobenius error against float64): every ŵ = q·s is exact in fp32 and the products and sums
are fp32, so the error is the output rounding (fp16 ≤ 2^-11, bf16 ≤ 2^-8 per element) plus fp32 accumulation
(< 1e-5 here even where a post zero cancels): the GEMV's bounds (tests/kernels/test_gemv.py).
"""

from __future__ import annotations

import re

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from lowbit.codegen.backend import compile_program
from lowbit.dtypes import dtype
from lowbit.kernels.gemv_fma import MAGIC, magic_offset, quantized_gemv_fma
from lowbit.kernels.quantized_gemm import relative_error
from tests.codegen.backend_harness import FLOAT_DTYPES, INT_DTYPES, run_both
from tests.kernels.test_gemv import BOUND, exact_reference, problem


def run_fma(M, N, K, wdtype, G, zero_mode, adtype="float16", seed=0, **tiles):
    p, consts = problem(M, N, K, wdtype, G, zero_mode, adtype, seed)
    quantized_gemv_fma.run(**p.args, **consts, **tiles)
    return p, exact_reference(p, K, G, zero_mode, wdtype)


@pytest.mark.parametrize("wdtype", INT_DTYPES + FLOAT_DTYPES)
def test_every_weight_dtype(wdtype):
    zero_mode = "post" if dtype(wdtype).is_integer else "none"
    p, ref = run_fma(3, 40, 128, wdtype, 32, zero_mode, BM=2, BN=16, BK=64)
    err = relative_error(p.args["y"], ref)
    assert err <= BOUND["float16"], f"{wdtype}: relative error {err}"


@settings(max_examples=30)
@given(
    M=st.integers(1, 9),
    N=st.integers(1, 70),
    kg=st.sampled_from([(64, 32), (128, 64), (256, 128), (96, 32), (128, -1), (100, -1)]),
    wdtype=st.sampled_from(INT_DTYPES + FLOAT_DTYPES),
    zero_mode=st.sampled_from(["none", "post", "pre"]),
    adtype=st.sampled_from(["float16", "bfloat16", "float32"]),
    tiles=st.sampled_from([dict(BM=1, BN=16, BK=32), dict(BM=2, BN=32, BK=64), dict(BM=4, BN=64, BK=128)]),
    seed=st.integers(0, 2**16),
)
def test_ragged_shapes_groups_zero_modes_activations(M, N, kg, wdtype, zero_mode, adtype, tiles, seed):
    """Ragged M / N / K (masked loads and stores), BK below, at and above the group (sub-steps), per channel."""
    K, G = kg
    p, ref = run_fma(M, N, K, wdtype, G, zero_mode, adtype, seed, **tiles)
    err = relative_error(p.args["y"], ref)
    assert err <= BOUND[adtype], f"{wdtype} G={G} {zero_mode} {adtype} {M}x{N}x{K} {tiles}: {err}"


@pytest.mark.parametrize("bits", range(1, 9))
@pytest.mark.parametrize("signed", [True, False])
def test_magic_decode_is_exact_for_every_code(bits, signed):
    """bits(u | 2^23's bits) − (2^23 + offset) = q for every code q of the width (u = q + offset)."""
    name = f"{'' if signed else 'u'}int{bits}"
    offset = magic_offset(name)
    lo = -(1 << (bits - 1)) if signed else 0
    q = np.arange(lo, lo + (1 << bits), dtype=np.int64)
    u = (q + offset).astype(np.uint32)
    assert u.min() == 0 and u.max() == (1 << bits) - 1  # the field's bits, top bit flipped when signed
    v = (u | np.uint32(MAGIC)).view(np.float32).astype(np.float64) - (2**23 + offset)
    assert np.array_equal(v, q.astype(np.float64))
    assert magic_offset("fp4_e2m1") is None


CASES = [
    ("int4", 128, "none", "float16", 1),
    ("uint3", 32, "post", "float32", 3),
    ("int2", 64, "pre", "float16", 4),
    ("fp6_e3m2", 64, "none", "bfloat16", 2),
    ("uint8", -1, "post", "float16", 1),
    ("fp4_e2m1", -1, "none", "float32", 4),
]


@pytest.mark.parametrize("backend", ["triton", "tvm", "tvm-cuda"])
@pytest.mark.parametrize("wdtype,G,zero_mode,adtype,M", CASES)
def test_backends_equal_the_oracle(backend, wdtype, G, zero_mode, adtype, M):
    """Each backend against float64 (Triton's kernel also compiled for sm_90, with the GPU's codes_last)."""
    N, K = 40, 256
    p, consts = problem(M, N, K, wdtype, G, zero_mode, adtype, seed=7)
    tiles = {"BM": min(M, 4), "BN": 16, "BK": 64}
    options = {"codes_last": True} if backend == "triton" else None
    ref_out, out = run_both(quantized_gemv_fma, {**consts, **tiles}, p.args, options, backend)
    exact = exact_reference(p, K, G, zero_mode, wdtype)
    for what, y in (("reference", ref_out["y"]), (backend, out["y"])):
        err = relative_error(y, exact)
        assert err <= BOUND[adtype], f"{what} {wdtype} G={G} {zero_mode} {adtype} M={M}: {err}"


@pytest.mark.parametrize("m,n", [(1, 8192), (1, 28672), (4, 8192), (4, 28672)])
def test_sm90_main_loop_keeps_codes_in_registers(m, n):
    """The GPU default's kernel (int4 g128, K = 8192, the issue's layers) on sm_90: in the K loop no layout
    conversion of a codes-sized tile (the tensor-core GEMV stages every code through shared memory; only x's
    [1, K step] rows may convert: at most one barrier pair per row and K sub-step; a 128-column tile with 4
    warps had 32 per step) and no integer-to-float conversion instruction (the magic decode)."""
    import lowbit.codegen.triton as triton_backend
    from lowbit.kernels.spaces import FMA, gpu_default

    problem_ = {"M": m, "N": n, "K": 8192, "G": 128, "wdtype": "int4", "adtype": "float16"}
    cfg = gpu_default(FMA, problem_, 132)
    program = quantized_gemv_fma.trace(wdtype="int4", G=128, adtype="float16", **cfg.constant_dict)
    options = {**cfg.option_dict, "inbounds": ("N", "K")}
    stages = triton_backend.compile_sm90(compile_program(program, "triton", options), aligned=True)
    ttgir = stages["ttgir"]
    loop = ttgir[ttgir.index("scf.for") : ttgir.index("scf.yield")]
    converts = re.findall(r"ttg\.convert_layout %\S+ : tensor<([0-9x]+)x\w+", loop)
    step = min(cfg.constant_dict["BK"], 128)
    assert all(shape.startswith("1x") for shape in converts), f"codes tiles converted in the loop: {converts}"
    assert f"{cfg.constant_dict['BN']}x{step}xf32" in loop  # the [BN, K step] accumulators are carried
    barriers = _ptx_loop(stages["ptx"]).count("bar.sync")
    allowed = 2 * cfg.constant_dict["BM"] * (cfg.constant_dict["BK"] // step)
    assert barriers <= allowed, f"{cfg}: {barriers} barriers per K step > {allowed} (shared-memory round trips)"
    assert "cvt.rn.f32.s32" not in stages["ptx"]  # no int -> float conversion: the magic decode


def _ptx_loop(ptx: str) -> str:
    """The PTX of the K loop: from its header label to the branch back to it."""
    for label in re.findall(r"^\$(L__BB0_\d+):", ptx, flags=re.M):
        back = re.search(rf"bra(?:\.uni)?\s+\${label};", ptx)
        start = ptx.index(f"${label}:")
        if back and back.start() > start:
            return ptx[start : back.end()]
    raise AssertionError("no loop found in the PTX")
