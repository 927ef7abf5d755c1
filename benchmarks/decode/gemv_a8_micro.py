"""Microbenchmark of the CPU decode GEMV with int8 activations (`quantized_gemv_a8`) on the 1.1B model's shapes.

    python benchmarks/decode/gemv_a8_micro.py [--m 1,16] [--opts '{"tm": 2}'] [--shapes 2048x2048,...]
    TVM_NUM_THREADS=1 python benchmarks/decode/gemv_a8_micro.py --cpu-time   # per-thread compute rate

Per (M, N, K): median time of the GEMV alone (activation quantization excluded, it is printed separately),
GB/s of weight bytes streamed and GMAC/s. Random int4 g128 codes (speed does not depend on their values).
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import statistics
import time

import numpy as np
import torch

SHAPES = ((2560, 2048), (2048, 2048), (11264, 2048), (2048, 5632), (32000, 2048))  # qkv, o, gate_up, down, lm_head


CLOCK = time.perf_counter


def bench(fn, reps: int) -> float:
    for _ in range(3):
        fn()
    ts = []
    for _ in range(reps):
        t = CLOCK()
        fn()
        ts.append(CLOCK() - t)
    return statistics.median(ts)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--m", default="1,16")
    ap.add_argument("--reps", type=int, default=20)
    ap.add_argument("--opts", default="{}")
    ap.add_argument("--shapes", default="")
    ap.add_argument("--cpu-time", action="store_true", help="thread CPU time (run with TVM_NUM_THREADS=1)")
    ap.add_argument("--flush", action="store_true", help="evict the caches before every sample (DRAM-bound numbers)")
    args = ap.parse_args()
    if args.cpu_time:
        global CLOCK
        CLOCK = time.thread_time
    torch.set_num_threads(2)
    from lowbit.codegen.backend import compile_program
    from lowbit.kernels.gemv_a8 import quantized_gemv_a8
    from lowbit.ops.linear import A8_BN, a8_plan, a8_weight
    from lowbit.ops.weight import is_offset_binary, quantize

    shapes = SHAPES if not args.shapes else tuple(tuple(int(v) for v in s.split("x")) for s in args.shapes.split(","))
    extra = json.loads(args.opts)
    print(f"# load average {os.getloadavg()[0]:.1f}, TVM_NUM_THREADS={os.environ.get('TVM_NUM_THREADS')}, opts {extra}")
    tot: dict[int, list[float]] = {}
    for n, k in shapes:
        w = np.random.default_rng(0).standard_normal((n, k)).astype(np.float32)
        qw = quantize(w, "int4", 128)
        for m in (int(v) for v in args.m.split(",")):
            plan = a8_plan(qw, m, "tvm", "float32")
            if extra:  # the plan's GEMV traced as A8Plan traces it (offset-binary int4: biased), other options
                aw = a8_weight(qw)
                biased = is_offset_binary(aw)
                prog = quantized_gemv_a8.trace(
                    wdtype="int4" if biased else aw.dtype.name,
                    zero_mode="none" if biased else aw.zero_mode,
                    G=128,
                    ydtype="float32",
                    sdtype=str(aw.scales.dtype),
                    BM=plan.bm,
                    BN=A8_BN,
                    biased=biased,
                )
                from lowbit.kernels.launch import bind

                opts = {"tm": 2, **extra}
                kern = compile_program(prog, "tvm", opts)
                plan._gemv = bind(kern, {**plan.fixed, **plan.sizes}, ("xq", "xs", "xsum", "y"))
            x = torch.randn(m, k)
            y = torch.empty(m, n)
            plan.run(x, y)
            xq, xs, xsum = plan._buffers()
            gemv = functools.partial(plan._gemv, xq, xs, xsum, y)
            if args.flush:
                from lowbit.codegen.tune.timing import benchmark

                tg = benchmark(gemv, repeats=args.reps, warmup=3, flush=True).median / 1e3
            else:
                tg = bench(gemv, args.reps)
            tq = bench(functools.partial(plan._quant, x, xq, xs, xsum), args.reps)
            wbytes = n * k // 2 + 2 * n * k // 128
            tot.setdefault(m, []).append(tg + tq)
            print(
                f"M={m:2d} N={n:5d} K={k:5d}  gemv {tg * 1e6:8.1f} us  {wbytes / tg / 1e9:6.1f} GB/s  "
                f"{m * n * k / tg / 1e9:6.1f} GMAC/s   quant {tq * 1e6:6.1f} us"
            )
    for m, ts in tot.items():
        if len(shapes) == len(SHAPES):
            step = 22 * sum(ts[:4]) + ts[4]
            print(f"M={m}: linears of one decode step {step * 1e3:.1f} ms -> {m / step:.1f} tok/s bound")


if __name__ == "__main__":
    main()
