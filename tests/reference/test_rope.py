"""RoPE: a complex-number oracle, norm and relative-position laws, style permutation, llama3 scaling."""

from __future__ import annotations

import cmath
import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from lowbit.reference.rope import ROPE_STYLES, apply_rope, rope_cos_sin, rope_inv_freq, rope_pairs

LLAMA31 = {
    "rope_type": "llama3",
    "factor": 8.0,
    "low_freq_factor": 1.0,
    "high_freq_factor": 4.0,
    "original_max_position_embeddings": 8192,
}


def complex_rope(x: np.ndarray, positions: np.ndarray, style: str, theta: float, rd: int) -> np.ndarray:
    """Oracle: pair i as the complex number a + ib, times e^{i·m·θ_i}, one token and head at a time."""
    out = x.astype(np.float64).copy()
    half = rd // 2
    for t, m in enumerate(positions):
        for h in range(x.shape[1]):
            for i in range(half):
                a, b = (i, i + half) if style == "neox" else (2 * i, 2 * i + 1)
                z = complex(x[t, h, a], x[t, h, b]) * cmath.rect(1.0, m * theta ** (-2 * i / rd))
                out[t, h, a], out[t, h, b] = z.real, z.imag
    return out


@settings(max_examples=20)
@given(
    style=st.sampled_from(ROPE_STYLES),
    d=st.sampled_from([2, 8, 16]),
    partial=st.booleans(),
    theta=st.sampled_from([10000.0, 500000.0]),
    seed=st.integers(0, 2**32 - 1),
)
def test_apply_rope_matches_complex_rotation(style: str, d: int, partial: bool, theta: float, seed: int) -> None:
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((5, 2, d))  # x: [T, H, D]
    positions = rng.integers(0, 4096, 5)
    rd = d // 2 if partial and d % 4 == 0 else d
    out = apply_rope(x, positions, style, theta, rotary_dim=rd)
    ref = complex_rope(x, positions, style, theta, rd)
    assert np.abs(out - ref).max() <= 1e-12 * np.abs(x).max()
    assert np.array_equal(out[..., rd:], x[..., rd:])  # partial rotary: the tail passes through
    # a rotation: per (token, head) norms are preserved
    assert np.allclose(np.linalg.norm(out, axis=-1), np.linalg.norm(x, axis=-1), rtol=1e-13, atol=0)


@settings(max_examples=15)
@given(
    style=st.sampled_from(ROPE_STYLES),
    m=st.integers(0, 2048),
    n=st.integers(0, 2048),
    shift=st.integers(-2048, 2048),
    seed=st.integers(0, 2**32 - 1),
)
def test_scores_depend_only_on_relative_position(style: str, m: int, n: int, shift: int, seed: int) -> None:
    """⟨R_m q, R_n k⟩ == ⟨R_{m+s} q, R_{n+s} k⟩ (with llama3 scaling too: it only changes frequencies)."""
    rng = np.random.default_rng(seed)
    q, k = rng.standard_normal((1, 1, 32)), rng.standard_normal((1, 1, 32))
    shift = max(shift, -min(m, n))  # keep positions >= 0
    for scaling in (None, LLAMA31):

        def score(a: int, b: int, scaling=scaling) -> float:
            qa = apply_rope(q, np.array([a]), style, scaling=scaling)
            kb = apply_rope(k, np.array([b]), style, scaling=scaling)
            return float(np.sum(qa * kb))

        assert math.isclose(score(m, n), score(m + shift, n + shift), rel_tol=1e-9, abs_tol=1e-9)


