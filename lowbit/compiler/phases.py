"""Phase timing and progress for `lowbit compile`: each phase is timed for the report and shows a tqdm bar
(with ETA) when it has countable steps; `quiet` turns the bars off (tests, CI logs)."""

from __future__ import annotations

import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from tqdm import tqdm


@dataclass
class Phases:
    quiet: bool = False
    times: list[tuple[str, float]] = field(default_factory=list)

    @contextmanager
    def phase(self, name: str, total: int | None = None) -> Iterator[Any]:
        """`with phases.phase("quantize", total=n) as bar: ... bar.update()`; the bar is a no-op when quiet."""
        t0 = time.perf_counter()
        bar = tqdm(
            total=total,
            desc=f"{name:<10}",
            disable=self.quiet,
            file=sys.stderr,
            leave=True,
            unit="step",
            bar_format="{desc} {percentage:3.0f}%|{bar:24}| {n_fmt}/{total_fmt} [{elapsed}<{remaining}] {postfix}"
            if total
            else "{desc} {elapsed} {postfix}",
        )
        try:
            yield bar
        finally:
            bar.close()
            self.times.append((name, time.perf_counter() - t0))

    def report(self) -> list[dict[str, Any]]:
        return [{"name": n, "seconds": round(s, 3)} for n, s in self.times]


__all__ = ["Phases"]
