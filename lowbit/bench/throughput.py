"""`lowbit bench throughput ARTIFACT`: offline engine throughput, NanoFlow's accounting, schedules side by side.

    lowbit bench throughput artifacts/tiny-llama                          # unsplit and nano, 64 x (32 in, 64 out)
    lowbit bench throughput artifacts/tiny-llama --num-prompts 256 --input-len 128 --output-len 128 \
        --max-num-seqs 32 --schedules unsplit,nano --warmup 1 --threads 2 --json throughput.json

For each schedule of `--schedules`, one after another, each in a fresh process (`--same-process`: all in this one,
where a schedule inherits the threads, caches and kernels of those before it): `lowbit.LLM(artifact, schedule=S,
max_num_seqs=B)`, `--warmup` untimed generate calls (the first B requests at full length: every kernel the run
needs, for every batch and context bucket, is loaded or built there), then all `--num-prompts` synthetic
random-token prompts (seeded, the same for every schedule) in one `generate` with greedy sampling and `ignore_eos`
(every request produces exactly its output length), timed by the wall clock. Reported (vLLM benchmark_throughput's
keys where they exist): `tokens_per_second` = (input + output tokens) / s (NanoFlow's accounting),
`output_tokens_per_second`, `requests_per_second`, `elapsed_time`; the ratio of the last schedule over the first
(nano / unsplit). A schedule may be repeated (`--schedules unsplit,nano,unsplit`) to see the run-to-run noise.

Next to it, the roofline of this workload on this machine (lowbit/bench/decode_roofline.py): weights at the
artifact's stored bit width plus KV bytes per step against memory bandwidth, flops against the matmul peak of the
compute dtype (fp32 on CPU). The machine numbers are probed here (read-only `sum` bandwidth and `F.linear` peak,
lowbit/bench/roofline.py) unless `--bandwidth-gbs` / `--peak-gflops` are given; the report says which.
"""

from __future__ import annotations

import argparse
import gc
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from lowbit.bench.compare import Row, parse_schedules, schedule_ratios, side_by_side, write_json
from lowbit.bench.datasets import synthetic_requests


class BenchThroughputError(ValueError):
    """A flag that cannot work; the message names it and the fix."""


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("artifact")
    p.add_argument("--num-prompts", type=int, default=64)
    p.add_argument("--input-len", type=int, default=32)
    p.add_argument("--output-len", type=int, default=64)
    p.add_argument("--range-ratio", type=float, default=0.0, help="lengths uniform in L*(1-r)..L*(1+r) (default 0)")
    p.add_argument("--max-num-seqs", type=int, default=None, help="engine seats (default: the artifact's)")
    p.add_argument("--max-num-batched-tokens", type=int, default=None, help="engine token budget per step")
    p.add_argument("--max-model-len", type=int, default=None)
    p.add_argument("--schedules", default="unsplit,nano", help="comma list of unsplit, nano, artifact")
    p.add_argument("--warmup", type=int, default=1, help="untimed generate calls per schedule (default 1)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--backend", default=None, help="override the artifact's backend (tvm | triton | reference)")
    p.add_argument("--threads", type=int, default=None, help="torch / TVM / OpenMP threads (default: all cores)")
    p.add_argument(
        "--bandwidth-gbs", type=float, default=None, help="memory bandwidth for the roofline (default: probe)"
    )
    p.add_argument("--peak-gflops", type=float, default=None, help="matmul peak for the roofline (default: probe)")
    p.add_argument("--no-verify", action="store_true", help="skip the artifact's sha256 check")
    p.add_argument(
        "--same-process",
        action="store_true",
        help="all schedules in this process (default: one fresh process each, none inherits threads or kernels)",
    )
    p.add_argument("--json", help="write the results here")
    p.add_argument("--child-result", help=argparse.SUPPRESS)  # internal: run one schedule, write its result here


