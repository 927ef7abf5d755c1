"""select_kernels: per linear and per token-count bucket, the kernel `lowbit.ops.linear.select_kernel` would
run at M = the bucket's upper bound: w_a16 M <= GEMV_MAX_M (16) -> quantized_gemv, else quantized_gemm;
W4A8 -> w4a8_gemm_per_group / w4a8_gemm_per_channel at every M; dense -> "dense" (torch matmul).
attrs kernels = ((bucket, kernel), ...); meta["buckets"] = ctx.buckets."""

from __future__ import annotations

from lowbit.graph.context import PassContext
from lowbit.graph.graph import Node, OpGraph
from lowbit.graph.passes.fuse_dequant import kernel_family
from lowbit.ops.linear import GEMV_MAX_M

W4A8_KERNELS = {"w4a8_group": "w4a8_gemm_per_group", "w4a8_channel": "w4a8_gemm_per_channel"}


def kernel_for(family: str, m: int) -> str:
    """The kernel of `family` (see fuse_dequant.kernel_family) for M = m rows."""
    if family == "dense":
        return "dense"
    if family in W4A8_KERNELS:
        return W4A8_KERNELS[family]
    return "quantized_gemv" if m <= GEMV_MAX_M else "quantized_gemm"


def select_kernels(g: OpGraph, ctx: PassContext) -> OpGraph:
    def visit(n: Node) -> Node:
        if n.op != "linear":
            return n
        family = n.attr("kernel_family") or kernel_family(n.attr("spec"))
        return n.with_attrs(kernels=tuple((b, kernel_for(family, b)) for b in ctx.buckets))

    return g.map_nodes(visit).with_meta(buckets=ctx.buckets)
