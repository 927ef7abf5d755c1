"""Random small Llama-family architectures and recipes for the graph tests (hypothesis strategies)."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
from hypothesis import strategies as st

from lowbit.config.spec import LinearSpec
from lowbit.graph import OpGraph
from lowbit.models.arch import ArchConfig

# group 16 divides every in_features below (hidden 32/64, intermediate 32/48/64, q_size = heads·16)
INT4 = LinearSpec("rtn", "int4", 16)
INT8 = LinearSpec("rtn", "int8", 16)
UINT4_ZP = LinearSpec("awq", "uint4", 16, "post")
W4A8_GROUP = LinearSpec("qoq", "uint4", 16, "post", "w4a8_group")
W4A8_CHANNEL = LinearSpec("qoq", "uint4", -1, "post", "w4a8_channel")
SPECS: tuple[LinearSpec | None, ...] = (None, INT4, INT8, UINT4_ZP, W4A8_GROUP, W4A8_CHANNEL)
ROLES = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj", "lm_head")

Resolve = Callable[[str], "LinearSpec | None"]


@st.composite
def archs(draw: st.DrawFn) -> ArchConfig:
    kv = draw(st.integers(1, 2))
    ratio = draw(st.sampled_from((1, 2, 3)))
    family = draw(st.sampled_from(("llama", "mistral", "qwen2")))
    bias = draw(st.booleans())
    scaling = draw(
        st.sampled_from(
            (
                (),
                (("factor", 2.0), ("rope_type", "linear")),
                (
                    ("factor", 8.0),
                    ("high_freq_factor", 4.0),
                    ("low_freq_factor", 1.0),
                    ("original_max_position_embeddings", 16),
                    ("rope_type", "llama3"),
                ),
            )
        )
    )
    layers = draw(st.integers(1, 3))
    window = None if family == "llama" else draw(st.sampled_from((None, 2, 3)))
    window_from = draw(st.integers(0, layers)) if family == "qwen2" and window else 0
    return ArchConfig(
        model_type=family,
        vocab_size=draw(st.sampled_from((40, 64))),
        hidden_size=draw(st.sampled_from((32, 64))),
        intermediate_size=draw(st.sampled_from((32, 48, 64))),
        num_layers=layers,
        num_heads=kv * ratio,
        num_kv_heads=kv,
        head_dim=16,
        rms_norm_eps=draw(st.sampled_from((1e-6, 1e-5))),
        rope_theta=draw(st.sampled_from((10000.0, 500000.0))),
        rope_scaling=scaling,
        tie_word_embeddings=draw(st.booleans()),
        qkv_bias=family == "qwen2" or bias,
        o_bias=family != "qwen2" and bias,
        mlp_bias=draw(st.booleans()),
        sliding_window=window,
        window_from_layer=window_from,
    )


def role(module: str) -> str:
    return module.rsplit(".", 1)[-1]


@st.composite
def recipes(draw: st.DrawFn) -> Resolve:
    """A recipe: uniform (one spec everywhere, lm_head dense or not) or one spec per role."""
    if draw(st.booleans()):
        spec = draw(st.sampled_from(SPECS))
        head = draw(st.sampled_from((None, spec)))
        return uniform(spec, head)
    table = {r: draw(st.sampled_from(SPECS)) for r in ROLES}
    return per_role(table)


def uniform(spec: LinearSpec | None, head: LinearSpec | None = None) -> Resolve:
    def resolve(module: str) -> LinearSpec | None:
        return head if module == "lm_head" else spec

    resolve.__qualname__ = f"uniform({spec}, lm_head={head})"
    return resolve


def per_role(table: dict[str, LinearSpec | None]) -> Resolve:
    def resolve(module: str) -> LinearSpec | None:
        return table[role(module)]

    resolve.__qualname__ = f"per_role({table})"
    return resolve


def random_params(arch: ArchConfig, seed: int = 0) -> dict[str, np.ndarray]:
    """Float64 weights for every HF param of `arch`: matrices ~ N(0, 1/in), norms ~ 1 + N(0, 0.1²)."""
    rng = np.random.default_rng(seed)
    out = {}
    for name, shape in arch.param_shapes().items():
        if len(shape) == 2:
            out[name] = rng.standard_normal(shape) / np.sqrt(shape[1])
        else:
            out[name] = (1.0 if "norm" in name else 0.0) + 0.1 * rng.standard_normal(shape)
    return out


def referenced_params(g: OpGraph) -> set[str]:
    """HF param names the graph reads, fused params expanded to their sources."""
    fused = g.meta.get("fused_params", {})
    names: set[str] = set()
    for n in g.nodes_in_order():
        for key in ("weight", "bias"):
            p = n.attr(key)
            if p is not None:
                names.update(fused.get(p, (p,)))
    return names
