"""`interpret(g, params, input_ids, ...)`: a float64 NumPy reference executor for op graphs — the graph
contract's semantics written once, plainly, to check that passes preserve meaning (the unfused and the
optimized graph must give the same logits) and as an oracle for the real executor. Not fast; not a runtime.

Scope: one prefill of a ragged batch (every sequence's tokens are all present; attention is causal within
each sequence, with the node's sliding_window if set: query i sees keys i − w < j <= i); no KV cache, so
`kv_dtype` is ignored (K/V stay float64). Weights are used as given (pass dequantized weights to model a
quantized checkpoint); a fused param missing from `params` is built from g.meta["fused_params"] (sources
concatenated along dim 0).

Activation quantization (`act_quant=True`): a linear whose spec takes int8 activations sees its input
rounded per token to int8 in float64 — s = max|x| / 127 per row (1 for an all-zero row), q = clip(rint(x /
s), −127, 127), x̂ = q·s — whether the linear quantizes it itself or a fused norm (rms_norm_quant) did,
so fusion must not change the result. (The kernels use an fp16 scale; this is the reference rule.)
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from lowbit.graph.graph import GraphError, Node, OpGraph
from lowbit.reference import add_rms_norm, apply_rope, prefill_attention, rms_norm


@dataclass
class _Run:
    graph: OpGraph
    params: Mapping[str, Any]
    positions: np.ndarray  # [T] int64
    cu_seqlens: np.ndarray  # [B + 1] int64
    act_quant: bool
    cache: dict[str, np.ndarray] = field(default_factory=dict)

    def optional(self, name: str | None) -> np.ndarray | None:
        return None if name is None else self.param(name)

    def param(self, name: str) -> np.ndarray:
        if name not in self.cache:
            if name in self.params:
                self.cache[name] = np.asarray(self.params[name], dtype=np.float64)
            else:
                sources = self.graph.meta.get("fused_params", {}).get(name)
                if sources is None:
                    raise KeyError(f"parameter {name!r} is neither in params nor a fused param of the graph")
                self.cache[name] = np.concatenate([self.param(s) for s in sources], axis=0)
        return self.cache[name]


Rule = Callable[[_Run, Node, list[np.ndarray]], tuple[np.ndarray, ...]]
RULES: dict[str, Rule] = {}


def rule(op: str) -> Callable[[Rule], Rule]:
    def register(fn: Rule) -> Rule:
        RULES[op] = fn
        return fn

    return register


def quantize_per_token(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """x [T, D] -> (q [T, D] integers in [−127, 127] as float64, s [T, 1]) with x ≈ q·s (module docstring)."""
    amax = np.abs(x).max(axis=-1, keepdims=True)  # [T, 1]
    s = np.where(amax > 0, amax / 127.0, 1.0)
    return np.clip(np.rint(x / s), -127, 127), s


@rule("embedding")
def _embedding(r: _Run, n: Node, args: list[np.ndarray]) -> tuple[np.ndarray, ...]:
    return (r.param(n.attr("weight"))[args[0]],)  # [T, D]


@rule("rms_norm")
def _rms_norm(r: _Run, n: Node, args: list[np.ndarray]) -> tuple[np.ndarray, ...]:
    return (rms_norm(args[0], r.param(n.attr("weight")), n.attr("eps")),)


@rule("add")
def _add(r: _Run, n: Node, args: list[np.ndarray]) -> tuple[np.ndarray, ...]:
    return (args[0] + args[1],)


@rule("add_rms_norm")
def _add_rms_norm(r: _Run, n: Node, args: list[np.ndarray]) -> tuple[np.ndarray, ...]:
    return add_rms_norm(args[0], args[1], r.param(n.attr("weight")), n.attr("eps"))


@rule("rms_norm_quant")
def _rms_norm_quant(r: _Run, n: Node, args: list[np.ndarray]) -> tuple[np.ndarray, ...]:
    return quantize_per_token(rms_norm(args[0], r.param(n.attr("weight")), n.attr("eps")))


@rule("add_rms_norm_quant")
def _add_rms_norm_quant(r: _Run, n: Node, args: list[np.ndarray]) -> tuple[np.ndarray, ...]:
    y, summed = add_rms_norm(args[0], args[1], r.param(n.attr("weight")), n.attr("eps"))
    return (*quantize_per_token(y), summed)


@rule("linear")
def _linear(r: _Run, n: Node, args: list[np.ndarray]) -> tuple[np.ndarray, ...]:
    spec = n.attr("spec")
    if n.attr("act_quant_fused"):
        xq, xs = args
        x = xq * xs  # [T, K]
    else:
        x = args[0]
        if r.act_quant and spec is not None and spec.act_int8:
            q, s = quantize_per_token(x)
            x = q * s
    y = x @ r.param(n.attr("weight")).T  # [T, N]
    b = r.optional(n.attr("bias"))
    if b is not None:
        y = y + b
    if len(n.outputs) == 1:
        return (y,)
    cuts = np.cumsum(n.attr("splits"))[:-1]
    return tuple(np.split(y, cuts, axis=-1))


@rule("rope")
def _rope(r: _Run, n: Node, args: list[np.ndarray]) -> tuple[np.ndarray, ...]:
    q, k, positions = args
    t, d = q.shape[0], n.attr("head_dim")
    kw = {"style": n.attr("style"), "theta": n.attr("theta"), "scaling": n.attr("scaling")}
    qr = apply_rope(q.reshape(t, n.attr("num_heads"), d), positions, **kw)
    kr = apply_rope(k.reshape(t, n.attr("num_kv_heads"), d), positions, **kw)
    return qr.reshape(t, -1), kr.reshape(t, -1)


@rule("attention")
def _attention(r: _Run, n: Node, args: list[np.ndarray]) -> tuple[np.ndarray, ...]:
    q, k, v = args
    t, d = q.shape[0], n.attr("head_dim")
    hq, hkv = n.attr("num_heads"), n.attr("num_kv_heads")
    q3, k3, v3 = q.reshape(t, hq, d), k.reshape(t, hkv, d), v.reshape(t, hkv, d)
    out = prefill_attention(q3, k3, v3, r.cu_seqlens, True, n.attr("sm_scale"), window=n.attr("sliding_window"))
    return (np.asarray(out).reshape(t, hq * d),)


@rule("silu_mul")
def _silu_mul(r: _Run, n: Node, args: list[np.ndarray]) -> tuple[np.ndarray, ...]:
    gate, up = np.split(args[0], 2, axis=-1) if len(args) == 1 else args
    return (gate / (1.0 + np.exp(-gate)) * up,)


@rule("last_token")
def _last_token(r: _Run, n: Node, args: list[np.ndarray]) -> tuple[np.ndarray, ...]:
    return (args[0][r.cu_seqlens[1:] - 1],)  # [B, D]


def interpret(
    g: OpGraph,
    params: Mapping[str, Any],
    input_ids: Any,
    positions: Any = None,
    seq_lens: Any = None,
    *,
    act_quant: bool = True,
) -> dict[str, np.ndarray]:
    """Run `g` in float64 on one prefill batch; returns the graph outputs by name (logits [B, vocab]).

    input_ids [T] ints (sequences concatenated); seq_lens [B] (default: one sequence of T tokens);
    positions [T] (default 0..len−1 within each sequence); params: HF param name -> [N, K] / [D] arrays.
    """
    ids = np.asarray(input_ids, dtype=np.int64).reshape(-1)
    lens = np.asarray([ids.size] if seq_lens is None else seq_lens, dtype=np.int64)
    if lens.sum() != ids.size or (lens <= 0).any():
        raise ValueError(f"seq_lens {lens.tolist()} must be positive and add up to the {ids.size} input_ids")
    cu = np.concatenate([[0], np.cumsum(lens)])
    pos = np.concatenate([np.arange(n) for n in lens]) if positions is None else np.asarray(positions, np.int64)
    run = _Run(g, params, pos, cu, act_quant)
    env: dict[str, Any] = {"input_ids": ids, "positions": pos}
    for n in g.nodes_in_order():
        fn = RULES.get(n.op)
        if fn is None:
            raise GraphError(f"node {n.name}: op {n.op!r} has no rule in lowbit/graph/interpret.py; add one")
        outs = fn(run, n, [env[t] for t in n.inputs])
        env.update(zip(n.outputs, outs))
    return {t: env[t] for t in g.outputs}


__all__ = ["RULES", "interpret", "quantize_per_token"]
