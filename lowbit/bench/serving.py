"""`lowbit bench serve`: an online load test of an OpenAI-compatible `/v1/completions` server, with vLLM's
benchmark_serving metrics (TTFT, TPOT, ITL, E2E latency; request / output / total token throughput).

    lowbit bench serve artifacts/tiny-llama                      # starts `lowbit serve` per schedule (unsplit, nano)
    lowbit bench serve artifacts/tiny-llama --schedules nano --request-rate 4 --num-prompts 64 --json serve.json
    lowbit bench serve --url http://127.0.0.1:8000 --tokenizer artifacts/tiny-llama --dataset sharegpt.json

With an ARTIFACT, the command starts `lowbit serve ARTIFACT --schedule S` on a free loopback port once per
schedule of `--schedules`, waits for /health, sends the same requests on the same arrival schedule, stops the
server, and prints the runs side by side with the ratio of the last over the first (nano / unsplit). With
`--url` it measures a server that is already running (one run).

Requests: synthetic random-token prompts (`--input-len`, `--output-len`, `--range-ratio`; sent as token ids by
default so lengths are exact) or a local ShareGPT file (`--dataset`); `ignore_eos` is sent so every request
generates exactly its output length (`--no-ignore-eos` to let EOS end it). Arrivals: `--request-rate inf` sends
everything at once, a number draws Poisson arrivals (seeded; `--burstiness` for Gamma gaps) or, with
`--arrival fixed`, evenly spaced ones; `--max-concurrency` caps requests in flight. Before each timed run, untimed:
one request alone, then `--warmup` (default 8) at once, outputs capped at 16 tokens, so kernels for small and large
batches are built or loaded before the clock starts (the kernel disk cache would otherwise favour the schedule
that runs second). Definitions: lowbit/bench/metrics.py (vLLM's); client timing:
lowbit/bench/client.py.
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import json
import os
import shlex
import sys
import tempfile
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

from lowbit.bench.arrivals import ARRIVALS, arrival_offsets, parse_rate
from lowbit.bench.client import RequestOptions, run_load, served_model
from lowbit.bench.compare import Row, parse_schedules, schedule_ratios, side_by_side, write_json
from lowbit.bench.datasets import SampleRequest, sharegpt_requests, synthetic_requests, total_tokens
from lowbit.bench.metrics import (
    DEFAULT_PERCENTILES,
    LATENCY_METRICS,
    error_samples,
    per_request_lists,
    percentile_key,
    serving_metrics,
)
from lowbit.bench.server_process import served
from lowbit.models.tokenizer import load_tokenizer

WARMUP_MAX_TOKENS = 16  # output tokens of a warm-up request
DEFAULT_MAX_MODEL_LEN = 2048  # vLLM's ShareGPT limit when neither the artifact nor the server says


class BenchServeError(ValueError):
    """A flag or input that cannot work; the message names it and the fix."""


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("artifact", nargs="?", help="artifact to serve (starts `lowbit serve` per schedule); or use --url")
    p.add_argument("--url", help="base URL of a running OpenAI-compatible server, e.g. http://127.0.0.1:8000")
    p.add_argument("--model", help="model name to send (default: the first of GET /v1/models)")
    p.add_argument(
        "--schedules", default="unsplit,nano", help="with an ARTIFACT: comma list of unsplit, nano, artifact"
    )
    p.add_argument("--server-args", default="", help="more `lowbit serve` flags, one string, e.g. '--max-num-seqs 16'")
    p.add_argument("--server-timeout", type=float, default=600.0, help="seconds to wait for /health (default 600)")
    p.add_argument("--log-dir", help="where the servers' logs go (default: a temporary directory)")
    p.add_argument("--num-prompts", type=int, default=32)
    p.add_argument("--request-rate", default="inf", help="requests/s, or inf to send all at once (default)")
    p.add_argument("--arrival", choices=ARRIVALS, default="poisson", help="poisson (seeded) or fixed gaps 1/rate")
    p.add_argument("--burstiness", type=float, default=1.0, help="Gamma shape of the gaps (1: Poisson)")
    p.add_argument("--max-concurrency", type=int, default=None, help="most requests in flight (default: no limit)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--dataset", help="a local ShareGPT JSON file (default: synthetic random-token prompts)")
    p.add_argument("--sharegpt-output-len", type=int, default=None, help="fixed output length for --dataset")
    p.add_argument("--input-len", type=int, default=64, help="synthetic prompt tokens (default 64)")
    p.add_argument("--output-len", type=int, default=64, help="synthetic output tokens (default 64)")
    p.add_argument("--range-ratio", type=float, default=0.0, help="synthetic lengths uniform in L*(1-r)..L*(1+r)")
    p.add_argument(
        "--prompt-format", choices=("ids", "text"), default="ids", help="synthetic prompts as token ids or text"
    )
    p.add_argument("--tokenizer", help="tokenizer.json or an artifact directory (default: the ARTIFACT's)")
    p.add_argument("--vocab-size", type=int, default=None, help="synthetic ids range (default: artifact / tokenizer)")
    p.add_argument("--max-model-len", type=int, default=None, help="ShareGPT length filter (default: artifact/server)")
    p.add_argument("--no-ignore-eos", action="store_true", help="let EOS end a request before its output length")
    p.add_argument(
        "--warmup",
        type=int,
        default=8,
        help="untimed: 1 request alone, then this many at once, before each run (0: none)",
    )
    p.add_argument("--percentiles", default=",".join(f"{p:g}" for p in DEFAULT_PERCENTILES))
    p.add_argument("--request-timeout", type=float, default=3600.0, help="seconds per request (default 3600)")
    p.add_argument("--json", help="write the results here")
    p.add_argument("--save-detailed", action="store_true", help="per-request lengths, TTFTs, ITLs, texts in the JSON")


# -- inputs -------------------------------------------------------------------------------------------------
def _artifact_facts(artifact: str | None) -> dict[str, Any]:
    """vocab size, max_model_len, device and model name from an artifact's config files (nothing loaded)."""
    if not artifact:
        return {}
    import yaml

    root = Path(artifact)
    if not (root / "config.json").is_file():
        raise BenchServeError(f"ARTIFACT {artifact}: no config.json there; give a compiled artifact directory")
    hf = json.loads((root / "config.json").read_text())
    spec = yaml.safe_load((root / "model.yaml").read_text()) if (root / "model.yaml").is_file() else {}
    target = (spec or {}).get("target") or {}
    return {
        "vocab_size": hf.get("vocab_size"),
        "max_model_len": target.get("max_model_len"),
        "device": target.get("device", "cpu"),
        "name": ((spec or {}).get("model") or {}).get("name"),
        "tokenizer": root if (root / "tokenizer.json").is_file() else None,
    }


