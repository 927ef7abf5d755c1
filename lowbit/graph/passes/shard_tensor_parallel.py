"""shard_tensor_parallel: with ctx.tensor_parallel = tp > 1, the unfused graph becomes one rank's shard
(Megatron-style; every rank runs the same graph on its own weights, lowbit/parallel):

    q/k/v_proj, gate/up_proj   column-parallel: out_features / tp (whole heads: heads [r·H/tp, (r+1)·H/tp))
    o_proj, down_proj          row-parallel: in_features / tp, then `all_reduce` (sum over the ranks) of the
                               partial output; a bias is added by rank 0 only (the others hold zeros)
    rope, attention            num_heads / tp, num_kv_heads / tp (KV heads are split, never replicated)
    embedding, norms, lm_head  replicated

Linears get `parallel="column" | "row"` (lowbit.parallel.shard cuts the weights by it); the graph gets
meta["tensor_parallel"]. Runs first, on the unfused graph, so the fusions see the shard's shapes. tp = 1
returns the graph unchanged."""

from __future__ import annotations

from lowbit.config.check_model import ROW_PARALLEL as ROW  # the recipe check of K / tp vs group size reads it too
from lowbit.graph.context import PassContext
from lowbit.graph.graph import GraphError, Node, OpGraph

COLUMN = ("q_proj", "k_proj", "v_proj", "gate_proj", "up_proj")


def _kind(n: Node) -> str | None:
    (module,) = n.attr("modules")  # the graph is unfused here: one HF module per linear
    suffix = str(module).rsplit(".", 1)[-1]
    return "column" if suffix in COLUMN else "row" if suffix in ROW else None


def _split(value: int, tp: int, what: str, n: Node) -> int:
    if value % tp:
        raise GraphError(
            f"node {n.name}: {what} {value} does not split over tensor_parallel {tp}; use a tensor_parallel that "
            f"divides it (lowbit.config.check_model.shard_problems names every such field)"
        )
    return value // tp


def shard_tensor_parallel(g: OpGraph, ctx: PassContext) -> OpGraph:
    tp = ctx.tensor_parallel
    if tp == 1:
        return g
    groups: list[tuple[list[str], list[Node]]] = []
    for n in g.nodes_in_order():
        if n.op in ("rope", "attention"):
            heads = {k: _split(int(n.attr(k)), tp, k, n) for k in ("num_heads", "num_kv_heads")}
            groups.append(([n.name], [n.with_attrs(**heads)]))
        elif n.op == "linear" and _kind(n) == "column":
            splits = tuple(_split(int(s), tp, "out_features", n) for s in n.attr("splits"))
            groups.append(([n.name], [n.with_attrs(splits=splits, parallel="column")]))
        elif n.op == "linear" and _kind(n) == "row":
            k = _split(int(n.attr("in_features")), tp, "in_features", n)
            (y,) = n.outputs
            part = n.with_attrs(in_features=k, parallel="row").with_io(outputs=(f"{y}_partial",))
            reduce = Node.create(f"{n.name}.all_reduce", "all_reduce", (f"{y}_partial",), (y,), n.layer, world_size=tp)
            groups.append(([n.name], [part, reduce]))
    return g.replace_groups(groups).with_meta(tensor_parallel=tp)


__all__ = ["COLUMN", "ROW", "shard_tensor_parallel"]
