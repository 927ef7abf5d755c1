"""The quantize phase packs every algorithm's weights in the layout the graph chose (`pack_weights`): on a GPU
with Triton the GEMM weights are "reordered" (Marlin-style tiles), whichever algorithm decided the codes."""

from __future__ import annotations

import pytest
import torch

from lowbit.compiler.compile import calibration_ids, model_graph
from lowbit.compiler.params import layout_name
from lowbit.compiler.quantize import linear_nodes, quantize_params
from lowbit.compiler.transforms import apply_transforms, calibrate
from lowbit.config import model_arch, parse_config
from lowbit.models.synthetic import synthetic_weights


@pytest.mark.parametrize("algorithm", ["rtn", "awq", "gptq"])
def test_every_algorithm_packs_in_the_graph_layout(algorithm: str) -> None:
    cfg = parse_config({
        "model": {"architecture": {"num_layers": 1}},
        "quantization": {"algorithm": algorithm, "weights": {"group_size": 32},
                         "calibration": {"num_samples": 2, "seq_len": 16}},
        "target": {"backend": "triton", "device": "cuda"},
    })  # fmt: skip
    arch = model_arch(cfg)
    graph = model_graph(cfg, arch)  # the graph only: no GPU needed
    quantized = [dict(n.attrs) for n in linear_nodes(graph) if dict(n.attrs).get("spec") is not None]
    assert quantized and {a["layout"] for a in quantized} == {"reordered"}
    weights = synthetic_weights(arch, 0)
    ids = calibration_ids(cfg, None, arch.vocab_size)
    calib = None if algorithm == "rtn" else calibrate(arch, weights, ids)
    fweights, quantizer, _ = apply_transforms(cfg, arch, graph, weights, calib, ids)
    params = quantize_params(graph, fweights, tied=arch.tie_word_embeddings, dtype=torch.float32, quantizer=quantizer)
    for a in quantized:
        assert layout_name(params[a["weight"]])[0] == a["layout"], a["weight"]
