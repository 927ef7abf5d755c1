"""`Node` and `OpGraph`: the model as a graph of ops over named activation tensors (the graph contract,
lowbit/graph/README.md).

A `Node` is a frozen value: name, op, input and output tensor names, attrs (an ordered tuple of
(key, value) pairs, values hashable) and the decoder layer it belongs to (None outside the layers).
An `OpGraph` is a frozen value too: the nodes in execution order, the graph inputs and outputs, and `meta`
(a `FrozenDict` of facts passes attach: "fused_params", "memory_plan", "notes", ...). Every tensor is
produced by exactly one node or is a graph input (SSA), and every node's inputs are defined by an earlier
node or are graph inputs: the constructor checks both and names the offending node.

Rewrites build a new graph (`replace_nodes`, `with_meta`); `nodes_in_order()` is the order passes keep
(a fused node takes the place of the first node it replaces; if that would read a tensor before it is
defined, the order is repaired by a stable topological sort). `nx` is the networkx.DiGraph view
(node name -> node name edges labelled with the tensor), built on demand.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

import networkx as nx

GRAPH_INPUTS = ("input_ids", "positions")
GRAPH_OUTPUTS = ("logits",)


class GraphError(ValueError):
    """The graph breaks an invariant (SSA, use before definition, unknown node); the message names it."""


class FrozenDict(dict[Any, Any]):
    """A dict that cannot change and hashes by its items: attrs such as RoPE's HF `scaling` dict and the
    graph's `meta` stay plain mappings for readers (`dict(x)`, `x.get`) while nodes remain hashable values."""

    def __hash__(self) -> int:  # type: ignore[override]
        return hash(tuple(sorted(self.items(), key=lambda kv: str(kv[0]))))

    def _frozen(self, *args: Any, **kwargs: Any) -> Any:
        raise TypeError("FrozenDict cannot be modified; build a new one (FrozenDict({**old, key: value}))")

    __setitem__ = __delitem__ = clear = pop = popitem = setdefault = update = _frozen
    __ior__ = _frozen

    def __repr__(self) -> str:
        return f"FrozenDict({dict.__repr__(self)})"

    def __reduce__(self) -> Any:  # pickle / copy rebuild through the constructor (no __setitem__)
        return (FrozenDict, (dict(self),))


def freeze_value(v: Any) -> Any:
    """A hashable stand-in for an attr value: dicts become FrozenDicts, lists tuples (recursively)."""
    if isinstance(v, FrozenDict):
        return v
    if isinstance(v, Mapping):
        return FrozenDict({k: freeze_value(x) for k, x in v.items()})
    if isinstance(v, (list, tuple)):
        return tuple(freeze_value(x) for x in v)
    return v


@dataclass(frozen=True)
class Node:
    name: str
    op: str
    inputs: tuple[str, ...]
    outputs: tuple[str, ...]
    attrs: tuple[tuple[str, Any], ...] = ()
    layer: int | None = None

    @staticmethod
    def create(
        name: str,
        op: str,
        inputs: Iterable[str],
        outputs: Iterable[str],
        layer: int | None = None,
        /,
        **attrs: Any,
    ) -> Node:
        """A node with attrs given as keywords (kept in the order given; values frozen to be hashable).
        `layer` (the node's decoder layer) is positional, so an attr may also be called "layer"."""
        return Node(
            name, op, tuple(inputs), tuple(outputs), tuple((k, freeze_value(v)) for k, v in attrs.items()), layer
        )

    @property
    def attrs_dict(self) -> dict[str, Any]:
        return dict(self.attrs)

    def attr(self, key: str, default: Any = None) -> Any:
        for k, v in self.attrs:
            if k == key:
                return v
        return default

    def has_attr(self, key: str) -> bool:
        return any(k == key for k, _ in self.attrs)

    def with_attrs(self, **updates: Any) -> Node:
        """This node with attrs replaced or appended; returns `self` when every value is already equal."""
        frozen = {k: freeze_value(v) for k, v in updates.items()}
        if all(self.has_attr(k) and _same(self.attr(k), v) for k, v in frozen.items()):
            return self
        attrs = [(k, frozen.pop(k) if k in frozen else v) for k, v in self.attrs]
        attrs.extend(frozen.items())
        return Node(self.name, self.op, self.inputs, self.outputs, tuple(attrs), self.layer)

    def with_io(self, inputs: Iterable[str] | None = None, outputs: Iterable[str] | None = None) -> Node:
        ins = self.inputs if inputs is None else tuple(inputs)
        outs = self.outputs if outputs is None else tuple(outputs)
        if ins == self.inputs and outs == self.outputs:
            return self
        return Node(self.name, self.op, ins, outs, self.attrs, self.layer)


def _same(a: Any, b: Any) -> bool:
    return (type(a) is type(b) and a == b) or a is b


