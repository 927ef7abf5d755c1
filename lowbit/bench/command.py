"""Command-line arguments of `lowbit bench gemm` and `lowbit bench attention` (also used by benchmarks/*.py)."""

from __future__ import annotations

import argparse
import os
import re
import sys
import time
from collections.abc import Callable
from pathlib import Path

from lowbit.bench import attention, gemm

KNOWN_BACKENDS = ("reference", "triton", "tvm")
LAYERS_EXAMPLE = "--layers 4096x4096,11008x4096"


def _items(text: str) -> list[str]:
    return [t.strip() for t in text.split(",") if t.strip()]


def parse_ms(text: str) -> tuple[int, ...]:
    """'1,4,16' -> (1, 4, 16)."""
    try:
        ms = tuple(int(t) for t in _items(text))
    except ValueError:
        ms = ()
    if not ms or any(m < 1 for m in ms):
        raise argparse.ArgumentTypeError(f"{text!r} is not a list of positive token counts; write e.g. --M 1,4,16")
    return ms


def parse_layers(text: str) -> tuple[tuple[int, int], ...]:
    """'4096x4096,11008x4096' -> ((4096, 4096), (11008, 4096)): N (out features) x K (in features)."""
    layers = []
    for item in _items(text) or [text]:
        m = re.fullmatch(r"(\d+)\s*[xX*]\s*(\d+)", item)
        if not m or min(int(m.group(1)), int(m.group(2))) < 1:
            raise argparse.ArgumentTypeError(
                f"{item!r} in {text!r} is not NxK (out features x in features); write e.g. {LAYERS_EXAMPLE}"
            )
        layers.append((int(m.group(1)), int(m.group(2))))
    return tuple(layers)


def parse_dtypes(text: str) -> tuple[str, ...]:
    """'int4,fp6_e3m2' -> ('int4', 'fp6_e3m2'), each checked against lowbit.dtypes."""
    from lowbit.dtypes import dtype

    names = _items(text)
    if not names:
        raise argparse.ArgumentTypeError(f"{text!r} names no dtype; write e.g. --dtypes int4,int3,fp6_e3m2")
    for name in names:
        try:
            dt = dtype(name)
        except (ValueError, KeyError) as e:
            raise argparse.ArgumentTypeError(
                f"{name!r} is not a lowbit dtype ({e}); e.g. --dtypes int4,fp6_e3m2"
            ) from e
        if not (dt.is_integer or dt.is_float) or dt.bits > 8:
            raise argparse.ArgumentTypeError(f"{name!r} is not a weight dtype of at most 8 bits; e.g. int4, fp6_e3m2")
    return tuple(names)


def parse_backends(text: str) -> tuple[str, ...]:
    names = _items(text)
    bad = [n for n in names if n not in KNOWN_BACKENDS]
    if not names or bad:
        raise argparse.ArgumentTypeError(
            f"{text!r}: unknown backend {bad[0] if bad else ''!r}; use a comma list of {', '.join(KNOWN_BACKENDS)} "
            "(e.g. --backends tvm)"
        )
    return tuple(names)


def positive_int(text: str) -> int:
    try:
        v = int(text)
    except ValueError:
        v = 0
    if v < 1:
        raise argparse.ArgumentTypeError(f"{text!r} is not a positive integer; e.g. 5")
    return v


def add_arguments(p: argparse.ArgumentParser) -> None:
    """The flags of `lowbit bench gemm`."""
    p.add_argument(
        "--M", type=parse_ms, default=None, help="token counts, e.g. 1,4,16 (default 1,4,16,64,256; GPU: +1024,4096)"
    )
    p.add_argument(
        "--layers",
        type=parse_layers,
        default=None,
        help="NxK layers, e.g. 4096x4096,11008x4096 (default: those on CPU; 8192x8192,28672x8192 on CUDA)",
    )
    p.add_argument("--dtypes", type=parse_dtypes, default=gemm.DTYPES, help="weight dtypes, e.g. int4,int3")
    p.add_argument(
        "--naive-dtypes",
        type=parse_dtypes,
        default=None,
        help="dtypes of the torch dequantize-then-matmul baseline (default: the first of --dtypes)",
    )
    p.add_argument("--backends", type=parse_backends, default=None, help="lowbit backends (default: tvm on CPU)")
    p.add_argument("--group-size", type=positive_int, default=128)
    p.add_argument("--repeats", type=positive_int, default=None, help="timed samples per row, median reported (5)")
    p.add_argument("--threads", type=positive_int, default=None, help="torch and TVM threads (default: all cores)")
    p.add_argument("--quick", action="store_true", help="one 2048x2048 layer, M in {1,16}, 3 repeats (< 1 min)")
    p.add_argument("--tune", action="store_true", help="tune lowbit kernels before timing them")
    p.add_argument(
        "--cache",
        choices=sorted(gemm.CACHE_MODES),
        default="rotate",
        help="how samples miss the caches: rotate (default: a ring of weight copies, each streamed from DRAM as a "
        "decode step streams a layer), flush (read-modify-write of 2x L3 before each sample), hot (no eviction)",
    )
    p.add_argument("--no-flush", action="store_true", help="the same as --cache hot (hot numbers)")
    p.add_argument("--out", type=Path, default=None, help="directory for the JSON (and plot) outputs")
    p.add_argument("--json", type=Path, default=None, help="JSON output path (default bench_gemm.json in --out or .)")
    p.add_argument("--plot", type=Path, default=None, help="PNG of speedup vs M (needs matplotlib)")


