"""What the Triton backend cannot lower is reported at the kernel author's line (`lower.LoweringError`, a
BackendError): `file:line: op: why`, the source line, then the statement's IR, not only an IR tile name."""

from __future__ import annotations

import numpy as np
import pytest

import lowbit.lang as T
from lowbit.codegen.backend import BackendError, compile_program
from lowbit.codegen.triton.lower import LoweringError


def _line(marker: str) -> int:
    with open(__file__) as f:
        return next(i for i, text in enumerate(f, 1) if marker in text and "_line(" not in text)


@T.kernel
def twelve_wide(x: T.Tensor("float32", ("N",)), y: T.Tensor("float32", ("N",)), N: T.int32, B: T.constexpr = 12):
    (p,) = T.grid(T.cdiv(N, B))
    v = T.load(x, (p * B,), (B,))  # LOAD-12
    T.store(y, (p * B,), v)


@T.kernel
def row_sums(
    x: T.Tensor("float32", ("M", "N")), y: T.Tensor("float32", ("M", 1)), M: T.int32, N: T.int32, BN: T.constexpr = 12
):
    (p,) = T.grid(M)
    acc = T.zeros((1, 1), T.float32, name="acc")
    for n0 in T.range(0, N, BN, name="n0"):
        v = T.load(x, (p, n0), (1, BN))  # LOOP-LOAD
        T.assign(acc, acc + T.sum(v, axis=1, keepdims=True))
    T.store(y, (p, 0), acc)


@T.kernel
def int16_dot(a: T.Tensor("int16", (16, 16)), c: T.Tensor("int32", (16, 16))):
    T.grid(1)
    v = T.load(a, (0, 0), (16, 16))
    T.store(c, (0, 0), T.dot(v, v, acc_dtype=T.int32))  # DOT-16


def test_a_non_power_of_two_tile_names_the_users_line_and_op():
    with pytest.raises(LoweringError) as e:
        compile_program(twelve_wide.trace(), "triton")
    text = str(e.value)
    assert text.startswith(f"{__file__}:{_line('# LOAD-12')}: load: ")
    assert "shape [12]" in text and "power-of-two" in text
    assert "v = T.load(x, (p * B,), (B,))" in text  # the source line
    assert "IR of kernel twelve_wide: %0 = load x" in text
    assert isinstance(e.value, BackendError)


def test_a_statement_in_a_loop_is_reported_at_its_own_line():
    with pytest.raises(LoweringError) as e:
        compile_program(row_sums.trace(), "triton")
    assert str(e.value).startswith(f"{__file__}:{_line('# LOOP-LOAD')}: load: the tile it makes has shape [1, 12]")


def test_an_unsupported_integer_dot_names_the_users_line():
    with pytest.raises(LoweringError) as e:
        compile_program(int16_dot.trace(), "triton")
    assert str(e.value).startswith(f"{__file__}:{_line('# DOT-16')}: dot: dot on int16 tiles")


def test_power_of_two_tiles_still_lower_and_run():
    x = np.arange(32, dtype=np.float32)
    y = np.zeros(32, np.float32)
    compile_program(twelve_wide.trace(B=16), "triton")({"x": x, "y": y, "N": 32})
    assert np.array_equal(x, y)
