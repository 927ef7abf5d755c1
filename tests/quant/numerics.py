"""Shared oracles and data strategies for the quantization tests."""

from __future__ import annotations

import numpy as np
from hypothesis import strategies as st

EPS32 = float(np.finfo(np.float32).eps) / 2  # unit roundoff 2^-24

KINDS = ("normal", "uniform", "outliers", "offset", "constant", "zeros", "tiny", "huge")


def rel_err(out: np.ndarray, ref: np.ndarray) -> float:
    """‖out − ref‖ / ‖ref‖ in float64; NaN or inf anywhere never passes (returns inf)."""
    out = np.asarray(out, dtype=np.float64)
    ref = np.asarray(ref, dtype=np.float64)
    if not (np.all(np.isfinite(out)) and np.all(np.isfinite(ref))):
        return float("inf")
    den = np.linalg.norm(ref)
    num = np.linalg.norm(out - ref)
    return float(num / den) if den > 0 else (0.0 if num == 0 else float("inf"))


def sample(rng: np.random.Generator, shape: tuple[int, ...], kind: str) -> np.ndarray:
    """A float32 tensor of `shape` drawn from one of KINDS (rows are the last axis)."""
    if kind == "normal":
        x = rng.standard_normal(shape)
    elif kind == "uniform":
        x = rng.uniform(-1, 1, shape)
    elif kind == "outliers":  # LLM-like: mostly small, a few channels 50-100x larger
        x = rng.standard_normal(shape) * 0.02
        mask = rng.random(shape) < 0.01
        x[mask] *= rng.uniform(50, 100, int(mask.sum()))
    elif kind == "offset":  # rows that do not straddle 0
        x = rng.uniform(0, 1, shape) + rng.uniform(-20, 20, (*shape[:-1], 1))
    elif kind == "constant":
        x = np.broadcast_to(rng.uniform(-5, 5, (*shape[:-1], 1)), shape).copy()
    elif kind == "zeros":
        x = np.zeros(shape)
    elif kind == "tiny":  # scales underflow fp16
        x = rng.standard_normal(shape) * 1e-9
    elif kind == "huge":
        x = rng.standard_normal(shape) * 1e5
    else:
        raise ValueError(kind)
    return x.astype(np.float32)


@st.composite
def tensors(draw: st.DrawFn, shape: tuple[int, ...], kinds: tuple[str, ...] = KINDS) -> np.ndarray:
    seed = draw(st.integers(0, 2**32 - 1))
    kind = draw(st.sampled_from(kinds))
    return sample(np.random.default_rng(seed), shape, kind)


bit_widths = st.integers(1, 8)
signedness = st.booleans()
