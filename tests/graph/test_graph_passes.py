"""Laws of the graph passes on random small architectures and recipes: idempotence (`p(p(g)) is p(g)`), the
contract holding after every pass, HF params preserved by the fusions, a memory plan that never shares a
buffer between live tensors, dce removing exactly the dead, and the recipe-dependent fusions."""

from __future__ import annotations

import itertools
from types import SimpleNamespace

import numpy as np
import pytest
from graph_cases import (
    INT4,
    INT8,
    W4A8_CHANNEL,
    W4A8_GROUP,
    archs,
    per_role,
    recipes,
    referenced_params,
    uniform,
)
from hypothesis import given, settings

from lowbit.config.spec import LinearSpec
from lowbit.graph import GRAPH_PIPELINE, GraphError, Node, OpGraph, PassContext, build_graph, optimize, verify
from lowbit.graph.passes import dce, fuse_qkv, match_recipe, pack_weights, plan_memory, select_kernels
from lowbit.graph.shapes import tensor_infos
from lowbit.models.arch import ArchConfig
from lowbit.ops.linear import select_kernel
from lowbit.ops.weight import quantize

ARCH = ArchConfig("llama", 64, 64, 64, 2, 4, 2, 16, qkv_bias=True)


def _stages(g: OpGraph, ctx: PassContext) -> list[tuple[str, OpGraph, OpGraph]]:
    """(pass name, graph before, graph after) for every stage of the pipeline."""
    out = []
    for name, p in GRAPH_PIPELINE:
        new = p(g, ctx)
        out.append((name, g, new))
        g = new
    return out


def _check_defined_before_use(g: OpGraph) -> None:
    # independent of OpGraph's own check: walk the order, every read is a graph input or an earlier write
    defined = set(g.inputs)
    writes: list[str] = []
    for n in g.nodes_in_order():
        assert all(t in defined for t in n.inputs), (n.name, n.inputs)
        defined.update(n.outputs)
        writes.extend(n.outputs)
    assert len(writes) == len(set(writes)), "SSA: a tensor is written twice"
    assert not set(writes) & set(g.inputs)
    assert set(g.outputs) <= defined


@settings(max_examples=12)
@given(archs(), recipes())
def test_every_pass_is_idempotent_and_keeps_the_contract(arch, resolve):
    ctx = PassContext(arch, resolve, backend="triton", device="cuda")
    for name, _, g in _stages(build_graph(arch), ctx):
        p = dict(GRAPH_PIPELINE)[name]
        assert p(g, ctx) is g, f"{name} changed its own output"
        verify(g)
        _check_defined_before_use(g)
        tensor_infos(g, arch, ctx.dtype)  # every op has a shape rule


@settings(max_examples=12)
@given(archs(), recipes())
def test_fusions_preserve_the_hf_params(arch, resolve):
    ctx = PassContext(arch, resolve)
    g0 = build_graph(arch)
    hf = set(arch.param_shapes())
    assert referenced_params(g0) == hf
    for name, _, g in _stages(g0, ctx):
        assert referenced_params(g) == hf, name
        fused = g.meta.get("fused_params", {})
        for n in g.nodes_in_order():
            if n.op == "linear" and len(n.attr("modules")) > 1:
                assert fused[n.attr("weight")] == tuple(f"{m}.weight" for m in n.attr("modules"))
                if n.attr("bias") is not None:
                    assert fused[n.attr("bias")] == tuple(f"{m}.bias" for m in n.attr("modules"))
                assert sum(n.attr("splits")) == sum(arch.param_shapes()[s][0] for s in fused[n.attr("weight")])
        # every fused param is referenced by exactly one node, and no source is also read unfused
        used = [n.attr(k) for n in g.nodes_in_order() for k in ("weight", "bias") if n.attr(k) is not None]
        assert all(used.count(f) == 1 for f in fused)
        sources = [s for v in fused.values() for s in v]
        assert len(sources) == len(set(sources)) and not set(sources) & set(used)


