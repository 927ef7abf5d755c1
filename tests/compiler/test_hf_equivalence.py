"""Goal of issue 5: the unquantized compiled model's logits equal HF transformers' on the same weights
(relative error < 1e-4 in fp32). A tiny random HF model is built with transformers (hf_checkpoints.hf_model),
saved as safetensors, compiled by `lowbit compile` (algorithm none) and run through the artifact with the TVM
kernels."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import yaml

transformers = pytest.importorskip("transformers")

from hf_checkpoints import CASES, COMMON, hf_model  # noqa: E402

from lowbit.compiler import compile_model, load_compiled  # noqa: E402
from lowbit.config import load_config  # noqa: E402


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
