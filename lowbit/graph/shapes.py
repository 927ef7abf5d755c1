"""Per-token size of every tensor of an op graph: features (the last dim of a [tokens, features] tensor) and
dtype, one rule per op. Used by the memory planner and the stats. A missing op fails by name.

dtypes: activations in the compute dtype; `xq` of the norm+quant fusions int8, their per-token scale `xs`
float32 (one value per token); graph inputs input_ids / positions int64 (one per token).
rows: "tokens" (one row per token of the batch) or "seqs" (one per sequence: `last_token`'s output and
everything computed from it, e.g. the logits), which the memory plan sizes by the sequence count.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from lowbit.dtypes import dtype as as_dtype
from lowbit.graph.graph import GraphError, Node, OpGraph
from lowbit.models.arch import ArchConfig


@dataclass(frozen=True)
class TensorInfo:
    features: int
    dtype: str  # a lowbit.dtypes name of whole bytes (float16, int8, int64, ...)
    rows: str = "tokens"  # "tokens" | "seqs"

    @property
    def bytes_per_token(self) -> int:
        return self.features * as_dtype(self.dtype).bits // 8


Rule = Callable[[Node, list[TensorInfo], ArchConfig, str], tuple[TensorInfo, ...]]
RULES: dict[str, Rule] = {}


def rule(*ops: str) -> Callable[[Rule], Rule]:
    def register(fn: Rule) -> Rule:
        for op in ops:
            RULES[op] = fn
        return fn

    return register


@rule("embedding")
def _embedding(n: Node, xs: list[TensorInfo], arch: ArchConfig, dt: str) -> tuple[TensorInfo, ...]:
    return (TensorInfo(arch.hidden_size, dt),)


@rule("rms_norm", "add", "last_token", "all_reduce")
def _same_width(n: Node, xs: list[TensorInfo], arch: ArchConfig, dt: str) -> tuple[TensorInfo, ...]:
    return (TensorInfo(xs[0].features, dt),)


@rule("add_rms_norm")
def _add_rms_norm(n: Node, xs: list[TensorInfo], arch: ArchConfig, dt: str) -> tuple[TensorInfo, ...]:
    return (TensorInfo(xs[0].features, dt), TensorInfo(xs[0].features, dt))


@rule("rms_norm_quant", "add_rms_norm_quant")
def _norm_quant(n: Node, xs: list[TensorInfo], arch: ArchConfig, dt: str) -> tuple[TensorInfo, ...]:
    w = xs[0].features
    q = (TensorInfo(w, "int8"), TensorInfo(1, "float32"))
    return q if n.op == "rms_norm_quant" else (*q, TensorInfo(w, dt))


@rule("linear")
def _linear(n: Node, xs: list[TensorInfo], arch: ArchConfig, dt: str) -> tuple[TensorInfo, ...]:
    splits = [int(s) for s in n.attr("splits")]
    return tuple(TensorInfo(s, dt) for s in (splits if len(n.outputs) > 1 else [sum(splits)]))


@rule("rope")
def _rope(n: Node, xs: list[TensorInfo], arch: ArchConfig, dt: str) -> tuple[TensorInfo, ...]:
    return (TensorInfo(xs[0].features, dt), TensorInfo(xs[1].features, dt))


@rule("attention")
def _attention(n: Node, xs: list[TensorInfo], arch: ArchConfig, dt: str) -> tuple[TensorInfo, ...]:
    return (TensorInfo(n.attr("num_heads") * n.attr("head_dim"), dt),)


@rule("silu_mul")
def _silu_mul(n: Node, xs: list[TensorInfo], arch: ArchConfig, dt: str) -> tuple[TensorInfo, ...]:
    w = xs[0].features // 2 if len(xs) == 1 else xs[0].features
    return (TensorInfo(w, dt),)


def tensor_infos(g: OpGraph, arch: ArchConfig, dtype: str) -> dict[str, TensorInfo]:
    """tensor name -> TensorInfo for every tensor of `g` (graph inputs included), activations in `dtype`."""
    infos = {t: TensorInfo(1, "int64") for t in g.inputs}
    for n in g.nodes_in_order():
        fn = RULES.get(n.op)
        if fn is None:
            raise GraphError(f"node {n.name}: op {n.op!r} has no shape rule; add one in lowbit/graph/shapes.py")
        ins = [infos[t] for t in n.inputs]
        outs = fn(n, ins, arch, dtype)
        if len(outs) != len(n.outputs):
            raise GraphError(f"node {n.name} ({n.op}) has outputs {n.outputs}, its shape rule gives {len(outs)}")
        if n.op == "last_token" or any(i.rows == "seqs" for i in ins):
            outs = tuple(TensorInfo(o.features, o.dtype, "seqs") for o in outs)
        infos.update(zip(n.outputs, outs))
    return infos


__all__ = ["RULES", "TensorInfo", "tensor_infos"]
