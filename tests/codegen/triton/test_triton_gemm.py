"""quantized_gemm on the triton backend equals the reference interpreter and NumPy's x @ dequant(W)."""

from __future__ import annotations

import numpy as np
import pytest
from backend_harness import FLOAT_DTYPES, GEMM_BOUND, INT_DTYPES, check_gemm
from hypothesis import given, settings
from hypothesis import strategies as st

from lowbit.dtypes import dtype
from lowbit.kernels.quantized_gemm import random_problem, relative_error

BOUND = GEMM_BOUND


def check(*args, **kwargs):
    check_gemm("triton", *args, **kwargs)


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
