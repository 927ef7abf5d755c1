"""fuse_gate_up: per layer, gate_proj and up_proj with equal specs become `model.layers.i.mlp.gate_up_proj`
(weight [Wgate; Wup]). When the two outputs feed only one silu_mul(gate, up), the fused linear writes one
tensor gate_up and the silu_mul takes it (`silu_mul(%gate_up)`: gate = first half, up = second half);
otherwise it writes gate and up. Unequal specs leave them apart with the reason in meta["notes"]."""

from __future__ import annotations

from lowbit.graph.context import PassContext
from lowbit.graph.graph import OpGraph
from lowbit.graph.passes.linear_fusion import add_fused_params, fusable_siblings, fused_linear

MEMBERS = ("gate_proj", "up_proj")


def fuse_gate_up(g: OpGraph, ctx: PassContext) -> OpGraph:
    groups, params = [], {}
    notes: list[str] = []  # layers left unfused, and why
    for parent, parts in fusable_siblings(g, ctx, "mlp", MEMBERS, notes, "fuse_gate_up"):
        (gate,), (up,) = parts[0].outputs, parts[1].outputs
        users = {n.name: n for t in (gate, up) for n in g.consumers(t)}
        act = next(iter(users.values())) if len(users) == 1 else None
        name = f"{parent}.gate_up_proj"
        private = gate not in g.outputs and up not in g.outputs
        if act is not None and act.op == "silu_mul" and act.inputs == (gate, up) and private:
            gate_up = f"{gate}_up"
            node, fused = fused_linear(parts, name, (gate_up,))
            groups.append(([*(p.name for p in parts), act.name], [node, act.with_io(inputs=(gate_up,))]))
        else:
            node, fused = fused_linear(parts, name, (gate, up))
            groups.append(([p.name for p in parts], [node]))
        params.update(fused)
    return add_fused_params(g.replace_groups(groups), params, notes)
