"""Tensor arguments are checked before a Triton launch (lowbit.codegen.triton.arguments): a buffer smaller than
what the declared shape / layout needs at the scalar arguments would be read and written past its end (the
generated code masks by the declared shape), so it is refused with `KernelArgumentError`, as the reference
interpreter refuses it; so is a dtype that would be converted value by value. Bound launchers
(`TritonKernel.bind`) check fixed arguments once and dynamic ones by their element count."""

from __future__ import annotations

import ml_dtypes
import numpy as np
import pytest
import torch
from backend_harness import assert_same, run_both

import lowbit.lang as T
from lowbit.codegen.backend import compile_program
from lowbit.codegen.reference import KernelArgumentError
from lowbit.codegen.triton import runtime
from lowbit.ir.layout import column_major, packed_along
from lowbit.kernels.launch import bind


@T.kernel
def scale(x: T.Tensor("DT", ("N",)), y: T.Tensor("DT", ("N",)), N: T.int32, DT: T.constexpr = "float16"):
    (pid,) = T.grid(T.cdiv(N, 16))
    v = T.load(x, (pid * 16,), (16,))
    T.store(y, (pid * 16,), v + v)


@T.kernel
def unpack(
    w: T.Tensor("int4", ("K", "N"), layout=T.packed(axis=0)),
    y: T.Tensor("float32", ("K", "N")),
    K: T.int32,
    N: T.int32,
):
    pk, pn = T.grid(T.cdiv(K, 8), T.cdiv(N, 8))
    T.store(y, (pk * 8, pn * 8), T.cast(T.load(w, (pk * 8, pn * 8), (8, 8)), "float32"))


@T.kernel
def column_major_copy(
    x: T.Tensor("float32", ("M", "N"), layout=lambda shape, d: column_major(shape)),
    y: T.Tensor("float32", ("M", "N")),
    M: T.int32,
    N: T.int32,
):
    T.grid(1)
    T.store(y, (0, 0), T.load(x, (0, 0), (8, 8)))


def _both(kernel, args, **constants):
    """The reference's and the Triton backend's errors for the same call (None: it ran)."""
    program = kernel.trace(**constants)
    errors = []
    for backend in ("reference", "triton"):
        try:
            compile_program(program, backend)({k: v.copy() if hasattr(v, "copy") else v for k, v in args.items()})
            errors.append(None)
        except KernelArgumentError as e:
            errors.append(str(e))
    return errors


def test_an_output_smaller_than_its_shape_is_refused_before_anything_is_written():
    buf = np.zeros(40, np.float16)
    with pytest.raises(KernelArgumentError, match=r"argument y has 10 elements, but its shape \[N\] needs 20 at N=20"):
        compile_program(scale.trace(), "triton")({"x": np.ones(20, np.float16), "y": buf[:10], "N": 20})
    assert not buf.any()
    ref, tri = _both(scale, {"x": np.ones(20, np.float16), "y": np.zeros(10, np.float16), "N": 20})
    assert ref and tri and "argument y" in ref


def test_a_device_tensor_view_smaller_than_its_shape_is_refused():
    """The direct path (torch tensors on the launch device, no copies) would write straight past the view."""
    buf = torch.zeros(40, dtype=torch.float16, device=runtime.DEVICE)
    x = torch.ones(20, dtype=torch.float16, device=runtime.DEVICE)
    assert runtime._direct(scale.trace().param("y"), buf[:10]) is not None
    with pytest.raises(KernelArgumentError, match="argument y has 10 elements"):
        compile_program(scale.trace(), "triton")({"x": x, "y": buf[:10], "N": 20})
    assert not buf.any()


def test_scalars_beyond_the_arrays_are_refused():
    args = {"x": np.ones(20, np.float16), "y": np.zeros(20, np.float16), "N": 40}
    ref, tri = _both(scale, args)
    assert ref and tri
    assert "argument x has 20 elements" in tri and "needs 40 at N=40" in tri and "scalar arguments (N)" in tri


def test_arrays_of_the_right_size_in_another_shape_run_like_the_reference():
    """(The reference demands the shape itself; Triton addresses the elements, so their count is enough.)"""
    x = np.arange(32, dtype=np.float16)
    ref, _ = run_both(scale, {}, {"x": x, "y": np.zeros(32, np.float16), "N": 32})
    y = np.zeros((4, 8), np.float16)
    compile_program(scale.trace(), "triton")({"x": x.reshape(2, 16), "y": y, "N": 32})
    assert_same(y.reshape(-1), ref["y"])


def test_packed_words_are_counted():
    K, N = 16, 8
    layout = packed_along((K, N), 4, 0)
    codes = np.random.default_rng(0).integers(0, 16, (K, N)).astype(np.uint8)
    words = layout.pack(codes).reshape(-1)
    ref, tri = _both(unpack, {"w": words[:-1], "y": np.zeros((K, N), np.float32), "K": K, "N": N})
    assert ref and tri
    assert f"argument w has {words.size - 1} words" in tri and f"needs at least {words.size} words" in tri
    assert "PackedLayout.pack" in tri
    ref, tri = run_both(unpack, {}, {"w": words, "y": np.zeros((K, N), np.float32), "K": K, "N": N})
    assert_same(tri["y"], ref["y"])
    # the scalars claim more rows than the words hold
    ref, tri = _both(unpack, {"w": words, "y": np.zeros((2 * K, N), np.float32), "K": 2 * K, "N": N})
    assert ref and tri and "argument w" in tri


