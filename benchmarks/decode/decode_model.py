"""The TinyLlama-1.1B-shaped W4 model of the decode benchmark, built in-process in seconds.

Linear weights are random int4 codes with fp16 group-128 scales drawn like RTN of N(0, 0.02²) weights would
give them (|w|max/7 ≈ 0.008); speed does not depend on the code values, so no float model is quantized (that
takes ~4 min and 3 GB here). Norm weights are ones, the embedding N(0, 0.088²): the logits are meaningless,
the work per token is exactly that of the compiled 1.1B artifact (same graph passes, same kernels).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from lowbit.config.spec import LinearSpec
from lowbit.dtypes import dtype as as_dtype
from lowbit.graph import PassContext, build_graph, optimize
from lowbit.models import ArchConfig
from lowbit.ops.weight import QuantizedWeight

ARCH_1B = ArchConfig(
    model_type="llama", vocab_size=32000, hidden_size=2048, intermediate_size=5632, num_layers=22, num_heads=32,
    num_kv_heads=4, head_dim=64, max_position_embeddings=2048,
)  # fmt: skip
SPEC = LinearSpec("rtn", "int4", 128)


def random_qweight(n: int, k: int, rng: np.random.Generator) -> QuantizedWeight:
    """A symmetric int4 g128 weight [N, K] in the row layout with random codes and scales."""
    from lowbit.kernels.layouts import row_packed

    lay = row_packed((k, n), 4)
    words = rng.integers(0, 2**32, size=tuple(int(s) for s in lay.word_shape), dtype=np.uint32)
    scales = (0.008 * (1 + 0.1 * rng.standard_normal((k // 128, n)))).astype(np.float16)
    return QuantizedWeight(as_dtype("int4"), 128, "none", (n, k), lay, words, scales, None)


def build_graph_1b(
    arch: ArchConfig = ARCH_1B, kv_dtype: str = "int8", spec: LinearSpec = SPEC, decode_activations: str = "float"
) -> Any:
    ctx = PassContext(
        arch=arch, resolve=lambda m: spec, backend="tvm", dtype="float32", kv_dtype=kv_dtype,
        decode_activations=decode_activations,
    )  # fmt: skip
    return optimize(build_graph(arch, kv_dtype), ctx)


def random_params(graph: Any, arch: ArchConfig = ARCH_1B, seed: int = 0) -> dict[str, Any]:
    rng = np.random.default_rng(seed)
    params: dict[str, Any] = {}
    for node in graph.nodes_in_order():
        name = node.attrs_dict.get("weight")
        if name is None or name in params:
            continue
        if node.op == "linear":
            n, k = sum(node.attr("splits")), node.attr("in_features")
            params[name] = random_qweight(n, k, rng)
        elif node.op == "embedding":
            params[name] = torch.from_numpy(
                rng.standard_normal((arch.vocab_size, arch.hidden_size), dtype=np.float32) * 0.088
            )
        else:
            params[name] = torch.ones(arch.hidden_size, dtype=torch.float32)
    return params
