"""A W4A16 group-quantized GEMM written in the lowbit DSL, run on the reference interpreter against NumPy's
x @ dequant(W) — then the same kernel, unchanged but for the dtype, with int3 and fp6_e3m2 weights.

    python examples/quantized_gemm.py
"""

from __future__ import annotations

import numpy as np

from lowbit.dtypes import dtype
from lowbit.ir.passes import run_pipeline
from lowbit.kernels.quantized_gemm import quantized_gemm, random_problem, relative_error


def run(wdtype: str, M: int = 24, N: int = 48, K: int = 256, G: int = 64) -> float:
    zero_mode = "post" if dtype(wdtype).is_integer and not dtype(wdtype).is_signed else "none"
    p = random_problem(M, N, K, wdtype, G=G, zero_mode=zero_mode, seed=7)
    quantized_gemm.run(**p.args, **p.constants)  # the interpreter writes p.args["y"]
    return relative_error(p.args["y"], p.expected)


def main() -> None:
    program = run_pipeline(quantized_gemm.trace(wdtype="uint4", G=64, zero_mode="post"))
    print(program)
    print(f"{'weights':<10}{'rel. error vs x @ dequant(W)':>30}")
    for wdtype in ("uint4", "int3", "fp6_e3m2"):
        err = run(wdtype)
        print(f"{wdtype:<10}{err:>30.2e}")
        assert np.isfinite(err) and err < 2e-3, f"{wdtype}: {err}"


if __name__ == "__main__":
    main()
