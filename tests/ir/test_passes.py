"""Passes are pure, return their input when nothing changes, and preserve the reference semantics."""

from __future__ import annotations

import re

import numpy as np
import pytest

import lowbit.lang as T
from lowbit.codegen.reference import run_reference
from lowbit.ir.instructions import Dot
from lowbit.ir.passes import PIPELINE, eliminate_dead_code, fuse_dot_accumulate, run_pipeline, simplify_exprs
from lowbit.ir.statements import For, If, Let, walk
from lowbit.kernels.quantized_gemm import quantized_gemm, random_problem


@T.kernel
def messy(x: T.Tensor("float32", ("N",)), y: T.Tensor("float32", ("N",)), N: T.int32, B: T.constexpr = 8):
    (pid,) = T.grid(T.cdiv(N, B))
    unused = T.exp(T.load(x, (pid * B,), (B,)))  # dead
    v = T.load(x, ((pid + 1) * B - B,), (B,))  # offset simplifies to pid*8
    with T.if_(pid >= 0):  # always true: block indices are non-negative
        v += 1.0
    for _ in T.range(0, 0):
        v += 2.0  # a loop that never runs
    del unused
    T.store(y, (pid * B,), v)


def test_each_pass_returns_its_input_when_nothing_changes():
    final = run_pipeline(messy.trace())
    for p in PIPELINE:
        assert p(final) is final, p.__name__


def test_dead_code_and_constant_control_flow_disappear():
    out = run_pipeline(messy.trace())
    stmts = list(walk(out.body))
    assert not any(isinstance(s, Let) and s.inst.__class__.__name__ == "Unary" for s in stmts)
    assert not any(isinstance(s, (If, For)) for s in stmts)


def test_dot_accumulate_is_fused():
    p = quantized_gemm.trace(wdtype="int4", G=32)
    fused = fuse_dot_accumulate(p)
    assert fused is not p
    dots = [s.inst for s in walk(fused.body) if isinstance(s, Let) and isinstance(s.inst, Dot)]
    assert len(dots) == 1 and dots[0].c is not None
    assert fuse_dot_accumulate(fused) is fused


@pytest.mark.parametrize("pass_", [simplify_exprs, eliminate_dead_code, fuse_dot_accumulate])
def test_passes_preserve_semantics(pass_):
    prob = random_problem(20, 40, 96, "int3", G=32, zero_mode="post", BK=32)
    program = quantized_gemm.trace(**prob.constants)
    outs = []
    for p in (program, pass_(program)):
        args = {k: v.copy() for k, v in prob.args.items()}
        run_reference(p, {**args, "M": 20, "N": 40, "K": 96})
        outs.append(args["y"])
    assert np.array_equal(outs[0], outs[1])


def test_dump_ir_writes_every_changed_stage(tmp_path, monkeypatch):
    monkeypatch.setenv("LOWBIT_DUMP_IR", str(tmp_path))
    run_pipeline(messy.trace())
    names = sorted(f.name for f in tmp_path.iterdir())
    assert re.fullmatch(r"messy\.[0-9a-f]{10}\.00\.input\.lbir", names[0])
    assert len({n.split(".")[1] for n in names}) == 1  # one run's stages share the hash
    assert any("simplify_exprs" in n for n in names) and any("eliminate_dead_code" in n for n in names)
    assert not any("fuse_dot_accumulate" in n for n in names)  # unchanged stages are not dumped
    assert all((tmp_path / n).read_text().startswith("kernel messy(") for n in names)


def test_dumps_of_two_specialisations_do_not_overwrite_each_other(tmp_path, monkeypatch):
    monkeypatch.setenv("LOWBIT_DUMP_IR", str(tmp_path))
    for b in (8, 16):
        run_pipeline(messy.trace(B=b))
    inputs = sorted(f for f in tmp_path.iterdir() if f.name.endswith(".00.input.lbir"))
    assert len(inputs) == 2
    assert {"constants(B=8)" in f.read_text() for f in inputs} == {True, False}
