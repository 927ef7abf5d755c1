"""`lowbit tune --profile`: graph nodes map to the planner's ops by their runtime patterns; profiling the tiny
artifact gives a positive time per (op, rows, share) for every layer op it has, written to the per-artifact
cache; `lowbit plan ARTIFACT` then calibrates with it (and says so), and its lookups are the measured times."""

from __future__ import annotations

import argparse

import pytest

from lowbit.planner.cli import add_tune_parser
from lowbit.planner.cost import KernelProfile
from lowbit.planner.profile import default_profile_path, load_profile, node_op, scaled_workload
from lowbit.planner.workload import Workload


def test_node_op_follows_the_runtime_patterns():
    names = {
        "model.layers.3.input_layernorm": "input_norm",
        "model.layers.3.mlp_residual": "input_norm",
        "model.layers.0.self_attn.qkv_proj": "qkv",
        "model.layers.0.self_attn.q_proj": "qkv",
        "model.layers.1.self_attn.rope": "rope",
        "model.layers.1.self_attn.attn": "attn",
        "model.layers.1.self_attn.o_proj": "o_proj",
        "model.layers.1.post_attention_layernorm": "post_norm",
        "model.layers.1.mlp.gate_up_proj": "gate_up",
        "model.layers.1.mlp.act": "act",
        "model.layers.12.mlp.down_proj": "down",
        "model.embed_tokens": None,
        "model.norm": None,
        "lm_head": None,
    }
    assert {n: node_op(n) for n in names} == names


def test_scaled_workload_keeps_the_mix():
    base = Workload(64, 32, 128, 32, 0)
    assert scaled_workload(base, 16) == Workload(16, 8, 128, 8, 0)
    assert scaled_workload(base, 1) == Workload(1, 1, 128, 1, 0)
    assert scaled_workload(Workload(64, 0, 1, 32, 0), 8) == Workload(8, 0, 1, 8, 0)


@pytest.mark.slow
def test_tune_profile_then_plan_uses_it(tiny_artifact, tmp_path, monkeypatch, capsys):
    from lowbit.planner.cli import add_arguments
    from lowbit.planner.cli import main as plan_main

    monkeypatch.setenv("LOWBIT_CACHE", str(tmp_path / "cache"))
    ap = argparse.ArgumentParser()
    add_tune_parser(ap.add_subparsers())
    args = ap.parse_args(["tune", str(tiny_artifact), "--profile", "--rows", "4", "8", "--threads", "1",
                          "--repeats", "1", "--decode-context", "16", "--no-verify"])  # fmt: skip
    assert args.func(args) == 0
    path = default_profile_path(tiny_artifact)
    assert path.is_file() and str(path).startswith(str(tmp_path / "cache"))
    prof = load_profile(path)
    ops = {"input_norm", "qkv", "rope", "attn", "o_proj", "post_norm", "gate_up", "act", "down"}
    assert {r.op for r in prof.records} == ops
    assert {(r.rows, r.share) for r in prof.records} == {(4, 0.5), (8, 0.5)}  # 1 of the 2 cores
    assert all(r.seconds > 0 for r in prof.records)
    assert KernelProfile.from_json(prof.to_json()) == prof
    rec = next(r for r in prof.records if r.op == "down" and r.rows == 8)
    assert prof.lookup("down", 8, 0.5) == rec.seconds
    capsys.readouterr()
    pa = argparse.ArgumentParser()
    add_arguments(pa)
    rc = plan_main(pa.parse_args([str(tiny_artifact), "--hardware", "cpu", "--max-evals", "6", "--dense-batch",
                                  "8", "--decode-tokens", "4", "--decode-context", "16"]))  # fmt: skip
    assert rc == 0
    assert "calibrated with the cached kernel profile" in capsys.readouterr().out


def test_tune_needs_rows_that_are_positive(tmp_path):
    from lowbit.planner.profile import ProfileError, profile_artifact

    with pytest.raises(ProfileError, match="rows"):
        profile_artifact(tmp_path, rows=(0,))
