"""fuse_add_rms_norm: `s = add(x, r)` followed by `y = rms_norm(s)` becomes `y, s = add_rms_norm(x, r)`
(one pass over the residual stream; s keeps its name, so later readers of the sum are untouched). The
norm is the first rms_norm reading s. The fused node keeps the norm's name, weight and eps. When nothing
else reads s (e.g. the last layer's sum before model.norm), s is still an output, unread."""

from __future__ import annotations

from lowbit.graph.context import PassContext
from lowbit.graph.graph import Node, OpGraph


def fuse_add_rms_norm(g: OpGraph, ctx: PassContext) -> OpGraph:
    groups = []  # disjoint: an add has one first norm, a norm reads one tensor
    for add in g.nodes_in_order():
        if add.op != "add":
            continue
        (s,) = add.outputs
        norm = next((n for n in g.consumers(s) if n.op == "rms_norm"), None)
        if norm is None:
            continue
        fused = Node(norm.name, "add_rms_norm", add.inputs, (*norm.outputs, s), norm.attrs, norm.layer)
        groups.append(([add.name, norm.name], [fused]))
    return g.replace_groups(groups)
