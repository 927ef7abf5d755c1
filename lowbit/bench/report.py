"""Writing a GEMM benchmark report: a fixed-width table, JSON, and an optional speedup-vs-M plot."""

from __future__ import annotations

import dataclasses
import json
import math
import statistics
from pathlib import Path
from typing import Any

from lowbit.bench.gemm import DRAM, STREAM, Report, Row
from lowbit.bench.roofline import Machine, linear_flops, roofline_ms

COLUMNS = (  # header, width, format of one row's value
    ("M", 5, lambda r: f"{r.M}"),
    ("N", 6, lambda r: f"{r.N}"),
    ("K", 6, lambda r: f"{r.K}"),
    ("method", 14, lambda r: r.method),
    ("dtype", 9, lambda r: r.dtype),
    ("backend", 9, lambda r: r.backend),
    ("median ms", 10, lambda r: f"{r.median_ms:.3f}"),
    ("min ms", 9, lambda r: f"{r.min_ms:.3f}"),
    ("max ms", 9, lambda r: f"{r.max_ms:.3f}"),
    ("MB", 8, lambda r: f"{r.bytes / 1e6:.2f}"),
    ("roof ms", 8, lambda r: f"{r.roofline_ms:.3f}"),
    ("%roof", 6, lambda r: f"{100 * r.roofline_fraction:.0f}%"),
    ("x fp32", 7, lambda r: f"{r.speedup_fp32:.2f}"),
    ("x bf16", 7, lambda r: f"{r.speedup_bf16:.2f}"),
    ("rel err", 8, lambda r: "-" if r.rel_error is None else f"{r.rel_error:.1e}"),
)
LEFT = {"method", "dtype", "backend"}


# The GEMM goals (W4 = int4 / uint4, group 128), judged on the rows of one run: (device, M range, method) ->
# thresholds. A16 = the lowbit and lowbit_fma rows on a GPU (fp16 activations) and lowbit_bf16 (bfloat16 ones);
# A32 = the CPU's lowbit rows (fp32); A8 = lowbit_a8 (int8 activations, the CPU decode path), reported beside them; W4A8
# (QoQ) = the GPU's lowbit_w4a8 rows (w4a8_group uint4 weights, int8 x per token), judged at M >= 1024 only.
CPU_GOALS = (  # (M values, min %roof, min x fp32, min x bf16)
    ((1,), 0.8, 7.0, 3.5),
    ((16,), None, 3.0, 1.0),
    ((64, 256), None, None, 1.0),
)
GPU_GOALS = (
    ((1,), 0.8, None, 3.5),
    ((2, 4, 8, 16), None, None, 3.5),
    ((64,), None, None, 2.0),
)
GPU_W4A8_GOALS = (((1024, 2048, 4096, 8192), None, None, 1.3),)
# goal rows: method -> name. The CPU's `lowbit` rows take fp32 activations (W4A32: an fp32 FMA loop, which the issue
# says cannot meet the M >= 64 goal); they are judged by the same targets and named for what they are
ACTIVATIONS = {
    "lowbit": "A16",
    "lowbit_fma": "A16 (dot-free GEMV)",
    "lowbit_bf16": "A16 (bf16 x)",
    "lowbit_a8": "A8",
    "lowbit_w4a8": "A8 (QoQ)",
}
CPU_ACTIVATIONS = {**ACTIVATIONS, "lowbit": "A32 (fp32 x)"}
PROPORTION_SLACK = 1.1  # W3 / W2 "faster than W4 in proportion to their bytes": time ratio <= 1.1 x byte ratio


