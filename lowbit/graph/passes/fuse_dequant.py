"""fuse_dequant: a quantized linear runs as one kernel that dequantizes its weight tile by tile inside the
GEMM/GEMV (never a dense copy of the weight): `dequant_fused` = spec is not None and `kernel_family`
names the kernels that can run it — "dense" (spec None), "quantized" (w_a16: quantized_gemv /
quantized_gemm), "w4a8_group" / "w4a8_channel" (the W4A8 GEMMs)."""

from __future__ import annotations

from lowbit.config.spec import LinearSpec
from lowbit.graph.context import PassContext
from lowbit.graph.graph import Node, OpGraph


def kernel_family(spec: LinearSpec | None) -> str:
    if spec is None:
        return "dense"
    return "quantized" if spec.scheme == "w_a16" else spec.scheme


def fuse_dequant(g: OpGraph, ctx: PassContext) -> OpGraph:
    def visit(n: Node) -> Node:
        if n.op != "linear":
            return n
        spec = n.attr("spec")
        return n.with_attrs(dequant_fused=spec is not None, kernel_family=kernel_family(spec))

    return g.map_nodes(visit)
