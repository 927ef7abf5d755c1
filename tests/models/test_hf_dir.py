"""load_hf_dir on directories HF transformers saved: lowbit's float reference equals HF's logits (fp32 and
fp64 references vs HF fp32), the weights are HF's bit for bit, and broken directories fail naming the file."""

from __future__ import annotations

import dataclasses
import json
import shutil

import numpy as np
import pytest
import torch
from hf_oracle import CASES, LLAMA3_ROPE, hf_logits, random_ids, rel_err, save, tiny_model

from lowbit.models import ConfigError, WeightError, load_hf_dir
from lowbit.models.reference import reference_logits

TOL = 1e-5  # the goal is 1e-4 relative error in fp32


@pytest.fixture(scope="module", params=sorted(CASES))
def case(request, tmp_path_factory):
    family, kw = CASES[request.param]
    model = tiny_model(family, seed=len(request.param), **kw)
    path = save(model, tmp_path_factory.mktemp(request.param))
    return request.param, model, path


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_reference_equals_hf(case, dtype):
    name, model, path = case
    loaded = load_hf_dir(path)
    ids = random_ids(loaded.arch.vocab_size, batch=2, length=19, seed=7)
    err = rel_err(reference_logits(loaded.arch, loaded.weights, ids, dtype=dtype), hf_logits(model, ids))
    assert err < TOL, f"{name} {dtype}: relative error {err:.2e}"


def test_weights_are_hf_parameters(case):
    _, model, path = case
    loaded = load_hf_dir(path)
    state = model.state_dict()
    assert set(loaded.arch.param_shapes()) <= set(state)
    for name in loaded.arch.param_shapes():
        np.testing.assert_array_equal(loaded.weights[name], state[name].numpy(), err_msg=name)


# each mutation drops one feature the case exercises; the comparison must then fail (the test can fail)
MUTATIONS = {
    "llama_gqa_llama3_rope": {"rope_scaling": ()},
    "llama_linear_rope_mqa": {"rope_scaling": ()},
    "qwen2_tied_window": {"sliding_window": None},
    "mistral_window_head_dim": {"sliding_window": None},
    "llama_bias": {"o_bias": False},
    "qwen2_untied": {"rope_theta": 10000.0},
}


@pytest.mark.parametrize("name", sorted(MUTATIONS))
def test_comparison_detects_a_missing_feature(name, tmp_path):
    family, kw = CASES[name]
    model = tiny_model(family, seed=3, **kw)
    loaded = load_hf_dir(save(model, tmp_path))
    wrong = dataclasses.replace(loaded.arch, **MUTATIONS[name])
    ids = random_ids(loaded.arch.vocab_size, batch=1, length=24, seed=1)
    assert rel_err(reference_logits(wrong, loaded.weights, ids), hf_logits(model, ids)) > 1e-3


def test_arch_from_saved_config():
    cases = {name: CASES[name] for name in ("llama_gqa_llama3_rope", "qwen2_tied_window", "mistral_window_head_dim")}
    archs = {}
    for name, (family, kw) in cases.items():
        config = tiny_model(family, **kw).config.to_dict()
        from lowbit.models import ArchConfig

        archs[name] = ArchConfig.from_hf_config(config)
    assert archs["llama_gqa_llama3_rope"].rope_type == "llama3"
    assert archs["llama_gqa_llama3_rope"].num_kv_heads == 2
    qwen = archs["qwen2_tied_window"]
    assert qwen.tie_word_embeddings and qwen.qkv_bias and not qwen.o_bias
    assert [qwen.layer_sliding_window(i) for i in range(2)] == [None, 5]
    mistral = archs["mistral_window_head_dim"]
    assert mistral.head_dim == 24 and mistral.q_size == 96 and mistral.layer_sliding_window(0) == 6


def test_sharded_checkpoint(tmp_path):
    family, kw = CASES["llama_gqa_llama3_rope"]
    model = tiny_model(family, **kw)
    save(model, tmp_path, max_shard_size="20KB")
    assert (tmp_path / "model.safetensors.index.json").is_file()
    assert len(list(tmp_path.glob("model-*.safetensors"))) > 2
    loaded = load_hf_dir(tmp_path)
    ids = random_ids(loaded.arch.vocab_size, batch=1, length=12, seed=2)
    assert rel_err(reference_logits(loaded.arch, loaded.weights, ids), hf_logits(model, ids)) < TOL
    assert len(loaded.source_files) == 1 + 1 + len(list(tmp_path.glob("model-*.safetensors"))) + 1  # + generation


