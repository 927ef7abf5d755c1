"""`Executor`: runs an optimized op graph (`lowbit.graph`) on a `Batch`, one rule per op, through the kernel
library (quantized linears, RoPE, RMSNorm, KV append, prefill / paged decode attention) on torch CPU or CUDA
tensors. The op semantics are the graph contract (lowbit/graph/README.md); a missing rule fails by name.

Activations are [tokens, features] in the model's compute dtype. Parameters are a mapping from the graph's
param names to dense torch tensors or `QuantizedWeight`s (a linear whose spec is None is dense).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from typing import Any

import torch
import torch.nn.functional as F

from lowbit.kernels.kv_append import append_kv
from lowbit.kernels.norm import add_rms_norm, rms_norm
from lowbit.kernels.rope import apply_rope, rope_cache
from lowbit.ops.attention import paged_decode_attention, prefill_attention
from lowbit.ops.linear import quantized_linear, quantized_linear_int8
from lowbit.ops.weight import QuantizedWeight
from lowbit.quant import quantize_per_token_int8
from lowbit.runtime.batch import Batch
from lowbit.runtime.kv_cache import PagedKVCache

Rule = Callable[["Executor", Any, list[Any]], tuple[Any, ...]]
RULES: dict[str, Rule] = {}


def rule(op: str) -> Callable[[Rule], Rule]:
    def register(fn: Rule) -> Rule:
        RULES[op] = fn
        return fn

    return register


class MissingRule(NotImplementedError):
    pass


class Executor:
    """Executes `graph` with `params`; `forward(batch)` returns logits [num_seqs, vocab] (or [tokens, vocab]
    with all_logits=True) in float32."""

    def __init__(
        self,
        graph: Any,
        params: Mapping[str, Any],
        cache: PagedKVCache,
        *,
        backend: str = "auto",
        dtype: torch.dtype = torch.float32,
        max_positions: int = 4096,
    ) -> None:
        missing = sorted({n.op for n in graph.nodes_in_order()} - set(RULES))
        if missing:
            raise MissingRule(f"the executor has no rule for op(s) {missing}; add one in lowbit/runtime/executor.py")
        self.graph = graph
        self.nodes = graph.nodes_in_order()
        self.params = params
        self.cache = cache
        self.backend = backend
        self.dtype = dtype
        plan = graph.meta.get("memory_plan") if hasattr(graph, "meta") else None
        self.free_after: Mapping[str, tuple[str, ...]] = getattr(plan, "free_after", {}) or {}
        self._rope: dict[tuple[Any, ...], torch.Tensor] = {}
        self.max_positions = max_positions
        self.batch: Batch | None = None
        self.all_logits = False

    def forward(self, batch: Batch, *, all_logits: bool = False) -> torch.Tensor:
        self.batch, self.all_logits = batch, all_logits
        env: dict[str, Any] = {"input_ids": batch.input_ids, "positions": batch.positions}
        for node in self.nodes:
            try:
                args = [env[name] for name in node.inputs]
            except KeyError as e:
                raise RuntimeError(f"node {node.name} ({node.op}) reads {e}, which no earlier node produced") from None
            outs = RULES[node.op](self, node, args)
            if len(outs) != len(node.outputs):
                raise RuntimeError(f"rule {node.op} returned {len(outs)} outputs for {node.name}'s {node.outputs}")
            env.update(zip(node.outputs, outs))
            for name in self.free_after.get(node.name, ()):
                if name not in self.graph.outputs:
                    env.pop(name, None)
        self.batch = None
        return env["logits"].float()

    # -- helpers ------------------------------------------------------------------------------------------
    def param(self, name: str | None) -> Any:
        if name is None:
            return None
        try:
            return self.params[name]
        except KeyError:
            raise KeyError(f"parameter {name!r} is not in the model's weights (artifact incomplete?)") from None

    def rope_table(self, head_dim: int, theta: float, scaling: Any) -> torch.Tensor:
        key = (head_dim, theta, repr(scaling))
        if key not in self._rope:
            table = rope_cache(self.max_positions, head_dim, theta, dict(scaling) if scaling else None)
            self._rope[key] = torch.from_numpy(table)
        return self._rope[key]


@rule("embedding")
def _embedding(ex: Executor, node: Any, args: list[Any]) -> tuple[Any, ...]:
    w = ex.param(node.attrs_dict["weight"])  # [V, Dm]
    return (F.embedding(args[0], w).to(ex.dtype),)


@rule("rms_norm")
def _rms_norm(ex: Executor, node: Any, args: list[Any]) -> tuple[Any, ...]:
    a = node.attrs_dict
    return (rms_norm(args[0].contiguous(), ex.param(a["weight"]), a.get("eps", 1e-6), backend=ex.backend),)


@rule("add")
def _add(ex: Executor, node: Any, args: list[Any]) -> tuple[Any, ...]:
    return (args[0] + args[1],)


@rule("add_rms_norm")
def _add_rms_norm(ex: Executor, node: Any, args: list[Any]) -> tuple[Any, ...]:
    a = node.attrs_dict
    x, residual = args
    summed = residual.clone()  # the kernel adds in place; the input may still be read by a later node
    y = add_rms_norm(x.contiguous(), summed, ex.param(a["weight"]), a.get("eps", 1e-6), backend=ex.backend)
    return (y, summed)


def _quantize_tokens(y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    qa, sa = quantize_per_token_int8(y.float().numpy())  # [T, K] int8, [T] fp16 (lowbit.quant's rounding)
    return torch.from_numpy(qa), torch.from_numpy(sa)


@rule("rms_norm_quant")
def _rms_norm_quant(ex: Executor, node: Any, args: list[Any]) -> tuple[Any, ...]:
    (y,) = _rms_norm(ex, node, args)
    return _quantize_tokens(y)


@rule("add_rms_norm_quant")
def _add_rms_norm_quant(ex: Executor, node: Any, args: list[Any]) -> tuple[Any, ...]:
    y, summed = _add_rms_norm(ex, node, args)
    return (*_quantize_tokens(y), summed)


@rule("linear")
def _linear(ex: Executor, node: Any, args: list[Any]) -> tuple[Any, ...]:
    a = node.attrs_dict
    w, b = ex.param(a["weight"]), ex.param(a.get("bias"))
    if a.get("act_quant_fused"):  # (xq int8 [T, K], xs fp16 [T]) from rms_norm_quant
        dt = str(ex.dtype).removeprefix("torch.")
        y = quantized_linear_int8(args[0], args[1], w, out_dtype=dt, backend=ex.backend, bias=b)
    elif isinstance(w, QuantizedWeight):
        y = quantized_linear(args[0].contiguous(), w, backend=ex.backend, bias=b)
    else:
        y = F.linear(args[0], w, b)
    splits = tuple(a.get("splits") or ())
    if len(node.outputs) == 1:
        return (y,)
    return tuple(t.contiguous() for t in torch.split(y, list(splits), dim=-1))


@rule("silu_mul")
def _silu_mul(ex: Executor, node: Any, args: list[Any]) -> tuple[Any, ...]:
    if len(args) == 1:
        gate, up = args[0].chunk(2, dim=-1)
    else:
        gate, up = args
    return (F.silu(gate.float()).mul_(up.float()).to(ex.dtype),)


@rule("rope")
def _rope(ex: Executor, node: Any, args: list[Any]) -> tuple[Any, ...]:
    a = node.attrs_dict
    q, k, positions = args
    hq, hkv, d = a["num_heads"], a["num_kv_heads"], a["head_dim"]
    t = q.shape[0]
    table = ex.rope_table(d, a.get("theta", 10000.0), a.get("scaling"))
    if int(positions.max()) >= table.shape[0] if t else False:
        raise ValueError(f"position {int(positions.max())} is beyond max_positions {table.shape[0]}")
    qr, kr = apply_rope(
        q.reshape(t, hq, d).contiguous(),
        k.reshape(t, hkv, d).contiguous(),
        positions,
        table,
        a.get("style", "neox"),
        backend=ex.backend,
    )
    return (qr.reshape(t, hq * d), kr.reshape(t, hkv * d))


@rule("attention")
def _attention(ex: Executor, node: Any, args: list[Any]) -> tuple[Any, ...]:
    a = node.attrs_dict
    batch = ex.batch
    assert batch is not None
    hq, hkv, d = a["num_heads"], a["num_kv_heads"], a["head_dim"]
    sm = a.get("sm_scale") or 1.0 / math.sqrt(d)
    q, k, v = args
    t = q.shape[0]
    q3, k3, v3 = q.reshape(t, hq, d), k.reshape(t, hkv, d).contiguous(), v.reshape(t, hkv, d).contiguous()
    window = a.get("sliding_window")
    if window is not None and t and int(batch.positions.max()) >= window:
        raise NotImplementedError(
            f"position {int(batch.positions.max())} is beyond the sliding window {window} of layer {a['layer']}: "
            f"the attention kernels have no window mask yet; keep max_model_len <= {window}"
        )
    layer = ex.cache.layers[a["layer"]]
    kv = ex.cache.kv_dtype
    append_kv(
        k3, v3, batch.slot_mapping, layer.k, layer.v, kv,
        k_layer_scale=layer.k_layer_scale, v_layer_scale=layer.v_layer_scale, backend=ex.backend, **layer.side(),
    )  # fmt: skip
    out = torch.empty_like(q3)
    if batch.prefill_index.numel():
        idx = batch.prefill_index
        o = prefill_attention(
            q3.index_select(0, idx).contiguous(),
            k3.index_select(0, idx).contiguous(),
            v3.index_select(0, idx).contiguous(),
            batch.cu_seqlens,
            causal=True,
            sm_scale=sm,
            backend=ex.backend,
        )
        out.index_copy_(0, idx, o)
    if batch.paged_index.numel():
        idx = batch.paged_index
        o = paged_decode_attention(
            q3.index_select(0, idx).contiguous(),
            layer.k,
            layer.v,
            batch.block_tables,
            batch.context_lens,
            kv_dtype=kv,
            k_layer_scale=layer.k_layer_scale,
            v_layer_scale=layer.v_layer_scale,
            sm_scale=sm,
            backend=ex.backend,
            **layer.side(),
        )
        out.index_copy_(0, idx, o)
    return (out.reshape(t, hq * d),)


@rule("last_token")
def _last_token(ex: Executor, node: Any, args: list[Any]) -> tuple[Any, ...]:
    assert ex.batch is not None
    if ex.all_logits:
        return (args[0],)
    return (args[0].index_select(0, ex.batch.last_index).contiguous(),)


__all__ = ["RULES", "Executor", "MissingRule", "rule"]
