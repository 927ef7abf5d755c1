"""Kernel profiles of an artifact on this machine: measured seconds per (planner op, token rows, resource share),
the `KernelProfile` (cost.py) that `lowbit plan --profile` calibrates the cost model with.

    prof = profile_artifact("artifacts/tiny-llama", rows=(8, 16, 32, 64))     # CPU: shares = threads / cores
    save_profile(prof, default_profile_path("artifacts/tiny-llama"))        # the per-artifact cache

How: one `ModelRunner` per row count runs a synthetic dense step of the workload's mix (decode rows first, then
prefill chunks, as `measure.py` builds it), node by node through the executor's own rules, timing each node;
a node's time goes to the planner op whose runtime pattern (ops.PATTERNS) matches its name, summed over the
layers and divided by their number (the per-layer op time the simulator asks for). On a CPU a share is
`threads / cores`: the timing thread is pinned to the first `threads` cores and torch and TVM get that many
threads. Medians over `repeats` steps after `warmup` untimed ones.

What a profile does not capture: the decode / prefill mix inside an attention piece (a profile row of
attention is measured at the workload's mix; the simulator applies it to pieces by row count), and the
interference of concurrent units (the simulator's interference table stays in charge of that).
The profile is written to a cache (`default_profile_path`, keyed by the artifact's manifest) rather than into
the artifact, whose manifest lists every file and whose verification refuses unexpected ones.
"""

from __future__ import annotations

import hashlib
import os
import re
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from lowbit.planner.cost import KernelProfile, ProfileRecord
from lowbit.planner.ops import PATTERNS
from lowbit.planner.workload import CPU_WORKLOAD, Workload

DEFAULT_ROWS = (8, 16, 32, 64)
_COMPILED = {op: re.compile(p) for op, p in PATTERNS.items()}


class ProfileError(ValueError):
    """A profile request that cannot run; the message names the value and the fix."""


def node_op(node_name: str) -> str | None:
    """The planner op (ops.py) a runtime graph node belongs to, by the ops' name patterns; None for nodes outside
    the decoder layers' ops (embedding, final norm, lm_head)."""
    return next((op for op, rx in _COMPILED.items() if rx.fullmatch(node_name)), None)


def scaled_workload(wl: Workload, rows: int) -> Workload:
    """`rows` token rows with `wl`'s decode fraction and contexts (at least one prefill row when `wl` has any)."""
    dec = round(rows * wl.decode_fraction)
    if wl.prefill_tokens and dec == rows and rows > 1:
        dec = rows - 1
    if wl.decode_tokens and dec == 0:
        dec = min(1, rows)
    pre = rows - dec
    return Workload(rows, dec, wl.decode_context, max(1, min(wl.prefill_chunk, pre or 1)), wl.prefill_context)


def default_profile_path(artifact: str | Path) -> Path:
    """Where `lowbit tune --profile` keeps an artifact's profile: $LOWBIT_CACHE (default ~/.cache/lowbit)
    /profiles/<artifact name>-<sha256 of its manifest, 12 hex>.json — a recompiled artifact gets a new one."""
    art = Path(artifact)
    manifest = art / "manifest.json"
    digest = hashlib.sha256(manifest.read_bytes() if manifest.is_file() else str(art.resolve()).encode()).hexdigest()
    root = Path(os.environ.get("LOWBIT_CACHE", Path.home() / ".cache" / "lowbit"))
    return root / "profiles" / f"{art.resolve().name}-{digest[:12]}.json"


def save_profile(profile: KernelProfile, path: str | Path) -> Path:
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_text(profile.to_json())
    return p


def load_profile(path: str | Path) -> KernelProfile:
    return KernelProfile.from_json(Path(path).read_text())


