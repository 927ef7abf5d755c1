"""RMSNorm / fused add + RMSNorm kernels on triton and tvm vs the reference interpreter and float64
`lowbit.reference.norm`.

Bounds, elementwise:
* vs the reference interpreter: the same fp32 operations; the sum of squares may be added in another order
  (relative ≤ Dm·2^-24) and a backend may fuse products: out ≤ (Dm + 8)·2^-24 relative before its rounding,
  plus one ulp of the output dtype. The new residual is one rounding of the same fp32 sum: equal.
* vs float64: the sum of squares in fp32 (≤ Dm·2^-24 relative), mean, +eps, rsqrt (1/sqrt: 2 roundings)
  and two products, then one rounding to the output dtype (half an ulp); the float64 reference does not
  round the residual (x + r): that rounding (half an ulp, relative) carries into out, and into the norm.
  Bound: (Dm + 8)·2^-24 + 2 ulps(fused) or 0.5 ulp (plain), relative to |x̂·w|/rms summed termwise.
"""

from __future__ import annotations

import os
import sys

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from lowbit.dtypes import dtype
from lowbit.kernels.norm import add_rms_norm, norm_constants, rms_norm, rms_norm_kernel
from lowbit.reference import norm as reference

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "codegen"))
from backend_harness import run_both

BACKENDS = pytest.mark.parametrize("backend", ["triton", "tvm"])
HOST = {"float16": np.float16, "bfloat16": dtype("bfloat16").host_dtype, "float32": np.float32}
ULP = {"float16": 2.0**-10, "bfloat16": 2.0**-7, "float32": 2.0**-23}  # relative, one ulp
TINY = {"float16": 2.0**-24, "bfloat16": 0.0, "float32": 0.0}


def check(out, expected, scale, adtype, dm, output_ulps, what):
    """|out − expected| <= ((dm + 8)·2^-24 + output_ulps·ulp)·scale + subnormal ulps, elementwise."""
    out = np.asarray(out).astype(np.float64)
    assert not np.isnan(out).any(), f"{what}: NaN"
    bound = ((dm + 8) * 2.0**-24 + output_ulps * ULP[adtype]) * scale + output_ulps * TINY[adtype]
    err = np.abs(out - expected)
    assert (err <= bound).all(), f"{what}: worst excess {(err - bound).max()} at {np.argwhere(err > bound)[:3]}"


def problem(nt, dm, adtype, seed):
    rng = np.random.default_rng(seed)
    x = (rng.standard_normal((nt, dm)) * rng.uniform(0.1, 10, (nt, 1))).astype(HOST[adtype])
    residual = rng.standard_normal((nt, dm)).astype(HOST[adtype])
    weight = rng.uniform(-2, 2, dm).astype(HOST[adtype])
    return x, residual, weight


def scale_of(x, weight, eps):
    """|x·w|/rms termwise (from the float64 values of x, the rounded residual sum in the fused case)."""
    x = np.asarray(x).astype(np.float64)
    rms = np.sqrt(np.mean(x * x, axis=-1, keepdims=True) + eps)
    return np.abs(x * weight.astype(np.float64)) / rms


# one compiled kernel per case (compiling dominates the time); hypothesis varies rows and values.
# Dm 128: one tile per row; 200 in one tile of 256: ragged; BD 64 over 200: two passes, ragged last chunk
CASES = [
    (128, norm_constants(128), False, "float16"),
    (128, norm_constants(128), True, "bfloat16"),
    (200, norm_constants(200), True, "float32"),
    (200, dict(BD=64, single_pass=False), False, "bfloat16"),
    (200, dict(BD=64, single_pass=False), True, "float16"),
]


@BACKENDS
@pytest.mark.parametrize("dm,tiles,fused,adtype", CASES)
@settings(max_examples=2)
@given(nt=st.integers(1, 4), seed=st.integers(0, 2**16))
def test_rms_norm_matches_references(backend, dm, tiles, fused, adtype, nt, seed):
    eps = 1e-5
    x, residual, weight = problem(nt, dm, adtype, seed)
    args = dict(x=x, residual=residual.copy(), weight=weight, out=np.zeros_like(x))
    consts = dict(eps=eps, add_residual=fused, dtype=adtype, wdtype=adtype, **tiles)
    ref, out = run_both(rms_norm_kernel, consts, args, backend=backend)
    what = f"{backend} Dm={dm} {tiles} fused={fused} {adtype}"
    if fused:
        new_residual = (x.astype(np.float32) + residual.astype(np.float32)).astype(x.dtype)  # one rounding
        np.testing.assert_array_equal(out["residual"], new_residual, err_msg=what)
        np.testing.assert_array_equal(ref["residual"], new_residual, err_msg=what)
        expected, _ = reference.add_rms_norm(x, residual, weight, eps)
        scale = scale_of(new_residual, weight, eps)
    else:
        expected = reference.rms_norm(x, weight, eps)
        scale = scale_of(x, weight, eps)
    check(out["out"], ref["out"].astype(np.float64), scale, adtype, dm, 1, what + " vs interpreter")
    # vs float64: the fused reference does not round x + residual (half an ulp into x̂, out and the rms)
    check(out["out"], expected, scale, adtype, dm, 2.5 if fused else 0.5, what + " vs float64")


@BACKENDS
def test_launchers(backend):
    x, residual, weight = problem(3, 128, "float16", seed=5)
    out = rms_norm(x, weight, 1e-5, backend=backend)
    assert out.dtype == x.dtype and out.shape == x.shape
    check(out, reference.rms_norm(x, weight, 1e-5), scale_of(x, weight, 1e-5), "float16", 128, 0.5, "rms_norm")
    r = residual.copy()
    out2 = add_rms_norm(x, r, weight, 1e-5, backend=backend)
    expected, new_residual = reference.add_rms_norm(x, residual, weight, 1e-5)
    np.testing.assert_array_equal(r, new_residual.astype(np.float16))  # updated in place, rounded once
    check(out2, expected, scale_of(r, weight, 1e-5), "float16", 128, 2.5, "add_rms_norm")


def test_launcher_errors():
    x, residual, weight = problem(2, 64, "float16", seed=0)
    with pytest.raises(ValueError, match="weight"):
        rms_norm(x, weight[:32], backend="reference")
    with pytest.raises(ValueError, match="eps"):
        rms_norm(x, weight, -1.0, backend="reference")
    with pytest.raises(ValueError, match="residual"):
        add_rms_norm(x, residual[:1], weight, backend="reference")
    with pytest.raises(ValueError, match="Dm"):
        rms_norm(x[None], weight, backend="reference")


def test_nan_never_passes():
    x, _, weight = problem(1, 64, "float32", seed=0)
    expected = reference.rms_norm(x, weight)
    with pytest.raises(AssertionError):
        check(np.full_like(expected, np.nan), expected, np.abs(expected), "float32", 64, 1, "nan")