def test_a_layout_buffer_must_hold_every_offset_the_layout_reaches():
    M, N = 5, 7
    logical = np.arange(M * N, dtype=np.float32).reshape(M, N)
    buf = logical.T.copy().reshape(-1)
    ref, tri = _both(column_major_copy, {"x": buf[:-1], "y": np.zeros((M, N), np.float32), "M": M, "N": N})
    assert ref and tri and "argument x has 34 elements" in tri and "reaches 35 elements" in tri
    bigger = np.concatenate(
        [buf, np.full(3, np.nan, np.float32)]
    )  # more than the layout reaches: taken, as by the reference
    ref, tri = run_both(column_major_copy, {}, {"x": bigger, "y": np.zeros((M, N), np.float32), "M": M, "N": N})
    assert_same(tri["y"], ref["y"])
    assert_same(tri["y"], logical)


@pytest.mark.parametrize(
    ("dt", "given", "want"),
    [
        ("float16", np.float32, "float16"),
        ("float16", np.float64, "float16"),
        ("float32", np.int32, "float32"),
        ("int32", np.int64, "int32"),
        ("int32", np.float32, "int32"),
        ("bfloat16", np.int32, "int16"),
    ],
)
def test_dtypes_that_would_be_converted_value_by_value_are_refused(dt, given, want):
    args = {"x": np.ones(16, given), "y": np.zeros(16, given), "N": 16}
    with pytest.raises(KernelArgumentError, match=rf"argument x has dtype {np.dtype(given).name}, .* {dt} parameter"):
        compile_program(scale.trace(DT=dt), "triton")(args)
    with pytest.raises(KernelArgumentError, match=r"argument x has dtype"):
        compile_program(scale.trace(DT=dt), "triton")({**args, "x": torch.from_numpy(args["x"])})


@pytest.mark.parametrize(
    ("dt", "host"),
    [
        ("float16", np.float16),
        ("int32", np.uint32),  # the same bits
        ("bfloat16", ml_dtypes.bfloat16),
        ("bfloat16", np.uint16),  # codes
        ("bfloat16", np.float32),  # values, encoded
        ("fp8_e4m3", ml_dtypes.float8_e4m3fn),
    ],
)
def test_dtypes_that_hold_the_values_as_they_are_run_like_the_reference(dt, host):
    x = np.arange(-8, 8).astype(np.float32).astype(host) if np.dtype(host).kind != "u" else np.arange(16, dtype=host)
    ref, tri = run_both(scale, {"DT": dt}, {"x": x, "y": np.zeros(16, host), "N": 16})
    assert_same(tri["y"].view(np.uint8), ref["y"].view(np.uint8))


def test_bound_calls_check_fixed_arguments_once_and_dynamic_ones_per_call():
    program = scale.trace()
    kernel = compile_program(program, "triton")
    dev = runtime.DEVICE
    x = torch.arange(32, dtype=torch.float16, device=dev)
    with pytest.raises(KernelArgumentError, match="argument x has 20 elements"):
        kernel.bind({"x": x[:20], "N": 32}, ("y",))  # every size known: refused at bind time
    with pytest.raises(KernelArgumentError, match="argument x has dtype float32"):
        kernel.bind({"x": x.float()}, ("y", "N"))
    call = bind(kernel, {"x": x, "N": 32}, ("y",))
    buf = torch.zeros(64, dtype=torch.float16, device=dev)
    with pytest.raises(KernelArgumentError, match="argument y has 16 elements"):
        call(buf[:16])
    assert not buf.any()
    call(buf[:32])
    assert torch.equal(buf[:32], 2 * x) and not buf[32:].any()
    # x's size follows the dynamic N: checked per call
    late = kernel.bind({"x": x}, ("y", "N"))
    with pytest.raises(KernelArgumentError, match="argument x has 32 elements, but its shape \\[N\\] needs 48"):
        late(torch.zeros(48, dtype=torch.float16, device=dev), 48)
    y = torch.zeros(16, dtype=torch.float16, device=dev)
    with pytest.raises(KernelArgumentError, match="argument x has 32 elements"):
        late(y, 16)  # a row-major tensor must be exactly its shape
    # NumPy arguments go through the converting call, with every check
    host = kernel.bind({"x": x.numpy(), "N": 32}, ("y",))
    with pytest.raises(KernelArgumentError, match="argument y has 8 elements"):
        host(np.zeros(8, np.float16))
    out = np.zeros(32, np.float16)
    host(out)
    assert np.array_equal(out, 2 * x.numpy())


def test_bound_calls_equal_the_mapping_call():
    kernel = compile_program(unpack.trace(), "triton")
    K, N = 16, 8
    layout = packed_along((K, N), 4, 0)
    words = torch.from_numpy(layout.pack(np.arange(K * N).reshape(K, N) % 16).view(np.int32))
    ref = np.zeros((K, N), np.float32)
    compile_program(unpack.trace(), "reference")({"w": words.numpy(), "y": ref, "K": K, "N": N})
    y = torch.zeros((K, N))
    kernel.bind({"w": words, "K": K, "N": N, "unused": 1}, ("y", "not_a_parameter"))(y, 0)
    assert np.array_equal(y.numpy(), ref)
