"""A W4A16 group-quantized GEMM written in the lowbit DSL, run on the reference interpreter against NumPy's
x @ dequant(W) — then the same kernel, unchanged but for the dtype, with int3 and fp6_e3m2 weights.

    python examples/quantized_gemm.py
"""

from __future__ import annotations

import numpy as np

from lowbit.dtypes import dtype, encode
from lowbit.ir.layout import packed_along
from lowbit.ir.passes import run_pipeline
from lowbit.kernels.quantized_gemm import quantized_gemm, random_problem, relative_error
from lowbit.quant import quantize_groupwise


def run(wdtype: str, M: int = 24, N: int = 48, K: int = 256, G: int = 64) -> float:
    zero_mode = "post" if dtype(wdtype).is_integer and not dtype(wdtype).is_signed else "none"
    p = random_problem(M, N, K, wdtype, G=G, zero_mode=zero_mode, seed=7)
    quantized_gemm.run(**p.args, **p.constants)  # the interpreter writes p.args["y"]
    return relative_error(p.args["y"], p.expected)


def quantize_then_run(wdtype: str = "uint4", M: int = 16, N: int = 64, K: int = 256, G: int = 64) -> float:
    """The whole W4A16 path: float weights -> lowbit.quant (AWQ-style asymmetric min-max, fp16 scales) ->
    codes packed along K by the layout -> the DSL kernel -> compare with x @ Ŵ."""
    rng = np.random.default_rng(0)
    w = rng.standard_normal((N, K)).astype(np.float32)  # [N, K], as a Linear stores it
    x = rng.standard_normal((M, K)).astype(np.float16)
    wd = dtype(wdtype)
    gq = quantize_groupwise(w, bits=wd, group_size=G, scale_dtype=np.float16)  # codes [N, K], scales/zeros [N, K/G]
    codes = encode(wd, gq.codes.T.astype(np.float32))  # [K, N] bit patterns
    y = np.zeros((M, N), np.float16)
    quantized_gemm.run(
        x=x,
        w=packed_along((K, N), wd.bits, 0).pack(codes),
        scales=gq.scales.T.copy(),
        zeros=gq.zeros.T.astype(np.float16),
        y=y,
        wdtype=wdtype,
        G=G,
        zero_mode="post",
    )
    w_hat = gq.dequantize().astype(np.float16).astype(np.float64)  # the kernel dequantizes to fp16
    return relative_error(y, x.astype(np.float64) @ w_hat.T)


def main() -> None:
    program = run_pipeline(quantized_gemm.trace(wdtype="uint4", G=64, zero_mode="post"))
    print(program)
    print(f"{'weights':<10}{'rel. error vs x @ dequant(W)':>30}")
    for wdtype in ("uint4", "int3", "fp6_e3m2"):
        err = run(wdtype)
        print(f"{wdtype:<10}{err:>30.2e}")
        assert np.isfinite(err) and err < 2e-3, f"{wdtype}: {err}"
    err = quantize_then_run()
    print(f"float W -> lowbit.quant uint4 g64 -> kernel: rel. error vs x @ Ŵ = {err:.2e}")
    assert np.isfinite(err) and err < 2e-3


if __name__ == "__main__":
    main()
