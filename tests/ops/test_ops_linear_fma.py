"""`quantized_linear(x, qw, kernel="quantized_gemv_fma")`: the dot-free GEMV by name, on every backend and any
M (tiles of up to 4 rows), against the independent NumPy oracle; it takes w_a16 weights only; on a GPU the
`gpu` test runs it through the Triton launch path with its gpu_default tiles."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from linear_reference import GEMV_BOUND, reference, relative_error

from lowbit.ops import quantize, quantized_linear
from lowbit.ops.linear import FMA_KERNEL, _a16_arguments, _host_arrays, tvm_cuda_kernel

DTYPES = ["int4", "uint4", "int3", "uint2", "int8", "int1", "fp4_e2m1", "fp6_e3m2", "fp8_e4m3"]


@settings(max_examples=12, deadline=None)
@given(
    m=st.sampled_from([1, 2, 3, 4, 5, 9]),
    n=st.integers(1, 70),
    kg=st.sampled_from([(128, 32), (256, 128), (192, 64), (96, -1)]),
    name=st.sampled_from(DTYPES),
    adtype=st.sampled_from(["float16", "bfloat16", "float32"]),
    backend=st.sampled_from(["reference", "tvm"]),
    seed=st.integers(0, 2**16),
)
def test_matches_numpy_oracle(m, n, kg, name, adtype, backend, seed):
    k, g = kg
    rng = np.random.default_rng(seed)
    qw = quantize(rng.standard_normal((n, k)).astype(np.float32), name, g)
    x = torch.from_numpy(rng.standard_normal((m, k)).astype(np.float32)).to(getattr(torch, adtype))
    y = quantized_linear(x, qw, backend=backend, kernel=FMA_KERNEL)
    assert y.dtype == x.dtype and y.shape == (m, n)
    err = relative_error(y.double().numpy(), reference(x.double().numpy(), qw))
    assert err <= GEMV_BOUND[adtype], f"{name} G={g} {adtype} {backend} M={m}: {err}"


@pytest.mark.parametrize("m", [1, 4, 6])
def test_triton_launch_path(m):
    """Torch x where Triton launches (the CPU under the interpreter): the device call with the weight's copy."""
    rng = np.random.default_rng(m)
    qw = quantize(rng.standard_normal((48, 256)).astype(np.float32), "int4", 128)
    x = torch.randn(m, 256, dtype=torch.float16)
    y = quantized_linear(x, qw, backend="triton", kernel=FMA_KERNEL)
    assert relative_error(y.double().numpy(), reference(x.double().numpy(), qw)) <= GEMV_BOUND["float16"]


def test_tvm_cuda_build_of_the_named_kernel():
    """`tvm_cuda_kernel(named=FMA_KERNEL)`: within a block's shared memory (an sm_90 cubin), its code right."""
    rng = np.random.default_rng(2)
    qw = quantize(rng.standard_normal((48, 256)).astype(np.float32), "uint3", 32)
    x = rng.standard_normal((3, 256)).astype(np.float32)
    y = np.full((3, 48), np.nan, np.float32)
    fixed, args = _a16_arguments(qw, _host_arrays(qw), x, y, 3, "float32")
    kernel = tvm_cuda_kernel(qw, 3, "float32", fixed, args, named=FMA_KERNEL)
    assert kernel.cuda and kernel.program.name == FMA_KERNEL and kernel.cubin()[:4] == b"\x7fELF"
    kernel.simulate()(args)
    assert relative_error(y, reference(x, qw)) <= GEMV_BOUND["float32"]


def test_int8_activation_schemes_are_refused():
    qw = quantize(np.random.default_rng(0).standard_normal((32, 128)).astype(np.float32), scheme="w4a8_group")
    with pytest.raises(ValueError, match=r"quantized_gemv_fma runs w_a16 weights; .*'w4a8_group'.*pass kernel=None"):
        quantized_linear(np.zeros((1, 128), np.float32), qw, backend="reference", kernel=FMA_KERNEL)
    with pytest.raises(ValueError, match=r"kernel 'gemv' is not selectable by name; pass None or one of"):
        quantized_linear(np.zeros((1, 128), np.float32), qw, backend="reference", kernel="gemv")


@pytest.mark.gpu
@pytest.mark.parametrize("wdtype", ["int4", "uint3", "int2", "int8", "fp4_e2m1", "fp6_e3m2"])
@pytest.mark.parametrize("m, n, k", [(1, 256, 512), (4, 384, 1024), (3, 200, 384)])
def test_on_cuda_equals_numpy(wdtype, m, n, k):
    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA GPU")
    rng = np.random.default_rng(m * 7 + n)
    qw = quantize((rng.standard_normal((n, k)) * 0.02).astype(np.float32), wdtype, 128)
    x = torch.randn(m, k, dtype=torch.float16, device="cuda")
    y = quantized_linear(x, qw, backend="triton", kernel=FMA_KERNEL)
    assert y.device.type == "cuda" and y.dtype == torch.float16 and y.shape == (m, n)
    err = relative_error(y.double().cpu().numpy(), reference(x.float().cpu().numpy(), qw))
    assert err <= GEMV_BOUND["float16"]
