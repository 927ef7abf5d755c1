"""Emulated float formats in the TVM lowering (fp8 / fp6 / fp4: rounding and encoding by bit templates that repeat
their operand's text, `lower._template_float`): a chain of such ops materializes its long operands instead of
nesting them, so the source stays small, and the outputs still equal the reference interpreter bit for bit."""

from __future__ import annotations

import numpy as np
import pytest
from backend_harness import assert_same, run_both

import lowbit.lang as T
from lowbit.codegen.tvm.lower import lower
from lowbit.kernels.kv_append import cache_dtype, key_dtype, kv_append


@T.kernel
def fp8_chain(
    x: T.Tensor("float32", ("R", "C")),
    s: T.Tensor("float32", ("R",)),
    y: T.Tensor("fp8_e4m3", ("R", "C")),
    R: T.int32,
    C: T.int32,
    fmt: T.constexpr = "fp6_e3m2",
    steps: T.constexpr = 3,
    BR: T.constexpr = 4,
    BC: T.constexpr = 16,
):
    pr, pc = T.grid(T.cdiv(R, BR), T.cdiv(C, BC))
    v = T.load(x, (pr * BR, pc * BC), (BR, BC))
    inv = T.reshape(T.load(s, (pr * BR,), (BR,)), (BR, 1))
    a = T.cast(v * inv, fmt)  # each step rounds to the format: its template repeats the step before
    b = T.cast(a * a + a, fmt)
    if steps == 3:
        b = T.cast(b * b - a, fmt) + b
    T.store(y, (pr * BR, pc * BC), T.cast(b, "fp8_e4m3"))


@pytest.mark.parametrize("fmt", ["fp6_e3m2", "fp8_e5m2", "fp4_e2m1"])
def test_a_chain_of_rounded_steps_equals_the_interpreter(fmt):
    # two steps, nested: 421 KB of TVMScript (three steps: lowering alone takes minutes); materialized: 6.5 KB
    source = lower(fp8_chain.trace(fmt=fmt, steps=2), {}).source
    assert len(source) < 40_000, len(source)
    rng = np.random.default_rng(3)
    R, C = 6, 40  # ragged against the 4 x 16 tiles
    x = (rng.standard_normal((R, C)) * 3).astype(np.float32)
    x[0, :3] = [0.0, -0.0, 1e-6]
    args = {"x": x, "s": rng.uniform(0.5, 2.0, R).astype(np.float32), "y": np.zeros((R, C), np.float32)}
    ref, out = run_both(fp8_chain, {"fmt": fmt}, args, backend="tvm")
    assert np.isfinite(ref["y"]).all() and np.abs(ref["y"]).max() > 0
    assert_same(out["y"], ref["y"], f"{fmt} chain")


def test_kv_append_fp8_source_stays_small():
    """kv_append's fp8 store of its rounded value: 442 KB of TVMScript (a 66 s compile) before the operands of
    template floats were materialized, 33 KB after."""
    kv = "fp8_e4m3"
    program = kv_append.trace(D=64, kv_dtype=kv, cdtype=cache_dtype(kv), kdtype=key_dtype(kv), dtype="float16", BH=2)
    source = lower(program, {}).source
    assert len(source) < 80_000, len(source)
    assert max(len(line) for line in source.splitlines()) < 20_000
