"""A small complete artifact to verify and corrupt (tests/artifact)."""

from __future__ import annotations

import ml_dtypes
import numpy as np
import pytest

from lowbit.artifact import ArtifactWriter

REPORT = {
    "phases": [
        {"name": "load", "seconds": 0.5},
        {"name": "quantize", "seconds": 1.5},
        {"name": "tune", "seconds": 2.0},
    ],
    "bits_per_weight": 4.25,
    "params": 123456,
    "weight_bytes": 65600,
    "memory_estimate": {
        "weights_bytes": 65600,
        "kv_cache_bytes_per_token": 2048,
        "activation_bytes": 4096,
        "total_bytes": 1 << 20,
    },
    "accuracy": {"kl_divergence": 0.0123, "top1_agreement": 0.973, "tokens": 512},
    "modules": [
        {"name": f"model.layers.{i}.self_attn.q_proj", "spec": "rtn int4 g128", "bits_per_weight": 4.25, "error": 0.01}
        for i in range(3)
    ],
}
MODEL_YAML = "model:\n  name: tiny-llama\n  arch: llama\nrecipe:\n  weight_dtype: int4\n  group_size: 128\n"


def sample_tensors() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    return {
        "layers.0.q.codes": rng.integers(0, 2**32, (4, 8), dtype=np.uint32),
        "layers.0.q.scales": rng.standard_normal((2, 8)).astype(np.float16),
        "layers.0.q.bf16": rng.standard_normal((3, 5)).astype(ml_dtypes.bfloat16),
        "norm.weight": rng.standard_normal(8).astype(np.float32),
        "layers.0.q.int8": rng.integers(-128, 128, (6,), dtype=np.int8),
    }


def write_sample(path, **kw):
    with ArtifactWriter(path, **kw) as w:
        w.add_text("model.yaml", MODEL_YAML)
        w.add_tensors("weights/model.safetensors", sample_tensors(), {"format": "lowbit"})
        w.add_json("report.json", REPORT)
        w.add_json("tokenizer/tokenizer_config.json", {"bos_token": "<s>"})
        w.add_bytes("tuning/records.bin", b"\x00\x01tuning")
        manifest = w.finalize({"model": "tiny-llama", "arch": "llama", "recipe": "w4 g128"})
    return manifest


@pytest.fixture
def artifact(tmp_path):
    path = tmp_path / "tiny"
    write_sample(path)
    return path


@pytest.fixture
def make_artifact():
    """`make_artifact(path, overwrite=False) -> Manifest`: writes the sample artifact."""
    return write_sample


@pytest.fixture
def sample():
    """The sample's contents: {"report", "model_yaml", "tensors"}."""
    return {"report": REPORT, "model_yaml": MODEL_YAML, "tensors": sample_tensors()}