@dataclass(frozen=True, eq=False)
class OpGraph:
    """The op graph (see the module docstring). Build with `OpGraph.create(nodes, ...)`; compares by
    identity (passes return the same object when nothing changed), `same_as` compares structurally."""

    nodes: tuple[Node, ...]
    inputs: tuple[str, ...] = GRAPH_INPUTS
    outputs: tuple[str, ...] = GRAPH_OUTPUTS
    meta: FrozenDict = field(default_factory=FrozenDict)
    name: str = "model"
    _by_name: dict[str, Node] = field(init=False, repr=False)
    _producer: dict[str, str] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        by_name: dict[str, Node] = {}
        producer: dict[str, str] = {}
        defined = set(self.inputs)
        for node in self.nodes:
            if not isinstance(node, Node):
                raise GraphError(f"graph node {node!r} is a {type(node).__name__}; build nodes with Node.create")
            if node.name in by_name:
                raise GraphError(f"two nodes are named {node.name!r}; node names must be unique")
            by_name[node.name] = node
            for t in node.inputs:
                if t not in defined:
                    later = next((n.name for n in self.nodes if t in n.outputs), None)
                    where = "never defined" if later is None else f"defined later by {later}"
                    raise GraphError(
                        f"node {node.name} ({node.op}) reads %{t}, which is {where}; every input must be a graph "
                        f"input {list(self.inputs)} or an output of an earlier node"
                    )
            for t in node.outputs:
                if t in defined:
                    first = producer.get(t, "the graph inputs")
                    raise GraphError(
                        f"tensor %{t} is written by node {node.name} and by {first}; every tensor has exactly one "
                        f"producer (SSA): rename one output"
                    )
                defined.add(t)
                producer[t] = node.name
        for t in self.outputs:
            if t not in defined:
                raise GraphError(f"graph output %{t} is never defined; some node must produce it")
        if not isinstance(self.meta, FrozenDict):
            object.__setattr__(self, "meta", freeze_value(dict(self.meta)))
        object.__setattr__(self, "_by_name", by_name)
        object.__setattr__(self, "_producer", producer)

    @staticmethod
    def create(
        nodes: Iterable[Node],
        inputs: Iterable[str] = GRAPH_INPUTS,
        outputs: Iterable[str] = GRAPH_OUTPUTS,
        meta: Mapping[str, Any] | None = None,
        name: str = "model",
    ) -> OpGraph:
        return OpGraph(tuple(nodes), tuple(inputs), tuple(outputs), freeze_value(dict(meta or {})), name)

    # -- queries -------------------------------------------------------------------------------------------
    def nodes_in_order(self) -> list[Node]:
        return list(self.nodes)

    def __iter__(self) -> Iterator[Node]:
        return iter(self.nodes)

    def __len__(self) -> int:
        return len(self.nodes)

    def __contains__(self, name: object) -> bool:
        return name in self._by_name

    def node(self, name: str) -> Node:
        try:
            return self._by_name[name]
        except KeyError:
            raise GraphError(f"the graph has no node {name!r}; its nodes are listed by g.to_text()") from None

    def producer(self, tensor: str) -> Node | None:
        """The node that writes `tensor`, or None for a graph input."""
        name = self._producer.get(tensor)
        return None if name is None else self.node(name)

    def consumers(self, tensor: str) -> list[Node]:
        """Nodes reading `tensor`, in order."""
        index = self.__dict__.get("_consumers")
        if index is None:
            index = {}
            for n in self.nodes:
                for t in dict.fromkeys(n.inputs):
                    index.setdefault(t, []).append(n)
            object.__setattr__(self, "_consumers", index)
        return list(index.get(tensor, ()))

    def tensors(self) -> list[str]:
        """Every tensor: graph inputs, then node outputs in order."""
        return [*self.inputs, *(t for n in self.nodes for t in n.outputs)]

    def same_as(self, other: OpGraph) -> bool:
        return (self.nodes, self.inputs, self.outputs, self.meta, self.name) == (
            other.nodes,
            other.inputs,
            other.outputs,
            other.meta,
            other.name,
        )

    @property
    def nx(self) -> nx.DiGraph:
        """networkx view: a vertex per node (attr `node`), an edge producer -> consumer (attr `tensors`)."""
        cached = self.__dict__.get("_nx")
        if cached is not None:
            return cached
        g = nx.DiGraph(name=self.name)
        for n in self.nodes:
            g.add_node(n.name, node=n)
        for n in self.nodes:
            for t in n.inputs:
                p = self._producer.get(t)
                if p is not None:
                    if g.has_edge(p, n.name):
                        g.edges[p, n.name]["tensors"] += (t,)
                    else:
                        g.add_edge(p, n.name, tensors=(t,))
        object.__setattr__(self, "_nx", g)
        return g

    # -- rewrites (each returns a new graph, or self when nothing changed) ---------------------------------
    def replace_nodes(self, removed: Iterable[str], added: Iterable[Node] = ()) -> OpGraph:
        """Remove the nodes named in `removed` and put `added` where the first removed node was. Renaming
        tensors is the caller's job: the new graph is checked, and re-ordered stably if a new node would
        otherwise read a tensor too early."""
        return self.replace_groups([(removed, added)])

    def replace_groups(self, groups: Iterable[tuple[Iterable[str], Iterable[Node]]]) -> OpGraph:
        """`replace_nodes` for several disjoint (removed, added) groups at once (one new graph, not one per
        group: a pass fusing every layer stays linear in the graph size)."""
        at: dict[int, list[Node]] = {}
        gone: set[str] = set()
        index = {n.name: i for i, n in enumerate(self.nodes)}
        for removed, added in groups:
            removed, added = list(removed), list(added)
            for r in removed:
                self.node(r)
                if r in gone:
                    raise GraphError(f"node {r} is removed by two rewrite groups; groups must be disjoint")
            gone.update(removed)
            at.setdefault(min((index[r] for r in removed), default=len(self.nodes)), []).extend(added)
        if not gone and not any(at.values()):
            return self
        nodes: list[Node] = []
        for i, n in enumerate(self.nodes):
            nodes.extend(at.get(i, ()))
            if n.name not in gone:
                nodes.append(n)
        nodes.extend(at.get(len(self.nodes), ()))
        if len(nodes) == len(self.nodes) and all(a is b for a, b in zip(nodes, self.nodes)):
            return self
        return self._with_nodes(_stable_order(nodes, self.inputs))

    def substitute(self, new: Mapping[str, Node]) -> OpGraph:
        """Replace the nodes named by `new`'s keys, each in its place, by `new`'s values (all at once, so
        a rewrite may rename a tensor in its producer and its readers together)."""
        for name in new:
            self.node(name)
        return self.map_nodes(lambda n: new.get(n.name, n))

    def map_nodes(self, fn: Any) -> OpGraph:
        """Apply `fn(node) -> node` to every node (same name); self when `fn` returned every node unchanged."""
        nodes = [fn(n) for n in self.nodes]
        if all(a is b for a, b in zip(nodes, self.nodes)):
            return self
        return self._with_nodes(_stable_order(nodes, self.inputs))

    def with_meta(self, **updates: Any) -> OpGraph:
        """This graph with meta keys replaced or added; self when every value is already equal."""
        if all(k in self.meta and _same(self.meta[k], freeze_value(v)) for k, v in updates.items()):
            return self
        meta = {**self.meta, **{k: freeze_value(v) for k, v in updates.items()}}
        return OpGraph(self.nodes, self.inputs, self.outputs, FrozenDict(meta), self.name)

    def with_note(self, note: str) -> OpGraph:
        """Append a line to meta["notes"] (why a pass left something alone); self if it is already there."""
        notes = tuple(self.meta.get("notes", ()))
        return self if note in notes else self.with_meta(notes=(*notes, note))

    def _with_nodes(self, nodes: Iterable[Node]) -> OpGraph:
        return OpGraph(tuple(nodes), self.inputs, self.outputs, self.meta, self.name)

    # -- printing (lowbit/graph/printer.py) ----------------------------------------------------------------
    def to_text(self) -> str:
        from lowbit.graph.printer import graph_text

        return graph_text(self)

    def to_dot(self) -> str:
        from lowbit.graph.printer import graph_dot

        return graph_dot(self)

    def to_png(self, path: Any) -> None:
        from lowbit.graph.printer import graph_png

        graph_png(self, path)

    def __str__(self) -> str:
        return self.to_text()


def _stable_order(nodes: list[Node], inputs: tuple[str, ...]) -> list[Node]:
    # keep `nodes` as they are when every input is defined before use, else a stable topological sort
    defined = set(inputs)
    ok = True
    for n in nodes:
        if any(t not in defined for t in n.inputs):
            ok = False
            break
        defined.update(n.outputs)
    if ok:
        return nodes
    index = {n.name: i for i, n in enumerate(nodes)}
    producer = {t: n.name for n in nodes for t in n.outputs}
    dag = nx.DiGraph()
    dag.add_nodes_from(index)
    dag.add_edges_from((producer[t], n.name) for n in nodes for t in n.inputs if t in producer)
    try:
        order = list(nx.lexicographical_topological_sort(dag, key=index.__getitem__))
    except nx.NetworkXUnfeasible:
        cycle = nx.find_cycle(dag)
        raise GraphError(f"the rewrite made a cycle through nodes {[e[0] for e in cycle]}; a fusion is wrong") from None
    by_name = {n.name: n for n in nodes}
    return [by_name[name] for name in order]


__all__ = ["GRAPH_INPUTS", "GRAPH_OUTPUTS", "FrozenDict", "GraphError", "Node", "OpGraph", "freeze_value"]
