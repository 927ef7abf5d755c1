"""The issue's CPU decode goals, side by side in one run on one synthetic TinyLlama-1.1B-shaped model.

    python benchmarks/serve/decode_goals.py                      # ~5-10 min on the 2-core VM (compile once ~minutes)
    python benchmarks/serve/decode_goals.py --threads 2 --prompt-len 32 --new-tokens 128 --batch 16 \
        --json bench_decode_goals.json [--skip-hf] [--skip-llamacpp] [--recompile]

Model: benchmarks/serve/tinyllama-w4.yaml (hidden 2048, intermediate 5632, 22 layers, 32 heads, 4 KV heads, vocab
32000; random weights from seed 0; RTN int4 g128 linears, int8 lm_head, KV8), compiled once into
artifacts/tinyllama-1.1b-w4 (reused while it exists). Every case: the same seeded random 32-token prompts (no
special ids), 128 new tokens, greedy, EOS ignored (HF: min_new_tokens = max_new_tokens), `--threads` threads.

    (a) lowbit W4, one sequence: decode tok/s = (tokens − 1) / (last token − first token), the llama.cpp `tg`
        accounting (prefill excluded); also end to end (prefill included). Median of `--repeats`.
    (b) lowbit W4, `--batch` concurrent sequences (one `LLM.generate`): output tok/s = batch x 128 / wall time.
    (c) HF transformers `generate` on the same float weights: bf16 at batch 1 and `--batch`, fp32 at batch 1;
        tok/s = batch x 128 / wall time (prefill included, one run each after a short warm-up).
    (d) llama.cpp Q4_0, one sequence, tg (benchmarks/serve/llamacpp_q4_0.py, `pip install -e .[llamacpp]`): the
        same shapes as a synthetic GGUF quantized by llama.cpp (output.weight Q6_K, KV f16), cached in
        `--llamacpp-cache`; the same first prompt, 128 greedy tokens, `--threads` threads, the accounting of (a).
        Each run is a fresh subprocess, one after each repeat of (a) (interleaved: both see the same load);
        median of the `--repeats` runs. `--skip-llamacpp` leaves it out.

Goals (the issue): (a) >= llama.cpp Q4_0 tg on this machine: the measured (d) of this run (the issue's figure,
44 tok/s, is printed beside it, and is the target only when (d) was skipped); (b) >= 3x HF bf16 at the same
batch. Also printed: the roofline of (a) (weights at their stored bits + KV per step vs the measured bandwidth).
Noise on the shared VM is +-20-50% between runs: compare rows of one run.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from llamacpp_q4_0 import measure_llamacpp

ROOT = Path(__file__).resolve().parents[2]
RECIPE = ROOT / "benchmarks" / "serve" / "tinyllama-w4.yaml"
ISSUE_LLAMA_CPP_TOK_S = 44.0  # the issue's figure for llama.cpp Q4_0 tg128, 2 threads; the target if (d) is skipped
BATCH_GOAL = 3.0  # (b) >= 3x HF bf16 batched


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--artifact", default=str(ROOT / "artifacts" / "tinyllama-1.1b-w4"))
    p.add_argument("--recompile", action="store_true", help="compile again even if the artifact exists")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--prompt-len", type=int, default=32)
    p.add_argument("--new-tokens", type=int, default=128)
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--repeats", type=int, default=3, help="lowbit runs per case (median); HF runs once")
    p.add_argument("--schedule", default="artifact", help="lowbit engine schedule: artifact | unsplit | nano")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--skip-hf", action="store_true", help="leave out the HF rows (c)")
    p.add_argument("--skip-llamacpp", action="store_true", help="leave out (d); goal (a) falls back to the issue's 44")
    p.add_argument("--llamacpp-cache", default=str(ROOT / "artifacts" / "llamacpp"), help="(d)'s Q4_0 GGUF")
    p.add_argument("--json", default="bench_decode_goals.json")
    return p.parse_args(argv)


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def ensure_artifact(path: Path, recompile: bool) -> float:
    """Compile the recipe into `path` unless it is already there; seconds spent (0 when cached)."""
    if path.is_dir() and (path / "manifest.json").is_file() and not recompile:
        return 0.0
    from lowbit.compiler import compile_model
    from lowbit.config import load_config

    log(f"compiling {RECIPE.name} -> {path} (once)")
    t0 = time.perf_counter()
    compile_model(load_config(RECIPE), path, overwrite=True, quiet=True, eval_tokens=0)
    return time.perf_counter() - t0


def make_prompts(n: int, length: int, vocab: int, seed: int) -> list[list[int]]:
    rng = np.random.Generator(np.random.PCG64(seed))
    return [[int(t) for t in rng.integers(3, vocab, size=length)] for _ in range(n)]  # 0..2: <unk> <s> </s>


# -- lowbit ---------------------------------------------------------------------------------------------------
def lowbit_cases(
    args: argparse.Namespace, prompts: list[list[int]], after_single: Callable[[int], None] | None = None
) -> dict[str, Any]:
    """Cases (a) and (b); `after_single(i)` runs after the i-th repeat of (a) (case (d), interleaved)."""
    from lowbit.llm import LLM
    from lowbit.runtime.sampler import SamplingParams

    n_new = args.new_tokens
    llm = LLM(args.artifact, max_num_seqs=args.batch, schedule=args.schedule, verify="none")
    params = SamplingParams(max_tokens=n_new, ignore_eos=True, temperature=0.0)
    log("lowbit warm-up (kernels for batch 1 and the full batch)")
    llm.generate(prompts[:1], SamplingParams(max_tokens=4, ignore_eos=True))
    llm.generate(prompts[: args.batch], SamplingParams(max_tokens=4, ignore_eos=True))

    decode, e2e = [], []
    for i in range(args.repeats):
        t0 = time.perf_counter()
        (out,) = llm.generate(prompts[:1], params)
        wall = time.perf_counter() - t0
        m = out.metrics
        assert out.num_output_tokens == n_new, out.num_output_tokens
        assert m.first_token_time is not None and m.last_token_time is not None
        decode.append((n_new - 1) / (m.last_token_time - m.first_token_time))
        e2e.append(n_new / wall)
        log(f"lowbit single {i + 1}/{args.repeats}: decode {decode[-1]:.1f} tok/s, end to end {e2e[-1]:.1f} tok/s")
        if after_single is not None:
            after_single(i)

    batched, batched_decode = [], []
    for i in range(args.repeats):
        t0 = time.perf_counter()
        outs = llm.generate(prompts[: args.batch], params)
        wall = time.perf_counter() - t0
        assert all(o.num_output_tokens == n_new for o in outs)
        first = min(o.metrics.first_token_time for o in outs if o.metrics.first_token_time is not None)
        last = max(o.metrics.last_token_time for o in outs if o.metrics.last_token_time is not None)
        batched.append(args.batch * n_new / wall)
        batched_decode.append(args.batch * (n_new - 1) / (last - first))
        log(f"lowbit batch {args.batch} {i + 1}/{args.repeats}: {batched[-1]:.1f} output tok/s end to end")
    schedule = getattr(llm.engine, "schedule_mode", args.schedule)
    del llm
    gc.collect()
    return {
        "schedule": schedule,
        "single_decode_tok_s": statistics.median(decode),
        "single_e2e_tok_s": statistics.median(e2e),
        "single_decode_samples": decode,
        "batch_tok_s": statistics.median(batched),
        "batch_decode_tok_s": statistics.median(batched_decode),
        "batch_samples": batched,
    }


# -- HF transformers (test oracle; a benchmark may use it) ------------------------------------------------------
def hf_model(artifact: Path) -> Any:
    """LlamaForCausalLM with the artifact's synthetic float weights (fp32; exact for a bf16 copy)."""
    import torch
    import yaml
    from transformers import LlamaConfig, LlamaForCausalLM
    from transformers.models.llama.modeling_llama import LlamaRotaryEmbedding

    from lowbit.models.arch import ArchConfig
    from lowbit.models.synthetic import synthetic_tensor

    arch = ArchConfig.from_hf_config(json.loads((artifact / "config.json").read_text()))
    seed = int(yaml.safe_load((artifact / "model.yaml").read_text())["model"]["seed"])
    conf = LlamaConfig(**arch.to_hf_config())
    with torch.device("meta"):
        model = LlamaForCausalLM(conf)
    names = list(model.state_dict())
    model.load_state_dict({n: torch.from_numpy(synthetic_tensor(arch, seed, n)) for n in names}, assign=True)
    model.model.rotary_emb = LlamaRotaryEmbedding(config=conf)  # a non-persistent buffer: rebuilt off the meta device
    return model.eval()


