"""Tensor parallel, side by side in one process: `python -m lowbit.parallel.bench TP1_ARTIFACT TP2_ARTIFACT`.

The same greedy workload (random prompts, fixed lengths, every sequence in one batch) through `lowbit.LLM`:
the tp = 1 artifact unsplit and nano, the tp = 2 artifact unsplit, nano (default_plan with tensor_parallel 2:
the all_reduce nano-ops on a network unit) and "nano/c" (the tp = 1 default plan: the all_reduce nano-ops on
the compute unit). Per configuration: generated tokens/s, per step the wall time and rank 0's time inside
all_reduce (summed over its collectives: on a network unit that time may overlap compute), and whether every
configuration produced the same tokens; then gloo's all_reduce latency with no compute around it.
"""

from __future__ import annotations

import argparse
import json
import statistics
import threading
import time
from collections.abc import Callable
from typing import Any

import torch

from lowbit.parallel.collectives import TPGroup


class _Clock:
    """Seconds and calls inside TPGroup.all_reduce_ (every group of this process) while installed."""

    def __init__(self) -> None:
        self.seconds, self.calls = 0.0, 0
        self.lock = threading.Lock()
        self.real: Callable[..., Any] = TPGroup.all_reduce_

    def __enter__(self) -> _Clock:
        real = self.real

        def timed(group: TPGroup, t: torch.Tensor) -> None:
            t0 = time.perf_counter()
            real(group, t)
            with self.lock:
                self.seconds += time.perf_counter() - t0
                self.calls += 1

        setattr(TPGroup, "all_reduce_", timed)  # noqa: B010
        return self

    def __exit__(self, *exc: Any) -> None:
        setattr(TPGroup, "all_reduce_", self.real)  # noqa: B010


def measure(
    artifact: str, schedule: str, prompts: list[list[int]], output_len: int, repeats: int, plan: Any = None
) -> tuple[dict[str, Any], list[list[int]]]:
    from lowbit.llm import LLM
    from lowbit.runtime.sampler import SamplingParams

    params = SamplingParams(max_tokens=output_len, ignore_eos=True)
    t0 = time.perf_counter()
    llm = LLM(artifact, schedule=schedule, max_num_seqs=len(prompts), plan=plan)
    start_s = time.perf_counter() - t0
    try:
        runner = llm.engine.runner
        steps: list[float] = []
        real_step = runner.step

        def timed_step(*a: Any, **k: Any) -> Any:
            s0 = time.perf_counter()
            out = real_step(*a, **k)
            steps.append(time.perf_counter() - s0)
            return out

        setattr(runner, "step", timed_step)  # noqa: B010
        tokens = [o.token_ids for o in llm.generate(prompts, params)]  # warm-up: builds the kernels
        walls, reduce_s, reduce_n, nsteps, step_s = [], 0.0, 0, 0, 0.0
        for _ in range(repeats):
            steps.clear()
            with _Clock() as clock:
                g0 = time.perf_counter()
                out = llm.generate(prompts, params)
                walls.append(time.perf_counter() - g0)
            assert [o.token_ids for o in out] == tokens
            reduce_s += clock.seconds
            reduce_n += clock.calls
            nsteps += len(steps)
            step_s += sum(steps)
        wall = statistics.median(walls)
        row = {
            "artifact": artifact, "schedule": llm.engine.schedule_mode, "start_s": round(start_s, 2),
            "tokens_per_s": round(len(prompts) * output_len / wall, 1),
            "best_tokens_per_s": round(len(prompts) * output_len / min(walls), 1),
            "steps": nsteps // repeats, "step_ms": round(1e3 * step_s / nsteps, 3),
            "all_reduce_per_step": reduce_n / nsteps, "all_reduce_ms_per_step": round(1e3 * reduce_s / nsteps, 3),
        }  # fmt: skip
        return row, tokens
    finally:
        llm.close()


def all_reduce_latency_ms(rows: int, hidden: int, iters: int = 200) -> float:
    """Median ms of one gloo all_reduce of a [rows, hidden] fp32 tensor between two ranks on two threads of this
    process over loopback (what a step's all_reduce costs when both ranks arrive together)."""
    from lowbit.parallel.collectives import free_port

    port = free_port()
    times: list[list[float]] = [[], []]

    def rank(r: int) -> None:
        g = TPGroup.connect(r, 2, port)
        x = torch.ones(rows, hidden)
        for _ in range(iters):
            t0 = time.perf_counter()
            g.all_reduce_(x)
            times[r].append(time.perf_counter() - t0)

    threads = [threading.Thread(target=rank, args=(r,)) for r in (0, 1)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return 1e3 * statistics.median(times[0][iters // 10 :])


def _hidden_size(artifact: str) -> int:
    from lowbit.compiler.load import load_compiled

    return int(load_compiled(artifact, verify="none").arch.hidden_size)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m lowbit.parallel.bench", description=__doc__.split("\n\n")[0])
    ap.add_argument("tp1_artifact")
    ap.add_argument("tp2_artifact")
    ap.add_argument("--num-prompts", type=int, default=16)
    ap.add_argument("--input-len", type=int, default=32)
    ap.add_argument("--output-len", type=int, default=32)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", help="also write the rows here")
    args = ap.parse_args(argv)
    g = torch.Generator().manual_seed(args.seed)
    prompts = [torch.randint(3, 500, (args.input_len,), generator=g).tolist() for _ in range(args.num_prompts)]
    rows: list[dict[str, Any]] = []
    outs = []
    from lowbit.runtime.plan import default_plan

    for name, path, schedule, plan in (
        ("tp1 unsplit", args.tp1_artifact, "unsplit", None),
        ("tp1 nano", args.tp1_artifact, "nano", None),
        ("tp2 unsplit", args.tp2_artifact, "unsplit", None),
        ("tp2 nano", args.tp2_artifact, "nano", None),  # default_plan(tensor_parallel=2): a network unit
        ("tp2 nano/c", args.tp2_artifact, "nano", default_plan()),  # all_reduce on the compute unit instead
    ):
        row, tokens = measure(path, schedule, prompts, args.output_len, args.repeats, plan)
        rows.append({"config": name} | row)
        outs.append(tokens)
        print(
            f"{name:12s} {row['tokens_per_s']:9.1f} tok/s (best {row['best_tokens_per_s']:.1f})  "
            f"{row['steps']} steps, {row['step_ms']:.2f} ms/step, all_reduce {row['all_reduce_per_step']:.1f}/step "
            f"{row['all_reduce_ms_per_step']:.2f} ms/step, start {row['start_s']:.1f} s",
            flush=True,
        )
    same = all(o == outs[0] for o in outs)
    print(f"same tokens in every configuration: {same}")
    hidden = _hidden_size(args.tp1_artifact)
    lat = {}
    for m in sorted({args.num_prompts // 2, args.num_prompts}):
        lat[m] = all_reduce_latency_ms(m, hidden)
        print(f"gloo all_reduce of [{m}, {hidden}] fp32 between 2 threads, no compute: {lat[m]:.3f} ms")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"workload": vars(args), "rows": rows, "same_tokens": same, "all_reduce_ms": lat}, f, indent=1)
    return 0 if same else 1


if __name__ == "__main__":
    raise SystemExit(main())
