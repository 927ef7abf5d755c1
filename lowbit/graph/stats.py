"""Costs of an op graph: per-op FLOPs and bytes per token, and the serving memory estimate (weights at their
stored widths, KV cache bytes per token per kv_dtype, the activation arena from the memory plan).

FLOPs per token: linear 2·K·N; attention 4·Hq·D per context token attended (QKᵀ and PV), reported
separately as `flops_per_context_token`; elementwise ops a few FLOPs per feature (counted as the output
features: they are bound by memory, not by FLOPs). Bytes per token: activations read + written.
"""

from __future__ import annotations

from dataclasses import dataclass

from lowbit.config.spec import LinearSpec
from lowbit.dtypes import dtype as as_dtype
from lowbit.graph.context import PassContext
from lowbit.graph.graph import Node, OpGraph
from lowbit.graph.memory import MemoryPlan
from lowbit.graph.passes.pack_weights import stored_weight_bytes
from lowbit.graph.shapes import tensor_infos
from lowbit.models.arch import ArchConfig
from lowbit.quant.kv import KV_BITS, check_kv_dtype


@dataclass(frozen=True)
class OpCost:
    node: str
    op: str
    flops_per_token: int
    flops_per_context_token: int  # attention only: extra FLOPs per token per context position
    act_bytes_per_token: int  # activations read + written
    weight_bytes: int  # params this op reads once per forward pass, at their stored widths


@dataclass(frozen=True)
class MemoryEstimate:
    weight_bytes: int
    kv_bytes_per_token: int  # all layers, K and V
    activation_bytes: int  # the planned arena at max_num_tokens (0 without a memory plan)

    def total(self, kv_tokens: int) -> int:
        """Bytes for the weights, `kv_tokens` cached tokens and the activation arena."""
        return self.weight_bytes + self.kv_bytes_per_token * kv_tokens + self.activation_bytes


def kv_bytes_per_token(arch: ArchConfig, kv_dtype: str) -> int:
    """KV cache bytes one token takes over all layers: per layer and KV head a K and a V vector of head_dim
    codes (float16/bfloat16 2 B, fp8 1 B, KV8/KV4 bits/8 B plus an fp16 scale and fp16 zero)."""
    kv_dtype = check_kv_dtype(kv_dtype)
    d = arch.head_dim
    if kv_dtype in KV_BITS:
        vector = d * KV_BITS[kv_dtype] // 8 + 4
    else:
        vector = d * as_dtype(kv_dtype).bits // 8
    return arch.num_layers * 2 * arch.num_kv_heads * vector


def linear_weight_bytes(n: Node, dtype_bytes: int) -> int:
    """Stored bytes of linear `n`'s weight (codes + quantization params, or dense) and bias."""
    nf, k = sum(n.attr("splits")), n.attr("in_features")
    spec: LinearSpec | None = n.attr("spec")
    bias = nf * dtype_bytes if n.attr("bias") is not None else 0
    if n.has_attr("weight_bytes"):
        return int(n.attr("weight_bytes")) + int(n.attr("scale_bytes", 0)) + bias
    return stored_weight_bytes(spec, nf, k, dtype_bytes) + bias


def op_costs(g: OpGraph, ctx: PassContext) -> list[OpCost]:
    infos = tensor_infos(g, ctx.arch, ctx.dtype)
    arch, db = ctx.arch, ctx.dtype_bytes
    out = []
    for n in g.nodes_in_order():
        act = sum(infos[t].bytes_per_token for t in (*n.inputs, *n.outputs) if t not in g.inputs)
        flops, per_ctx, wbytes = sum(infos[t].features for t in n.outputs), 0, 0
        if n.op == "linear":
            flops = 2 * n.attr("in_features") * sum(n.attr("splits"))
            wbytes = linear_weight_bytes(n, db)
        elif n.op == "attention":
            flops, per_ctx = 0, 4 * n.attr("num_heads") * n.attr("head_dim")
        elif n.op == "embedding":
            wbytes = 0  # a gather: only the rows of the batch's tokens are read
        elif n.has_attr("weight"):
            wbytes = arch.hidden_size * db
        out.append(OpCost(n.name, n.op, flops, per_ctx, act, wbytes))
    return out


def memory_estimate(g: OpGraph, ctx: PassContext) -> MemoryEstimate:
    """Weights at stored widths (each param once; a tied lm_head that is quantized is a second copy),
    KV bytes per token for ctx.kv_dtype, and the memory plan's arena (if plan_memory ran)."""
    arch, db = ctx.arch, ctx.dtype_bytes
    seen: dict[tuple[str, object], int] = {}
    for n in g.nodes_in_order():
        if n.op == "linear":
            seen[(n.attr("weight"), n.attr("spec"))] = linear_weight_bytes(n, db)
        elif n.op == "embedding":
            seen[(n.attr("weight"), None)] = arch.vocab_size * arch.hidden_size * db
        elif n.has_attr("weight"):
            seen[(n.attr("weight"), None)] = arch.hidden_size * db
    plan: MemoryPlan | None = g.meta.get("memory_plan")
    return MemoryEstimate(sum(seen.values()), kv_bytes_per_token(arch, ctx.kv_dtype), plan.peak_bytes if plan else 0)


__all__ = ["MemoryEstimate", "OpCost", "kv_bytes_per_token", "linear_weight_bytes", "memory_estimate", "op_costs"]
