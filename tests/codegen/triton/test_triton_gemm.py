"""quantized_gemm on the triton backend equals the reference interpreter and NumPy's x @ dequant(W)."""

from __future__ import annotations

import numpy as np
import pytest
from backend_harness import run_both
from hypothesis import given, settings
from hypothesis import strategies as st

from lowbit.dtypes import dtype
from lowbit.kernels.quantized_gemm import quantized_gemm, random_problem, relative_error

INT_DTYPES = [f"{s}int{b}" for s in ("", "u") for b in range(1, 9)]
FLOAT_DTYPES = ["fp3_e1m1", "fp4_e2m1", "fp4_e3m0", "fp5_e2m2", "fp6_e2m3", "fp6_e3m2", "fp8_e4m3", "fp8_e5m2"]
# vs NumPy: one fp16 rounding of y (2^-11 relative) plus fp16 weights, as in tests/kernels; vs the reference:
# the same numbers summed in another order, then rounded to fp16 (a few fp16 ulps at most)
BOUND = {"float16": 2e-3, "float32": 2e-3}
BOUND_VS_REFERENCE = {"float16": 1e-3, "float32": 1e-5}


def check(M, N, K, wdtype, G, zero_mode, adtype="float16", seed=0, **tiles):
    p = random_problem(M, N, K, wdtype, G=G, zero_mode=zero_mode, seed=seed, **tiles)
    args = dict(p.args)
    if adtype == "float32":
        args["x"], args["y"] = args["x"].astype(np.float32), args["y"].astype(np.float32)
    ref, tri = run_both(quantized_gemm, {**p.constants, "adtype": adtype}, args)
    assert relative_error(tri["y"], ref["y"]) <= BOUND_VS_REFERENCE[adtype], f"{wdtype} G={G} {zero_mode}: vs reference"
    err = relative_error(tri["y"], p.expected)
    assert err <= BOUND[adtype], f"{wdtype} G={G} {zero_mode} {M}x{N}x{K} {adtype}: relative error {err}"


@pytest.mark.parametrize("wdtype", INT_DTYPES + FLOAT_DTYPES)
def test_every_weight_dtype(wdtype):
    zero_mode = "post" if dtype(wdtype).is_integer else "none"
    check(20, 40, 128, wdtype, G=32, zero_mode=zero_mode, BM=16, BN=64, BK=64)


@settings(max_examples=8)
@given(
    M=st.integers(1, 40),
    N=st.integers(1, 96),
    kg=st.sampled_from([(64, 32), (96, 32), (128, 64), (256, 128), (100, -1), (64, -1)]),
    wdtype=st.sampled_from(INT_DTYPES + FLOAT_DTYPES),
    zero_mode=st.sampled_from(["none", "post", "pre"]),
    adtype=st.sampled_from(["float16", "float32"]),
    tiles=st.sampled_from([dict(BM=16, BN=32, BK=32), dict(BM=16, BN=64, BK=64)]),
    seed=st.integers(0, 2**16),
)
def test_ragged_shapes_groups_zero_modes(M, N, kg, wdtype, zero_mode, adtype, tiles, seed):
    K, G = kg
    if G != -1 and not (tiles["BK"] % G == 0 or G % tiles["BK"] == 0):
        tiles = dict(tiles, BK=G)
    check(M, N, K, wdtype, G, zero_mode, adtype, seed, **tiles)


def test_options_and_nan_bound():
    check(16, 32, 64, "int4", 32, "post", "float32", BM=16, BN=32, BK=32)
    p = random_problem(4, 8, 64, "int4", G=32)
    assert not relative_error(np.full((4, 8), np.nan), p.expected) <= BOUND["float16"]


@pytest.mark.gpu
@pytest.mark.parametrize("wdtype", ["int4", "uint3", "fp4_e2m1", "fp8_e4m3"])
def test_native_cuda_equals_reference(wdtype):
    import lowbit.codegen.triton as backend

    assert not backend.INTERPRET
    check(33, 96, 256, wdtype, 64, "post" if dtype(wdtype).is_integer else "none", BM=16, BN=64, BK=64)
