"""The semantic layer's rules: Python scalars, integer indices, dot and sum typing, implicit casts, axes and
names in messages. Each rejection is a DSLError at trace time that names the value and the fix; each
accepted case is checked against NumPy on the reference interpreter."""

from __future__ import annotations

import re

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import lowbit.lang as T
from lowbit.dtypes import dtype
from lowbit.ir.statements import For, walk
from lowbit.ir.verifier import VerificationError
from lowbit.lang import DSLError

# ---- Python scalars take the tile's dtype, and must be values of it ----------------------------------------


@T.kernel
def compare_const(
    x: T.Tensor("dt", (8,)), y: T.Tensor("int32", (8,)), dt: T.constexpr, OP: T.constexpr, C: T.constexpr
):
    T.grid(1)
    v = T.load(x, (0,), (8,))
    out = {
        "gt": lambda: T.cast(v > C, T.int32),
        "eq": lambda: T.cast(v == C, T.int32),
        "add": lambda: T.cast(v + C, T.int32),
        "max": lambda: T.cast(T.maximum(v, C), T.int32),
        "where": lambda: T.cast(T.where(v > 0, v, C), T.int32),
    }[OP]()
    T.store(y, (0,), out)


@settings(max_examples=60)
@given(
    dt=st.sampled_from(["int8", "uint8", "int16"]),
    op=st.sampled_from(["gt", "eq", "add", "max", "where"]),
    edge=st.sampled_from(["min", "max"]),
    delta=st.integers(-2, 2),
    seed=st.integers(0, 99),
)
def test_integer_constants_are_values_of_the_tile_dtype_or_an_error(dt, op, edge, delta, seed):
    d = dtype(dt)
    c = (d.min if edge == "min" else d.max) + delta
    x = np.random.default_rng(seed).integers(d.min, d.max + 1, 8).astype(d.host_dtype)
    if not d.min <= c <= d.max:
        with pytest.raises(DSLError, match=rf"constant {c} .*{dt}.*T\.cast\(x, T\.int32\)"):
            compare_const.trace(dt=dt, OP=op, C=c)
        return
    y = np.zeros(8, np.int32)
    compare_const.run(x=x, y=y, dt=dt, OP=op, C=c)
    v = x.astype(np.int64)
    expected = {
        "gt": v > c,
        "eq": v == c,
        "add": (v + c - d.min) % 2**d.bits + d.min if d.is_signed else (v + c) % 2**d.bits,  # the tile's add wraps
        "max": np.maximum(v, c),
        "where": np.where(v > 0, v, c),
    }[op]
    assert y.tolist() == np.asarray(expected).astype(np.int64).tolist()


@pytest.mark.parametrize(
    ("dt", "op", "c", "words"),
    [
        ("int8", "gt", 200, ["200", "int8", "[-128, 127]", "T.cast(x, T.int32)"]),
        ("uint8", "add", 300, ["300", "uint8", "[0, 255]"]),
        ("uint8", "where", -1, ["-1", "uint8"]),
        ("float16", "add", -70000.0, ["-70000.0", "float16", "65504", "T.float32"]),
        ("float16", "max", 1e5, ["100000.0", "float16"]),
    ],
)
def test_out_of_range_constant_names_value_dtype_and_fix(dt, op, c, words):
    with pytest.raises(DSLError) as e:
        compare_const.trace(dt=dt, OP=op, C=c)
    for w in words:
        assert w in str(e.value), (w, str(e.value))
    assert "test_semantic.py" in str(e.value)  # at the user's line


def test_full_and_load_other_must_be_values_of_their_dtype():
    @T.kernel
    def k(x: T.Tensor("int8", (8,)), y: T.Tensor("int8", (8,)), WHICH: T.constexpr):
        T.grid(1)
        if WHICH == "full":
            T.store(y, (0,), T.full((8,), 300, T.int8))
        elif WHICH == "other":
            T.store(y, (0,), T.load(x, (0,), (8,), other=-1000))
        else:
            T.store(y, (0,), T.full((8,), 1.5, T.int8))

    for which, words in (("full", ["300", "int8"]), ("other", ["-1000", "int8"]), ("frac", ["1.5", "integer"])):
        with pytest.raises(DSLError) as e:
            k.trace(WHICH=which)
        assert all(w in str(e.value) for w in words), str(e.value)


