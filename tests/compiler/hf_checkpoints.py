"""Tiny HF checkpoints for the compiler tests: random transformers models saved as safetensors (`hf_model`), and
the same model stored as an AutoAWQ (GEMM) or GPTQ (v1 / v2) checkpoint (`quantized_checkpoint`), written the
way those tools write it (lowbit.quant.checkpoint_import's exporters, whose packing is tested against
hand-decoded words in tests/quant)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import torch

COMMON = dict(
    vocab_size=300, hidden_size=64, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4,
    num_key_value_heads=2, head_dim=16, max_position_embeddings=256, rms_norm_eps=1e-5,
)  # fmt: skip

CASES = {
    "llama3-rope-scaling": (
        "LlamaForCausalLM", "LlamaConfig",
        dict(rope_scaling={"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                           "original_max_position_embeddings": 32}, rope_theta=500000.0),
    ),
    "llama-bias-tied": ("LlamaForCausalLM", "LlamaConfig", dict(attention_bias=True, mlp_bias=True,
                                                              tie_word_embeddings=True)),
    "qwen2": ("Qwen2ForCausalLM", "Qwen2Config", dict(tie_word_embeddings=True)),
    "mistral": ("MistralForCausalLM", "MistralConfig", dict(sliding_window=None)),
}  # fmt: skip

CHAT_TEMPLATE = "{% for m in messages %}<|{{ m.role }}|>{{ m.content }}{% endfor %}<|assistant|>"

# method -> (quantization_config, lowbit dtype the codes are drawn as, zero_mode, GPTQ version)
FORMATS: dict[str, tuple[dict[str, Any], str, str, int]] = {
    "awq": ({"quant_method": "awq", "bits": 4, "group_size": 32, "zero_point": True, "version": "gemm"},
            "uint4", "post", 0),
    "gptq-v1-sym": ({"quant_method": "gptq", "bits": 4, "group_size": 32, "sym": True, "desc_act": False,
                     "checkpoint_format": "gptq"}, "int4", "none", 1),
    "gptq-v2-asym": ({"quant_method": "gptq", "bits": 4, "group_size": 32, "sym": False, "desc_act": False,
                      "checkpoint_format": "gptq_v2"}, "uint4", "post", 2),
}  # fmt: skip


def hf_model(kind: str, tmp_path: Path) -> tuple[Any, Path]:
    """A random transformers model of CASES[kind] (norms and biases randomized too) saved to tmp_path/hf."""
    import transformers

    model_cls, cfg_cls, extra = CASES[kind]
    torch.manual_seed(0)
    cfg = getattr(transformers, cfg_cls)(**COMMON, **extra)
    model = getattr(transformers, model_cls)(cfg).eval()
    with torch.no_grad():  # HF inits norms to 1 and biases to 0: randomize so they are actually tested
        for name, p in model.named_parameters():
            if "norm" in name or name.endswith("bias"):
                p.add_(0.1 * torch.randn_like(p))
    path = tmp_path / "hf"
    model.save_pretrained(path, safe_serialization=True)
    return model, path


def quantized_checkpoint(src: Path, dst: Path, fmt: str) -> dict[str, np.ndarray]:
    """Write `dst`: the float HF directory `src` with every decoder linear (lm_head stays float, as AutoAWQ and
    GPTQ leave it) quantized by RTN and stored in format FORMATS[fmt], config.json with its
    quantization_config, and a tokenizer_config.json with a chat template. Returns the checkpoint's model as
    float weights: every tensor of `dst` by HF name, the quantized linears' `.weight` dequantized."""
    from safetensors.numpy import load_file, save_file

    from lowbit.ops.weight import quantize
    from lowbit.quant.checkpoint_import import export_awq, export_gptq

    qc, dtype, zero_mode, version = FORMATS[fmt]
    dst.mkdir(parents=True)
    tensors = load_file(str(src / "model.safetensors"))
    out: dict[str, np.ndarray] = {}
    floats: dict[str, np.ndarray] = {}
    for name, t in tensors.items():
        module = name.removesuffix(".weight")
        if name.endswith("_proj.weight") and ".layers." in name:
            qw = quantize(np.asarray(t, np.float32), dtype, qc["group_size"], zero_mode=zero_mode)
            packed = export_awq(qw) if qc["quant_method"] == "awq" else export_gptq(qw, version)
            out |= {f"{module}.{k}": np.ascontiguousarray(v) for k, v in packed.items()}
            floats[name] = qw.dequantize()
        else:
            out[name] = t
            floats[name] = np.asarray(t, np.float32)
    save_file(out, str(dst / "model.safetensors"), metadata={"format": "pt"})
    config = json.loads((src / "config.json").read_text())
    (dst / "config.json").write_text(json.dumps({**config, "quantization_config": qc}, indent=1))
    for extra in ("generation_config.json",):
        if (src / extra).is_file():
            shutil.copy(src / extra, dst / extra)
    (dst / "tokenizer_config.json").write_text(json.dumps({"chat_template": CHAT_TEMPLATE, "eos_token": "</s>"}))
    return floats
