"""`make_persistent`: the law is that every block of the grid kernel runs exactly once, for every budget. A
kernel that adds 1 to the elements its block owns leaves all ones (a tile run twice leaves 2, one skipped 0)."""

from __future__ import annotations

import numpy as np
import pytest
import sympy
from hypothesis import given, settings
from hypothesis import strategies as st

import lowbit.lang as T
from lowbit.codegen.backend import available_backends, compile_program
from lowbit.ir.parser import parse
from lowbit.ir.passes.persistent import make_persistent, num_tiles


@T.kernel
def bump(c: T.Tensor("int32", ("A", "B", "C")), A: T.int32, B: T.int32, C: T.int32, BA: T.constexpr = 2):
    i, j, k = T.grid(T.cdiv(A, BA), B, C)
    T.store(c, (i * BA, j, k), T.load(c, (i * BA, j, k), (BA, 1, 1)) + 1)


@T.kernel
def bump_rows(c: T.Tensor("int32", ("A", "B")), A: T.int32, B: T.int32, BA: T.constexpr = 4):
    i, j = T.grid(T.cdiv(A, BA), B)
    for _k in T.range(0, 2, 1, name="k"):  # an inner loop in the body: 2 per block
        T.store(c, (i * BA, j), T.load(c, (i * BA, j), (BA, 1)) + 1)


def run(kernel, backend: str, shape: tuple[int, ...], **scalars: int) -> np.ndarray:
    c = np.zeros(shape, np.int32)
    names = "ABC"[: len(shape)]
    compile_program(kernel.trace(), backend)({"c": c, **dict(zip(names, shape)), **scalars})
    return c


@settings(max_examples=30, deadline=None)
@given(shape=st.tuples(st.integers(1, 7), st.integers(1, 4), st.integers(1, 3)), budget=st.integers(1, 40))
def test_every_block_runs_exactly_once(shape, budget):
    assert (run(T.persistent(bump), "reference", shape, BUDGET=budget) == 1).all()


@settings(max_examples=15, deadline=None)
@given(shape=st.tuples(st.integers(1, 9), st.integers(1, 5)), budget=st.integers(1, 50))
def test_two_axis_grid_with_an_inner_loop(shape, budget):
    assert (run(T.persistent(bump_rows), "reference", shape, BUDGET=budget) == 2).all()


@pytest.mark.parametrize("backend", ["triton", "tvm"])
def test_on_the_compiled_backends(backend):
    if backend not in available_backends():
        pytest.skip(f"{backend} is not installed")
    for budget in (1, 3, 100):
        assert (run(T.persistent(bump), backend, (5, 3, 2), BUDGET=budget) == 1).all()


def test_the_program_it_builds():
    grid = bump.trace()
    p = make_persistent(grid)
    budget = sympy.Symbol("BUDGET", integer=True, positive=True)
    assert p.name == "bump_persistent" and p.params[-1].name == "BUDGET"
    assert p.grid == (sympy.Min(budget, num_tiles(grid)),)
    assert len(p.body) == 1 and p.body[0].step == p.grid[0] and p.body[0].stop == num_tiles(grid)
    assert str(parse(str(p))) == str(p)
    assert T.persistent(bump).trace() == p


def test_refuses_a_program_with_a_budget_parameter():
    with pytest.raises(ValueError, match="already has a parameter 'BUDGET'"):
        make_persistent(T.persistent(bump).trace())