def build_requests(
    args: argparse.Namespace, tokenizer: Any, vocab_size: int | None, max_model_len: int
) -> list[SampleRequest]:
    if args.dataset:
        return sharegpt_requests(
            args.dataset, args.num_prompts, tokenizer, seed=args.seed, max_model_len=max_model_len,
            fixed_output_len=args.sharegpt_output_len,
        )  # fmt: skip
    if vocab_size is None:
        raise BenchServeError("synthetic prompts need the vocabulary size: give --vocab-size, --tokenizer or ARTIFACT")
    return synthetic_requests(
        args.num_prompts, args.input_len, args.output_len, vocab_size=vocab_size, range_ratio=args.range_ratio,
        seed=args.seed, tokenizer=tokenizer, prompt_format=args.prompt_format,
    )  # fmt: skip


def count_tokens(tokenizer: Any, text: str) -> int:
    """Output tokens of a generated text (no BOS): the fallback when the server sends no usage."""
    return len(tokenizer.encode(text, add_special_tokens=False).ids)


def parse_percentiles(text: str) -> tuple[float, ...]:
    try:
        ps = tuple(float(x) for x in text.split(",") if x.strip())
    except ValueError:
        raise BenchServeError(f"--percentiles {text!r}: give comma-separated numbers, e.g. 50,90,99") from None
    if not ps or not all(0 <= p <= 100 for p in ps):
        raise BenchServeError(f"--percentiles {text!r}: each must be in 0..100, e.g. 50,90,99")
    return ps


