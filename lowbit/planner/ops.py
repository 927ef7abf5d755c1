"""The operations of one decoder layer as the cost model sees them: kind, the shapes a device computes under
tensor parallelism of degree `tp`, FLOPs and bytes per token row at the real bit widths (`Precision`), and
which runtime graph nodes each stands for (`pattern`, so a searched plan becomes `PipelinePlan` rules).

    model_ops(arch, precision, tp)       -> ModelOps: the layer's ops in graph order + the head
    piece_work(op, a, b, workload)       -> Work: FLOPs, HBM bytes, network bytes of rows [a, b) of one op

Per layer and device (D hidden, q/kv the query/KV widths, I intermediate, ab activation bytes):
    input_norm   elementwise  (residual add +) RMSNorm: reads x and the residual, writes y and the sum: 4·D·ab
                              (2·D·ab with residual_epilogue: the add runs in the O / down GEMM epilogues)
    qkv          gemm         [rows, D] x [(q + 2kv)/tp, D]^T, weights read once per piece at stored width
    rope         elementwise  q and k rotated in place: 2·(q + kv)/tp·ab
    attn         attention    decode rows read `decode_context` cached K/V tokens each (memory-bound); prefill
                              rows attend causally within their chunk (compute-bound); 4·Hq/tp·hd FLOPs per
                              (row, context token); the row's own K/V is written to the cache
    o_proj       gemm         [rows, q/tp] x [D, q/tp]^T
    attn_allreduce collective (tp > 1) ring all-reduce of [rows, D]: 2(tp-1)/tp·D·ab bytes per row on the link
    post_norm    elementwise  residual add + RMSNorm: 4·D·ab
    gate_up      gemm         [rows, D] x [2I/tp, D]^T
    act          elementwise  silu(gate)·up: reads 2I/tp, writes I/tp
    down         gemm         [rows, I/tp] x [D, I/tp]^T
    mlp_allreduce collective  (tp > 1)
The head (after the last layer) is the final norm on every row and lm_head on the rows that sample.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from lowbit.graph.stats import kv_bytes_per_token
from lowbit.models.arch import ArchConfig
from lowbit.planner.precision import Precision
from lowbit.planner.workload import Workload

OpKind = Literal["gemm", "attention", "elementwise", "collective"]
OP_KINDS = ("gemm", "attention", "elementwise", "collective")
PREV = "prev."  # an input from the previous layer's op of that name
Q_TILE = 128  # prefill attention re-reads K/V once per tile of query rows (flash attention)

_L = r"model\.layers\.\d+\."
PATTERNS = {
    "input_norm": _L + r"(input_layernorm|mlp_residual)",
    "qkv": _L + r"self_attn\.(qkv|q|k|v)_proj",
    "rope": _L + r"self_attn\.rope",
    "attn": _L + r"self_attn\.attn",
    "o_proj": _L + r"self_attn\.o_proj",
    "post_norm": _L + r"(post_attention_layernorm|attn_residual)",
    "gate_up": _L + r"mlp\.(gate_up|gate|up)_proj",
    "act": _L + r"mlp\.act",
    "down": _L + r"mlp\.down_proj",
    "attn_allreduce": _L + r"self_attn\.o_proj\.all_reduce",  # lowbit/graph/passes/shard_tensor_parallel.py
    "mlp_allreduce": _L + r"mlp\.down_proj\.all_reduce",
}  # the runtime graph's node names (lowbit/graph/build.py, fused or not) of each op


@dataclass(frozen=True)
class OpSpec:
    name: str
    kind: OpKind
    inputs: tuple[str, ...] = ()  # producers: ops of this layer, or PREV + name for the previous layer's
    pattern: str | None = None  # runtime node names (full match); None: no graph node
    n: int = 0  # GEMM output features on this device
    k: int = 0  # GEMM input features on this device
    weight_bytes: int = 0  # read once per piece, at the stored width
    flops_per_row: float = 0.0
    bytes_per_row: float = 0.0  # activations read + written (and the row's K/V written), per row
    net_bytes_per_row: float = 0.0
    kv_bytes_per_ctx: float = 0.0  # attention: K and V bytes of one cached token (this layer, this device)
    attn_flops_per_ctx: float = 0.0  # attention: FLOPs per (row, context token)
    dtype: str = "bfloat16"  # the dtype its FLOPs run in
    rows: Literal["all", "seqs"] = "all"  # head ops after last_token run on one row per sequence

    def __post_init__(self) -> None:
        if self.kind not in OP_KINDS:
            raise ValueError(f"op {self.name}: kind {self.kind!r} is not one of {list(OP_KINDS)}")


@dataclass(frozen=True)
class Work:
    """What rows [a, b) of one op cost: the roofline's three resources, plus the GEMM shape for tiling."""

    kind: OpKind
    rows: int
    flops: float
    hbm_bytes: float
    net_bytes: float = 0.0
    dtype: str = "bfloat16"
    gemm_n: int = 0  # > 0 for GEMMs: output features (tiles of rows x gemm_n)

    def scaled(self, k: float) -> Work:
        return Work(
            self.kind, self.rows, self.flops * k, self.hbm_bytes * k, self.net_bytes * k, self.dtype, self.gemm_n
        )


