"""Rotary position embedding (RoPE) in float64: frequencies (with llama3 scaling), pairing styles, apply.

Frequency i of a rotary dim R rotates one channel pair by the angle position·inv_freq[i], with
inv_freq[i] = theta^(−2i/R), i < R/2. Which channels pair up is the style:
    neox        (i, i + R/2)     HF Llama/Qwen/Mistral `rotate_half`, vLLM is_neox_style=True
    interleaved (2i, 2i + 1)     GPT-J, vLLM is_neox_style=False
A pair (a, b) turns like a complex number a + ib:  a' = a·cos − b·sin,  b' = b·cos + a·sin.
With rotary_dim R < D (partial rotary), channels R..D−1 pass through unchanged.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

ROPE_STYLES = ("neox", "interleaved")
LLAMA3_KEYS = ("factor", "low_freq_factor", "high_freq_factor", "original_max_position_embeddings")


def rope_inv_freq(rotary_dim: int, theta: float = 10000.0, scaling: Mapping[str, Any] | None = None) -> np.ndarray:
    """inv_freq [rotary_dim // 2] float64, optionally rescaled by an HF `rope_scaling` dict.

    scaling: None or {"rope_type": "default"} (none), {"rope_type": "linear", "factor": f} (positions / f),
    or {"rope_type": "llama3", "factor", "low_freq_factor", "high_freq_factor",
    "original_max_position_embeddings"} (HF transformers `_compute_llama3_parameters`): wavelengths
    2π/inv_freq shorter than original_max / high_freq_factor keep their frequency, longer than
    original_max / low_freq_factor divide it by factor, and those in between interpolate with
    smooth = (original_max / wavelength − low_freq_factor) / (high_freq_factor − low_freq_factor).
    HF's older key "type" is accepted for "rope_type".
    """
    if not (isinstance(rotary_dim, (int, np.integer)) and rotary_dim >= 2 and rotary_dim % 2 == 0):
        raise ValueError(f"rotary_dim {rotary_dim!r} must be a positive even integer (channels rotate in pairs)")
    inv_freq = 1.0 / theta ** (np.arange(0, rotary_dim, 2, dtype=np.float64) / rotary_dim)  # [R/2]
    if scaling is None:
        return inv_freq
    rope_type = scaling.get("rope_type", scaling.get("type", "default"))
    if rope_type == "default":
        return inv_freq
    if rope_type == "linear":
        return inv_freq / float(scaling["factor"])
    if rope_type != "llama3":
        raise ValueError(f"rope_scaling type {rope_type!r} is not supported; use 'llama3', 'linear' or None")
    missing = [key for key in LLAMA3_KEYS if key not in scaling]
    if missing:
        raise ValueError(f"llama3 rope_scaling is missing {', '.join(missing)}; it needs all of {LLAMA3_KEYS}")
    factor, low, high, old_len = (float(scaling[key]) for key in LLAMA3_KEYS)
    if not high > low:
        raise ValueError(f"llama3 rope_scaling needs high_freq_factor > low_freq_factor, got {high} <= {low}")
    wavelen = 2 * np.pi / inv_freq  # [R/2]
    smooth = (old_len / wavelen - low) / (high - low)
    interpolated = (1 - smooth) * inv_freq / factor + smooth * inv_freq
    return np.where(
        wavelen < old_len / high, inv_freq, np.where(wavelen > old_len / low, inv_freq / factor, interpolated)
    )


def rope_cos_sin(
    positions: np.ndarray, D: int, theta: float = 10000.0, scaling: Mapping[str, Any] | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """cos, sin [T, D // 2] float64 of angle positions[t]·inv_freq[i] for rotary dim D (see
    `rope_inv_freq` for theta and scaling). positions: [T] integers."""
    positions = np.asarray(positions)
    if positions.ndim != 1 or positions.dtype.kind not in "iu":
        raise ValueError(f"positions must be a 1-D integer array [T], got {positions.dtype} {positions.shape}")
    angles = positions.astype(np.float64)[:, None] * rope_inv_freq(D, theta, scaling)[None, :]  # [T, D/2]
    return np.cos(angles), np.sin(angles)


def rope_pairs(rotary_dim: int, style: str) -> tuple[np.ndarray, np.ndarray]:
    """Channel pairs (first [R/2], second [R/2]) that frequency i rotates together: neox (i, i + R/2),
    interleaved (2i, 2i + 1)."""
    if style not in ROPE_STYLES:
        raise ValueError(f"rope style {style!r} is not one of {ROPE_STYLES} (neox: rotate halves, interleaved: GPT-J)")
    if not (isinstance(rotary_dim, (int, np.integer)) and rotary_dim >= 2 and rotary_dim % 2 == 0):
        raise ValueError(f"rotary_dim {rotary_dim!r} must be a positive even integer (channels rotate in pairs)")
    i = np.arange(rotary_dim // 2)
    return (i, i + rotary_dim // 2) if style == "neox" else (2 * i, 2 * i + 1)


def apply_rope(
    x: np.ndarray,
    positions: np.ndarray,
    style: str = "neox",
    theta: float = 10000.0,
    scaling: Mapping[str, Any] | None = None,
    rotary_dim: int | None = None,
) -> np.ndarray:
    """Rotate x [T, H, D] (queries or keys) by RoPE at positions [T]; returns [T, H, D] float64.

    style "neox" or "interleaved" picks the channel pairs (`rope_pairs`); rotary_dim (default D, even,
    <= D) rotates only the first rotary_dim channels. theta and scaling as in `rope_inv_freq`.
    """
    x = np.asarray(x, dtype=np.float64)
    if x.ndim != 3:
        raise ValueError(f"x has shape {x.shape}; expected [T, H, D]")
    rd = x.shape[2] if rotary_dim is None else rotary_dim
    if not 0 < rd <= x.shape[2]:
        raise ValueError(f"rotary_dim {rd} must be in 1..D = {x.shape[2]}")
    if len(positions) != x.shape[0]:
        raise ValueError(f"positions has {len(positions)} entries for {x.shape[0]} tokens; pass one per token")
    first, second = rope_pairs(rd, style)
    cos, sin = rope_cos_sin(positions, rd, theta, scaling)  # cos, sin: [T, R/2]
    cos, sin = cos[:, None, :], sin[:, None, :]  # [T, 1, R/2], broadcast over heads
    a, b = x[..., first], x[..., second]  # a, b: [T, H, R/2]
    out = x.copy()
    out[..., first] = a * cos - b * sin
    out[..., second] = b * cos + a * sin
    return out
