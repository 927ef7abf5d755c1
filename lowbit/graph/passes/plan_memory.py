"""plan_memory: meta["memory_plan"] = the buffer plan by liveness over nodes_in_order (lowbit.graph.memory),
tensor sizes from lowbit.graph.shapes in the context's compute dtype; the arena (`peak_bytes`) is sized for
ctx.max_num_tokens tokens and ctx.max_num_seqs sequences (the rows after last_token)."""

from __future__ import annotations

from lowbit.graph.context import PassContext
from lowbit.graph.graph import OpGraph
from lowbit.graph.memory import plan_buffers
from lowbit.graph.shapes import tensor_infos


def plan_memory(g: OpGraph, ctx: PassContext) -> OpGraph:
    infos = tensor_infos(g, ctx.arch, ctx.dtype)
    planned = [t for n in g.nodes_in_order() for t in n.outputs]
    sizes = {t: infos[t].bytes_per_token for t in planned}
    rows = {t: infos[t].rows for t in planned}
    return g.with_meta(memory_plan=plan_buffers(g, sizes, ctx.max_num_tokens, rows, ctx.max_num_seqs))
