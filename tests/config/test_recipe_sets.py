"""`--set key=value`: values parsed as YAML, beat the file, and get the same error text (sourced to the --set)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from lowbit.config import RecipeError, check_against_model, load_config, model_arch, parse_config
from lowbit.config.load import parse_set
from lowbit.models import ArchConfig

EXAMPLES = Path(__file__).parents[2] / "examples"


def write(tmp_path: Path, text: str) -> Path:
    p = tmp_path / "model.yaml"
    p.write_text(text)
    return p


def test_set_beats_the_file_and_parses_yaml_values(tmp_path):
    p = write(tmp_path, "quantization: {weights: {group_size: 32}}\ntarget: {tuning: {policy: 'off'}}\n")
    cfg = load_config(p, ["quantization.weights.group_size=64", "target.tuning.budget_s=1.5", "target.device=cuda"])
    assert cfg.quantization.weights.group_size == 64 and isinstance(cfg.quantization.weights.group_size, int)
    assert cfg.target.tuning.budget_s == 1.5 and cfg.target.device == "cuda"
    assert cfg.target.effective_backend == "triton"
    assert load_config(p).quantization.weights.group_size == 32  # the file itself is untouched


def test_later_set_wins_and_whole_values_replace(tmp_path):
    p = write(tmp_path, "quantization: {ignore: [lm_head, 'model\\.layers\\.0\\..*']}\n")
    cfg = load_config(p, ["target.max_num_seqs=2", "target.max_num_seqs=4", "quantization.ignore=[]"])
    assert cfg.target.max_num_seqs == 4 and cfg.quantization.ignore == ()


def test_set_into_lists(tmp_path):
    p = write(tmp_path, "quantization: {overrides: [{pattern: lm_head, dtype: int8}]}\n")
    cfg = load_config(p, ["quantization.overrides[0].group_size=-1", "quantization.overrides.1={pattern: '.*q_proj'}"])
    assert cfg.quantization.overrides[0].group_size == -1
    assert cfg.quantization.overrides[1].pattern == ".*q_proj"
    with pytest.raises(RecipeError) as info:
        load_config(p, ["quantization.overrides[5].dtype=int8"])
    (problem,) = info.value.problems
    assert problem.source == "--set quantization.overrides[5].dtype=int8" and "past the end" in problem.problem
    with pytest.raises(RecipeError, match="pattern: <missing>: required key is missing"):
        load_config(write(tmp_path, ""), ["quantization.overrides[0].dtype=int8"])


@pytest.mark.parametrize(
    ("arg", "path", "words"),
    [
        ("quantization.weights.gruop_size=64", "quantization.weights.gruop_size", "did you mean 'group_size'"),
        ("targt.backend=tvm", "targt", "did you mean 'target'"),
        ("quantization.weights.group_size=abc", "quantization.weights.group_size", "not an integer"),
        ("quantization.weights.group_size=[64]", "quantization.weights.group_size", "not an integer"),
        ("target.tuning.policy=off", "target.tuning.policy", "YAML reads bare off as a boolean"),
        ("target.backend=trition", "target.backend", "did you mean 'triton'"),
        ("model.source.kind=x", "model.source", "not a mapping"),
        ("target.backend", "<root>", "not key=value"),
        ("target..backend=tvm", "<root>", "not a dotted key path"),
        ("target.backend=[tvm", "<root>", "not valid YAML"),
    ],
)
def test_bad_set_names_the_argument(tmp_path, arg, path, words):
    with pytest.raises(RecipeError) as info:
        load_config(write(tmp_path, "model: {source: synthetic}\n"), [arg])
    (problem,) = info.value.problems
    assert problem.source == f"--set {arg}" and problem.path == path
    assert words in str(problem), str(problem)


def test_file_problems_and_set_problems_together(tmp_path):
    p = write(tmp_path, "target: {backnd: tvm}\n")
    with pytest.raises(RecipeError) as info:
        load_config(p, ["target.max_model_len=zero"])
    sources = sorted(pr.source for pr in info.value.problems)
    assert sources == sorted([str(p), "--set target.max_model_len=zero"])


def test_set_replaces_a_yaml_boolean_of_the_file(tmp_path):
    p = write(tmp_path, "target: {tuning: {policy: off}}\n")
    with pytest.raises(RecipeError, match="bare off"):
        load_config(p)
    assert load_config(p, ["target.tuning.policy=cached"]).target.tuning.policy == "cached"
    assert load_config(p, ["target.tuning.policy='off'"]).target.tuning.policy == "off"


def test_switching_source_on_the_command_line(tmp_path, monkeypatch):
    """The AWQ example's comment: --set model.source=hf_dir --set model.path=... on a synthetic recipe."""
    arch = ArchConfig("llama", 1024, 256, 768, 2, 8, 2, 32, max_position_embeddings=2048)
    (tmp_path / "ckpt").mkdir()
    (tmp_path / "ckpt" / "config.json").write_text(json.dumps(arch.to_hf_config()))
    (tmp_path / "ckpt" / "model.safetensors").write_bytes(b"")
    (tmp_path / "calib.txt").write_text("hello\n\nworld\n")
    monkeypatch.chdir(tmp_path)  # relative --set paths are relative to the working directory
    sets = [
        "model.source=hf_dir",
        "model.path=ckpt",
        "quantization.calibration.source=file",
        "quantization.calibration.path=calib.txt",
    ]
    cfg = load_config(EXAMPLES / "llama-w4a16-awq.yaml", sets)
    assert cfg.model.path == str(tmp_path / "ckpt") and cfg.model.architecture is None and cfg.model.seed is None
    assert cfg.quantization.calibration.path == str(tmp_path / "calib.txt")
    assert cfg.model.name == "llama-w4a16-awq"
    assert model_arch(cfg) == arch
    check_against_model(cfg, model_arch(cfg))
    # and back: a synthetic source drops the file's path
    back = parse_config(cfg.to_dict(), sets=["model.source=synthetic"])
    assert back.model.path is None and back.model.architecture is not None


def test_parse_set():
    assert parse_set("a.b[2].c=1") == (("a", "b", 2, "c"), 1, {})
    assert parse_set("a.b=") == (("a", "b"), None, {})
    assert parse_set("a=x=y") == (("a",), "x=y", {})
    assert parse_set("a={p: on}") == (("a",), {"p": True}, {("p",): "on"})