def goals(report: Report) -> list[dict[str, Any]]:
    """The issue's targets this run measured (group 128 rows only): per int4 lowbit / lowbit_a8 row at the
    goal M values, the fraction of the roofline and the speedups over torch fp32 / bf16; and at M = 1 the
    time of each int3 / int2 row against the int4 row of the same layer and method, in proportion to bytes."""
    if report.config.get("group_size", 128) != 128:
        return []
    cuda = report.machine.device.startswith("cuda")
    table, names = (GPU_GOALS, ACTIVATIONS) if cuda else (CPU_GOALS, CPU_ACTIVATIONS)
    out = []
    streams = {(r.N, r.K, r.M): r for r in report.rows if r.method == STREAM}
    reads: dict[tuple[int, int, int], list[Row]] = {}
    for r in report.rows:
        if r.method in (STREAM, DRAM):
            reads.setdefault((r.N, r.K, r.M), []).append(r)
    for r in report.rows:
        if r.method not in ACTIVATIONS or r.dtype not in ("int4", "uint4"):
            continue
        rules = table if r.method != "lowbit_w4a8" else GPU_W4A8_GOALS if cuda else ()
        for ms, roof, fp32, bf16 in rules:
            if r.M not in ms:
                continue
            name = f"W4{names[r.method]} {r.backend} M={r.M} {r.N}x{r.K}"
            roof_value, roof_text = paired_roofline(r, reads.get((r.N, r.K, r.M), []), report.machine)
            for label, value, target in (
                ("of the roofline", roof_value, roof),
                ("x torch fp32", r.speedup_fp32, fp32),
                ("x torch bf16", r.speedup_bf16, bf16),
            ):
                if target is None:
                    continue
                shown = f"{100 * value:.0f}%" if label == "of the roofline" else f"{value:.2f}"
                want = f"{100 * target:.0f}%" if label == "of the roofline" else f"{target:g}"
                met = math.isfinite(value) and value >= target  # NaN never passes
                goal = f"{name}: {shown} {label} (target >= {want})"
                if label == "of the roofline" and roof_text:
                    goal += f" [{roof_text}]"
                stream = streams.get((r.N, r.K, r.M))
                if label == "of the roofline" and stream is not None:
                    # beside it, not instead: the rate a plain read of the weight's bytes got in the same rounds
                    rate = (r.bytes / r.median_ms) / (stream.bytes / stream.median_ms)
                    goal += f" [{100 * rate:.0f}% of the stream row's bytes/s, side by side]"
                target_text = f"{label.removeprefix('of the ')} >= {want}"
                out.append(
                    {
                        "goal": goal,
                        "value": value,
                        "met": met,
                        "path": names[r.method],
                        "target": f"M={r.M} {r.N}x{r.K}: {target_text}",
                        "shown": shown,
                        "eligible": _goal_path(r.method, r.M, cuda),
                    }
                )
    w4 = {(r.N, r.K, r.method, r.backend): r for r in report.rows if r.M == 1 and r.dtype == "int4"}
    for r in report.rows:
        base = w4.get((r.N, r.K, r.method, r.backend))
        if r.M != 1 or r.dtype not in ("int3", "int2") or base is None or not r.method.startswith("lowbit"):
            continue
        t_ratio, paired = paired_ratio(r, base)
        b_ratio = r.bytes / base.bytes
        met = math.isfinite(t_ratio) and t_ratio <= PROPORTION_SLACK * b_ratio
        what = f"{r.dtype} {r.method} {r.backend} M=1 {r.N}x{r.K}: {t_ratio:.2f}x the int4 time"
        what += f" at {b_ratio:.2f}x its bytes"
        if paired:
            pooled = r.median_ms / base.median_ms
            what += f" (median of {len(r.round_ms)} rounds' ratios; pooled medians {pooled:.2f}x)"
        out.append(
            {
                "goal": f"{what} (target <= {PROPORTION_SLACK:g} x the byte ratio)",
                "value": t_ratio,
                "met": met,
                "path": f"{r.method} {r.backend}",
                "shown": f"{t_ratio:.2f}x",
                "target": f"{r.dtype} M=1 {r.N}x{r.K}: time <= {PROPORTION_SLACK:g} x {b_ratio:.2f} (bytes vs int4)",
                "lower_is_better": True,
            }
        )
    return out


