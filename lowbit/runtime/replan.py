"""`Replanner`: the artifact's pipeline plan searched again when the served mix drifts from the one it was
searched for (issue 7: a NanoFlow plan is searched for one decode/prefill mix; serving moves).

The engine feeds every step's chunks (`observe`). Every `every` steps the window of recent steps becomes an
observed mix (`lowbit.planner.artifact.observed_mix`) and a background thread runs
`research_if_drifted(searched, mix)`; the step loop never waits for a search. When a search found a new plan,
the next `observe` returns it and the engine's runner switches to it between two steps (`ModelRunner.use_plan`).

The first check also builds the reference search (`plan_for_artifact` for the artifact's model on its device:
the same search `lowbit compile` ran for plan.json), so nothing is searched at start-up.
"""

from __future__ import annotations

import logging
from collections import deque
from collections.abc import Callable, Iterable
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

log = logging.getLogger("lowbit.engine")

RESEARCH_EVERY = 64  # steps between drift checks


class Replanner:
    """Watches the served mix and re-searches the plan in the background (see the module docstring).

    `initial`: a callable returning the `SearchedPlan` the running plan stands for (called once, on the worker
    thread); `research(searched, observed)`: a new `SearchedPlan` or None (default: the planner's
    `research_if_drifted`)."""

    def __init__(
        self,
        initial: Callable[[], Any],
        *,
        every: int = RESEARCH_EVERY,
        research: Callable[[Any, Any], Any] | None = None,
    ) -> None:
        if every < 1:
            raise ValueError(f"research_every = {every}: give a positive number of steps (0 turns re-search off)")
        self.every = every
        self._initial = initial
        self._research = research
        self._searched: Any = None
        self._window: deque[list[tuple[int, int]]] = deque(maxlen=every)
        self._steps = 0
        self._pool: ThreadPoolExecutor | None = None
        self._pending: Future[Any] | None = None
        self.switches = 0  # plans switched to so far
        self.failed: str | None = None  # why re-search stopped (a search raised); None while it runs

    def observe(self, chunks: Iterable[tuple[int, int]]) -> Any:
        """Record one step's chunks as (num_cached, num_new); the `PipelinePlan` to switch to when a background
        search found one since the last call, else None."""
        self._window.append([(int(c), int(n)) for c, n in chunks])
        self._steps += 1
        new = self._collect()
        if new is None and self.failed is None and self._pending is None and self._steps % self.every == 0:
            if self._pool is None:
                self._pool = ThreadPoolExecutor(1, thread_name_prefix="lowbit-replan")
            self._pending = self._pool.submit(self._search, list(self._window))
        return new

    def _search(self, window: list[list[tuple[int, int]]]) -> Any:
        from lowbit.planner.artifact import observed_mix, research_if_drifted

        if self._searched is None:
            self._searched = self._initial()
        research = self._research or research_if_drifted
        return research(self._searched, observed_mix(window))

    def _collect(self) -> Any:
        fut = self._pending
        if fut is None or not fut.done():
            return None
        self._pending = None
        try:
            found = fut.result()
        except Exception as e:  # a planner failure must not take serving down: keep the running plan
            self.failed = f"{type(e).__name__}: {e}"
            log.warning("plan re-search failed, keeping the running plan and not re-searching again: %s", self.failed)
            return None
        if found is None:
            return None
        self._searched = found
        self.switches += 1
        log.info("served mix drifted: switching to a plan searched for %s", getattr(found, "workload", "?"))
        return found.pipeline

    def close(self) -> None:
        """Stop the worker thread (a running search finishes in the background; its result is dropped)."""
        if self._pool is not None:
            self._pool.shutdown(wait=False, cancel_futures=True)
            self._pool = None
        self._pending = None


__all__ = ["RESEARCH_EVERY", "Replanner"]
