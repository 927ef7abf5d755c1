"""`index64` in the TVM lowering: int32 size parameters are declared int64, so every address is computed in 64 bits
(LLVM folds the constant parts into the load's displacement). Index expressions that become data — the bit offset
of a packed field, the field of a narrowing view — must stay int32: a 64-bit shift of an int32 word moves the sign
bit out of place (the signed int1 GEMM read NaN before those shift amounts were cast back). Oracle: the same
program lowered with 32-bit indices, bit for bit, and the reference interpreter."""

from __future__ import annotations

import numpy as np
import pytest
from backend_harness import assert_same, check_gemm

import lowbit.lang as T
from lowbit.codegen.backend import compile_program
from lowbit.lang.kernel import infer_scalars


def _run(program, args, options):
    out = {k: np.array(v, copy=True) for k, v in args.items()}
    compile_program(program, "tvm", options)(infer_scalars(program, out))
    return out


@pytest.mark.parametrize("wdtype", ["int1", "int3", "uint5", "fp6_e3m2"])
def test_packed_weights_match_32_bit_indices_and_the_reference(wdtype):
    from lowbit.kernels.quantized_gemm import quantized_gemm, random_problem

    check_gemm("tvm", 3, 40, 64, wdtype, 32, "post", adtype="float32", options={"index64": True})
    p = random_problem(3, 40, 64, wdtype, G=32, zero_mode="post")
    program = quantized_gemm.trace(**{**p.constants, "adtype": "float16"})
    args = {k: v for k, v in p.args.items() if k in {q.name for q in program.params}}
    wide, narrow = _run(program, args, {"index64": True}), _run(program, args, {"index64": False})
    assert "K: T.int64" in compile_program(program, "tvm", {"index64": True}).source
    assert_same(wide["y"], narrow["y"], f"{wdtype}: index64 vs int32 indices")


@T.kernel
def bytes_of_words(w: T.Tensor("int32", ("R", 8)), y: T.Tensor("int32", ("R", 32)), R: T.int32):
    (pr,) = T.grid(T.cdiv(R, 4))
    words = T.load(w, (pr * 4, 0), (4, 8))  # [4, 8] int32
    T.store(y, (pr * 4, 0), T.cast(T.view(words, T.uint8), T.int32))  # [4, 32]: byte j % 4 of word j // 4


def test_a_narrowing_view_reads_the_same_fields():
    rng = np.random.default_rng(0)
    w = rng.integers(-(2**31), 2**31 - 1, (10, 8), dtype=np.int64).astype(np.int32)  # ragged R: masked tail
    args = {"w": w, "y": np.zeros((10, 32), np.int32)}
    program = bytes_of_words.trace()
    wide, narrow = _run(program, args, {"index64": True}), _run(program, args, {"index64": False})
    assert_same(wide["y"], narrow["y"], "view int32 -> uint8")
    assert_same(wide["y"], w.view(np.uint8).reshape(10, 32).astype(np.int32), "view vs NumPy's bytes")


def test_the_a8_gemv_is_bit_identical():
    import torch

    from lowbit.ops import linear as L
    from lowbit.ops import quantize

    qw = quantize(np.random.default_rng(1).standard_normal((96, 256)).astype(np.float32) * 0.02, "int4", 128)
    x = torch.from_numpy(np.random.default_rng(2).standard_normal((3, 256)).astype(np.float32))
    ys = {}
    original = L.compile_program
    for flag in (True, False):
        L.compile_program = lambda prog, backend, o, flag=flag: original(prog, backend, {**(o or {}), "index64": flag})
        try:
            plan = L.A8Plan(qw, 3, "tvm", "float32")
        finally:
            L.compile_program = original
        ys[flag] = torch.empty(3, 96)
        plan.run(x, ys[flag])
    assert_same(ys[True].numpy(), ys[False].numpy(), "a8 GEMV")
    ref = x.double().numpy() @ qw.dequantize().astype(np.float64).T
    err = np.abs(ys[True].numpy() - ref).max() / np.abs(ref).max()
    assert np.isfinite(err) and err < 2e-2  # int8 activations: ~1/127 of a group's largest |x| per element
