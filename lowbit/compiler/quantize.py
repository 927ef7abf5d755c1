"""The quantize phase: every linear node of the optimized graph gets its parameter — dense in the compute
dtype (spec None) or a `QuantizedWeight` made by the spec's algorithm from the (fused) float weight.

Algorithms (lowbit.quant): rtn (round to nearest, min-max per group); awq (activation-aware per-input-channel
scales folded into the preceding RMSNorm / linear, then clip search + RTN); gptq (Hessian-guided rounding from
the calibration inputs); qoq (W4A8 progressive / per-channel, after the optional rotation and smoothing of
the float weights, see `lowbit.compiler.transforms`); imported (the codes of an AutoAWQ / GPTQ checkpoint as
stored, moved into the node's layout: `lowbit.compiler.imported`).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import numpy as np
import torch

from lowbit.config.spec import LinearSpec
from lowbit.ops.weight import QuantizedWeight
from lowbit.quant.rtn import rtn_quantize


def source_names(graph: Any, name: str, tied: bool) -> tuple[str, ...]:
    """The HF param names concatenated (along out features) into the graph param `name`."""
    fused = dict(graph.meta.get("fused_params", {}))
    if name in fused:
        return tuple(fused[name])
    if name == "lm_head.weight" and tied:
        return ("model.embed_tokens.weight",)
    return (name,)


def float_param(weights: Mapping[str, np.ndarray], graph: Any, name: str, tied: bool) -> np.ndarray:
    srcs = source_names(graph, name, tied)
    arrays = [np.asarray(weights[s], dtype=np.float32) for s in srcs]
    return arrays[0] if len(arrays) == 1 else np.concatenate(arrays, axis=0)


def linear_nodes(graph: Any) -> list[Any]:
    return [n for n in graph.nodes_in_order() if n.op == "linear"]


def quantize_params(
    graph: Any,
    weights: Mapping[str, np.ndarray],
    *,
    tied: bool,
    dtype: torch.dtype,
    quantizer: Callable[[Any, np.ndarray, LinearSpec], QuantizedWeight] | None = None,
    progress: Callable[[str], None] | None = None,
    imported: Mapping[str, QuantizedWeight] | None = None,
) -> dict[str, Any]:
    """name -> dense torch tensor | QuantizedWeight for every param the graph reads.

    `quantizer(node, w, spec)` overrides RTN (`lowbit.quant.rtn_quantize`; AWQ / GPTQ hooks); `progress(name)`
    is called per linear;
    `imported` (module -> QuantizedWeight of a quantized checkpoint) supplies the params of spec algorithm
    "imported" without reading float weights.
    """
    params: dict[str, Any] = {}
    for node in graph.nodes_in_order():
        attrs = dict(node.attrs)
        for key in ("weight", "bias"):
            name = attrs.get(key)
            if name is None or name in params:
                continue
            spec = attrs.get("spec") if node.op == "linear" and key == "weight" else None
            if spec is not None and spec.algorithm == "imported":
                from lowbit.compiler.imported import imported_param

                srcs = source_names(graph, name, tied)
                params[name] = imported_param(imported or {}, srcs, spec, attrs.get("layout", "row"))
                if progress is not None:
                    progress(name)
                continue
            w = float_param(weights, graph, name, tied)
            if spec is None:
                params[name] = torch.from_numpy(np.array(w, dtype=np.float32)).to(dtype)  # a private, writable copy
            else:
                layout = attrs.get("layout", "row")
                params[name] = quantizer(node, w, spec) if quantizer else rtn_quantize(w, spec, layout)
            if progress is not None and node.op == "linear" and key == "weight":
                progress(name)
    return params


__all__ = ["float_param", "linear_nodes", "quantize_params", "source_names"]
