"""quantized_linear on every backend this machine lists as available, against the same NumPy oracle.

Nothing is skipped: a backend listed by `available_backends()` (its toolchain is installed) whose compile
fails — including a missing `lowbit.codegen.<backend>` module — fails here, which is what an integrator
needs to see. Bounds are the reference backend's (backends differ only in summation order).
"""

from __future__ import annotations

import numpy as np
import pytest
from linear_reference import HOST, bound, reference, relative_error

from lowbit.codegen.backend import available_backends
from lowbit.kernels import quantized_gemm, quantized_gemv
from lowbit.ops import quantize, quantized_linear, select_kernel
from lowbit.ops.linear import plans_of

CASES = [
    # (scheme, dtype, group size, zero_mode, M, activation dtype)
    ("w_a16", "int4", 32, None, 1, "float16"),
    ("w_a16", "uint4", 128, "post", 20, "float16"),
    ("w_a16", "uint3", -1, "pre", 4, "float32"),
    ("w_a16", "fp4_e2m1", 64, None, 17, "bfloat16"),
    # codes past fp16's range (98304) with fp16 activations: the GEMV's dot runs in fp32 (gemv.dot_dtype)
    ("w_a16", "fp7_e5m1", 32, None, 1, "float16"),
    ("w_a16", "fp8_e7m0", -1, None, 3, "float16"),
    ("w4a8_group", "uint4", 64, None, 5, "float16"),
    # one QoQ group per channel (group_size -1): the kernel's G is K (it once ran with G = -1: zeros on TVM)
    ("w4a8_group", "uint4", -1, None, 2, "float32"),
    ("w4a8_channel", "uint4", -1, None, 18, "float32"),
]


@pytest.mark.parametrize("backend", available_backends())
@pytest.mark.parametrize("scheme,name,G,zero_mode,M,adtype", CASES)
def test_backend_matches_oracle(backend, scheme, name, G, zero_mode, M, adtype):
    rng = np.random.default_rng(M)
    N, K = 40, 256
    w = rng.standard_normal((N, K)).astype(np.float32)
    kwargs = {} if zero_mode is None else dict(symmetric=False, zero_mode=zero_mode)
    qw = quantize(w, name, G, scheme=scheme, **kwargs)
    x = rng.standard_normal((M, K)).astype(np.float32).astype(HOST[adtype])
    y = quantized_linear(x, qw, backend=backend)
    err = relative_error(y, reference(x, qw))
    assert err <= bound(qw, M, adtype), f"{backend} {qw} M={M} {adtype}: {err}"


@pytest.mark.parametrize("backend", available_backends())
@pytest.mark.parametrize(
    "scheme,name,G,M",
    [
        ("w_a16", "uint4", 48, 1),
        ("w_a16", "fp4_e2m1", 80, 20),
        ("w4a8_group", "uint4", 96, 3),
        ("w_a16", "int4", 8, 2),  # small powers of two: the interpreter's dot takes any K
        ("w4a8_group", "uint4", 16, 3),
        ("w4a8_group", "uint4", -1, 2),  # one group per channel (G = K = 100)
    ],
)
def test_backend_runs_group_sizes_that_are_not_powers_of_two(backend, scheme, name, G, M):
    """A group size quantize accepts (any divisor of K) runs everywhere: Triton, whose tiles are powers of two,
    steps K in the largest one dividing the group (16 for 48, 32 for 96) with the group's scale on each slice;
    W4A8 per channel at K = 100 steps K in any power of two up to K."""
    rng = np.random.default_rng(abs(G))
    N, K = 24, 2 * G if G > 0 else 100  # per channel: a K that no power of two divides past 4
    qw = quantize(rng.standard_normal((N, K)).astype(np.float32), name, G, scheme=scheme)
    x = rng.standard_normal((M, K)).astype(np.float32)
    err = relative_error(quantized_linear(x, qw, backend=backend), reference(x, qw))
    assert err <= bound(qw, M, "float32"), f"{backend} {qw} M={M}: {err}"


def test_triton_names_the_fix_for_a_group_without_a_power_of_two_slice(monkeypatch):
    """Group 40's largest power-of-two divisor (8) is below the GPU dot's minimum K (16): compiling for a GPU,
    a ValueError names the group size and the fix, not a lowering error from deep in the backend; the CPU
    interpreter, which takes any dot, runs it (as it runs groups 8 and 16)."""
    if "triton" not in available_backends():
        pytest.skip("triton is not installed")
    import lowbit.ops.linear as linear

    rng = np.random.default_rng(0)
    qw = quantize(rng.standard_normal((8, 80)).astype(np.float32), "int4", 40)
    x = rng.standard_normal((1, 80)).astype(np.float32)
    err = relative_error(quantized_linear(x, qw, backend="triton"), reference(x, qw))
    assert err <= bound(qw, 1, "float32"), err
    monkeypatch.setattr(linear, "native_triton", lambda: True)
    fresh = quantize(rng.standard_normal((8, 80)).astype(np.float32), "int4", 40)
    with pytest.raises(
        ValueError,
        match=r"group_size 40 on backend 'triton'.*multiple of 16 \(e\.g\. 16, 32, 48, 64\) or backend='tvm'",
    ):
        linear._choose_config(
            linear.quantized_gemv,
            *linear._a16_arguments(fresh, linear._host_arrays(fresh), x, np.zeros((1, 8), np.float32), 1, "float32"),
            "triton",
            False,
            1,
        )


