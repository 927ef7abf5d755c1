"""Text, Graphviz dot and PNG forms of an `OpGraph`.

Text (an IR listing: one line per node, layers grouped, the node's name as a trailing comment; attrs
that carry no information — None, False, (), a single-module `modules`/`splits` — are left out):

    graph llama(%input_ids, %positions) -> (%logits)
      %h_embed = embedding(%input_ids) [weight=model.embed_tokens.weight]  # model.embed_tokens
      # layer 0
      %l0.q, %l0.k, %l0.v = linear(%l0.attn_in) [weight=..., spec=int4/g128, kernels=1:gemv 16:gemv 4096:gemm]  # ...

followed by the meta (fused params, notes, memory plan) as comment lines.
Dot: one box per node colored by op class (compute / memory / network bound), layers as clusters,
edges labelled with the tensor; graph inputs and outputs as grey ellipses.
"""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from lowbit.config.spec import LinearSpec
from lowbit.graph.graph import Node, OpGraph

# op class -> ops; the dot colors follow it (network ops arrive with tensor parallelism)
OP_CLASSES = {
    "compute": ("linear", "attention"),
    "memory": (
        "embedding",
        "rms_norm",
        "add",
        "add_rms_norm",
        "rms_norm_quant",
        "add_rms_norm_quant",
        "rope",
        "silu_mul",
        "last_token",
    ),
    "network": ("all_reduce", "all_gather"),
}
CLASS_COLORS = {"compute": "#f4a582", "memory": "#92c5de", "network": "#b8e186", "other": "#ffffff", "io": "#e0e0e0"}
_HIDDEN = ("in_features", "layout_desc", "weight_words", "kernel_family")


def op_class(op: str) -> str:
    return next((c for c, ops in OP_CLASSES.items() if op in ops), "other")


def spec_text(spec: LinearSpec | None) -> str:
    """int4/g128, uint4/g128/zp-post/a8 (qoq), ...: dtype, group, zero point, int8 activations, algorithm."""
    if spec is None:
        return "dense"
    s = f"{spec.weight_dtype}/{'ch' if spec.group_size == -1 else f'g{spec.group_size}'}"
    if spec.zero_mode != "none":
        s += f"/zp-{spec.zero_mode}"
    if spec.act_int8:
        s += "/a8"
    return s if spec.algorithm == "rtn" else f"{s} ({spec.algorithm})"


def _value(v: Any) -> str:
    if isinstance(v, LinearSpec):
        return spec_text(v)
    if isinstance(v, Mapping):
        return "{" + ", ".join(f"{k}: {_value(x)}" for k, x in v.items()) + "}"
    if isinstance(v, tuple):
        return "(" + ", ".join(_value(x) for x in v) + ")"
    if isinstance(v, float):
        return f"{v:g}"
    return str(v)


def kernels_text(kernels: tuple[tuple[int, str], ...]) -> str:
    """`16:gemv 4096:gemm`: M <= 16 runs quantized_gemv, 16 < M <= 4096 quantized_gemm (runs of equal
    kernels shown once, by their largest bucket)."""
    runs: list[tuple[int, str]] = []
    for m, name in kernels:
        if runs and runs[-1][1] == name:
            runs[-1] = (m, name)
        else:
            runs.append((m, name))
    return " ".join(f"{m}:{name.removeprefix('quantized_')}" for m, name in runs)


def attr_text(node: Node) -> str:
    parts = []
    for k, v in node.attrs:
        if k in _HIDDEN or v is None or v is False or v == () or (k == "spec" and node.op != "linear"):
            continue
        if k in ("modules", "splits") and len(v) == 1:
            continue
        if k == "kernels":
            parts.append("kernels=" + kernels_text(v))
        elif k == "modules":
            parts.append("modules=(" + ", ".join(m.rsplit(".", 1)[-1] for m in v) + ")")
        else:
            parts.append(f"{k}={_value(v)}")
    return f" [{', '.join(parts)}]" if parts else ""


def node_text(node: Node) -> str:
    outs = ", ".join(f"%{t}" for t in node.outputs)
    ins = ", ".join(f"%{t}" for t in node.inputs)
    return f"{outs} = {node.op}({ins}){attr_text(node)}  # {node.name}"


def graph_text(g: OpGraph) -> str:
    ins = ", ".join(f"%{t}" for t in g.inputs)
    outs = ", ".join(f"%{t}" for t in g.outputs)
    lines = [f"graph {g.name}({ins}) -> ({outs})" + (f"  # {g.meta['arch']}" if "arch" in g.meta else "")]
    layer: Any = None
    for n in g.nodes_in_order():
        if n.layer != layer:
            lines.append(f"  # layer {n.layer}" if n.layer is not None else "  # model")
            layer = n.layer
        lines.append("  " + node_text(n))
    lines.extend(_meta_lines(g))
    return "\n".join(lines) + "\n"


def _meta_lines(g: OpGraph) -> list[str]:
    out: list[str] = []
    for name, sources in g.meta.get("fused_params", {}).items():
        out.append(f"# fused {name} <- {', '.join(sources)}")
    for note in g.meta.get("notes", ()):
        out.append(f"# note: {note}")
    plan = g.meta.get("memory_plan")
    if plan is not None:
        out.extend(f"# {line}" for line in plan.summary().splitlines())
    for k, v in g.meta.items():
        if k not in ("fused_params", "notes", "memory_plan", "arch"):
            out.append(f"# meta {k} = {_value(v)}")
    return out


