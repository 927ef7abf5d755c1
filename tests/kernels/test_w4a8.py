"""W4A8 kernels (int8 × int8 → int32 main loop) against the NumPy references of lowbit.quant.gemm.

Both sides compute the integer partial sums exactly; they differ only in the fp32 epilogue: per group
y = ((acc·sx)·s1) vs (psum·s1)·sa — two roundings each, |y − ref| ≤ 4·2^-24·|ref| elementwise; per channel
the kernel subtracts z·Σqa in int32 first (exact), the reference in fp32 after scaling:
|y − ref| ≤ 6·2^-24·(|psum·sw·sa| + |z·sw·Σx̂|). Tests assert those bounds with fp32 output, and 2^-10
relative (the fp16 output rounding) with fp16 output.
"""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from lowbit.ir.layout import packed_along
from lowbit.kernels.layouts import reordered_packed
from lowbit.kernels.quantized_gemm import relative_error
from lowbit.kernels.w4a8 import w4a8_gemm_per_channel, w4a8_gemm_per_group
from lowbit.quant import (
    quantize_per_token_int8,
    quantize_qoq,
    quantize_w4a8_per_channel,
)
from lowbit.quant import (
    w4a8_gemm_per_channel as ref_per_channel,
)
from lowbit.quant import (
    w4a8_gemm_per_group as ref_per_group,
)

EPS = 2.0**-24


def inputs(M, N, K, seed):
    rng = np.random.default_rng(seed)
    w = rng.standard_normal((N, K)).astype(np.float32) * rng.uniform(0.1, 2, (N, 1)).astype(np.float32)
    x = rng.standard_normal((M, K)).astype(np.float32)
    qa, sa = quantize_per_token_int8(x)
    return w, qa, sa


def run_per_group(qa, sa, qw, ydtype="float32", layout=None, **tiles):
    M, K = qa.shape
    N = qw.codes.shape[0]
    layout = layout or packed_along((K, N), qw.bits, 0)
    y = np.zeros((M, N), np.float32 if ydtype == "float32" else np.float16)
    args = dict(xq=qa, sx=sa.astype(np.float32), w=layout.pack(qw.codes.T), y=y)
    args.update(s2=qw.s2.T.astype(np.int8), z2=qw.zeros.T.astype(np.int8), s1=qw.s1)
    w4a8_gemm_per_group.run(**args, wdtype=f"uint{qw.bits}", G=qw.group_size, ydtype=ydtype, wlayout=layout, **tiles)
    return y


@settings(max_examples=20)
@given(
    M=st.integers(1, 20),
    N=st.integers(1, 64),
    kg=st.sampled_from([(64, 32), (128, 64), (256, 128), (128, 128)]),
    bits=st.integers(2, 8),
    tiles=st.sampled_from([dict(BM=16, BN=32, BK=32), dict(BM=8, BN=16, BK=64), dict(BM=16, BN=64, BK=128)]),
    seed=st.integers(0, 2**16),
)
def test_per_group_matches_reference(M, N, kg, bits, tiles, seed):
    K, G = kg
    w, qa, sa = inputs(M, N, K, seed)
    qw = quantize_qoq(w, bits=bits, group_size=G)
    y = run_per_group(qa, sa, qw, **tiles)
    ref = ref_per_group(qa, sa, qw)
    assert np.all(np.abs(y - ref) <= 4 * EPS * np.abs(ref)), np.abs(y - ref).max()


def test_per_group_fp16_output_and_reordered_layout():
    M, N, K, G = 5, 64, 256, 128
    w, qa, sa = inputs(M, N, K, 1)
    qw = quantize_qoq(w, bits=4, group_size=G)
    ref = ref_per_group(qa, sa, qw)
    assert relative_error(run_per_group(qa, sa, qw, "float16"), ref) <= 2.0**-10
    reordered = reordered_packed((K, N), 4, (128, 32))
    y = run_per_group(qa, sa, qw, layout=reordered, BK=128, BN=32)
    assert np.array_equal(y, run_per_group(qa, sa, qw, BK=128, BN=32))


def test_per_group_refuses_a_group_size_below_one():
    """G = -1 (a weight's per-channel marker) once traced to an empty K loop (zeros on TVM); the ops layer
    passes K, and the kernel names the fix for anything below one row."""
    w, qa, sa = inputs(2, 8, 64, 0)
    qw = quantize_qoq(w, bits=4, group_size=64)
    with pytest.raises(ValueError, match=r"G=-1; pass the group size in rows \(K for one group per channel\)"):
        w4a8_gemm_per_group.run(
            xq=qa,
            sx=sa.astype(np.float32),
            w=packed_along((64, 8), 4, 0).pack(qw.codes.T),
            s2=qw.s2.T.astype(np.int8),
            z2=qw.zeros.T.astype(np.int8),
            s1=qw.s1,
            y=np.zeros((2, 8), np.float32),
            wdtype="uint4",
            G=-1,
            ydtype="float32",
        )


@settings(max_examples=20)
@given(
    M=st.integers(1, 20),
    N=st.integers(1, 64),
    K=st.sampled_from([32, 64, 96, 256]),
    bits=st.integers(2, 7),
    tiles=st.sampled_from([dict(BM=16, BN=32, BK=32), dict(BM=8, BN=16, BK=64), dict(BM=16, BN=64, BK=128)]),
    seed=st.integers(0, 2**16),
)
def test_per_channel_matches_reference(M, N, K, bits, tiles, seed):
    w, qa, sa = inputs(M, N, K, seed)
    gq = quantize_w4a8_per_channel(w, bits=bits)
    layout = packed_along((K, N), bits, 0)
    y = np.zeros((M, N), np.float32)
    args = dict(xq=qa, sx=sa.astype(np.float32), w=layout.pack(gq.codes.T.astype(np.uint8)), y=y)
    args.update(zeros=gq.zeros[:, 0].astype(np.int32), scales=gq.scales[:, 0])
    w4a8_gemm_per_channel.run(**args, wdtype=f"uint{bits}", ydtype="float32", **tiles)
    ref = ref_per_channel(qa, sa, gq)
    # the bound's magnitude terms: |psum·sw·sa| + |z·sw·Σx̂|
    psum = qa.astype(np.int64) @ gq.codes.astype(np.int64).T
    sw, sa32 = gq.scales[:, 0].astype(np.float64), sa.astype(np.float64)
    zsum = gq.zeros[:, 0][None, :] * qa.astype(np.int64).sum(1)[:, None]
    scale = np.abs(psum) * sw[None, :] * sa32[:, None] + np.abs(zsum) * sw[None, :] * sa32[:, None]
    assert np.all(np.abs(y - ref) <= 6 * EPS * scale + 1e-30), np.abs(y - ref).max()
