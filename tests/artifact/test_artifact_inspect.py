"""describe() / `lowbit inspect` and `lowbit verify` handlers: the key facts are printed, broken sections do
not crash, exit codes follow the verdict."""

from __future__ import annotations

import argparse
import json

from lowbit.artifact import ArtifactWriter, describe, open_artifact
from lowbit.artifact.command import add_inspect_arguments, add_verify_arguments, inspect_main, verify_main


def test_describe_has_the_key_facts(artifact):
    text = describe(artifact)
    a = open_artifact(artifact)
    for fact in [
        f"lowbit artifact {artifact}",
        "format 1",
        f"numpy {a.manifest.versions['numpy']}",
        a.manifest.device["cpu"],
        "model: tiny-llama",
        "recipe: w4 g128",
        "weights/model.safetensors",
        a.manifest.files["weights/model.safetensors"].sha256[:12],
        "model.name           tiny-llama",
        "recipe.group_size    128",
        "bits per weight: 4.250",
        "params: 123,456",
        "kv cache 2.0 KiB/token",
        "total 1.0 MiB",
        "512 held-out tokens",
        "logit KL divergence 0.0123",
        "top-1 agreement 97.30%",
        "model.layers.2.self_attn.q_proj  rtn int4 g128",
    ]:
        assert fact in text, fact
    phase_lines = [line.split() for line in text.splitlines() if line.strip().startswith(("load", "tune", "total"))]
    assert phase_lines == [["load", "0.50", "12%"], ["tune", "2.00", "50%"], ["total", "4.00"]]
    assert describe(a) == text  # stable


def test_module_table_is_capped(artifact):
    text = describe(artifact, max_modules=2)
    assert "modules (first 2 of 3):" in text and "layers.2" not in text


def test_partial_and_malformed_reports(tmp_path):
    with ArtifactWriter(tmp_path / "a") as w:
        w.add_json("report.json", {"bits_per_weight": "n/a", "phases": [{"name": "x"}], "modules": [1, {"name": "m"}]})
        w.add_json("kernels.json", {"kernels": [{"key": "ab" * 32, "name": "gemv", "backend": "tvm", "options": {}}]})
        w.add_text("model.yaml", "- just\n- a list\n")
        w.finalize()
    text = describe(tmp_path / "a")
    assert "bits per weight: n/a" in text and "kernels (1)" in text and "gemv" in text and "abababababab" in text
    with ArtifactWriter(tmp_path / "b") as w:
        w.add_json("report.json", {"memory_estimate": {"total_bytes": 5}, "accuracy": {"kl_divergence": None}})
        w.finalize()
    text = describe(tmp_path / "b")
    assert "memory estimate: total 5 B" in text and "logit KL divergence None" in text
    with ArtifactWriter(tmp_path / "c") as w:
        w.add_json("report.json", {"memory_estimate": {"weights_bytes": 1}, "phases": "oops", "modules": "x"})
        w.add_json("kernels.json", [])
        w.finalize()
    assert "kernels (0)" in describe(tmp_path / "c")


def parse(add, argv):
    p = argparse.ArgumentParser()
    add(p)
    return p.parse_args(argv)


def test_commands(artifact, capsys):
    assert inspect_main(parse(add_inspect_arguments, [str(artifact)])) == 0
    assert "top-1 agreement" in capsys.readouterr().out
    assert verify_main(parse(add_verify_arguments, [str(artifact)])) == 0
    assert "OK (full check)" in capsys.readouterr().out

    (artifact / "model.yaml").write_text("tampered: true\n")
    assert verify_main(parse(add_verify_arguments, [str(artifact)])) == 1
    err = capsys.readouterr().err
    assert "refusing to use it" in err and "model.yaml" in err
    m = json.loads((artifact / "manifest.json").read_text())
    m["files"].pop("report.json")
    (artifact / "manifest.json").write_text(json.dumps(m))
    assert inspect_main(parse(add_inspect_arguments, [str(artifact)])) == 1
    assert "report.json: unexpected file" in capsys.readouterr().err