def paired_ratio(row: Row, base: Row) -> tuple[float, bool]:
    """(row's time / base's time, whether paired): with two or more rounds each (cache "rotate"; the rows of
    one (layer, M) share their rounds), the median over rounds of the ratio of the two rows' medians in that
    round, so a change of the shared VM's memory rate between rounds (32-65 GB/s within minutes here) moves
    both sides of each ratio; else the ratio of the pooled medians."""
    if len(row.round_ms) >= 2 and len(row.round_ms) == len(base.round_ms):
        return float(statistics.median(a / b for a, b in zip(row.round_ms, base.round_ms))), True
    return row.median_ms / base.median_ms, False


def paired_roofline(row: Row, reads: list[Row], machine: Machine) -> tuple[float, str]:
    """(row's fraction of the roofline, how it was judged). With rounds (cache "rotate") and the plain reads
    timed in them (the `stream` and `dram` rows of the same layer and M): the median over rounds of the
    fraction of that round's roofline, whose bandwidth is the faster of the two reads' medians in the round
    (a shared VM's memory rate moves by up to 2x within minutes: session 52's run read 28.0 GB/s at its start,
    28-30 in the M = 1 rounds and 55.5 at its end); the text also gives the fraction against the run's
    ceiling (`row.roofline_fraction`). Else that fraction and no text."""
    n = len(row.round_ms)
    if n < 2 or not reads or any(len(r.round_ms) != n for r in reads):
        return row.roofline_fraction, ""
    peak = machine.peak(row.peak_dtype)
    flops = linear_flops(row.M, row.N, row.K)
    bws = [max(r.bytes / r.round_ms[i] / 1e6 for r in reads) for i in range(n)]  # GB/s per round
    fractions = [roofline_ms(row.bytes, flops, bw, peak) / ms for bw, ms in zip(bws, row.round_ms)]
    value = float(statistics.median(fractions))
    text = (
        f"median of {n} rounds' fractions, each against the bandwidth read in its round ({min(bws):.1f}-"
        f"{max(bws):.1f} GB/s); against the run's ceiling of {machine.bandwidth_gbs:.1f} GB/s: "
        f"{100 * row.roofline_fraction:.0f}%"
    )
    return value, text


def _goal_path(method: str, m: int, cuda: bool) -> bool:
    """Whether a row's path is one the issue's goal at M = m names: W4A16 at M = 1 and 16 (bf16 activations on
    the CPU, the GPU's fp16 rows: the default GEMV and the dot-free one), any lowbit path from M = 64 ("the
    VNNI int8 path of W4A8 or a bf16 dot"), and QoQ's W4A8 rows for their own goal."""
    if method == "lowbit_w4a8" or m >= 64:
        return True
    return method == "lowbit_bf16" or (cuda and method in ("lowbit", "lowbit_fma"))


