"""SwiGLU's elementwise part (`lowbit.kernels.activation.silu_mul`) against float64 NumPy: fp32 math, one
rounding to the activation dtype (bound: 2 ulps of the dtype plus fp32's relative 1e-6 for exp)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from lowbit.kernels.activation import silu_mul_launcher

BOUND = {"float32": 2e-6, "float16": 2 * 2.0**-11, "bfloat16": 2 * 2.0**-8}


@pytest.mark.parametrize("backend", ["reference", "tvm"])
@pytest.mark.parametrize("dtype", ["float32", "float16", "bfloat16"])
@pytest.mark.parametrize("rows, di", [(1, 2048), (3, 1500)])  # 1500: a ragged last chunk of 1024
def test_silu_mul_matches_float64(backend, dtype, rows, di):
    if backend == "reference" and (di > 1500 or dtype == "bfloat16"):
        pytest.skip("the interpreter: slow, and it takes no torch bf16 tensors; the ragged fp32/fp16 case only")
    x = (torch.randn(rows, 2 * di) * 4).to(getattr(torch, dtype))
    out = torch.full((rows, di), float("nan"), dtype=x.dtype)
    silu_mul_launcher(dtype, backend)(x, out)
    g, u = x.double().numpy()[:, :di], x.double().numpy()[:, di:]
    ref = g / (1 + np.exp(-g)) * u
    got = out.double().numpy()
    err = float(np.linalg.norm(got - ref) / np.linalg.norm(ref))
    assert np.isfinite(err) and err < BOUND[dtype], err
