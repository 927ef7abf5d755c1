"""Persistent library kernels (`T.persistent`): for every budget (1, 2, 3, tiles, > tiles) they write exactly
what the grid kernels write, on the reference interpreter and on Triton (the interpreter here), and the
grid kernels stay within their bounds of a float64 oracle. Every persistent Triton kernel AOT-compiles for
sm_90. The Triton interpreter is slow: small shapes, big tiles, few examples."""

from __future__ import annotations

import copy
import itertools
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import lowbit.codegen.triton as triton_backend
import lowbit.lang as T
from lowbit.codegen.backend import compile_program
from lowbit.kernels.attention_decode import paged_decode_attention, paged_decode_attention_persistent
from lowbit.kernels.attention_prefill import prefill_attention, prefill_attention_persistent
from lowbit.kernels.launch import PersistentLauncher, budget, current_share, num_programs, resource_share
from lowbit.kernels.quantized_gemm import quantized_gemm, quantized_gemm_persistent, random_problem, relative_error
from lowbit.kernels.w4a8 import random_problem as w4a8_random_problem
from lowbit.kernels.w4a8 import (
    w4a8_gemm_per_channel,
    w4a8_gemm_per_channel_persistent,
    w4a8_gemm_per_group,
    w4a8_gemm_per_group_persistent,
)
from lowbit.lang.kernel import infer_scalars
from lowbit.quant import w4a8_gemm_per_channel as ref_per_channel
from lowbit.quant import w4a8_gemm_per_group as ref_per_group
from lowbit.reference.attention import sequence_attention

_SM90: set[str] = set()


def run(kernel: Any, constants: dict, args: dict, backend: str, **scalars: int) -> dict[str, np.ndarray]:
    """Copies of `args` after `kernel` ran on them (unused tensors dropped, as the DSL drops them)."""
    program = kernel.trace(**constants)
    names = {p.name for p in program.params}
    a = copy.deepcopy({k: v for k, v in args.items() if k in names})
    compiled = compile_program(program, backend)
    compiled(infer_scalars(program, {**a, **scalars}))
    if backend == "triton" and getattr(kernel, "persistent", False) and compiled.source not in _SM90:
        assert triton_backend.compile_sm90(compiled)["cubin"], f"{program.name}: no sm_90 cubin"
        _SM90.add(compiled.source)
    return a


def scalars_of(kernel: Any, constants: dict, args: dict) -> dict[str, Any]:
    program = kernel.trace(**constants)
    names = {p.name for p in program.params}
    return infer_scalars(program, {k: v for k, v in args.items() if k in names})


def tiles_of(kernel: Any, constants: dict, args: dict) -> int:
    return num_programs(kernel.trace(**constants), scalars_of(kernel, constants, args))


def budgets(tiles: int, backend: str) -> list[int]:
    # the Triton interpreter pays for every tile of every run: an uneven split and the extremes
    return sorted({1, 2, 3, tiles, tiles + 5} if backend == "reference" else {1, 3, tiles + 5})


def same(a: np.ndarray, b: np.ndarray, what: str) -> None:
    a64, b64 = np.asarray(a, np.float64), np.asarray(b, np.float64)
    ok = (a64 == b64) | (np.isnan(a64) & np.isnan(b64))
    assert ok.all(), f"{what}: persistent and grid kernels differ at {np.argwhere(~ok)[:4].tolist()}"


def check_persistent(grid_kernel, persistent_kernel, constants, args, outputs, backend, budget_list=None):
    """persistent == grid kernel, bit for bit, for each budget; returns the grid kernel's outputs."""
    want = run(grid_kernel, constants, args, backend)
    tiles = tiles_of(grid_kernel, constants, args)
    for b in budget_list or budgets(tiles, backend):
        got = run(persistent_kernel, constants, args, backend, BUDGET=b)
        scalars = {**scalars_of(grid_kernel, constants, args), "BUDGET": b}
        assert num_programs(persistent_kernel.trace(**constants), scalars) == min(b, tiles)
        for name in outputs:
            same(got[name], want[name], f"{persistent_kernel.name} {backend} BUDGET={b} {name}")
    return want


