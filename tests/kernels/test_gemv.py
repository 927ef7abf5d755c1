"""The regrouped GEMV on the reference interpreter equals float64 x @ dequant(W), and agrees with the GEMM.

Bounds (relative Frobenius error against float64): the GEMV rounds nothing before its fp32 accumulator, so
the error is the output rounding (fp16: ≤ 2^-11, bf16: ≤ 2^-8 per element) plus fp32 accumulation
(≈ K·2^-24 relative to Σ|terms|, < 1e-5 here even where a zero cancels): BOUND = 2× the output rounding,
fp32 output 2e-5. The GEMM additionally rounds each dequantized weight to the activation dtype, so GEMV and
GEMM agree within the sum of both bounds.
"""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from lowbit.dtypes import decode, dtype
from lowbit.ir.layout import packed_along
from lowbit.kernels.gemv import quantized_gemv
from lowbit.kernels.quantized_gemm import quantized_gemm, random_problem, relative_error

INT_DTYPES = [f"{s}int{b}" for s in ("", "u") for b in range(1, 9)]
FLOAT_DTYPES = ["fp3_e1m1", "fp4_e2m1", "fp5_e2m2", "fp6_e2m3", "fp6_e3m2", "fp8_e4m3", "fp8_e5m2"]
BOUND = {"float16": 2 * 2.0**-11, "bfloat16": 2 * 2.0**-8, "float32": 2e-5}
GEMM_BOUND = {"float16": 2e-3 + BOUND["float16"], "bfloat16": 2.0**-6, "float32": 4e-5}
HOST = {"float16": np.float16, "bfloat16": dtype("bfloat16").host_dtype, "float32": np.float32}


def exact_reference(p, K, G, zero_mode, wdtype):
    """float64 x @ dequant(W) from the problem's own arrays (no fp16 rounding of the weights)."""
    wd = dtype(wdtype)
    q = decode(wd, packed_along((K, p.args["y"].shape[1]), wd.bits, 0).unpack(p.args["w"])).astype(np.float64)
    rows = K if G == -1 else G
    s = np.repeat(p.args["scales"].astype(np.float64), rows, axis=0)
    z = np.repeat(p.args["zeros"].astype(np.float64), rows, axis=0) if zero_mode != "none" else 0.0
    w = {"none": q * s, "post": (q - z) * s, "pre": q * s - z}[zero_mode]
    return p.args["x"].astype(np.float64) @ w


def problem(M, N, K, wdtype, G, zero_mode, adtype, seed):
    p = random_problem(M, N, K, wdtype, G=G, zero_mode=zero_mode, seed=seed)
    p.args["x"] = p.args["x"].astype(HOST[adtype])
    p.args["y"] = np.zeros((M, N), HOST[adtype])
    return p, dict(p.constants, adtype=adtype)


def run_gemv(M, N, K, wdtype, G, zero_mode, adtype="float16", seed=0, **tiles):
    p, consts = problem(M, N, K, wdtype, G, zero_mode, adtype, seed)
    quantized_gemv.run(**p.args, **consts, **tiles)
    return p, consts, exact_reference(p, K, G, zero_mode, wdtype)


@pytest.mark.parametrize("wdtype", INT_DTYPES + FLOAT_DTYPES)
def test_every_weight_dtype(wdtype):
    zero_mode = "post" if dtype(wdtype).is_integer else "none"
    p, _, ref = run_gemv(3, 40, 128, wdtype, 32, zero_mode, BK=64)
    err = relative_error(p.args["y"], ref)
    assert err <= BOUND["float16"], f"{wdtype}: relative error {err}"


@settings(max_examples=30)
@given(
    M=st.integers(1, 16),
    N=st.integers(1, 64),
    kg=st.sampled_from([(64, 32), (128, 64), (256, 128), (96, 32), (128, -1), (100, -1)]),
    wdtype=st.sampled_from(INT_DTYPES + FLOAT_DTYPES),
    zero_mode=st.sampled_from(["none", "post", "pre"]),
    adtype=st.sampled_from(["float16", "bfloat16", "float32"]),
    tiles=st.sampled_from([dict(BM=1, BN=16, BK=32), dict(BM=4, BN=32, BK=64), dict(BM=16, BN=64, BK=128)]),
    swap=st.sampled_from([0, 1]),
    seed=st.integers(0, 2**16),
)
def test_ragged_shapes_groups_zero_modes_activations(M, N, kg, wdtype, zero_mode, adtype, tiles, swap, seed):
    """Ragged M / N / K, every group form and zero mode, in both orientations of the dot (SWAP: yᵀ = Wᵀ·xᵀ)."""
    K, G = kg
    p, _, ref = run_gemv(M, N, K, wdtype, G, zero_mode, adtype, seed, **tiles, SWAP=swap)
    err = relative_error(p.args["y"], ref)
    assert err <= BOUND[adtype], f"{wdtype} G={G} {zero_mode} {adtype} {M}x{N}x{K} {tiles} SWAP={swap}: {err}"


SWAP_CASES = [
    ("int4", 128, "none", "float16", 1),
    ("uint3", 32, "post", "float16", 5),
    ("int2", 64, "pre", "bfloat16", 16),
    ("fp4_e2m1", -1, "none", "float16", 4),
    ("uint8", -1, "post", "bfloat16", 3),
]