def test_a_scalar_keeps_a_float_tile_dtype_everywhere():
    @T.kernel
    def k(x: T.Tensor("float16", (8,)), y: T.Tensor("float16", (8,)), i: T.Tensor("int32", (8,))):
        T.grid(1)
        v = T.load(x, (0,), (8,))
        T.store(y, (0,), T.where(v > 0.0, v, 0.0))  # fp16, like v * 0.5
        T.store(y, (0,), v * 0.5)
        T.store(y, (0,), T.maximum(v, float("-inf")))
        w = T.load(i, (0,), (8,)) * 0.5  # a float scalar with an integer tile: float32
        assert w.dtype == T.float32
        assert T.where(v > 0.0, 1, 0.5).dtype == T.float32  # two scalars: the wider of their types

    k.trace()


# ---- T.sum of booleans, float dots into integer accumulators, float-to-int assignment ----------------------


def test_sum_of_a_boolean_tile_is_rejected_and_a_count_is_a_cast():
    @T.kernel
    def count(x: T.Tensor("float32", (8,)), y: T.Tensor("int32", (1,)), CAST: T.constexpr):
        T.grid(1)
        m = T.load(x, (0,), (8,)) > 0.0
        T.store(y, (0,), T.sum(T.cast(m, T.int32) if CAST else m, axis=0, keepdims=True))

    with pytest.raises(DSLError, match=r"sum of a boolean tile.*int32"):
        count.trace(CAST=False)
    x = np.array([1, 1, -1, 2, -3, 0, 5, 1], np.float32)
    y = np.zeros(1, np.int32)
    count.run(x=x, y=y, CAST=True)
    assert y[0] == (x > 0).sum()


def test_float_dot_into_an_integer_accumulator_is_rejected():
    @T.kernel
    def k(a: T.Tensor("ad", (16, 16)), y: T.Tensor("int32", (16, 16)), ad: T.constexpr):
        T.grid(1)
        v = T.load(a, (0, 0), (16, 16))
        T.store(y, (0, 0), T.dot(v, v, acc_dtype=T.int32))

    with pytest.raises(DSLError, match=r"float16 tiles with acc_dtype int32.*float32"):
        k.trace(ad="float16")
    k.trace(ad="int8")  # int8 x int8 -> int32 stays


def test_assigning_a_float_value_to_an_integer_tile_must_be_a_written_cast():
    @T.kernel
    def k(x: T.Tensor("float32", (8,)), y: T.Tensor("int32", (8,)), WHICH: T.constexpr):
        T.grid(1)
        acc = T.zeros((8,), T.int32)
        v = T.load(x, (0,), (8,))
        if WHICH == "iadd":
            acc += v
        elif WHICH == "assign":
            T.assign(acc, 0.5)
        else:
            acc += T.cast(v, T.int32)
        T.store(y, (0,), acc)

    for which in ("iadd", "assign"):
        with pytest.raises(DSLError, match=r"float32 value to the int32 tile.*truncate.*T\.cast"):
            k.trace(WHICH=which)
    k.trace(WHICH="cast")


# ---- indices are integers -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("which", "words"),
    [
        ("offset", ["offset 0 is N/2", "//"]),
        ("step", ["T.range step is 64.0", "64, not 64.0"]),
        ("grid", ["T.grid extent 0 is N/2", "//"]),
        ("shape", ["non-integer extent 4.0", "//"]),
        ("step0", ["step 0 must be positive"]),
    ],
)
def test_non_integer_indices_are_rejected_with_the_fix(which, words):
    @T.kernel
    def k(x: T.Tensor("float32", ("N",)), y: T.Tensor("float32", ("N",)), N: T.int32, WHICH: T.constexpr):
        T.grid(N / 2 if WHICH == "grid" else 1)
        if WHICH == "offset":
            T.store(y, (0,), T.load(x, (N / 2,), (4,)))
        if WHICH in ("step", "step0"):
            for k0 in T.range(0, N, 64.0 if WHICH == "step" else 0):
                T.store(y, (k0,), T.load(x, (k0,), (4,)))
        if WHICH == "shape":
            T.store(y, (0,), T.load(x, (0,), (8 / 2,)))

    with pytest.raises(DSLError) as e:
        k.trace(WHICH=which)
    for w in words:
        assert w in str(e.value), (w, str(e.value))