def probe_machine(
    device: str, compute_dtype: str, bandwidth_gbs: float | None, peak_gflops: float | None
) -> dict[str, Any]:
    """Bandwidth and matmul peak for the roofline: the given numbers, else measured now (quick probes)."""
    from lowbit.bench.roofline import measure_bandwidth, measure_peak_flops
    from lowbit.codegen.tune.timing import device_name

    cuda = device.startswith("cuda")
    peak_dtype = "float32" if not cuda else ("bfloat16" if compute_dtype == "float32" else compute_dtype)
    bw_src = "given (--bandwidth-gbs)"
    if bandwidth_gbs is None:
        bandwidth_gbs = measure_bandwidth(device, (1024 if cuda else 256) * 2**20)
        bw_src = (
            "measured: " + ("device copy 1 GiB, read+write" if cuda else "read-only sum over 256 MiB") + ", best of 5"
        )
    peak_src = "given (--peak-gflops)"
    if peak_gflops is None:
        peak_gflops = measure_peak_flops(peak_dtype, device)
        peak_src = f"measured: F.linear {peak_dtype}, best of 5"
    return {
        "name": device_name(device), "device": device, "bandwidth_gbs": bandwidth_gbs, "bandwidth_source": bw_src,
        "peak_gflops": peak_gflops, "peak_dtype": peak_dtype, "peak_source": peak_src,
    }  # fmt: skip


def run_schedule(
    model: Any, schedule: str, prompts: list[list[int]], out_lens: list[int], args: argparse.Namespace
) -> dict[str, Any]:
    """Warm up, then time one generate over all prompts with engine schedule `schedule`."""
    from lowbit.llm import LLM
    from lowbit.runtime.sampler import SamplingParams

    llm = LLM(
        model, schedule=schedule, backend=args.backend, max_num_seqs=args.max_num_seqs,
        max_num_batched_tokens=args.max_num_batched_tokens, max_model_len=args.max_model_len, seed=args.seed,
    )  # fmt: skip
    eng = llm.engine
    seats = int(eng.max_num_seqs)
    for _ in range(args.warmup):
        n = min(seats, len(prompts))
        llm.generate(prompts[:n], [SamplingParams(max_tokens=k, ignore_eos=True) for k in out_lens[:n]])
    before = eng.stats()
    params = [SamplingParams(max_tokens=n, ignore_eos=True, temperature=0.0) for n in out_lens]
    t0 = time.perf_counter()
    outs = llm.generate(prompts, params)
    elapsed = time.perf_counter() - t0
    after = eng.stats()
    n_in = sum(o.num_prompt_tokens for o in outs)
    n_out = sum(o.num_output_tokens for o in outs)
    ttfts = [o.metrics.ttft for o in outs if o.metrics.ttft is not None]
    result = {
        "schedule": schedule,
        "engine_schedule": getattr(eng, "schedule_mode", schedule),
        "elapsed_time": elapsed,
        "num_requests": len(outs),
        "total_input_tokens": n_in,
        "total_output_tokens": n_out,
        "total_num_tokens": n_in + n_out,
        "requests_per_second": len(outs) / elapsed,
        "tokens_per_second": (n_in + n_out) / elapsed,
        "output_tokens_per_second": n_out / elapsed,
        "mean_ttft_ms": 1e3 * sum(ttfts) / len(ttfts) if ttfts else None,
        "max_num_seqs": seats,
        "max_model_len": int(eng.max_model_len),
        "kv_capacity_tokens": int(after.kv_capacity_tokens),
        "steps": after.steps - before.steps,
        "preemptions": after.num_preemptions - before.num_preemptions,
        "backend": getattr(eng, "backend", None),
    }
    del llm, eng
    gc.collect()
    return result


