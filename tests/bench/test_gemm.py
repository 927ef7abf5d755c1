"""Smoke test of `lowbit bench gemm` on a tiny layer: every expected row, finite positive times, speedups and
roofline fractions consistent with the times, table and JSON agree. Performance is never asserted."""

from __future__ import annotations

import json
import math

import pytest

from lowbit.bench import gemm
from lowbit.bench.report import format_table, to_json, write_json
from lowbit.bench.roofline import Machine, measure_bandwidth, measure_peak_flops
from lowbit.cli import main

MS = (1, 4)
N, K = 256, 256


@pytest.fixture(scope="module")
def machine():
    peaks = {d: measure_peak_flops(d, "cpu", n=512, repeats=2) for d in ("float32", "bfloat16")}
    return Machine("cpu", "test cpu", 2, None, measure_bandwidth("cpu", 128 * 2**20, repeats=3), peaks)


@pytest.fixture(scope="module")
def report(machine):
    return gemm.run_report(MS, ((N, K),), ("int4",), 128, ("reference",), 2, threads=2, machine=machine, cache="flush")


def test_every_expected_row(report):
    got = {(r.M, r.method, r.dtype, r.backend) for r in report.rows}
    want = set()
    for m in MS:
        want |= {(m, "torch_fp32", "float32", "torch"), (m, "torch_bf16", "bfloat16", "torch")}
        want |= {(m, "torch_dequant", "int4", "torch"), (m, "lowbit", "int4", "reference")}
    assert got == want and len(report.rows) == len(want)
    assert all((r.N, r.K) == (N, K) for r in report.rows)


def test_times_ratios_and_roofline_are_consistent(report):
    for m in MS:
        rows = [r for r in report.rows if m == r.M]
        t32 = next(r.median_ms for r in rows if r.method == "torch_fp32")
        t16 = next(r.median_ms for r in rows if r.method == "torch_bf16")
        for r in rows:
            assert 0 < r.min_ms <= r.median_ms <= r.max_ms and math.isfinite(r.max_ms)
            assert r.speedup_fp32 == pytest.approx(t32 / r.median_ms)
            assert r.speedup_bf16 == pytest.approx(t16 / r.median_ms)
            assert r.roofline_fraction == pytest.approx(r.roofline_ms / r.median_ms)
            assert 0 < r.roofline_fraction <= 1.5, r  # the roofline is a lower bound on the time
            assert r.bytes > m * K * 2


def test_lowbit_rows_are_checked_against_the_reference(report):
    for r in report.rows:
        if r.method in ("lowbit", "torch_dequant"):
            assert r.rel_error is not None and r.rel_error < gemm.TOLERANCE and "MISMATCH" not in r.note
    assert not report.mismatches


def test_table_and_json_have_every_row(report, tmp_path):
    table = format_table(report)
    assert "bandwidth" in table.splitlines()[0] and "GB/s" in table.splitlines()[0]
    assert table.count("torch_fp32") == len(MS) and table.count("reference") >= len(MS)
    path = write_json(report, tmp_path / "b.json")
    data = json.loads(path.read_text())
    assert data == to_json(report)
    assert len(data["rows"]) == len(report.rows)
    assert {"device", "threads", "bandwidth_gbs", "peak_gflops"} <= set(data["machine"])
    assert data["rows"][0].keys() >= {"M", "N", "K", "method", "median_ms", "roofline_ms", "speedup_fp32"}


def test_torch_rows_alone_without_lowbit_ops(machine, monkeypatch):
    monkeypatch.setattr(gemm, "_load_ops", lambda: None)
    r = gemm.run_report((1,), ((128, 128),), ("int4",), 128, None, 1, threads=2, machine=machine, flush=False)
    assert {row.method for row in r.rows} == {"torch_fp32", "torch_bf16", "torch_dequant"}
    assert any("lowbit.ops not available" in n for n in r.notes)
    assert "lowbit.ops not available" in format_table(r)


