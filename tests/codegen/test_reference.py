"""The reference interpreter's rules, each against an independent NumPy oracle."""

from __future__ import annotations

import ml_dtypes
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import lowbit.lang as T
from lowbit.codegen.reference import KernelArgumentError
from lowbit.dtypes import dtype, wrap
from lowbit.ir.layout import column_major, packed_along

finite_f32 = st.floats(-1e6, 1e6, allow_nan=False, width=32)


@T.kernel
def cast_kernel(x: T.Tensor("float32", (16,)), y: T.Tensor("int32", (16,)), TO: T.constexpr):
    T.grid(1)
    T.store(y, (0,), T.cast(T.cast(T.load(x, (0,), (16,)), TO), "int32"))


@settings(max_examples=20)
@given(
    st.lists(st.one_of(finite_f32, st.just(float("nan")), st.just(1e30)), min_size=16, max_size=16),
    st.sampled_from(["int8", "uint8", "int4", "uint3", "int16"]),
)
def test_float_to_int_truncates_and_saturates(values, to):
    x = np.array(values, np.float32)
    y = np.zeros(16, np.int32)
    cast_kernel.run(x=x, y=y, TO=to)
    d = dtype(to)
    expected = np.clip(np.trunc(np.nan_to_num(x.astype(np.float64), nan=0.0)), d.min, d.max)
    assert y.tolist() == expected.astype(np.int64).tolist()


@T.kernel
def int_cast_kernel(x: T.Tensor("int32", (16,)), y: T.Tensor("int32", (16,)), TO: T.constexpr):
    T.grid(1)
    T.store(y, (0,), T.cast(T.cast(T.load(x, (0,), (16,)), TO), "int32"))


@settings(max_examples=20)
@given(
    st.lists(st.integers(-(2**31), 2**31 - 1), min_size=16, max_size=16),
    st.sampled_from(["int8", "uint8", "int3", "uint5", "int1"]),
)
def test_int_to_int_wraps(values, to):
    x = np.array(values, np.int32)
    y = np.zeros(16, np.int32)
    int_cast_kernel.run(x=x, y=y, TO=to)
    bits, signed = dtype(to).bits, dtype(to).is_signed
    expected = [((v % 2**bits) - (2**bits if signed and v % 2**bits >= 2 ** (bits - 1) else 0)) for v in values]
    assert y.tolist() == expected


@T.kernel
def fp16_add(a: T.Tensor("float16", (32,)), b: T.Tensor("float16", (32,)), c: T.Tensor("float16", (32,))):
    T.grid(1)
    T.store(c, (0,), T.load(a, (0,), (32,)) * T.load(b, (0,), (32,)) + T.load(a, (0,), (32,)))


def test_each_fp16_op_rounds_once_like_numpy():
    rng = np.random.default_rng(3)
    a, b = (rng.standard_normal(32) * 100).astype(np.float16), rng.standard_normal(32).astype(np.float16)
    c = np.zeros(32, np.float16)
    fp16_add.run(a=a, b=b, c=c)
    assert np.array_equal(c, (a * b) + a)  # NumPy float16 ops are correctly rounded per op


@T.kernel
def bf16_copy(a: T.Tensor("bfloat16", (8,)), c: T.Tensor("float32", (8,))):
    T.grid(1)
    T.store(c, (0,), T.cast(T.load(a, (0,), (8,)), "float32") * 2.0)


def test_bfloat16_host_arrays():
    a = np.array([1.5, -2.25, 3e38, 1e-39, 0, 7, 0.1, -0.1], dtype=ml_dtypes.bfloat16)
    c = np.zeros(8, np.float32)
    bf16_copy.run(a=a, c=c)
    with np.errstate(over="ignore"):  # 3e38 * 2 overflows to inf in float32, in the kernel and here
        expected = a.astype(np.float32) * np.float32(2)
    assert np.array_equal(c, expected)


@T.kernel
def unpack_view(w: T.Tensor("uint32", (4, 2)), y: T.Tensor("int8", (4, 16)), AS: T.constexpr):
    T.grid(1)
    T.store(y, (0, 0), T.cast(T.view(T.load(w, (0, 0), (4, 2)), AS), "int8"))