def _progress(line: str) -> None:
    """The machine header and layer lines go to stdout; per-row timings (indented) to stderr as progress."""
    print(line, file=sys.stderr if line.startswith("  ") else sys.stdout, flush=True)


def main(args: argparse.Namespace) -> int:
    """Run `lowbit bench gemm` with parsed arguments; 1 if any lowbit row mismatched its reference."""
    from lowbit.bench.report import format_table, write_json, write_plot

    Ms = args.M or (gemm.QUICK_MS if args.quick else None)  # None: the device's default (gemm.default_ms)
    repeats = args.repeats or (gemm.QUICK_REPEATS if args.quick else 5)
    layers = args.layers or (gemm.QUICK_LAYERS if args.quick else None)
    for N, K in layers or ():
        if K % args.group_size:
            raise SystemExit(
                f"lowbit bench gemm: --group-size {args.group_size} does not divide K={K} of --layers {N}x{K}; "
                "use a K that is a multiple of the group size or e.g. --group-size 64"
            )
    start = time.perf_counter()
    report = gemm.run_report(
        Ms,
        layers,
        args.dtypes,
        args.group_size,
        args.backends,
        repeats,
        args.quick,
        threads=args.threads,
        tune=args.tune,
        cache="hot" if args.no_flush else args.cache,
        naive_dtypes=args.naive_dtypes,
        log=_progress,
    )
    print(format_table(report))  # with the final ceilings (run_report printed the first measurement)
    out_dir = args.out or Path(os.getcwd())
    json_path = write_json(report, args.json or out_dir / "bench_gemm.json")
    print(f"wrote {json_path} ({len(report.rows)} rows, {time.perf_counter() - start:.0f} s)")
    if args.plot is not None:
        plot = write_plot(report, args.plot)
        print(f"wrote {plot}" if plot else "no plot: matplotlib is not installed (pip install matplotlib)")
    if report.mismatches:
        print(f"{len(report.mismatches)} lowbit row(s) disagree with the reference dequantization (MISMATCH above)")
        return 1
    return 0


# -- lowbit bench attention ---------------------------------------------------------------------------------


def parse_cells(text: str) -> tuple[tuple[int, int], ...]:
    """'1x512,4x2048' -> ((1, 512), (4, 2048)): batch x tokens per sequence; 'none' -> ()."""
    if text.strip().lower() == "none":
        return ()
    cells = []
    for item in _items(text) or [text]:
        m = re.fullmatch(r"(\d+)\s*[xX*]\s*(\d+)", item)
        if not m or min(int(m.group(1)), int(m.group(2))) < 1:
            raise argparse.ArgumentTypeError(
                f"{item!r} in {text!r} is not BxL (sequences x tokens); write e.g. --prefill 1x512,1x2048 or none"
            )
        cells.append((int(m.group(1)), int(m.group(2))))
    return tuple(cells)


def counts(flag: str, example: str) -> Callable[[str], tuple[int, ...]]:
    """A parser of a comma list of positive integers whose error names `flag` and shows `example`."""

    def parse(text: str) -> tuple[int, ...]:
        try:
            ns = tuple(int(t) for t in _items(text))
        except ValueError:
            ns = ()
        if not ns or any(n < 1 for n in ns):
            raise argparse.ArgumentTypeError(
                f"{flag} {text!r} is not a list of positive integers; e.g. {flag} {example}"
            )
        return ns

    return parse


def parse_kv_dtypes(text: str) -> tuple[str, ...]:
    """'int8,int4' -> ('int8', 'int4'), each a KV cache format of lowbit.ops.attention."""
    known = attention.KV_FORMATS
    names = _items(text)
    bad = [n for n in names if n not in known]
    if not names or bad:
        raise argparse.ArgumentTypeError(
            f"{text!r}: unknown KV dtype {bad[0] if bad else ''!r}; use a comma list of {', '.join(known)} "
            "(e.g. --kv-dtypes float16,int8,int4)"
        )
    return tuple(names)