ROWS: list[Row] = [
    ("requests", "num_requests", "{:d}"),
    ("input tokens", "total_input_tokens", "{:d}"),
    ("output tokens", "total_output_tokens", "{:d}"),
    ("elapsed (s)", "elapsed_time", "{:.2f}"),
    ("(in+out) tok/s", "tokens_per_second", "{:.1f}"),
    ("output tok/s", "output_tokens_per_second", "{:.1f}"),
    ("requests/s", "requests_per_second", "{:.2f}"),
    ("mean TTFT (ms)", "mean_ttft_ms", "{:.1f}"),
    ("engine steps", "steps", "{:d}"),
    ("preemptions", "preemptions", "{:d}"),
    ("% of roofline", "roofline_fraction_pct", "{:.1f}"),
]


FORWARDED = (  # flags a child process gets from its parent
    "num_prompts", "input_len", "output_len", "range_ratio", "max_num_seqs", "max_num_batched_tokens",
    "max_model_len", "warmup", "seed", "backend", "threads",
)  # fmt: skip


def run_command(cmd: list[str]) -> tuple[int, str]:
    """Run a child process to completion: (exit code, its stdout and stderr)."""
    proc = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    return proc.returncode, proc.stdout


def run_in_child(args: argparse.Namespace, schedule: str) -> dict[str, Any]:
    """`schedule` measured by `lowbit bench throughput` in a fresh process (same flags); its result dict."""
    with tempfile.TemporaryDirectory(prefix="lowbit-bench-throughput-") as d:
        out = Path(d) / "result.json"
        cmd = [sys.executable, "-m", "lowbit.cli", "bench", "throughput", str(args.artifact), "--schedules", schedule,
               "--child-result", str(out)]  # fmt: skip
        for name in FORWARDED:
            value = getattr(args, name)
            if value is not None:
                cmd += [f"--{name.replace('_', '-')}", str(value)]
        if args.no_verify:
            cmd.append("--no-verify")
        print(f"schedule {schedule}: {' '.join(cmd[1:])}", file=sys.stderr, flush=True)
        rc, output = run_command(cmd)
        if rc != 0 or not out.is_file():
            tail = "\n".join(output.splitlines()[-20:])
            raise RuntimeError(f"schedule {schedule}: the child process exited with {rc}:\n{tail}")
        return dict(json.loads(out.read_text())["runs"][0])


def run(args: argparse.Namespace) -> dict[str, Any]:
    from lowbit.bench.decode_roofline import decode_bound, model_cost, workload_bound
    from lowbit.codegen.tune.timing import set_threads
    from lowbit.compiler.load import load_compiled

    schedules = parse_schedules(args.schedules)
    if args.warmup < 0:
        raise BenchThroughputError(f"--warmup {args.warmup} must be >= 0")
    if args.threads:
        set_threads(args.threads)  # before the first kernel runs
    import torch

    threads = torch.get_num_threads()
    if args.child_result or args.same_process:
        model = load_compiled(args.artifact, verify="none" if args.no_verify else "full")
        reqs = synthetic_requests(
            args.num_prompts, args.input_len, args.output_len, vocab_size=model.arch.vocab_size,
            range_ratio=args.range_ratio, seed=args.seed, tokenizer=model.tokenizer,
        )  # fmt: skip
        prompts = [[int(t) for t in r.payload_prompt] for r in reqs]
        out_lens = [r.output_len for r in reqs]
        runs = [run_schedule(model, s, prompts, out_lens, args) for s in schedules]
        if args.child_result:
            return {"runs": runs}
    else:
        runs = [run_in_child(args, s) for s in schedules]

    cost = model_cost(args.artifact)
    machine = probe_machine(cost.device, cost.compute_dtype, args.bandwidth_gbs, args.peak_gflops)
    machine["threads"] = threads
    seats = runs[0]["max_num_seqs"]
    batch = min(seats, args.num_prompts)
    bw, peak = machine["bandwidth_gbs"], machine["peak_gflops"]
    roof = {
        "model_cost": cost.to_json(),
        "decode": decode_bound(cost, batch, args.input_len + args.output_len / 2, bw, peak),
        "decode_single": decode_bound(cost, 1, args.input_len + args.output_len / 2, bw, peak),
        "workload": workload_bound(
            cost,
            num_prompts=args.num_prompts,
            input_len=args.input_len,
            output_len=args.output_len,
            batch=batch,
            bandwidth_gbs=bw,
            peak_gflops=peak,
        ),
    }
    for r in runs:
        r["roofline_fraction_pct"] = 100.0 * r["tokens_per_second"] / roof["workload"]["tokens_per_second"]
        r["machine"] = machine
        r["artifact"] = str(args.artifact)
    config = {
        "num_prompts": args.num_prompts, "input_len": args.input_len, "output_len": args.output_len,
        "range_ratio": args.range_ratio, "max_num_seqs": seats, "max_num_batched_tokens": args.max_num_batched_tokens,
        "warmup": args.warmup, "seed": args.seed, "threads": threads, "schedules": schedules,
    }  # fmt: skip
    report: dict[str, Any] = {"benchmark": "throughput", "artifact": str(args.artifact), "machine": machine,
                              "config": config, "runs": runs, "roofline": roof}  # fmt: skip
    if len(runs) >= 2:
        report["ratios"] = schedule_ratios(runs)
    return report


