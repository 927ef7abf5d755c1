"""select_kernels: per linear and per token-count bucket, the kernel `lowbit.ops.linear.select_kernel` would
run at M = the bucket's upper bound (the one rule, `lowbit.ops.linear.scheme_kernel`): w_a16 M <= GEMV_MAX_M
(16) -> quantized_gemv, else quantized_gemm; W4A8 -> w4a8_gemm_per_group / w4a8_gemm_per_channel at every M;
dense -> "dense" (torch matmul). The names are the rule's by scheme and M only: on TVM with AVX-512 a 4-bit
w_a16 weight runs `quantized_gemv` at every M (`lowbit.ops.linear.gemv_serves`, host-dependent, so kept out of
the graph, which must re-derive the same on any machine); the executor follows `quantized_linear`'s own rule
for the float kernels.

ctx.decode_activations "int8" (off by default: it rounds activations to int8, ~0.7% relative error per
linear): on the CPU, 4-bit int4/uint4 w_a16 linears with a group size the kernel takes run
`quantized_gemv_a8` in every bucket (decode, and prefill in row tiles of 16); others keep the float kernels,
with a note saying why.
Such a linear's weight is stored in the row layout and re-tiled to `column_tiled` when the executor loads it.
attrs kernels = ((bucket, kernel), ...); meta["buckets"] = ctx.buckets."""

from __future__ import annotations

from lowbit.config.spec import LinearSpec
from lowbit.graph.context import PassContext
from lowbit.graph.graph import Node, OpGraph
from lowbit.ops.linear import a8_reason, scheme_kernel


def kernel_for(spec: LinearSpec | None, m: int, a8: bool = False) -> str:
    """The kernel name for a linear of `spec` (None: dense) and M = m rows; `a8`: the linear runs decode
    with int8 activations."""
    return "dense" if spec is None else scheme_kernel(spec.scheme, m, a8).name


def select_kernels(g: OpGraph, ctx: PassContext) -> OpGraph:
    kept: dict[str, list[str]] = {}  # why decode keeps float activations -> the linears concerned

    def visit(n: Node) -> Node:
        if n.op != "linear":
            return n
        spec = n.attr("spec")
        a8 = False
        if ctx.decode_activations == "int8" and spec is not None and spec.scheme == "w_a16":
            why = "the int8 decode kernel runs on the CPU" if ctx.on_gpu else None
            why = why or a8_reason(
                spec.scheme, spec.weight_dtype, spec.group_size, spec.zero_mode, n.attr("in_features")
            )
            if why:
                kept.setdefault(why, []).append(n.name)
            a8 = why is None
        return n.with_attrs(kernels=tuple((b, kernel_for(spec, b, a8)) for b in ctx.buckets))

    g = g.map_nodes(visit).with_meta(buckets=ctx.buckets)
    for why, names in kept.items():
        more = f" and {len(names) - 1} more" if len(names) > 1 else ""
        g = g.with_note(f"select_kernels: decode_activations int8: {names[0]}{more} keep float activations ({why})")
    return g