def profile_artifact(
    artifact: str | Path,
    *,
    rows: Sequence[int] = DEFAULT_ROWS,
    threads: Sequence[int] | None = None,
    workload: Workload | None = None,
    repeats: int = 3,
    warmup: int = 1,
    verify: str = "quick",
    progress: Callable[[str], None] | None = None,
) -> KernelProfile:
    """Measured seconds per (op, rows, share) of the artifact's decoder-layer ops on this machine (CPU: `threads`
    per share, default 1 .. all cores; share = threads / cores)."""
    import torch

    from lowbit.codegen.tune.timing import device_name
    from lowbit.compiler.load import load_compiled
    from lowbit.planner.measure import step_runner
    from lowbit.runtime.batch import Batch

    if not rows or any(r < 1 for r in rows):
        raise ProfileError(f"rows {tuple(rows)}: give positive token row counts, e.g. 8 16 32 64")
    if repeats < 1 or warmup < 0:
        raise ProfileError(f"repeats {repeats} must be >= 1 and warmup {warmup} >= 0")
    cores = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else list(range(os.cpu_count() or 1))
    counts = tuple(sorted(set(threads))) if threads else tuple(range(1, len(cores) + 1))
    if any(not 1 <= t <= len(cores) for t in counts):
        raise ProfileError(f"threads {counts}: each must be in 1..{len(cores)} (the cores this process may use)")
    base = workload or CPU_WORKLOAD
    model = load_compiled(artifact, verify=verify)  # type: ignore[arg-type]
    cfg, arch = model.cfg, model.arch
    if str(cfg.target.device) != "cpu":
        raise ProfileError(
            f"artifact {artifact} targets {cfg.target.device}; `lowbit tune --profile` measures CPU artifacts "
            "(shares = threads of this machine's cores); GPU profiles (SM shares) are not implemented"
        )
    times: dict[tuple[str, int, float], float] = {}  # (op, rows, share) -> seconds per layer
    old_threads = torch.get_num_threads()
    old_affinity = set(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None
    try:
        for r in sorted(set(rows)):
            runner, chunks = step_runner(model, scaled_workload(base, r))
            batch = Batch(chunks, cfg.target.page_size)
            for t in counts:
                share = t / len(cores)
                _confine(cores[:t], torch)
                samples: list[dict[str, float]] = []
                for i in range(warmup + repeats):
                    per_op = _timed_step(runner.executor, batch)
                    if i >= warmup:
                        samples.append(per_op)
                for op in samples[0]:
                    times[(op, r, share)] = statistics.median(s[op] for s in samples) / arch.num_layers
                if progress is not None:
                    total = sum(statistics.median(s[o] for s in samples) for o in samples[0])
                    progress(f"rows {r}, {t} thread(s): layers {total * 1e3:.2f} ms")
            del runner
    finally:
        torch.set_num_threads(old_threads)
        if old_affinity is not None:
            os.sched_setaffinity(0, old_affinity)
    records = tuple(ProfileRecord(op, r, s, v) for (op, r, s), v in sorted(times.items()))
    return KernelProfile(device_name("cpu"), records)


def _confine(cores: Sequence[int], torch: Any) -> None:
    """The calling thread on `cores`, torch and TVM with len(cores) threads (TVM's pool is per calling thread;
    the same call as the nano executor's workers make: runtime.config_threadpool, share-all-cores mode)."""
    if hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, set(cores))
    torch.set_num_threads(len(cores))
    tvm = sys.modules.get("tvm")
    if tvm is not None:
        tvm.get_global_func("runtime.config_threadpool")(-3, len(cores), [str(c) for c in cores])


def _timed_step(ex: Any, batch: Any) -> dict[str, float]:
    """Seconds per planner op of one forward step, every node run through the executor's rules in graph order
    (the replayed decode plans are bypassed: each node is launched and timed on its own; CPU only, so a node's
    time is its call's)."""
    from lowbit.runtime.executor import RULES

    ex.batch, ex.all_logits = batch, False
    env: dict[str, Any] = {"input_ids": batch.input_ids, "positions": batch.positions}
    per_op: dict[str, float] = {}
    try:
        for node in ex.nodes:
            args = [env[name] for name in node.inputs]
            t0 = time.perf_counter()
            outs = RULES[node.op](ex, node, args)
            dt = time.perf_counter() - t0
            env.update(zip(node.outputs, outs))
            op = node_op(node.name)
            if op is not None:
                per_op[op] = per_op.get(op, 0.0) + dt
    finally:
        ex.batch = None
    return per_op


__all__ = [
    "DEFAULT_ROWS",
    "ProfileError",
    "default_profile_path",
    "load_profile",
    "node_op",
    "profile_artifact",
    "save_profile",
    "scaled_workload",
]
