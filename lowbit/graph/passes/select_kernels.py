"""select_kernels: per linear and per token-count bucket, the kernel `lowbit.ops.linear.select_kernel` would
run at M = the bucket's upper bound: w_a16 M <= GEMV_MAX_M (16) -> quantized_gemv, else quantized_gemm;
W4A8 -> w4a8_gemm_per_group / w4a8_gemm_per_channel at every M; dense -> "dense" (torch matmul).

ctx.decode_activations "int8" (off by default: it rounds activations to int8, ~0.7% relative error per
linear): on the CPU, 4-bit int4/uint4 w_a16 linears with a group size the kernel takes run
`quantized_gemv_a8` in the buckets M <= 16 (decode); others keep quantized_gemv, with a note saying why.
Such a linear's weight is stored in the row layout and re-tiled to `column_tiled` when the executor loads it.
attrs kernels = ((bucket, kernel), ...); meta["buckets"] = ctx.buckets."""

from __future__ import annotations

from lowbit.graph.context import PassContext
from lowbit.graph.graph import Node, OpGraph
from lowbit.graph.passes.fuse_dequant import kernel_family
from lowbit.ops.linear import A8_KERNEL, GEMV_MAX_M, a8_reason

W4A8_KERNELS = {"w4a8_group": "w4a8_gemm_per_group", "w4a8_channel": "w4a8_gemm_per_channel"}


def kernel_for(family: str, m: int, a8: bool = False) -> str:
    """The kernel of `family` (see fuse_dequant.kernel_family) for M = m rows; `a8`: the linear runs decode
    with int8 activations."""
    if family == "dense":
        return "dense"
    if family in W4A8_KERNELS:
        return W4A8_KERNELS[family]
    if m <= GEMV_MAX_M:
        return A8_KERNEL if a8 else "quantized_gemv"
    return "quantized_gemm"


def select_kernels(g: OpGraph, ctx: PassContext) -> OpGraph:
    kept: dict[str, list[str]] = {}  # why decode keeps float activations -> the linears concerned

    def visit(n: Node) -> Node:
        if n.op != "linear":
            return n
        spec = n.attr("spec")
        family = n.attr("kernel_family") or kernel_family(spec)
        a8 = False
        if ctx.decode_activations == "int8" and family == "quantized":
            why = "the int8 decode kernel runs on the CPU" if ctx.on_gpu else None
            why = why or a8_reason(
                spec.scheme, spec.weight_dtype, spec.group_size, spec.zero_mode, n.attr("in_features")
            )
            if why:
                kept.setdefault(why, []).append(n.name)
            a8 = why is None
        return n.with_attrs(kernels=tuple((b, kernel_for(family, b, a8)) for b in ctx.buckets))

    g = g.map_nodes(visit).with_meta(buckets=ctx.buckets)
    for why, names in kept.items():
        more = f" and {len(names) - 1} more" if len(names) > 1 else ""
        g = g.with_note(f"select_kernels: decode_activations int8: {names[0]}{more} keep float activations ({why})")
    return g
