"""Accuracy goals of issue 5, measured by the compile report (the compiled model run through its kernels vs
the float64 unquantized model on held-out tokens): W8A16 top-1 agreement >= 99% on the synthetic model, and
AWQ's KL below RTN's for W4A16 g128 on a model with outlier activation channels (some RMSNorm gains x25, as
in real LLMs; there per-channel int8 also drops to ~96% top-1 on this random model, measured)."""

from __future__ import annotations

import numpy as np
import pytest
import yaml

from lowbit.compiler import compile_model
from lowbit.config import load_config
from lowbit.models import ArchConfig
from lowbit.models.hf import save_hf_dir
from lowbit.models.synthetic import synthetic_tokenizer, synthetic_weights

ARCH = ArchConfig(
    model_type="llama", vocab_size=512, hidden_size=256, intermediate_size=512, num_layers=2, num_heads=4,
    num_kv_heads=2, head_dim=64, max_position_embeddings=256,
)  # fmt: skip


def save_model(path, outliers: float):
    w = {k: np.array(v) for k, v in synthetic_weights(ARCH, 1).items()}
    rng = np.random.default_rng(0)
    for layer in range(ARCH.num_layers):
        for norm in ("input_layernorm", "post_attention_layernorm"):
            g = w[f"model.layers.{layer}.{norm}.weight"]
            g[rng.choice(ARCH.hidden_size, 6, replace=False)] *= outliers  # outlier channels feed q/k/v, gate/up
    save_hf_dir(path, ARCH, w, tokenizer=synthetic_tokenizer(ARCH.vocab_size))
    return path


@pytest.fixture(scope="module")
def outlier_model(tmp_path_factory):
    return save_model(tmp_path_factory.mktemp("outliers") / "hf", 25.0)


@pytest.fixture(scope="module")
def plain_model(tmp_path_factory):
    return save_model(tmp_path_factory.mktemp("plain") / "hf", 1.0)


def compile_report(path, tmp_path, name: str, quant: dict) -> dict:
    spec = {
        "model": {"source": "hf_dir", "path": str(path), "name": name, "dtype": "float32"},
        "quantization": {
            **quant,
            "kv_cache": {"dtype": "float16"},
            "calibration": {"source": "synthetic", "num_samples": 8, "seq_len": 64},
        },
        "target": {"backend": "tvm", "device": "cpu", "max_model_len": 256, "tuning": {"policy": "off"}},
    }
    (tmp_path / f"{name}.yaml").write_text(yaml.safe_dump(spec))
    cfg = load_config(tmp_path / f"{name}.yaml")
    report = compile_model(cfg, tmp_path / name, quiet=True, eval_tokens=128).report
    acc = report["accuracy"]
    assert np.isfinite(acc["kl_divergence"]) and acc["tokens"] == 128
    return acc


def test_w8a16_top1_agreement(plain_model, tmp_path):
    acc = compile_report(plain_model, tmp_path, "w8", {"algorithm": "rtn",
                         "weights": {"dtype": "int8", "group_size": -1}})  # fmt: skip
    assert acc["top1_agreement"] >= 0.99, acc


def test_awq_kl_below_rtn(outlier_model, tmp_path):
    w4 = {"dtype": "uint4", "group_size": 128, "zero_mode": "post"}
    rtn = compile_report(outlier_model, tmp_path, "rtn4", {"algorithm": "rtn", "weights": w4})
    awq = compile_report(outlier_model, tmp_path, "awq4", {"algorithm": "awq", "weights": w4})
    assert awq["kl_divergence"] < rtn["kl_divergence"], (awq, rtn)
