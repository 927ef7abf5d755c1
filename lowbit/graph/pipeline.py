"""GRAPH_PIPELINE: the graph passes in order, and `optimize`, which runs them.

`optimize(g, ctx, dump_dir)` verifies the graph (lowbit.graph.verify) before the first pass and after every
pass that changed it; with `dump_dir` (or `LOWBIT_DUMP_GRAPH=dir`) it writes `00-input.txt` and then
`NN-<pass>.txt` (the text form) after every stage NN that changed the graph.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from pathlib import Path

from lowbit.graph.context import PassContext
from lowbit.graph.graph import OpGraph
from lowbit.graph.passes.dce import dce
from lowbit.graph.passes.fuse_add_rms_norm import fuse_add_rms_norm
from lowbit.graph.passes.fuse_dequant import fuse_dequant
from lowbit.graph.passes.fuse_gate_up import fuse_gate_up
from lowbit.graph.passes.fuse_norm_quant import fuse_norm_quant
from lowbit.graph.passes.fuse_qkv import fuse_qkv
from lowbit.graph.passes.match_recipe import match_recipe
from lowbit.graph.passes.pack_weights import pack_weights
from lowbit.graph.passes.plan_memory import plan_memory
from lowbit.graph.passes.select_kernels import select_kernels
from lowbit.graph.passes.shard_tensor_parallel import shard_tensor_parallel
from lowbit.graph.verify import verify

GraphPass = Callable[[OpGraph, PassContext], OpGraph]

GRAPH_PIPELINE: list[tuple[str, GraphPass]] = [
    ("shard_tensor_parallel", shard_tensor_parallel),  # tensor_parallel > 1: one rank's shard + all_reduce nodes
    ("match_recipe", match_recipe),  # spec per linear from the recipe, kv_dtype per attention
    ("fuse_qkv", fuse_qkv),  # q/k/v_proj -> qkv_proj when their specs agree
    ("fuse_gate_up", fuse_gate_up),  # gate/up_proj -> gate_up_proj; silu_mul reads the fused output
    ("fuse_add_rms_norm", fuse_add_rms_norm),  # residual add + RMSNorm -> add_rms_norm
    ("fuse_norm_quant", fuse_norm_quant),  # W4A8: the norm also quantizes activations to int8
    ("fuse_dequant", fuse_dequant),  # quantized linears dequantize inside the GEMM/GEMV
    ("select_kernels", select_kernels),  # kernel per linear per token-count bucket
    ("pack_weights", pack_weights),  # weight layout for those kernels, packed bytes
    ("dce", dce),  # drop nodes that cannot reach the logits
    ("plan_memory", plan_memory),  # activation buffers by liveness
]


def optimize(
    g: OpGraph,
    ctx: PassContext,
    dump_dir: str | os.PathLike[str] | None = None,
    pipeline: Sequence[tuple[str, GraphPass]] = GRAPH_PIPELINE,
) -> OpGraph:
    """Run `pipeline` on `g` (see the module docstring); returns the optimized graph."""
    dump = dump_dir if dump_dir is not None else os.environ.get("LOWBIT_DUMP_GRAPH")
    verify(g)
    if dump:
        _dump(g, Path(dump), 0, "input")
    for i, (name, p) in enumerate(pipeline, start=1):
        new = p(g, ctx)
        if new is not g:
            verify(new)
            if dump:
                _dump(new, Path(dump), i, name)
        g = new
    return g


def _dump(g: OpGraph, directory: Path, index: int, stage: str) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    (directory / f"{index:02d}-{stage}.txt").write_text(g.to_text())


__all__ = ["GRAPH_PIPELINE", "GraphPass", "optimize"]
