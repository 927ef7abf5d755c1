"""The DSL GEMM on the reference interpreter equals NumPy's x @ dequant(W), for every weight dtype."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from lowbit.dtypes import dtype
from lowbit.kernels.quantized_gemm import quantized_gemm, random_problem, relative_error

INT_DTYPES = [f"{s}int{b}" for s in ("", "u") for b in range(1, 9)]
FLOAT_DTYPES = ["fp3_e1m1", "fp4_e2m1", "fp4_e3m0", "fp5_e2m2", "fp6_e2m3", "fp6_e3m2", "fp8_e4m3", "fp8_e5m2"]
# the output is fp16: one rounding of |y| costs <= 2^-11 relative; 2e-3 leaves room for the fp16 weights
BOUND = 2e-3


def check(M, N, K, wdtype, G, zero_mode, seed=0, **tiles):
    p = random_problem(M, N, K, wdtype, G=G, zero_mode=zero_mode, seed=seed, **tiles)
    quantized_gemm.run(**p.args, **p.constants)
    err = relative_error(p.args["y"], p.expected)
    assert err <= BOUND, f"{wdtype} G={G} {zero_mode} {M}x{N}x{K}: relative error {err}"


@pytest.mark.parametrize("wdtype", INT_DTYPES + FLOAT_DTYPES)
def test_every_weight_dtype_unchanged_kernel(wdtype):
    check(20, 40, 128, wdtype, G=32, zero_mode="post" if dtype(wdtype).is_integer else "none", BK=64)


@settings(max_examples=40)
@given(
    M=st.integers(1, 40),
    N=st.integers(1, 70),
    kg=st.sampled_from([(64, 32), (96, 32), (128, 64), (120, 40), (100, -1), (64, -1)]),
    wdtype=st.sampled_from(INT_DTYPES + FLOAT_DTYPES),
    zero_mode=st.sampled_from(["none", "post", "pre"]),
    tiles=st.sampled_from([dict(BM=16, BN=32, BK=32), dict(BM=32, BN=16, BK=64), dict(BM=16, BN=64, BK=128)]),
    seed=st.integers(0, 2**16),
)
def test_ragged_shapes_groups_and_zero_conventions(M, N, kg, wdtype, zero_mode, tiles, seed):
    K, G = kg
    if G != -1 and not (tiles["BK"] % G == 0 or G % tiles["BK"] == 0):
        tiles = dict(tiles, BK=G)
    check(M, N, K, wdtype, G, zero_mode, seed, **tiles)


def test_nan_never_passes():
    p = random_problem(4, 8, 64, "int4", G=32)
    assert not relative_error(np.full((4, 8), np.nan), p.expected) <= BOUND
