"""The float oracle: a Llama / Mistral / Qwen2 forward pass in torch, written from HF transformers' modeling.

float64 by default (float32 matches HF fp32 to ~1e-6). Semantics (HF `LlamaForCausalLM`):
    h = embed_tokens[ids]                                          # [B, T, H]
    per layer:  x = rms_norm(h) · w_in;   q, k, v = x Wq^T + bq, x Wk^T + bk, x Wv^T + bv
                q, k = rope(q), rope(k)  (neox / rotate_half pairs, llama3 / linear scaling)
                o = softmax(q k^T / sqrt(D) + causal [+ sliding window] mask) v   (GQA: kv head = q head // group)
                h = h + o Wo^T (+ bo);   x = rms_norm(h) · w_post
                h = h + (silu(x Wg^T) * (x Wu^T)) Wd^T
    logits = rms_norm(h) · w_final  lm_head^T   (lm_head = embed_tokens when tied)
rms_norm(x) = x / sqrt(mean(x²) + eps), computed in at least float32, cast back, then times the weight.

`overrides` replaces parameters, e.g. dequantized linear weights: keys are parameter names
("model.layers.0.mlp.up_proj.weight") or linear module names ("model.layers.0.mlp.up_proj", "lm_head"),
which mean the module's weight. The per-layer functions (`embed`, `decoder_layer`, `final_logits`) let a
quantizer walk the model one layer at a time; `capture_linear_inputs` records each linear's input.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from typing import Any

import numpy as np
import torch

from lowbit.models.arch import ArchConfig
from lowbit.reference.rope import rope_inv_freq

Capture = Callable[[str, torch.Tensor], None]  # (module name, input [B, T, K]) -> None


def _normalize_overrides(arch: ArchConfig, overrides: Mapping[str, Any] | None) -> dict[str, Any]:
    """Module names -> parameter names; every key must name a parameter of `arch` with the right shape."""
    if not overrides:
        return {}
    shapes = dict(arch.param_shapes())
    shapes.setdefault("lm_head.weight", (arch.vocab_size, arch.hidden_size))  # a tied model may untie lm_head
    modules = {s.name for s in arch.linears()}
    out: dict[str, Any] = {}
    for key, value in overrides.items():
        name = f"{key}.weight" if key in modules else key
        if name not in shapes:
            raise KeyError(
                f"override {key!r} names no parameter of this {arch.model_type} model; use a parameter name such as "
                "'model.layers.0.self_attn.q_proj.weight' or a linear module name such as 'model.layers.0.mlp.up_proj'"
            )
        if tuple(value.shape) != shapes[name]:
            raise ValueError(f"override {key!r} has shape {tuple(value.shape)}, expected {shapes[name]}")
        out[name] = value
    return out


class _Params(Mapping[str, Any]):
    """`weights` with `overrides` applied (a mapping of raw arrays); calling it gives a parameter as a torch
    tensor of the compute dtype, converted when asked for (one layer's worth at a time)."""

    def __init__(
        self, arch: ArchConfig, weights: Mapping[str, Any], overrides: Mapping[str, Any] | None, dtype, device
    ):
        self.arch, self.weights, self.dtype, self.device = arch, weights, dtype, torch.device(device)
        self.overrides = _normalize_overrides(arch, overrides)

    def __getitem__(self, name: str) -> Any:
        if name in self.overrides:
            return self.overrides[name]
        if name == "lm_head.weight" and self.arch.tie_word_embeddings:
            return self.weights["model.embed_tokens.weight"]
        return self.weights[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self.weights)

    def __len__(self) -> int:
        return len(self.weights)

    def __call__(self, name: str) -> torch.Tensor:
        value = self[name]
        if isinstance(value, torch.Tensor):
            return value.detach().to(device=self.device, dtype=self.dtype)
        np_dtype = np.float64 if self.dtype == torch.float64 else np.float32
        return torch.from_numpy(np.array(value, dtype=np_dtype)).to(device=self.device, dtype=self.dtype)

    def linear(self, module: str, x: torch.Tensor, bias: bool, capture: Capture | None) -> torch.Tensor:
        if capture is not None:
            capture(module, x)
        y = x @ self(f"{module}.weight").T
        return y + self(f"{module}.bias") if bias else y


def _params(
    arch: ArchConfig, weights: Mapping[str, Any], overrides: Mapping[str, Any] | None, dtype, device
) -> _Params:
    if (
        not overrides
        and isinstance(weights, _Params)
        and (weights.dtype, weights.device) == (dtype, torch.device(device))
    ):
        return weights
    return _Params(arch, weights, overrides, dtype, device)


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """HF LlamaRMSNorm: normalise in (at least) float32, cast back to x's dtype, then multiply by weight."""
    xf = x.to(torch.promote_types(x.dtype, torch.float32))
    xf = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + eps)
    return weight * xf.to(x.dtype)


