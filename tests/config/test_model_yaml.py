"""model.yaml loading: the examples, defaults of a minimal file, the resolved file's round trip."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from lowbit.config import (
    ModelYaml,
    arch_config,
    check_against_model,
    load_config,
    model_arch,
    parse_config,
    resolve_linear,
)
from lowbit.models import ArchConfig

EXAMPLES = sorted((Path(__file__).parents[2] / "examples").glob("*.yaml"))


def test_the_four_examples_exist():
    assert {p.stem for p in EXAMPLES} >= {"tiny-llama", "llama-w4a16-awq", "llama-w4a8kv4-qoq", "mixed-bits"}


@pytest.mark.parametrize("path", EXAMPLES, ids=[p.stem for p in EXAMPLES])
def test_example_loads_checks_and_round_trips(path, tmp_path):
    cfg = load_config(path)
    arch = model_arch(cfg)
    check_against_model(cfg, arch)
    text = cfg.to_yaml()
    (tmp_path / "resolved.yaml").write_text(text)
    again = load_config(tmp_path / "resolved.yaml")
    assert again == cfg
    assert again.to_yaml() == text  # resolving is idempotent
    assert parse_config(yaml.safe_load(text)) == cfg
    specs = [resolve_linear(cfg, m.name) for m in arch.linears()]
    assert specs == [resolve_linear(again, m.name) for m in arch.linears()]
    assert any(s is not None for s in specs)


def test_minimal_file_gets_every_default(tmp_path):
    p = tmp_path / "m.yaml"
    p.write_text("model: {source: synthetic}\n")
    cfg = load_config(p)
    d = cfg.to_dict()
    assert d["schema_version"] == 1
    assert d["model"]["name"] == "synthetic" and d["model"]["seed"] == 0
    arch = d["model"]["architecture"]
    assert arch["head_dim"] == arch["hidden_size"] // arch["num_heads"]  # filled in
    assert d["quantization"]["algorithm"] == "rtn" and d["quantization"]["ignore"] == ["lm_head"]
    assert d["target"]["backend"] == "auto" and cfg.target.effective_backend == "tvm"
    a = arch_config(cfg)
    assert isinstance(a, ArchConfig) and a.num_layers == 2 and a.group_size == 2
    check_against_model(cfg, a)
    # an empty file is the same recipe
    (tmp_path / "empty.yaml").write_text("")
    assert load_config(tmp_path / "empty.yaml") == cfg


def test_resolved_yaml_is_frozen_and_compares_by_value(tmp_path):
    cfg = parse_config({"model": {"source": "synthetic"}}, source="a")
    other = parse_config({}, source="b")
    assert cfg == other and hash(cfg) == hash(other)  # the origin (a vs b) is not part of the value
    assert cfg != parse_config({"quantization": {"weights": {"group_size": 64}}})
    with pytest.raises(Exception, match="frozen"):
        cfg.model.name = "x"  # type: ignore[misc]
    assert isinstance(cfg, ModelYaml)


def test_architecture_keys_reach_arch_config():
    cfg = parse_config(
        {
            "model": {
                "architecture": {
                    "model_type": "qwen2",
                    "num_layers": 3,
                    "hidden_size": 64,
                    "num_heads": 4,
                    "num_kv_heads": 1,
                    "rope_scaling": {"type": "linear", "factor": 2.0},
                    "eos_token_id": [2, 3],
                    "rms_norm_eps": "1e-5",  # YAML 1.1 reads 1e-5 as a string: accepted as a number
                },
                "dtype": "bfloat16",
            }
        }
    )
    a = arch_config(cfg)
    assert a is not None
    assert (a.model_type, a.num_layers, a.head_dim, a.num_kv_heads) == ("qwen2", 3, 16, 1)
    assert a.rope_type == "linear" and a.rope_scaling_dict == {"rope_type": "linear", "factor": 2.0}
    assert a.eos_token_id == (2, 3) and a.rms_norm_eps == 1e-5 and a.torch_dtype == "bfloat16"


def test_hf_dir_reads_config_json(tmp_path):
    arch = ArchConfig("llama", 256, 64, 128, 2, 4, 2, 16, max_position_embeddings=1024)
    model_dir = tmp_path / "Tiny-Llama"
    model_dir.mkdir()
    import json

    (model_dir / "config.json").write_text(json.dumps(arch.to_hf_config()))
    (model_dir / "model.safetensors").write_bytes(b"")
    text = "model: {source: hf_dir, path: Tiny-Llama}\nquantization:\n  weights: {group_size: 64}\n"
    (tmp_path / "m.yaml").write_text(text)
    cfg = load_config(tmp_path / "m.yaml")
    assert cfg.model.path == str(model_dir)  # relative to the yaml file's directory
    assert cfg.model.name == "Tiny-Llama" and cfg.model.architecture is None and cfg.model.seed is None
    assert arch_config(cfg) is None
    assert model_arch(cfg) == arch
    check_against_model(cfg, model_arch(cfg))
    again = load_config_text(tmp_path, cfg.to_yaml())
    assert again == cfg


def load_config_text(tmp_path: Path, text: str) -> ModelYaml:
    p = tmp_path / "again.yaml"
    p.write_text(text)
    return load_config(p)
