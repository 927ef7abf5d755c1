"""bench gemm's goal verdicts (lowbit.bench.report.goals) on hand-built rows: the thresholds of the issue,
NaN never passing, W3/W2 judged against the int4 row of the same layer and method by bytes."""

from __future__ import annotations

import dataclasses
import math

import pytest

from lowbit.bench.gemm import Report, Row
from lowbit.bench.report import format_table, goals, to_json
from lowbit.bench.report import verdicts as issue_verdicts
from lowbit.bench.roofline import Machine

CPU = Machine("cpu", "test cpu", 2, None, 25.0, {"float32": 100.0, "bfloat16": 20.0})


def row(M, method, dtype="int4", ms=1.0, roof=0.5, x32=1.0, x16=1.0, nbytes=1000):
    return Row(M, 4096, 4096, method, dtype, "tvm", ms, ms, ms, nbytes, roof * ms, roof, x32, x16)


def verdicts(rows, config=None):
    report = Report(CPU, rows, [], config if config is not None else {"group_size": 128})
    return {g["goal"].split(":")[0] + " | " + g["goal"].split(": ")[1]: g["met"] for g in goals(report)}


def test_m1_needs_80_percent_of_the_roofline_and_both_speedups():
    got = verdicts([row(1, "lowbit", roof=0.81, x32=7.2, x16=3.4), row(1, "lowbit_a8", roof=0.5, x32=8.0, x16=4.0)])
    assert got == {
        "W4A32 (fp32 x) tvm M=1 4096x4096 | 81% of the roofline (target >= 80%)": True,
        "W4A32 (fp32 x) tvm M=1 4096x4096 | 7.20 x torch fp32 (target >= 7)": True,
        "W4A32 (fp32 x) tvm M=1 4096x4096 | 3.40 x torch bf16 (target >= 3.5)": False,
        "W4A8 tvm M=1 4096x4096 | 50% of the roofline (target >= 80%)": False,
        "W4A8 tvm M=1 4096x4096 | 8.00 x torch fp32 (target >= 7)": True,
        "W4A8 tvm M=1 4096x4096 | 4.00 x torch bf16 (target >= 3.5)": True,
    }


def test_larger_m_targets_and_nan_never_passes():
    got = verdicts([row(16, "lowbit", x32=2.9, x16=1.2), row(64, "lowbit", x16=math.nan), row(256, "lowbit", x16=1.0)])
    assert got == {
        "W4A32 (fp32 x) tvm M=16 4096x4096 | 2.90 x torch fp32 (target >= 3)": False,
        "W4A32 (fp32 x) tvm M=16 4096x4096 | 1.20 x torch bf16 (target >= 1)": True,
        "W4A32 (fp32 x) tvm M=64 4096x4096 | nan x torch bf16 (target >= 1)": False,
        "W4A32 (fp32 x) tvm M=256 4096x4096 | 1.00 x torch bf16 (target >= 1)": True,
    }


@pytest.mark.parametrize(("ms", "met"), [(0.8, True), (0.85, False)])
def test_w3_in_proportion_to_its_bytes(ms, met):
    rows = [row(1, "lowbit", "int4", ms=1.0, nbytes=1000), row(1, "lowbit", "int3", ms=ms, nbytes=750)]
    report = Report(CPU, rows, [], {"group_size": 128})
    (w3,) = [g for g in goals(report) if g["goal"].startswith("int3")]
    assert w3["met"] is met and w3["value"] == pytest.approx(ms)
    assert ("met" if met else "NOT met") in format_table(report).splitlines()[-1]
    assert to_json(report)["goals"][-1]["met"] is met


def test_other_group_sizes_and_other_dtypes_are_not_judged():
    assert verdicts([row(1, "lowbit")], {"group_size": 64}) == {}
    assert verdicts([row(1, "lowbit", dtype="fp4_e2m1"), row(1, "torch_fp32", dtype="float32")]) == {}


def test_bf16_activation_rows_are_judged_beside_the_fp32_ones():
    got = verdicts([row(1, "lowbit", roof=0.7, x32=9.0, x16=4.0), row(1, "lowbit_bf16", roof=0.85, x32=10.0, x16=5.0)])
    assert got["W4A32 (fp32 x) tvm M=1 4096x4096 | 70% of the roofline (target >= 80%)"] is False
    assert got["W4A16 (bf16 x) tvm M=1 4096x4096 | 85% of the roofline (target >= 80%)"] is True
    assert len(got) == 6