def verdicts(judged: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One verdict per target of `goals` (layer, M, threshold): met when the best of the paths the goal names
    meets it (`_goal_path`; the W3 / W2 proportions: every lowbit path). `paths` lists those paths' values,
    `others` the remaining paths' (judged in `goals` too, not by the issue), so no miss is hidden."""
    by_target: dict[str, list[dict[str, Any]]] = {}
    for g in judged:
        by_target.setdefault(g["target"], []).append(g)
    out = []
    for target, gs in by_target.items():
        named = [g for g in gs if g.get("eligible", True)]
        if not named:
            continue
        finite = [g for g in named if math.isfinite(g["value"])]  # NaN never passes
        lower = named[0].get("lower_is_better", False)
        best = (min if lower else max)(finite, key=lambda g: g["value"]) if finite else named[0]
        out.append(
            {
                "target": target,
                "best": best["path"],
                "value": best["value"],
                "met": bool(finite) and best["met"],
                "paths": ", ".join(f"{g['path']} {g['shown']}" for g in named),
                "others": ", ".join(f"{g['path']} {g['shown']}" for g in gs if not g.get("eligible", True)),
            }
        )
    return out


def _cell(text: str, header: str, width: int) -> str:
    return text.ljust(width) if header in LEFT else text.rjust(width)


def format_table(report: Report, *, machine_header: bool = True) -> str:
    """The machine header (unless already printed), the config, one line per row (a blank line between
    (layer, M) blocks), then the notes."""
    m = report.machine
    lines = [f"# {m.header()}"] if machine_header else []
    c = report.config
    if c:
        lines.append(
            f"# group {c.get('group_size')} | repeats {c.get('repeats')} (median, warm-up {c.get('warmup')}) | "
            f"caches: {c.get('cache', 'flush')}: {c.get('flush')} | backends {c.get('backends') or 'none'} | "
            f"tune {c.get('tune')}"
        )
    lines.append(
        "# MB: bytes the roofline counts (stored weight + scales + zeros + x + y); roof ms = max(MB/BW, flops/peak);"
    )
    lines.append(
        "# %roof = roof ms / median ms (peak = torch's own matmul rate: a faster kernel passes 100%); x fp32 / x bf16"
        " = torch time / this time (same M, N, K, same run)"
    )
    header = " ".join(_cell(h, h, w) for h, w, _ in COLUMNS) + "  note"
    lines += [header, "-" * len(header)]
    block = None
    for r in report.rows:
        if block is not None and block != (r.N, r.K, r.M):
            lines.append("")
        block = (r.N, r.K, r.M)
        lines.append(" ".join(_cell(fmt(r), h, w) for h, w, fmt in COLUMNS) + (f"  {r.note}" if r.note else ""))
    judged = goals(report)
    lines += [f"goal: {g['goal']}: {'met' if g['met'] else 'NOT met'}" for g in judged]
    lines += [
        f"verdict: {v['target']}: {'met' if v['met'] else 'NOT met'} ({v['paths']}"
        + (f"; not a goal path here: {v['others']})" if v["others"] else ")")
        for v in verdicts(judged)
    ]
    for note in report.notes:
        lines.append(f"note: {note}")
    return "\n".join(lines)


def _clean(v: Any) -> Any:
    """JSON has no NaN/inf: write null."""
    if isinstance(v, float) and not math.isfinite(v):
        return None
    if isinstance(v, dict):
        return {k: _clean(x) for k, x in v.items()}
    if isinstance(v, list | tuple):
        return [_clean(x) for x in v]
    return v


def to_json(report: Report) -> dict[str, Any]:
    judged = goals(report)
    return _clean(
        {
            "machine": report.machine.to_json(),
            "config": report.config,
            "rows": [dataclasses.asdict(r) for r in report.rows],
            "goals": judged,
            "verdicts": verdicts(judged),
            "notes": report.notes,
        }
    )


def write_json(report: Report, path: str | Path) -> Path:
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_text(json.dumps(to_json(report), indent=1) + "\n")
    return p


def _series(rows: list[Row]) -> dict[tuple[int, int], dict[str, list[tuple[int, float]]]]:
    """(N, K) -> label -> [(M, speedup vs fp32)] for every non-fp32 method."""
    out: dict[tuple[int, int], dict[str, list[tuple[int, float]]]] = {}
    for r in rows:
        if r.method == "torch_fp32":
            continue
        label = r.method if r.backend == "torch" and r.method == "torch_bf16" else f"{r.method} {r.dtype} {r.backend}"
        out.setdefault((r.N, r.K), {}).setdefault(label, []).append((r.M, r.speedup_fp32))
    return out


def write_plot(report: Report, path: str | Path) -> Path | None:
    """Speedup over torch fp32 vs M, one panel per layer. None (and nothing written) without matplotlib."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    series = _series(report.rows)
    fig, axes = plt.subplots(1, max(1, len(series)), figsize=(6 * max(1, len(series)), 4.5), squeeze=False)
    for ax, ((N, K), lines) in zip(axes[0], series.items()):
        for label, pts in sorted(lines.items()):
            ms, ys = zip(*sorted(pts))
            ax.plot(ms, ys, marker="o", label=label)
        ax.axhline(1.0, color="gray", linewidth=0.8)
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_xlabel("M (tokens)")
        ax.set_ylabel("speedup over torch fp32 F.linear")
        ax.set_title(f"{N}x{K} — {report.machine.name}")
        ax.legend(fontsize=7)
    fig.tight_layout()
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(p, dpi=120)
    plt.close(fig)
    return p


__all__ = ["format_table", "goals", "to_json", "verdicts", "write_json", "write_plot"]
