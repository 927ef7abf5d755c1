"""Model parameters in the artifact: dense tensors and `QuantizedWeight`s in one safetensors file + an index.

    weights/model.safetensors   dense params under their names; a quantized weight W under
                                W::words, W::scales [, W::zeros] [, W::channel_scales]
    weights/index.json          {name: {"kind": "dense"} | {"kind": "quantized", "dtype", "group_size",
                                 "zero_mode", "scheme", "shape": [N, K], "layout": "row" | "reordered",
                                 "tile": [BK, BN]}}
No pickle: the layout is rebuilt from its name and tile by `lowbit.kernels.layouts.weight_layout`, and the
words are checked against it on load.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import torch

from lowbit.dtypes import dtype as as_dtype
from lowbit.kernels.layouts import default_tile, reordered_packed, row_packed, weight_layout
from lowbit.ops.weight import QuantizedWeight

WEIGHTS_FILE = "weights/model.safetensors"
INDEX_FILE = "weights/index.json"
_SEP = "::"


def weights_file(tensor_parallel: int = 1, rank: int = 0) -> str:
    """The weights file of `rank`: WEIGHTS_FILE unsharded; `weights/rank{r}.safetensors` for each rank of a
    tensor-parallel artifact (one index.json serves every rank: same names, kinds and shapes)."""
    if tensor_parallel == 1:
        return WEIGHTS_FILE
    if not 0 <= rank < tensor_parallel:
        raise ValueError(
            f"rank {rank} is not one of the {tensor_parallel} ranks of this artifact; use 0..{tensor_parallel - 1}"
        )
    return f"weights/rank{rank}.safetensors"


def layout_name(qw: QuantizedWeight, tile: tuple[int, int] | None = None) -> tuple[str, tuple[int, int]]:
    """("row" | "reordered", tile) naming `qw.layout`; a reordered layout is matched against `tile` or, when
    None, `default_tile(bits)` (what `quantize(layout="reordered")` builds; (128, 32) where 128 codes are
    whole 16-byte fragments)."""
    n, k = qw.shape
    bits = qw.dtype.bits
    tile = default_tile(bits) if tile is None else tile
    if qw.layout == row_packed((k, n), bits):
        return "row", tile
    if qw.layout == reordered_packed((k, n), bits, tile):
        return "reordered", tile
    raise ValueError(f"the layout of this weight ({qw.layout}) has no name; pack it 'row' or 'reordered'")


def flatten_params(params: Mapping[str, Any]) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """(tensors for safetensors, index) of a name -> torch tensor | QuantizedWeight mapping."""
    tensors: dict[str, torch.Tensor] = {}
    index: dict[str, Any] = {}
    for name, p in params.items():
        if _SEP in name:
            raise ValueError(f"parameter name {name!r} contains {_SEP!r}, which the artifact reserves")
        if isinstance(p, QuantizedWeight):
            kind, tile = layout_name(p)
            index[name] = {
                "kind": "quantized",
                "dtype": p.dtype.name,
                "group_size": p.group_size,
                "zero_mode": p.zero_mode,
                "scheme": p.scheme,
                "shape": list(p.shape),
                "layout": kind,
                "tile": list(tile),
            }
            parts = {"words": p.words, "scales": p.scales, "zeros": p.zeros, "channel_scales": p.channel_scales}
            for part, arr in parts.items():
                if arr is not None:
                    tensors[f"{name}{_SEP}{part}"] = torch.from_numpy(np.ascontiguousarray(arr))
        else:
            t = p if isinstance(p, torch.Tensor) else torch.from_numpy(np.ascontiguousarray(p))
            tensors[name] = t.contiguous()
            index[name] = {"kind": "dense"}
    return tensors, index


def unflatten_params(tensors: Mapping[str, torch.Tensor], index: Mapping[str, Any], dtype: torch.dtype) -> dict:
    """The inverse of `flatten_params`; dense params are cast to the compute `dtype` (norm weights too)."""
    out: dict[str, Any] = {}
    for name, info in index.items():
        kind = info.get("kind")
        if kind == "dense":
            if name not in tensors:
                raise ValueError(f"weights index lists {name!r} but the weights file lacks it; re-run lowbit compile")
            out[name] = _as_torch(tensors[name]).to(dtype).contiguous()
        elif kind == "quantized":
            dt = as_dtype(info["dtype"])
            n, k = info["shape"]
            lay = weight_layout(info["layout"], (k, n), dt.bits, tuple(info["tile"]))

            def part(p: str, required: bool = True, name: str = name) -> np.ndarray | None:
                key = f"{name}{_SEP}{p}"
                if key not in tensors:
                    if required:
                        raise ValueError(f"quantized weight {name!r} lacks its {p!r} tensor; re-run lowbit compile")
                    return None
                t = tensors[key]
                return t.numpy() if isinstance(t, torch.Tensor) else np.asarray(t)

            words = part("words")
            assert words is not None
            if tuple(words.shape) != tuple(int(w) for w in lay.word_shape):
                raise ValueError(
                    f"quantized weight {name!r}: words {list(words.shape)} do not match its {info['layout']} layout "
                    f"{list(lay.word_shape)}; the artifact is inconsistent, re-run lowbit compile"
                )
            scales = part("scales")
            assert scales is not None
            out[name] = QuantizedWeight(
                dt,
                int(info["group_size"]),
                str(info["zero_mode"]),
                (int(n), int(k)),
                lay,
                words,
                scales,
                part("zeros", False),
                str(info["scheme"]),
                part("channel_scales", False),
            )
        else:
            raise ValueError(f"weights index entry {name!r} has kind {kind!r}; expected 'dense' or 'quantized'")
    return out


def _as_torch(a: Any) -> torch.Tensor:
    if isinstance(a, torch.Tensor):
        return a
    a = np.asarray(a)
    if a.dtype.name == "bfloat16":  # ml_dtypes: torch has no numpy bf16 interop; float32 holds it exactly
        return torch.from_numpy(a.astype(np.float32)).to(torch.bfloat16)
    return torch.tensor(a)  # a writable copy (the reader may hand out read-only maps) in torch's 64-byte-aligned memory


def bits_per_weight(params: Mapping[str, Any]) -> tuple[float, int, int]:
    """(average stored bits per linear weight element incl. scales/zeros, elements, bytes) over QuantizedWeights
    and dense 2-D params."""
    elems = 0
    nbytes = 0
    for p in params.values():
        if isinstance(p, QuantizedWeight):
            elems += p.shape[0] * p.shape[1]
            nbytes += sum(a.nbytes for a in (p.words, p.scales, p.zeros, p.channel_scales) if a is not None)
        elif getattr(p, "ndim", 0) == 2:
            elems += p.numel()
            nbytes += p.numel() * p.element_size()
    return (8.0 * nbytes / elems if elems else 0.0), elems, nbytes


__all__ = [
    "INDEX_FILE",
    "WEIGHTS_FILE",
    "bits_per_weight",
    "flatten_params",
    "layout_name",
    "unflatten_params",
    "weights_file",
]
