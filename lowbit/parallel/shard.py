"""Cutting the quantized, unsharded parameters into one rank's shard (compile time; never re-quantized).

Column-parallel linears (`parallel="column"`: q/k/v, gate/up, fused or not) keep rank r's rows of every
split: a fused [Wq; Wk; Wv] of per-rank splits (sq, sk, sv) keeps rows [r·sq, (r+1)·sq) of Wq, then of Wk and
Wv, concatenated — the fused weight of rank r's heads. Row-parallel linears (`parallel="row"`: o, down) keep
columns [r·K', (r+1)·K') with K' = K / tp a whole number of weight groups, so codes, scales and zeros are
sliced as stored: every rank's Ŵ is exactly a block of the unsharded Ŵ. Their bias is rank 0's alone
(zeros elsewhere: the all_reduce adds it once). Everything else is replicated.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch

from lowbit.kernels.layouts import weight_layout
from lowbit.models.arch import ArchConfig
from lowbit.ops.weight import QuantizedWeight


def local_arch(arch: ArchConfig, tp: int) -> ArchConfig:
    """The architecture one rank holds: heads, KV heads and MLP width / tp (hidden size, vocab unchanged);
    what a rank's KV cache is sized by."""
    if tp == 1:
        return arch
    return dataclasses.replace(
        arch,
        num_heads=arch.num_heads // tp,
        num_kv_heads=arch.num_kv_heads // tp,
        intermediate_size=arch.intermediate_size // tp,
    )


def column_rows(splits: Sequence[int], rank: int, tp: int) -> np.ndarray:
    """Rows of the unsharded (fused) weight that rank `rank` keeps: `splits` are the per-rank sizes of the
    fused parts; part i spans rows [off_i, off_i + tp·s_i) of the unsharded weight."""
    rows, off = [], 0
    for s in splits:
        rows.append(np.arange(off + rank * s, off + (rank + 1) * s))
        off += tp * s
    return np.concatenate(rows)


def slice_quantized(
    qw: QuantizedWeight,
    rows: np.ndarray | None = None,
    cols: tuple[int, int] | None = None,
    layout: str = "row",
    tile: tuple[int, int] | None = None,
) -> QuantizedWeight:
    """The sub-weight of `qw` (shape [N, K]) of output rows `rows` and input columns [k0, k1), packed in
    `layout`. Codes, scales, zeros and channel scales are sliced, never re-quantized: the result's
    dequantize() equals `qw.dequantize()[rows][:, k0:k1]` exactly. Raises ValueError when [k0, k1) cuts a
    weight group."""
    codes = qw.codes()  # [K, N]
    scales, zeros, cs = qw.scales, qw.zeros, qw.channel_scales  # [groups, N], [groups, N], [N]
    if rows is not None:
        codes, scales = codes[:, rows], scales[:, rows]
        zeros = None if zeros is None else zeros[:, rows]
        cs = None if cs is None else cs[rows]
    if cols is not None:
        k0, k1 = cols
        g = qw.group_size
        if not 0 <= k0 < k1 <= qw.in_features:
            raise ValueError(f"columns [{k0}, {k1}) are not inside in_features {qw.in_features}")
        if g != -1:
            if k0 % g or k1 % g:
                raise ValueError(
                    f"columns [{k0}, {k1}) cut a weight group of group_size {g}; shard K at multiples of {g} "
                    "(a tensor_parallel whose K / tp is a multiple of the group size)"
                )
            scales = scales[k0 // g : k1 // g]
            zeros = None if zeros is None else zeros[k0 // g : k1 // g]
        codes = codes[k0:k1]  # per channel (g = -1): one scale per column serves every K slice
    k, n = codes.shape
    lay = weight_layout(layout, (k, n), qw.dtype.bits, tile)
    return QuantizedWeight(
        qw.dtype, qw.group_size, qw.zero_mode, (n, k), lay, lay.pack(np.ascontiguousarray(codes)),
        np.ascontiguousarray(scales), None if zeros is None else np.ascontiguousarray(zeros), qw.scheme,
        None if cs is None else np.ascontiguousarray(cs),
    )  # fmt: skip


def _slice_dense(t: torch.Tensor, rows: np.ndarray | None, cols: tuple[int, int] | None) -> torch.Tensor:
    if rows is not None:
        t = t.index_select(0, torch.from_numpy(rows))
    if cols is not None:
        t = t[..., cols[0] : cols[1]]
    return t.contiguous().clone()


def shard_param(p: Any, node: Any, key: str, rank: int, tp: int) -> Any:
    """Rank `rank`'s part of the unsharded param `p`, the `key` ("weight" | "bias") of the sharded graph's
    linear `node` (by its `parallel` attr; replicated when it has none)."""
    a = node.attrs_dict
    kind = a.get("parallel")
    rows: np.ndarray | None = None
    cols: tuple[int, int] | None = None
    if kind == "column":
        rows = column_rows([int(s) for s in a["splits"]], rank, tp)
    elif kind == "row":
        if key == "bias":  # added once, by rank 0
            return p if rank == 0 else torch.zeros_like(p)
        k = int(a["in_features"])
        cols = (rank * k, (rank + 1) * k)
    else:
        return p
    if isinstance(p, QuantizedWeight):
        from lowbit.compiler.params import layout_name

        _, tile = layout_name(p)
        return slice_quantized(p, rows, cols, str(a.get("layout") or "row"), tile)
    return _slice_dense(p, rows, cols)


def shard_params(graph: Any, params: Mapping[str, Any], rank: int, tp: int) -> dict[str, Any]:
    """name -> rank `rank`'s param for every param the sharded `graph` reads, cut from the unsharded
    `params` (quantized by the unsharded graph: same names, fused alike)."""
    out: dict[str, Any] = {}
    for node in graph.nodes_in_order():
        attrs = node.attrs_dict
        for key in ("weight", "bias"):
            name = attrs.get(key)
            if name is None or name in out:
                continue
            if name not in params:
                raise KeyError(f"the sharded graph reads {name!r}, which the unsharded params lack")
            out[name] = shard_param(params[name], node, key, rank, tp) if node.op == "linear" else params[name]
    return out


__all__ = ["column_rows", "local_arch", "shard_param", "shard_params", "slice_quantized"]