def test_tensor_dimensions_are_integers():
    @T.kernel
    def k(x: T.Tensor("float32", ("N / 2",)), N: T.int32):
        T.grid(1)
        T.store(x, (0,), T.load(x, (0,), (4,)))

    with pytest.raises(DSLError, match=r"dimension 0 of tensor 'x' is N/2.*//"):
        k.trace()


# ---- messages name what the user wrote ----------------------------------------------------------------------


def test_loop_variables_take_the_name_of_the_for_statement():
    @T.kernel
    def k(x: T.Tensor("float32", ("N",)), y: T.Tensor("float32", ("N",)), N: T.int32):
        T.grid(1)
        for k0 in T.range(0, N, 16):
            for j in T.range(  # a `for` over several lines
                0,
                16,
                4,
            ):
                T.store(y, (k0 + j,), T.load(x, (k0 + j,), (4,)))
        for k0 in T.range(0, N, 16):  # noqa: B007 (a second k0: the IR gives it a fresh name)
            pass
        for _ in T.range(2, name="rep"):
            pass

    names = [str(s.var) for s in walk(k.trace().body) if isinstance(s, For)]
    assert names == ["k0", "j", "k01", "rep"]


def test_a_loop_variable_used_after_its_loop_is_named_as_written():
    @T.kernel
    def k(x: T.Tensor("float32", ("N",)), y: T.Tensor("float32", ("N",)), N: T.int32):
        T.grid(1)
        for k0 in T.range(0, N, 16):  # noqa: B007 (used after the loop: the mistake under test)
            pass
        T.store(y, (k0,), T.load(x, (0,), (16,)))  # k0: the loop's variable, out of scope in the IR

    with pytest.raises(VerificationError, match=r"store offset 0 mentions k0.*k0 is the variable of the loop at"):
        k.trace()


@pytest.mark.parametrize(
    ("op", "axis", "message"),
    [
        ("sum", -3, "T.sum: axis -3 is out of range for a rank-2 tile; use 0..1 or -2..-1"),
        ("max", 2, "T.max: axis 2 is out of range for a rank-2 tile"),
        ("expand_dims", 3, "T.expand_dims: axis 3 is out of range for a rank-2 tile; use -3..2"),
    ],
)
def test_axis_errors_name_the_axis_given(op, axis, message):
    @T.kernel
    def k(x: T.Tensor("float32", (4, 8)), OP: T.constexpr, A: T.constexpr):
        T.grid(1)
        getattr(T, OP)(T.load(x, (0, 0), (4, 8)), axis=A)

    with pytest.raises(DSLError, match=re.escape(message)):
        k.trace(OP=op, A=axis)
    k.trace(OP=op, A=-1)


def test_dequantize_group_message_states_the_accepted_combinations():
    @T.kernel
    def k(w: T.Tensor("int4", (256, 16)), s: T.Tensor("float16", (2, 16)), y: T.Tensor("float16", (256, 16))):
        T.grid(1)
        q = T.load(w, (0, 0), (64, 16))
        T.store(y, (0, 0), T.dequantize(q, T.load(s, (0, 0), (1, 16)), axis=0, group_size=128, dtype=T.float16))

    with pytest.raises(DSLError) as e:
        k.trace()
    msg = str(e.value)
    assert "multiple of group_size" in msg and "group_size=64" in msg and "make the tile a multiple" not in msg


def test_arange_bounds_are_shown_as_given():
    @T.kernel
    def k(y: T.Tensor("int32", (64,)), B: T.constexpr):
        T.grid(1)
        T.store(y, (0,), T.arange(B))

    with pytest.raises(DSLError, match=r"got '64' \(str\)"):
        k.trace(B="64")


def test_grid_comes_first():
    @T.kernel
    def k(x: T.Tensor("float32", (16,)), y: T.Tensor("float32", (16,))):
        v = T.load(x, (0,), (16,))
        T.grid(1)
        T.store(y, (0,), v)

    with pytest.raises(DSLError, match=r"T.grid\(\.\.\.\) must come first"):
        k.trace()