# -- dot / png ---------------------------------------------------------------------------------------------


def _q(s: str) -> str:
    return '"' + s.replace("\\", "\\\\").replace('"', '\\"') + '"'


def graph_dot(g: OpGraph) -> str:
    lines = [
        f"digraph {_q(g.name)} {{",
        "  rankdir=TB;",
        '  node [shape=box, style="rounded,filled", fontname="Helvetica"];',
    ]
    lines.append('  edge [fontname="Helvetica", fontsize=9];')
    for t in (*g.inputs, *g.outputs):
        lines.append(f"  {_q('tensor:' + t)} [label={_q(t)}, shape=ellipse, fillcolor={_q(CLASS_COLORS['io'])}];")
    layers: dict[Any, list[Node]] = {}
    for n in g.nodes_in_order():
        layers.setdefault(n.layer, []).append(n)
    for layer, nodes in layers.items():
        indent = "  "
        if layer is not None:
            lines.append(f"  subgraph {_q(f'cluster_layer{layer}')} {{")
            lines.append(f"    label={_q(f'layer {layer}')}; style=dashed;")
            indent = "    "
        for n in nodes:
            detail = spec_text(n.attr("spec")) if n.op == "linear" else ""
            label = f"{n.op}\\n{n.name}" + (f"\\n{detail}" if detail else "")
            color = CLASS_COLORS[op_class(n.op)]
            lines.append(f"{indent}{_q(n.name)} [label={_q(label)}, fillcolor={_q(color)}];")
        if layer is not None:
            lines.append("  }")
    for n in g.nodes_in_order():
        for t in n.inputs:
            p = g.producer(t)
            src = "tensor:" + t if p is None else p.name
            lines.append(f"  {_q(src)} -> {_q(n.name)} [label={_q(t)}];")
    for t in g.outputs:
        p = g.producer(t)
        assert p is not None  # OpGraph checks every output is produced
        lines.append(f"  {_q(p.name)} -> {_q('tensor:' + t)};")
    lines.append("}")
    return "\n".join(lines) + "\n"


class GraphvizNotFound(RuntimeError):
    """The Graphviz `dot` executable is not on PATH."""


def graph_png(g: OpGraph, path: Any) -> None:
    """Render `g` to a PNG at `path`: with Graphviz `dot` when it is on PATH (the best layout), else with
    matplotlib over networkx (nodes in rows by dependency depth, coloured by op class); raises
    GraphvizNotFound (with the fix) when neither is available."""
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    dot = shutil.which("dot")
    if dot is None:
        _matplotlib_png(g, Path(path))
        return
    proc = subprocess.run([dot, "-Tpng", "-o", str(path)], input=graph_dot(g), text=True, capture_output=True)
    if proc.returncode:
        raise RuntimeError(f"dot -Tpng failed with exit code {proc.returncode}: {proc.stderr.strip()}")


def _matplotlib_png(g: OpGraph, path: Path) -> None:
    # Graphviz is a system package, often missing; matplotlib (a pip wheel) draws a plainer but complete
    # picture: every node (op, name, spec) and every edge, top to bottom in dependency order.
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise GraphvizNotFound(
            "rendering the graph as PNG needs the Graphviz `dot` executable (not on PATH) or matplotlib (not "
            "installed); install graphviz (apt-get install graphviz, brew install graphviz) or "
            "`pip install matplotlib`, or write the dot text instead (g.to_dot(), `--format dot`)"
        ) from None
    nodes = g.nodes_in_order()
    depth: dict[str, int] = {}
    for n in nodes:
        parents = [p.name for t in n.inputs if (p := g.producer(t)) is not None]
        depth[n.name] = 1 + max((depth[q] for q in parents), default=-1)
    rows: dict[int, list[Node]] = {}
    for n in nodes:
        rows.setdefault(depth[n.name], []).append(n)
    width = max(len(r) for r in rows.values())
    pos = {n.name: (i - (len(r) - 1) / 2, -d) for d, r in rows.items() for i, n in enumerate(r)}
    fig, ax = plt.subplots(figsize=(max(6.0, 3.2 * width), max(4.0, 0.9 * len(rows))))
    for n in nodes:
        for t in n.inputs:
            p = g.producer(t)
            if p is not None:
                (x0, y0), (x1, y1) = pos[p.name], pos[n.name]
                ax.annotate("", (x1, y1 + 0.18), (x0, y0 - 0.18), arrowprops={"arrowstyle": "->", "lw": 0.6})
    for n in nodes:
        x, y = pos[n.name]
        detail = spec_text(n.attr("spec")) if n.op == "linear" else ""
        label = f"{n.op}\n{n.name}" + (f"\n{detail}" if detail else "")
        box = {"boxstyle": "round", "fc": CLASS_COLORS[op_class(n.op)], "ec": "#555555"}
        ax.text(x, y, label, ha="center", va="center", fontsize=6, bbox=box)
    ax.set_xlim(-width / 2 - 0.5, width / 2 + 0.5)
    ax.set_ylim(-len(rows), 1)
    ax.set_title(g.name, fontsize=9)
    ax.axis("off")
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)


__all__ = [
    "CLASS_COLORS",
    "OP_CLASSES",
    "GraphvizNotFound",
    "attr_text",
    "graph_dot",
    "graph_png",
    "graph_text",
    "kernels_text",
    "node_text",
    "op_class",
    "spec_text",
]