def test_cli_writes_table_and_json(tmp_path, capsys):
    out = tmp_path / "out"
    argv = ["bench", "gemm", "--quick", "--layers", "128x256", "--M", "1,3", "--repeats", "1"]
    argv += ["--dtypes", "int4", "--backends", "reference", "--out", str(out), "--no-flush"]
    assert main(argv) == 0
    text = capsys.readouterr().out
    assert text.splitlines()[0].startswith("# device") and "lowbit" in text and "torch_dequant" in text
    data = json.loads((out / "bench_gemm.json").read_text())
    assert len(data["rows"]) == 2 * 4 and data["config"]["layers"] == [[128, 256]]


@pytest.mark.parametrize(
    ("argv", "words"),
    [
        (["--layers", "4096by4096"], ["--layers", "'4096by4096'", "4096x4096,11008x4096"]),
        (["--M", "1,zero"], ["--M", "1,zero", "--M 1,4,16"]),
        (["--M", "0"], ["--M", "positive"]),
        (["--dtypes", "int99"], ["--dtypes", "int99"]),
        (["--backends", "cuda"], ["--backends", "'cuda'", "tvm"]),
        (["--repeats", "0"], ["--repeats", "positive"]),
    ],
)
def test_cli_argument_errors_name_flag_value_and_fix(argv, words, capsys):
    with pytest.raises(SystemExit) as e:
        main(["bench", "gemm", *argv])
    assert e.value.code == 2
    err = capsys.readouterr().err
    for w in words:
        assert w in err, err


def test_cli_group_size_must_divide_k():
    with pytest.raises(SystemExit, match=r"--group-size 128 does not divide K=100"):
        main(["bench", "gemm", "--layers", "64x100"])


def test_plot_is_written_or_skipped_without_matplotlib(report, tmp_path):
    import importlib.util

    from lowbit.bench.report import write_plot

    path = write_plot(report, tmp_path / "speedup.png")
    if importlib.util.find_spec("matplotlib") is None:
        assert path is None and not (tmp_path / "speedup.png").exists()
    else:
        assert path is not None and path.stat().st_size > 0


def _ring_sizes(monkeypatch) -> list[int]:
    """Rings of 3 copies (`ring_copies`), and the list the size of every ring `benchmark_ring` times goes to."""
    from lowbit.codegen.tune import timing

    monkeypatch.setattr(gemm, "ring_copies", lambda nbytes, device="cpu": 3)
    called: list[int] = []
    real = timing.benchmark_ring

    def counting(fns, **kw):
        called.append(len(fns))
        return real(fns, **kw)

    monkeypatch.setattr(gemm, "benchmark_ring", counting)
    return called


def test_rings_shrink_to_the_memory_available(machine, monkeypatch):
    """A ring that would leave less than RING_RESERVE_BYTES of memory is cut (to one copy here, with 1 byte
    to spare) and says so in the notes; every row is still timed and checked. (A VM reporting its host's 480
    MiB L3 made the rings of an 11008x4096 layer take all of its 24 GiB before RING_MAX_BYTES and this cut.)"""
    called = _ring_sizes(monkeypatch)
    monkeypatch.setattr(gemm, "_free_host_bytes", lambda: gemm.RING_RESERVE_BYTES + 1)
    r = gemm.run_report((1,), ((128, 256),), ("int4",), 128, ("tvm",), 1, threads=2, machine=machine, cache="rotate")
    assert called and set(called) == {1}
    cut = [n for n in r.notes if "ring cut from" in n]
    assert any(n.startswith("torch_fp32 128x256: ring cut from 3 to 1 copies of 0.1 MiB") for n in cut), cut
    assert all("available" in n for n in cut)
    assert not r.mismatches and all(row.median_ms > 0 for row in r.rows)


