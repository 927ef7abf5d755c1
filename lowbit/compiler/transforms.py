"""Calibration and the data-dependent transforms of the quantize phase.

    calibrate(arch, weights, ids)   the input activations of every linear (float reference model) and the
                                    post-RoPE keys / values per layer
    apply_transforms(...)           returns (float weights with the transforms folded in, a quantizer for
                                    each linear node, fp8 KV layer scales or None):
      awq        per-input-channel scales s for (q,k,v) and (gate,up) folded into the RMSNorm weights, for
                 down_proj folded into up_proj's rows, for o_proj into v_proj's rows (MHA only: with GQA one
                 v channel feeds several o channels); then per linear a clip search and RTN
      gptq       Hessian-guided rounding from each linear's calibration input
      qoq        the W4A8 schemes by RTN on QoQ's grids (the spec carries the scheme)
      SmoothAttention (kv_cache.smooth_attention): λ from post-RoPE keys folded into W_q / W_k (Q·Kᵀ exact)
      fp8_e4m3 KV: per-layer scales max|K| / 448, max|V| / 448
Equivalence of every fold: tests/compiler/test_transform_folds.py (fp64 logits unchanged before quantization).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from lowbit.config.spec import LinearSpec
from lowbit.ops.weight import QuantizedWeight
from lowbit.quant.rtn import rtn_quantize
from lowbit.reference.rope import apply_rope as rope_f64


class Overlay(Mapping[str, np.ndarray]):
    """A read-only weight store with some tensors replaced (the transforms never copy the whole model)."""

    def __init__(self, base: Mapping[str, Any], changes: dict[str, np.ndarray] | None = None) -> None:
        self.base = base
        self.changes: dict[str, np.ndarray] = dict(changes or {})

    def __getitem__(self, name: str) -> np.ndarray:
        if name in self.changes:
            return self.changes[name]
        return np.asarray(self.base[name], dtype=np.float32)

    def __iter__(self) -> Iterator[str]:
        yield from self.base
        yield from (k for k in self.changes if k not in self.base)

    def __len__(self) -> int:
        return len(set(self.base) | set(self.changes))

    def __contains__(self, name: object) -> bool:
        return name in self.changes or name in self.base


@dataclass
class Calibration:
    inputs: dict[str, np.ndarray]  # HF module name -> its input activations [tokens, in_features]
    keys: list[np.ndarray]  # per layer: keys after RoPE [tokens, Hkv, D]
    values: list[np.ndarray]  # per layer [tokens, Hkv, D]


def calibrate(arch: Any, weights: Mapping[str, Any], ids: np.ndarray) -> Calibration:
    from lowbit.models.reference import capture_linear_inputs

    inputs = capture_linear_inputs(arch, weights, ids)
    keys, values = [], []
    t = ids.shape[1]
    positions = np.tile(np.arange(t), ids.shape[0])
    for layer in range(arch.num_layers):
        a = f"model.layers.{layer}.self_attn"
        x = np.asarray(inputs[f"{a}.k_proj"], dtype=np.float64)
        k = x @ np.asarray(weights[f"{a}.k_proj.weight"], dtype=np.float64).T
        v = x @ np.asarray(weights[f"{a}.v_proj.weight"], dtype=np.float64).T
        if arch.qkv_bias:
            k = k + np.asarray(weights[f"{a}.k_proj.bias"], dtype=np.float64)
            v = v + np.asarray(weights[f"{a}.v_proj.bias"], dtype=np.float64)
        k = k.reshape(-1, arch.num_kv_heads, arch.head_dim)
        keys.append(rope_f64(k, positions, "neox", arch.rope_theta, arch.rope_scaling_dict))
        values.append(v.reshape(-1, arch.num_kv_heads, arch.head_dim))
    return Calibration(inputs, keys, values)


def _spec_of(graph: Any, module: str) -> LinearSpec | None:
    for n in graph.nodes_in_order():
        a = dict(n.attrs)
        if n.op == "linear" and module in tuple(a.get("modules", ())):
            return a.get("spec")
    return None


def smooth_attention(arch: Any, w: Overlay, calib: Calibration) -> None:
    from lowbit.quant.smooth_attention import fold_smooth_attention, smooth_attention_scales

    for layer in range(arch.num_layers):
        a = f"model.layers.{layer}.self_attn"
        lam = smooth_attention_scales(calib.keys[layer])
        bq = w[f"{a}.q_proj.bias"] if arch.qkv_bias else None
        bk = w[f"{a}.k_proj.bias"] if arch.qkv_bias else None
        wq, wk, bq2, bk2 = fold_smooth_attention(
            w[f"{a}.q_proj.weight"], w[f"{a}.k_proj.weight"], lam, arch.num_heads, arch.num_kv_heads,
            arch.head_dim, b_q=bq, b_k=bk,
        )  # fmt: skip
        w.changes[f"{a}.q_proj.weight"] = wq.astype(np.float32)
        w.changes[f"{a}.k_proj.weight"] = wk.astype(np.float32)
        if bq2 is not None and bk2 is not None:
            w.changes[f"{a}.q_proj.bias"] = bq2.astype(np.float32)
            w.changes[f"{a}.k_proj.bias"] = bk2.astype(np.float32)
        # the keys the KV cache will see are divided by λ too
        calib.keys[layer] = calib.keys[layer] / lam[None]


def awq_fold(arch: Any, graph: Any, w: Overlay, calib: Calibration, grid: int) -> dict[str, np.ndarray]:
    """Search and fold the AWQ scales; returns module -> the scale its input was divided by."""
    from lowbit.quant.awq import awq_search_scales

    divided: dict[str, np.ndarray] = {}

    def fold(modules: list[str], prev: str, prev_is_norm: bool) -> None:
        spec = _spec_of(graph, modules[0])
        if spec is None or spec.algorithm != "awq":
            return
        x = calib.inputs[modules[0]]
        ws = [w[f"{m}.weight"] for m in modules]
        s = np.asarray(awq_search_scales(x, ws, spec, grid=grid).scales, dtype=np.float64)  # s: [K]
        for m, wm in zip(modules, ws):
            w.changes[f"{m}.weight"] = (wm * s[None, :]).astype(np.float32)
            divided[m] = s
        if prev_is_norm:
            w.changes[f"{prev}.weight"] = (w[f"{prev}.weight"] / s).astype(np.float32)
        else:  # the previous linear's output rows (and bias)
            w.changes[f"{prev}.weight"] = (w[f"{prev}.weight"] / s[:, None]).astype(np.float32)
            if f"{prev}.bias" in w:
                w.changes[f"{prev}.bias"] = (w[f"{prev}.bias"] / s).astype(np.float32)

    for layer in range(arch.num_layers):
        p = f"model.layers.{layer}"
        a, m = f"{p}.self_attn", f"{p}.mlp"
        fold([f"{a}.q_proj", f"{a}.k_proj", f"{a}.v_proj"], f"{p}.input_layernorm", True)
        if arch.num_heads == arch.num_kv_heads:
            fold([f"{a}.o_proj"], f"{a}.v_proj", False)
        fold([f"{m}.gate_proj", f"{m}.up_proj"], f"{p}.post_attention_layernorm", True)
        fold([f"{m}.down_proj"], f"{m}.up_proj", False)
    return divided


def qoq_smooth(arch: Any, w: Overlay, calib: Calibration, alpha: float) -> None:
    """QoQ's input smoothing for the W4A8 linears: s = max|X|^α / max|W|^(1−α) folded into the producer
    (RMSNorm weight, up_proj rows for down_proj, v_proj rows for o_proj with GQA-tied factors)."""
    from lowbit.quant.smoothing import apply_smoothing, smooth_scales, tie_gqa_scales, weight_absmax

    def absmax(module: str) -> np.ndarray:
        return np.abs(np.asarray(calib.inputs[module], dtype=np.float64)).max(axis=0)

    def put(name: str, value: np.ndarray | None) -> None:
        if value is not None:
            w.changes[name] = np.asarray(value, dtype=np.float32)

    for layer in range(arch.num_layers):
        p = f"model.layers.{layer}"
        a, m = f"{p}.self_attn", f"{p}.mlp"
        for mods, norm in (([f"{a}.q_proj", f"{a}.k_proj", f"{a}.v_proj"], f"{p}.input_layernorm"),
                           ([f"{m}.gate_proj", f"{m}.up_proj"], f"{p}.post_attention_layernorm")):  # fmt: skip
            ws = [w[f"{x}.weight"] for x in mods]
            sm = apply_smoothing(
                smooth_scales(absmax(mods[0]), weight_absmax(ws), alpha), ws, norm_w=w[f"{norm}.weight"]
            )
            for x, wx in zip(mods, sm.consumers):
                put(f"{x}.weight", wx)
            put(f"{norm}.weight", sm.norm_w)
        up, down = f"{m}.up_proj", f"{m}.down_proj"
        s = smooth_scales(absmax(down), weight_absmax([w[f"{down}.weight"]]), alpha)
        sm = apply_smoothing(s, [w[f"{down}.weight"]], prev_w=w[f"{up}.weight"],
                             prev_bias=w.get(f"{up}.bias"))  # fmt: skip
        put(f"{down}.weight", sm.consumers[0])
        put(f"{up}.weight", sm.prev_w)
        put(f"{up}.bias", sm.prev_bias)
        o, v = f"{a}.o_proj", f"{a}.v_proj"
        s_o, s_v = tie_gqa_scales(
            smooth_scales(absmax(o), weight_absmax([w[f"{o}.weight"]]), alpha), arch.num_heads, arch.num_kv_heads
        )
        put(f"{o}.weight", w[f"{o}.weight"] * s_o[None, :])
        put(f"{v}.weight", w[f"{v}.weight"] / s_v[:, None])
        if f"{v}.bias" in w:
            put(f"{v}.bias", w[f"{v}.bias"] / s_v)


def apply_transforms(
    cfg: Any,
    arch: Any,
    graph: Any,
    weights: Mapping[str, Any],
    calib: Calibration | None,
    ids: np.ndarray | None = None,
) -> tuple[Overlay, Callable[[Any, np.ndarray, LinearSpec], QuantizedWeight] | None, list[tuple[float, float]] | None]:
    """See the module docstring. `arch` is the (possibly untied, for QoQ rotation) architecture the graph was
    built for and `weights` are named as it names them (lm_head.weight present when untied); `ids` the
    calibration tokens (QoQ recalibrates after rotating)."""
    q = cfg.quantization
    w = Overlay(weights)
    kv_scales = None
    if calib is not None and q.algorithm == "qoq" and q.qoq.rotate:
        from lowbit.quant.rotation import random_orthogonal_hadamard, rotate_model

        rot = rotate_model(w, arch, q=random_orthogonal_hadamard(arch.hidden_size, int(q.calibration.seed)))
        w = Overlay({}, {k: v.astype(np.float32) for k, v in rot.items()})
        assert ids is not None
        calib = calibrate(arch, w, ids)  # the linears now read rotated activations
    if calib is not None and q.kv_cache.smooth_attention:
        smooth_attention(arch, w, calib)
    if calib is not None and q.algorithm == "qoq" and q.qoq.smooth:
        qoq_smooth(arch, w, calib, float(q.qoq.smooth_alpha))
    if calib is not None and q.kv_cache.dtype == "fp8_e4m3":
        from lowbit.quant.kv import fp8_kv_scale

        kv_scales = [(fp8_kv_scale(k), fp8_kv_scale(v)) for k, v in zip(calib.keys, calib.values)]
    divided: dict[str, np.ndarray] = {}
    if calib is not None and q.algorithm == "awq":
        divided = awq_fold(arch, graph, w, calib, int(getattr(q.awq, "grid", 20)))

    def node_input(node: Any) -> np.ndarray | None:
        if calib is None:
            return None
        first = next(iter(dict(node.attrs).get("modules", ())))
        x = calib.inputs.get(first)
        if x is None:
            return None
        return x / divided[first][None, :] if first in divided else x

    def quantizer(node: Any, wt: np.ndarray, spec: LinearSpec) -> QuantizedWeight:
        layout = dict(node.attrs).get("layout", "row")
        x = node_input(node)
        if spec.algorithm == "awq" and x is not None and getattr(q.awq, "clip", True):
            from lowbit.quant.awq import apply_clip, awq_search_clip

            wt = apply_clip(wt, awq_search_clip(x, wt, spec, grid=int(getattr(q.awq, "grid", 20))))
        if spec.algorithm == "gptq" and x is not None:
            from lowbit.quant.gptq import gptq_quantize

            g = q.gptq
            return gptq_quantize(wt, x, spec, block_size=int(g.block_size), damp=float(g.damp),
                                 act_order=bool(g.act_order), layout=layout)  # fmt: skip
        return rtn_quantize(wt, spec, layout)

    return w, quantizer, kv_scales


__all__ = ["Calibration", "Overlay", "apply_transforms", "awq_fold", "calibrate", "smooth_attention"]