# -- one run --------------------------------------------------------------------------------------------------
async def measure(
    url: str,
    requests: Sequence[SampleRequest],
    offsets: Sequence[float],
    args: argparse.Namespace,
    percentiles: Sequence[float],
    count_tokens: Any,
) -> dict[str, Any]:
    """Warm up, then the timed run against `url`; vLLM's result dict plus model and error samples."""
    model = args.model or (await served_model(url)).get("id")
    opts = RequestOptions(model=str(model), ignore_eos=not args.no_ignore_eos)
    kw: dict[str, Any] = {"timeout_s": args.request_timeout, "count_tokens": count_tokens}
    if args.warmup > 0:  # batch-size buckets 1 (alone) and larger (a burst): kernels are built or loaded here
        warm = [replace(r, output_len=min(r.output_len, WARMUP_MAX_TOKENS)) for r in requests]
        for burst in ([warm[0]], [warm[i % len(warm)] for i in range(args.warmup)]):
            res, _ = await run_load(url, burst, [0.0] * len(burst), opts, **kw)
            if not any(r.success for r in res):
                raise RuntimeError(f"every warm-up request to {url} failed; first error: {res[0].error}")
    results, duration = await run_load(url, requests, offsets, opts, max_concurrency=args.max_concurrency, **kw)
    out = serving_metrics(results, duration, percentiles)
    out["model"] = model
    out["errors_sample"] = error_samples(results)
    if args.save_detailed:
        out.update(per_request_lists(results))
    return out


# -- report ---------------------------------------------------------------------------------------------------
def table_rows(percentiles: Sequence[float]) -> list[Row]:
    rows: list[Row] = [
        ("completed", "completed", "{:d}"),
        ("failed", "failed", "{:d}"),
        ("duration (s)", "duration", "{:.2f}"),
        ("input tokens", "total_input_tokens", "{:d}"),
        ("output tokens", "total_output_tokens", "{:d}"),
        ("request throughput/s", "request_throughput", "{:.2f}"),
        ("output tok/s", "output_throughput", "{:.1f}"),
        ("total tok/s", "total_token_throughput", "{:.1f}"),
    ]
    names = {"ttft": "TTFT", "tpot": "TPOT", "itl": "ITL", "e2el": "E2E"}
    for m in LATENCY_METRICS:
        rows.append((f"mean {names[m]} (ms)", f"mean_{m}_ms", "{:.2f}"))
        rows.append((f"median {names[m]} (ms)", f"median_{m}_ms", "{:.2f}"))
        rows.extend(
            (f"{percentile_key(p)} {names[m]} (ms)", f"{percentile_key(p)}_{m}_ms", "{:.2f}") for p in percentiles
        )
        rows.append((f"std {names[m]} (ms)", f"std_{m}_ms", "{:.2f}"))
    return rows


def format_report(report: dict[str, Any]) -> str:
    runs, cfg = report["runs"], report["config"]
    labels = [r.get("schedule") or "server" for r in runs]
    m = report["machine"]
    rate = cfg["request_rate"]
    rate_text = rate if isinstance(rate, str) else f"{rate:g}"  # "inf" once written to JSON
    lines = [
        f"# lowbit bench serve | {m.get('name')} [{m.get('device')}] | {cfg['num_prompts']} requests, "
        f"{cfg['dataset'] or 'synthetic'} in {cfg['input_len']} out {cfg['output_len']} (range ratio "
        f"{cfg['range_ratio']}) | rate {rate_text} ({cfg['arrival']}) | max concurrency "
        f"{cfg['max_concurrency'] or 'none'} | seed {cfg['seed']}",
        "# TTFT: first text chunk; TPOT = (E2E - TTFT)/(output tokens - 1); ITL: every gap between chunks (vLLM's)",
        side_by_side(table_rows(cfg["percentiles"]), runs, labels),
    ]
    for r, lb in zip(runs, labels):
        for e in r.get("errors_sample") or []:
            lines.append(f"error ({lb}): {e}")
    return "\n".join(lines)


