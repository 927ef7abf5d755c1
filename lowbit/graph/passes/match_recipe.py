"""match_recipe: each linear gets the recipe's `LinearSpec` (ctx.resolve of its HF module name; None = dense),
and each attention node the context's KV cache format. A fused linear's modules must resolve alike."""

from __future__ import annotations

from lowbit.config.spec import LinearSpec
from lowbit.graph.context import PassContext
from lowbit.graph.graph import GraphError, Node, OpGraph


def _spec(n: Node, ctx: PassContext) -> LinearSpec | None:
    modules = n.attr("modules")
    specs = [ctx.resolve(m) for m in modules]
    if any(s != specs[0] for s in specs):
        raise GraphError(
            f"node {n.name} fuses {list(modules)}, which the recipe resolves differently ({specs}); run "
            f"match_recipe before the fusions (they only fuse linears of equal specs)"
        )
    spec = specs[0]
    if spec is not None and not isinstance(spec, LinearSpec):
        raise GraphError(f"the recipe resolved {modules[0]} to {spec!r}; resolve must return a LinearSpec or None")
    k = n.attr("in_features")
    g = spec.group_size if spec is not None and spec.scheme != "w4a8_channel" else -1
    if k is not None and g not in (-1, k) and (g <= 0 or k % g):
        good = [d for d in (32, 64, 128, 256) if k % d == 0]
        raise GraphError(
            f"group_size {g} does not divide in_features {k} of {modules[0]}; use "
            f"{', '.join(map(str, [*good, -1]))} (-1: one group per output channel)"
        )
    return spec


def match_recipe(g: OpGraph, ctx: PassContext) -> OpGraph:
    def visit(n: Node) -> Node:
        if n.op == "linear":
            return n.with_attrs(spec=_spec(n, ctx))
        if n.op == "attention":
            return n.with_attrs(kv_dtype=ctx.kv_dtype)
        return n

    return g.map_nodes(visit)
