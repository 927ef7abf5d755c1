"""Residual-stream rotation: Hadamard constructions, orthogonality, and models whose fp64 outputs are unchanged."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from lowbit.models.arch import ArchConfig
from lowbit.quant.rotation import (
    fold_rmsnorm,
    hadamard,
    hadamard_block_size,
    random_orthogonal_hadamard,
    rotate_embedding,
    rotate_input,
    rotate_model,
    rotate_output,
)
from lowbit.reference.norm import rms_norm

from .numerics import rel_err

SYLVESTER = [1, 2, 4, 8, 64]
PALEY_I = [12, 20, 24, 44, 48, 60]  # q + 1, q prime ≡ 3 mod 4
PALEY_II = [28, 36, 76]  # 2(q + 1), q prime ≡ 1 mod 4
KRONECKER = [40, 96, 112, 896, 1536]  # Paley core ⊗ 2^a (896 = 28·32: Qwen2-0.5B's hidden size)


@pytest.mark.parametrize("n", SYLVESTER + PALEY_I + PALEY_II + KRONECKER)
def test_hadamard_is_hadamard(n: int) -> None:
    h = hadamard(n)
    assert h.shape == (n, n)
    assert set(np.unique(h)) <= {-1.0, 1.0}
    np.testing.assert_array_equal(h @ h.T, n * np.eye(n))


@pytest.mark.parametrize("n", [3, 6, 7, 92, 100])
def test_hadamard_refuses_unsupported_orders(n: int) -> None:
    with pytest.raises(ValueError, match=f"order {n} .*supported.*block-diagonal"):
        hadamard(n)


@pytest.mark.parametrize("n", [0, -4, 2.0, True])
def test_hadamard_refuses_non_positive_ints(n: object) -> None:
    with pytest.raises(ValueError, match="positive int"):
        hadamard(n)  # type: ignore[arg-type]


@pytest.mark.parametrize("n", [16, 20, 28, 96, 7, 92, 100])
def test_random_orthogonal_hadamard_is_orthogonal(n: int) -> None:
    q = random_orthogonal_hadamard(n, seed=3)
    np.testing.assert_allclose(q @ q.T, np.eye(n), atol=1e-13)
    np.testing.assert_allclose(q.T @ q, np.eye(n), atol=1e-13)
    d = hadamard_block_size(n)
    assert n % d == 0 and d == {7: 1, 92: 4, 100: 20}.get(n, n)
    # every entry of a block has magnitude 1/√d (the fallback mixes within blocks only)
    nz = np.abs(q[np.abs(q) > 0])
    np.testing.assert_allclose(nz, 1 / np.sqrt(d))
    assert np.count_nonzero(q) == n * d
    assert not np.array_equal(q, random_orthogonal_hadamard(n, seed=4)) or n == 1


def test_rotation_spreads_an_outlier_channel() -> None:
    rng = np.random.default_rng(0)
    x = rng.standard_normal((64, 128))
    x[:, 5] *= 50
    xr = x @ random_orthogonal_hadamard(128, 0)
    ratio = lambda a: np.abs(a).max() / np.sqrt(np.mean(a * a))  # noqa: E731
    assert ratio(xr) < ratio(x) / 4
    np.testing.assert_allclose(np.linalg.norm(xr, axis=1), np.linalg.norm(x, axis=1))


@settings(max_examples=12)
@given(st.integers(0, 2**16), st.sampled_from([8, 12, 20, 24, 7]), st.booleans())
def test_rotate_linear_laws(seed: int, h: int, bias: bool) -> None:
    # reader: (x Q)(W Q)ᵀ = x Wᵀ; writer: (z Wᵀ + b) Q = z (Qᵀ W)ᵀ + Qᵀ b; embedding rows rotate
    rng = np.random.default_rng(seed)
    q = random_orthogonal_hadamard(h, seed)
    x, w_in = rng.standard_normal((5, h)), rng.standard_normal((9, h))
    assert rel_err((x @ q) @ rotate_input(w_in, q).T, x @ w_in.T) < 1e-13
    z, w_out = rng.standard_normal((5, 6)), rng.standard_normal((h, 6))
    b = rng.standard_normal(h) if bias else None
    w2, b2 = rotate_output(w_out, q, b)
    out = z @ w_out.T + (0 if b is None else b)
    out2 = z @ w2.T + (0 if b2 is None else b2)
    assert rel_err(out2, out @ q) < 1e-13
    assert (b2 is None) == (b is None)
    e = rng.standard_normal((11, h))
    assert rel_err(rotate_embedding(e, q), e @ q) == 0


@settings(max_examples=10)
@given(st.integers(0, 2**16), st.sampled_from([16, 20, 24]))
def test_folded_and_rotated_norm_block_is_unchanged(seed: int, h: int) -> None:
    # a tiny float64 block: residual h → RMSNorm(g) → q/k/v-like readers; the rotated stream h Q → RMSNorm(1)
    rng = np.random.default_rng(seed)
    hidden = rng.standard_normal((7, h)) * rng.uniform(0.1, 10, h)
    g = rng.uniform(0.2, 2.0, h)
    readers = [rng.standard_normal((n, h)) for n in (h, h // 2, 3)]
    ref = [rms_norm(hidden, g) @ w.T for w in readers]
    ones, folded = fold_rmsnorm(g, readers)
    np.testing.assert_array_equal(ones, np.ones(h))
    for r, w in zip(ref, folded, strict=True):
        assert rel_err(rms_norm(hidden, ones) @ w.T, r) < 1e-13
    q = random_orthogonal_hadamard(h, seed)
    for r, w in zip(ref, folded, strict=True):
        assert rel_err(rms_norm(hidden @ q, ones) @ rotate_input(w, q).T, r) < 1e-12
    # the law needs the fold: rotating with the norm weight still in place breaks it
    bad = rms_norm(hidden @ q, g) @ rotate_input(readers[0], q).T
    assert rel_err(bad, ref[0]) > 1e-3


@pytest.mark.parametrize("seed", [0, 1])
def test_reorder_is_an_equivalence(seed: int) -> None:
    # permuting K of x and W (a permutation is an orthogonal Q) leaves x Wᵀ unchanged
    rng = np.random.default_rng(seed)
    x, w = rng.standard_normal((6, 32)), rng.standard_normal((10, 32))
    perm = rng.permutation(32)
    p = np.eye(32)[:, perm]  # x P = x[:, perm]
    np.testing.assert_array_equal(x @ p, x[:, perm])
    np.testing.assert_array_equal(rotate_input(w, p), w[:, perm])
    assert rel_err(x[:, perm] @ w[:, perm].T, x @ w.T) < 1e-14


# -- whole models, through the float64 reference forward (itself checked against HF in tests/models) ---------
def _arch(**kw: object) -> ArchConfig:
    base = dict(
        model_type="llama",
        vocab_size=50,
        hidden_size=24,
        intermediate_size=40,
        num_layers=2,
        num_heads=4,
        num_kv_heads=2,
        head_dim=6,
    )
    return ArchConfig(**{**base, **kw})  # type: ignore[arg-type]


def _weights(arch: ArchConfig, seed: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    out = {}
    for name, shape in arch.param_shapes().items():
        if "norm" in name:
            out[name] = rng.uniform(0.5, 1.5, shape)  # non-trivial, so folding matters
        elif len(shape) == 1:
            out[name] = rng.normal(0, 0.1, shape)
        elif "embed" in name:
            out[name] = rng.normal(0, 1, shape)
        else:
            out[name] = rng.normal(0, shape[1] ** -0.5, shape)
    return out


ARCHS = {
    "llama_gqa": _arch(),
    "llama_bias": _arch(o_bias=True, qkv_bias=True, mlp_bias=True),
    "llama_tied": _arch(tie_word_embeddings=True),
    "qwen2_tied_bias": _arch(model_type="qwen2", qkv_bias=True, tie_word_embeddings=True, hidden_size=20, head_dim=4),
    "odd_hidden_fallback": _arch(hidden_size=18, head_dim=4),  # no Hadamard of 18: block-diagonal rotation
}


@pytest.mark.parametrize("case", list(ARCHS))
def test_rotate_model_leaves_logits_unchanged(case: str) -> None:
    torch = pytest.importorskip("torch")
    from lowbit.models.reference import reference_logits

    arch = ARCHS[case]
    weights = _weights(arch, seed=len(case))
    ids = np.random.default_rng(0).integers(0, arch.vocab_size, (2, 9))
    ref = reference_logits(arch, weights, ids, dtype=torch.float64)
    rotated = rotate_model(weights, arch, seed=5)
    untied = dataclasses.replace(arch, tie_word_embeddings=False)
    assert "lm_head.weight" in rotated
    for name in ("model.norm.weight", "model.layers.1.input_layernorm.weight"):
        np.testing.assert_array_equal(rotated[name], np.ones(arch.hidden_size))
    out = reference_logits(untied, rotated, ids, dtype=torch.float64)
    assert rel_err(out, ref) < 1e-12
    # the rotation did something: weights and the residual stream's embedding changed
    name = "model.layers.0.self_attn.q_proj.weight"
    assert rel_err(rotated[name], weights[name]) > 0.5
    # and the test can fail: keeping the original norm weights breaks the equivalence
    broken = {
        **rotated,
        "model.layers.0.post_attention_layernorm.weight": weights["model.layers.0.post_attention_layernorm.weight"],
    }
    assert rel_err(reference_logits(untied, broken, ids, dtype=torch.float64), ref) > 1e-3


def test_rotate_model_input_untouched_and_errors() -> None:
    arch = ARCHS["llama_gqa"]
    weights = _weights(arch, 0)
    before = {k: v.copy() for k, v in weights.items()}
    rotate_model(weights, arch, seed=0)
    for k in weights:
        np.testing.assert_array_equal(weights[k], before[k])
    missing = {k: v for k, v in weights.items() if "layers.1.mlp.up_proj" not in k}
    with pytest.raises(ValueError, match=r"model\.layers\.1\.mlp\.up_proj\.weight"):
        rotate_model(missing, arch)
    with pytest.raises(ValueError, match="not orthogonal"):
        rotate_model(weights, arch, q=np.ones((24, 24)))
    with pytest.raises(ValueError, match=r"Q is \(8, 8\).*24"):
        rotate_model(weights, arch, q=np.eye(8))
    with pytest.raises(ValueError, match="in_features must be 24"):
        fold_rmsnorm(np.ones(24), [np.ones((3, 8))])