def test_bf16_checkpoint(tmp_path):
    family, kw = CASES["qwen2_tied_window"]
    model = tiny_model(family, **kw).to(torch.bfloat16)
    save(model, tmp_path)
    loaded = load_hf_dir(tmp_path)
    assert loaded.arch.torch_dtype == "bfloat16"
    assert loaded.weights.dtype("model.embed_tokens.weight") == "bfloat16"
    # HF's fp32 oracle loads the bf16 file (model.float() would keep RoPE's inv_freq buffer rounded to bf16)
    model = type(model).from_pretrained(tmp_path, dtype=torch.float32).eval()
    for name, p in model.state_dict().items():
        if name in loaded.weights:
            np.testing.assert_array_equal(loaded.weights[name], p.numpy(), err_msg=name)
    ids = random_ids(loaded.arch.vocab_size, batch=2, length=10, seed=4)
    assert rel_err(reference_logits(loaded.arch, loaded.weights, ids), hf_logits(model, ids)) < TOL


def test_transformers_4_config_keys(tmp_path):
    """A config.json in transformers 4.x spelling (rope_theta + rope_scaling with "type", torch_dtype) reads
    to the same architecture and logits."""
    family, kw = CASES["llama_gqa_llama3_rope"]
    model = tiny_model(family, **kw)
    save(model, tmp_path)
    new = load_hf_dir(tmp_path)
    cfg = json.loads((tmp_path / "config.json").read_text())
    cfg.pop("rope_parameters", None)
    cfg.pop("dtype", None)
    scaling = {k: v for k, v in LLAMA3_ROPE.items() if k not in ("rope_type", "rope_theta")}
    cfg.update(rope_theta=LLAMA3_ROPE["rope_theta"], rope_scaling={"type": "llama3", **scaling}, torch_dtype="float32")
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    old = load_hf_dir(tmp_path)
    assert old.arch == new.arch


def test_generation_config_eos_list(tmp_path):
    family, kw = CASES["llama_bias"]
    model = tiny_model(family, **kw, bos_token_id=1, eos_token_id=2)
    save(model, tmp_path)
    (tmp_path / "generation_config.json").write_text(json.dumps({"bos_token_id": 1, "eos_token_id": [2, 7, 9]}))
    loaded = load_hf_dir(tmp_path)
    assert loaded.arch.eos_token_id == (2,)
    assert loaded.eos_token_ids == (2, 7, 9) and loaded.bos_token_id == 1
    assert loaded.tokenizer_path is None


# -- errors --------------------------------------------------------------------------------------------
@pytest.fixture
def saved(tmp_path):
    family, kw = CASES["llama_bias"]
    return save(tiny_model(family, **kw), tmp_path / "m")


def test_missing_dir_and_config(tmp_path, saved):
    with pytest.raises(ConfigError, match="does not exist"):
        load_hf_dir(tmp_path / "nope")
    (saved / "config.json").unlink()
    with pytest.raises(ConfigError, match=r"no config\.json"):
        load_hf_dir(saved)


def test_missing_shard(tmp_path):
    family, kw = CASES["llama_bias"]
    save(tiny_model(family, **kw), tmp_path, max_shard_size="20KB")
    shard = sorted(tmp_path.glob("model-*.safetensors"))[1]
    shard.unlink()
    with pytest.raises(WeightError, match=shard.name):
        load_hf_dir(tmp_path)


def test_index_disagrees_with_shards(tmp_path):
    family, kw = CASES["llama_bias"]
    save(tiny_model(family, **kw), tmp_path, max_shard_size="20KB")
    index_path = tmp_path / "model.safetensors.index.json"
    index = json.loads(index_path.read_text())
    shards = sorted(set(index["weight_map"].values()))
    index["weight_map"]["model.norm.weight"] = next(s for s in shards if s != index["weight_map"]["model.norm.weight"])
    index_path.write_text(json.dumps(index))
    with pytest.raises(WeightError, match=r"model\.norm\.weight.*re-save"):
        load_hf_dir(tmp_path)
    index_path.write_text(json.dumps({"metadata": {}}))
    with pytest.raises(WeightError, match="weight_map"):
        load_hf_dir(tmp_path)


