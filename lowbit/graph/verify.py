"""`verify(g)`: the graph contract as rules — every op is one the executor implements, with its number of
inputs and outputs and its attrs present. SSA and definition-before-use are checked by `OpGraph` itself.
Errors name the node, what is wrong and the fix."""

from __future__ import annotations

from dataclasses import dataclass

from lowbit.graph.graph import GraphError, Node, OpGraph


@dataclass(frozen=True)
class OpSignature:
    inputs: tuple[int, ...]  # allowed input counts
    outputs: tuple[int, ...]  # allowed output counts
    attrs: tuple[str, ...]  # required attrs


_NORM = ("weight", "eps")
_LINEAR = ("weight", "bias", "modules", "splits", "spec", "kernels", "layout", "act_quant_fused")
_HEADS = ("num_heads", "num_kv_heads", "head_dim")

OPS: dict[str, OpSignature] = {
    "embedding": OpSignature((1,), (1,), ("weight",)),
    "rms_norm": OpSignature((1,), (1,), _NORM),
    "add": OpSignature((2,), (1,), ()),
    "add_rms_norm": OpSignature((2,), (2,), _NORM),
    "rms_norm_quant": OpSignature((1,), (2,), _NORM),
    "add_rms_norm_quant": OpSignature((2,), (3,), _NORM),
    "linear": OpSignature((1, 2), (1, 2, 3), _LINEAR),
    "rope": OpSignature((3,), (2,), (*_HEADS, "style", "theta", "scaling")),
    "attention": OpSignature((3,), (1,), ("layer", *_HEADS, "sm_scale", "kv_dtype")),
    "silu_mul": OpSignature((1, 2), (1,), ()),
    "last_token": OpSignature((1,), (1,), ()),
    "all_reduce": OpSignature((1,), (1,), ("world_size",)),
}


def _check_linear(n: Node) -> None:
    modules, splits, spec = n.attr("modules"), n.attr("splits"), n.attr("spec")
    if len(modules) != len(splits) or not modules:
        raise GraphError(f"node {n.name}: modules {modules} and splits {splits} must pair up one to one")
    if len(n.outputs) not in (1, len(splits)):
        raise GraphError(
            f"node {n.name}: {len(n.outputs)} outputs for splits {splits}; a linear writes one tensor or one per split"
        )
    fused = n.attr("act_quant_fused")
    if fused and (spec is None or not spec.act_int8):
        raise GraphError(f"node {n.name}: act_quant_fused=True but spec {spec} does not take int8 activations")
    if len(n.inputs) != (2 if fused else 1):
        raise GraphError(
            f"node {n.name}: act_quant_fused={fused} needs {'(xq, xs)' if fused else '(x,)'} inputs, got {n.inputs}"
        )


def verify(g: OpGraph) -> OpGraph:
    """Check every node against OPS (and linears' attr consistency); returns g. Raises GraphError."""
    for n in g.nodes_in_order():
        sig = OPS.get(n.op)
        if sig is None:
            raise GraphError(f"node {n.name}: op {n.op!r} is not in the graph contract; use one of {sorted(OPS)}")
        if len(n.inputs) not in sig.inputs or len(n.outputs) not in sig.outputs:
            raise GraphError(
                f"node {n.name} ({n.op}) has {len(n.inputs)} inputs / {len(n.outputs)} outputs; the op takes "
                f"{' or '.join(map(str, sig.inputs))} / {' or '.join(map(str, sig.outputs))}"
            )
        missing = [a for a in sig.attrs if not n.has_attr(a)]
        if missing:
            raise GraphError(f"node {n.name} ({n.op}) lacks attrs {missing}; build it with lowbit.graph.build helpers")
        if n.op == "linear":
            _check_linear(n)
    return g


__all__ = ["OPS", "OpSignature", "verify"]
