"""quantized_gemm / quantized_gemv on the TVM backend equal the reference interpreter and NumPy's x @ dequant(W)."""

from __future__ import annotations

import copy

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from lowbit.codegen.backend import compile_program
from lowbit.dtypes import dtype
from lowbit.kernels.quantized_gemm import quantized_gemm, random_problem, relative_error
from lowbit.lang.kernel import infer_scalars

INT_DTYPES = [f"{s}int{b}" for s in ("", "u") for b in range(1, 9)]
FLOAT_DTYPES = ["fp3_e1m1", "fp4_e2m1", "fp4_e3m0", "fp5_e2m2", "fp6_e2m3", "fp6_e3m2", "fp8_e4m3", "fp8_e5m2"]
# vs NumPy: fp16 weights and one fp16 rounding of y; vs the reference: the same products summed in another
# order (fp32), then rounded to the output dtype
BOUND = {"float16": 2e-3, "float32": 2e-3, "bfloat16": 1e-2}
BOUND_VS_REFERENCE = {"float16": 1e-3, "float32": 1e-5, "bfloat16": 8e-3}


def run_both(kernel, constants, args, options=None):
    program = kernel.trace(**constants)
    args = {k: v for k, v in args.items() if k in {p.name for p in program.params}}
    ref, tvm = copy.deepcopy(args), copy.deepcopy(args)
    compile_program(program, "reference")(infer_scalars(program, ref))
    compile_program(program, "tvm", options)(infer_scalars(program, tvm))
    return ref, tvm


def check(M, N, K, wdtype, G, zero_mode, adtype="float16", seed=0, options=None, **tiles):
    p = random_problem(M, N, K, wdtype, G=G, zero_mode=zero_mode, seed=seed, **tiles)
    args = dict(p.args)
    if adtype != "float16":
        import ml_dtypes

        host = np.float32 if adtype == "float32" else ml_dtypes.bfloat16
        args["x"], args["y"] = args["x"].astype(host), args["y"].astype(host)
    ref, out = run_both(quantized_gemm, {**p.constants, "adtype": adtype}, args, options)
    y, r = out["y"].astype(np.float64), ref["y"].astype(np.float64)
    assert not np.isnan(y).any(), f"{wdtype}: NaN in the output"
    assert relative_error(y, r) <= BOUND_VS_REFERENCE[adtype], f"{wdtype} G={G} {zero_mode}: vs reference"
    if adtype != "bfloat16":  # random_problem's expected value assumes fp16 dequantized weights
        err = relative_error(y, p.expected)
        assert err <= BOUND[adtype], f"{wdtype} G={G} {zero_mode} {M}x{N}x{K} {adtype}: relative error {err}"


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
