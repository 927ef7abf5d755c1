"""Rotation of a Llama residual stream by an orthogonal Q (QoQ / QuaRot / SpinQuant): spreads activation
outliers over all channels, so per-token activation and per-group weight quantization lose less.

Convention: residual vectors are rows, the rotated stream is h' = h Q with Q [H, H] orthogonal (Q Qᵀ = I).
    reader linear  y = x Wᵀ       (q/k/v, gate/up, lm_head)  W' = W Q          `rotate_input`
    writer linear  h += z Wᵀ + b  (o_proj, down_proj)         W' = Qᵀ W, b' = Qᵀ b  `rotate_output`
    embedding      E[V, H]                                    E' = E Q          `rotate_embedding`
    RMSNorm        norm(h Q) = norm(h) Q only without its weight g (rms(hQ) = rms(h), but diag(g) does not
                   commute with Q): fold g into the readers first, W ← W diag(g), g ← 1 (`fold_rmsnorm`)
`rotate_model` does all of it for a whole model. Tied embeddings must be untied: embed_tokens becomes E Q
while lm_head becomes (E diag(g_final)) Q; the returned dict always holds `lm_head.weight` and the caller
must treat the model as untied (`tie_word_embeddings = False`). Attention is untouched: q, k, v are the
same vectors as before the rotation (only the residual stream is rotated), so RoPE, GQA and KV quantization
see identical inputs. Everything is float64.

Hadamard matrices (entries ±1, H Hᵀ = n I): Sylvester for n = 2^a; otherwise n = m · 2^a with a Paley core
of order m (Paley I: m = q + 1, q prime ≡ 3 mod 4; Paley II: m = 2(q + 1), q prime ≡ 1 mod 4) and
H = H_m ⊗ H_{2^a}. This covers the hidden sizes of Llama/Mistral/Qwen2 (2048, 3072 = 12·256, 4096,
5120 = 20·256, 896 = 28·32, 3584 = 28·128, 8192, 11008 = 5504·2, ...); other n (odd n, 6, 92, ...)
raise. Cores up to order 1024 are checked when built; larger ones rest on Paley's theorem.
`random_orthogonal_hadamard` falls back to a block-diagonal of the largest constructible Hadamard order
dividing n (it then mixes channels only within blocks).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from lowbit.models.arch import ArchConfig

MAX_VERIFIED_CORE = 1024  # Paley cores are checked (H Hᵀ = m I) up to this order; all practical ones are


def _is_prime(q: int) -> bool:
    if q < 2:
        return False
    f = 2
    while f * f <= q:
        if q % f == 0:
            return False
        f += 1
    return True


def _jacobsthal(q: int) -> np.ndarray:
    # Q[i, j] = χ(j − i) with χ the quadratic character mod a prime q (χ(0) = 0)
    residues = np.zeros(q, dtype=np.int64)
    residues[np.unique(np.arange(1, q) ** 2 % q)] = 1
    chi = np.where(residues == 1, 1, -1)
    chi[0] = 0
    idx = (np.arange(q)[None, :] - np.arange(q)[:, None]) % q
    return chi[idx]


def _paley_core(m: int) -> np.ndarray | None:
    """A Hadamard matrix of order m from Paley I or II on a prime q, or None."""
    if m % 4:
        return None
    q = m - 1
    if _is_prime(q) and q % 4 == 3:  # Paley I: H = I + [[0, 1ᵀ], [−1, Q]]
        s = np.zeros((m, m), dtype=np.int64)
        s[0, 1:], s[1:, 0], s[1:, 1:] = 1, -1, _jacobsthal(q)
        return np.eye(m, dtype=np.int64) + s
    q = m // 2 - 1
    if _is_prime(q) and q % 4 == 1:  # Paley II: C ⊗ [[1, −1], [−1, −1]] + I ⊗ [[1, 1], [1, −1]]
        c = np.zeros((q + 1, q + 1), dtype=np.int64)
        c[0, 1:], c[1:, 0], c[1:, 1:] = 1, 1, _jacobsthal(q)
        return np.kron(c, [[1, -1], [-1, -1]]) + np.kron(np.eye(q + 1, dtype=np.int64), [[1, 1], [1, -1]])
    return None


def _sylvester(n: int) -> np.ndarray:
    h = np.ones((1, 1), dtype=np.int8)
    while h.shape[0] < n:
        h = np.block([[h, h], [h, -h]])
    return h


def _factor(n: int) -> tuple[np.ndarray, int] | None:
    # n = m · 2^b with a Hadamard core of order m (1 or Paley); the largest power of two first
    a = (n & -n).bit_length() - 1
    for b in range(a, -1, -1):
        m = n >> b
        core = np.ones((1, 1), dtype=np.int64) if m == 1 else _paley_core(m)
        if core is not None:
            if 1 < m <= MAX_VERIFIED_CORE:
                assert np.array_equal(core @ core.T, m * np.eye(m, dtype=np.int64)), f"Paley core {m} is wrong"
            return core, b
    return None


def hadamard(n: int) -> np.ndarray:
    """A Hadamard matrix of order n: entries ±1 (float64), H Hᵀ = n I (see the module docstring for the
    orders covered). Raises ValueError naming n and the supported forms otherwise."""
    if not isinstance(n, (int, np.integer)) or isinstance(n, bool) or n < 1:
        raise ValueError(f"n {n!r} must be a positive int")
    f = _factor(int(n))
    if f is None:
        raise ValueError(
            f"no Hadamard matrix of order {n} is constructed here; supported: 1, 2^a, and m·2^a with m = q+1 "
            f"(q prime ≡ 3 mod 4) or m = 2(q+1) (q prime ≡ 1 mod 4); random_orthogonal_hadamard({n}) falls "
            f"back to a block-diagonal rotation"
        )
    core, b = f
    return np.kron(core.astype(np.int8), _sylvester(1 << b)).astype(np.float64)


def hadamard_block_size(n: int) -> int:
    """The largest divisor d of n with a constructible Hadamard matrix (n itself when `hadamard(n)` works)."""
    for d in sorted((d for d in range(1, n + 1) if n % d == 0), reverse=True):
        if _factor(d) is not None:
            return d
    return 1


def random_orthogonal_hadamard(n: int, seed: int = 0) -> np.ndarray:
    """Q = diag(±1 random) · H / √n [n, n] float64, orthogonal (Q Qᵀ = I). When no Hadamard of order n is
    constructible, H is block-diagonal with blocks of the largest constructible order d dividing n."""
    if not isinstance(n, (int, np.integer)) or isinstance(n, bool) or n < 1:
        raise ValueError(f"n {n!r} must be a positive int")
    d = hadamard_block_size(int(n))
    h = hadamard(d) / np.sqrt(d)
    if d != n:
        h = np.kron(np.eye(n // d), h)
    signs = np.random.default_rng(seed).choice([-1.0, 1.0], size=n)
    return signs[:, None] * h


def _matrix(a: Any, name: str) -> np.ndarray:
    a = np.asarray(a, dtype=np.float64)
    if a.ndim != 2:
        raise ValueError(f"{name} has shape {a.shape}; expected a 2-D array")
    return a


def _check_q(q: Any, h: int, name: str) -> np.ndarray:
    q = _matrix(q, "Q")
    if q.shape != (h, h):
        raise ValueError(f"Q is {q.shape} but {name} has {h} residual channels; pass Q [{h}, {h}]")
    return q


def rotate_input(w: Any, q: Any) -> np.ndarray:
    """W Q for a linear that reads the rotated stream: w[N, H] -> [N, H] (x Q)(W Q)ᵀ = x Wᵀ."""
    w = _matrix(w, "w")
    return w @ _check_q(q, w.shape[1], "w (in_features)")


def rotate_output(w: Any, q: Any, bias: Any = None) -> tuple[np.ndarray, np.ndarray | None]:
    """Qᵀ W (and Qᵀ b) for a linear that writes the residual stream: w[H, K] -> [H, K]; bias [H]."""
    w = _matrix(w, "w")
    q = _check_q(q, w.shape[0], "w (out_features)")
    b = None if bias is None else q.T @ np.asarray(bias, dtype=np.float64)
    return q.T @ w, b


def rotate_embedding(e: Any, q: Any) -> np.ndarray:
    """E Q: every embedding row [V, H] is a residual vector."""
    e = _matrix(e, "embedding")
    return e @ _check_q(q, e.shape[1], "the embedding")


def fold_rmsnorm(norm_w: Any, linears: Sequence[Any]) -> tuple[np.ndarray, list[np.ndarray]]:
    """Fold an RMSNorm weight g[H] into the linears reading the norm (columns W[:, k] · g[k]).
    Returns (ones [H], the folded linears); the norm's outputs times each W are unchanged."""
    g = np.asarray(norm_w, dtype=np.float64)
    if g.ndim != 1:
        raise ValueError(f"norm_w has shape {g.shape}; expected [hidden_size]")
    out = []
    for i, w in enumerate(linears):
        w = _matrix(w, f"linears[{i}]")
        if w.shape[1] != g.shape[0]:
            raise ValueError(f"linears[{i}] has shape {w.shape}; its in_features must be {g.shape[0]} (the norm's)")
        out.append(w * g[None, :])
    return np.ones_like(g), out