def test_the_stream_row_stands_beside_the_roofline_verdict():
    """A stream row of the same layer and M (the weight's bytes read by torch `sum` in the same rounds): the M = 1
    roofline goal names the kernel's bytes/s as a fraction of the stream's, and its verdict stays the
    roofline's."""
    stream = row(1, "stream", dtype="float32", ms=0.5, nbytes=900)
    kernel = row(1, "lowbit", roof=0.7, x32=9.0, x16=4.0, ms=0.6, nbytes=1000)
    report = Report(CPU, [stream, kernel], [], {"group_size": 128})
    lines = {g["goal"]: g["met"] for g in goals(report)}
    # (1000 / 0.6) / (900 / 0.5) = 0.926
    want = (
        "W4A32 (fp32 x) tvm M=1 4096x4096: 70% of the roofline (target >= 80%) "
        "[93% of the stream row's bytes/s, side by side]"
    )
    assert lines[want] is False
    assert sum("stream" in g for g in lines) == 1  # only the roofline line; the stream row itself is no goal


def test_m1_roofline_is_judged_round_by_round_against_the_reads_of_each_round():
    """With rounds, the roofline fraction is the median over rounds of the kernel's fraction of that round's
    roofline, whose bandwidth is the faster of the stream and dram rows' medians in the round (an oracle by
    hand below); the fraction against the run's ceiling (the row's own) is named beside it."""
    k = 2**20  # bytes
    kernel = dataclasses.replace(
        row(1, "lowbit_bf16", roof=0.55, x32=9.0, x16=4.0, ms=0.04, nbytes=k), round_ms=(0.04, 0.048, 0.03)
    )
    stream = dataclasses.replace(row(1, "stream", "float32", ms=0.04, nbytes=k), round_ms=(0.04, 0.04, 0.02))
    dram = dataclasses.replace(row(1, "dram", "float32", ms=20.0, nbytes=512 * k), round_ms=(20.0, 25.0, 20.0))
    report = Report(CPU, [stream, dram, kernel], [], {"group_size": 128})
    (goal,) = [g for g in goals(report) if "of the roofline" in g["goal"]]
    # GB/s per round: max(stream, dram) = max(26.2, 26.8), max(26.2, 21.5), max(52.4, 26.8)
    bws = [max(k / s / 1e6, 512 * k / d / 1e6) for s, d in zip(stream.round_ms, dram.round_ms)]
    # flops / peak (33.6 MFLOP at the row's fp32 peak of 100 GFLOP/s: 0.34 ms) exceeds bytes / bw here
    flops = 2 * 4096 * 4096
    fractions = [max(k / (bw * 1e9), flops / 100e9) * 1e3 / ms for bw, ms in zip(bws, kernel.round_ms)]
    assert goal["value"] == pytest.approx(sorted(fractions)[1])
    assert "median of 3 rounds' fractions" in goal["goal"] and "ceiling of 25.0 GB/s: 55%" in goal["goal"]
    # memory-bound: a fast peak leaves bytes / bw, so each round's fraction is the kernel's rate / the round's
    fast = dataclasses.replace(CPU, peak_gflops={"float32": 1e6, "bfloat16": 1e6})
    (goal,) = [g for g in goals(Report(fast, [stream, dram, kernel], [], {"group_size": 128})) if "roof" in g["goal"]]
    rates = [k / ms / 1e6 / bw for bw, ms in zip(bws, kernel.round_ms)]  # 0.98, 0.83, 0.67
    assert goal["value"] == pytest.approx(sorted(rates)[1]) and goal["met"] is True
    # a read row without the same rounds: the run's ceiling judges, as without reads
    odd = dataclasses.replace(dram, round_ms=(20.0,))
    (goal,) = [g for g in goals(Report(fast, [stream, odd, kernel], [], {"group_size": 128})) if "roof" in g["goal"]]
    assert goal["value"] == pytest.approx(0.55) and goal["met"] is False and "rounds" not in goal["goal"]