# ---- W{n}A16 GEMM -----------------------------------------------------------------------------------------


@settings(max_examples=10, deadline=None)
@given(
    M=st.integers(1, 40),
    N=st.integers(1, 70),
    kg=st.sampled_from([(64, 32), (128, 64), (96, -1)]),
    wdtype=st.sampled_from(["int4", "uint3", "int8", "fp4_e2m1"]),
    zero_mode=st.sampled_from(["none", "post", "pre"]),
    seed=st.integers(0, 2**16),
)
def test_gemm_persistent_equals_grid_on_reference(M, N, kg, wdtype, zero_mode, seed):
    K, G = kg
    p = random_problem(M, N, K, wdtype, G=G, zero_mode=zero_mode, seed=seed, BM=16, BN=32, BK=32)
    want = check_persistent(quantized_gemm, quantized_gemm_persistent, p.constants, p.args, ["y"], "reference")
    assert relative_error(want["y"], p.expected) <= 2e-3


@settings(max_examples=5, deadline=None)
@given(M=st.integers(1, 40), N=st.integers(1, 100), b=st.integers(1, 9), seed=st.integers(0, 2**16))
def test_gemm_persistent_on_triton(M, N, b, seed):
    p = random_problem(M, N, 64, "int4", G=32, zero_mode="post", seed=seed, BM=16, BN=32, BK=32)
    tiles = tiles_of(quantized_gemm, p.constants, p.args)
    want = check_persistent(
        quantized_gemm, quantized_gemm_persistent, p.constants, p.args, ["y"], "triton", [b, tiles + 1]
    )
    ref = run(quantized_gemm, p.constants, p.args, "reference")
    assert relative_error(want["y"], ref["y"]) <= 1e-3  # fp16 output: the same products, another order
    assert relative_error(want["y"], p.expected) <= 2e-3


# ---- W4A8 -------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("backend", ["reference", "triton"])
def test_w4a8_per_group_persistent(backend):
    p = w4a8_random_problem(20, 70, 128, G=64, seed=1)
    consts = {**p.constants, "BM": 16, "BN": 32, "BK": 64}
    want = check_persistent(w4a8_gemm_per_group, w4a8_gemm_per_group_persistent, consts, p.args, ["y"], backend)
    assert relative_error(want["y"], ref_per_group(p.xq, p.sx, p.weight)) <= 1e-6


@pytest.mark.parametrize("backend", ["reference", "triton"])
def test_w4a8_per_channel_persistent(backend):
    p = w4a8_random_problem(18, 40, 128, per_group=False, seed=2)
    consts = {**p.constants, "BM": 16, "BN": 16, "BK": 64}
    want = check_persistent(w4a8_gemm_per_channel, w4a8_gemm_per_channel_persistent, consts, p.args, ["y"], backend)
    assert relative_error(want["y"], ref_per_channel(p.xq, p.sx, p.weight)) <= 1e-6


# ---- attention ----------------------------------------------------------------------------------------------


