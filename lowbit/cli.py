"""The `lowbit` command line: `lowbit demo`, `lowbit bench gemm | attention`; later issues add compile | generate |
serve | tune."""

from __future__ import annotations

import argparse
import sys
from typing import Any

import numpy as np

from lowbit.bench.command import add_arguments as add_gemm_arguments
from lowbit.bench.command import add_attention_arguments


def demo(args: argparse.Namespace) -> int:
    """Trace the quantized GEMM kernel, print its IR, and check it on the reference interpreter for
    several weight dtypes against NumPy's x @ dequant(W)."""
    from lowbit.ir.passes import run_pipeline
    from lowbit.kernels.quantized_gemm import quantized_gemm, random_problem, relative_error

    M, N, K = args.m, args.n, args.k
    first = random_problem(M, N, K, args.dtypes[0], G=args.group_size, zero_mode=args.zero_mode)
    program = run_pipeline(quantized_gemm.trace(**first.constants))
    print(f"# IR of quantized_gemm specialised to {first.constants} (after the pass pipeline)\n")
    print(program)
    print(f"# reference interpreter vs NumPy x @ dequant(W), M={M} N={N} K={K}, fp16 activations and output")
    print(f"{'weight dtype':<14}{'group':>6}{'zero':>6}{'rel. error':>12}  verdict")
    worst = 0.0
    for name in args.dtypes:
        p = random_problem(M, N, K, name, G=args.group_size, zero_mode=args.zero_mode, seed=1)
        run_args: dict[str, Any] = {**p.args, **p.constants}
        quantized_gemm.run(**run_args)
        err = relative_error(p.args["y"], p.expected)
        ok = err <= 2e-3 and np.isfinite(err)
        worst = max(worst, err if np.isfinite(err) else np.inf)
        print(f"{name:<14}{args.group_size:>6}{args.zero_mode:>6}{err:>12.2e}  {'ok' if ok else 'MISMATCH'}")
    if not worst <= 2e-3:
        print("the reference interpreter disagrees with NumPy beyond fp16 output rounding (2e-3)")
        return 1
    return 0


def bench_gemm(args: argparse.Namespace) -> int:
    """Time lowbit quantized linears against torch side by side; print a table, write JSON (and a plot)."""
    from lowbit.bench.command import main as run_bench_gemm

    return run_bench_gemm(args)


def bench_attention(args: argparse.Namespace) -> int:
    """Time lowbit paged decode and prefill attention against torch SDPA side by side; table, JSON (and plot)."""
    from lowbit.bench.command import attention_main

    return attention_main(args)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="lowbit", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    d = sub.add_parser("demo", help="trace a quantized GEMM in the DSL, print its IR, check it on the reference")
    d.add_argument("--m", type=int, default=24)
    d.add_argument("--n", type=int, default=64)
    d.add_argument("--k", type=int, default=256)
    d.add_argument("--group-size", type=int, default=64)
    d.add_argument("--zero-mode", choices=["none", "post", "pre"], default="post")
    d.add_argument(
        "--dtypes", nargs="+", default=["int4", "uint4", "int3", "int2", "uint8", "fp4_e2m1", "fp6_e3m2", "fp8_e4m3"]
    )
    d.set_defaults(func=demo)
    bench = sub.add_parser("bench", help="benchmarks: `lowbit bench gemm`, `lowbit bench attention`")
    bench_sub = bench.add_subparsers(dest="bench", required=True)
    g = bench_sub.add_parser(
        "gemm", help="quantized linear layers vs torch fp32/bf16/dequantize-then-matmul, with the roofline"
    )
    add_gemm_arguments(g)
    g.set_defaults(func=bench_gemm)
    a = bench_sub.add_parser(
        "attention", help="paged decode (fp16/bf16/int8/int4 KV) and causal prefill attention vs torch SDPA, roofline"
    )
    add_attention_arguments(a)
    a.set_defaults(func=bench_attention)
    args = parser.parse_args(argv)
    return int(args.func(args))


if __name__ == "__main__":
    sys.exit(main())
