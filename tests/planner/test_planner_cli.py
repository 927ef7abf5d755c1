"""`lowbit plan` end to end with presets (small search budgets): the report's rows and bound, JSON / plan /
timeline outputs, errors that name the flag; the text Gantt and SVG timelines; an `--order --write-plan` plan served
by the engine."""

from __future__ import annotations

import importlib.util
import json

import pytest

from lowbit.cli import main
from lowbit.planner.cost import CostModel
from lowbit.planner.hardware import get_hardware
from lowbit.planner.models import get_arch
from lowbit.planner.ops import model_ops
from lowbit.planner.schedules import split_plan
from lowbit.planner.simulate import simulate
from lowbit.planner.tasks import derive_tasks
from lowbit.planner.timeline import TimelineError, text_gantt, write_png, write_svg
from lowbit.planner.workload import Workload
from lowbit.runtime.plan import PipelinePlan

SMALL = ["--max-evals", "12", "--dense-batch", "512", "--decode-tokens", "256", "--decode-context", "512"]


def test_plan_report_for_a_preset(tmp_path, capsys):
    out = tmp_path / "rep.json"
    plan = tmp_path / "plan.json"
    svg = tmp_path / "t.svg"
    hw = tmp_path / "hw.json"
    rc = main(["plan", "--model", "llama-2-7b", "--hardware", "h100", "--precision", "w4a16", *SMALL, "--json",
               str(out), "--write-plan", str(plan), "--timeline", str(svg), "--gantt", "--save-hardware",
               str(hw)])  # fmt: skip
    assert rc == 0
    text = capsys.readouterr().out
    for row in ("unsplit", "split, no overlap", "NanoFlow-like split", "searched", "optimal throughput", "ceilings"):
        assert row in text
    rep = json.loads(out.read_text())
    assert [r["name"] for r in rep["schedules"]] == ["unsplit", "split, no overlap", "NanoFlow-like split", "searched"]
    assert all(0 < r["fraction_of_optimal"] < 1 for r in rep["schedules"])
    ceil = {c["precision"]: c["optimal_tokens_per_s"] for c in rep["ceilings"]}
    assert ceil["w4a8"] == pytest.approx(2 * ceil["w4a16"]) and ceil["w4a16"] == ceil["w16a16"]
    assert PipelinePlan.from_json(plan.read_text()).rules  # a runtime plan that validates
    assert svg.read_text().startswith("<svg") and "compute" in svg.read_text()
    assert " compute |" in text  # the text Gantt
    assert get_hardware(str(hw)) == get_hardware("h100")  # what get_hardware's error tells to pass back


@pytest.mark.parametrize(
    "argv, match",
    [
        (["plan"], "give an ARTIFACT or --model"),
        (["plan", "--model", "gpt-9"], "model 'gpt-9' is not known"),
        (["plan", "--model", "llama-2-7b", "--hardware", "tpu"], "is not a preset"),
        (["plan", "--model", "llama-2-7b", "--input-len", "8"], "--input-len and --output-len go together"),
        (["plan", "--model", "llama-2-7b", "--measure", "--max-evals", "2"], "--measure runs an artifact"),
    ],
)
def test_plan_errors_name_the_flag(argv, match, capsys):
    assert main(argv) == 2
    assert match in capsys.readouterr().err


def test_steady_state_workload_flags(capsys):
    assert main(["plan", "--model", "llama-3-8b", "--hardware", "h200", "--input-len", "512", "--output-len", "512",
                 "--dense-batch", "1024", "--max-evals", "6"]) == 0  # fmt: skip
    assert "512 decode rows (context 768)" in capsys.readouterr().out


def _small_result():
    mo = model_ops(get_arch("llama-2-7b"), None, 1)
    wl = Workload(512, 256, 256, 128)
    cost = CostModel(get_hardware("h200"))
    plan = split_plan(mo, wl)
    return simulate(derive_tasks(mo, plan, wl, cost, 2), len(plan.units), cost), plan


def test_text_gantt_shows_every_unit_and_the_legend():
    res, plan = _small_result()
    text = text_gantt(res, plan, width=60)
    rows = text.splitlines()
    assert rows[0].strip().startswith("compute |") and rows[1].strip().startswith("memory |")
    assert all(len(r.split("|")[1]) == 60 for r in rows[:2])
    assert "A=input_norm" in text and "% busy" in text


def test_png_timeline_needs_matplotlib(tmp_path):
    res, plan = _small_result()
    if importlib.util.find_spec("matplotlib") is None:
        with pytest.raises(TimelineError, match="needs matplotlib"):
            write_png(res, plan, tmp_path / "t.png")
    else:
        assert write_png(res, plan, tmp_path / "t.png").stat().st_size > 0
    assert write_svg(res, plan, tmp_path / "t.svg").read_text().count("<rect") == len(res.tasks)


def test_an_ordered_written_plan_runs_in_the_engine(tiny_artifact, tmp_path):
    """`lowbit plan ARTIFACT --order --write-plan` writes the planned orders into the runtime plan, and the engine
    serves with it (the nano executor keys its queues by them) the tokens of the unsplit schedule."""
    from lowbit.llm import LLM
    from lowbit.runtime.sampler import SamplingParams

    out = tmp_path / "ordered.json"
    rc = main(["plan", str(tiny_artifact), "--order", "--tile", "2", "--max-evals", "30",
               "--dense-batch", "24", "--decode-tokens", "6", "--decode-context", "12", "--prefill-chunk", "9",
               "--write-plan", str(out)])  # fmt: skip
    assert rc == 0
    pp = PipelinePlan.from_json(out.read_text())
    assert pp.ordered and all(len(r.order) == r.num_nano for r in pp.rules)
    prompts = [[1, 2, 3, 4, 5, 6, 7, 8, 9], [9, 8, 7], [5] * 13, [11, 12]]
    params = SamplingParams(max_tokens=5, ignore_eos=True)
    tokens = {}
    for schedule, plan in (("unsplit", None), ("nano", pp)):
        with LLM(tiny_artifact, schedule=schedule, plan=plan, verify="none") as llm:
            assert llm.engine.schedule_mode == schedule and llm.engine.plan == plan
            tokens[schedule] = [o.token_ids for o in llm.generate(prompts, params)]
    assert tokens["nano"] == tokens["unsplit"] and all(len(t) == 5 for t in tokens["nano"])
