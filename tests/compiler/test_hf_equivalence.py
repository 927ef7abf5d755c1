"""Goal of issue 5: the unquantized compiled model's logits equal HF transformers' on the same weights
(relative error < 1e-4 in fp32). A tiny random HF model is built with transformers, saved as safetensors,
compiled by `lowbit compile` (algorithm none) and run through the artifact with the TVM kernels."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import yaml

transformers = pytest.importorskip("transformers")

from lowbit.compiler import compile_model, load_compiled  # noqa: E402
from lowbit.config import load_config  # noqa: E402

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


def hf_model(kind: str, tmp_path):
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


@pytest.mark.parametrize("kind", list(CASES))
def test_compiled_logits_equal_transformers(kind, tmp_path):
    model, path = hf_model(kind, tmp_path)
    spec = {
        "model": {"source": "hf_dir", "path": str(path), "name": kind, "dtype": "float32"},
        "quantization": {"algorithm": "none", "kv_cache": {"dtype": "float16"}},
        "target": {"backend": "tvm", "device": "cpu", "max_model_len": 128, "tuning": {"policy": "off"}},
    }
    (tmp_path / "model.yaml").write_text(yaml.safe_dump(spec))
    cfg = load_config(tmp_path / "model.yaml")
    compile_model(cfg, tmp_path / "artifact", quiet=True, eval_tokens=0)
    compiled = load_compiled(tmp_path / "artifact")
    runner = compiled.runner()
    rng = np.random.default_rng(0)
    for length in (1, 7, 40):
        ids = rng.integers(0, COMMON["vocab_size"], length)
        with torch.no_grad():
            ref = model(torch.from_numpy(ids)[None]).logits[0].float().numpy()
        got = runner.logits(ids.tolist()).numpy()
        err = float(np.linalg.norm(got - ref) / np.linalg.norm(ref))
        assert np.isfinite(err) and err < 1e-4, (kind, length, err)