def positive_float(text: str) -> float:
    try:
        v = float(text)
    except ValueError:
        v = 0.0
    if not v > 0:
        raise argparse.ArgumentTypeError(f"{text!r} is not a positive number; e.g. 2 or 0.5")
    return v


def add_attention_arguments(p: argparse.ArgumentParser) -> None:
    """The flags of `lowbit bench attention`."""
    A = attention
    p.add_argument("--batch", type=counts("--batch", "1,8,32"), default=None, help="decode batch sizes (1,8,32)")
    p.add_argument("--context", type=counts("--context", "512,2048,8192"), default=None, help="decode contexts")
    p.add_argument("--prefill", type=parse_cells, default=None, help="prefill BxL cells or none (CPU: 1x512,1x2048)")
    p.add_argument("--kv-dtypes", type=parse_kv_dtypes, default=A.KV_DTYPES, help="KV caches (float16,int8,int4)")
    p.add_argument("--q-heads", type=positive_int, default=A.Heads.q_heads, help="query heads (32: Llama-3-8B)")
    p.add_argument("--kv-heads", type=positive_int, default=A.Heads.kv_heads, help="KV heads (8)")
    p.add_argument("--head-dim", type=positive_int, default=A.Heads.head_dim, help="head dim (128)")
    p.add_argument("--page-size", type=positive_int, default=A.Heads.page_size, help="tokens per KV page (16)")
    p.add_argument("--backends", type=parse_backends, default=None, help="lowbit backends (default: tvm on CPU)")
    p.add_argument("--repeats", type=positive_int, default=5, help="timed samples per row, median reported (5)")
    p.add_argument("--threads", type=positive_int, default=None, help="torch and TVM threads (default: all cores)")
    p.add_argument("--max-baseline-gb", type=positive_float, default=None, help="skip larger cells (CPU 2, CUDA 40)")
    p.add_argument("--quick", action="store_true", help="the goal cell (CPU: B=8 ctx=4096) and one small prefill")
    p.add_argument("--no-flush", action="store_true", help="do not evict caches between samples (hot numbers)")
    p.add_argument("--out", type=Path, default=None, help="directory for the JSON (and plot) outputs")
    p.add_argument("--json", type=Path, default=None, help="JSON path (default bench_attention.json in --out or .)")
    p.add_argument("--plot", type=Path, default=None, help="PNG of decode speedup vs context (needs matplotlib)")


def attention_main(args: argparse.Namespace) -> int:
    """Run `lowbit bench attention` with parsed arguments; 1 if any lowbit row FAILed its check."""
    import json

    A = attention
    heads = A.Heads(args.q_heads, args.kv_heads, args.head_dim, args.page_size)
    if heads.q_heads % heads.kv_heads or heads.head_dim % 8:
        raise SystemExit(
            f"lowbit bench attention: --q-heads {heads.q_heads} must be a multiple of --kv-heads {heads.kv_heads} "
            f"and --head-dim {heads.head_dim} a multiple of 8 (int4 words); e.g. --q-heads 32 --kv-heads 8"
        )
    cells = None
    if args.batch or args.context:
        cells = [(b, c) for b in args.batch or A.BATCHES for c in args.context or A.CONTEXTS]
    start = time.perf_counter()
    report = A.run_report(
        cells,
        args.prefill,
        args.kv_dtypes,
        heads,
        args.backends,
        args.repeats,
        args.quick,
        threads=args.threads,
        flush=not args.no_flush,
        max_baseline_gb=args.max_baseline_gb,
        log=_progress,
    )
    print(A.format_table(report))
    path = args.json or (args.out or Path(os.getcwd())) / "bench_attention.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(A.to_json(report), indent=1) + "\n")
    print(f"wrote {path} ({len(report.rows)} rows, {time.perf_counter() - start:.0f} s)")
    if args.plot is not None:
        plot = A.write_plot(report, args.plot)
        print(f"wrote {plot}" if plot else "no plot: matplotlib is not installed (pip install matplotlib)")
    if report.failures:
        print(f"{len(report.failures)} lowbit row(s) FAILed against torch SDPA on the same dequantized data")
        return 1
    return 0


__all__ = [
    "add_arguments",
    "add_attention_arguments",
    "attention_main",
    "main",
    "parse_backends",
    "parse_cells",
    "parse_dtypes",
    "parse_kv_dtypes",
    "parse_layers",
    "parse_ms",
]
