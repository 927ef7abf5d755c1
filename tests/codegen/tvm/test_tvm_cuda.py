"""The TVM backend's CUDA lowering (option target "cuda"): grid programs as thread blocks, each tile op strided
across the block's threads, tiles in shared memory. Without a GPU its code is checked three ways: the same
TVMScript run on the CPU (`TvmKernel.simulate`, thread loops as serial loops) equals the reference interpreter
and `x @ dequant(W)`; TVM builds a device module and NVRTC compiles its CUDA C to an sm_90 cubin; TVM's
ThreadSync accepts it (no barrier under a thread-dependent branch). On a CUDA machine the `gpu` test runs it."""

from __future__ import annotations

import copy
import ctypes
import types

import numpy as np
import pytest
from backend_harness import FLOAT_DTYPES, INT_DTYPES, check_gemm, run_both
from hypothesis import given, settings
from hypothesis import strategies as st

from lowbit.codegen.backend import BackendError, compile_program
from lowbit.codegen.tvm import cuda_launch
from lowbit.codegen.tvm import runtime as tvm_runtime
from lowbit.codegen.tvm.runtime import cpu_simulation_source, driver_launch_available, tvm_has_cuda_runtime
from lowbit.kernels.gemv import quantized_gemv
from lowbit.kernels.quantized_gemm import quantized_gemm, random_problem, relative_error
from lowbit.kernels.w4a8 import random_problem as w4a8_random_problem
from lowbit.kernels.w4a8 import w4a8_gemm_per_channel, w4a8_gemm_per_group
from lowbit.lang.kernel import infer_scalars

CUDA = {"target": "cuda"}


@settings(max_examples=8, deadline=None)
@given(
    M=st.integers(1, 40),
    N=st.integers(1, 80),
    kg=st.sampled_from([(64, 32), (96, 32), (128, 64), (100, -1)]),
    wdtype=st.sampled_from(INT_DTYPES + FLOAT_DTYPES),
    zero_mode=st.sampled_from(["none", "post", "pre"]),
    adtype=st.sampled_from(["float16", "float32", "bfloat16"]),
    # 16x32 tiles: whole rounds of 128 threads; 8x20: a guarded last round; 1x64: fewer elements than threads
    tiles=st.sampled_from([dict(BM=16, BN=32, BK=32), dict(BM=8, BN=20, BK=32), dict(BM=1, BN=64, BK=32)]),
    threads=st.sampled_from([128, 64]),
    seed=st.integers(0, 2**16),
)
def test_gemm_equals_the_reference(M, N, kg, wdtype, zero_mode, adtype, tiles, threads, seed):
    K, G = kg
    if G != -1 and not (tiles["BK"] % G == 0 or G % tiles["BK"] == 0):
        tiles = dict(tiles, BK=G)
    check_gemm("tvm-cuda", M, N, K, wdtype, G, zero_mode, adtype, seed, {"threads": threads}, **tiles)


@pytest.mark.parametrize("wdtype,zero_mode", [("int4", "post"), ("uint3", "pre"), ("fp4_e2m1", "none")])
def test_gemv_equals_the_reference(wdtype, zero_mode):
    p = random_problem(3, 70, 256, wdtype, G=128, zero_mode=zero_mode, seed=1, BM=4, BN=32, BK=128)
    consts = {**p.constants, "adtype": "float16"}
    ref, out = run_both(quantized_gemv, consts, dict(p.args), backend="tvm-cuda")
    assert not np.isnan(out["y"]).any()
    assert relative_error(out["y"].astype(np.float64), ref["y"].astype(np.float64)) <= 2e-3
    assert relative_error(out["y"].astype(np.float64), p.expected) <= 1e-2


@pytest.mark.parametrize("per_group", [True, False])
def test_w4a8_equals_the_reference(per_group):
    p = w4a8_random_problem(5, 40, 256, per_group=per_group, G=128, seed=3)
    kernel = w4a8_gemm_per_group if per_group else w4a8_gemm_per_channel
    consts = {**p.constants, "BM": 16, "BN": 32, "BK": 128 if per_group else 64}
    ref, out = run_both(kernel, consts, p.args, backend="tvm-cuda")
    assert np.isfinite(out["y"]).all()
    # the int32 dot is exact on both sides and the fp32 epilogue the same ops: equal up to reassociation
    assert relative_error(out["y"].astype(np.float64), ref["y"].astype(np.float64)) <= 1e-6