@settings(max_examples=12)
@given(archs(), recipes())
def test_memory_plan_never_shares_a_buffer_between_live_tensors(arch, resolve):
    ctx = PassContext(arch, resolve, max_num_tokens=64)
    g = optimize(build_graph(arch), ctx)
    plan = g.meta["memory_plan"]
    nodes = g.nodes_in_order()
    # liveness by brute force: steps at which each tensor is written, read or (graph outputs) held
    live: dict[str, set[int]] = {}
    for i, n in enumerate(nodes):
        for t in n.outputs:
            live.setdefault(t, set()).add(i)
        for t in n.inputs:
            if t in live:
                live[t].update(range(min(live[t]), i + 1))
    for t in g.outputs:
        live[t].update(range(min(live[t]), len(nodes) + 1))
    assert set(plan.buffer_of) == set(live)
    infos = tensor_infos(g, arch, ctx.dtype)
    for a, b in itertools.combinations(live, 2):
        if plan.buffer_of[a] == plan.buffer_of[b]:
            assert not live[a] & live[b], f"{a} and {b} share buffer {plan.buffer_of[a]} while both live"
    for t, buf in plan.buffer_of.items():
        assert plan.buffer_bytes_per_token[buf] >= infos[t].bytes_per_token
    assert plan.live_peak_bytes_per_token <= plan.peak_bytes_per_token <= plan.naive_bytes_per_token
    # free_after: each planned tensor except the outputs is dropped exactly once, after its last step
    dropped = [t for ts in plan.free_after.values() for t in ts]
    assert sorted(dropped) == sorted(set(live) - set(g.outputs))
    for node, ts in plan.free_after.items():
        step = next(i for i, n in enumerate(nodes) if n.name == node)
        assert all(max(live[t]) == step for t in ts)


def test_memory_plan_sizes_sequence_rows_by_max_num_seqs():
    ctx = PassContext(ARCH, max_num_tokens=1000, max_num_seqs=10)
    g = optimize(build_graph(ARCH), ctx)
    plan = g.meta["memory_plan"]
    infos = tensor_infos(g, ARCH, ctx.dtype)
    assert infos["logits"].rows == infos["h_last"].rows == "seqs" and infos["h_norm"].rows == "tokens"
    for t, b in plan.buffer_of.items():
        assert plan.buffer_rows[b] == infos[t].rows  # a buffer holds one kind of rows
    per_kind = {
        r: sum(b for b, k in zip(plan.buffer_bytes_per_token, plan.buffer_rows) if k == r) for r in ("tokens", "seqs")
    }
    assert per_kind["seqs"] >= ARCH.vocab_size * 2
    assert plan.peak_bytes == per_kind["tokens"] * 1000 + per_kind["seqs"] * 10
    assert "1000 tokens, 10 sequences" in plan.summary()


def test_memory_plan_reuses_buffers_on_a_deep_model():
    arch = ArchConfig("llama", 64, 64, 128, 3, 4, 2, 16)
    plan = optimize(build_graph(arch), PassContext(arch)).meta["memory_plan"]
    assert plan.peak_bytes_per_token < plan.naive_bytes_per_token / 3  # 3 layers share one layer's buffers
    assert "B/token planned vs" in plan.summary()


def test_dce_removes_a_dead_node_and_nothing_else():
    ctx = PassContext(ARCH)
    g = optimize(build_graph(ARCH), ctx)
    assert dce(g, ctx) is g
    dead = [
        Node.create("dead.add", "add", ("h_embed", "h_embed"), ("dead0",), None),
        Node.create("dead.norm", "rms_norm", ("dead0",), ("dead1",), None, weight="model.norm.weight", eps=1e-6),
    ]
    g2 = OpGraph.create([*g.nodes_in_order()[:3], *dead, *g.nodes_in_order()[3:]], meta=g.meta)
    out = dce(g2, ctx)
    assert [n.name for n in out.nodes_in_order()] == [n.name for n in g.nodes_in_order()]
    assert all(a is b for a, b in zip(out.nodes_in_order(), g.nodes_in_order()))


