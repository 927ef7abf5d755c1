"""Smoke test of `lowbit bench attention` on tiny heads and contexts: every expected row, finite positive times,
speedups / bandwidth / roofline fractions consistent with the times, the bytes model against a hand count, the
random cache against its dequantization, table and JSON agree. Performance is never asserted."""

from __future__ import annotations

import json
import math

import pytest
import torch

from lowbit.bench import attention as A
from lowbit.bench.roofline import Machine
from lowbit.cli import main
from lowbit.codegen.backend import available_backends

HEADS = A.Heads(q_heads=4, kv_heads=2, head_dim=16, page_size=8)
CELLS = ((2, 20),)  # 20 tokens: two full pages and a partial one
PREFILL = ((2, 12),)
KV = ("float16", "int8", "int4")
BACKEND = "tvm" if "tvm" in available_backends() else "reference"


@pytest.fixture(scope="module")
def machine():
    return Machine("cpu", "test cpu", 2, None, 10.0, {"float32": 50.0, "bfloat16": 25.0})  # fixed: no measuring


@pytest.fixture(scope="module")
def report(machine):
    return A.run_report(CELLS, PREFILL, KV, HEADS, (BACKEND,), 2, threads=2, flush=False, machine=machine)


def test_every_expected_row(report):
    got = {(r.phase, r.batch, r.context, r.method, r.kv_dtype, r.backend) for r in report.rows}
    torch_rows = {("torch_fp32", "float32", "torch"), ("torch_bf16", "bfloat16", "torch")}
    want = {("decode", 2, 20, *m) for m in torch_rows} | {("decode", 2, 20, "lowbit", kv, BACKEND) for kv in KV}
    want |= {("prefill", 2, 12, *m) for m in torch_rows} | {("prefill", 2, 12, "lowbit", "float32", BACKEND)}
    assert got == want and len(report.rows) == len(want) and not report.skipped


def test_times_ratios_and_fractions_are_consistent(report, machine):
    for phase in A.PHASES:
        rows = [r for r in report.rows if r.phase == phase]
        t32 = next(r.median_ms for r in rows if r.method == "torch_fp32")
        t16 = next(r.median_ms for r in rows if r.method == "torch_bf16")
        for r in rows:
            assert 0 < r.min_ms <= r.median_ms <= r.max_ms and math.isfinite(r.max_ms)
            assert r.speedup_fp32 == pytest.approx(t32 / r.median_ms)
            assert r.speedup_bf16 == pytest.approx(t16 / r.median_ms)
            assert r.bandwidth_ms == pytest.approx(r.bytes / 10e9 * 1e3)
            assert r.gbs == pytest.approx(r.bytes / (r.median_ms * 1e-3) / 1e9)
            assert r.bandwidth_fraction == pytest.approx(r.gbs / machine.bandwidth_gbs)
            flops_ms = r.flops / (machine.peak(r.peak_dtype) * 1e9) * 1e3
            assert r.roofline_ms == pytest.approx(max(r.bandwidth_ms, flops_ms))
            assert r.roofline_fraction == pytest.approx(r.roofline_ms / r.median_ms)


def test_lowbit_rows_match_torch_on_the_same_dequantized_data(report):
    lowbit = [r for r in report.rows if r.method == "lowbit"]
    assert lowbit and not report.failures
    assert all(r.rel_error is not None and r.rel_error < A.TOLERANCE and not r.note for r in lowbit)