def hf_generate_tok_s(model: Any, prompts: list[list[int]], n_new: int) -> float:
    import torch

    ids = torch.tensor(prompts)
    mask = torch.ones_like(ids)
    kw = {"attention_mask": mask, "do_sample": False, "pad_token_id": 0}
    with torch.inference_mode():
        model.generate(ids, max_new_tokens=2, min_new_tokens=2, **kw)  # warm-up
        t0 = time.perf_counter()
        out = model.generate(ids, max_new_tokens=n_new, min_new_tokens=n_new, **kw)
        wall = time.perf_counter() - t0
    assert out.shape == (len(prompts), len(prompts[0]) + n_new), out.shape
    return len(prompts) * n_new / wall


def hf_cases(args: argparse.Namespace, prompts: list[list[int]]) -> dict[str, Any]:
    import torch

    log("HF: building LlamaForCausalLM with the same weights")
    model = hf_model(Path(args.artifact))
    out: dict[str, Any] = {"transformers": __import__("transformers").__version__}
    log("HF fp32 batch 1")
    out["fp32_b1_tok_s"] = hf_generate_tok_s(model, prompts[:1], args.new_tokens)
    model = model.to(torch.bfloat16)
    log("HF bf16 batch 1")
    out["bf16_b1_tok_s"] = hf_generate_tok_s(model, prompts[:1], args.new_tokens)
    log(f"HF bf16 batch {args.batch}")
    out["bf16_batch_tok_s"] = hf_generate_tok_s(model, prompts[: args.batch], args.new_tokens)
    del model
    gc.collect()
    return out


