"""`lowbit compile | generate | inspect | verify` end to end on the tiny example: the artifact verifies, loads,
generates deterministically, survives no tampering, and bad recipes fail before any weight is read."""

from __future__ import annotations

import json
import shutil

import pytest

from lowbit.cli import main

SMALL = ["--set", "model.architecture.num_layers=1", "--set", "target.max_model_len=64"]


@pytest.fixture(scope="module")
def artifact(tmp_path_factory):
    out = tmp_path_factory.mktemp("cli") / "tiny"
    assert main(["compile", "examples/tiny-llama.yaml", "-o", str(out), "--quiet", "--eval-tokens", "16", *SMALL]) == 0
    return out


def test_compile_writes_a_verified_artifact(artifact, capsys):
    assert main(["verify", str(artifact)]) == 0
    assert "OK" in capsys.readouterr().out
    report = json.loads((artifact / "report.json").read_text())
    assert {p["name"] for p in report["phases"]} >= {"validate", "load", "graph", "quantize", "kernels", "write"}
    assert 4.0 < report["bits_per_weight"] < 32.0 and 0.0 <= report["accuracy"]["kl_divergence"] < 0.1
    assert main(["inspect", str(artifact)]) == 0
    text = capsys.readouterr().out
    assert "tiny-llama" in text and "sha256" in text and "weights/model.safetensors" in text


def test_generate_is_deterministic(artifact, capsys):
    args = ["generate", str(artifact), "--prompt", "Hello", "--max-tokens", "6", "--ignore-eos"]
    assert main(args) == 0
    first = capsys.readouterr().out
    assert main(args) == 0
    second = capsys.readouterr().out
    tokens = [line for line in first.splitlines() if "tokens [" in line]
    assert tokens and tokens == [line for line in second.splitlines() if "tokens [" in line]
    assert "(length)" in tokens[0]
    sampled = ["generate", str(artifact), "--prompt", "Hello", "--max-tokens", "6", "--temperature", "1.0",
               "--seed", "3", "--ignore-eos"]  # fmt: skip
    assert main(sampled) == 0 and main(sampled) == 0
    outs = [line for line in capsys.readouterr().out.splitlines() if "tokens [" in line]
    assert len(outs) == 2 and outs[0] == outs[1]


def test_tampered_artifact_is_refused(artifact, tmp_path, capsys):
    bad = tmp_path / "bad"
    shutil.copytree(artifact, bad)
    weights = bad / "weights" / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-1] ^= 0x01
    weights.write_bytes(bytes(data))
    assert main(["verify", str(bad)]) == 1
    assert "weights/model.safetensors" in capsys.readouterr().err  # the refusal goes to stderr
    with pytest.raises(Exception, match=r"model\.safetensors"):
        main(["generate", str(bad), "--prompt", "x", "--max-tokens", "1"])


def test_generate_without_a_tokenizer_takes_token_ids(artifact, tmp_path, capsys):
    bare = tmp_path / "bare"
    shutil.copytree(artifact, bare)
    (bare / "tokenizer.json").unlink()
    manifest = json.loads((bare / "manifest.json").read_text())
    manifest["files"].pop("tokenizer.json")
    (bare / "manifest.json").write_text(json.dumps(manifest))
    base = ["generate", str(bare), "--no-verify", "--max-tokens", "2", "--ignore-eos"]
    assert main(base) == 2 and main([*base, "--prompt", "x", "--prompt-ids", "1,5"]) == 2  # text needs a tokenizer
    assert "has no tokenizer.json" in capsys.readouterr().err
    assert main([*base, "--prompt-ids", "1,5"]) == 0
    assert "(length)" in capsys.readouterr().out


@pytest.mark.parametrize(
    "sets, field",
    [(["quantization.weights.group_size=48"], "group_size"), (["quantization.weights.dtype=int9"], "dtype"),
     (["quantization.ignore=['nothing_matches']"], "ignore"), (["quantization.activations=off"], "activations"),
     (["quantization.wieghts.dtype=int4"], "weights")],
)  # fmt: skip
def test_bad_recipes_fail_before_any_work(sets, field, tmp_path):
    args = ["compile", "examples/tiny-llama.yaml", "-o", str(tmp_path / "x"), "--quiet"]
    for s in sets:
        args += ["--set", s]
    with pytest.raises(ValueError, match=field):
        main(args)
    assert not (tmp_path / "x").exists()


def test_warm_batch_sizes_cover_every_gemv_row_tile():
    """The compile-time warm-up runs 1, 2, 4, .. sequences (decode M = seqs, prefill M = 3·seqs), so every
    power-of-two GEMV row tile up to 16 that the runtime picks is built before serving."""
    from lowbit.compiler.compile import warm_batch_sizes
    from lowbit.ops.linear import GEMV_MAX_M

    assert warm_batch_sizes(1) == [1] and warm_batch_sizes(2) == [1, 2]
    assert warm_batch_sizes(12) == [1, 2, 4, 8, 12] and warm_batch_sizes(256) == [1, 2, 4, 8, 16]
    tiles = {1 << max(0, (m - 1).bit_length()) for s in warm_batch_sizes(256) for m in (s, 3 * s) if m <= GEMV_MAX_M}
    assert tiles == {1, 2, 4, 8, 16}
