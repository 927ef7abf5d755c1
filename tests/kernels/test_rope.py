"""RoPE kernel on triton and tvm vs the reference interpreter and vs float64 `lowbit.reference.rope`.

Bounds, elementwise, for a rotated pair a' = a·c − b·s (b' alike) with |a| + |b| = m:
* vs the reference interpreter: the same fp32 operations, but a backend may fuse a·c − b·s into an FMA
  (TVM's LLVM does): ≤ 2^-23·m before the output rounding, so ≤ that plus one ulp of the output dtype
  (an FMA can move the fp32 value across a rounding boundary of fp16/bf16).
* vs float64: cos/sin rounded to fp32 (2^-24 relative each), two products and a difference in fp32
  (≤ 3·2^-24·m together), then one rounding to the output dtype (half an ulp: 2^-11 fp16, 2^-8 bf16
  relative, plus 2^-25 absolute for fp16 subnormals): ≤ 2^-21·m + half an ulp.
"""

from __future__ import annotations

import os
import sys

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from lowbit.dtypes import dtype
from lowbit.kernels.rope import apply_rope, rope, rope_cache
from lowbit.reference.rope import apply_rope as rope_reference
from lowbit.reference.rope import rope_pairs

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "codegen"))
from backend_harness import run_both

BACKENDS = pytest.mark.parametrize("backend", ["triton", "tvm"])
HOST = {"float16": np.float16, "bfloat16": dtype("bfloat16").host_dtype, "float32": np.float32}
ULP = {"float16": 2.0**-10, "bfloat16": 2.0**-7, "float32": 0.0}  # relative, one ulp
TINY = {"float16": 2.0**-24, "bfloat16": 0.0, "float32": 0.0}  # absolute, one subnormal ulp
LLAMA3 = {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
          "original_max_position_embeddings": 64}  # fmt: skip


def pair_magnitude(x: np.ndarray, style: str) -> np.ndarray:
    """|a| + |b| of each channel's pair, [T, H, D]."""
    first, second = rope_pairs(x.shape[2], style)
    x = np.abs(x.astype(np.float64))
    m = np.empty_like(x)
    m[..., first] = m[..., second] = x[..., first] + x[..., second]
    return m


def check(out, expected, x, style, adtype, *, fp32_terms, output_ulps, what):
    out = np.asarray(out).astype(np.float64)
    assert not np.isnan(out).any(), f"{what}: NaN"
    bound = fp32_terms * 2.0**-24 * pair_magnitude(x, style) + output_ulps * (
        ULP[adtype] * np.abs(expected) + TINY[adtype]
    )
    err = np.abs(out - expected)
    assert (err <= bound).all(), f"{what}: worst excess {(err - bound).max()} at {np.argwhere(err > bound)[:3]}"


def problem(nt, hq, hk, d, adtype, max_pos, seed):
    rng = np.random.default_rng(seed)
    q = (rng.standard_normal((nt, hq, d)) * 4).astype(HOST[adtype])
    k = (rng.standard_normal((nt, hk, d)) * 4).astype(HOST[adtype])
    positions = rng.integers(0, max_pos, nt).astype(np.int32)
    return q, k, positions


# one compiled kernel per case (compiling dominates the time); hypothesis varies sizes, positions and values.
# D = 80: half a head (40) is not a power of two, so the tiles are padded and masked
CASES = [("neox", 64, "float16"), ("interleaved", 80, "bfloat16"), ("neox", 80, "float32")]


@BACKENDS
@pytest.mark.parametrize("style,d,adtype", CASES)
@settings(max_examples=2)
@given(nt=st.integers(1, 4), hq=st.integers(1, 6), hk=st.integers(1, 3), seed=st.integers(0, 2**16))
def test_rope_matches_references(backend, style, d, adtype, nt, hq, hk, seed):
    q, k, positions = problem(nt, hq, hk, d, adtype, 4096, seed)
    cos_sin = rope_cache(4096, d, scaling=LLAMA3)  # llama3 scaling is just another table
    args = dict(q=q, k=k, q_out=np.zeros_like(q), k_out=np.zeros_like(k), positions=positions, cos_sin=cos_sin)
    ref, out = run_both(rope, dict(D=d, style=style, dtype=adtype, BH=2), args, backend=backend)
    for name, x in (("q_out", q), ("k_out", k)):
        what = f"{backend} {style} D={d} {adtype} {name}"
        check(out[name], ref[name].astype(np.float64), x, style, adtype, fp32_terms=2, output_ulps=1, what=what)
        expected = rope_reference(x, positions, style, scaling=LLAMA3)
        check(out[name], expected, x, style, adtype, fp32_terms=8, output_ulps=0.5, what=what + " vs float64")


@BACKENDS
def test_rope_in_place(backend, style="neox"):
    # out is q/k itself: every value is read before its pair partner is overwritten (neox: the halves are
    # stored one after the other; interleaved stores both lanes at once)
    q, k, positions = problem(3, 4, 2, 64, "float16", 128, seed=7)
    args = dict(q=q, k=k, positions=positions, cos_sin=rope_cache(128, 64))
    ref, out = run_both(rope, dict(D=64, style=style, dtype="float16", inplace=True, BH=2), args, backend=backend)
    for name, x in (("q", q), ("k", k)):
        expected = rope_reference(x, positions, style)
        check(out[name], expected, x, style, "float16", fp32_terms=8, output_ulps=0.5, what=name)
        check(out[name], ref[name].astype(np.float64), x, style, "float16", fp32_terms=2, output_ulps=1, what=name)


@BACKENDS
def test_apply_rope_launcher(backend):
    q, k, positions = problem(5, 3, 1, 64, "float16", 512, seed=3)
    cos_sin = rope_cache(512, 64, theta=500000.0)
    q_rot, k_rot = apply_rope(q, k, positions, cos_sin, "neox", backend=backend, heads_per_block=2)
    assert q_rot is not q and q_rot.dtype == q.dtype
    for rot, x in ((q_rot, q), (k_rot, k)):
        check(rot, rope_reference(x, positions, theta=500000.0), x, "neox", "float16", fp32_terms=8,
              output_ulps=0.5, what="apply_rope")  # fmt: skip
    q2, k2 = q.copy(), k.copy()
    q_in, _ = apply_rope(q2, k2, positions, cos_sin, "neox", inplace=True, backend=backend, heads_per_block=2)
    assert q_in is q2
    np.testing.assert_array_equal(q2, q_rot)
    np.testing.assert_array_equal(k2, k_rot)


def test_apply_rope_errors():
    q, k, positions = problem(2, 2, 1, 64, "float16", 16, seed=0)
    cos_sin = rope_cache(16, 64)
    with pytest.raises(ValueError, match="rope style"):
        apply_rope(q, k, positions, cos_sin, "gptj", backend="reference")
    with pytest.raises(ValueError, match="cos_sin"):
        apply_rope(q, k, positions, cos_sin[:, :32], backend="reference")
    with pytest.raises(ValueError, match="one dtype"):
        apply_rope(q, k.astype(np.float32), positions, cos_sin, backend="reference")
    with pytest.raises(ValueError, match="positions"):
        apply_rope(q, k, positions[:1], cos_sin, backend="reference")


def test_nan_never_passes():
    q, _, positions = problem(1, 1, 1, 64, "float32", 16, seed=0)
    expected = rope_reference(q, positions)
    with pytest.raises(AssertionError):
        check(np.full_like(expected, np.nan), expected, q, "neox", "float32", fp32_terms=8, output_ulps=0, what="nan")