# -- llama.cpp (case (d)) ---------------------------------------------------------------------------------------
def llamacpp_run(args: argparse.Namespace, runs: list[dict[str, Any]]) -> Callable[[int], None]:
    """A callback for lowbit_cases: one llama.cpp generation in a fresh subprocess, appended to `runs`."""

    def run(i: int) -> None:
        r = measure_llamacpp(args.threads, args.prompt_len, args.new_tokens, 1, args.llamacpp_cache,
                             prompt_seed=args.seed)  # fmt: skip
        runs.append(r)
        log(f"llama.cpp Q4_0 {i + 1}/{args.repeats}: tg {r['tg_tok_s']:.1f} tok/s")

    return run


def llamacpp_summary(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """One result from the interleaved single-run subprocesses: medians over them, the last one's metadata."""
    tg = [x for r in runs for x in r["tg_samples"]]
    pp = [x for r in runs for x in r["pp_samples"]]
    cpu_share = [x for r in runs for x in r["cpu_share_samples"]]  # ~1: its threads had their cores
    keep = ("model_file", "model_file_bytes", "bits_per_weight", "gguf", "llama_cpp_python", "system_info", "avx2")
    out = {k: runs[-1][k] for k in keep}
    return {"tg_tok_s": statistics.median(tg), "tg_samples": tg, "pp_tok_s": statistics.median(pp), "pp_samples": pp,
            "cpu_share_samples": cpu_share, "interleaved": True, **out}  # fmt: skip


# -- report ---------------------------------------------------------------------------------------------------
def roofline(artifact: str, prompt_len: int, n_new: int, batch: int) -> dict[str, Any]:
    """Decode ceilings at batch 1 and `batch` (mean context prompt + n_new / 2): lowbit's W4 bytes with the fp32
    peak (its CPU kernels compute in fp32), and HF bf16 (2 bytes per weight, the bf16 peak) at `batch`."""
    from dataclasses import replace

    from lowbit.bench.decode_roofline import decode_bound, model_cost
    from lowbit.bench.roofline import measure_bandwidth, measure_peak_flops

    cost = model_cost(artifact)
    bw = measure_bandwidth("cpu")
    peak32, peak16 = measure_peak_flops("float32", "cpu"), measure_peak_flops("bfloat16", "cpu")
    ctx = prompt_len + n_new / 2
    # HF: the same weights at 16 bits instead of their stored width (~2 B per weight; norms scaled too: negligible)
    bf16 = replace(cost, weight_bytes=int(cost.weight_bytes * 16.0 / cost.bits_per_weight))
    return {
        "bandwidth_gbs": bw,
        "peak_gflops_fp32": peak32,
        "peak_gflops_bf16": peak16,
        "model_cost": cost.to_json(),
        "decode_b1": decode_bound(cost, 1, ctx, bw, peak32),
        "decode_batch": decode_bound(cost, batch, ctx, bw, peak32),
        "hf_bf16_decode_batch": decode_bound(bf16, batch, ctx, bw, peak16),
    }


def format_table(r: dict[str, Any]) -> str:
    lb, hf, b = r["lowbit"], r.get("hf") or {}, r["config"]["batch"]
    lc, g = r.get("llamacpp"), r["goals"]
    roof = r["roofline"]["decode_b1"]
    target = g["single_target_tok_s"]
    if lc:
        target_text = f"llama.cpp Q4_0 tg, measured (d); issue's figure {ISSUE_LLAMA_CPP_TOK_S:g}"
    else:
        target_text = "issue's figure for llama.cpp Q4_0; (d) skipped"
    rows = [
        ("(a) lowbit W4, 1 sequence, decode", lb["single_decode_tok_s"], f">= {target:.1f} ({target_text})"),
        ("    lowbit W4, 1 sequence, end to end", lb["single_e2e_tok_s"], ""),
        (f"(b) lowbit W4, {b} concurrent, end to end", lb["batch_tok_s"], ""),
        (f"    lowbit W4, {b} concurrent, decode", lb["batch_decode_tok_s"], ""),
        ("(c) HF bf16 generate, batch 1", hf.get("bf16_b1_tok_s"), ""),
        (f"    HF bf16 generate, batch {b}", hf.get("bf16_batch_tok_s"), ""),
        ("    HF fp32 generate, batch 1", hf.get("fp32_b1_tok_s"), ""),
        ("(d) llama.cpp Q4_0, 1 sequence, tg", lc["tg_tok_s"] if lc else None, "" if lc else "skipped"),
        (f"    llama.cpp Q4_0, 1 sequence, pp{r['config']['prompt_len']}", lc["pp_tok_s"] if lc else None, ""),
    ]
    if hf:
        rows[2] = (
            rows[2][0],
            rows[2][1],
            f">= {BATCH_GOAL:g}x HF bf16 batch {b} = {BATCH_GOAL * hf['bf16_batch_tok_s']:.1f}",
        )
    lines = [
        f"# decode goals | {r['machine']['name']} | threads {r['config']['threads']} | {r['model']} "
        f"({roof_bits(r):.2f} bits/weight) | prompt {r['config']['prompt_len']}, {r['config']['new_tokens']} new "
        f"tokens, greedy, EOS ignored | lowbit schedule {lb['schedule']}",
        f"{'case':<44}{'tok/s':>9}  goal",
        "-" * 90,
    ]
    lines += [f"{name:<44}{'-' if v is None else f'{v:.1f}':>9}  {goal}" for name, v, goal in rows]
    lines.append("")
    lines.append(f"goal (a) single W4 >= {target:.1f} tok/s ({target_text}): {lb['single_decode_tok_s']:.1f} -> "
                 f"{'MET' if g['single'] else 'NOT MET'} ({lb['single_decode_tok_s'] / target:.2f}x)")  # fmt: skip
    if hf:
        lines.append(f"goal (b) {b} concurrent >= {BATCH_GOAL:g}x HF bf16 batch {b}: {g['batch_ratio']:.2f}x -> "
                     f"{'MET' if g['batch'] else 'NOT MET'}")  # fmt: skip
        lines.append(f"lowbit single vs HF bf16 b1: {lb['single_decode_tok_s'] / hf['bf16_b1_tok_s']:.2f}x, "
                     f"vs HF fp32 b1: {lb['single_decode_tok_s'] / hf['fp32_b1_tok_s']:.2f}x")  # fmt: skip
    if lc:
        lines.append(
            f"(d) llama.cpp: llama-cpp-python {lc['llama_cpp_python']}, AVX2 {int(lc['avx2'])}, "
            f"{lc['model_file_bytes'] / 2**20:.0f} MiB file ({lc['bits_per_weight']:.2f} bits/weight, "
            f"{lc['gguf']['file_type_name']}, output.weight {lc['gguf']['output_weight_type']}), tg samples "
            f"{', '.join(f'{x:.1f}' for x in lc['tg_samples'])} (CPU share "
            f"{', '.join(f'{x:.2f}' for x in lc['cpu_share_samples'])}; < ~0.9: the cores were contended)"
        )
    lines.append(
        f"roofline (a): {roof['step_bytes'] / 1e6:.0f} MB/step at {r['roofline']['bandwidth_gbs']:.1f} GB/s measured "
        f"-> <= {roof['output_tok_s']:.1f} tok/s ({roof['bound_by']}-bound); lowbit at "
        f"{100 * lb['single_decode_tok_s'] / roof['output_tok_s']:.0f}% of it"
    )
    ro = r["roofline"]
    rb, hb = ro["decode_batch"], ro["hf_bf16_decode_batch"]
    lines.append(
        f"roofline (b): {rb['step_flops'] / 1e9:.1f} GFLOP/step at {ro['peak_gflops_fp32']:.0f} GFLOP/s fp32 "
        f"-> lowbit <= {rb['output_tok_s']:.1f} tok/s ({rb['bound_by']}-bound); HF bf16 at "
        f"{ro['peak_gflops_bf16']:.0f} GFLOP/s -> <= {hb['output_tok_s']:.1f} tok/s ({hb['bound_by']}-bound)"
    )
    return "\n".join(lines)


def roof_bits(r: dict[str, Any]) -> float:
    return float(r["roofline"]["model_cost"]["bits_per_weight"])


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    from lowbit.codegen.tune.timing import device_name, set_threads

    set_threads(args.threads)  # before any kernel or torch op runs
    artifact = Path(args.artifact)
    compile_s = ensure_artifact(artifact, args.recompile)
    if not args.skip_llamacpp:  # fails here, before any timing, when llama-cpp-python is missing
        log("llama.cpp: the Q4_0 GGUF (written and quantized once, then cached)")
        measure_llamacpp(args.threads, args.prompt_len, args.new_tokens, 1, args.llamacpp_cache, prepare_only=True)
    vocab = json.loads((artifact / "config.json").read_text())["vocab_size"]
    prompts = make_prompts(args.batch, args.prompt_len, vocab, args.seed)
    report: dict[str, Any] = {
        "benchmark": "decode_goals",
        "model": artifact.name,
        "artifact": str(artifact),
        "compile_seconds": compile_s,
        "machine": {"name": device_name("cpu"), "threads": args.threads},
        "config": {k: getattr(args, k) for k in ("threads", "prompt_len", "new_tokens", "batch", "repeats", "seed")},
        "load_average_start": os.getloadavg(),
    }
    log("roofline: measuring bandwidth and the fp32 / bf16 peaks")
    report["roofline"] = roofline(str(artifact), args.prompt_len, args.new_tokens, args.batch)
    llamacpp_runs: list[dict[str, Any]] = []
    after_single = None if args.skip_llamacpp else llamacpp_run(args, llamacpp_runs)
    report["lowbit"] = lowbit_cases(args, prompts, after_single)
    report["llamacpp"] = llamacpp_summary(llamacpp_runs) if llamacpp_runs else None
    report["hf"] = None if args.skip_hf else hf_cases(args, prompts)
    lb, hf, lc = report["lowbit"], report["hf"], report["llamacpp"]
    target = ISSUE_LLAMA_CPP_TOK_S if lc is None else lc["tg_tok_s"]
    report["goals"] = {
        "single_target_tok_s": target,
        "single_target_source": "issue's figure (llama.cpp skipped)" if lc is None else "llama.cpp measured (d)",
        "issue_llamacpp_tok_s": ISSUE_LLAMA_CPP_TOK_S,
        "single": lb["single_decode_tok_s"] >= target,
        "batch_ratio": None if hf is None else lb["batch_tok_s"] / hf["bf16_batch_tok_s"],
        "batch": None if hf is None else lb["batch_tok_s"] >= BATCH_GOAL * hf["bf16_batch_tok_s"],
    }
    print(format_table(report))
    Path(args.json).write_text(json.dumps(report, indent=1) + "\n")
    print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
