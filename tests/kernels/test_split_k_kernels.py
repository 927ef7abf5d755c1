"""Split-K forms of the library's linear kernels (compile option `split_k`, `lowbit.ir.passes.split_k`): the
GEMV, the dot-free GEMV, the GEMM and both W4A8 GEMMs, split 1-9 ways, equal float64 x @ dequant(W) within the
unsplit kernels' bounds on the reference interpreter, Triton (interpreter; both kernels of the split also
compiled for sm_90), TVM (CPU, and its CUDA lowering run through `simulate`); through
`quantized_linear(config=...)` too. Small shapes: the Triton interpreter is slow."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import lowbit.codegen.triton as triton_backend
from lowbit.codegen.backend import Config, SplitKKernel, compile_program
from lowbit.kernels.gemv import quantized_gemv
from lowbit.kernels.gemv_fma import quantized_gemv_fma
from lowbit.kernels.quantized_gemm import quantized_gemm, relative_error
from lowbit.kernels.spaces import space
from lowbit.lang.kernel import infer_scalars
from lowbit.ops import quantize, quantized_linear
from tests.codegen.backend_harness import FLOAT_DTYPES, INT_DTYPES
from tests.kernels.test_gemv import BOUND, GEMM_BOUND, exact_reference, problem

KERNELS = {"gemv": quantized_gemv, "fma": quantized_gemv_fma, "gemm": quantized_gemm}
TILES = {
    "gemv": {"BM": 4, "BN": 16, "BK": 32},
    "fma": {"BM": 2, "BN": 16, "BK": 32},
    "gemm": {"BM": 16, "BN": 16, "BK": 32},
}
_SM90: set[str] = set()


def run_split(kind, M, N, K, wdtype, G, zero_mode, adtype, split, backend, seed=0):
    p, consts = problem(M, N, K, wdtype, G, zero_mode, adtype, seed)
    program = KERNELS[kind].trace(**consts, **TILES[kind])
    args = {k: v for k, v in p.args.items() if k in {q.name for q in program.params}}
    options = {"split_k": split, **({"codes_last": True} if kind == "fma" and backend == "triton" else {})}
    if backend == "tvm-cuda":  # the TVM CUDA lowering of both kernels, their code run on the CPU (`simulate`)
        compiled = compile_program(program, "tvm", {**options, "target": "cuda"}).simulate()
    else:
        compiled = compile_program(program, backend, options)
    compiled(infer_scalars(program, args))
    if backend == "triton" and split > 1:
        assert isinstance(compiled, SplitKKernel)
        for part in (compiled.main, compiled.sum):
            if part.source not in _SM90:
                assert triton_backend.compile_sm90(part)["cubin"], f"{part.program.name}: no sm_90 cubin"
                _SM90.add(part.source)
    bound = (GEMM_BOUND if kind == "gemm" else BOUND)[adtype]
    return relative_error(args["y"], exact_reference(p, K, G, zero_mode, wdtype)), bound


@settings(max_examples=20, deadline=None)
@given(
    kind=st.sampled_from(sorted(KERNELS)),
    M=st.integers(1, 6),
    N=st.integers(1, 40),
    kg=st.sampled_from([(64, 32), (160, 32), (96, 32), (128, -1), (100, -1)]),
    wdtype=st.sampled_from(INT_DTYPES + FLOAT_DTYPES),
    zero_mode=st.sampled_from(["none", "post", "pre"]),
    adtype=st.sampled_from(["float16", "bfloat16", "float32"]),
    split=st.integers(1, 9),
    seed=st.integers(0, 2**16),
)
def test_reference_any_split(kind, M, N, kg, wdtype, zero_mode, adtype, split, seed):
    """Ragged M / N / K, per group and per channel, every weight dtype and zero mode; splits past K's steps."""
    K, G = kg
    err, bound = run_split(kind, M, N, K, wdtype, G, zero_mode, adtype, split, "reference", seed)
    assert err <= bound, f"{kind} {wdtype} G={G} {zero_mode} {adtype} {M}x{N}x{K} split {split}: {err}"


