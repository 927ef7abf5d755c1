"""Tiles computed from loop-carried (`T.assign`-ed) state in the TVM lowering (`_Emitter._inline_once`,
`before_write`, the in-place `_assign`): such a tile may stay inlined into its one use, so it must be stored
before the state it reads is written: by an update (`acc += v`), a loop that updates it, or a branch that does.
Each kernel saves `acc` before changing it and stores the saved value after; integer-valued floats make every
sum exact, so the outputs equal NumPy's bit for bit. `acc <- acc + f(v)` is written in place: the lowered
source holds the accumulator and the saved value and no other buffer."""

from __future__ import annotations

import numpy as np
import pytest

import lowbit.lang as T
from lowbit.codegen.backend import compile_program

BR, BC = 4, 16


@T.kernel
def save_then_update(
    x: T.Tensor("float32", ("R", "C")),
    y: T.Tensor("float32", ("R", "BC")),
    z: T.Tensor("float32", ("R", "C")),
    R: T.int32,
    C: T.int32,
    where: T.constexpr = "update",
    BR: T.constexpr = 4,
    BC: T.constexpr = 16,
):
    (pr,) = T.grid(T.cdiv(R, BR))
    acc = T.zeros((BR, BC), T.float32, name="acc")
    for k0 in T.range(0, C, BC, name="k0"):
        v = T.load(x, (pr * BR, k0), (BR, BC))
        old = acc * 2.0 + 1.0  # one use (the store below), read after acc changes
        if where == "update":
            acc += v
        elif where == "loop":
            for _j in T.range(0, 2, 1, name="j"):
                acc += v
        else:
            with T.if_(k0 >= BC):
                acc += v
        T.store(z, (pr * BR, k0), old)
    T.store(y, (pr * BR, 0), acc)


def expected(x: np.ndarray, where: str) -> tuple[np.ndarray, np.ndarray]:
    acc = np.zeros((x.shape[0], BC), np.float32)
    z = np.zeros_like(x)
    for k0 in range(0, x.shape[1], BC):
        z[:, k0 : k0 + BC] = acc * 2 + 1
        v = x[:, k0 : k0 + BC]
        acc = acc + (2 * v if where == "loop" else v if where == "update" or k0 >= BC else 0)
    return acc, z


@pytest.mark.parametrize("where", ["update", "loop", "branch"])
def test_a_saved_tile_sees_the_state_before_the_update(where: str):
    R, C = 8, 64
    x = np.random.default_rng(3).integers(-8, 9, (R, C)).astype(np.float32)
    kernel = compile_program(save_then_update.trace(where=where, BR=BR, BC=BC), "tvm", {})
    y, z = np.full((R, BC), np.nan, np.float32), np.full((R, C), np.nan, np.float32)
    kernel({"x": x, "y": y, "z": z, "R": R, "C": C})
    want_y, want_z = expected(x, where)
    np.testing.assert_array_equal(z, want_z)
    np.testing.assert_array_equal(y, want_y)


def test_an_elementwise_update_is_written_in_place():
    source = compile_program(save_then_update.trace(where="update", BR=BR, BC=BC), "tvm", {}).source
    assert source.count("T.decl_buffer") == 2  # acc and the saved value: acc + v is not a buffer of its own