def test_gpu_lowbit_rows_are_w4a16():
    """On a GPU the lowbit rows take fp16 activations: W4A16, judged by the GPU targets."""
    gpu = Machine("cuda:0", "test gpu", 1, None, 4000.0, {"bfloat16": 900e3})
    report = Report(gpu, [row(1, "lowbit", roof=0.9, x16=4.0)], [], {"group_size": 128})
    assert {g["goal"]: g["met"] for g in goals(report)} == {
        "W4A16 tvm M=1 4096x4096: 90% of the roofline (target >= 80%)": True,
        "W4A16 tvm M=1 4096x4096: 4.00 x torch bf16 (target >= 3.5)": True,
    }


def test_gpu_w4a8_rows_are_judged_at_m_1024_and_up_only():
    """The GPU's lowbit_w4a8 rows (QoQ w4a8_group, uint4): >= 1.3x torch bf16 from M = 1024; no W4A16 target
    applies to them at small M, and the CPU has no such goal."""
    gpu = Machine("cuda:0", "test gpu", 1, None, 4000.0, {"bfloat16": 900e3})
    rows = [
        row(1, "lowbit_w4a8", dtype="uint4", roof=0.3, x16=1.0),
        row(1024, "lowbit_w4a8", dtype="uint4", x16=1.4),
        row(4096, "lowbit_w4a8", dtype="uint4", x16=1.2),
        row(4096, "lowbit", x16=0.9),  # W4A16 rows have no target past M = 64
    ]
    assert {g["goal"]: g["met"] for g in goals(Report(gpu, rows, [], {"group_size": 128}))} == {
        "W4A8 (QoQ) tvm M=1024 4096x4096: 1.40 x torch bf16 (target >= 1.3)": True,
        "W4A8 (QoQ) tvm M=4096 4096x4096: 1.20 x torch bf16 (target >= 1.3)": False,
    }
    assert goals(Report(CPU, rows, [], {"group_size": 128})) == []


def by_target(rows, machine=CPU):
    judged = goals(Report(machine, rows, [], {"group_size": 128}))
    return {v["target"]: v for v in issue_verdicts(judged)}


def test_verdicts_judge_m1_and_m16_by_the_a16_path_only():
    """The issue's M = 1 and M = 16 targets are W4A16's: an A8 or fp32-x row meeting them does not meet the goal,
    and it is listed beside the verdict, not hidden."""
    got = by_target(
        [row(1, "lowbit_a8", roof=0.9, x32=8.0, x16=4.0), row(1, "lowbit_bf16", roof=0.79, x32=8.0, x16=4.0)]
    )
    roof = got["M=1 4096x4096: roofline >= 80%"]
    assert roof["met"] is False and roof["best"] == "A16 (bf16 x)" and roof["value"] == pytest.approx(0.79)
    assert roof["paths"] == "A16 (bf16 x) 79%" and roof["others"] == "A8 90%"
    assert got["M=1 4096x4096: x torch bf16 >= 3.5"]["met"] is True
    got16 = by_target([row(16, "lowbit", x32=3.5, x16=1.2), row(16, "lowbit_bf16", x32=3.2, x16=0.9)])
    assert got16["M=16 4096x4096: x torch bf16 >= 1"]["met"] is False  # the fp32-x row's 1.2 is not W4A16
    assert "M=16 4096x4096: x torch fp32 >= 3" in got16


def test_verdicts_take_the_best_path_from_m64_and_nan_never_passes():
    """From M = 64 the issue names the int8 (W4A8) and bf16 paths: the best of them decides. A NaN is never best."""
    got = by_target([row(64, "lowbit_bf16", x16=0.9), row(64, "lowbit_a8", x16=1.3), row(64, "lowbit", x16=math.nan)])
    v = got["M=64 4096x4096: x torch bf16 >= 1"]
    assert v["met"] is True and v["best"] == "A8" and v["others"] == ""
    assert "A32 (fp32 x) nan" in v["paths"]
    (only_nan,) = by_target([row(256, "lowbit_a8", x16=math.nan)]).values()
    assert only_nan["met"] is False