def test_bytes_model_by_hand(report):
    # decode B=2, C=20, HKV=2, D=16, HQ=4: elements of K (or V) = 2·20·2·16 = 1280; q and out fp32 [2, 4, 16]
    io = 2 * (2 * 4 * 16 * 4)
    by_hand = {"float16": 2 * 1280 * 2, "int8": 2 * (1280 + 2 * 20 * 2 * 4), "int4": 2 * (1280 // 2 + 2 * 20 * 2 * 4)}
    for kv, kv_b in by_hand.items():
        assert A.decode_bytes(2, 20, HEADS, kv, 4) == kv_b + io
        assert next(r.bytes for r in report.rows if r.phase == "decode" and r.kv_dtype == kv) == kv_b + io
    assert A.decode_bytes(2, 20, HEADS, "float32", 4) == 2 * 1280 * 4 + io
    assert A.decode_flops(2, 20, HEADS) == 4 * 2 * 4 * 20 * 16
    # prefill B=2, L=12: q, out [24, 4, 16] and k, v [24, 2, 16] fp32; causal pairs 12·13/2 = 78 per sequence
    assert A.prefill_bytes(2, 12, HEADS, 4) == (2 * 24 * 4 * 16 + 2 * 24 * 2 * 16) * 4
    assert A.prefill_flops(2, 12, HEADS) == 4 * 2 * 4 * 16 * 78
    # Llama-3-8B, KV4 at B=8, ctx=4096: 4.25 bits per element with fp16 scale + zero per 128-element head vector
    big = A.Heads()
    assert A.kv_bytes(8 * 4096, big, "int4") * 8 / (2 * 8 * 4096 * 8 * 128) == pytest.approx(4.25)


def test_random_cache_dequantizes_through_the_block_table():
    gen = torch.Generator().manual_seed(1)
    args, k, v = A.random_paged_cache(2, 20, HEADS, "int4", gen)
    words, tables = args["k_cache"], args["block_tables"]  # keys [NP, HKV, D // 8, PS] (pack_int4_keys)
    assert words.dtype == torch.int32 and tuple(words.shape) == (6, 2, 2, 8) and tables.dtype == torch.int32
    assert tuple(args["v_cache"].shape) == (6, 8, 2, 2)  # values [NP, PS, HKV, D // 8]
    assert sorted(tables.flatten().tolist()) == list(range(6)) and k.shape == v.shape == (2, 2, 20, 16)
    shifts = torch.arange(8, dtype=torch.int32) * 4
    for name, dense, tokens_major in (("k", k, words.permute(0, 3, 1, 2)), ("v", v, args["v_cache"])):
        codes = ((tokens_major[..., None] >> shifts) & 15).reshape(6, 8, 2, 16).float()  # the documented layouts
        x = (codes - args[f"{name}_zeros"].float()[..., None]) * args[f"{name}_scales"].float()[..., None]
        b, t, h = 1, 17, 1  # token 17 of sequence 1: page tables[1, 2], offset 1
        assert torch.equal(dense[b, h, t], x[tables[b, t // 8], t % 8, h]), name


def test_pack_int4_puts_code_j_at_bits_4j():
    codes = torch.tensor([[1, 2, 3, 4, 5, 6, 7, 15]], dtype=torch.uint8)
    assert A.pack_int4(codes).item() == 0xF7654321 - 2**32  # as int32


def test_skipped_cells_are_stated_in_the_table(machine):
    r = A.run_report(((2, 64),), (), ("int8",), HEADS, (), 1, max_baseline_gb=1e-6, flush=False, machine=machine)
    assert not r.rows and len(r.skipped) == 1 and "GB > 1e-06 GB" in r.skipped[0].reason
    assert "skipped: torch fp32 K/V would need" in A.format_table(r)


def test_table_json_and_goals(report, tmp_path):
    table = A.format_table(report)
    assert "bandwidth" in table.splitlines()[0] and table.count("torch_fp32") == 2 and "%BW" in table
    data = json.loads(json.dumps(A.to_json(report)))
    assert len(data["rows"]) == len(report.rows) and data["config"]["heads"]["q_heads"] == 4
    assert data["rows"][0].keys() >= {"phase", "batch", "context", "median_ms", "gbs", "bandwidth_fraction"}
    goals = A.goals(report)  # no goal decode cell in this tiny run; the prefill row has its target
    assert [g["goal"].split(":")[0] for g in goals] == [f"prefill B=2 L=12 {BACKEND}"]
    assert goals[0]["value"] == pytest.approx(1 / next(r.speedup_fp32 for r in report.rows if r.method == "lowbit"
                                                        and r.phase == "prefill"))  # fmt: skip


def test_cli_writes_table_and_json(tmp_path, capsys, monkeypatch):
    argv = ["bench", "attention", "--batch", "1", "--context", "24", "--prefill", "none", "--kv-dtypes", "int4"]
    argv += ["--q-heads", "2", "--kv-heads", "1", "--head-dim", "16", "--page-size", "8", "--repeats", "1"]
    argv += ["--backends", BACKEND, "--no-flush", "--json", str(tmp_path / "a.json")]
    monkeypatch.setattr(A, "measure_machine", lambda *a, **k: Machine("cpu", "m", 1, None, 10.0, {"float32": 50.0}))
    assert main(argv) == 0
    text = capsys.readouterr().out
    assert text.splitlines()[0].startswith("# device") and "lowbit" in text and "int4" in text
    data = json.loads((tmp_path / "a.json").read_text())
    assert len(data["rows"]) == 3 and data["config"]["decode_cells"] == [[1, 24]]


@pytest.mark.parametrize(
    ("argv", "words"),
    [
        (["--prefill", "1by512"], ["--prefill", "'1by512'", "1x512"]),
        (["--kv-dtypes", "int3"], ["'int3'", "int8,int4"]),
        (["--context", "0"], ["--context", "'0'", "positive", "512,2048"]),
        (["--max-baseline-gb", "-1"], ["'-1'", "positive"]),
    ],
)
def test_cli_argument_errors_name_flag_value_and_fix(argv, words, capsys):
    with pytest.raises(SystemExit) as e:
        main(["bench", "attention", *argv])
    assert e.value.code == 2
    err = capsys.readouterr().err
    for w in words:
        assert w in err, err


def test_cli_rejects_heads_that_do_not_group():
    with pytest.raises(SystemExit, match=r"--q-heads 6 must be a multiple of --kv-heads 4"):
        main(["bench", "attention", "--q-heads", "6", "--kv-heads", "4"])
