"""The torch dequantize-then-matmul baseline computes x @ dequant(W)^T with W close to the float weight."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from lowbit.bench.naive import naive_dequantize, naive_linear, pack_naive


@pytest.mark.parametrize(("name", "tol"), [("int8", 0.01), ("int4", 0.15), ("int3", 0.3), ("fp6_e3m2", 0.1)])
def test_naive_roundtrip(name, tol):
    w = torch.randn(48, 256, generator=torch.Generator().manual_seed(0))
    p = pack_naive(w, name, group_size=64)
    assert p.words.dtype == torch.int32 and p.words.shape == (48, -(-256 // (32 // p.bits)))
    wd = naive_dequantize(p)
    assert float((wd - w).norm() / w.norm()) < tol
    x = torch.randn(3, 256)
    np.testing.assert_allclose(naive_linear(x, p).numpy(), (x @ wd.T).numpy(), rtol=1e-5, atol=1e-5)


def test_naive_rejects_group_that_does_not_divide_k():
    with pytest.raises(ValueError, match="group_size 96 does not divide K=256"):
        pack_naive(torch.zeros(4, 256), "int4", group_size=96)


def test_naive_dequantize_stays_on_the_words_device():
    # the GPU bench moves the packing to CUDA: every tensor the dequantization makes must be made there too
    # (a CPU shift table stopped the first H200 run); the meta device stands in for CUDA here
    import dataclasses

    p = pack_naive(torch.randn(8, 128, generator=torch.Generator().manual_seed(1)), "int4", group_size=64)
    moved = {f.name: getattr(p, f.name) for f in dataclasses.fields(p)}
    moved = {k: v.to("meta") if isinstance(v, torch.Tensor) else v for k, v in moved.items()}
    wd = naive_dequantize(dataclasses.replace(p, **moved))
    assert wd.device.type == "meta" and tuple(wd.shape) == (8, 128)