@dataclass(frozen=True)
class ModelOps:
    name: str
    num_layers: int
    ops: tuple[OpSpec, ...]  # one decoder layer, in graph order
    head: tuple[OpSpec, ...]  # once per step after the layers (embedding gather, final norm, lm_head)
    num_params: int  # the model's parameters (NanoFlow's P_model)
    tp: int = 1
    precision: Precision = field(default_factory=Precision)

    def op(self, name: str) -> OpSpec:
        for o in self.ops:
            if o.name == name:
                return o
        raise KeyError(f"op {name!r} is not in the layer; it has {[o.name for o in self.ops]}")

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(o.name for o in self.ops)


def model_ops(
    arch: ArchConfig,
    precision: Precision | None = None,
    tp: int = 1,
    name: str = "",
    *,
    residual_epilogue: bool = False,
) -> ModelOps:
    """The per-layer ops of `arch` on one of `tp` tensor-parallel devices (Megatron split: QKV / gate-up
    column-parallel, O / down row-parallel, an all-reduce after each row-parallel GEMM).

    `residual_epilogue`: the residual add runs in the epilogue of the O / down GEMMs (C = the residual stream,
    beta = 1, as NanoFlow's pipeline does: efeslab/Nanoflow pipeline/src/pipeline.cu `O1->setC`, `D1->setC`,
    `D2->setC`), so those GEMMs read D·ab more per row and each norm streams 2·D·ab (read x, write y) instead
    of lowbit's fused add + RMSNorm's 4·D·ab (read x and the residual, write y and the sum)."""
    p = precision or Precision()
    if tp < 1 or arch.num_heads % tp or arch.intermediate_size % tp:
        raise ValueError(
            f"tp {tp}: must be >= 1 and divide num_heads {arch.num_heads} and intermediate_size "
            f"{arch.intermediate_size}"
        )
    ab, d, hd = p.act_bytes, arch.hidden_size, arch.head_dim
    heads = arch.num_heads // tp
    kv_heads = max(1, arch.num_kv_heads // tp)  # fewer KV heads than devices: each device keeps one (replicated)
    q, kv, inter = heads * hd, kv_heads * hd, arch.intermediate_size // tp
    kv_tok = kv_bytes_per_token(arch, p.kv_dtype) / arch.num_layers * kv_heads / arch.num_kv_heads
    cd = p.compute_dtype

    def gemm(name: str, n: int, k: int, inputs: tuple[str, ...]) -> OpSpec:
        c = n if residual_epilogue and name in ("o_proj", "down") else 0  # the residual read by the epilogue
        return OpSpec(name, "gemm", inputs, PATTERNS[name], n, k, p.weight_bytes(n, k), 2.0 * n * k,
                      float((n + k + c) * ab), dtype=cd)  # fmt: skip

    def elementwise(name: str, inputs: tuple[str, ...], nbytes: float, flops: float) -> OpSpec:
        return OpSpec(name, "elementwise", inputs, PATTERNS[name], flops_per_row=flops, bytes_per_row=nbytes,
                      dtype=p.act_dtype)  # fmt: skip

    def allreduce(name: str, inputs: tuple[str, ...]) -> OpSpec:
        net = 2.0 * (tp - 1) / tp * d * ab  # ring all-reduce: reduce-scatter + all-gather
        return OpSpec(name, "collective", inputs, PATTERNS[name], bytes_per_row=2.0 * d * ab, net_bytes_per_row=net,
                      flops_per_row=float(d), dtype=p.act_dtype)  # fmt: skip

    norm_bytes = (2.0 if residual_epilogue else 4.0) * d * ab
    last = "mlp_allreduce" if tp > 1 else "down"
    o_out = "attn_allreduce" if tp > 1 else "o_proj"
    ops = [
        elementwise("input_norm", (PREV + last, PREV + "post_norm"), norm_bytes, 5.0 * d),
        gemm("qkv", q + 2 * kv, d, ("input_norm",)),
        elementwise("rope", ("qkv",), 2.0 * (q + kv) * ab, 6.0 * (q + kv)),
        OpSpec(
            "attn",
            "attention",
            ("rope", "qkv"),
            PATTERNS["attn"],
            bytes_per_row=2.0 * q * ab + kv_tok,
            kv_bytes_per_ctx=kv_tok,
            attn_flops_per_ctx=4.0 * heads * hd,
            dtype=p.act_dtype,
        ),
        gemm("o_proj", d, q, ("attn",)),
    ]
    if tp > 1:
        ops.append(allreduce("attn_allreduce", ("o_proj",)))
    ops += [
        elementwise("post_norm", (o_out, "input_norm"), norm_bytes, 5.0 * d),
        gemm("gate_up", 2 * inter, d, ("post_norm",)),
        elementwise("act", ("gate_up",), 3.0 * inter * ab, 4.0 * inter),
        gemm("down", d, inter, ("act",)),
    ]
    if tp > 1:
        ops.append(allreduce("mlp_allreduce", ("down",)))
    vocab = -(-arch.vocab_size // tp)
    head = (
        OpSpec("embed", "elementwise", bytes_per_row=2.0 * d * ab, dtype=p.act_dtype),
        OpSpec("final_norm", "elementwise", bytes_per_row=4.0 * d * ab, flops_per_row=5.0 * d, dtype=p.act_dtype),
        OpSpec(
            "lm_head",
            "gemm",
            n=vocab,
            k=d,
            weight_bytes=vocab * d * ab,
            flops_per_row=2.0 * vocab * d,
            bytes_per_row=float((vocab + d) * ab),
            dtype=p.act_dtype,
            rows="seqs",
        ),
    )
    return ModelOps(name or arch.model_type, arch.num_layers, tuple(ops), head, arch.num_params, tp, p)


def piece_work(op: OpSpec, a: int, b: int, wl: Workload) -> Work:
    """Rows [a, b) of `op` in a step of workload `wl` (rows below wl.decode_tokens are decode rows)."""
    rows = b - a
    flops = op.flops_per_row * rows
    nbytes = op.bytes_per_row * rows + (op.weight_bytes if rows else 0)
    if op.kind == "attention" and rows:
        dec = max(0, min(b, wl.decode_tokens) - a)
        pre = rows - dec
        ctx_dec = float(wl.decode_context)
        ctx_pre = wl.prefill_mean_context()
        flops += op.attn_flops_per_ctx * (dec * ctx_dec + pre * ctx_pre)
        # decode: each row streams its context's K/V; prefill: K/V re-read once per Q_TILE query rows
        nbytes += op.kv_bytes_per_ctx * (dec * ctx_dec + pre * ctx_pre / Q_TILE)
    return Work(op.kind, rows, flops, nbytes, op.net_bytes_per_row * rows, op.dtype, op.n if op.kind == "gemm" else 0)


def head_work(mo: ModelOps, wl: Workload) -> list[tuple[str, Work]]:
    return [(o.name, piece_work(o, 0, wl.num_seqs if o.rows == "seqs" else wl.dense_batch, wl)) for o in mo.head]


__all__ = [
    "OP_KINDS",
    "PATTERNS",
    "PREV",
    "ModelOps",
    "OpKind",
    "OpSpec",
    "Work",
    "head_work",
    "model_ops",
    "piece_work",
]
