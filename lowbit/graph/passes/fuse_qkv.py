"""fuse_qkv: per layer, q_proj / k_proj / v_proj reading the same tensor with equal specs become one linear
`model.layers.i.self_attn.qkv_proj` (weight qkv_proj.weight = [Wq; Wk; Wv], outputs q, k, v split by
(q_size, kv_size, kv_size)). Unequal specs leave them apart with the reason in meta["notes"]."""

from __future__ import annotations

from lowbit.graph.context import PassContext
from lowbit.graph.graph import OpGraph
from lowbit.graph.passes.linear_fusion import add_fused_params, fusable_siblings, fused_linear

MEMBERS = ("q_proj", "k_proj", "v_proj")


def fuse_qkv(g: OpGraph, ctx: PassContext) -> OpGraph:
    groups, params = [], {}
    notes: list[str] = []  # layers left unfused, and why
    for parent, parts in fusable_siblings(g, ctx, "self_attn", MEMBERS, notes, "fuse_qkv"):
        node, fused = fused_linear(parts, f"{parent}.qkv_proj", tuple(t for p in parts for t in p.outputs))
        groups.append(([p.name for p in parts], [node]))
        params.update(fused)
    return add_fused_params(g.replace_groups(groups), params, notes)
