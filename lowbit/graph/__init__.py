"""lowbit.graph: the model as an op graph and the passes that optimize it (see README.md)."""

from lowbit.graph.build import build_graph
from lowbit.graph.context import PassContext
from lowbit.graph.graph import FrozenDict, GraphError, Node, OpGraph
from lowbit.graph.memory import MemoryPlan
from lowbit.graph.pipeline import GRAPH_PIPELINE, optimize
from lowbit.graph.verify import verify

__all__ = [
    "GRAPH_PIPELINE",
    "FrozenDict",
    "GraphError",
    "MemoryPlan",
    "Node",
    "OpGraph",
    "PassContext",
    "build_graph",
    "optimize",
    "verify",
]
