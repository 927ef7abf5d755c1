"""Shared by fuse_qkv and fuse_gate_up: several linears of one layer that read the same tensor become one
linear over the weights concatenated along the output features (dim 0 of the HF [N, K] weights)."""

from __future__ import annotations

from collections.abc import Iterator

from lowbit.graph.context import PassContext
from lowbit.graph.graph import Node, OpGraph
from lowbit.graph.printer import spec_text

# attrs a fused linear takes from its parts, which must therefore agree
_SHARED = ("spec", "kernels", "layout", "act_quant_fused", "in_features")


def fusable_siblings(
    g: OpGraph, ctx: PassContext, block: str, members: tuple[str, ...], notes: list[str], pass_name: str
) -> Iterator[tuple[str, list[Node]]]:
    """(parent, parts) per layer whose `model.layers.i.<block>.<member>` linears can become one; for a layer
    whose linears cannot, a note in `notes` ("<pass_name>: <parent>: q/k/v_proj left unfused: <why>")."""
    shown = "/".join(m.removesuffix("_proj") for m in members) + "_proj"
    for layer in range(ctx.arch.num_layers):
        parent = f"model.layers.{layer}.{block}"
        parts = sibling_linears(g, parent, members)
        if parts is None:
            continue
        why = why_not_fusable(parts)
        if why is None:
            yield parent, parts
        else:
            notes.append(f"{pass_name}: {parent}: {shown} left unfused: {why}")


def sibling_linears(g: OpGraph, parent: str, members: tuple[str, ...]) -> list[Node] | None:
    """The unfused linears `parent.<member>` for every member, or None if one is missing or already fused."""
    found = []
    for m in members:
        name = f"{parent}.{m}"
        n = g.node(name) if name in g else None
        if n is None or n.op != "linear" or n.attr("modules") != (name,):
            return None
        found.append(n)
    return found


def why_not_fusable(parts: list[Node]) -> str | None:
    """None when `parts` can be one linear, else the reason (for the dump's notes)."""
    if len({p.inputs for p in parts}) != 1:
        return "they read different tensors"
    for key in _SHARED:
        values = [p.attr(key) for p in parts]
        if any(v != values[0] for v in values):
            shown = [spec_text(v) for v in values] if key == "spec" else values
            return f"their {key}s differ ({', '.join(map(str, shown))})"
    if len({p.attr("bias") is None for p in parts}) != 1:
        return "some have a bias and some do not"
    return None


def fused_linear(parts: list[Node], name: str, outputs: tuple[str, ...]) -> tuple[Node, dict[str, tuple[str, ...]]]:
    """The fused node and its fused_params entries (fused param name -> source param names)."""
    first = parts[0]
    params = {f"{name}.weight": tuple(p.attr("weight") for p in parts)}
    bias = None
    if first.attr("bias") is not None:
        bias = f"{name}.bias"
        params[bias] = tuple(p.attr("bias") for p in parts)
    modules = tuple(m for p in parts for m in p.attr("modules"))
    splits = tuple(s for p in parts for s in p.attr("splits"))
    node = Node(name, "linear", first.inputs, outputs, first.attrs, first.layer).with_attrs(
        weight=f"{name}.weight", bias=bias, modules=modules, splits=splits
    )
    return node, params


def add_fused_params(g: OpGraph, params: dict[str, tuple[str, ...]], notes: list[str]) -> OpGraph:
    """g with `params` added to meta["fused_params"] and `notes` to meta["notes"] (self if neither adds)."""
    if params:
        g = g.with_meta(fused_params={**g.meta.get("fused_params", {}), **params})
    for note in notes:
        g = g.with_note(note)
    return g