def test_cuda_source_cubin_and_launch_shape():
    p = random_problem(20, 40, 128, "int4", G=32, zero_mode="post", BM=16, BN=32, BK=32)
    kernel = compile_program(quantized_gemm.trace(**p.constants), "tvm", {**CUDA, "threads": 64})
    src = kernel.cuda_source
    assert "__global__ void __launch_bounds__(64) main_kernel" in src
    assert "__shared__" in src and "__syncthreads();" in src
    assert "threadIdx.x" in src and "blockIdx.x" in src
    cubin = kernel.cubin()  # NVRTC: the GPU compiler accepts the generated C for sm_90
    assert cubin[:4] == b"\x7fELF" and len(cubin) > 1000
    sim = cpu_simulation_source(kernel.source)
    assert "thread_binding" not in sim and "scope=" not in sim and "tvm_storage_sync" not in sim
    assert sim.count("T.parallel(") == 1  # the grid; every thread loop is serial on the CPU


def test_cuda_kernel_without_a_gpu_says_what_to_do():
    pytest.importorskip("torch")
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    p = random_problem(4, 32, 64, "int4", G=32, zero_mode="none", BM=4, BN=32, BK=32)
    program = quantized_gemm.trace(**p.constants)
    kernel = compile_program(program, "tvm", CUDA)
    with pytest.raises(BackendError, match="simulate"):
        kernel(infer_scalars(program, copy.deepcopy(p.args)))
    cpu = compile_program(program, "tvm")
    with pytest.raises(BackendError, match="CPU kernel"):
        cpu.simulate()
    with pytest.raises(BackendError, match="not CUDA"):
        _ = cpu.cuda_source


def test_tiles_over_the_shared_memory_of_a_block_are_refused():
    p = random_problem(4, 32, 256, "int8", G=128, zero_mode="none", BM=64, BN=128, BK=128)
    with pytest.raises(BackendError, match=r"over the 49152 a block declares statically; use smaller tiles \(BM"):
        compile_program(quantized_gemm.trace(**p.constants), "tvm", CUDA)


@pytest.mark.parametrize(
    "options,match",
    [({"target": "gpu"}, "target='gpu'"), ({"threads": 100}, "multiple of 32"), ({"arch": "90"}, "arch='90'")],
)
def test_bad_options_name_the_fix(options, match):
    p = random_problem(4, 32, 64, "int4", G=32, zero_mode="none", BM=4, BN=32, BK=32)
    with pytest.raises(BackendError, match=match):
        compile_program(quantized_gemm.trace(**p.constants), "tvm", {**CUDA, **options})


@pytest.mark.gpu
def test_runs_on_the_gpu():
    torch = pytest.importorskip("torch")
    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA GPU")
    if not tvm_has_cuda_runtime() and not driver_launch_available():
        pytest.skip("no CUDA runtime in this TVM build and no lowbit[cuda-aot] to launch through the driver")
    p = random_problem(33, 70, 256, "int4", G=128, zero_mode="post", BM=16, BN=32, BK=32)
    program = quantized_gemm.trace(**p.constants)
    kernel = compile_program(program, "tvm", CUDA)
    args = copy.deepcopy(p.args)
    kernel(infer_scalars(program, args))  # NumPy arguments: copied to the device and back
    assert relative_error(args["y"].astype(np.float64), p.expected) <= 1e-2


def test_cuda_kernel_on_a_tvm_without_cuda_says_what_to_do(monkeypatch):
    torch = pytest.importorskip("torch")
    if tvm_has_cuda_runtime():
        pytest.skip("this TVM build has a CUDA runtime")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)  # a GPU machine with the CUDA-less TVM wheel
    monkeypatch.setattr(tvm_runtime, "_include_dir", lambda package: None)  # ... and without lowbit[cuda-aot]
    p = random_problem(4, 32, 64, "int4", G=32, zero_mode="none", BM=4, BN=32, BK=32)
    program = quantized_gemm.trace(**p.constants)
    kernel = compile_program(program, "tvm", CUDA)
    with pytest.raises(BackendError, match=r"no CUDA runtime.*lowbit\[cuda-aot\].*backend='triton'"):
        kernel(infer_scalars(program, copy.deepcopy(p.args)))


class _FakeCudaTensor:
    """What the driver launch reads of a CUDA tensor: its device and address."""

    is_cuda = True

    def __init__(self, address: int, device: int = 0):
        self.address, self.device = address, types.SimpleNamespace(index=device)

    def data_ptr(self) -> int:
        return self.address