def test_rotate_times_a_ring_of_independent_weight_copies(machine, monkeypatch):
    """cache="rotate": each method's weight is copied into a ring (`ring_copies` in all, own memory, same
    values) once per layer, and every copy is called: the lowbit rows still match the reference."""
    import numpy as np

    called = _ring_sizes(monkeypatch)
    r = gemm.run_report((1, 2), ((128, 256),), ("int4",), 128, ("tvm",), 1, threads=2, machine=machine, cache="rotate")
    assert r.config["cache"] == "rotate" and "ring" in format_table(r)
    # every row's ring of 3 copies (torch's dequantize-then-matmul: 2, its dequantization bounds it), timed
    # once per round (gemm.ROUNDS alternating rounds per layer and M); the dram rows time the one roofline buffer
    naive = sum(row.method == "torch_dequant" for row in r.rows)
    dram = [row for row in r.rows if row.method == gemm.DRAM]
    assert naive and len(called) == gemm.ROUNDS * len(r.rows)
    rings = [2] * naive + [1] * len(dram) + [3] * (len(r.rows) - naive - len(dram))
    assert sorted(called) == sorted(rings * gemm.ROUNDS)
    # a dram row per M (<= STREAM_MAX_M): the roofline's bandwidth read (512 MiB), each round's median kept
    assert [row.M for row in dram] == [1, 2] and all(row.bytes == 512 * 2**20 for row in dram)
    assert all(len(row.round_ms) == gemm.ROUNDS and row.median_ms > 0 for row in dram)
    assert not r.mismatches and all(row.median_ms > 0 for row in r.rows)
    # a stream row per M (<= STREAM_MAX_M): the int4 g128 weight's bytes (fp16 scales), read by torch sum
    streams = [row for row in r.rows if row.method == gemm.STREAM]
    assert [row.M for row in streams] == [1, 2]
    assert all(row.bytes == 128 * 256 // 2 + 128 * 2 * 2 and row.backend == "torch" for row in streams)
    # the QoQ W4A8 rows on tvm (the a8 GEMV), checked against the weight's own dequantization with x's rounding
    qoq = [row for row in r.rows if row.method == gemm.W4A8]
    assert [(row.M, row.dtype, row.backend, row.peak_dtype) for row in qoq] == [
        (m, "uint4", "tvm", "int8") for m in (1, 2)
    ]
    assert all(row.rel_error is not None and row.rel_error <= gemm.A8_TOLERANCE for row in qoq)
    from lowbit.ops import quantize

    qw = quantize(np.random.default_rng(0).standard_normal((64, 128)).astype(np.float32), "int4", 64)
    copy = gemm._copy(qw)
    assert (
        copy is not qw and not np.shares_memory(copy.words, qw.words) and not np.shares_memory(copy.scales, qw.scales)
    )
    assert np.array_equal(copy.dequantize(), qw.dequantize())
    with pytest.raises(gemm.BenchError, match="cache"):
        gemm.run_report((1,), ((128, 128),), ("int4",), 128, None, 1, machine=machine, cache="cold")


def test_rows_of_one_layer_and_m_are_timed_in_alternating_rounds(machine, monkeypatch):
    """`_Bench.measure`: every row once per round, round r starting r/ROUNDS of the way along the rows (A B C,
    then B C A, ...), samples pooled per row (its median over all rounds); a row whose first round took longer
    than SLOW_ROUND_MS keeps that round only; the first round warms each ring up with a pass, later rounds
    only for the warm-up time."""
    from lowbit.codegen.tune.timing import Timing

    order: list[tuple[str, int]] = []
    times = {"a": 1.0, "b": 2.0, "slow": gemm.SLOW_ROUND_MS}

    graphs: list[bool] = []

    def fake_ring(fns, *, repeats, warmup, device, graph=False):
        name = fns[0]()
        order.append((name, warmup))
        graphs.append(graph)
        return Timing((times[name],) * repeats, graphed=name == "a" and graph)

    monkeypatch.setattr(gemm, "benchmark_ring", fake_ring)
    bench = gemm._Bench(machine, "cpu", 2, "rotate", False, 128, None, ("tvm",), [], lambda s: None)
    case = gemm._Case(64, 64, None, None, {}, {}, {})
    pending = [bench.row(case, 1, m, "int4", "tvm", [lambda m=m: m], 100, "float32") for m in ("a", "slow", "b")]
    rows = bench.measure(pending)
    names = ["a", "slow", "b"]
    expected = [("a", 1), ("slow", 1), ("b", 1)]  # round 0 warms each ring with a pass
    for r in range(1, gemm.ROUNDS):  # then each round starts further along; "slow" keeps its first round only
        s = r * -(-3 // gemm.ROUNDS) % 3
        expected += [(names[i], 0) for i in [*range(s, 3), *range(s)] if names[i] != "slow"]
    assert gemm.ROUNDS >= 3 and order == expected and order[3:7] == [("b", 0), ("a", 0), ("b", 0), ("a", 0)]
    assert [r.method for r in rows] == ["a", "slow", "b"]
    assert [r.median_ms for r in rows] == [1.0, gemm.SLOW_ROUND_MS, 2.0]
    # each round's median, in round order (the W3 / W2 goals compare rows round by round)
    assert [r.round_ms for r in rows] == [(1.0,) * gemm.ROUNDS, (gemm.SLOW_ROUND_MS,), (2.0,) * gemm.ROUNDS]
    assert all(math.isnan(r.roofline_ms) for r in rows)  # filled in by run_report, from the machine
    assert not any(graphs)
    # on a GPU the rings are captured in CUDA graphs; a row whose calls could not be is named in a note
    notes: list[str] = []
    gpu = gemm._Bench(machine, "cuda", 2, "rotate", False, 128, None, ("triton",), notes, lambda s: None)
    gpu.measure([gpu.row(case, 1, m, "int4", "triton", [lambda m=m: m], 100, "float16") for m in ("a", "b")])
    assert graphs[-1] and all(graphs[len(order) - 6 :])
    assert notes and all("b int4 M=1 64x64: not capturable in a CUDA graph" in n for n in notes)


def test_the_roofline_bandwidth_is_the_fastest_plain_read_of_the_run(monkeypatch):
    """A measured run's roofline bandwidth is a ceiling: the best of the measurements at its start and end
    and of the stream and dram rows' medians, with a note when one of them raised it."""
    low = Machine("cpu", "test cpu", 2, None, 0.001, {"float32": 1.0, "bfloat16": 1.0})  # 1 MB/s: any read beats it
    monkeypatch.setattr(gemm, "measure_machine", lambda *a, **k: low)
    monkeypatch.setattr(gemm, "ring_copies", lambda nbytes, device="cpu": 2)
    r = gemm.run_report((1,), ((128, 256),), ("int4",), 128, ("reference",), 1, threads=2, cache="rotate")
    reads = [row for row in r.rows if row.method in (gemm.STREAM, gemm.DRAM)]
    assert sorted(row.method for row in reads) == [gemm.DRAM, gemm.STREAM]
    fastest = max(reads, key=lambda row: row.bytes / row.median_ms)
    assert r.machine.bandwidth_gbs == pytest.approx(fastest.bytes / fastest.median_ms / 1e6)
    assert any("raised from 0.0" in n for n in r.notes)
    assert fastest.roofline_fraction == pytest.approx(1.0)  # the read that set the bandwidth


def test_triton_rows_include_w4a8_and_run_on_the_launch_device(machine, monkeypatch):
    """With the triton backend (the GPU's; the interpreter here, asked for explicitly) the lowbit rows run
    torch activations where Triton launches (no per-call weight copies), and the QoQ W4A8 rows
    (`lowbit_w4a8`: w4a8_group uint4 weights, int8 x per token in the call) stand beside them, checked against
    their own dequantized weight within the int8 tolerance; up to 4 rows the dot-free GEMV's rows too
    (`lowbit_fma`, the same x and weight)."""
    from lowbit.codegen.triton import runtime

    monkeypatch.setattr(gemm, "ring_copies", lambda nbytes, device="cpu": 2)
    converted: list[str] = []
    real = runtime._to_numpy
    monkeypatch.setattr(runtime, "_to_numpy", lambda a: converted.append(type(a).__name__) or real(a))
    r = gemm.run_report((1, 20), ((64, 256),), ("int4",), 128, ("triton",), 1, threads=2, machine=machine)
    got = {(row.method, row.dtype, row.M): row for row in r.rows if row.method.startswith("lowbit")}
    want = {(m, d, M) for m, d in (("lowbit", "int4"), (gemm.W4A8, "uint4")) for M in (1, 20)}
    assert set(got) == want | {("lowbit_fma", "int4", 1)}
    for row in got.values():
        assert row.median_ms > 0 and row.rel_error is not None and "MISMATCH" not in row.note, row
        assert row.rel_error <= (gemm.A8_TOLERANCE if row.method == gemm.W4A8 else gemm.TOLERANCE)
    assert got[(gemm.W4A8, "uint4", 20)].peak_dtype == "int8"
    assert converted == []  # every lowbit call launched on torch tensors in place
