"""Tensor arguments of TVM kernels (`lowbit.codegen.tvm.arguments`): the dtypes the Triton backend takes, with
the same conversions (float values for bfloat16 / 8-bit float tensors, encoded, and decoded back into an
output), and a `TvmArgumentError` (a BackendError and the reference's KernelArgumentError) naming the argument,
the dtype given and taken, and the fix for the rest, before the launch. A float32 array for a bfloat16 tensor
and a uint16 tensor at all used to fail inside TVM (`TypeError: Mismatched x_1.dtype`). Oracle: the reference
interpreter, and Triton's argument check for what is taken."""

from __future__ import annotations

import ml_dtypes
import numpy as np
import pytest
import torch

import lowbit.lang as T
from lowbit.codegen.backend import BackendError, compile_program
from lowbit.codegen.reference import KernelArgumentError
from lowbit.codegen.tvm.arguments import TvmArgumentError
from lowbit.ir.layout import packed_along


@T.kernel
def twice(
    x: T.Tensor("dt", ("N",)), y: T.Tensor("dt", ("N",)), N: T.int32, dt: T.constexpr = "float16", B: T.constexpr = 8
):
    (p,) = T.grid(T.cdiv(N, B))
    v = T.load(x, (p * B,), (B,))
    T.store(y, (p * B,), v * (2.0 if v.dtype.is_float else 2))


@T.kernel
def unpack(w: T.Tensor("int4", (8, 8)), y: T.Tensor("int32", (8, 8))):
    T.grid(1)
    T.store(y, (0, 0), T.cast(T.load(w, (0, 0), (8, 8)), T.int32))


HOSTS = {
    "float32": np.float32,
    "float64": np.float64,
    "float16": np.float16,
    "bfloat16": ml_dtypes.bfloat16,
    "float8_e4m3fn": ml_dtypes.float8_e4m3fn,
    "int16": np.int16,
    "uint16": np.uint16,
    "int32": np.int32,
    "uint8": np.uint8,
}
NATIVE = {"bfloat16": ml_dtypes.bfloat16, "fp8_e4m3": ml_dtypes.float8_e4m3fn}
X = np.array([0.1, -1.7, 3.3, 100.2, -0.0, 7.0, 1e-3, 2.5, 0.3, -8.0], np.float64)


def _run(backend, dt, host, x):
    args = {"x": x.astype(host), "y": np.zeros(X.size, host), "N": X.size}
    compile_program(twice.trace(dt=dt), backend)(args)
    return args


@pytest.mark.parametrize("dt", ["float16", "bfloat16", "float32", "fp8_e4m3", "int16", "uint16"])
@pytest.mark.parametrize("given", list(HOSTS))
def test_takes_what_triton_takes_and_computes_what_the_reference_does(dt, given):
    pytest.importorskip("triton")
    from lowbit.codegen.triton.arguments import ArgumentCheck

    program = twice.trace(dt=dt)
    taken = ArgumentCheck(program.name, program.tensor_params[0]).accepts(np.dtype(HOSTS[given]))
    x = X if given.startswith(("float", "bfloat")) else np.arange(X.size) * 3
    if not taken:
        with pytest.raises(TvmArgumentError, match=rf"argument x has dtype {np.dtype(HOSTS[given]).name}, but"):
            _run("tvm", dt, HOSTS[given], x)
        return
    out = _run("tvm", dt, HOSTS[given], x)
    native = np.dtype(NATIVE.get(dt, dt))
    if np.dtype(HOSTS[given]).kind in "iuV" and np.dtype(HOSTS[given]) != native:
        # the same bits as another type of the width (Triton's rule; the reference would convert the values)
        ref = _run("reference", dt, native, x.astype(HOSTS[given]).view(native))
        assert np.array_equal(out["y"].view(native), ref["y"], equal_nan=True), f"{dt} given {given}: the bits"
        return
    ref = _run("reference", dt, HOSTS[given], x)
    for name in ("x", "y"):
        a, b = (np.asarray(v[name]).astype(np.float64) for v in (out, ref))
        assert np.array_equal(a, b, equal_nan=True), f"{dt} given {given}: {name} {a} vs {b}"


def test_a_refusal_names_the_argument_dtypes_and_fix_before_the_launch():
    y = np.full(X.size, 5, np.float16)
    args = {"x": X.astype(np.float32), "y": y, "N": X.size}
    with pytest.raises(TvmArgumentError) as info:
        compile_program(twice.trace(dt="float16"), "tvm")(args)
    assert isinstance(info.value, BackendError) and isinstance(info.value, KernelArgumentError)
    message = str(info.value)
    assert "argument x has dtype float32, but the float16 parameter takes float16" in message
    assert ".astype(np.float16)" in message
    assert (y == 5).all()  # nothing ran


def test_torch_floats_for_bfloat16_are_encoded_and_outputs_decoded_back():
    x = torch.tensor(X, dtype=torch.float32)
    y = torch.zeros(X.size, dtype=torch.float32)
    compile_program(twice.trace(dt="bfloat16"), "tvm")({"x": x, "y": y, "N": X.size})
    expected = (X.astype(ml_dtypes.bfloat16).astype(np.float32) * 2).astype(ml_dtypes.bfloat16).astype(np.float32)
    assert np.array_equal(y.numpy(), expected)
    assert np.array_equal(x.numpy(), X.astype(np.float32))  # an input is not written back


def test_packed_words_as_uint32_and_bound_copies():
    codes = (np.arange(64) % 16).astype(np.uint8).reshape(8, 8)
    words = np.asarray(packed_along((8, 8), 4, 1).pack(codes)).astype(np.uint32)
    kernel = compile_program(unpack.trace(), "tvm")
    out = {"w": words, "y": np.zeros((8, 8), np.int32)}
    kernel(out)
    ref = {"w": words.copy(), "y": np.zeros((8, 8), np.int32)}
    compile_program(unpack.trace(), "reference")(ref)
    assert np.array_equal(out["y"], ref["y"])
    bf16 = compile_program(twice.trace(dt="bfloat16"), "tvm")
    with pytest.raises(BackendError, match="bound argument x would be a converted copy; pass a contiguous array"):
        bf16.bind({"x": X.astype(np.float32)}, ("y", "N"))


def test_bound_call_and_its_flat_form_write_the_same():
    """`bind`'s caller views each dynamic tensor flat; its `flat` form takes them flat already (the ops fast
    path): both give the dict call's result, and a 2-D output is written in row-major order."""
    kernel = compile_program(twice.trace(dt="float32"), "tvm")
    x = torch.tensor(X, dtype=torch.float32)
    want = torch.zeros(X.size)
    kernel({"x": x, "y": want, "N": X.size})
    call = kernel.bind({"x": x}, ("y", "N"))
    y2 = torch.full((2, X.size // 2), -1.0)
    call(y2, X.size)
    y1 = torch.full((X.size,), -1.0)
    call.flat(y1, X.size)
    assert torch.equal(want, 2 * x) and torch.equal(y1, want) and torch.equal(y2.view(-1), want)