def test_differing_qkv_specs_prevent_fusion_and_say_why():
    ctx = PassContext(
        ARCH,
        per_role(
            {"q_proj": INT4, "k_proj": INT8, "v_proj": INT4}
            | dict.fromkeys(("o_proj", "gate_proj", "up_proj", "down_proj", "lm_head"), INT4)
        ),
    )
    g = optimize(build_graph(ARCH), ctx)
    names = {n.name for n in g.nodes_in_order()}
    assert "model.layers.0.self_attn.q_proj" in names and "model.layers.0.self_attn.qkv_proj" not in names
    assert "model.layers.0.mlp.gate_up_proj" in names  # equal gate/up specs still fuse
    assert any("q/k/v_proj left unfused" in note and "specs differ" in note for note in g.meta["notes"])
    assert "left unfused" in g.to_text()
    same = optimize(build_graph(ARCH), PassContext(ARCH, uniform(INT4)))
    assert "model.layers.1.self_attn.qkv_proj" in same


def test_w4a8_recipe_quantizes_activations_in_the_norms():
    g = optimize(build_graph(ARCH), PassContext(ARCH, uniform(W4A8_GROUP)))
    ops = [n.op for n in g.nodes_in_order()]
    assert ops.count("rms_norm_quant") == 1  # layer 0's input norm (no residual add before it)
    assert ops.count("add_rms_norm_quant") == 2 * ARCH.num_layers - 1
    assert ops.count("add_rms_norm") == 1  # model.norm feeds a dense lm_head
    for n in g.nodes_in_order():
        if n.op == "linear" and n.attr("spec") is not None:
            fused = n.name.endswith(("qkv_proj", "gate_up_proj"))
            assert n.attr("act_quant_fused") is fused  # o_proj / down_proj quantize their own input
            assert len(n.inputs) == (2 if fused else 1)
    # a mixed reader set keeps the norm in float: here q/k/v are W4A8 but unfused (different schemes)
    mixed = per_role(
        dict.fromkeys(("q_proj", "k_proj", "o_proj", "gate_proj", "up_proj", "down_proj", "lm_head"), W4A8_GROUP)
        | {"v_proj": INT4}
    )
    g2 = optimize(build_graph(ARCH), PassContext(ARCH, mixed))
    assert "model.layers.0.input_layernorm" in g2 and g2.node("model.layers.0.input_layernorm").op == "rms_norm"
    assert any("fuse_norm_quant" in note for note in g2.meta["notes"])


@pytest.mark.parametrize("spec", [None, INT4, W4A8_GROUP, W4A8_CHANNEL])
def test_select_kernels_mirrors_ops_linear(spec):
    buckets = (1, 2, 16, 17, 64, 4096)
    g = optimize(build_graph(ARCH), PassContext(ARCH, uniform(spec, spec), buckets=buckets))
    for n in g.nodes_in_order():
        if n.op == "linear":
            for m, kernel in n.attr("kernels"):
                want = "dense" if spec is None else select_kernel(SimpleNamespace(scheme=spec.scheme), m).name
                assert kernel == want, (n.name, m)
    assert g.meta["buckets"] == buckets
    assert select_kernels(g, PassContext(ARCH, uniform(spec, spec), buckets=buckets)) is g


@pytest.mark.parametrize(
    "spec",
    [
        LinearSpec("rtn", "int4", 32),
        LinearSpec("awq", "uint4", 32, "post"),
        LinearSpec("rtn", "int4", 64, "pre"),
        INT4,  # group 16: not a group size the a8 GEMV takes
        LinearSpec("rtn", "int8", 32),
        W4A8_GROUP,
    ],
)
def test_select_kernels_with_int8_decode_mirrors_ops_linear(spec):
    buckets = (1, 16, 17, 64)
    g = optimize(build_graph(ARCH), PassContext(ARCH, uniform(spec, spec), buckets=buckets, decode_activations="int8"))
    rng = np.random.default_rng(0)
    for n in g.nodes_in_order():
        if n.op == "linear":
            w = rng.standard_normal((sum(n.attr("splits")), n.attr("in_features"))).astype(np.float32)
            qw = quantize(w, spec.weight_dtype, spec.group_size, zero_mode=spec.zero_mode, scheme=spec.scheme)
            assert n.attr("kernels") == tuple((m, select_kernel(qw, m, "int8").name) for m in buckets), n.name


