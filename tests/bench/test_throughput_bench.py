"""`lowbit bench throughput`: the serving roofline (bytes and flops per step from the artifact's graph, against
the parameters the artifact really stores; step and workload bounds by hand) and the command end to end on the
tiny artifact (both schedules, NanoFlow's token accounting, JSON keys)."""

from __future__ import annotations

import argparse
import json
import math
import sys

import pytest

from lowbit.bench.decode_roofline import ModelCost, decode_bound, model_cost, workload_bound
from lowbit.bench.throughput import add_arguments, format_report
from lowbit.bench.throughput import main as throughput_main


def test_model_cost_matches_the_stored_parameters(tiny_artifact):
    from lowbit.compiler import load_compiled
    from lowbit.ops.weight import QuantizedWeight

    cost = model_cost(tiny_artifact)
    model = load_compiled(tiny_artifact, verify="none")
    stored = 0
    for name, p in model.params.items():
        if isinstance(p, QuantizedWeight):
            stored += sum(a.nbytes for a in (p.words, p.scales, p.zeros, p.channel_scales) if a is not None)
        elif name != "model.embed_tokens.weight":  # a gather of a few rows per step, not a full read
            stored += p.numel() * p.element_size()
    assert cost.weight_bytes == stored
    # tiny-llama: 2 layers, 2 KV heads, head_dim 32, KV8 = 32 code bytes + fp16 scale + fp16 zero per vector
    assert cost.kv_bytes_per_token == 2 * 2 * 2 * (32 + 4) == 288
    assert cost.flops_per_seq == 2 * 512 * 128 + 128  # per sequence: last_token (a row of 128) and lm_head
    assert cost.attn_flops_per_context == 2 * 4 * 4 * 32  # layers x 4 * Hq * D
    linears = 2 * (256 * 128 + 128 * 128 + 512 * 128 + 128 * 256)  # qkv, o, gate_up, down per layer
    assert linears * 2 <= cost.flops_per_token <= linears * 2 + 20 * 128 * 4  # + norms, rope, silu (a few per feature)
    assert 4.0 < cost.bits_per_weight < 16.0 and cost.kv_dtype == "int8" and cost.compute_dtype == "float32"


COST = ModelCost(
    weight_bytes=1000, kv_bytes_per_token=10, flops_per_token=100, flops_per_seq=50, attn_flops_per_context=4,
    bits_per_weight=4.5, kv_dtype="int8", compute_dtype="float32", device="cpu",
)  # fmt: skip


def test_decode_bound_by_hand():
    # memory-bound: 1000 B weights + 10 B x 2 seqs x 5 context = 1100 B at 1000 B/s -> 1.1 s per step of 2 tokens
    d = decode_bound(COST, batch=2, context=5, bandwidth_gbs=1e-6, peak_gflops=1.0)
    assert d["step_bytes"] == 1100 and d["bound_by"] == "memory"
    assert d["step_ms"] == pytest.approx(1100.0) and d["output_tok_s"] == pytest.approx(2 / 1.1)
    # compute-bound: 2 x (100 + 50 + 4 x 5) = 340 flop at 100 flop/s
    c = decode_bound(COST, batch=2, context=5, bandwidth_gbs=1.0, peak_gflops=1e-7)
    assert c["step_flops"] == 340 and c["bound_by"] == "compute" and c["step_ms"] == pytest.approx(3400.0)


def test_workload_bound_by_hand():
    # 3 requests, 2 in, 3 out, 2 seats: wave 1 (2 seqs) prefill 1000+10*4, decode ctx 3: 1000+10*6, ctx 4: 1000+10*8;
    # wave 2 (1 seq): prefill 1000+10*2, decode 1000+10*3, 1000+10*4 -> 6270 B at 1000 B/s
    w = workload_bound(COST, num_prompts=3, input_len=2, output_len=3, batch=2, bandwidth_gbs=1e-6, peak_gflops=1.0)
    assert w["seconds"] == pytest.approx(6.27)
    assert w["prefill_seconds"] == pytest.approx(2.06) and w["decode_seconds"] == pytest.approx(4.21)
    assert w["tokens_per_second"] == pytest.approx(15 / 6.27)
    assert w["output_tokens_per_second"] == pytest.approx(9 / 6.27)


def _parse(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser()
    add_arguments(p)
    return p.parse_args(argv)


def run_child_in_process(cmd):
    """Stands in for throughput.run_command: the child's exact command line, through lowbit.cli.main, in this
    process (a fresh interpreter per schedule would cost ~10-20 s of imports and kernel builds here)."""
    from lowbit.cli import main as cli_main

    assert cmd[:3] == [sys.executable, "-m", "lowbit.cli"], cmd
    return cli_main(cmd[3:]), ""


@pytest.mark.parametrize("same_process", [False, True], ids=["process-per-schedule", "same-process"])
def test_bench_throughput_end_to_end(tiny_artifact, tmp_path, capsys, monkeypatch, same_process):
    import lowbit.bench.throughput as bt

    monkeypatch.setattr(bt, "run_command", run_child_in_process)
    out = tmp_path / "throughput.json"
    argv = [str(tiny_artifact), "--num-prompts", "4", "--input-len", "8", "--output-len", "4", "--warmup", "0",
            "--max-num-seqs", "4", "--schedules", "unsplit,nano", "--bandwidth-gbs", "10", "--peak-gflops", "50",
            "--no-verify", "--json", str(out)] + (["--same-process"] if same_process else [])  # fmt: skip
    assert throughput_main(_parse(argv)) == 0
    report = json.loads(out.read_text())
    assert [r["schedule"] for r in report["runs"]] == ["unsplit", "nano"]
    for r in report["runs"]:
        assert (r["num_requests"], r["total_input_tokens"], r["total_output_tokens"]) == (4, 32, 16)
        assert r["tokens_per_second"] == pytest.approx(48 / r["elapsed_time"])  # NanoFlow: (in + out) / s
        assert r["output_tokens_per_second"] == pytest.approx(16 / r["elapsed_time"])
        assert r["requests_per_second"] == pytest.approx(4 / r["elapsed_time"])
        assert 0 < r["roofline_fraction_pct"] < 100 and r["preemptions"] == 0
    ratio = report["ratios"]["nano/unsplit"]["tokens_per_second"]
    assert math.isclose(ratio, report["runs"][1]["tokens_per_second"] / report["runs"][0]["tokens_per_second"])
    m = report["machine"]
    assert (
        m["bandwidth_gbs"] == 10 and m["bandwidth_source"].startswith("given") and m["peak_source"].startswith("given")
    )
    assert report["roofline"]["decode"]["batch"] == 4
    text = capsys.readouterr().out
    assert "nano/unsplit" in text and "(in+out) tok/s" in text and "roofline on this machine" in text
    assert format_report(report) in text


def test_bad_schedule_names_the_flag(tiny_artifact, capsys):
    assert throughput_main(_parse([str(tiny_artifact), "--schedules", "fast"])) == 2
    assert "--schedules 'fast'" in capsys.readouterr().err


def test_a_failing_child_is_reported(tiny_artifact, monkeypatch, capsys):
    import lowbit.bench.throughput as bt

    monkeypatch.setattr(bt, "run_command", lambda cmd: (3, "line 1\nout of memory"))
    assert throughput_main(_parse([str(tiny_artifact), "--schedules", "nano", "--no-verify"])) == 1
    err = capsys.readouterr().err
    assert "schedule nano: the child process exited with 3" in err and "out of memory" in err
