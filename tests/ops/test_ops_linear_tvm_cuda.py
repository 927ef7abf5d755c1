"""`quantized_linear(x, qw, backend="tvm")` with torch CUDA x runs the TVM backend's CUDA kernels
(`ops.linear.tvm_cuda_kernel`). Without a GPU: the kernel and tiles it picks for each M and scheme, built for
CUDA, give `x @ dequant(W)` when their code runs on the CPU (`simulate`), with the arguments the device call
passes (`_a16_arguments` / `_w4a8_arguments`, here on host arrays); TVM's CUDA compile callback is NVRTC's.
On a GPU the `gpu` test runs the op itself."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import lowbit.ops as ops
from lowbit.codegen.tvm.runtime import driver_launch_available, tvm_has_cuda_runtime, use_nvrtc_for_tvm
from lowbit.kernels.quantized_gemm import relative_error
from lowbit.ops.linear import _a16_arguments, _host_arrays, _w4a8_arguments, tvm_cuda_kernel
from lowbit.quant import quantize_per_token_int8

BOUND = {"float32": 1e-5, "float16": 2e-3}  # against fp64 x @ dequant(W), relative (fp16: its own rounding)


def _reference(qw, x):
    return x.astype(np.float64) @ np.asarray(qw.dequantize(), np.float64).T


@settings(max_examples=6, deadline=None)
@given(
    m=st.sampled_from([1, 3, 16, 17, 40]),  # GEMV rows 1 / 4 / 16, the GEMM past 16
    n=st.sampled_from([48, 100]),
    dtype=st.sampled_from(["int4", "uint3", "int8", "fp4_e2m1"]),
    g=st.sampled_from([32, 128, -1]),
    adtype=st.sampled_from(["float32", "float16"]),
    seed=st.integers(0, 2**16),
)
def test_w_a16_kernels_it_picks(m, n, dtype, g, adtype, seed):
    rng = np.random.default_rng(seed)
    k = 256
    qw = ops.quantize(rng.standard_normal((n, k)).astype(np.float32), dtype, g)
    x = rng.standard_normal((m, k)).astype(adtype)
    y = np.full((m, n), np.nan, adtype)
    fixed, args = _a16_arguments(qw, _host_arrays(qw), x, y, m, adtype)
    kernel = tvm_cuda_kernel(qw, m, adtype, fixed, args)
    assert kernel.cuda and kernel.program.name == ("quantized_gemv" if m <= 16 else "quantized_gemm")
    assert kernel.cubin()[:4] == b"\x7fELF"  # within a block's shared memory: ptxas accepts it for sm_90
    kernel.simulate()(args)
    assert np.isfinite(y).all()
    assert relative_error(y.astype(np.float64), _reference(qw, x)) <= BOUND[adtype]


@pytest.mark.parametrize("scheme", ["w4a8_group", "w4a8_channel"])
def test_w4a8_kernels_it_picks(scheme):
    rng = np.random.default_rng(5)
    m, n, k = 20, 64, 256
    qw = ops.quantize(rng.standard_normal((n, k)).astype(np.float32), "uint4", 128, scheme=scheme)
    x = rng.standard_normal((m, k)).astype(np.float32)
    qa, sa = quantize_per_token_int8(x)
    y = np.zeros((m, n), np.float32)
    fixed, args = _w4a8_arguments(qw, _host_arrays(qw), qa, sa.astype(np.float32), y, "float32")
    kernel = tvm_cuda_kernel(qw, m, "int8->float32", fixed, args)
    assert kernel.cuda and kernel.program.name.startswith("w4a8_gemm")
    assert kernel.cubin()[:4] == b"\x7fELF"
    kernel.simulate()(args)
    ref = ops.quantized_linear(x, qw, backend="reference")  # the same int8 activations, the interpreter
    assert relative_error(y.astype(np.float64), np.asarray(ref, np.float64)) <= 1e-5


def test_tvm_compiles_cuda_with_nvrtc():
    import tvm_ffi

    assert use_nvrtc_for_tvm()
    compile_cuda = tvm_ffi.get_global_func("tvm_callback_cuda_compile")
    cubin = bytes(compile_cuda('extern "C" __global__ void k(float* a) { a[threadIdx.x] *= 2.0f; }'))
    assert cubin[:4] == b"\x7fELF"
    # NVRTC writes its (here empty: one NUL) log into the buffer it is given; that buffer was once
    # `b" " * 1`, CPython's shared b" ", and every b" " of the process became b"\x00" after this call (the
    # safetensors writer's header padding with it: every later artifact compile in the process failed)
    assert b" "[0] == 0x20
    assert list(b" " * 3) == [0x20, 0x20, 0x20]


@pytest.mark.gpu
@pytest.mark.parametrize("m", [1, 16, 64])
def test_quantized_linear_on_cuda(m):
    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA GPU")
    if not tvm_has_cuda_runtime() and not driver_launch_available():
        pytest.skip("no CUDA runtime in this TVM build and no lowbit[cuda-aot] to launch through the driver")
    rng = np.random.default_rng(m)
    qw = ops.quantize(rng.standard_normal((256, 512)).astype(np.float32), "int4", 128)
    x = torch.randn(m, 512, dtype=torch.float16, device="cuda")
    y = ops.quantized_linear(x, qw, backend="tvm")
    assert y.device.type == "cuda" and y.dtype == torch.float16
    ref = _reference(qw, x.float().cpu().numpy())
    assert relative_error(y.double().cpu().numpy(), ref) <= BOUND["float16"]
    with pytest.raises(ValueError, match="tune=True"):
        ops.quantized_linear(x, qw, backend="tvm", tune=True)
