"""quantized_gemm / quantized_gemv on the TVM backend equal the reference interpreter and NumPy's x @ dequant(W)."""

from __future__ import annotations

import numpy as np
import pytest
from backend_harness import FLOAT_DTYPES, GEMM_BOUND, INT_DTYPES, check_gemm
from hypothesis import given, settings
from hypothesis import strategies as st

from lowbit.codegen.backend import compile_program
from lowbit.dtypes import dtype
from lowbit.kernels.quantized_gemm import quantized_gemm, random_problem, relative_error
from lowbit.lang.kernel import infer_scalars

BOUND = GEMM_BOUND


def check(*args, **kwargs):
    check_gemm("tvm", *args, **kwargs)


@pytest.mark.parametrize("wdtype", INT_DTYPES + FLOAT_DTYPES)
def test_every_weight_dtype(wdtype):
    zero_mode = "post" if dtype(wdtype).is_integer else "none"
    check(20, 40, 128, wdtype, G=32, zero_mode=zero_mode, BM=16, BN=32, BK=32)


@settings(max_examples=10)
@given(
    M=st.integers(1, 40),
    N=st.integers(1, 96),
    kg=st.sampled_from([(64, 32), (96, 32), (128, 64), (256, 128), (100, -1), (64, -1)]),
    wdtype=st.sampled_from(INT_DTYPES + FLOAT_DTYPES),
    zero_mode=st.sampled_from(["none", "post", "pre"]),
    adtype=st.sampled_from(["float16", "float32", "bfloat16"]),
    tiles=st.sampled_from([dict(BM=16, BN=32, BK=32), dict(BM=1, BN=64, BK=64), dict(BM=8, BN=16, BK=64)]),
    options=st.sampled_from([None, {"vector": 8, "unroll": 1, "tm": 1}, {"parallel": "none", "tm": 2}]),
    seed=st.integers(0, 2**16),
)
def test_ragged_shapes_groups_zero_modes(M, N, kg, wdtype, zero_mode, adtype, tiles, options, seed):
    K, G = kg
    if G != -1 and not (tiles["BK"] % G == 0 or G % tiles["BK"] == 0):
        tiles = dict(tiles, BK=G)
    check(M, N, K, wdtype, G, zero_mode, adtype, seed, options, **tiles)


def test_torch_tensors_in_place_and_nan_never_passes():
    import torch

    p = random_problem(5, 48, 128, "int4", G=64, zero_mode="post", BM=1, BN=16, BK=64)
    program = quantized_gemm.trace(**p.constants)
    args = {k: torch.from_numpy(v.copy()) for k, v in p.args.items()}
    compile_program(program, "tvm")(infer_scalars(program, args))
    assert relative_error(args["y"].numpy(), p.expected) <= BOUND["float16"]
    assert not relative_error(np.full((5, 48), np.nan), p.expected) <= BOUND["float16"]
