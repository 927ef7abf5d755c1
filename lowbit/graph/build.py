"""`build_graph(arch)`: the unfused op graph of a Llama-family decoder, every weight by its HF name.

    %h_embed = embedding(%input_ids)
    per layer i (h = the residual stream entering the layer):
      %li.attn_in = rms_norm(%h)                       input_layernorm
      %li.q / %li.k / %li.v = linear(%li.attn_in)      q_proj / k_proj / v_proj
      %li.q_rot, %li.k_rot = rope(%li.q, %li.k, %positions)
      %li.attn = attention(%li.q_rot, %li.k_rot, %li.v)
      %li.o = linear(%li.attn)                         o_proj
      %li.h = add(%li.o, %h)                           residual
      %li.mlp_in = rms_norm(%li.h)                     post_attention_layernorm
      %li.gate / %li.up = linear(%li.mlp_in)           gate_proj / up_proj
      %li.act = silu_mul(%li.gate, %li.up)
      %li.down = linear(%li.act)                       down_proj
      %li.out = add(%li.down, %li.h)                   residual
    %h_norm = rms_norm(%l{L-1}.out)                    model.norm
    %h_last = last_token(%h_norm)
    %logits = linear(%h_last)                          lm_head (weight model.embed_tokens.weight when tied)

`add` takes (branch, residual stream), matching `add_rms_norm`'s (x, residual). `attention` carries the
layer's `sliding_window` (None: full causal; w: query i sees keys i − w < j <= i, HF Mistral/Qwen2).
"""

from __future__ import annotations

import math
from typing import Any

from lowbit.graph.graph import Node as N
from lowbit.graph.graph import OpGraph
from lowbit.models.arch import ArchConfig, LinearShape


def linear_node(shape: LinearShape, x: str, y: str, layer: int | None, weight: str | None = None) -> N:
    """An unfused linear of one HF module: y = x @ W.T (+ b), no recipe decision yet."""
    return N.create(
        shape.name,
        "linear",
        (x,),
        (y,),
        layer,
        weight=weight or f"{shape.name}.weight",
        bias=f"{shape.name}.bias" if shape.bias else None,
        modules=(shape.name,),
        splits=(shape.out_features,),
        in_features=shape.in_features,
        spec=None,
        kernels=(),
        layout=None,
        act_quant_fused=False,
    )


def _layer(arch: ArchConfig, i: int, h: str, kv_dtype: str) -> tuple[list[N], str]:
    p, t = f"model.layers.{i}", f"l{i}."
    q, k, v, o, gate, up, down = arch.layer_linears(i)
    eps = arch.rms_norm_eps
    heads = {"num_heads": arch.num_heads, "num_kv_heads": arch.num_kv_heads, "head_dim": arch.head_dim}
    rope_attrs: dict[str, Any] = {**heads, "style": "neox", "theta": arch.rope_theta, "scaling": arch.rope_scaling_dict}
    nodes = [
        N.create(
            f"{p}.input_layernorm", "rms_norm", (h,), (t + "attn_in",), i, weight=f"{p}.input_layernorm.weight", eps=eps
        ),
        linear_node(q, t + "attn_in", t + "q", i),
        linear_node(k, t + "attn_in", t + "k", i),
        linear_node(v, t + "attn_in", t + "v", i),
        N.create(
            f"{p}.self_attn.rope", "rope", (t + "q", t + "k", "positions"), (t + "q_rot", t + "k_rot"), i, **rope_attrs
        ),
        N.create(
            f"{p}.self_attn.attn",
            "attention",
            (t + "q_rot", t + "k_rot", t + "v"),
            (t + "attn",),
            i,
            layer=i,
            **heads,
            sm_scale=1.0 / math.sqrt(arch.head_dim),
            kv_dtype=kv_dtype,
            sliding_window=arch.layer_sliding_window(i),
        ),
        linear_node(o, t + "attn", t + "o", i),
        N.create(f"{p}.attn_residual", "add", (t + "o", h), (t + "h",), i),
        N.create(
            f"{p}.post_attention_layernorm",
            "rms_norm",
            (t + "h",),
            (t + "mlp_in",),
            i,
            weight=f"{p}.post_attention_layernorm.weight",
            eps=eps,
        ),
        linear_node(gate, t + "mlp_in", t + "gate", i),
        linear_node(up, t + "mlp_in", t + "up", i),
        N.create(f"{p}.mlp.act", "silu_mul", (t + "gate", t + "up"), (t + "act",), i),
        linear_node(down, t + "act", t + "down", i),
        N.create(f"{p}.mlp_residual", "add", (t + "down", t + "h"), (t + "out",), i),
    ]
    return nodes, t + "out"


def build_graph(arch: ArchConfig, kv_dtype: str = "float16") -> OpGraph:
    """The unfused graph of `arch` (module docstring); kv_dtype is the attention nodes' KV cache format
    (match_recipe sets it from the PassContext too)."""
    nodes = [
        N.create(
            "model.embed_tokens", "embedding", ("input_ids",), ("h_embed",), None, weight="model.embed_tokens.weight"
        )
    ]
    h = "h_embed"
    for i in range(arch.num_layers):
        layer, h = _layer(arch, i, h, kv_dtype)
        nodes.extend(layer)
    head = arch.linears()[-1]
    tied = "model.embed_tokens.weight" if arch.tie_word_embeddings else None
    nodes += [
        N.create("model.norm", "rms_norm", (h,), ("h_norm",), None, weight="model.norm.weight", eps=arch.rms_norm_eps),
        N.create("last_token", "last_token", ("h_norm",), ("h_last",), None),
        linear_node(head, "h_last", "logits", None, weight=tied),
    ]
    meta = {
        "arch": f"{arch.model_type} L={arch.num_layers} d={arch.hidden_size} heads={arch.num_heads}/{arch.num_kv_heads}"
    }
    return OpGraph.create(nodes, meta=meta, name=arch.model_type)


__all__ = ["build_graph", "linear_node"]