def test_neox_and_interleaved_differ_by_a_fixed_channel_permutation() -> None:
    """Interleaving the halves (0, D/2, 1, D/2+1, ...) turns neox pairs into adjacent GPT-J pairs."""
    rng = np.random.default_rng(0)
    d = 16
    x = rng.standard_normal((7, 3, d))
    positions = rng.integers(0, 1000, 7)
    perm = np.stack([np.arange(d // 2), np.arange(d // 2) + d // 2], axis=1).reshape(-1)  # [D]
    neox = apply_rope(x, positions, "neox")
    interleaved = apply_rope(x[..., perm], positions, "interleaved")
    assert np.array_equal(neox[..., perm], interleaved)
    first, second = rope_pairs(d, "neox")
    assert np.array_equal(perm[0::2], first) and np.array_equal(perm[1::2], second)


def test_position_zero_is_identity_and_cos_sin_shapes() -> None:
    x = np.random.default_rng(1).standard_normal((3, 2, 8))
    assert np.array_equal(apply_rope(x, np.zeros(3, np.int64)), x)
    cos, sin = rope_cos_sin(np.arange(5), 8)
    assert cos.shape == sin.shape == (5, 4) and np.allclose(cos**2 + sin**2, 1, rtol=0, atol=1e-15)


def hf_llama3_inv_freq(dim: int, base: float, rope_scaling: dict) -> np.ndarray:
    """A line-by-line transcription of HF transformers `_compute_llama3_parameters` (torch -> numpy)."""
    inv_freq = 1.0 / (base ** (np.arange(0, dim, 2).astype(np.float64) / dim))
    factor = rope_scaling["factor"]
    low_freq_factor = rope_scaling["low_freq_factor"]
    high_freq_factor = rope_scaling["high_freq_factor"]
    old_context_len = rope_scaling["original_max_position_embeddings"]
    low_freq_wavelen = old_context_len / low_freq_factor
    high_freq_wavelen = old_context_len / high_freq_factor
    wavelen = 2 * math.pi / inv_freq
    inv_freq_llama = np.where(wavelen > low_freq_wavelen, inv_freq / factor, inv_freq)
    smooth_factor = (old_context_len / wavelen - low_freq_factor) / (high_freq_factor - low_freq_factor)
    smoothed_inv_freq = (1 - smooth_factor) * inv_freq_llama / factor + smooth_factor * inv_freq_llama
    is_medium_freq = ~(wavelen < high_freq_wavelen) * ~(wavelen > low_freq_wavelen)
    return np.where(is_medium_freq, smoothed_inv_freq, inv_freq_llama)


@pytest.mark.parametrize(
    "dim, base, scaling",
    [
        (128, 500000.0, LLAMA31),
        (64, 500000.0, {**LLAMA31, "factor": 32.0, "original_max_position_embeddings": 8192}),  # Llama 3.2
        (128, 10000.0, {**LLAMA31, "low_freq_factor": 2.0, "high_freq_factor": 16.0}),
    ],
)
def test_llama3_scaling_matches_hf(dim: int, base: float, scaling: dict) -> None:
    ours = rope_inv_freq(dim, base, scaling)
    hf = hf_llama3_inv_freq(dim, base, scaling)
    assert np.allclose(ours, hf, rtol=1e-15, atol=0)
    plain = rope_inv_freq(dim, base)
    assert ours[0] == plain[0]  # the highest frequency is untouched
    assert math.isclose(ours[-1], plain[-1] / scaling["factor"], rel_tol=1e-15)  # the lowest divided by factor
    regimes = (ours == plain) | np.isclose(ours, plain / scaling["factor"], rtol=1e-15, atol=0)
    assert not regimes.all()  # some frequencies are interpolated in between


def test_scaling_types() -> None:
    plain = rope_inv_freq(16)
    assert np.array_equal(rope_inv_freq(16, scaling={"rope_type": "default"}), plain)
    assert np.array_equal(rope_inv_freq(16, scaling={"type": "linear", "factor": 4.0}), plain / 4)
    with pytest.raises(ValueError, match="rope_scaling type 'yarn' is not supported"):
        rope_inv_freq(16, scaling={"rope_type": "yarn"})
    with pytest.raises(ValueError, match="missing high_freq_factor"):
        rope_inv_freq(16, scaling={k: v for k, v in LLAMA31.items() if k != "high_freq_factor"})


def test_rope_errors() -> None:
    x = np.zeros((2, 1, 8))
    with pytest.raises(ValueError, match="rope style 'gptj' is not one of"):
        apply_rope(x, np.arange(2), "gptj")
    with pytest.raises(ValueError, match="rotary_dim 3 must be a positive even integer"):
        apply_rope(x, np.arange(2), rotary_dim=3)
    with pytest.raises(ValueError, match=r"rotary_dim 10 must be in 1\.\.D = 8"):
        apply_rope(x, np.arange(2), rotary_dim=10)
    with pytest.raises(ValueError, match="positions has 3 entries for 2 tokens"):
        apply_rope(x, np.arange(3))
    with pytest.raises(ValueError, match="positions must be a 1-D integer array"):
        rope_cos_sin(np.array([0.5]), 8)
