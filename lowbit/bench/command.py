"""Command-line arguments of `lowbit bench gemm` (also used by benchmarks/gemm.py)."""

from __future__ import annotations

import argparse
import os
import re
import sys
import time
from pathlib import Path

from lowbit.bench import gemm

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
    p.add_argument("--M", type=parse_ms, default=None, help="token counts, e.g. 1,4,16 (default 1,4,16,64,256)")
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
    p.add_argument("--no-flush", action="store_true", help="do not evict caches between samples (hot numbers)")
    p.add_argument("--out", type=Path, default=None, help="directory for the JSON (and plot) outputs")
    p.add_argument("--json", type=Path, default=None, help="JSON output path (default bench_gemm.json in --out or .)")
    p.add_argument("--plot", type=Path, default=None, help="PNG of speedup vs M (needs matplotlib)")


def _progress(line: str) -> None:
    """The machine header and layer lines go to stdout; per-row timings (indented) to stderr as progress."""
    print(line, file=sys.stderr if line.startswith("  ") else sys.stdout, flush=True)


def main(args: argparse.Namespace) -> int:
    """Run `lowbit bench gemm` with parsed arguments; 1 if any lowbit row mismatched its reference."""
    from lowbit.bench.report import format_table, write_json, write_plot

    Ms = args.M or (gemm.QUICK_MS if args.quick else gemm.MS)
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
        flush=not args.no_flush,
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


__all__ = ["add_arguments", "main", "parse_backends", "parse_dtypes", "parse_layers", "parse_ms"]
