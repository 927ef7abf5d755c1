"""The inner-product dot of the TVM lowering (`_Emitter.dot_inner`): `a @ transpose(x)` with few rows of a
runs as row·column inner products over contiguous k (decode attention's q·Kᵀ). Checked against NumPy for
float and packed 4-bit x, both accumulator-sum paths (x86 vhaddps for rows in fours, the tree otherwise),
an odd column count (one column per step) and ragged edges (the guarded generic loops); `inner_dot=0` keeps
the generic loops and gives the same numbers. Also: `vector="auto"` resolves per ISA, and tiles loaded from a
packed tensor are prefetched like row-major ones."""

from __future__ import annotations

from unittest import mock

import numpy as np
import pytest

import lowbit.lang as T
from lowbit.codegen.backend import compile_program
from lowbit.codegen.tvm import runtime
from lowbit.ir.layout import packed_along


@T.kernel
def scores(
    q: T.Tensor("float32", ("M", "K")),
    k: T.Tensor("kdtype", ("N", "K")),
    s: T.Tensor("float32", ("M", "N")),
    M: T.int32,
    N: T.int32,
    K: T.int32,
    kdtype: T.constexpr = "float32",
    BM: T.constexpr = 4,
    BN: T.constexpr = 16,
    BK: T.constexpr = 32,
):
    (pn,) = T.grid(T.cdiv(N, BN))
    qt = T.load(q, (0, 0), (BM, BK))
    kt = T.cast(T.load(k, (pn * BN, 0), (BN, BK)), T.float32)
    T.store(s, (0, pn * BN), T.dot(qt, T.transpose(kt)))


def _run(kdtype: str, BM: int, BN: int, N: int, options: dict, seed: int = 0) -> tuple[np.ndarray, np.ndarray, str]:
    K = 32
    rng = np.random.default_rng(seed)
    q = rng.standard_normal((BM, K)).astype(np.float32)
    if kdtype == "uint4":
        codes = rng.integers(0, 16, (N, K))
        k_arg = packed_along((N, K), 4, 1).pack(codes)
        dense = codes.astype(np.float64)
    else:
        dense = rng.standard_normal((N, K)).astype(np.float32)
        k_arg = dense
    kernel = compile_program(scores.trace(kdtype=kdtype, BM=BM, BN=BN, BK=K), "tvm", options)
    s = np.zeros((BM, N), np.float32)
    kernel({"q": q, "k": k_arg, "s": s, "M": BM, "N": N, "K": K})
    return s, q.astype(np.float64) @ dense.astype(np.float64).T, kernel.source


@pytest.mark.parametrize("kdtype", ["float32", "uint4"])
@pytest.mark.parametrize("BM, BN, N", [(4, 16, 48), (3, 16, 32), (4, 15, 45), (4, 16, 40)])
def test_inner_dot_matches_numpy_and_the_generic_loops(kdtype: str, BM: int, BN: int, N: int):
    got, want, source = _run(kdtype, BM, BN, N, {})
    assert "accv" in source  # the inner-product form was chosen
    assert np.all(np.isfinite(got))
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-4 * np.abs(want).max())
    generic, _, plain = _run(kdtype, BM, BN, N, {"inner_dot": 0})
    assert "accv" not in plain
    np.testing.assert_allclose(got, generic, rtol=1e-5, atol=1e-5 * np.abs(want).max())


def test_lane_sums_use_vhaddps_for_rows_in_fours_on_x86():
    _, _, four = _run("float32", 4, 16, 16, {"int8_dot": "avx2", "vector": 8})
    _, _, three = _run("float32", 3, 16, 16, {"int8_dot": "avx2", "vector": 8})
    _, _, other = _run("float32", 4, 16, 16, {"int8_dot": "none"})
    assert "hadd.ps.256" in four
    assert "hadd.ps.256" not in three and "hadd.ps.256" not in other


def test_vector_auto_is_one_fp32_register_of_the_target():
    llvm = runtime.cpu_target()
    with mock.patch("lowbit.artifact.fingerprint.isa_flags", return_value=("avx", "avx2", "fma")):
        assert runtime.resolve_options({"vector": "auto"}, llvm)["vector"] == 8
    with mock.patch("lowbit.artifact.fingerprint.isa_flags", return_value=("avx2", "avx512f")):
        assert runtime.resolve_options({"vector": "auto"}, llvm)["vector"] == 16
    assert runtime.resolve_options({"vector": 32}, llvm)["vector"] == 32


def test_packed_paged_tiles_are_prefetched():
    from lowbit.kernels.attention_decode import paged_decode_attention

    consts = dict(qdtype="float32", kvdtype="uint4", odtype="float32", D=128, PS=16, GQ=4, GP=4, BN=16, DC=16)
    source = compile_program(paged_decode_attention.trace(**consts), "tvm", {}).source
    hints = [line for line in source.splitlines() if "llvm.prefetch" in line]
    assert any("k_cache" in h for h in hints) and any("v_cache" in h for h in hints)
    assert all("page_ahead" in h for h in hints)  # through the block table, at the advanced loop variable
