"""Reporting benchmark runs side by side: one column per run (e.g. per schedule) and the ratio of two of them;
JSON without inf / NaN.

    print(side_by_side([("output tok/s", "output_throughput", "{:.1f}")], runs, ["unsplit", "nano"]))

The ratio column is `runs[num] / runs[den]` (default: the last run over the first, i.e. nano / unsplit), so
> 1 means the second schedule has more of that quantity (better for throughputs, worse for latencies).
`parse_schedules` reads the `--schedules` flag both serving benchmarks share; `schedule_ratios` is their JSON's
`ratios` entry.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from lowbit.serve.config import CHOICES

Row = tuple[str, str, str]  # (label, key in each run's dict, format of one value)
SCHEDULES = CHOICES["schedule"]  # the engine's (`lowbit serve --schedule`, `LLM(schedule=...)`)


def parse_schedules(text: str) -> list[str]:
    """`--schedules`: a comma list of SCHEDULES, in the order the runs go (repeats allowed)."""
    out = [s.strip() for s in text.split(",") if s.strip()]
    if not out or any(s not in SCHEDULES for s in out):
        raise ValueError(f"--schedules {text!r}: use a comma list of {', '.join(SCHEDULES)} (e.g. unsplit,nano)")
    return out


def ratio(a: Any, b: Any) -> float | None:
    """a / b, or None when either is missing, not finite, or b is 0."""
    if not isinstance(a, int | float) or not isinstance(b, int | float):
        return None
    if not (math.isfinite(a) and math.isfinite(b)) or b == 0:
        return None
    return float(a) / float(b)


def ratios(runs: Sequence[Mapping[str, Any]], keys: Sequence[str], num: int = -1, den: int = 0) -> dict[str, Any]:
    """{key: runs[num][key] / runs[den][key]} for every key (None where undefined)."""
    return {k: ratio(runs[num].get(k), runs[den].get(k)) for k in keys}


def schedule_ratios(runs: Sequence[Mapping[str, Any]]) -> dict[str, dict[str, Any]]:
    """{"<last schedule>/<first schedule>": ratios of every numeric value of the first run}; {} for one run."""
    if len(runs) < 2:
        return {}
    keys = [k for k, v in runs[0].items() if isinstance(v, int | float) and not isinstance(v, bool)]
    return {f"{runs[-1]['schedule']}/{runs[0]['schedule']}": ratios(runs, keys)}


def json_safe(v: Any) -> Any:
    """JSON has no inf / NaN: inf -> "inf" (vLLM writes an infinite request rate so), NaN -> null."""
    if isinstance(v, float) and not math.isfinite(v):
        return None if math.isnan(v) else ("inf" if v > 0 else "-inf")
    if isinstance(v, dict):
        return {k: json_safe(x) for k, x in v.items()}
    if isinstance(v, list | tuple):
        return [json_safe(x) for x in v]
    return v


def write_json(report: Mapping[str, Any], path: str | Path) -> Path:
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_text(json.dumps(json_safe(dict(report)), indent=1) + "\n")
    return p


def side_by_side(
    rows: Sequence[Row],
    runs: Sequence[Mapping[str, Any]],
    labels: Sequence[str],
    *,
    num: int = -1,
    den: int = 0,
    label_width: int = 24,
    col_width: int = 12,
) -> str:
    """One line per row: the label, each run's value, and (with two or more runs) the ratio num/den."""
    if len(labels) != len(runs):
        raise ValueError(f"{len(labels)} labels for {len(runs)} runs; give one label per run")
    with_ratio = len(runs) >= 2
    ratio_head = f"{labels[num]}/{labels[den]}" if with_ratio else ""
    head = "metric".ljust(label_width) + "".join(str(lb).rjust(col_width) for lb in labels)
    head += ratio_head.rjust(max(col_width, len(ratio_head) + 2)) if with_ratio else ""
    lines = [head, "-" * len(head)]
    for label, key, fmt in rows:
        cells = []
        for run in runs:
            v = run.get(key)
            cells.append(("-" if v is None else fmt.format(v)).rjust(col_width))
        line = label.ljust(label_width) + "".join(cells)
        if with_ratio:
            r = ratio(runs[num].get(key), runs[den].get(key))
            line += ("-" if r is None else f"{r:.2f}x").rjust(max(col_width, len(ratio_head) + 2))
        lines.append(line)
    return "\n".join(lines)


__all__ = [
    "SCHEDULES",
    "Row",
    "json_safe",
    "parse_schedules",
    "ratio",
    "ratios",
    "schedule_ratios",
    "side_by_side",
    "write_json",
]
