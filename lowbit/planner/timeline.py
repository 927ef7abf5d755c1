"""Timelines of a simulated schedule: a text Gantt (always), an SVG (no dependencies) and a PNG (matplotlib,
when installed).

    print(text_gantt(result, plan, width=100))       # one row per unit, one letter per op, '.' idle
    write_svg(result, plan, "plan.svg"); write_png(result, plan, "plan.png")

Each op gets a letter (legend below the chart); a cell shows the op that ran longest within that time slice of
the unit, upper case for even nano-batches and lower case for odd ones, so nano-batch boundaries show.
"""

from __future__ import annotations

import html
from pathlib import Path

from lowbit.planner.nanoplan import NanoPlan
from lowbit.planner.simulate import SimResult

LETTERS = "ABCDEFGHIJKLMNOPQRSTUVWXYZ"
COLORS = ("#4e79a7", "#f28e2b", "#e15759", "#76b7b2", "#59a14f", "#edc948", "#b07aa1", "#ff9da7", "#9c755f",
          "#bab0ac", "#86bcb6", "#d37295")  # fmt: skip


class TimelineError(RuntimeError):
    """A rendering that cannot run here (matplotlib missing); the message says what to install or use."""


def _letters(res: SimResult) -> dict[str, str]:
    ops: list[str] = []
    for t in res.tasks:
        if t.op not in ops:
            ops.append(t.op)
    return {op: LETTERS[i % len(LETTERS)] for i, op in enumerate(ops)}


def text_gantt(res: SimResult, plan: NanoPlan, width: int = 100) -> str:
    """The schedule as text: one row per unit over `width` columns of makespan / width seconds each."""
    letters = _letters(res)
    span = res.makespan or 1.0
    rows = []
    for u, unit in enumerate(plan.units):
        cells = []
        for c in range(width):
            lo, hi = span * c / width, span * (c + 1) / width
            best, best_overlap = ".", 0.0
            for t in res.tasks:
                if t.unit != u:
                    continue
                overlap = min(hi, res.end[t.index]) - max(lo, res.start[t.index])
                if overlap > best_overlap:
                    ch = letters[t.op]
                    best, best_overlap = (ch if t.nano % 2 == 0 else ch.lower()), overlap
            cells.append(best)
        busy = sum(res.end[t.index] - res.start[t.index] for t in res.tasks if t.unit == u)
        rows.append(f"{unit.name:>8} |{''.join(cells)}| {100 * busy / span:5.1f}% busy")
    legend = "  ".join(f"{ch}={op}" for op, ch in letters.items())
    scale = f"{'':>8}  0{'':{width - 12}}{span * 1e3:9.3f} ms"
    return "\n".join([*rows, scale, f"{'':>8}  {legend}  (lower case: odd nano-batches)"])


def write_svg(res: SimResult, plan: NanoPlan, path: str | Path, width: int = 1200) -> Path:
    """The Gantt chart as an SVG file: a lane per unit, a bar per nano-op (colour by op, label when it fits)."""
    lane, top, left = 34, 24, 90
    ops = list(_letters(res))
    span = res.makespan or 1.0
    scale = (width - left - 10) / span
    height = top + lane * len(plan.units) + 40
    out = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" font-family="monospace" '
           f'font-size="10">', f'<text x="4" y="14">makespan {span * 1e3:.3f} ms</text>']  # fmt: skip
    for u, unit in enumerate(plan.units):
        y = top + u * lane
        out.append(f'<text x="4" y="{y + 20}">{html.escape(unit.name)}</text>')
        for t in res.tasks:
            if t.unit != u:
                continue
            x0, x1 = left + res.start[t.index] * scale, left + res.end[t.index] * scale
            color = COLORS[ops.index(t.op) % len(COLORS)]
            title = html.escape(f"{t.label} share {t.share:.2f} {t.kernel}")
            out.append(f'<rect x="{x0:.2f}" y="{y + 4}" width="{max(x1 - x0, 0.5):.2f}" height="{lane - 8}" '
                       f'fill="{color}" stroke="black" stroke-width="0.3"><title>{title}</title></rect>')  # fmt: skip
            if x1 - x0 > 7 * len(t.op):
                out.append(f'<text x="{x0 + 2:.2f}" y="{y + 20}">{html.escape(t.op)}</text>')
    out.append("</svg>")
    p = Path(path)
    p.write_text("\n".join(out))
    return p


def write_png(res: SimResult, plan: NanoPlan, path: str | Path) -> Path:
    """The Gantt chart as a PNG through matplotlib; TimelineError naming the alternatives when it is missing."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise TimelineError(
            "a PNG timeline needs matplotlib, which is not installed; `pip install matplotlib`, or write an SVG "
            "(--timeline plan.svg) or the text Gantt (printed by `lowbit plan --gantt`)"
        ) from None
    ops = list(_letters(res))
    fig, ax = plt.subplots(figsize=(16, 1 + 0.6 * len(plan.units)))
    for t in res.tasks:
        s, e = res.start[t.index] * 1e3, res.end[t.index] * 1e3
        ax.barh(t.unit, e - s, left=s, color=COLORS[ops.index(t.op) % len(COLORS)], edgecolor="black", linewidth=0.3)
    ax.set_yticks(range(len(plan.units)), [u.name for u in plan.units])
    ax.set_xlabel("ms")
    ax.legend(handles=[plt.Rectangle((0, 0), 1, 1, color=COLORS[i % len(COLORS)]) for i in range(len(ops))],
              labels=ops, ncol=min(len(ops), 6), fontsize=7, loc="upper right")  # fmt: skip
    fig.tight_layout()
    p = Path(path)
    fig.savefig(p, dpi=120)
    plt.close(fig)
    return p


__all__ = ["TimelineError", "text_gantt", "write_png", "write_svg"]