CASES = [
    ("gemv", "int4", 32, "post", "float16", 1),
    ("gemv", "fp6_e3m2", -1, "none", "bfloat16", 3),
    ("fma", "int4", 32, "none", "float16", 1),
    ("fma", "uint3", 32, "pre", "float32", 2),
    ("gemm", "int2", 32, "post", "float16", 17),
]


@pytest.mark.parametrize("backend", ["triton", "tvm", "tvm-cuda"])
@pytest.mark.parametrize("kind,wdtype,G,zero_mode,adtype,M", CASES)
def test_compiled_backends(backend, kind, wdtype, G, zero_mode, adtype, M):
    for split in (2, 5):  # K = 160: five K steps of 32, so 5 splits of one step, 2 of three and two
        err, bound = run_split(kind, M, 24, 160, wdtype, G, zero_mode, adtype, split, backend, seed=5)
        assert err <= bound, f"{backend} {kind} {wdtype} G={G} {zero_mode} {adtype} M={M} split {split}: {err}"


@pytest.mark.parametrize("backend", ["reference", "triton", "tvm"])
@pytest.mark.parametrize("scheme", ["w4a8_group", "w4a8_channel"])
def test_w4a8_through_quantized_linear(backend, scheme):
    """The int32 accumulators of both W4A8 GEMMs are summed per split in fp32 (the epilogue is linear in them);
    the result equals the unsplit call's within fp32 rounding."""
    rng = np.random.default_rng(1)
    w = rng.standard_normal((48, 256)).astype(np.float32)
    x = rng.standard_normal((5, 256)).astype(np.float32)
    qw = quantize(w, "uint4", 64 if scheme == "w4a8_group" else -1, scheme=scheme)
    tiles = {"BM": 16, "BN": 32, "BK": 64}
    want = quantized_linear(x, qw, backend=backend, config=Config.make(tiles))
    got = quantized_linear(x, qw, backend=backend, config=Config.make(tiles, {"split_k": 3}))
    assert np.isfinite(got).all()
    assert relative_error(got, want) <= 1e-6, relative_error(got, want)


@pytest.mark.parametrize("backend", ["triton", "tvm"])
def test_a16_through_quantized_linear(backend):
    rng = np.random.default_rng(2)
    w = rng.standard_normal((40, 192)).astype(np.float32)
    x = rng.standard_normal((2, 192)).astype(np.float16)
    qw = quantize(w, "int4", 64)
    oracle = x.astype(np.float64) @ np.asarray(qw.dequantize(), np.float64).T
    for kernel, tiles in ((None, TILES["gemv"]), ("quantized_gemv_fma", TILES["fma"])):
        options = {"split_k": 4, **({"codes_last": True} if kernel and backend == "triton" else {})}
        y = quantized_linear(x, qw, backend=backend, config=Config.make(tiles, options), kernel=kernel)
        assert relative_error(y, oracle) <= BOUND["float16"], (kernel, relative_error(y, oracle))


def test_gpu_spaces_offer_splits_and_prune_empty_ones():
    sp = space("quantized_gemv", "triton")
    assert dict(sp.options)["split_k"] == (1, 2, 4, 8) and sp.default.option_dict["split_k"] == 1
    problem_ = {"M": 1, "N": 8192, "K": 512, "G": 128, "wdtype": "int4", "adtype": "float16"}
    ok = Config.make({"BM": 16, "BN": 32, "BK": 128}, {"num_warps": 4, "num_stages": 3, "split_k": 4})
    too_many = Config.make(ok.constant_dict, {**ok.option_dict, "split_k": 8})
    assert sp.check(ok, problem_) is None
    assert "leaves splits without a K step" in sp.check(too_many, problem_)
    assert "split_k" in dict(space("quantized_gemv_fma", "triton").options)
    assert "split_k" not in dict(space("quantized_gemv", "tvm").options)  # the CPU's column tiles fill its cores