def run(args: argparse.Namespace) -> dict[str, Any]:
    """Every run of the command; the report dict (see format_report / the JSON)."""
    if bool(args.artifact) == bool(args.url):
        raise BenchServeError("give either an ARTIFACT (to start `lowbit serve`) or --url of a running server")
    percentiles = parse_percentiles(args.percentiles)
    rate = parse_rate(str(args.request_rate))
    facts = _artifact_facts(args.artifact)
    tok_path = args.tokenizer or facts.get("tokenizer")
    try:  # the raw `tokenizers.Tokenizer` (encode(...).ids, get_added_tokens_decoder)
        tokenizer = load_tokenizer(tok_path).tokenizer if tok_path else None
    except FileNotFoundError as e:
        raise BenchServeError(f"--tokenizer {tok_path}: {e}") from None
    vocab = args.vocab_size or facts.get("vocab_size") or (tokenizer.get_vocab_size() if tokenizer else None)
    max_len = args.max_model_len or facts.get("max_model_len")
    if max_len is None and args.url:
        max_len = asyncio.run(served_model(args.url)).get("max_model_len")
    requests = build_requests(args, tokenizer, vocab, int(max_len or DEFAULT_MAX_MODEL_LEN))
    offsets = arrival_offsets(len(requests), rate, args.arrival, burstiness=args.burstiness, seed=args.seed)

    counter = None if tokenizer is None else functools.partial(count_tokens, tokenizer)
    from lowbit.codegen.tune.timing import device_name

    device = str(facts.get("device") or "cpu")
    machine = {
        "name": device_name(device) if args.artifact else f"remote server at {args.url}",
        "device": device if args.artifact else "unknown",
        "client": device_name("cpu"),
        "cpu_count": os.cpu_count(),
    }
    extra = shlex.split(args.server_args)
    in_tok, out_tok = total_tokens(requests)
    config = {
        "num_prompts": len(requests), "request_rate": rate, "arrival": args.arrival, "burstiness": args.burstiness,
        "max_concurrency": args.max_concurrency, "seed": args.seed, "dataset": args.dataset,
        "input_len": args.input_len if not args.dataset else None,
        "output_len": args.output_len if not args.dataset else None, "range_ratio": args.range_ratio,
        "prompt_format": args.prompt_format if not args.dataset else "text", "ignore_eos": not args.no_ignore_eos,
        "requested_input_tokens": in_tok, "requested_output_tokens": out_tok, "percentiles": list(percentiles),
        "warmup": args.warmup,
    }  # fmt: skip
    runs: list[dict[str, Any]] = []
    common = {"machine": machine, "artifact": args.artifact, "request_rate": rate, "burstiness": args.burstiness,
              "max_concurrency": args.max_concurrency}  # fmt: skip
    if args.url:
        res = asyncio.run(measure(args.url, requests, offsets, args, percentiles, counter))
        runs.append({"schedule": None, "url": args.url, "server_args": None, **common, **res})
    else:
        log_dir = Path(args.log_dir or tempfile.mkdtemp(prefix="lowbit-bench-serve-"))
        for sched in parse_schedules(args.schedules):
            server_args = ["--schedule", sched, *extra]
            log = log_dir / f"serve-{sched}.log"
            print(f"starting lowbit serve {args.artifact} {' '.join(server_args)} (log {log})", file=sys.stderr)
            with served(args.artifact, server_args, log_path=log, startup_timeout_s=args.server_timeout) as srv:
                res = asyncio.run(measure(srv.url, requests, offsets, args, percentiles, counter))
            runs.append({"schedule": sched, "url": srv.url, "server_args": server_args, "server_cmd": list(srv.cmd),
                         "server_log": str(log), **common, **res})  # fmt: skip
    report: dict[str, Any] = {"benchmark": "serve", "machine": machine, "config": config, "runs": runs}
    if len(runs) >= 2:
        report["ratios"] = schedule_ratios(runs)
    return report


def main(args: argparse.Namespace) -> int:
    try:
        report = run(args)
    except (BenchServeError, ValueError, FileNotFoundError) as e:
        print(f"lowbit bench serve: {e}", file=sys.stderr)
        return 2
    except RuntimeError as e:  # a server that did not come up, or refused every warm-up request
        print(f"lowbit bench serve: {e}", file=sys.stderr)
        return 1
    print(format_report(report))
    if args.json:
        print(f"wrote {write_json(report, args.json)}")
    return 1 if any(r["completed"] == 0 for r in report["runs"]) else 0


__all__ = [
    "BenchServeError",
    "add_arguments",
    "build_requests",
    "format_report",
    "main",
    "measure",
    "run",
    "table_rows",
]
