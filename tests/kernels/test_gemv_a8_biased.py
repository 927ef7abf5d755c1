"""Offset-binary int4 weights for the a8 GEMV: `offset_binary(qw)` is the uint4 weight u = q + 8 with zero
point 8, equal to qw value for value (oracle: dequantize in fp64); the kernel with biased=True on its words
computes exactly what the plain int4 kernel computes on the original words (same integers, same fp32
epilogue: bit-identical outputs), and the ops layer / executor use it for int4 weights."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from lowbit.kernels.gemv_a8 import quantized_gemv_a8, tile_group_rows
from lowbit.ops.linear import A8_KERNEL, a8_weight, quantized_linear
from lowbit.ops.weight import is_offset_binary, offset_binary, quantize, retile_columns

BN = 32


@settings(max_examples=6, deadline=None)
@given(seed=st.integers(0, 2**16), g=st.sampled_from([32, 128]), tiled=st.booleans())
def test_offset_binary_is_the_same_weight(seed, g, tiled):
    rng = np.random.default_rng(seed)
    qw = quantize(rng.standard_normal((40, 256)).astype(np.float32), "int4", g)
    qw = retile_columns(qw, BN) if tiled else qw
    ob = offset_binary(qw)
    assert ob.dtype.name == "uint4" and ob.zero_mode == "post" and is_offset_binary(ob)
    assert np.array_equal(ob.dequantize(), qw.dequantize())
    assert np.array_equal(ob.codes().astype(np.int64), (qw.codes().astype(np.int64) ^ 8) & 15)
    assert offset_binary(ob) is ob and not is_offset_binary(qw)


def test_other_weights_are_left_alone():
    rng = np.random.default_rng(1)
    w = rng.standard_normal((32, 128)).astype(np.float32)
    for qw in (quantize(w, "int3", 32), quantize(w, "uint4", 32, symmetric=False, zero_mode="post")):
        assert offset_binary(qw) is qw and not is_offset_binary(qw)


@pytest.mark.parametrize("M", [1, 3, 16])
def test_biased_kernel_equals_the_xor_kernel_bit_for_bit(M):
    rng = np.random.default_rng(M)
    N, K, G = 64, 512, 128
    qw = retile_columns(quantize(rng.standard_normal((N, K)).astype(np.float32), "int4", G), BN)
    ob = offset_binary(qw)
    bm = 1 << (M - 1).bit_length()
    mp = -(-M // bm) * bm
    xq = rng.integers(-127, 128, (mp, K)).astype(np.int8)
    xs = rng.random((mp, K // G)).astype(np.float32)
    xsum = xq.reshape(mp, K // G, G).astype(np.int32).sum(-1, dtype=np.int32)
    out = []
    for w, biased in ((qw, False), (ob, True)):
        y = np.full((M, N), np.nan, np.float32)
        words = w.words.view(np.int32).reshape(-1, K // 8, BN)
        quantized_gemv_a8.run(
            backend="tvm", xq=xq, xs=xs, xsum=xsum, w=words, scales=tile_group_rows(w.scales, BN), y=y,
            M=M, MP=mp, N=N, K=K, wdtype="int4", zero_mode="none", G=G, BM=bm, BN=BN, biased=biased,
        )  # fmt: skip
        out.append(y)
    assert np.isfinite(out[0]).all() and np.array_equal(out[0], out[1])


def test_ops_layer_runs_int4_as_offset_binary():
    rng = np.random.default_rng(2)
    qw = quantize(rng.standard_normal((64, 256)).astype(np.float32), "int4", 64)
    assert is_offset_binary(a8_weight(qw)) and a8_weight(qw) is a8_weight(qw)
    x = rng.standard_normal((2, 256)).astype(np.float32)
    ref = x.astype(np.float64) @ qw.dequantize().astype(np.float64).T
    y = quantized_linear(x, qw, backend="tvm", kernel=A8_KERNEL)
    y_ob = quantized_linear(x, offset_binary(qw), backend="tvm", kernel=A8_KERNEL)
    assert np.array_equal(y, y_ob)
    err = float(np.linalg.norm(y - ref) / np.linalg.norm(ref))
    assert np.isfinite(err) and err < 2e-2
