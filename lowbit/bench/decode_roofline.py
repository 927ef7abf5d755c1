"""The roofline of serving a compiled model: what one forward step must move and compute, and the fastest a
workload of N requests (I prompt tokens, O output tokens, batches of B) could run on a machine.

    cost = model_cost("artifacts/tiny-llama")           # from the artifact's graph: nothing is loaded
    decode_bound(cost, batch=16, context=96, bandwidth_gbs=20, peak_gflops=80)    # output tok/s ceiling
    workload_bound(cost, num_prompts=64, input_len=32, output_len=64, batch=16, bandwidth_gbs=20, peak_gflops=80)

Per step (ANCHORS.md, Roofline: T = max(bytes / BW, flops / P)):
    bytes = weights at their stored widths (every linear's codes + scales + zeros, norms; the embedding table is a
            gather of a few rows and is not counted) + KV bytes per token (the artifact's KV dtype, all layers, K
            and V) x the context tokens the step attends to
    flops = tokens x per-token flops (2·K·N per linear) + sequences x per-sequence flops (ops after
            `last_token`, i.e. lm_head, run once per sequence) + attention 4·Hq·D per (token, context token)
The workload bound is an ideal engine with B seats: ceil(N/B) waves, each one prefill step of the wave's prompts
(causal attention) and O − 1 decode steps whose contexts grow from I + 1 to I + O − 1; steps are summed, no
overlap between them, no scheduling overhead. Weights are re-read every step, which is why batching pays.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from lowbit.bench.roofline import roofline_ms


@dataclass(frozen=True)
class ModelCost:
    weight_bytes: int  # read once per forward step
    kv_bytes_per_token: int  # K and V of one token over all layers
    flops_per_token: int  # per token row (linears before last_token, norms, rope, ...)
    flops_per_seq: int  # per sequence per step (lm_head after last_token)
    attn_flops_per_context: int  # per (query token, context token) pair, all layers
    bits_per_weight: float  # average over the linears' stored bytes (codes + scales + zeros)
    kv_dtype: str
    compute_dtype: str
    device: str

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def model_cost(artifact: str | Path) -> ModelCost:
    """The costs of the artifact's op graph (rebuilt from model.yaml + config.json, as `load_compiled` does)."""
    import yaml

    from lowbit.artifact import open_artifact
    from lowbit.compiler.compile import model_graph, pass_context
    from lowbit.config import parse_config
    from lowbit.graph.stats import kv_bytes_per_token, op_costs
    from lowbit.models.arch import ArchConfig

    art = open_artifact(artifact, verify="none")
    cfg = parse_config(yaml.safe_load(art.read_text("model.yaml")), source=f"{artifact}/model.yaml", check_files=False)
    arch = ArchConfig.from_hf_config(art.read_json("config.json"))
    graph = model_graph(cfg, arch)
    ctx = pass_context(cfg, arch)
    per_tok = per_seq = attn = wbytes = lin_bytes = lin_elems = 0
    after_last = False
    for c, node in zip(op_costs(graph, ctx), graph.nodes_in_order()):
        after_last = after_last or c.op == "last_token"
        wbytes += c.weight_bytes
        attn += c.flops_per_context_token
        if after_last:
            per_seq += c.flops_per_token
        else:
            per_tok += c.flops_per_token
        if c.op == "linear":
            lin_bytes += c.weight_bytes
            lin_elems += node.attr("in_features") * sum(node.attr("splits"))
    return ModelCost(
        weight_bytes=wbytes,
        kv_bytes_per_token=kv_bytes_per_token(arch, ctx.kv_dtype),
        flops_per_token=per_tok,
        flops_per_seq=per_seq,
        attn_flops_per_context=attn,
        bits_per_weight=8.0 * lin_bytes / lin_elems if lin_elems else 0.0,
        kv_dtype=ctx.kv_dtype,
        compute_dtype=ctx.dtype,
        device=ctx.device,
    )


def step_bytes(cost: ModelCost, context_tokens: int) -> int:
    """Bytes one step moves: the weights once plus the K/V of every context token attended."""
    return cost.weight_bytes + cost.kv_bytes_per_token * context_tokens


def decode_bound(
    cost: ModelCost, batch: int, context: float, bandwidth_gbs: float, peak_gflops: float
) -> dict[str, Any]:
    """The ceiling of decode output tok/s with `batch` sequences of `context` cached tokens each."""
    nbytes = step_bytes(cost, math.ceil(batch * context))
    flops = batch * (cost.flops_per_token + cost.flops_per_seq + cost.attn_flops_per_context * context)
    t = roofline_ms(nbytes, flops, bandwidth_gbs, peak_gflops) / 1e3
    return {
        "batch": batch,
        "context": context,
        "step_bytes": nbytes,
        "step_flops": flops,
        "step_ms": t * 1e3,
        "bound_by": "memory" if nbytes / (bandwidth_gbs * 1e9) >= flops / (peak_gflops * 1e9) else "compute",
        "output_tok_s": batch / t,
    }


def workload_bound(
    cost: ModelCost,
    *,
    num_prompts: int,
    input_len: int,
    output_len: int,
    batch: int,
    bandwidth_gbs: float,
    peak_gflops: float,
) -> dict[str, Any]:
    """Lower bound on the wall time of the offline workload (see module doc) and the throughputs it allows."""
    prefill_s = decode_s = 0.0
    left = num_prompts
    while left > 0:
        b = min(batch, left)
        left -= b
        tokens = b * input_len
        flops: float = tokens * cost.flops_per_token + b * cost.flops_per_seq
        flops += b * cost.attn_flops_per_context * input_len * (input_len + 1) / 2  # causal
        nbytes = cost.weight_bytes + cost.kv_bytes_per_token * tokens  # K/V written once
        prefill_s += roofline_ms(nbytes, flops, bandwidth_gbs, peak_gflops) / 1e3
        for t in range(1, output_len):
            ctx = input_len + t
            flops = b * (cost.flops_per_token + cost.flops_per_seq + cost.attn_flops_per_context * ctx)
            decode_s += roofline_ms(step_bytes(cost, b * ctx), flops, bandwidth_gbs, peak_gflops) / 1e3
    total = prefill_s + decode_s
    out_tokens = num_prompts * output_len
    return {
        "seconds": total,
        "prefill_seconds": prefill_s,
        "decode_seconds": decode_s,
        "tokens_per_second": num_prompts * (input_len + output_len) / total,
        "output_tokens_per_second": out_tokens / total,
        "requests_per_second": num_prompts / total,
    }


__all__ = ["ModelCost", "decode_bound", "model_cost", "step_bytes", "workload_bound"]