def test_driver_launch_passes_the_device_signature(monkeypatch):
    """Where TVM has no CUDA runtime, a CUDA kernel runs through `cuda_launch.DriverLaunch`: the parameters
    reach cuLaunchKernel as the driver reads them (an array of addresses of the values, in the device function's
    order: pointers, then the sizes as 32-bit ints), one block per grid program of `threads` threads."""
    torch = pytest.importorskip("torch")
    if tvm_has_cuda_runtime():
        pytest.skip("this TVM build has a CUDA runtime")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    p = random_problem(37, 70, 128, "int4", G=32, zero_mode="post", BM=16, BN=32, BK=32)
    program = quantized_gemm.trace(**p.constants)
    kernel = compile_program(program, "tvm", {**CUDA, "threads": 64})
    launch = kernel.function
    assert isinstance(launch, cuda_launch.DriverLaunch)
    params = launch.entry.params
    assert [q.c_name for q in params if q.is_pointer] == [
        "scales_1_ptr",
        "w_1_ptr",
        "x_1_ptr",
        "y_1_ptr",
        "zeros_1_ptr",
    ]
    launched = []

    def launch_kernel(fn, gx, gy, gz, bx, by, bz, shared, stream, addresses, extra):
        slots = (ctypes.c_void_p * len(params)).from_address(addresses)
        values = [
            ctypes.c_void_p.from_address(slots[i]).value
            if q.is_pointer
            else ctypes.c_int32.from_address(slots[i]).value
            for i, q in enumerate(params)
        ]
        launched.append((fn, (gx, gy, gz), (bx, by, bz), shared, stream, values, extra))
        return (0,)

    monkeypatch.setattr(cuda_launch, "_driver", lambda: types.SimpleNamespace(cuLaunchKernel=launch_kernel))
    monkeypatch.setattr(cuda_launch.DriverLaunch, "function", lambda self, device: f"function on cuda:{device}")
    monkeypatch.setattr(cuda_launch.DriverLaunch, "stream", staticmethod(lambda device: 77))
    args = {"x": 0x1000, "w": 0x2000, "scales": 0x3000, "zeros": 0x4000, "y": 0x5000}
    sizes = {"M": 37, "N": 70, "K": 128}
    values = [_FakeCudaTensor(args[n]) if n in args else sizes[n] for n in kernel.arg_names]
    launch(*values)
    expected = [args[q.arg] if q.is_pointer else sizes[q.arg] for q in params]
    assert launched == [
        ("function on cuda:0", (3 * 3, 1, 1), (64, 1, 1), 0, 77, expected, 0)
    ]  # cdiv(37,16)·cdiv(70,32)
    with pytest.raises(BackendError, match="argument x must be a CUDA tensor"):
        launch(*[np.zeros(4) if n == "x" else v for n, v in zip(kernel.arg_names, values)])
    with pytest.raises(BackendError, match="argument y is on cuda:1"):
        launch(*[_FakeCudaTensor(1, device=1) if n == "y" else v for n, v in zip(kernel.arg_names, values)])
    with pytest.raises(BackendError, match="K=4294967296 does not fit"):
        launch(*[2**32 if n == "K" else v for n, v in zip(kernel.arg_names, values)])


def test_device_entry_refuses_a_host_computed_parameter():
    head = 'extern "C" __global__ void __launch_bounds__(128) main_kernel'
    src = head + "(float* __restrict__ y_1_ptr, int N, int cse_v1) {"
    assert cuda_launch.device_entry(src.replace(", int cse_v1", ""), ("y", "N"), (("y_1", "y"),)).threads == 128
    with pytest.raises(BackendError, match=r"'int cse_v1' is not one of the program's arguments.*TVM built with CUDA"):
        cuda_launch.device_entry(src, ("y", "N"), (("y_1", "y"),))


def test_cuda_kernel_exports_a_library_with_its_device_code(tmp_path):
    p = random_problem(4, 32, 64, "int4", G=32, zero_mode="none", BM=4, BN=32, BK=32)
    kernel = compile_program(quantized_gemm.trace(**p.constants), "tvm", CUDA)
    path = tmp_path / "gemm_cuda.so"
    kernel.export(str(path))
    data = path.read_bytes()
    assert data[:4] == b"\x7fELF" and b"main_kernel" in data  # the host stub
    assert b"__global__" in data and b"__syncthreads" in data  # the device module's CUDA C, compiled where it loads
