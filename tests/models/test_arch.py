"""ArchConfig from config.json dicts as real checkpoints write them (transformers 4.x and 5.x), the HF
sliding-window rules, and to_hf_config round trips."""

from __future__ import annotations

import dataclasses

import pytest

from lowbit.models import ArchConfig, ConfigError

BASE = dict(vocab_size=128, hidden_size=64, intermediate_size=96, num_hidden_layers=4, num_attention_heads=4)

# Llama 3.2 1B style (transformers 4.x): llama3 rope_scaling, tied, bf16, eos list, head_dim explicit
LLAMA32 = {
    **BASE, "model_type": "llama", "num_key_value_heads": 2, "head_dim": 16, "rope_theta": 500000.0,
    "rope_scaling": {"factor": 32.0, "high_freq_factor": 4.0, "low_freq_factor": 1.0,
                     "original_max_position_embeddings": 8192, "rope_type": "llama3"},
    "tie_word_embeddings": True, "torch_dtype": "bfloat16", "bos_token_id": 1, "eos_token_id": [2, 3, 4],
    "attention_bias": False, "mlp_bias": False, "pretraining_tp": 1,
}  # fmt: skip


def test_transformers_4_and_5_spellings_agree():
    v4 = ArchConfig.from_hf_config(LLAMA32)
    v5 = {k: v for k, v in LLAMA32.items() if k not in ("rope_theta", "rope_scaling", "torch_dtype")}
    v5 |= {"rope_parameters": {**LLAMA32["rope_scaling"], "rope_theta": 500000.0}, "dtype": "bfloat16"}
    assert ArchConfig.from_hf_config(v5) == v4
    old = {**LLAMA32, "rope_scaling": {**LLAMA32["rope_scaling"], "type": "llama3"}}
    del old["rope_scaling"]["rope_type"]
    assert ArchConfig.from_hf_config(old) == v4
    assert v4.rope_type == "llama3" and v4.rope_theta == 500000.0 and v4.torch_dtype == "bfloat16"
    assert v4.eos_token_id == (2, 3, 4) and v4.tie_word_embeddings and v4.head_dim == 16
    assert ArchConfig.from_hf_config(v4.to_hf_config()) == v4


def test_defaults_and_nulls():
    arch = ArchConfig.from_hf_config({**BASE, "model_type": "llama", "head_dim": None, "num_key_value_heads": None})
    assert (arch.head_dim, arch.num_kv_heads, arch.rope_type, arch.eos_token_id) == (16, 4, "default", ())
    default = ArchConfig.from_hf_config({**BASE, "model_type": "llama", "rope_parameters": {"rope_type": "default"}})
    assert default.rope_scaling == () and default.rope_theta == 10000.0


@pytest.mark.parametrize(
    ("cfg", "windows"),
    [
        ({"model_type": "mistral", "sliding_window": 4096}, [4096] * 4),
        ({"model_type": "mistral", "sliding_window": None}, [None] * 4),
        ({"model_type": "qwen2", "sliding_window": 4096, "use_sliding_window": False}, [None] * 4),
        ({"model_type": "qwen2", "sliding_window": 64, "use_sliding_window": True, "max_window_layers": 2},
         [None, None, 64, 64]),
        ({"model_type": "qwen2", "sliding_window": 64, "use_sliding_window": True, "max_window_layers": 28},
         [None] * 4),
        ({"model_type": "qwen2", "sliding_window": 64, "use_sliding_window": True,
          "layer_types": ["full_attention", "sliding_attention", "sliding_attention", "sliding_attention"]},
         [None, 64, 64, 64]),
        ({"model_type": "llama", "sliding_window": 64}, [None] * 4),
    ],
)  # fmt: skip
def test_sliding_window_as_hf_applies_it(cfg, windows):
    arch = ArchConfig.from_hf_config({**BASE, **cfg})
    assert [arch.layer_sliding_window(i) for i in range(4)] == windows
    back = ArchConfig.from_hf_config(arch.to_hf_config())
    assert [back.layer_sliding_window(i) for i in range(4)] == windows


def test_family_biases():
    qwen = ArchConfig.from_hf_config({**BASE, "model_type": "qwen2", "attention_bias": True, "mlp_bias": True})
    assert (qwen.qkv_bias, qwen.o_bias, qwen.mlp_bias) == (True, False, False)
    mistral = ArchConfig.from_hf_config({**BASE, "model_type": "mistral", "attention_bias": True})
    assert (mistral.qkv_bias, mistral.o_bias) == (False, False)
    llama = ArchConfig.from_hf_config({**BASE, "model_type": "llama", "attention_bias": True, "mlp_bias": True})
    assert (llama.qkv_bias, llama.o_bias, llama.mlp_bias) == (True, True, True)
    with pytest.raises(ConfigError, match=r"qkv_bias=True, o_bias=False.*attention_bias sets q/k/v/o together"):
        dataclasses.replace(llama, o_bias=False).to_hf_config()


def test_errors_name_the_field():
    with pytest.raises(ConfigError, match="layer_types"):
        ArchConfig.from_hf_config(
            {**BASE, "model_type": "qwen2", "use_sliding_window": True, "sliding_window": 8,
             "layer_types": ["sliding_attention", "full_attention", "full_attention", "sliding_attention"]}
        )  # fmt: skip
    with pytest.raises(ConfigError, match="sliding_window = 0"):
        ArchConfig.from_hf_config({**BASE, "model_type": "mistral", "sliding_window": 0})
    with pytest.raises(ConfigError, match="'dynamic' is not supported"):
        ArchConfig.from_hf_config({**BASE, "model_type": "llama", "rope_scaling": {"type": "dynamic", "factor": 2}})
    with pytest.raises(ConfigError, match="no 'intermediate_size'"):
        ArchConfig.from_hf_config(
            {k: v for k, v in {**BASE, "model_type": "llama"}.items() if k != "intermediate_size"}
        )
    with pytest.raises(ConfigError, match="window_from_layer"):
        dataclasses.replace(ArchConfig.from_hf_config({**BASE, "model_type": "mistral"}), window_from_layer=1)