@pytest.mark.parametrize("backend", available_backends())
@pytest.mark.parametrize(
    "name,magnitude,x_scale,scale_dtype",
    [("int8", 3e4, 1e-2, "float16"), ("int4", 3e4, 1e-2, "float16"), ("int8", 1e-7, 300.0, "float32")],
)
def test_fp16_gemm_rows_with_weights_float16_cannot_hold(backend, name, magnitude, x_scale, scale_dtype):
    """M > 16 with fp16 x and dequantized weights past 65504 (or down in fp16's subnormals): the GEMM would
    round its dequantized tile to fp16 (inf, or 17% error), so the rule runs the GEMV, whose result is finite
    and within the GEMV's bound (found by an outside quantized_linear fuzz: NaN on every backend)."""
    rng = np.random.default_rng(7)
    qw = quantize((rng.standard_normal((24, 128)) * magnitude).astype(np.float32), name, 64, scale_dtype=scale_dtype)
    assert not qw.fits_float16 and select_kernel(qw, 17, adtype="float16", backend=backend) is quantized_gemv
    assert select_kernel(qw, 17) is quantized_gemm  # the scheme's rule, without the activation dtype
    x = (rng.standard_normal((17, 128)) * x_scale).astype(np.float16)
    ref = reference(x, qw)
    assert np.abs(ref).max() < 60000  # the output itself fits fp16
    y = quantized_linear(x, qw, backend=backend)
    err = relative_error(y, ref)
    assert np.isfinite(y).all() and err <= bound(qw, 1, "float16"), f"{backend} {name}: {err}"


@pytest.mark.parametrize("backend", available_backends())
def test_backend_runs_reordered_layout(backend):
    rng = np.random.default_rng(0)
    w = rng.standard_normal((64, 256)).astype(np.float32)
    qw = quantize(w, "int4", 128, layout="reordered", tile=(128, 32))
    x = rng.standard_normal((3, 256)).astype(np.float16)
    err = relative_error(quantized_linear(x, qw, backend=backend), reference(x, qw))
    assert err <= bound(qw, 3, "float16"), err


@pytest.mark.parametrize(
    "scheme,name,G,M", [("w_a16", "int4", 32, 3), ("w_a16", "uint4", 64, 20), ("w4a8_group", "uint4", 64, 5)]
)
@pytest.mark.parametrize("share", [0.5, 1.0])
def test_triton_under_a_plan_share_runs_persistent_with_the_same_result(scheme, name, G, M, share):
    """Inside `resource_share` (what the nano executor sets per nano-op) a Triton launch runs the kernel's
    persistent form (grid = min(share x units, tiles)); the result equals the grid launch bit for bit."""
    from lowbit.kernels.launch import PersistentLauncher, resource_share

    rng = np.random.default_rng(M)
    N, K = 40, 128
    qw = quantize(rng.standard_normal((N, K)).astype(np.float32), name, G, scheme=scheme)
    x = rng.standard_normal((M, K)).astype(np.float32)
    want = quantized_linear(x, qw, backend="triton")
    with resource_share(share):
        got = quantized_linear(x, qw, backend="triton")
    assert np.array_equal(got, want)
    kinds = {type(c).__name__ for c in plans_of(qw).values()}
    assert PersistentLauncher.__name__ in kinds and len(kinds) == 2  # the grid plan and the persistent one
    assert relative_error(got, reference(x, qw)) <= bound(qw, M, "float32")


@pytest.mark.parametrize("backend", available_backends())
@pytest.mark.parametrize(
    "scheme,kernel", [("w_a16", None), ("w_a16", "quantized_gemv_a8"), ("w4a8_group", None), ("w4a8_channel", None)]
)
@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_a_non_finite_activation_row_gives_a_nan_row_and_leaves_the_others(backend, scheme, kernel, bad):
    """Every path, the int8-activation ones included (whose quantizers once clamped inf to a finite scale, or
    whose max dropped NaN, and returned finite rows), answers a row holding NaN or inf with a non-finite row
    (NaN from the int8 paths; ±inf or NaN from the float ones, as F.linear); the others are the clean batch's."""
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(7)
    qw = quantize(rng.standard_normal((24, 128)).astype(np.float32), None, 64, scheme=scheme)
    x = rng.standard_normal((3, 128)).astype(np.float32)
    clean = quantized_linear(x, qw, backend=backend, kernel=kernel)
    dirty = x.copy()
    dirty[1, 5] = bad
    for xin in (dirty, torch.from_numpy(dirty)):
        y = np.asarray(quantized_linear(xin, qw, backend=backend, kernel=kernel), np.float64)
        assert not np.isfinite(y[1]).any(), f"{type(xin).__name__}: {y[1, :4]}"
        if kernel or scheme != "w_a16":
            assert np.isnan(y[1]).all()
        np.testing.assert_array_equal(y[[0, 2]], np.asarray(clean, np.float64)[[0, 2]])
