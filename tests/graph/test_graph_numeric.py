"""The fusions preserve meaning: the unfused graph and the fully optimized one give the same logits in the
float64 interpreter (lowbit.graph.interpret), for random architectures, recipes and ragged batches; and the
unfused graph itself computes what HF transformers' model computes (float64, the oracle)."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
from graph_cases import W4A8_GROUP, archs, random_params, recipes, uniform
from hypothesis import given, settings
from hypothesis import strategies as st

from lowbit.graph import PassContext, build_graph, optimize
from lowbit.graph.interpret import interpret, quantize_per_token
from lowbit.graph.passes import match_recipe
from lowbit.models.arch import ArchConfig
from lowbit.reference import prefill_attention, sequence_attention


def _rel(a: np.ndarray, b: np.ndarray) -> float:
    assert np.isfinite(a).all() and np.isfinite(b).all()
    return float(np.linalg.norm(a - b) / np.linalg.norm(b))


@settings(max_examples=10)
@given(archs(), recipes(), st.lists(st.integers(1, 6), min_size=1, max_size=3), st.integers(0, 2**16))
def test_optimized_graph_gives_the_unfused_logits(arch, resolve, seq_lens, seed):
    ctx = PassContext(arch, resolve)
    unfused = match_recipe(build_graph(arch), ctx)  # specs decide where activations are rounded to int8
    optimized = optimize(build_graph(arch), ctx)
    params = random_params(arch, seed)
    ids = np.random.default_rng(seed).integers(0, arch.vocab_size, sum(seq_lens))
    want = interpret(unfused, params, ids, seq_lens=seq_lens)["logits"]
    got = interpret(optimized, params, ids, seq_lens=seq_lens)["logits"]
    assert want.shape == (len(seq_lens), arch.vocab_size)
    assert _rel(got, want) <= 1e-12


def test_a_broken_fusion_is_caught():
    # the law above can fail: swap the halves a fused gate_up feeds silu_mul and the logits move
    arch = ArchConfig("llama", 64, 32, 32, 1, 2, 1, 16)
    ctx = PassContext(arch)
    g = optimize(build_graph(arch), ctx)
    fused = g.node("model.layers.0.mlp.gate_up_proj")
    meta = dict(g.meta)
    fp = dict(meta["fused_params"])
    fp[fused.attr("weight")] = tuple(reversed(fp[fused.attr("weight")]))
    broken = g.with_meta(fused_params=fp)
    params = random_params(arch, 1)
    ids = np.arange(5)
    assert _rel(interpret(broken, params, ids)["logits"], interpret(g, params, ids)["logits"]) > 1e-3


def test_act_quant_is_emulated_and_matters():
    arch = ArchConfig("llama", 64, 32, 32, 1, 2, 1, 16)
    ctx = PassContext(arch, uniform(W4A8_GROUP))
    params, ids = random_params(arch, 2), np.arange(7)
    plain = interpret(build_graph(arch), params, ids)["logits"]  # no recipe: no rounding anywhere
    unfused = match_recipe(build_graph(arch), ctx)
    assert _rel(interpret(unfused, params, ids, act_quant=False)["logits"], plain) == 0.0
    rounded = interpret(optimize(build_graph(arch), ctx), params, ids)["logits"]
    assert 1e-4 < _rel(rounded, plain) < 0.2  # int8 activations: visible, small


@settings(max_examples=10)
@given(
    st.lists(st.integers(1, 7), min_size=1, max_size=3),
    st.sampled_from([(2, 1), (4, 2), (3, 3)]),
    st.integers(0, 2**31),
)
def test_interpreter_attention_is_the_reference_prefill(seq_lens, heads, seed):
    # the interpreter's attention rule calls reference.prefill_attention: one causal sequence_attention per
    # sequence, with the node's sliding window
    def causal_attention(q, k, v, sm_scale, window=None):
        return sequence_attention(q, k, v, True, sm_scale, window=window)

    hq, hkv = heads
    rng = np.random.default_rng(seed)
    t = sum(seq_lens)
    q, k, v = rng.standard_normal((t, hq, 8)), rng.standard_normal((t, hkv, 8)), rng.standard_normal((t, hkv, 8))
    cu = np.concatenate([[0], np.cumsum(seq_lens)])
    want = prefill_attention(q, k, v, cu, True, 0.3)
    got = np.concatenate([causal_attention(q[a:b], k[a:b], v[a:b], 0.3) for a, b in itertools.pairwise(cu)])
    assert _rel(got, want) <= 1e-13
    # a window as wide as the sequence changes nothing; window 1 attends to the token itself only
    assert _rel(causal_attention(q, k, v, 0.3, t), causal_attention(q, k, v, 0.3)) == 0.0
    one = causal_attention(q, k, v, 0.3, 1)
    assert _rel(one, np.repeat(v, hq // hkv, axis=1)) <= 1e-13


def test_quantize_per_token_bounds():
    x = np.random.default_rng(3).standard_normal((5, 33)) * np.array([[1e-3], [1], [10], [0], [1e5]])
    q, s = quantize_per_token(x)
    assert q.shape == x.shape and s.shape == (5, 1)
    assert np.array_equal(q, np.rint(q)) and np.abs(q).max() <= 127
    assert (np.abs(q * s - x) <= s / 2 * (1 + 1e-12)).all()


# -- HF transformers as the oracle of the unfused graph ----------------------------------------------------

HF_ARCHS = [
    ArchConfig("llama", 96, 64, 96, 2, 4, 2, 16, rms_norm_eps=1e-5, rope_theta=500000.0,
               rope_scaling=(("factor", 8.0), ("high_freq_factor", 4.0), ("low_freq_factor", 1.0),
                             ("original_max_position_embeddings", 8), ("rope_type", "llama3")),
               o_bias=True, qkv_bias=True, mlp_bias=True),
    ArchConfig("qwen2", 80, 32, 64, 2, 6, 2, 16, qkv_bias=True, tie_word_embeddings=True),
    ArchConfig("mistral", 64, 32, 48, 2, 2, 2, 16, sliding_window=3),
    ArchConfig("qwen2", 64, 32, 32, 2, 2, 1, 16, qkv_bias=True, sliding_window=2, window_from_layer=1),
]  # fmt: skip


@pytest.mark.parametrize("arch", HF_ARCHS, ids=lambda a: f"{a.model_type}-w{a.sliding_window}")
def test_unfused_graph_matches_hf_transformers(arch):
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    hf = arch.to_hf_config()
    assert ArchConfig.from_hf_config(hf) == arch  # the window survives the round trip HF reads
    cfg = transformers.AutoConfig.for_model(**hf)
    cfg._attn_implementation = "eager"
    model = transformers.AutoModelForCausalLM.from_config(cfg).to(torch.float64).eval()
    params = random_params(arch, 7)
    state = {k: torch.from_numpy(v) for k, v in params.items()}
    missing, unexpected = model.load_state_dict(state, strict=False)
    assert not unexpected and set(missing) <= {"lm_head.weight"}
    seq_lens = [5, 3]
    ids = np.random.default_rng(0).integers(0, arch.vocab_size, sum(seq_lens))
    got = interpret(build_graph(arch), params, ids, seq_lens=seq_lens)["logits"]
    with torch.no_grad():
        want = [model(torch.from_numpy(ids[a:b])[None]).logits[0, -1].numpy() for a, b in [(0, 5), (5, 8)]]
    # HF computes RoPE angles and RMSNorm statistics in float32 even in a float64 model: ~1e-7 apart;
    # a structural mistake (rope style, GQA mapping, bias, tied head) is O(1)
    assert _rel(got, np.stack(want)) <= 1e-5