def rope_cos_sin(
    arch: ArchConfig, positions: torch.Tensor, dtype: torch.dtype, device: Any = "cpu"
) -> tuple[torch.Tensor, torch.Tensor]:
    """cos, sin [T, D] (neox layout: the D/2 frequencies twice) for positions [T], computed in float64."""
    inv_freq = torch.from_numpy(rope_inv_freq(arch.head_dim, arch.rope_theta, arch.rope_scaling_dict))  # [D/2]
    angles = positions.cpu().to(torch.float64)[:, None] * inv_freq[None, :]  # [T, D/2]
    angles = torch.cat([angles, angles], dim=-1)  # [T, D]
    return angles.cos().to(device=device, dtype=dtype), angles.sin().to(device=device, dtype=dtype)


def _rotate_half(x: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    return torch.cat([-x[..., half:], x[..., :half]], dim=-1)


def attention_mask(T: int, window: int | None) -> torch.Tensor:
    """[T, T] bool, True where query i may see key j: j <= i, and i - j < window when windowed."""
    i = torch.arange(T)[:, None]
    j = torch.arange(T)[None, :]
    mask = j <= i
    return mask & (i - j < window) if window is not None else mask


def _as_positions(positions: Any, T: int) -> torch.Tensor:
    if positions is None:
        return torch.arange(T)
    pos = torch.as_tensor(np.asarray(positions) if not isinstance(positions, torch.Tensor) else positions)
    if pos.shape != (T,) or pos.dtype.is_floating_point:
        raise ValueError(f"positions must be {T} integers (one per token), got {pos.dtype} {tuple(pos.shape)}")
    return pos


# -- per-layer functions -------------------------------------------------------------------------------
def embed(
    arch: ArchConfig,
    weights: Mapping[str, Any],
    input_ids: Any,
    dtype: torch.dtype = torch.float64,
    overrides: Mapping[str, Any] | None = None,
    device: Any = "cpu",
) -> torch.Tensor:
    """hidden [B, T, H] (`dtype`, on `device`) = embed_tokens[input_ids [B, T]]."""
    ids = torch.as_tensor(np.asarray(input_ids) if not isinstance(input_ids, torch.Tensor) else input_ids)
    if ids.ndim != 2 or ids.dtype.is_floating_point:
        raise ValueError(f"input_ids must be integers [B, T], got {ids.dtype} {tuple(ids.shape)}")
    if ids.numel() and (int(ids.min()) < 0 or int(ids.max()) >= arch.vocab_size):
        raise ValueError(
            f"input_ids range [{int(ids.min())}, {int(ids.max())}] is outside the vocab 0..{arch.vocab_size - 1}"
        )
    table = _params(arch, weights, overrides, dtype, device)("model.embed_tokens.weight")  # [V, H]
    return table[ids.long().to(table.device)]


def decoder_layer(
    arch: ArchConfig,
    weights: Mapping[str, Any],
    layer: int,
    hidden: torch.Tensor,
    positions: Any = None,
    overrides: Mapping[str, Any] | None = None,
    capture: Capture | None = None,
) -> torch.Tensor:
    """Decoder layer `layer` on hidden [B, T, H] (its dtype and device are the compute's) at positions [T]
    (default 0..T-1); returns the new hidden [B, T, H]. `capture(module, x)` sees every linear's input."""
    if not 0 <= layer < arch.num_layers:
        raise ValueError(f"layer {layer} is outside 0..{arch.num_layers - 1}")
    p = _params(arch, weights, overrides, hidden.dtype, hidden.device)
    B, T, _ = hidden.shape
    Hq, Hkv, D = arch.num_heads, arch.num_kv_heads, arch.head_dim
    a, m = f"model.layers.{layer}.self_attn", f"model.layers.{layer}.mlp"

    # attention
    x = rms_norm(hidden, p(f"model.layers.{layer}.input_layernorm.weight"), arch.rms_norm_eps)
    q = p.linear(f"{a}.q_proj", x, arch.qkv_bias, capture).view(B, T, Hq, D).transpose(1, 2)  # [B, Hq, T, D]
    k = p.linear(f"{a}.k_proj", x, arch.qkv_bias, capture).view(B, T, Hkv, D).transpose(1, 2)  # [B, Hkv, T, D]
    v = p.linear(f"{a}.v_proj", x, arch.qkv_bias, capture).view(B, T, Hkv, D).transpose(1, 2)
    cos, sin = rope_cos_sin(arch, _as_positions(positions, T), hidden.dtype, hidden.device)  # [T, D]
    q = q * cos + _rotate_half(q) * sin
    k = k * cos + _rotate_half(k) * sin
    k = k.repeat_interleave(arch.group_size, dim=1)  # [B, Hq, T, D]: query head h reads kv head h // group
    v = v.repeat_interleave(arch.group_size, dim=1)
    scores = (q @ k.transpose(-1, -2)) * D**-0.5  # [B, Hq, T, T]
    mask = attention_mask(T, arch.layer_sliding_window(layer)).to(hidden.device)
    scores = scores.masked_fill(~mask, float("-inf"))
    probs = torch.softmax(scores.to(torch.promote_types(scores.dtype, torch.float32)), dim=-1).to(hidden.dtype)
    o = (probs @ v).transpose(1, 2).reshape(B, T, Hq * D)  # [B, T, Hq·D]
    hidden = hidden + p.linear(f"{a}.o_proj", o, arch.o_bias, capture)

    # MLP
    x = rms_norm(hidden, p(f"model.layers.{layer}.post_attention_layernorm.weight"), arch.rms_norm_eps)
    gate = p.linear(f"{m}.gate_proj", x, arch.mlp_bias, capture)
    up = p.linear(f"{m}.up_proj", x, arch.mlp_bias, capture)
    return hidden + p.linear(f"{m}.down_proj", torch.nn.functional.silu(gate) * up, arch.mlp_bias, capture)


def final_logits(
    arch: ArchConfig,
    weights: Mapping[str, Any],
    hidden: torch.Tensor,
    overrides: Mapping[str, Any] | None = None,
    capture: Capture | None = None,
) -> torch.Tensor:
    """logits [B, T, V] = rms_norm(hidden [B, T, H]) · lm_head^T (embed_tokens when tied)."""
    p = _params(arch, weights, overrides, hidden.dtype, hidden.device)
    x = rms_norm(hidden, p("model.norm.weight"), arch.rms_norm_eps)
    return p.linear("lm_head", x, False, capture)


# -- whole model ---------------------------------------------------------------------------------------
def _forward(arch, weights, input_ids, dtype, overrides, capture, device) -> torch.Tensor:
    p = _Params(arch, weights, overrides, dtype, device)
    with torch.no_grad():
        hidden = embed(arch, p, input_ids, dtype, device=device)
        for layer in range(arch.num_layers):
            hidden = decoder_layer(arch, p, layer, hidden, capture=capture)
        return final_logits(arch, p, hidden, capture=capture)


def reference_logits(
    arch: ArchConfig,
    weights: Mapping[str, Any],
    input_ids: Any,
    dtype: torch.dtype = torch.float64,
    overrides: Mapping[str, Any] | None = None,
    device: Any = "cpu",
) -> np.ndarray:
    """logits [B, T, V] (numpy, `dtype`) of input_ids [B, T] at positions 0..T-1, as HF LlamaForCausalLM /
    MistralForCausalLM / Qwen2ForCausalLM computes them. `overrides` replaces parameters (see module doc);
    `device` ("cuda") runs it there, one layer's weights at a time."""
    return _forward(arch, weights, input_ids, dtype, overrides, None, device).cpu().numpy()


def capture_linear_inputs(
    arch: ArchConfig,
    weights: Mapping[str, Any],
    input_ids: Any,
    modules: set[str] | None = None,
    dtype: torch.dtype = torch.float64,
    overrides: Mapping[str, Any] | None = None,
    device: Any = "cpu",
) -> dict[str, np.ndarray]:
    """Input activations [tokens = B·T, K] of each linear module (HF names, "lm_head" included) in execution
    order, for calibration. `modules` restricts which are kept (None: all). Linears fed the same tensor
    (q/k/v, gate/up) share one array object."""
    known = {s.name for s in arch.linears()}
    if modules is not None and not modules <= known:
        bad = sorted(modules - known)[:3]
        raise KeyError(
            f"modules {bad} are not linears of this model; names look like 'model.layers.0.self_attn.q_proj'"
        )
    out: dict[str, np.ndarray] = {}
    last: list[Any] = [None, None]  # (input tensor, its array): q/k/v and gate/up see the same tensor in a row

    def capture(module: str, x: torch.Tensor) -> None:
        if modules is not None and module not in modules:
            return
        if last[0] is not x:
            last[:] = [x, x.reshape(-1, x.shape[-1]).cpu().numpy().copy()]
        out[module] = last[1]

    _forward(arch, weights, input_ids, dtype, overrides, capture, device)
    return out


__all__ = [
    "attention_mask",
    "capture_linear_inputs",
    "decoder_layer",
    "embed",
    "final_logits",
    "reference_logits",
    "rms_norm",
    "rope_cos_sin",
]
