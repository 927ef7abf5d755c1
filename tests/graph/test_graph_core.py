"""Node / OpGraph as values: SSA and use-before-definition checks, identity-preserving rewrites, the build."""

from __future__ import annotations

import pickle

import pytest
from graph_cases import archs
from hypothesis import given, settings

from lowbit.graph import FrozenDict, GraphError, Node, OpGraph, build_graph, verify
from lowbit.graph.shapes import tensor_infos
from lowbit.models.arch import ArchConfig

ARCH = ArchConfig("llama", 64, 32, 64, 1, 2, 1, 16)


def _n(name, op, ins, outs, **attrs):
    return Node.create(name, op, ins, outs, None, **attrs)


def test_ssa_and_definition_before_use_are_enforced():
    a = _n("a", "add", ("input_ids", "positions"), ("x",))
    with pytest.raises(GraphError, match=r"tensor %x is written by node b and by a"):
        OpGraph.create([a, _n("b", "add", ("x", "x"), ("x",))], outputs=("x",))
    with pytest.raises(GraphError, match=r"node a \(add\) reads %y, which is defined later by b"):
        OpGraph.create([_n("a", "add", ("y", "y"), ("x",)), _n("b", "add", ("x", "x"), ("y",))], outputs=("x",))
    with pytest.raises(GraphError, match="never defined"):
        OpGraph.create([_n("a", "add", ("z", "z"), ("x",))], outputs=("x",))
    with pytest.raises(GraphError, match="node names must be unique"):
        OpGraph.create([a, _n("a", "add", ("x", "x"), ("y",))], outputs=("y",))
    with pytest.raises(GraphError, match="graph output %logits is never defined"):
        OpGraph.create([a])
    with pytest.raises(GraphError, match=r"written by node a and by the graph inputs"):
        OpGraph.create([_n("a", "add", ("input_ids", "input_ids"), ("positions",))], outputs=("positions",))


def test_nodes_are_hashable_values_and_with_attrs_keeps_identity():
    n = _n("r", "rope", ("q", "k", "positions"), ("qr", "kr"), scaling={"rope_type": "linear", "factor": 2.0})
    assert isinstance(n.attr("scaling"), FrozenDict) and dict(n.attr("scaling"))["factor"] == 2.0
    assert hash(n) == hash(
        _n("r", "rope", ("q", "k", "positions"), ("qr", "kr"), scaling={"factor": 2.0, "rope_type": "linear"})
    )
    assert n.with_attrs(scaling={"rope_type": "linear", "factor": 2.0}) is n
    m = n.with_attrs(theta=5.0, scaling=None)
    assert m is not n and m.attr("theta") == 5.0 and m.attr("scaling") is None and m.attrs[0][0] == "scaling"
    assert n.with_attrs(splits=[1, 2]).attr("splits") == (1, 2)
    with pytest.raises(TypeError, match="FrozenDict cannot be modified"):
        n.attr("scaling")["factor"] = 3.0
    assert pickle.loads(pickle.dumps(n)) == n
    assert n.with_io() is n


def test_replace_nodes_reorders_stably_when_needed():
    a = _n("a", "add", ("input_ids", "input_ids"), ("x",))
    b = _n("b", "add", ("x", "x"), ("y",))
    c = _n("c", "add", ("y", "x"), ("logits",))
    g = OpGraph.create([a, b, c])
    assert g.replace_nodes([]) is g and g.substitute({}) is g and g.with_meta() is g
    # a new node placed where "a" was reads y, which b writes later: the order is repaired
    d = _n("d", "add", ("y", "y"), ("x2",))
    g2 = g.replace_nodes(["a"], [a, d])
    assert [n.name for n in g2] == ["a", "b", "d", "c"]
    with pytest.raises(GraphError, match="cycle"):
        g.replace_nodes(["a"], [_n("a", "add", ("y", "y"), ("x",))])
    assert g.with_meta(k=(1, 2)).with_meta(k=[1, 2]).meta["k"] == (1, 2)
    assert g.with_note("n").with_note("n").meta["notes"] == ("n",)


def test_nx_view_and_queries():
    g = build_graph(ARCH)
    G = g.nx
    assert G.number_of_nodes() == len(g) and G is g.nx
    assert G.edges["model.layers.0.self_attn.rope", "model.layers.0.self_attn.attn"]["tensors"] == (
        "l0.q_rot",
        "l0.k_rot",
    )
    assert g.producer("input_ids") is None and g.producer("logits").name == "lm_head"
    assert [n.name for n in g.consumers("l0.attn_in")] == [f"model.layers.0.self_attn.{p}_proj" for p in "qkv"]
    with pytest.raises(GraphError, match="has no node 'nope'"):
        g.node("nope")


@settings(max_examples=15)
@given(archs())
def test_build_graph_structure(arch):
    g = verify(build_graph(arch))
    ops = [n.op for n in g.nodes_in_order()]
    L = arch.num_layers
    assert ops.count("linear") == 7 * L + 1 and ops.count("attention") == L and ops.count("rope") == L
    assert ops.count("rms_norm") == 2 * L + 1 and ops.count("add") == 2 * L and ops.count("silu_mul") == L
    assert ops[0] == "embedding" and ops[-2:] == ["last_token", "linear"]
    head = g.node("lm_head")
    assert head.attr("weight") == ("model.embed_tokens.weight" if arch.tie_word_embeddings else "lm_head.weight")
    for s in arch.linears():
        if s.name != "lm_head":
            n = g.node(s.name)
            assert n.attr("splits") == (s.out_features,) and n.attr("in_features") == s.in_features
            assert (n.attr("bias") is not None) == s.bias
    infos = tensor_infos(g, arch, "float16")
    assert infos["logits"].features == arch.vocab_size and infos["l0.k_rot"].features == arch.kv_size
    rope = g.node("model.layers.0.self_attn.rope")
    assert rope.attr("scaling") == arch.rope_scaling_dict and rope.attr("theta") == arch.rope_theta


def test_verify_names_the_node():
    g = build_graph(ARCH)
    bad = g.substitute({"lm_head": g.node("lm_head").with_attrs(act_quant_fused=True)})
    with pytest.raises(GraphError, match=r"node lm_head: act_quant_fused=True but spec None"):
        verify(bad)
    odd = OpGraph.create([_n("a", "gelu", ("input_ids",), ("logits",))])
    with pytest.raises(GraphError, match=r"op 'gelu' is not in the graph contract"):
        verify(odd)