def decode_problem(B: int, HKV: int, GQ: int, D: int, PS: int, seed: int):
    rng = np.random.default_rng(seed)
    lens = rng.integers(0, 3 * PS + 1, size=B).astype(np.int32)
    lens[0] = max(int(lens[0]), 1)
    maxp = max(1, -(-int(lens.max()) // PS))
    NP = B * maxp + 1
    k = rng.standard_normal((NP, PS, HKV, D)).astype(np.float16)
    v = rng.standard_normal((NP, PS, HKV, D)).astype(np.float16)
    tables = rng.permutation(NP)[: B * maxp].reshape(B, maxp).astype(np.int32)
    q = rng.standard_normal((B, HKV * GQ, D)).astype(np.float16)
    out = np.zeros((1, B, HKV * GQ, D), np.float32)
    lse = np.zeros((1, B, HKV * GQ), np.float32)
    args = dict(q=q, k_cache=k, v_cache=v, block_tables=tables, context_lens=lens, out=out, lse=lse)
    args.update(B=B, HQ=HKV * GQ, HKV=HKV, NP=NP, MAXP=maxp, SPLITS=1, TPS=maxp * PS)
    consts = dict(qdtype="float16", kvdtype="float16", odtype="float32", D=D, PS=PS, GQ=GQ, GP=16, BN=16,
                  sm_scale=1.0 / np.sqrt(D))  # fmt: skip
    expected = np.zeros((B, HKV * GQ, D))
    for b in range(B):
        kb = k[tables[b]].reshape(-1, HKV, D)[: lens[b]]
        vb = v[tables[b]].reshape(-1, HKV, D)[: lens[b]]
        expected[b] = sequence_attention(q[b : b + 1], kb, vb, causal=False)[0]
    return args, consts, expected


@pytest.mark.parametrize("backend", ["reference", "triton"])
def test_decode_attention_persistent(backend):
    args, consts, expected = decode_problem(B=3, HKV=2, GQ=2, D=16, PS=16, seed=3)
    want = check_persistent(
        paged_decode_attention, paged_decode_attention_persistent, consts, args, ["out", "lse"], backend
    )
    assert relative_error(want["out"][0], expected) <= 1e-5


def prefill_problem(lens: list[int], HQ: int, HKV: int, D: int, seed: int):
    rng = np.random.default_rng(seed)
    cu = np.concatenate([[0], np.cumsum(lens)]).astype(np.int32)
    TT = int(cu[-1])
    q = rng.standard_normal((TT, HQ, D)).astype(np.float16)
    k = rng.standard_normal((TT, HKV, D)).astype(np.float16)
    v = rng.standard_normal((TT, HKV, D)).astype(np.float16)
    args = dict(q=q, k=k, v=v, cu_seqlens=cu, out=np.zeros_like(q), MAXLEN=max(lens))
    consts = dict(dtype="float16", D=D, GQ=HQ // HKV, BM=16, BN=16, sm_scale=1.0 / np.sqrt(D))
    expected = np.zeros((TT, HQ, D))
    for s, e in itertools.pairwise(cu):
        expected[s:e] = sequence_attention(q[s:e], k[s:e], v[s:e], causal=True)
    return args, consts, expected


@pytest.mark.parametrize("backend", ["reference", "triton"])
def test_prefill_attention_persistent(backend):
    args, consts, expected = prefill_problem([5, 20], HQ=2, HKV=1, D=16, seed=4)
    want = check_persistent(prefill_attention, prefill_attention_persistent, consts, args, ["out"], backend)
    assert relative_error(want["out"], expected) <= 2e-3  # fp16 output


# ---- the launch API: share -> budget -> grid ---------------------------------------------------------------


def test_budget_is_the_rounded_share_of_the_units():
    assert [budget(s, 132) for s in (1.0, 0.5, 0.25, 0.001)] == [132, 66, 33, 1]
    for bad in (0.0, -0.5, 1.5, True):
        with pytest.raises(ValueError, match="share"):
            budget(bad, 132)


def test_launcher_grid_is_min_of_budget_and_tiles():
    p = random_problem(40, 70, 64, "int4", G=32, BM=16, BN=32, BK=32)  # 3 x 3 = 9 tiles
    launch = PersistentLauncher(quantized_gemm, p.constants, "reference", units=10)
    assert launch.grid(p.args) == 9  # the whole device: 10 SMs, 9 tiles
    assert launch.grid(p.args, share=0.5) == 5
    with resource_share(0.2):
        assert current_share() == 0.2
        assert launch.budget() == 2 and launch.grid(p.args) == 2
    assert current_share() is None
    args = copy.deepcopy(p.args)
    with resource_share(0.3):
        launch(args)
    same(args["y"], run(quantized_gemm, p.constants, p.args, "reference")["y"], "launcher")


def test_persistent_of_persistent_is_refused():
    with pytest.raises(T.DSLError, match="persistent already"):
        T.persistent(quantized_gemm_persistent)
