"""Every transform of the quantize phase is a fold that keeps the float model: before any rounding, the
float64 logits of the transformed weights equal the original model's (AWQ scales into norms and v/up rows,
QoQ rotation (untying a tied head) and smoothing, SmoothAttention into W_q / W_k); only float32 storage of
the folded tensors differs."""

from __future__ import annotations

import numpy as np
import pytest

from lowbit.compiler.compile import calibration_ids, model_graph, untied_for_rotation
from lowbit.compiler.transforms import apply_transforms, calibrate
from lowbit.config import model_arch, parse_config
from lowbit.models.reference import reference_logits
from lowbit.models.synthetic import synthetic_weights

QOQ = {"algorithm": "qoq", "activations": "int8", "weights": {"dtype": "uint4", "group_size": 32}}
CASES = {
    "awq_mha": ({"num_kv_heads": 4}, {"algorithm": "awq", "weights": {"group_size": 32}}),
    "qoq_tied_gqa": ({"tie_word_embeddings": True}, QOQ),
    "qoq_smooth_only": ({}, {**QOQ, "qoq": {"rotate": False}}),
    "smooth_attention": ({}, {"kv_cache": {"dtype": "int8", "smooth_attention": True}}),
}


@pytest.mark.parametrize("case", CASES)
def test_folds_keep_the_float_logits(case: str) -> None:
    arch_kw, quantization = CASES[case]
    cfg = parse_config({
        "model": {"architecture": {"num_layers": 2, **arch_kw}},
        "quantization": {**quantization, "calibration": {"num_samples": 2, "seq_len": 16}},
    })  # fmt: skip
    arch0 = model_arch(cfg)
    weights0 = synthetic_weights(arch0, 0)
    arch, weights = untied_for_rotation(cfg, arch0, weights0)
    assert arch.tie_word_embeddings is False
    ids = calibration_ids(cfg, None, arch.vocab_size)
    folded, _, _ = apply_transforms(cfg, arch, model_graph(cfg, arch), weights, calibrate(arch, weights, ids), ids)
    changed = [n for n in folded if not np.array_equal(folded[n], np.asarray(weights0.get(n, 0)))]
    assert len(changed) >= 2 * arch.num_layers  # something was folded in every layer
    test_ids = calibration_ids(cfg, None, arch.vocab_size, held_out=True)
    ref = reference_logits(arch0, weights0, test_ids)
    got = reference_logits(arch, folded, test_ids)
    assert np.linalg.norm(got - ref) / np.linalg.norm(ref) < 1e-5