@pytest.mark.parametrize("as_", ["int4", "uint4"])
def test_view_splits_words_little_endian(as_):
    rng = np.random.default_rng(0)
    w = rng.integers(0, 2**32, size=(4, 2), dtype=np.uint64).astype(np.uint32)
    d = dtype(as_)
    r = 32 // d.bits
    y = np.zeros((4, 2 * r), np.int8)
    unpack_view.run(w=w, y=y, AS=as_)
    fields = (w[..., None].astype(np.int64) >> (np.arange(r) * d.bits)) & ((1 << d.bits) - 1)
    assert np.array_equal(y, wrap(d, fields.reshape(4, -1)) if d.is_signed else fields.reshape(4, -1))


@T.kernel
def view_roundtrip(w: T.Tensor("uint32", (4, 2)), y: T.Tensor("uint32", (4, 2)), AS: T.constexpr):
    T.grid(1)
    T.store(y, (0, 0), T.view(T.view(T.load(w, (0, 0), (4, 2)), AS), "uint32"))


@pytest.mark.parametrize("as_", ["uint2", "int4", "uint8", "int8", "uint16", "int1"])
def test_view_roundtrip_is_identity(as_):
    w = np.random.default_rng(1).integers(0, 2**32, size=(4, 2), dtype=np.uint64).astype(np.uint32)
    y = np.zeros_like(w)
    view_roundtrip.run(w=w, y=y, AS=as_)
    assert np.array_equal(y, w)


@T.kernel
def dequant(
    q: T.Tensor("wd", (8, 4)),
    s: T.Tensor("float32", (2, 4)),
    z: T.Tensor("float32", (2, 4)),
    y: T.Tensor("float32", (8, 4)),
    wd: T.constexpr,
    MODE: T.constexpr,
):
    T.grid(1)
    zt = T.load(z, (0, 0), (2, 4)) if MODE != "none" else None
    T.store(
        y,
        (0, 0),
        T.dequantize(T.load(q, (0, 0), (8, 4)), T.load(s, (0, 0), (2, 4)), zt, axis=0, group_size=4, zero_mode=MODE),
    )


@pytest.mark.parametrize("wd", ["uint4", "int3", "fp4_e2m1", "int8"])
@pytest.mark.parametrize("mode", ["none", "post", "pre"])
def test_dequantize_conventions(wd, mode):
    d = dtype(wd)
    rng = np.random.default_rng(2)
    codes = rng.integers(0, 2**d.bits, size=(8, 4)).astype(np.uint8)
    from lowbit.dtypes import decode

    vals = decode(d, codes).astype(np.float64)
    s, z = rng.uniform(0.1, 2, (2, 4)).astype(np.float32), rng.integers(0, 8, (2, 4)).astype(np.float32)
    y = np.zeros((8, 4), np.float32)
    args = dict(s=s, y=y, wd=wd, MODE=mode)
    args["q"] = packed_along((8, 4), d.bits, 1).pack(codes) if d.is_subbyte else codes.view(d.host_dtype)
    if mode != "none":
        args["z"] = z
    dequant.run(**args)
    S, Z = np.repeat(s, 4, 0).astype(np.float64), np.repeat(z, 4, 0).astype(np.float64)
    ref = {"none": vals * S, "post": (vals - Z) * S, "pre": vals * S - Z}[mode]
    assert np.array_equal(y, ref.astype(np.float32))


@T.kernel
def store_packed(
    x: T.Tensor("int32", ("R", "C")),
    w: T.Tensor("wd", ("R", "C"), layout="lay"),
    R: T.int32,
    C: T.int32,
    wd: T.constexpr,
    lay: T.constexpr,
    B: T.constexpr = 8,
):
    pr, pc = T.grid(T.cdiv(R, B), T.cdiv(C, B))
    T.store(w, (pr * B, pc * B), T.cast(T.load(x, (pr * B, pc * B), (B, B)), wd))


