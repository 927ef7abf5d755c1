"""pack_weights: the stored layout of each quantized weight, for the kernels chosen for it.

Rule: Triton on a GPU with a GEMM among the linear's kernels -> "reordered" (Marlin-style tiles of 16-byte
fragments, `lowbit.kernels.layouts.reordered_packed`, tile (128, 32)), when 128 is a multiple of the
fragment length at the code width (else "row", noted); otherwise "row" (packed along K: what the TVM GEMV
and the CPU paths read best). Dense linears keep layout None.

attrs: layout, layout_desc (the PackedLayout), weight_words (the word array's shape), weight_bytes (codes
only, from the layout), scale_bytes (scales, zeros and channel scales at their stored dtypes);
dense linears: weight_bytes = N·K·(compute dtype bytes).
"""

from __future__ import annotations

import math

from lowbit.config.spec import LinearSpec
from lowbit.dtypes import dtype as as_dtype
from lowbit.graph.context import PassContext
from lowbit.graph.graph import Node, OpGraph
from lowbit.kernels.layouts import fragment_codes, weight_layout

REORDER_TILE = (128, 32)


def scale_bytes(spec: LinearSpec, n: int, k: int) -> int:
    """Bytes of a quantized [N, K] weight's parameters besides its codes (lowbit.ops.weight.QuantizedWeight)."""
    groups = 1 if spec.group_size in (-1, k) or spec.scheme == "w4a8_channel" else k // spec.group_size
    if spec.scheme == "w4a8_group":
        return groups * n * 2 + n * 2  # int8 s2 and zero per group, fp16 s1 per channel
    if spec.scheme == "w4a8_channel":
        return n * (2 + 4)  # fp16 scale, int32 zero per channel
    zero = 0 if spec.zero_mode == "none" else 2
    return groups * n * (2 + zero)  # fp16 scale (and fp16 zero) per group


def stored_weight_bytes(spec: LinearSpec | None, n: int, k: int, dtype_bytes: int) -> int:
    """Stored bytes of an [N, K] weight before pack_weights picks its layout: the codes in row-packed words
    (⌊32/bits⌋ codes per uint32) + `scale_bytes`, or N·K·dtype_bytes when dense (spec None)."""
    if spec is None:
        return n * k * dtype_bytes
    layout = weight_layout("row", (k, n), as_dtype(spec.weight_dtype).bits)
    return int(layout.num_words) * layout.word_bits // 8 + scale_bytes(spec, n, k)


def choose_layout(n: Node, ctx: PassContext, bits: int) -> tuple[str, str | None]:
    """(layout, note or None) for linear `n` with `bits`-bit codes."""
    gemm = any(kernel != "quantized_gemv" for _, kernel in n.attr("kernels") or ((0, "quantized_gemm"),))
    if not (ctx.backend == "triton" and ctx.on_gpu and gemm):
        return "row", None
    v = fragment_codes(bits)
    if REORDER_TILE[0] % v:
        return (
            "row",
            f"pack_weights: {n.name}: {bits}-bit fragments of {v} codes do not tile BK={REORDER_TILE[0]}: row layout",
        )
    return "reordered", None


def pack_weights(g: OpGraph, ctx: PassContext) -> OpGraph:
    notes: list[str] = []

    def visit(n: Node) -> Node:
        if n.op != "linear":
            return n
        spec: LinearSpec | None = n.attr("spec")
        nf, k = sum(n.attr("splits")), n.attr("in_features")
        if spec is None:
            return n.with_attrs(layout=None, weight_bytes=nf * k * ctx.dtype_bytes)
        bits = as_dtype(spec.weight_dtype).bits
        kind, note = choose_layout(n, ctx, bits)
        if note:
            notes.append(note)
        layout = weight_layout(kind, (k, nf), bits, REORDER_TILE)
        words = tuple(int(w) for w in layout.word_shape)
        return n.with_attrs(
            layout=kind,
            layout_desc=str(layout),
            weight_words=words,
            weight_bytes=math.prod(words) * layout.word_bits // 8,
            scale_bytes=scale_bytes(spec, nf, k),
        )

    g = g.map_nodes(visit)
    for note in notes:
        g = g.with_note(note)
    return g