@pytest.mark.parametrize("backend", ["triton", "tvm"])
@pytest.mark.parametrize("wdtype,G,zero_mode,adtype,M", SWAP_CASES)
def test_swapped_gemv_on_the_backends(backend, wdtype, G, zero_mode, adtype, M):
    """SWAP = 1 on each backend against float64 (Triton through the interpreter with the GPU's codes_last, and
    compiled for sm_90)."""
    check_backend(
        quantized_gemv, backend, wdtype, G, zero_mode, adtype, M, {"BM": 16, "BN": 16, "BK": 64, "SWAP": 1}, 11
    )


def check_backend(kernel, backend, wdtype, G, zero_mode, adtype, M, tiles, seed):
    """A GEMV kernel at N, K = 40, 256 on `backend` (Triton: the interpreter with the GPU's codes_last, and the
    sm_90 compile of `run_both`) and on the reference: both within BOUND of the float64 product."""
    from tests.codegen.backend_harness import run_both

    N, K = 40, 256
    p, consts = problem(M, N, K, wdtype, G, zero_mode, adtype, seed=seed)
    options = {"codes_last": True} if backend == "triton" else None
    ref_out, out = run_both(kernel, {**consts, **tiles}, p.args, options, backend)
    exact = exact_reference(p, K, G, zero_mode, wdtype)
    for what, y in (("reference", ref_out["y"]), (backend, out["y"])):
        err = relative_error(y, exact)
        assert err <= BOUND[adtype], f"{what} {wdtype} G={G} {zero_mode} {adtype} M={M}: {err}"


@pytest.mark.parametrize(
    "wdtype,G,zero_mode,adtype",
    [("int4", 32, "none", "float16"), ("uint4", 128, "post", "bfloat16"), ("uint3", -1, "pre", "float32"),
     ("fp4_e2m1", 64, "none", "float32"), ("int8", -1, "post", "float16")],
)  # fmt: skip
def test_gemv_agrees_with_gemm(wdtype, G, zero_mode, adtype):
    M, N, K = 7, 48, 256
    p, consts = problem(M, N, K, wdtype, G, zero_mode, adtype, seed=3)
    quantized_gemv.run(**p.args, **consts, BM=8, BN=16, BK=128)
    y_gemv = p.args["y"].copy()
    quantized_gemm.run(**p.args, **consts, BM=16, BN=32, BK=64)
    err = relative_error(y_gemv, p.args["y"])
    assert err <= GEMM_BOUND[adtype], f"gemv vs gemm: {err}"


def test_bk_divides_group():
    # several K steps share one group's scale row
    p, _, ref = run_gemv(2, 32, 256, "int4", 128, "post", BK=32)
    assert relative_error(p.args["y"], ref) <= BOUND["float16"]


def test_nan_never_passes():
    _, _, ref = run_gemv(2, 8, 64, "int4", 32, "none")
    assert not relative_error(np.full_like(ref, np.nan), ref) <= BOUND["float16"]


@pytest.mark.parametrize("m", [4, 16])
def test_sm90_swapped_gemv_runs_warpgroup_mma_with_fewer_instructions(m):
    """The swapped dot (SWAP 1, 64 columns, codes_last) of the GPU default's GEMV (int4 g128, K = 8192,
    8192 columns) on sm_90: the K loop's dots are warp-group MMAs (the decoded codes the wide left operand),
    no codes-sized layout conversion, and fewer SASS instructions a code than the default config (mma.sync
    with x padded to its rows), without spills."""
    import re

    import lowbit.codegen.triton as triton_backend
    from lowbit.codegen.backend import compile_program
    from lowbit.kernels.spaces import gpu_default
    from tests.kernels.test_gemv_fma import _registers, _sass_loop_instructions

    problem_ = {"M": m, "N": 8192, "K": 8192, "G": 128, "wdtype": "int4", "adtype": "float16"}
    cfg = gpu_default("quantized_gemv", problem_, 132)
    threads = 32 * cfg.option_dict["num_warps"]
    per_code = {}
    for swap, tiles, extra in (
        (0, cfg.constant_dict, {}),
        (1, {**cfg.constant_dict, "BN": 64, "SWAP": 1}, {"codes_last": True}),
    ):
        program = quantized_gemv.trace(wdtype="int4", G=128, adtype="float16", **tiles)
        options = {**cfg.option_dict, **extra, "inbounds": ("N", "K")}
        stages = triton_backend.compile_sm90(compile_program(program, "triton", options), aligned=True)
        loop = stages["ttgir"][stages["ttgir"].index("scf.for") : stages["ttgir"].index("scf.yield")]
        shapes = re.findall(r"ttg\.convert_layout %\S+ : tensor<([0-9x]+)x\w+", loop)
        assert all(sum(d != "1" for d in shape.split("x")) <= 1 for shape in shapes), f"SWAP={swap}: {shapes}"
        if swap:
            assert "ttng.warp_group_dot" in loop, "the swapped dot is not a warp-group MMA on sm_90"
        _registers(stages["ptx"])  # no spills
        per_code[swap] = _sass_loop_instructions(stages["cubin"]) / (tiles["BN"] * tiles["BK"] / threads)
    assert per_code[1] < 0.7 * per_code[0], (
        f"SWAP 1: {per_code[1]:.2f} SASS instructions a code against {per_code[0]:.2f}"
    )
