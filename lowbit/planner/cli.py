"""`lowbit plan [ARTIFACT]`: the nano-batch planner's report for a model on a device.

    lowbit plan --model llama-2-70b --hardware a100 --tp 8                       # NanoFlow's 70B analysis
    lowbit plan --model llama-3-8b --hardware h200 --precision w4a8 --gantt
    lowbit plan artifacts/tiny-llama --hardware probe --measure --write-plan artifacts/tiny-llama/plan.json

It prints the optimal throughput bound (NanoFlow: Compute / (2 · P_model) tokens/s/device), the unsplit,
split-without-overlap and NanoFlow-like schedules and the searched plan as simulated tokens/s/device and % of
optimal, and, with --measure (an artifact on this machine), the measured throughput of each beside it.
The model and precision come from the artifact (config.json, model.yaml: the linears' stored bit widths, KV
dtype, activation dtype) or from --model / --precision / --kv-dtype. The workload is one dense step:
--dense-batch rows, --decode-tokens of them decode rows attending to --decode-context tokens, the rest prefill
chunks of --prefill-chunk rows (or --input-len / --output-len for the steady state of such requests).
--write-plan writes the searched plan as the runtime's PipelinePlan JSON (the engine runs an artifact's
plan.json; it has to be added at compile time, as the manifest lists every file); --save-nanoplan the
planner's own form (with the workload it was searched for).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from lowbit.planner.cost import CostModel, KernelProfile
from lowbit.planner.hardware import PRESETS, Hardware, get_hardware, probe_cpu
from lowbit.planner.models import MODELS, get_arch
from lowbit.planner.ops import model_ops
from lowbit.planner.precision import PRECISIONS, Precision, get_precision
from lowbit.planner.search import SearchConfig
from lowbit.planner.workload import CPU_WORKLOAD, GPU_WORKLOAD, Workload


class PlanCliError(ValueError):
    """A flag combination that cannot work; the message names the flag and the fix."""


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("artifact", nargs="?", help="a compiled artifact (its model and precision); or use --model")
    p.add_argument("--model", help=f"an architecture by name instead of an artifact: {', '.join(sorted(MODELS))}")
    p.add_argument("--hardware", default=None,
                   help=f"{', '.join(sorted(PRESETS))} (a100, h100, cpu), 'probe' (measure this CPU), or a JSON "
                        "file (default: the artifact's device, else a100)")  # fmt: skip
    p.add_argument("--tp", type=int, default=1, help="tensor-parallel degree (collectives on a network unit)")
    p.add_argument("--precision", choices=sorted(PRECISIONS), help="default: the artifact's, else w16a16")
    p.add_argument("--kv-dtype", default=None, help="KV cache dtype (float16, int8, int4, fp8_e4m3, ...)")
    w = p.add_argument_group("workload (one dense step)")
    w.add_argument("--dense-batch", type=int, help="token rows per step (default 2048 on a GPU, 64 on a CPU)")
    w.add_argument("--decode-tokens", type=int, help="decode rows (first rows of the batch)")
    w.add_argument("--decode-context", type=int, help="mean tokens each decode row attends to")
    w.add_argument("--prefill-chunk", type=int, help="rows per prefill chunk")
    w.add_argument("--prefill-context", type=int, default=None, help="tokens cached before each prefill chunk")
    w.add_argument("--input-len", type=int, help="with --output-len: the steady state of such requests")
    w.add_argument("--output-len", type=int)
    s = p.add_argument_group("search")
    s.add_argument("--max-evals", type=int, default=400,
                   help="simulations, all stages (default 400); the first 400 go to the descents (stages I, II), "
                        "the rest to stage III's annealing (the README's results: 8000, ~1 min for 70B)")  # fmt: skip
    s.add_argument("--seed", type=int, default=0, help="stage III's random moves (default 0)")
    s.add_argument("--time-budget", type=float, default=60.0, help="seconds (default 60)")
    s.add_argument("--tile", type=int, default=None, help="row quantum of the cuts (default 128 GPU, 8 CPU)")
    s.add_argument("--window", type=int, default=3, help="layers simulated per evaluation (default 3)")
    s.add_argument("--delays", action="store_true",
                   help="also search queue delays (what-if: the runtime does not run them; --write-plan refuses "
                        "them, use --order)")  # fmt: skip
    s.add_argument("--order", action="store_true",
                   help="plan each nano-op's queue position (list-scheduled, then descended); --write-plan "
                        "writes the orders into the runtime plan (OpRule.order), run by the nano executor")  # fmt: skip
    s.add_argument("--residual-epilogue", action="store_true",
                   help="what-if: residual adds in the O / down GEMM epilogues (NanoFlow's kernels), norms 2*D "
                        "bytes per row instead of lowbit's fused add + RMSNorm (4*D)")  # fmt: skip
    s.add_argument("--profile", help="a kernel profile JSON (measured seconds per op, rows, share) to calibrate")
    s.add_argument("--progress", action="store_true", help="print each improvement of the search")
    o = p.add_argument_group("output")
    o.add_argument("--gantt", action="store_true", help="print the searched plan's simulated timeline as text")
    o.add_argument("--timeline", help="write the searched plan's timeline: PATH.svg, or PATH.png (matplotlib)")
    o.add_argument("--json", help="write the report as JSON")
    o.add_argument("--write-plan", help="write the searched plan as the runtime's PipelinePlan JSON")
    o.add_argument("--save-nanoplan", help="write the searched plan in the planner's form")
    o.add_argument("--save-hardware", help="write the hardware description used (e.g. after --hardware probe)")
    m = p.add_argument_group("measure (an artifact on this machine)")
    m.add_argument("--measure", action="store_true", help="time each schedule on this machine beside the model")
    m.add_argument("--repeats", type=int, default=5)
    m.add_argument("--no-verify", action="store_true", help="skip the artifact's sha256 check")


def add_tune_parser(subparsers: Any) -> argparse.ArgumentParser:
    """`lowbit tune ARTIFACT --profile`: the parser (the handler is `tune_main`), for lowbit/cli.py to wire."""
    t = subparsers.add_parser(
        "tune", help="measure an artifact's kernels on this machine (--profile: seconds per op, rows, share)"
    )
    t.add_argument("artifact", help="a compiled CPU artifact")
    t.add_argument("--profile", action="store_true", required=True,
                   help="record a kernel profile (the only mode so far) for `lowbit plan` to use")  # fmt: skip
    t.add_argument("--rows", type=int, nargs="+", default=None, help="token rows per step (default 8 16 32 64)")
    t.add_argument("--threads", type=int, nargs="+", default=None, help="threads per share (default 1 .. cores)")
    t.add_argument("--repeats", type=int, default=3)
    t.add_argument("--decode-context", type=int, default=None, help="decode rows' context (default 128)")
    t.add_argument("--out", help="where to write the profile JSON (default: the per-artifact cache)")
    t.add_argument("--no-verify", action="store_true", help="skip the artifact's sha256 check")
    t.set_defaults(func=tune_main)
    return t


def tune_main(args: argparse.Namespace) -> int:
    """Profile the artifact and write the JSON; `lowbit plan ARTIFACT` then picks it up from the cache."""
    from dataclasses import replace

    from lowbit.planner.profile import DEFAULT_ROWS, ProfileError, default_profile_path, profile_artifact, save_profile

    wl = CPU_WORKLOAD if args.decode_context is None else replace(CPU_WORKLOAD, decode_context=args.decode_context)
    try:
        prof = profile_artifact(
            args.artifact, rows=tuple(args.rows or DEFAULT_ROWS), threads=args.threads, workload=wl,
            repeats=args.repeats, verify="none" if args.no_verify else "quick",
            progress=lambda m: print(f"  {m}", file=sys.stderr),
        )  # fmt: skip
    except (ProfileError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    path = save_profile(prof, args.out or default_profile_path(args.artifact))
    print(f"kernel profile: {len(prof.records)} records ({prof.device}) -> {path}")
    return 0


def _profile_for(args: argparse.Namespace, hw: Hardware, notes: list[str]) -> KernelProfile | None:
    """--profile FILE, else the cached profile of the artifact (`lowbit tune --profile`) on a CPU."""
    from lowbit.planner.profile import default_profile_path, load_profile

    if args.profile:
        return load_profile(args.profile)
    if not args.artifact or hw.kind != "cpu":
        return None
    path = default_profile_path(args.artifact)
    if not path.is_file():
        return None
    notes.append(f"calibrated with the cached kernel profile {path} (lowbit tune --profile)")
    return load_profile(path)


def _artifact_model(path: str) -> tuple[Any, Precision, str]:
    """(arch, precision, device) of a compiled artifact, read from its config.json and model.yaml
    (artifact.precision_of: the first linear's spec stands for every linear)."""
    import yaml

    from lowbit.artifact import open_artifact
    from lowbit.config import parse_config
    from lowbit.models.arch import ArchConfig
    from lowbit.planner.artifact import precision_of

    art = open_artifact(path, verify="none")
    cfg = parse_config(yaml.safe_load(art.read_text("model.yaml")), source=f"{path}/model.yaml", check_files=False)
    arch = ArchConfig.from_hf_config(art.read_json("config.json"))
    return arch, precision_of(cfg, arch), str(cfg.target.device)


def _hardware(args: argparse.Namespace, device: str | None) -> Hardware:
    name = args.hardware or ("cpu" if device == "cpu" else "a100")
    return probe_cpu() if name == "probe" else get_hardware(name)


def _workload(args: argparse.Namespace, hw: Hardware) -> Workload:
    base = CPU_WORKLOAD if hw.kind == "cpu" else GPU_WORKLOAD
    if (args.input_len is None) != (args.output_len is None):
        raise PlanCliError("--input-len and --output-len go together; give both or neither")
    if args.input_len is not None:
        return Workload.from_lengths(args.dense_batch or base.dense_batch, args.input_len, args.output_len)
    dense = args.dense_batch or base.dense_batch
    decode = args.decode_tokens if args.decode_tokens is not None else round(base.decode_fraction * dense)
    return Workload(
        dense, decode, args.decode_context or base.decode_context, args.prefill_chunk or base.prefill_chunk,
        base.prefill_context if args.prefill_context is None else args.prefill_context,
    )  # fmt: skip


def run(args: argparse.Namespace) -> Any:
    from lowbit.planner.report import plan_report

    if bool(args.artifact) == bool(args.model):
        raise PlanCliError("give an ARTIFACT or --model NAME (one of them)")
    if args.artifact and args.write_plan and Path(args.artifact).resolve() in Path(args.write_plan).resolve().parents:
        raise PlanCliError(
            f"--write-plan {args.write_plan} is inside the artifact: its manifest would not list the file and "
            "verification refuses unexpected files; write it elsewhere (the compiler has to add plan.json)"
        )
    device = None
    if args.artifact:
        arch, prec, device = _artifact_model(args.artifact)
        name = Path(args.artifact).name
        if args.precision:
            prec = get_precision(args.precision, prec.kv_dtype, prec.act_dtype)
    else:
        arch, name = get_arch(args.model), args.model
        prec = get_precision(args.precision or "w16a16")
    hw = _hardware(args, device)
    if args.kv_dtype:
        prec = prec.with_kv(args.kv_dtype)
    if hw.kind == "cpu" and not args.artifact:
        prec = Precision(prec.name, prec.linear, "float32", prec.kv_dtype)  # the CPU runtime computes in fp32
    notes: list[str] = [f"hardware: {hw.source}"]
    cost = CostModel(hw, profile=_profile_for(args, hw, notes))
    mo = model_ops(arch, prec, args.tp, name, residual_epilogue=args.residual_epilogue)
    wl = _workload(args, hw)
    tile = args.tile or (8 if hw.kind == "cpu" else 128)

    def progress(stage: str, evals: int, seconds: float) -> None:
        print(f"  [{stage}] {evals} simulations: step {seconds * 1e3:.3f} ms", file=sys.stderr)

    cfg = SearchConfig(max_evals=args.max_evals, time_budget_s=args.time_budget, tile=tile, window=args.window,
                       delays=args.delays, order=args.order, seed=args.seed,
                       progress=progress if args.progress else None)  # fmt: skip
    rep = plan_report(mo, wl, cost, cfg, arch=arch, notes=tuple(notes))
    if args.measure:
        rep = _with_measurements(rep, args, mo, wl)
    return rep, mo, cost, hw


def _with_measurements(rep: Any, args: argparse.Namespace, mo: Any, wl: Workload) -> Any:
    from dataclasses import replace

    from lowbit.planner.measure import measure_schedules

    if not args.artifact:
        raise PlanCliError("--measure runs an artifact on this machine; give ARTIFACT")
    plans = {r.name: (None if r.name == "unsplit" else r.plan.to_pipeline_plan(mo)) for r in rep.rows}
    times = measure_schedules(
        args.artifact, plans, wl, repeats=args.repeats, verify="none" if args.no_verify else "quick"
    )
    rows = tuple(replace(r, measured_tokens_per_s=times[r.name].tokens_per_s / mo.tp) for r in rep.rows)
    best = max(rows[1:], key=lambda r: r.measured_tokens_per_s or 0.0)
    un = rows[0].measured_tokens_per_s or 0.0
    notes = list(rep.notes)
    notes.append("measured step medians: " + ", ".join(f"{k} {v.median_s * 1e3:.2f} ms" for k, v in times.items()))
    searched = next(r for r in rows if r.name == "searched")
    if (searched.measured_tokens_per_s or 0.0) <= un:
        notes.append(
            f"measured: the searched plan does not beat unsplit here ({best.name} is the best split at "
            f"{(best.measured_tokens_per_s or 0) / un:.2f}x of unsplit); 'split, no overlap' vs unsplit is the cost "
            "of the nano executor's extra tasks, 'searched' vs 'split, no overlap' what overlap gains on top"
        )
    return replace(rep, rows=rows, notes=tuple(notes))


def main(args: argparse.Namespace) -> int:
    from lowbit.planner.report import format_report
    from lowbit.planner.simulate import simulate
    from lowbit.planner.tasks import derive_tasks
    from lowbit.planner.timeline import TimelineError, text_gantt, write_png, write_svg

    try:
        rep, mo, cost, hw = run(args)
    except (PlanCliError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(format_report(rep))
    plan = rep.plan
    if args.gantt or args.timeline:
        res = simulate(derive_tasks(mo, plan, rep.workload, cost, args.window), len(plan.units), cost)
        if args.gantt:
            print()
            print(text_gantt(res, plan))
        if args.timeline:
            path = Path(args.timeline)
            try:
                (write_png if path.suffix == ".png" else write_svg)(res, plan, path)
            except TimelineError as e:
                print(f"error: {e}", file=sys.stderr)
                return 1
            print(f"timeline: {path}")
    if args.json:
        Path(args.json).write_text(json.dumps(rep.to_dict(), indent=1))
    if args.write_plan:
        Path(args.write_plan).write_text(plan.to_pipeline_plan(mo).to_json())
        print(f"runtime plan: {args.write_plan}")
    if args.save_nanoplan:
        Path(args.save_nanoplan).write_text(plan.to_json())
    if args.save_hardware:
        Path(args.save_hardware).write_text(hw.to_json())
    return 0


__all__ = ["CPU_WORKLOAD", "GPU_WORKLOAD", "PlanCliError", "add_arguments", "add_tune_parser", "main", "run",
           "tune_main"]  # fmt: skip
