"""The `lowbit` command line: `lowbit compile MODEL_YAML`, `lowbit generate ARTIFACT`, `lowbit inspect ARTIFACT`,
`lowbit verify ARTIFACT`, `lowbit serve ARTIFACT`, `lowbit bench gemm | attention | serve | throughput`,
`lowbit demo` (the kernel DSL tour)."""

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


def compile_cmd(args: argparse.Namespace) -> int:
    """Compile a model.yaml into a serving artifact (validate, load, graph, calibrate, quantize, kernels,
    evaluate, write); prints the report's summary."""
    from lowbit.compiler import compile_model
    from lowbit.config import load_config

    cfg = load_config(args.model_yaml, args.set or ())
    out = args.output or f"artifacts/{cfg.model.name}"
    result = compile_model(cfg, out, overwrite=args.overwrite, quiet=args.quiet, eval_tokens=args.eval_tokens)
    r = result.report
    acc = r.get("accuracy") or {}
    print(f"compiled {cfg.model.name} -> {result.path}")
    print(
        f"  params {r['params']:,}  bits/weight {r['bits_per_weight']:.3f}  weights {r['weight_bytes'] / 2**20:.2f} MiB"
    )
    if acc:
        print(
            f"  vs {acc.get('reference', 'unquantized weights')} in float64: KL {acc['kl_divergence']:.3g} nats/token, "
            f"top-1 {acc['top1_agreement']:.1%}"
            f" over {acc['tokens']} held-out tokens"
        )
    print("  " + "  ".join(f"{p['name']} {p['seconds']:.1f}s" for p in r["phases"]))
    return 0


def generate_cmd(args: argparse.Namespace) -> int:
    """Run a compiled artifact end to end on prompts: greedy by default, sampled with --temperature."""
    import time

    from lowbit.compiler import load_compiled
    from lowbit.runtime.sampler import SamplingParams

    model = load_compiled(args.artifact, verify="none" if args.no_verify else "full")
    if model.tokenizer is None and (args.prompt or not args.prompt_ids):
        print(f"{args.artifact} has no tokenizer.json; give token ids with --prompt-ids", file=sys.stderr)
        return 2
    prompts = [[int(t) for t in p.split(",")] for p in args.prompt_ids or []]
    prompts += [model.tokenizer.encode(p).ids for p in args.prompt or []]
    if not prompts:
        prompts = [model.tokenizer.encode("Hello, lowbit!").ids]
    params = SamplingParams(max_tokens=args.max_tokens, temperature=args.temperature, top_k=args.top_k,
                            top_p=args.top_p, seed=args.seed, ignore_eos=args.ignore_eos)  # fmt: skip
    runner = model.runner(backend=args.backend, max_num_seqs=len(prompts))  # tensor parallel: spawns the ranks
    try:
        from lowbit.codegen.backend import get_compiler

        get_compiler(runner.executor.backend)  # import the toolchain (TVM: ~2.7 s) before the clock starts
        t0 = time.perf_counter()
        outs = runner.generate(prompts, params, model.eos_token_ids)
        dt = time.perf_counter() - t0
    finally:
        getattr(runner, "close", lambda: None)()  # a TPRunner stops its other ranks
    n = sum(len(o.token_ids) for o in outs)
    for o in outs:
        text = model.tokenizer.decode(o.token_ids) if model.tokenizer else ""
        prompt = model.tokenizer.decode(o.prompt_ids) if model.tokenizer else ""
        print(f"--- prompt: {prompt!r}\n{text!r}\n    tokens {o.token_ids} ({o.finish_reason})")
    tp = f", tensor_parallel {model.tensor_parallel}" if model.tensor_parallel > 1 else ""
    print(
        f"{n} tokens in {dt:.2f} s ({n / dt:.1f} tok/s, {len(outs)} sequence(s), backend {runner.executor.backend}{tp})"
    )
    return 0


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
    c = sub.add_parser("compile", help="compile a model.yaml into a serving artifact")
    c.add_argument("model_yaml")
    c.add_argument("-o", "--output", help="artifact directory (default artifacts/<model.name>)")
    c.add_argument("--set", action="append", metavar="KEY=VALUE", help="override a model.yaml field, e.g. "
                   "--set quantization.weights.group_size=64 (beats the file; repeatable)")  # fmt: skip
    c.add_argument("--overwrite", action="store_true", help="replace an existing artifact")
    c.add_argument("--quiet", action="store_true", help="no progress bars")
    c.add_argument("--eval-tokens", type=int, default=None, help="held-out tokens for KL/top-1 (0 skips)")
    c.set_defaults(func=compile_cmd)
    gen = sub.add_parser("generate", help="run a compiled artifact on prompts")
    gen.add_argument("artifact")
    gen.add_argument("--prompt", action="append", help="a text prompt (repeatable: one sequence each)")
    gen.add_argument("--prompt-ids", action="append", help="a prompt as comma-separated token ids")
    gen.add_argument("--max-tokens", type=int, default=32)
    gen.add_argument("--temperature", type=float, default=0.0, help="0 = greedy")
    gen.add_argument("--top-k", type=int, default=0)
    gen.add_argument("--top-p", type=float, default=1.0)
    gen.add_argument("--seed", type=int, default=None)
    gen.add_argument("--ignore-eos", action="store_true")
    gen.add_argument("--backend", default=None, help="override target.backend (tvm | triton | reference)")
    gen.add_argument("--no-verify", action="store_true", help="skip the sha256 check of the artifact")
    gen.set_defaults(func=generate_cmd)
    from lowbit.artifact import command as artifact_command

    ins = sub.add_parser("inspect", help="print an artifact's manifest and compile report")
    artifact_command.add_inspect_arguments(ins)
    ins.set_defaults(func=artifact_command.inspect_main)
    ver = sub.add_parser("verify", help="check an artifact's hashes and compatibility")
    artifact_command.add_verify_arguments(ver)
    ver.set_defaults(func=artifact_command.verify_main)
    from lowbit.bench import serving as bench_serving
    from lowbit.bench import throughput as bench_throughput
    from lowbit.serve import cli as serve_cli

    srv = sub.add_parser("serve", help="serve an artifact over an OpenAI-compatible HTTP API")
    serve_cli.add_arguments(srv)
    srv.set_defaults(func=serve_cli.main)
    bench = sub.add_parser("bench", help="benchmarks: gemm, attention, serve, throughput")
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
    bs = bench_sub.add_parser("serve", help="online serving load test (TTFT/TPOT/ITL/E2E), unsplit vs nano-batched")
    bench_serving.add_arguments(bs)
    bs.set_defaults(func=bench_serving.main)
    bt = bench_sub.add_parser("throughput", help="offline engine throughput ((input+output) tokens/s), unsplit vs nano")
    bench_throughput.add_arguments(bt)
    bt.set_defaults(func=bench_throughput.main)
    from lowbit.planner import cli as plan_cli

    pl = sub.add_parser("plan", help="nano-batch pipeline planner: optimal bound, schedules simulated (and measured)")
    plan_cli.add_arguments(pl)
    pl.set_defaults(func=plan_cli.main)
    plan_cli.add_tune_parser(sub).set_defaults(func=plan_cli.tune_main)
    args = parser.parse_args(argv)
    return int(args.func(args))


if __name__ == "__main__":
    sys.exit(main())