def format_report(report: dict[str, Any]) -> str:
    m, c, roof = report["machine"], report["config"], report["roofline"]
    cost, dec, dec1, wl = roof["model_cost"], roof["decode"], roof["decode_single"], roof["workload"]
    lines = [
        f"# lowbit bench throughput {report['artifact']} | {m['name']} [{m['device']}] | threads {c['threads']}",
        f"# {c['num_prompts']} requests x ({c['input_len']} in, {c['output_len']} out), range ratio "
        f"{c['range_ratio']}, max_num_seqs {c['max_num_seqs']}, warm-up {c['warmup']}, seed {c['seed']}; greedy, "
        "ignore_eos; tok/s = (input + output) tokens / wall time (NanoFlow)",
        side_by_side(ROWS, report["runs"], [r["schedule"] for r in report["runs"]]),
        "",
        f"# roofline on this machine: bandwidth {m['bandwidth_gbs']:.1f} GB/s ({m['bandwidth_source']}), peak "
        f"{m['peak_gflops']:.0f} GFLOP/s {m['peak_dtype']} ({m['peak_source']})",
        f"#   weights {cost['weight_bytes'] / 1e6:.2f} MB per step at {cost['bits_per_weight']:.2f} bits/weight "
        f"(linears), KV {cost['kv_bytes_per_token']} B/token ({cost['kv_dtype']})",
        f"#   decode, batch {dec['batch']} at context {dec['context']:.0f}: {dec['step_bytes'] / 1e6:.2f} MB/step, "
        f"{dec['step_ms']:.3f} ms/step ({dec['bound_by']}-bound) -> <= {dec['output_tok_s']:.0f} output tok/s",
        f"#   decode, batch 1: <= {dec1['output_tok_s']:.0f} output tok/s ({dec1['bound_by']}-bound)",
        f"#   this workload (ideal engine, batch {dec['batch']}): >= {wl['seconds']:.3f} s -> <= "
        f"{wl['tokens_per_second']:.0f} (in+out) tok/s, {wl['output_tokens_per_second']:.0f} output tok/s",
    ]
    return "\n".join(lines)


def main(args: argparse.Namespace) -> int:
    from lowbit.artifact import ArtifactError

    try:
        report = run(args)
    except (BenchThroughputError, ValueError, FileNotFoundError, ArtifactError) as e:
        print(f"lowbit bench throughput: {e}", file=sys.stderr)
        return 2
    except RuntimeError as e:  # a child process failed
        print(f"lowbit bench throughput: {e}", file=sys.stderr)
        return 1
    if args.child_result:
        write_json(report, args.child_result)
        return 0
    print(format_report(report))
    if args.json:
        print(f"wrote {write_json(report, args.json)}")
    return 0


__all__ = ["BenchThroughputError", "add_arguments", "format_report", "main", "run", "run_schedule"]
