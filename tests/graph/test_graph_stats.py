"""Stats: FLOPs per token and the memory estimate against counts derived from the architecture."""

from __future__ import annotations

import math

import numpy as np
import pytest
from graph_cases import INT4, archs
from hypothesis import given, settings

from lowbit.graph import PassContext, build_graph, optimize
from lowbit.graph.passes import match_recipe
from lowbit.graph.stats import kv_bytes_per_token, memory_estimate, op_costs
from lowbit.models.arch import ArchConfig
from lowbit.ops.weight import quantize


@settings(max_examples=10)
@given(archs())
def test_dense_model_weights_are_its_params_and_linear_flops_are_2kn(arch):
    ctx = PassContext(arch, dtype="bfloat16")
    for g in (build_graph(arch), optimize(build_graph(arch), ctx)):
        est = memory_estimate(g, ctx)
        assert est.weight_bytes == 2 * sum(math.prod(s) for s in arch.param_shapes().values())
        linear_flops = sum(c.flops_per_token for c in op_costs(g, ctx) if c.op == "linear")
        assert linear_flops == sum(2 * s.in_features * s.out_features for s in arch.linears())
        attn = [c for c in op_costs(g, ctx) if c.op == "attention"]
        assert all(c.flops_per_context_token == 4 * arch.q_size for c in attn)


def test_quantized_weights_count_their_stored_bytes():
    arch = ArchConfig("llama", 64, 32, 64, 1, 2, 1, 16)
    ctx = PassContext(arch, lambda m: None if m == "lm_head" else INT4)
    g = optimize(build_graph(arch), ctx)
    rng = np.random.default_rng(0)
    stored = 0
    for s in arch.layer_linears(0):
        qw = quantize(rng.standard_normal((s.out_features, s.in_features)), "int4", 16)
        stored += qw.words.nbytes + qw.scales.nbytes
    dense = 2 * (2 * arch.vocab_size * arch.hidden_size + 3 * arch.hidden_size)  # embed, lm_head, three norms
    assert memory_estimate(g, ctx).weight_bytes == stored + dense
    before_packing = match_recipe(build_graph(arch), ctx)
    assert memory_estimate(before_packing, ctx).weight_bytes == stored + dense


@pytest.mark.parametrize(
    ("kv_dtype", "per_vector"), [("float16", 32), ("bfloat16", 32), ("fp8_e4m3", 16), ("int8", 16 + 4), ("int4", 8 + 4)]
)
def test_kv_bytes_per_token(kv_dtype, per_vector):
    arch = ArchConfig("llama", 64, 32, 64, 3, 4, 2, 16)
    assert kv_bytes_per_token(arch, kv_dtype) == 3 * 2 * 2 * per_vector  # layers · (K, V) · kv heads


def test_memory_estimate_includes_the_activation_arena():
    arch = ArchConfig("llama", 64, 32, 64, 1, 2, 1, 16)
    ctx = PassContext(arch, kv_dtype="int8", max_num_tokens=128)
    g = optimize(build_graph(arch), ctx)
    est = memory_estimate(g, ctx)
    assert est.activation_bytes == g.meta["memory_plan"].peak_bytes_per_token * 128 > 0
    assert est.total(1000) == est.weight_bytes + 1000 * est.kv_bytes_per_token + est.activation_bytes
    assert memory_estimate(build_graph(arch), ctx).activation_bytes == 0
