"""dce: drop nodes none of whose outputs reaches a graph output (walking back from the outputs). A node
with several outputs stays whole if any is needed. Ops are pure here; `attention` appends to the KV
cache, but an attention whose output is unread belongs to a layer that cannot affect the logits."""

from __future__ import annotations

from lowbit.graph.context import PassContext
from lowbit.graph.graph import OpGraph


def dce(g: OpGraph, ctx: PassContext) -> OpGraph:
    needed = set(g.outputs)
    dead = []
    for n in reversed(g.nodes_in_order()):
        if needed.intersection(n.outputs):
            needed.update(n.inputs)
        else:
            dead.append(n.name)
    return g.replace_nodes(dead) if dead else g
