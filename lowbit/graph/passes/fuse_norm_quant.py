"""fuse_norm_quant (W4A8): a norm whose output y is read only by linears taking int8 activations
(spec.act_int8) also quantizes y per token: `yq, ys = rms_norm_quant(x)` / `yq, ys, s =
add_rms_norm_quant(x, r)` (yq int8 [T, D], ys float32 per-token scale [T, 1]: y ≈ yq·ys), and those linears
read (yq, ys) with act_quant_fused=True. A norm with a mix of readers stays as it is (noted in the dump)."""

from __future__ import annotations

from lowbit.graph.context import PassContext
from lowbit.graph.graph import Node, OpGraph

_QUANT = {"rms_norm": "rms_norm_quant", "add_rms_norm": "add_rms_norm_quant"}


def _int8_reader(n: Node) -> bool:
    spec = n.attr("spec")
    return n.op == "linear" and spec is not None and spec.act_int8 and not n.attr("act_quant_fused")


def fuse_norm_quant(g: OpGraph, ctx: PassContext) -> OpGraph:
    new: dict[str, Node] = {}  # disjoint: each linear reads one norm
    notes = []
    for norm in g.nodes_in_order():
        if norm.op not in _QUANT:
            continue
        y = norm.outputs[0]
        readers = g.consumers(y)
        int8 = [n for n in readers if _int8_reader(n)]
        if not int8:
            continue
        if len(int8) < len(readers) or y in g.outputs:
            others = [n.name for n in readers if not _int8_reader(n)] or ["the graph outputs"]
            notes.append(
                f"fuse_norm_quant: {norm.name}: not quantized in the norm: {', '.join(others)} read it in float"
            )
            continue
        yq, ys = f"{y}_q", f"{y}_scale"
        fused = Node(norm.name, _QUANT[norm.op], norm.inputs, (yq, ys, *norm.outputs[1:]), norm.attrs, norm.layer)
        new[norm.name] = fused
        new.update({n.name: n.with_io(inputs=(yq, ys)).with_attrs(act_quant_fused=True) for n in readers})
    g = g.substitute(new)
    for note in notes:
        g = g.with_note(note)
    return g