def test_wrong_tensor_shape(saved):
    cfg = json.loads((saved / "config.json").read_text())
    cfg["intermediate_size"] += 8
    (saved / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(WeightError, match=r"gate_proj\.weight has shape \[80, 64\], expected \[88, 64\].*safetensors"):
        load_hf_dir(saved)


def test_missing_tensor_named(saved):
    cfg = json.loads((saved / "config.json").read_text())
    cfg["num_hidden_layers"] = 3
    (saved / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(WeightError, match=r"missing model\.layers\.2\."):
        load_hf_dir(saved)


def test_pickle_only_dir_is_refused(saved):
    (saved / "model.safetensors").rename(saved / "pytorch_model.bin")
    with pytest.raises(WeightError, match=r"pytorch_model\.bin.*never unpickles.*safe_serialization=True"):
        load_hf_dir(saved)
    (saved / "pytorch_model.bin").unlink()
    with pytest.raises(WeightError, match="no weights"):
        load_hf_dir(saved)


def test_prequantized_and_unsupported_configs(saved, tmp_path):
    cfg = json.loads((saved / "config.json").read_text())
    # a quantization_config with float weights: the packed tensors are missing (checkpoints are imported by
    # tests/compiler/test_compile_imported.py)
    (saved / "config.json").write_text(json.dumps({**cfg, "quantization_config": {"quant_method": "gptq"}}))
    with pytest.raises(WeightError, match=r"no tensor is named '<module>\.qweight'.*not the quantized ones"):
        load_hf_dir(saved)
    (saved / "config.json").write_text(json.dumps({**cfg, "quantization_config": {"quant_method": "bitsandbytes"}}))
    with pytest.raises(ConfigError, match=r"config\.json: quantization_config\.quant_method: 'bitsandbytes'"):
        load_hf_dir(saved)
    (saved / "config.json").write_text(json.dumps({**cfg, "model_type": "gpt2"}))
    with pytest.raises(ConfigError, match="'gpt2'"):
        load_hf_dir(saved)
    (saved / "config.json").write_text(json.dumps({**cfg, "rope_parameters": {"rope_type": "yarn"}}))
    with pytest.raises(ConfigError, match="yarn"):
        load_hf_dir(saved)
    (saved / "config.json").write_text("{not json")
    with pytest.raises(ConfigError, match=r"config\.json"):
        load_hf_dir(saved)


def test_truncated_safetensors(saved):
    data = (saved / "model.safetensors").read_bytes()
    (saved / "model.safetensors").write_bytes(data[: len(data) // 2])
    with pytest.raises(WeightError, match="truncated"):
        load_hf_dir(saved)


def test_unused_tensor_warns(saved):
    shutil.copy(saved / "model.safetensors", saved / "backup.safetensors")
    from safetensors.numpy import save_file

    (saved / "model.safetensors").unlink()
    save_file({"extra.weight": np.zeros(3, np.float32)}, str(saved / "extra.safetensors"))
    with pytest.warns(UserWarning, match="extra.weight"):
        loaded = load_hf_dir(saved)  # no model.safetensors nor index: every *.safetensors is read
    assert "extra.weight" in loaded.weights


def test_quantized_checkpoint_loads_dequantized(saved):
    """An AutoAWQ checkpoint: every `<module>.qweight/.qzeros/.scales` is imported, `weights` serves the exact
    dequantization under `<module>.weight` and hides the packed tensors; the format is read from config.json."""
    from safetensors.numpy import load_file, save_file

    from lowbit.models.hf import checkpoint_quantization
    from lowbit.ops.weight import quantize
    from lowbit.quant.checkpoint_import import export_awq

    tensors = load_file(str(saved / "model.safetensors"))
    expect = {}
    for name in [n for n in tensors if n.endswith(("q_proj.weight", "down_proj.weight"))]:
        qw = quantize(tensors.pop(name).astype(np.float32), "uint4", 16, zero_mode="post")
        tensors |= {f"{name.removesuffix('.weight')}.{k}": v for k, v in export_awq(qw).items()}
        expect[name] = qw.dequantize()
    save_file(tensors, str(saved / "model.safetensors"))
    cfg = json.loads((saved / "config.json").read_text())
    qc = {"quant_method": "awq", "bits": 4, "group_size": 16, "zero_point": True, "version": "gemm"}
    (saved / "config.json").write_text(json.dumps({**cfg, "quantization_config": qc}))

    fmt, modules = checkpoint_quantization(saved)
    assert fmt.describe() == "AutoAWQ gemm, 4-bit, g16, asymmetric" and len(modules) == len(expect)
    (saved / "tokenizer_config.json").write_text('{"chat_template": "{{ messages }}"}')
    loaded = load_hf_dir(saved)
    assert loaded.quantization == fmt and sorted(loaded.quantized) == sorted(modules)
    for name, w in expect.items():
        np.testing.assert_array_equal(loaded.weights[name], w)
    assert not any(n.endswith((".qweight", ".qzeros", ".scales")) for n in loaded.weights)
    assert loaded.tokenizer_config_path == saved / "tokenizer_config.json"  # found (the chat template's file)
