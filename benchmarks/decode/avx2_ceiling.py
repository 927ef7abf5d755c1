"""The generated CPU decode GEMV against a hand-written AVX2 version of the same algorithm, side by side.

    python benchmarks/decode/avx2_ceiling.py [--shapes 4096x4096,11008x4096] [--rounds 3] [--threads 2]

`avx2_gemv.c` (this directory; gcc -O3 -march=native -fopenmp) is the yardstick: intrinsics for the same
layouts and instructions as `quantized_gemv_a8` (column-tiled offset-binary int4 words, vpmaddubsw on the
nibbles, int8 activations). Per shape: M = 1 with the caches evicted before every call (what decode streams
from DRAM) and M = 16 on warm caches (compute-bound), C and lowbit (TVM) alternating for `--rounds` rounds
(the machine is shared; medians of each side's per-round medians), the ratio lowbit / C, and for M = 1 the
GB/s streamed against the read bandwidth of `lowbit.bench.roofline.measure_bandwidth` (a torch fp32 sum).
Needs gcc with OpenMP; the lowbit side runs the exact plan the executor runs (`lowbit.ops.linear.a8_plan`).
"""

from __future__ import annotations

import argparse
import functools
import os
import statistics
import subprocess
import tempfile

import numpy as np
import torch

HERE = os.path.dirname(os.path.abspath(__file__))


def build(out_dir: str) -> str:
    exe = os.path.join(out_dir, "avx2_gemv")
    cmd = ["gcc", "-O3", "-march=native", "-fopenmp", "-o", exe, os.path.join(HERE, "avx2_gemv.c")]
    subprocess.run(cmd, check=True)
    return exe


def c_time_ms(exe: str, m: int, n: int, k: int, flush: bool, threads: int) -> float:
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    out = subprocess.run([exe, str(m), str(n), str(k), *(["flush"] if flush else [])], env=env, check=False,
                         capture_output=True, text=True)  # fmt: skip
    return float(out.stdout.strip()) / 1e3


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--shapes", default="4096x4096,11008x4096")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    args = ap.parse_args()
    os.environ.setdefault("TVM_NUM_THREADS", str(args.threads))
    torch.set_num_threads(args.threads)
    from lowbit.bench.roofline import measure_bandwidth
    from lowbit.codegen.tune.timing import benchmark
    from lowbit.ops.linear import a8_plan
    from lowbit.ops.weight import quantize

    bw = measure_bandwidth("cpu")
    print(f"# {args.threads} threads, load average {os.getloadavg()[0]:.1f}, read bandwidth {bw:.1f} GB/s (torch sum)")
    print("rates: GB/s of weight bytes when flushed (DRAM-bound), GMAC/s when warm (compute-bound)")
    print(f"{'M':>3} {'N':>6} {'K':>5}  {'caches':7} {'C ms':>8} {'lowbit ms':>10} {'lowbit/C':>9}  {'C rate':>7} "
          f"{'lowbit rate':>11} {'% of read bw':>12}")  # fmt: skip
    with tempfile.TemporaryDirectory() as tmp:
        exe = build(tmp)
        for shape in args.shapes.split(","):
            n, k = (int(v) for v in shape.split("x"))
            qw = quantize(np.random.default_rng(0).standard_normal((n, k)).astype(np.float32), "int4", 128)
            wbytes = n * k // 2 + 2 * n * k // 128
            for m, flush in ((1, True), (16, False)):
                plan = a8_plan(qw, m, "tvm", "float32")
                x, y = torch.randn(m, k), torch.empty(m, n)
                plan.run(x, y)
                xq, xs, xsum = plan._buffers()
                gemv = functools.partial(plan._gemv, xq, xs, xsum, y)
                cs, ls = [], []
                for _ in range(args.rounds):
                    cs.append(c_time_ms(exe, m, n, k, flush, args.threads))
                    ls.append(benchmark(gemv, repeats=15, warmup=3, flush=flush).median)
                c, lo = statistics.median(cs), statistics.median(ls)
                work = wbytes if flush else m * n * k  # bytes streamed, or multiply-adds
                rates = (work / c / 1e6, work / lo / 1e6)
                share = f"{100 * rates[1] / bw:11.0f}%" if flush else f"{'':>12}"
                print(f"{m:>3} {n:>6} {k:>5}  {'flushed' if flush else 'warm':7} {c:8.3f} {lo:10.3f} {lo / c:9.2f}  "
                      f"{rates[0]:7.1f} {rates[1]:11.1f} {share}")  # fmt: skip


if __name__ == "__main__":
    main()
