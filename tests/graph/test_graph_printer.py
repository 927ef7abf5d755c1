"""Text, dot and PNG forms; the pipeline's dumps."""

from __future__ import annotations

import itertools
import re
import shutil

import pytest
from graph_cases import W4A8_GROUP, archs, recipes, uniform
from hypothesis import given, settings

from lowbit.graph import PassContext, build_graph, optimize
from lowbit.graph.printer import GraphvizNotFound, kernels_text, op_class, spec_text
from lowbit.models.arch import ArchConfig

ARCH = ArchConfig("llama", 64, 64, 64, 2, 4, 2, 16)

_DOT_NODE = re.compile(r'^\s*"((?:[^"\\]|\\.)*)" \[label=')
_DOT_EDGE = re.compile(r'^\s*"((?:[^"\\]|\\.)*)" -> "((?:[^"\\]|\\.)*)"')


def _parse_dot(text: str) -> tuple[list[str], list[tuple[str, str]]]:
    try:
        import pydot
        from networkx.drawing.nx_pydot import from_pydot
    except ImportError:  # no pydot here: read the statements this printer writes, one per line
        lines = text.splitlines()
        assert lines[0].startswith("digraph ") and lines[-1] == "}"
        assert text.count("{") == text.count("}")
        nodes = [m.group(1) for line in lines if (m := _DOT_NODE.match(line))]
        edges = [(m.group(1), m.group(2)) for line in lines if (m := _DOT_EDGE.match(line))]
        return nodes, edges
    import pydot

    (graph,) = pydot.graph_from_dot_data(text)
    g = from_pydot(graph)
    return list(g.nodes), list(g.edges)


@settings(max_examples=8)
@given(archs(), recipes())
def test_text_lists_every_node_once_and_dot_has_every_node(arch, resolve):
    for g in (build_graph(arch), optimize(build_graph(arch), PassContext(arch, resolve))):
        text = g.to_text()
        node_lines = [line for line in text.splitlines() if line.startswith("  %")]
        assert len(node_lines) == len(g)
        for line, n in zip(node_lines, g.nodes_in_order()):
            assert line.endswith(f"  # {n.name}")
            assert f" = {n.op}(" in line
            assert line.startswith("  " + ", ".join(f"%{t}" for t in n.outputs) + " = ")
        nodes, edges = _parse_dot(g.to_dot())
        assert len(nodes) == len(g) + len(g.inputs) + len(g.outputs)
        assert set(nodes) >= {n.name for n in g.nodes_in_order()}
        assert len(edges) == sum(len(n.inputs) for n in g.nodes_in_order()) + len(g.outputs)


def test_text_shows_specs_kernels_and_fused_params():
    g = optimize(build_graph(ARCH), PassContext(ARCH, uniform(W4A8_GROUP), buckets=(1, 16, 4096)))
    text = g.to_text()
    assert "= linear(%l0.attn_in_q, %l0.attn_in_scale) [weight=model.layers.0.self_attn.qkv_proj.weight" in text
    assert "spec=uint4/g16/zp-post/a8 (qoq)" in text
    assert "kernels=4096:w4a8_gemm_per_group" in text
    assert "# fused model.layers.1.mlp.gate_up_proj.weight <- model.layers.1.mlp.gate_proj.weight, " in text
    assert "# memory plan:" in text
    assert "  # layer 1" in text
    assert str(g) == text


def test_kernels_text_and_spec_text():
    assert (
        kernels_text(((1, "quantized_gemv"), (16, "quantized_gemv"), (4096, "quantized_gemm"))) == "16:gemv 4096:gemm"
    )
    assert spec_text(None) == "dense"
    assert spec_text(uniform(W4A8_GROUP)("x")) == "uint4/g16/zp-post/a8 (qoq)"
    assert op_class("linear") == "compute" and op_class("rms_norm") == "memory" and op_class("all_reduce") == "network"


def test_dot_colors_nodes_by_op_class():
    dot = build_graph(ARCH).to_dot()
    assert re.search(r'"model.layers.0.self_attn.q_proj" \[label="linear.*fillcolor="#f4a582"', dot)
    assert re.search(r'"model.layers.0.input_layernorm" \[label="rms_norm.*fillcolor="#92c5de"', dot)
    assert 'subgraph "cluster_layer1"' in dot


def test_to_png(tmp_path, monkeypatch):
    g = build_graph(ARCH)
    if shutil.which("dot"):
        g.to_png(tmp_path / "g.png")
        assert (tmp_path / "g.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    monkeypatch.setattr(shutil, "which", lambda name: None)
    pytest.importorskip("matplotlib")
    g.to_png(tmp_path / "mpl.png")  # no Graphviz: the matplotlib drawing
    data = (tmp_path / "mpl.png").read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 10_000
    import builtins

    real_import = builtins.__import__

    def no_matplotlib(name, *a, **kw):
        if name.startswith("matplotlib"):
            raise ImportError(name)
        return real_import(name, *a, **kw)

    monkeypatch.setattr(builtins, "__import__", no_matplotlib)
    with pytest.raises(GraphvizNotFound, match=r"install graphviz .*matplotlib.*g\.to_dot\(\)"):
        g.to_png(tmp_path / "none.png")
    assert not (tmp_path / "none.png").exists()


def test_dumps_after_every_stage_that_changed_the_graph(tmp_path, monkeypatch):
    ctx = PassContext(ARCH, uniform(W4A8_GROUP))
    g = optimize(build_graph(ARCH), ctx, dump_dir=tmp_path / "a")
    names = sorted(p.name for p in (tmp_path / "a").iterdir())
    assert names[0] == "00-input.txt" and names[-1] == "11-plan_memory.txt"
    assert "10-dce.txt" not in names  # nothing dead: no dump
    assert "01-shard_tensor_parallel.txt" not in names  # tensor_parallel 1: unchanged, no dump
    assert "03-fuse_qkv.txt" in names and "06-fuse_norm_quant.txt" in names
    texts = [(tmp_path / "a" / n).read_text() for n in names]
    assert all(a != b for a, b in itertools.pairwise(texts))
    assert texts[-1] == g.to_text()
    monkeypatch.setenv("LOWBIT_DUMP_GRAPH", str(tmp_path / "b"))
    optimize(build_graph(ARCH), ctx)
    assert sorted(p.name for p in (tmp_path / "b").iterdir()) == names
