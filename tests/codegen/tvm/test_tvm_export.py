"""A TVM kernel exported to a shared library and loaded back gives the same result; options are checked."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from lowbit.codegen.backend import BackendError, compile_program
from lowbit.codegen.tvm import load_module
from lowbit.kernels.quantized_gemm import quantized_gemm, random_problem, relative_error


def test_export_and_load_round_trip(tmp_path):
    p = random_problem(3, 64, 128, "uint4", G=64, zero_mode="post", BM=4, BN=32, BK=64)
    kernel = compile_program(quantized_gemm.trace(**p.constants), "tvm")
    path = str(tmp_path / "gemm.so")
    kernel.export(path)
    main = load_module(path)["main"]
    sizes = {"M": 3, "N": 64, "K": 128}
    tensors = {k: torch.from_numpy(v.view(np.int32) if v.dtype == np.uint32 else v.copy()) for k, v in p.args.items()}
    main(*[tensors[n].reshape(-1) if n in tensors else sizes[n] for n in kernel.arg_names])
    assert relative_error(tensors["y"].numpy(), p.expected) <= 2e-3


def test_source_is_readable_tvmscript():
    p = random_problem(1, 64, 128, "int4", G=128, BM=1, BN=64, BK=128)
    source = compile_program(quantized_gemm.trace(**p.constants), "tvm").source
    assert source.startswith("@T.prim_func") and "T.parallel" in source and "T.vectorized" in source
    assert "# %acc = full" in source or "acc" in source


def test_unknown_option_fails_loudly():
    with pytest.raises(BackendError, match="unknown options"):
        compile_program(quantized_gemm.trace(), "tvm", {"vectorize": 8})
    with pytest.raises(BackendError, match="parallel"):
        compile_program(quantized_gemm.trace(), "tvm", {"parallel": "n"})
