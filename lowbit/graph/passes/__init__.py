"""Graph passes: pure functions (OpGraph, PassContext) -> OpGraph, one per file, each returning its input
object when nothing changed. The pipeline is lowbit.graph.pipeline.GRAPH_PIPELINE."""

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

__all__ = [
    "dce",
    "fuse_add_rms_norm",
    "fuse_dequant",
    "fuse_gate_up",
    "fuse_norm_quant",
    "fuse_qkv",
    "match_recipe",
    "pack_weights",
    "plan_memory",
    "select_kernels",
    "shard_tensor_parallel",
]
