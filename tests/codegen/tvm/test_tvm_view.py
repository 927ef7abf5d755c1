"""`view` of a bfloat16 tile as int16 / uint16 in the TVM lowering (`_bf16_bits`): the bit pattern of each value,
NaN as the reference encodes it (the quiet NaN with the value's sign). Through a bfloat16 cast and reinterpret
TVM refused it for tiles of 8, 16 and 32 ("Cannot broadcast lanes=8 ... to 16": it legalizes bfloat16 vectors
to twice the lanes). Oracle: the reference interpreter, over every 16-bit pattern, on the CPU and in the CUDA
lowering (run on the CPU by `simulate`)."""

from __future__ import annotations

import ml_dtypes
import numpy as np
import pytest
from backend_harness import assert_same

import lowbit.lang as T
from lowbit.codegen.backend import compile_program


@T.kernel
def bf16_bits(
    x: T.Tensor("bfloat16", ("N",)), y: T.Tensor("dst", ("N",)), z: T.Tensor("dst", ("N",)), N: T.int32,
    dst: T.constexpr = "int16", B: T.constexpr = 16,
):  # fmt: skip
    (p,) = T.grid(T.cdiv(N, B))
    v = T.load(x, (p * B,), (B,))
    T.store(y, (p * B,), T.view(v, dst))
    T.store(z, (p * B,), T.view(v * 3.0, dst))  # a computed value (rounded to bf16; NaN, inf from overflow)


@pytest.mark.parametrize("backend", ["tvm", "tvm-cuda"])
@pytest.mark.parametrize("dst", ["int16", "uint16"])
@pytest.mark.parametrize("B", [8, 16, 32])
def test_bf16_view_gives_every_bit_pattern(backend, dst, B):
    codes = np.arange(1 << 16, dtype=np.uint32).astype(np.uint16)
    x = codes.view(ml_dtypes.bfloat16)
    program = bf16_bits.trace(dst=dst, B=B)
    kernel = compile_program(program, "tvm", {"target": "cuda"}).simulate() if backend == "tvm-cuda" else None
    outs = []
    for k in (compile_program(program, "reference"), kernel or compile_program(program, "tvm")):
        args = {"x": x.copy(), "y": np.zeros(x.size, dst), "z": np.zeros(x.size, dst), "N": x.size}
        k(args)
        outs.append(args)
    ref, out = outs
    finite = ~np.isnan(x.astype(np.float32))
    assert_same(ref["y"][finite], codes[finite].view(dst), "reference: the bits of every non-NaN value")
    assert_same(out["y"], ref["y"], f"{backend}: view bfloat16 -> {dst}, tiles of {B}")
    assert_same(out["z"], ref["z"], f"{backend}: view of 3x (bfloat16) -> {dst}, tiles of {B}")