def test_verdicts_on_a_gpu_name_the_fp16_rows_and_print_in_the_table():
    gpu = Machine("cuda:0", "test gpu", 1, None, 4000.0, {"bfloat16": 900e3})
    got = by_target([row(1, "lowbit", roof=0.5, x16=2.0)], gpu)
    assert got["M=1 4096x4096: roofline >= 80%"]["met"] is False
    assert got["M=1 4096x4096: x torch bf16 >= 3.5"]["paths"] == "A16 2.00"
    report = Report(gpu, [row(1, "lowbit", roof=0.5, x16=2.0)], [], {"group_size": 128})
    lines = [ln for ln in format_table(report).splitlines() if ln.startswith("verdict:")]
    assert lines == [
        "verdict: M=1 4096x4096: roofline >= 80%: NOT met (A16 50%)",
        "verdict: M=1 4096x4096: x torch bf16 >= 3.5: NOT met (A16 2.00)",
    ]
    assert [v["met"] for v in to_json(report)["verdicts"]] == [False, False]


def test_gpu_dot_free_gemv_rows_are_a16_paths_beside_the_default_gemv():
    """The GPU's lowbit_fma rows (kernel quantized_gemv_fma on the same fp16 x) are W4A16 paths: a verdict at
    M = 1 is met by the better of the two GEMVs, and both values are listed."""
    gpu = Machine("cuda:0", "test gpu", 1, None, 4000.0, {"bfloat16": 900e3})
    rows = [row(1, "lowbit", roof=0.2, x16=0.9), row(1, "lowbit_fma", roof=0.85, x16=3.6)]
    got = by_target(rows, gpu)
    assert got["M=1 4096x4096: x torch bf16 >= 3.5"]["met"] is True
    assert got["M=1 4096x4096: x torch bf16 >= 3.5"]["best"] == "A16 (dot-free GEMV)"
    assert got["M=1 4096x4096: x torch bf16 >= 3.5"]["paths"] == "A16 0.90, A16 (dot-free GEMV) 3.60"
    assert got["M=1 4096x4096: roofline >= 80%"]["met"] is True
    slow = by_target([row(1, "lowbit", roof=0.2, x16=0.9), row(1, "lowbit_fma", roof=0.3, x16=1.2)], gpu)
    assert slow["M=1 4096x4096: x torch bf16 >= 3.5"]["met"] is False


def test_w2_is_judged_round_by_round_when_both_rows_have_rounds():
    """Rows of one (layer, M) share their rounds: the W2 proportion is the median of the per-round ratios (the
    memory rate of round 2 moved both rows), not the ratio of the pooled medians."""
    base = dataclasses.replace(row(1, "lowbit_bf16", "int4", ms=0.30, nbytes=1000), round_ms=(0.30, 0.20, 0.30))
    w2 = dataclasses.replace(row(1, "lowbit_bf16", "int2", ms=0.17, nbytes=520), round_ms=(0.16, 0.115, 0.17))
    report = Report(CPU, [base, w2], [], {"group_size": 128})
    (goal,) = [g for g in goals(report) if g["goal"].startswith("int2")]
    ratios = sorted([0.16 / 0.30, 0.115 / 0.20, 0.17 / 0.30])
    assert goal["value"] == pytest.approx(ratios[1]) and goal["met"] is True  # 0.567 <= 1.1 x 0.52
    assert "median of 3 rounds' ratios; pooled medians 0.57x" in goal["goal"]
    # one round (or rows without rounds): the pooled medians' ratio, as before
    one = [dataclasses.replace(base, round_ms=(0.30,)), dataclasses.replace(w2, round_ms=(0.17,))]
    (goal,) = [g for g in goals(Report(CPU, one, [], {"group_size": 128})) if g["goal"].startswith("int2")]
    assert goal["value"] == pytest.approx(0.17 / 0.30) and goal["met"] is True
    assert "rounds" not in goal["goal"]


def test_rounds_time_lowbit_rows_grouped_by_method():
    """Within a round, torch's rows first as listed, then lowbit's grouped by method, dtypes in listed order."""
    from lowbit.bench.gemm import _timing_order

    rows = [row(1, "torch_fp32", "float32"), row(1, "torch_bf16", "bfloat16")]
    for dt in ("int4", "int3", "int2"):
        rows += [row(1, "lowbit", dt), row(1, "lowbit_bf16", dt), row(1, "lowbit_a8", dt)]
    got = [(rows[i].method, rows[i].dtype) for i in _timing_order(rows)]
    assert got[:2] == [("torch_fp32", "float32"), ("torch_bf16", "bfloat16")]
    assert got[2:] == [(m, d) for m in ("lowbit", "lowbit_bf16", "lowbit_a8") for d in ("int4", "int3", "int2")]