@settings(max_examples=15)
@given(
    bits=st.integers(1, 8),
    signed=st.booleans(),
    R=st.integers(1, 20),
    C=st.integers(1, 20),
    axis=st.integers(0, 1),
    dense=st.booleans(),
    seed=st.integers(0, 99),
)
def test_stores_into_packed_tensors_match_the_layouts_pack(bits, signed, R, C, axis, dense, seed):
    d = dtype(f"{'' if signed else 'u'}int{bits}")
    lay = packed_along((R, C), bits, axis, dense=dense)
    x = np.random.default_rng(seed).integers(-300, 300, size=(R, C)).astype(np.int32)
    words = np.zeros(lay.num_words, np.uint32)
    store_packed.run(x=x, w=words, wd=d.name, lay=lay)
    codes = (wrap(d, x.astype(np.int64)) & ((1 << bits) - 1)).astype(np.uint8)
    assert np.array_equal(words.reshape(-1), lay.pack(codes).reshape(-1))


@T.kernel
def transpose_copy(
    x: T.Tensor("float32", ("M", "N"), layout=lambda shape, d: column_major(shape)),
    y: T.Tensor("float32", ("N", "M")),
    M: T.int32,
    N: T.int32,
):
    T.grid(1)
    T.store(y, (0, 0), T.load(x, (0, 0), (8, 8)).T)


def test_memory_layouts_index_flat_buffers():
    M, N = 5, 7
    logical = np.arange(M * N, dtype=np.float32).reshape(M, N)
    buf = logical.T.copy().reshape(-1)  # column-major storage
    y = np.zeros((N, M), np.float32)
    transpose_copy.run(x=buf, y=y, M=M, N=N)
    assert np.array_equal(y, logical.T)


def test_argument_errors_name_the_parameter():
    with pytest.raises(KernelArgumentError, match=r"argument c has shape \[3\]"):
        fp16_add.run(a=np.zeros(32, np.float16), b=np.zeros(32, np.float16), c=np.zeros(3, np.float16).reshape(3))
    with pytest.raises(KernelArgumentError, match=r"missing tensor arguments \['b'\]"):
        fp16_add.run(a=np.zeros(32, np.float16), c=np.zeros(32, np.float16))


def test_torch_bfloat16_tensors_in_and_out():
    torch = pytest.importorskip("torch")

    @T.kernel
    def scale(a: T.Tensor("bfloat16", (8,)), c: T.Tensor("bfloat16", (8,)), f: T.Tensor("float32", (8,))):
        T.grid(1)
        v = T.load(a, (0,), (8,))
        T.store(c, (0,), v * 3.0)
        T.store(f, (0,), T.cast(v, "float32"))

    values = [1.5, -2.25, 1e38, 1e-39, 0.0, 7.0, 0.1, -0.1]
    a = torch.tensor(values, dtype=torch.bfloat16)
    c = torch.zeros(8, dtype=torch.bfloat16)
    f = torch.zeros(8, dtype=torch.float32)
    scale.run(a=a, c=c, f=f)
    bf = np.array(values, np.float32).astype(ml_dtypes.bfloat16)  # the oracle: ml_dtypes' bfloat16 arithmetic
    with np.errstate(over="ignore"):
        expected = (bf.astype(np.float32) * np.float32(3)).astype(ml_dtypes.bfloat16)
    assert c.view(torch.int16).numpy().tolist() == expected.view(np.int16).tolist()
    assert f.numpy().tolist() == bf.astype(np.float32).tolist()


@T.kernel
def ragged_divmod(x: T.Tensor("int32", ("N",)), y: T.Tensor("int32", ("N",)), N: T.int32, B: T.constexpr = 8):
    (pid,) = T.grid(T.cdiv(N, B))
    d = T.load(x, (pid * B,), (B,))  # reads 0 past the end of x: the padding lanes divide by zero
    T.store(y, (pid * B,), (100 // d) * 1000 + 100 % d)


@settings(max_examples=20)
@given(st.lists(st.integers(-50, 50), min_size=1, max_size=20))
def test_integer_division_by_zero_gives_zero_and_never_raises(values):
    x = np.array(values, np.int32)
    y = np.full_like(x, -7)
    ragged_divmod.run(x=x, y=y)
    # Python's floor // and %, and 0 for both where the divisor is 0 (those lanes are stored here too)
    expected = [(100 // v) * 1000 + 100 % v if v else 0 for v in values]
    assert y.tolist() == expected
