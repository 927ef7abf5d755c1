"""Torch tensors already on the launch device in the kernel's element form go to the Triton kernel as they are
(no host copies: what a CUDA graph can capture); the result equals the converting path bit for bit, and a
single argument that needs converting sends the whole call through the converting path."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch

from lowbit.codegen.backend import compile_program
from lowbit.codegen.triton import runtime
from lowbit.kernels.quantized_gemm import quantized_gemm, random_problem
from lowbit.lang.kernel import infer_scalars


def _problem(adtype):
    p = random_problem(20, 40, 64, "int4", G=32, zero_mode="post", BM=16, BN=32, BK=32)
    consts = dict(p.constants, adtype=adtype, sdtype="float16")
    program = quantized_gemm.trace(**consts)
    return program, p.args


@pytest.mark.parametrize("adtype", ["float16", "bfloat16"])
def test_device_tensors_run_in_place_and_equal_the_converting_path(adtype, monkeypatch):
    program, args = _problem(adtype)
    kernel = compile_program(program, "triton")
    tdt = getattr(torch, adtype)
    host = {k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in args.items()}
    host["x"], host["y"] = host["x"].to(tdt), torch.zeros(host["y"].shape, dtype=tdt)
    direct = {k: v.to(runtime.DEVICE) for k, v in host.items()}
    ptr = direct["y"].data_ptr()
    converted = copy.deepcopy(direct)
    converted["zeros"] = converted["zeros"].T.contiguous().T  # one non-contiguous argument: the whole call copies

    def no_copies(a):
        raise AssertionError("the direct path copied an argument")

    with monkeypatch.context() as m:
        m.setattr(runtime, "_to_numpy", no_copies)
        kernel(infer_scalars(program, direct))
    kernel(infer_scalars(program, converted))
    assert direct["y"].data_ptr() == ptr
    assert direct["y"].abs().sum() > 0
    assert torch.equal(direct["y"].float(), converted["y"].float())


def test_non_contiguous_or_other_dtypes_are_not_direct():
    program, _ = _problem("float16")
    x = program.param("x")
    assert runtime._direct(x, torch.zeros((8, 4), dtype=torch.float16).T) is None
    assert runtime._direct(x, torch.zeros((4, 8), dtype=torch.float32)) is None
    assert runtime._direct(x, np.zeros((4, 8), np.float16)) is None
    t = torch.zeros((4, 8), dtype=torch.float16, device=runtime.DEVICE)
    assert runtime._direct(x, t) is t