def rotate_model(weights: Mapping[str, Any], arch: ArchConfig, seed: int = 0, q: Any = None) -> dict[str, np.ndarray]:
    """Rotate the residual stream of a whole Llama/Mistral/Qwen2 model (HF parameter names, float64 out).

    Folds every RMSNorm weight into its readers (norms become ones), then rotates: embed_tokens E Q;
    q/k/v/gate/up and lm_head W Q; o_proj and down_proj (and their biases) Qᵀ W. Q defaults to
    `random_orthogonal_hadamard(hidden_size, seed)`. The result always holds an untied `lm_head.weight`
    (built from embed_tokens when the model ties them or the dict has none): treat the model as untied.
    Keys other than these pass through unchanged (as float64 arrays).
    """
    hdim = arch.hidden_size
    qm = random_orthogonal_hadamard(hdim, seed) if q is None else _check_q(q, hdim, "the model")
    if q is not None and not np.allclose(qm @ qm.T, np.eye(hdim), atol=1e-10):
        raise ValueError("Q is not orthogonal (Q Qᵀ != I); pass an orthogonal matrix")

    def get(name: str) -> np.ndarray:
        if name not in weights:
            raise ValueError(f"weights has no {name!r}; rotate_model needs every parameter of arch.param_shapes()")
        return np.asarray(weights[name], dtype=np.float64)

    out = {name: np.asarray(v, dtype=np.float64) for name, v in weights.items()}
    out["model.embed_tokens.weight"] = rotate_embedding(get("model.embed_tokens.weight"), qm)
    for layer in range(arch.num_layers):
        p = f"model.layers.{layer}"
        for norm, readers, writer in (
            ("input_layernorm", ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"), "self_attn.o_proj"),
            ("post_attention_layernorm", ("mlp.gate_proj", "mlp.up_proj"), "mlp.down_proj"),
        ):
            ones, folded = fold_rmsnorm(get(f"{p}.{norm}.weight"), [get(f"{p}.{r}.weight") for r in readers])
            out[f"{p}.{norm}.weight"] = ones
            for r, w in zip(readers, folded, strict=True):
                out[f"{p}.{r}.weight"] = rotate_input(w, qm)
            bias_name = f"{p}.{writer}.bias"
            w, b = rotate_output(get(f"{p}.{writer}.weight"), qm, out.get(bias_name))
            out[f"{p}.{writer}.weight"] = w
            if b is not None:
                out[bias_name] = b
    head = weights.get("lm_head.weight")
    if arch.tie_word_embeddings or head is None:
        head = get("model.embed_tokens.weight")  # untie: the head gets the final norm, the embedding does not
    ones, (head_f,) = fold_rmsnorm(get("model.norm.weight"), [head])
    out["model.norm.weight"] = ones
    out["lm_head.weight"] = rotate_input(head_f, qm)
    return out


__all__ = [
    "fold_rmsnorm",
    "hadamard",
    "hadamard_block_size",
    "random_orthogonal_hadamard",
    "rotate_embedding",
    "rotate_input",
    "rotate_model",
    "rotate_output",
]