@pytest.mark.parametrize(
    ("backend", "device", "spec", "layout"),
    [
        ("tvm", "cpu", INT4, "row"),
        ("reference", "cpu", W4A8_GROUP, "row"),
        ("triton", "cuda", INT4, "reordered"),
        ("triton", "cuda", W4A8_CHANNEL, "reordered"),
        ("triton", "cuda", None, None),
    ],
)
def test_pack_weights_bytes_match_the_quantized_weight(backend, device, spec, layout):
    ctx = PassContext(ARCH, uniform(spec, spec), backend=backend, device=device)
    g = optimize(build_graph(ARCH), ctx)
    n = g.node("model.layers.0.self_attn.qkv_proj")
    assert n.attr("layout") == layout
    nf, k = sum(n.attr("splits")), n.attr("in_features")
    if spec is None:
        assert n.attr("weight_bytes") == nf * k * 2
        return
    # the oracle: quantize a weight of this shape with this layout and count its words
    w = np.random.default_rng(0).standard_normal((nf, k)).astype(np.float32)
    qw = quantize(w, spec.weight_dtype, spec.group_size, zero_mode=spec.zero_mode, scheme=spec.scheme, layout=layout)
    assert tuple(qw.words.shape) == n.attr("weight_words")
    assert qw.words.nbytes == n.attr("weight_bytes")
    aux = sum(a.nbytes for a in (qw.scales, qw.zeros, qw.channel_scales) if a is not None)
    assert aux == n.attr("scale_bytes")
    assert str(qw.layout) == n.attr("layout_desc")
    assert pack_weights(g, ctx) is g


def test_gemv_only_buckets_keep_the_row_layout_on_triton():
    ctx = PassContext(ARCH, uniform(INT4), backend="triton", device="cuda", buckets=(1, 16))
    g = optimize(build_graph(ARCH), ctx)
    assert {n.attr("layout") for n in g.nodes_in_order() if n.op == "linear" and n.attr("spec")} == {"row"}


def test_three_bit_codes_fall_back_to_row_with_a_note():
    spec = LinearSpec("rtn", "int3", 16)
    g = optimize(build_graph(ARCH), PassContext(ARCH, uniform(spec), backend="triton", device="cuda"))
    assert g.node("model.layers.0.mlp.down_proj").attr("layout") == "row"
    assert any("do not tile BK=128" in note for note in g.meta["notes"])


def test_match_recipe_rejects_a_group_size_that_does_not_divide():
    bad = LinearSpec("rtn", "int4", 48)
    with pytest.raises(GraphError, match=r"group_size 48 does not divide in_features 64 of model\.layers\.0\."):
        match_recipe(build_graph(ARCH), PassContext(ARCH, uniform(bad)))


def test_match_recipe_sets_kv_dtype_and_is_identity_without_a_recipe():
    g = build_graph(ARCH)
    assert match_recipe(g, PassContext(ARCH)) is g
    g2 = match_recipe(g, PassContext(ARCH, kv_dtype="int4"))
    assert {n.attr("kv_dtype") for n in g2.nodes_in_order() if n.op == "attention"} == {"int4"}


def test_fuse_qkv_after_fusion_and_plan_memory_twice_return_the_same_graph():
    ctx = PassContext(ARCH, uniform(INT4))
    g = optimize(build_graph(ARCH), ctx)
    assert fuse_qkv(g, ctx) is g
    assert plan_memory(g, ctx) is g
    assert optimize(g, ctx) is g


def test_pass_context_errors_name_the_field():
    with pytest.raises(ValueError, match="backend 'cuda' is not known"):
        PassContext(ARCH, backend="cuda")
    with pytest.raises(ValueError, match="buckets"):
        PassContext(ARCH, buckets=(16, 1))
    with pytest.raises(ValueError, match="kv_dtype"):
        PassContext(ARCH, kv_dtype="int5")
    with pytest.raises(ValueError, match="max_num_seqs 0 must be a positive int"):
        PassContext(ARCH, max_num_seqs=0)
