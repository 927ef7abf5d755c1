"""CPU decode speed of a TinyLlama-1.1B-shaped W4 model (issue 6): tok/s for one sequence and for 16 together.

    python benchmarks/decode/decode_1b.py                       # all variants, 1 and 16 sequences
    python benchmarks/decode/decode_1b.py --seqs 1 --variants a8 --tokens 64

Model (`decode_model.py`): hidden 2048, intermediate 5632, 22 layers, 32 heads / 4 KV heads of 64, vocab 32000,
every linear int4 g128 (lm_head too; llama.cpp's Q4_0 file keeps its output matrix at Q6_K), KV cache int8,
fp32 activations, random codes (speed does not depend on their values). Each run: a 32-token prompt per
sequence (prefilled one sequence at a time), then `--tokens` greedy decode steps of all sequences together;
decode tok/s = sequences x tokens / decode wall time (prefill excluded, as llama-bench's tg numbers).

Variants, run side by side in one process (the machine is shared: compare within a run, medians of
`--repeats`):
    ops     the ops layer per op (`Executor.fast = False`), W4A16 GEMV: what the executor did before the hot path
    a16     the hot path (bound launchers, decode plans), W4A16 GEMV (float activations)
    a8      the hot path with `PassContext(decode_activations="int8")`: quantized_gemv_a8 in decode buckets and
            for the prefill rows (`Executor.a8_prefill`)

Then, for the last variant: the per-kernel breakdown of a decode step (thread CPU time inside each kernel and
outside them, TVM pinned to one thread so every cycle is on the calling thread) and the DRAM roofline: bytes a
decode step must read (weights at their stored widths + KV of the context) / measured read bandwidth.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from collections import defaultdict
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import numpy as np
import torch
from decode_model import ARCH_1B, build_graph_1b, random_params

from lowbit.runtime.batch import SeqChunk
from lowbit.runtime.runner import ModelRunner

VARIANTS = {"ops": ("float", False), "a16": ("float", True), "a8": ("int8", True)}


def make_runner(variant: str, max_seqs: int, max_len: int, params: dict[str, Any] | None = None) -> Any:
    act, fast = VARIANTS[variant]
    g = build_graph_1b(decode_activations=act)
    params = params if params is not None else random_params(g)
    r = ModelRunner(
        ARCH_1B, g, params, kv_dtype="int8", dtype="float32", backend="tvm", max_model_len=max_len,
        max_num_seqs=max_seqs,
    )  # fmt: skip
    r.executor.fast = r.executor.fast and fast
    return r


def run_decode(r: Any, seqs: int, prompt: int, tokens: int, seed: int) -> tuple[float, float, list[float]]:
    """(prefill s, decode s, per-step s) of one generation; pages are freed afterwards."""
    rng = np.random.default_rng(seed)
    tables: list[list[int]] = []
    t0 = time.perf_counter()
    last = []
    for s in range(seqs):
        t: list[int] = []
        r.cache.grow(t, prompt + tokens)
        tables.append(t)
        ids = tuple(int(i) for i in rng.integers(0, ARCH_1B.vocab_size, prompt))
        last.append(int(r.step([SeqChunk(s, ids, 0, tuple(t))])[0].argmax()))
    prefill = time.perf_counter() - t0
    steps = []
    t1 = time.perf_counter()
    for j in range(tokens):
        ts = time.perf_counter()
        logits = r.step([SeqChunk(s, (last[s],), prompt + j, tuple(tables[s])) for s in range(seqs)])
        last = logits.argmax(-1).tolist()
        steps.append(time.perf_counter() - ts)
    decode = time.perf_counter() - t1
    for t in tables:
        r.cache.free(t)
    return prefill, decode, steps


def breakdown(r: Any, seqs: int, prompt: int, steps: int) -> tuple[dict[str, list[float]], float]:
    """Thread CPU time per kernel name over `steps` decode steps (TVM on the calling thread), and the step's
    total thread CPU time."""
    times: dict[str, list[float]] = defaultdict(list)

    class Timed:
        def __init__(self, fn: Any, name: str):
            self.fn, self.name = fn, name

        def __call__(self, *args: Any) -> Any:
            t = time.thread_time()
            out = self.fn(*args)
            times[self.name].append(time.thread_time() - t)
            return out

    ex = r.executor
    for plan in ex.plans.values():  # wrap the recorded calls of every plan
        plan.calls = [(Timed(fn, name), a) for (fn, a), name in zip(plan.calls, plan.names)]
    rng = np.random.default_rng(99)
    table: list[list[int]] = [[] for _ in range(seqs)]
    last = []
    for s in range(seqs):
        r.cache.grow(table[s], prompt + steps)
        ids = tuple(int(i) for i in rng.integers(0, ARCH_1B.vocab_size, prompt))
        last.append(int(r.step([SeqChunk(s, ids, 0, tuple(table[s]))])[0].argmax()))
    times.clear()  # the prefill ran op by op (not through plans), so nothing was timed; to be sure
    t0 = time.thread_time()
    for j in range(steps):
        logits = r.step([SeqChunk(s, (last[s],), prompt + j, tuple(table[s])) for s in range(seqs)])
        last = logits.argmax(-1).tolist()
    total = (time.thread_time() - t0) / steps
    for t in table:
        r.cache.free(t)
    return times, total


def weight_bytes(variant: str) -> int:
    from lowbit.graph import PassContext
    from lowbit.graph.stats import op_costs

    act, _ = VARIANTS[variant]
    g = build_graph_1b(decode_activations=act)
    ctx = PassContext(arch=ARCH_1B, backend="tvm", dtype="float32", kv_dtype="int8")
    return sum(c.weight_bytes for c in op_costs(g, ctx))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seqs", default="1,16", help="comma-separated numbers of concurrent sequences")
    ap.add_argument("--variants", default="ops,a16,a8", help=f"comma-separated, of {list(VARIANTS)}")
    ap.add_argument("--tokens", type=int, default=128)
    ap.add_argument("--prompt", type=int, default=32)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--breakdown-steps", type=int, default=16, help="0: skip the per-kernel breakdown")
    args = ap.parse_args(argv)
    seqs_list = [int(s) for s in args.seqs.split(",")]
    variants = args.variants.split(",")
    torch.set_num_threads(2)
    from lowbit.bench.roofline import measure_bandwidth
    from lowbit.graph.stats import kv_bytes_per_token

    print(f"# {os.cpu_count()} cores, TVM_NUM_THREADS={os.environ.get('TVM_NUM_THREADS', '(all)')}, torch threads "
          f"{torch.get_num_threads()}; load average {os.getloadavg()[0]:.1f}")  # fmt: skip
    wb = weight_bytes(variants[-1])
    kv_tok = kv_bytes_per_token(ARCH_1B, "int8")
    print(f"# 1.1B W4 (int4 g128, lm_head too), KV int8: {wb / 1e6:.0f} MB of weights per step, {kv_tok} B KV/token")

    max_len = args.prompt + args.tokens + 16
    runners: dict[tuple[str, int], Any] = {}
    shared: dict[str, Any] = {}
    for v in variants:  # one set of random weights per activation mode (the a8 executor re-tiles its own copy)
        for n in seqs_list:
            act = VARIANTS[v][0]
            r = make_runner(v, max(seqs_list), max_len, shared.get(act))
            shared.setdefault(act, r.executor.params if act == "float" else None)
            runners[(v, n)] = r
            run_decode(r, n, args.prompt, 4, seed=0)  # compile, record the decode plans
    results: dict[tuple[str, int], list[tuple[float, float]]] = defaultdict(list)
    for rep in range(args.repeats):  # interleaved: every variant sees the same machine weather
        for key, r in runners.items():
            prefill, decode, _ = run_decode(r, key[1], args.prompt, args.tokens, seed=rep + 1)
            results[key].append((prefill, decode))
    bw = measure_bandwidth()
    print(f"# DRAM read bandwidth (torch sum over 512 MiB, best of 5): {bw:.1f} GB/s")
    print(f"{'variant':8s} {'seqs':>4s} {'prefill s':>9s} {'decode tok/s':>12s} {'(min..max)':>14s} {'ms/step':>8s} "
          f"{'roofline tok/s':>14s} {'of roofline':>11s}")  # fmt: skip
    for (v, n), rs in results.items():
        toks = [n * args.tokens / d for _, d in rs]
        med = statistics.median(toks)
        ctx = args.prompt + args.tokens / 2
        step_bytes = wb + n * ctx * kv_tok
        roof = n / (step_bytes / (bw * 1e9))
        spread = f"({min(toks):.1f}..{max(toks):.1f})"
        prefill = statistics.median(p for p, _ in rs)
        cols = f"{v:8s} {n:4d} {prefill:9.2f} {med:12.1f} {spread:>14s} {1e3 * n / med:8.1f}"
        print(f"{cols} {roof:14.1f} {med / roof:10.0%}")
    if args.breakdown_steps:
        v = variants[-1]
        what = f"variant {v}, {seqs_list[0]} sequence(s)"
        print(f"\n# per-kernel breakdown of a decode step, {what} (thread CPU time, TVM on 1 thread)")
        import subprocess

        env = {**os.environ, "TVM_NUM_THREADS": "1"}
        cmd = [sys.executable, __file__, "--_breakdown", v, "--prompt", str(args.prompt), "--seqs", str(seqs_list[0])]
        cmd += ["--breakdown-steps", str(args.breakdown_steps)]
        subprocess.run(cmd, env=env, check=True)
    return 0


def breakdown_main(variant: str, prompt: int, steps: int, seqs: int) -> None:
    r = make_runner(variant, seqs, prompt + steps + 16)
    run_decode(r, seqs, prompt, 4, seed=0)
    times, total = breakdown(r, seqs, prompt, steps)
    inside = sum(sum(v) for v in times.values()) / steps
    for name, ts in sorted(times.items(), key=lambda kv: -sum(kv[1])):
        print(f"  {name:28s} {len(ts) // steps:4d}/step {sum(ts) / steps * 1e3:8.2f} ms/step "
              f"{statistics.median(ts) * 1e6:9.1f} us/call")  # fmt: skip
    print(f"  {'(in kernels / torch ops)':28s} {'':9s} {inside * 1e3:8.2f} ms/step")
    print(f"  {'(Python, outside them)':28s} {'':9s} {(total - inside) * 1e3:8.2f} ms/step")
    print(
        f"  {'(thread CPU per step)':28s} {'':9s} {total * 1e3:8.2f} ms/step -> {seqs / total:.1f} tok/s on one thread"
    )


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--_breakdown":
        ap = argparse.ArgumentParser()
        ap.add_argument("--_breakdown")
        ap.add_argument("--prompt", type=int)
        ap.add_argument("--breakdown-steps", type=int)
        ap.add_argument("--seqs", type=int)
        a = ap.parse_args()
        breakdown_main(a._breakdown, a.prompt, a.breakdown_steps, a.seqs)
    else:
        sys.exit(main())
