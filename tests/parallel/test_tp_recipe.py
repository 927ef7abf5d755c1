"""target.tensor_parallel: refused before any weight is read with the field, the value and the fix; the
shard_tensor_parallel pass (all_reduce after every row-parallel linear, heads split, tp=1 untouched)."""

from __future__ import annotations

import pytest

from lowbit.compiler.compile import model_graph
from lowbit.config import RecipeError, check_against_model, load_config, model_arch
from lowbit.graph import GraphError, PassContext, build_graph, optimize
from lowbit.graph.passes import shard_tensor_parallel
from lowbit.models.arch import ArchConfig

TINY = "examples/tiny-llama.yaml"  # heads 4 / KV heads 2, hidden 128, MLP 256, int4 g32


def _check(*sets: str) -> None:
    cfg = load_config(TINY, list(sets))
    check_against_model(cfg, model_arch(cfg))


@pytest.mark.parametrize(
    ("sets", "message"),
    [
        (["target.tensor_parallel=3"], r"target\.tensor_parallel: 3: not a power of two <= 8; use one of 1, 2, 4, 8"),
        (["target.tensor_parallel=16"], r"target\.tensor_parallel: 16: not a power of two <= 8"),
        (
            ["target.tensor_parallel=4"],
            r"target\.tensor_parallel: 4: num_kv_heads 2 does not split over 4 ranks; use tensor_parallel 1 or 2 "
            r"\(KV heads are split over the ranks, not replicated\)",
        ),
        (
            ["target.tensor_parallel=2", "quantization.weights.group_size=128"],
            r"target\.tensor_parallel: 2: in_features 128 / 2 = 64 of model\.layers\.0\.self_attn\.o_proj "
            r"\(row-parallel\) is not a multiple of its group_size 128; use tensor_parallel 1, or a smaller group_size",
        ),
        (
            ["target.tensor_parallel=2", "quantization.activations=int8", "quantization.weights.dtype=uint4"],
            r"target\.tensor_parallel: 2: W4A8 .* use quantization\.activations: float",
        ),
    ],
)
def test_unshardable_recipes_are_refused_naming_field_value_and_fix(sets, message):
    with pytest.raises(RecipeError, match=message):
        _check(*sets)


def test_shardable_recipes_pass_and_tp1_files_do_not_mention_the_field():
    _check("target.tensor_parallel=2")
    _check("target.tensor_parallel=2", "quantization.weights.group_size=-1")  # per channel: any K split
    _check("target.tensor_parallel=2", "quantization.algorithm=none")
    assert "tensor_parallel" not in load_config(TINY).to_yaml()  # tp=1 artifacts' model.yaml unchanged
    tp2 = load_config(TINY, ["target.tensor_parallel=2"])
    assert "tensor_parallel: 2" in tp2.to_yaml()
    assert load_config(TINY, ["target.tensor_parallel=2"]) == tp2  # round trip


def test_the_sharded_graph_all_reduces_after_each_row_parallel_linear():
    cfg = load_config(TINY, ["target.tensor_parallel=2"])
    arch = model_arch(cfg)
    g = model_graph(cfg, arch)
    nodes = g.nodes_in_order()
    reduces = [n for n in nodes if n.op == "all_reduce"]
    rows = ("self_attn.o_proj", "mlp.down_proj")
    want = [f"model.layers.{i}.{m}.all_reduce" for i in range(arch.num_layers) for m in rows]
    assert [n.name for n in reduces] == want
    for r in reduces:
        (producer,) = [n for n in nodes if r.inputs[0] in n.outputs]
        assert producer.op == "linear" and producer.attr("parallel") == "row"
        assert producer.attr("in_features") * 2 in (arch.q_size, arch.intermediate_size)
        assert r.attr("world_size") == 2
    qkv = g.node("model.layers.0.self_attn.qkv_proj")
    assert qkv.attr("parallel") == "column" and qkv.attr("splits") == (64, 32, 32)  # 2 q heads, 1 KV head of 32
    attn = g.node("model.layers.0.self_attn.attn")
    assert (attn.attr("num_heads"), attn.attr("num_kv_heads")) == (2, 1)
    assert g.node("lm_head").attr("parallel") is None  # replicated
    assert g.meta["tensor_parallel"] == 2
    assert "all_reduce" not in model_graph(cfg, arch, tensor_parallel=1).to_text()


def test_the_pass_leaves_tp1_alone_and_names_what_does_not_split():
    arch = ArchConfig("llama", 64, 64, 96, 1, 4, 2, 16)
    g = build_graph(arch)
    assert shard_tensor_parallel(g, PassContext(arch)) is g
    with pytest.raises(GraphError, match=r"num_kv_heads 2 does not split over tensor_parallel 4"):
        optimize(g, PassContext(arch, tensor_parallel=4))
    with pytest.raises(ValueError, match=r"tensor_parallel 3 must be a power of two"):
        PassContext(arch, tensor_parallel=3)
