"""`lowbit.compiler.params`: the artifact's flat tensors back to params, values kept and every array a kernel
streams starting on a 64-byte line (NumPy's own copies start 16 bytes into one)."""

from __future__ import annotations

import numpy as np
import torch

from lowbit.compiler.params import flatten_params, unflatten_params
from lowbit.kernels.layouts import VECTOR_ALIGN
from lowbit.ops import quantize


def _offset_view(a: np.ndarray) -> np.ndarray:
    """A read-only copy of `a` whose data starts 16 bytes past a 64-byte line, as a reader's map might give."""
    raw = np.empty(a.nbytes + 2 * VECTOR_ALIGN, np.uint8)
    start = (-raw.ctypes.data % VECTOR_ALIGN) + 16
    out = raw[start : start + a.nbytes].view(a.dtype).reshape(a.shape)
    out[...] = a
    out.setflags(write=False)
    return out


def test_round_trip_keeps_values_and_aligns_every_array():
    rng = np.random.default_rng(0)
    qw = quantize(rng.standard_normal((64, 256)).astype(np.float32), "int4", group_size=128)
    norm = rng.standard_normal(256).astype(np.float32)
    tensors, index = flatten_params({"w": qw, "norm": torch.from_numpy(norm)})
    offset = {k: _offset_view(v.numpy()) for k, v in tensors.items()}
    for a in offset.values():
        assert a.ctypes.data % VECTOR_ALIGN == 16
    params = unflatten_params(offset, index, torch.float32)
    back = params["w"]
    np.testing.assert_array_equal(back.codes(), qw.codes())
    np.testing.assert_array_equal(back.dequantize(), qw.dequantize())
    np.testing.assert_array_equal(params["norm"].numpy(), norm)
    assert params["norm"].data_ptr() % VECTOR_ALIGN == 0
    for a in (back.words, back.scales):
        assert a.ctypes.data % VECTOR_ALIGN == 0 and a.flags.writeable
