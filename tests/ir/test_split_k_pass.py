"""`make_split_k` and the compile option `split_k`: the law is that the sum of the splits' partials equals the
unsplit kernel's result up to fp32 summation order, for every split count (more splits than K steps too: the
empty splits write zeros). The pass refuses, naming the statement, every epilogue that is not linear in the
loop's accumulators (the sum of the splits' outputs would differ) and accumulators that do not start at 0."""

from __future__ import annotations

import numpy as np
import pytest
import sympy
from hypothesis import given, settings
from hypothesis import strategies as st

import lowbit.lang as T
from lowbit.codegen.backend import BackendError, compile_program
from lowbit.ir.parser import parse
from lowbit.ir.passes.split_k import SplitKError, make_split_k, split_k_sum
from lowbit.ir.verifier import verify
from lowbit.kernels.gemv_fma import quantized_gemv_fma


@T.kernel
def rowdot(
    a: T.Tensor("float32", ("M", "K")),
    b: T.Tensor("float32", ("K", "N")),
    y: T.Tensor("ydtype", ("M", "N")),
    M: T.int32,
    N: T.int32,
    K: T.int32,
    ydtype: T.constexpr = "float32",
    epilogue: T.constexpr = "scale",
    BM: T.constexpr = 4,
    BN: T.constexpr = 8,
    BK: T.constexpr = 8,
):
    """y = epilogue(a @ b, Σ_k a): the linear epilogues the pass accepts and the ones it must refuse."""
    pm, pn = T.grid(T.cdiv(M, BM), T.cdiv(N, BN))
    acc = T.full((BM, BN), 1.0 if epilogue == "start_at_one" else 0.0, T.float32)
    asum = T.zeros((BM, 1), T.float32)
    for k0 in T.range(0, K, BK, name="k0"):
        x = T.load(a, (pm * BM, k0), (BM, BK))
        acc += T.dot(x, T.load(b, (k0, pn * BN), (BK, BN)))
        asum += T.sum(x, axis=1, keepdims=True)
    s = T.load(b, (0, pn * BN), (1, BN))  # a value that does not depend on the loop
    if epilogue == "scale":
        out = (acc - asum * s) * s  # linear: (p − Σx·s)·s
    elif epilogue == "neg":
        out = -(T.transpose(T.transpose(acc)) / 2.0)
    elif epilogue == "exp":
        out = T.exp(acc)
    elif epilogue == "affine":
        out = acc + s  # s would be added once per split
    elif epilogue == "square":
        out = acc * acc
    else:  # start_at_one
        out = acc
    T.store(y, (pm * BM, pn * BN), T.cast(out, y.dtype))


def _run(program, backend: str, args: dict, split: int) -> np.ndarray:
    a = {k: (v.copy() if isinstance(v, np.ndarray) else v) for k, v in args.items()}
    compile_program(program, backend, {"split_k": split})(a)
    return a["y"]


def _args(m: int, n: int, k: int, seed: int, ydtype=np.float32) -> dict:
    rng = np.random.default_rng(seed)
    return {
        "a": rng.standard_normal((m, k)).astype(np.float32),
        "b": rng.standard_normal((k, n)).astype(np.float32),
        "y": np.zeros((m, n), ydtype),
        "M": m,
        "N": n,
        "K": k,
    }


def _oracle(args: dict, epilogue: str) -> np.ndarray:
    a, b = args["a"].astype(np.float64), args["b"].astype(np.float64)
    p, s = a @ b, b[:1]
    return (p - a.sum(axis=1, keepdims=True) * s) * s if epilogue == "scale" else -p / 2


@settings(max_examples=25, deadline=None)
@given(
    m=st.integers(1, 9),
    n=st.integers(1, 20),
    k=st.integers(1, 70),
    split=st.integers(1, 12),
    epilogue=st.sampled_from(["scale", "neg"]),
    ydtype=st.sampled_from(["float32", "float16"]),
    seed=st.integers(0, 2**16),
)
def test_splits_sum_to_the_unsplit_result(m, n, k, split, epilogue, ydtype, seed):
    """Ragged M / N / K (K not a multiple of the step: the last split's loop ends at K), any split count."""
    program = rowdot.trace(ydtype=ydtype, epilogue=epilogue)
    host = np.float16 if ydtype == "float16" else np.float32
    args = _args(m, n, k, seed, host)
    want = _oracle(args, epilogue)
    got = _run(program, "reference", args, split)
    assert np.isfinite(got).all()
    # fp32 partial sums in another order, one rounding to y's dtype
    bound = (2.0**-10 if ydtype == "float16" else 1e-5) * (np.abs(want).max() + 1)
    assert np.abs(got.astype(np.float64) - want).max() <= bound, (m, n, k, split)


@pytest.mark.parametrize("backend", ["triton", "tvm"])
def test_compiled_backends_sum_the_splits(backend):
    program = rowdot.trace(epilogue="scale")
    args = _args(5, 19, 61, 3)
    want = _oracle(args, "scale")
    for split in (1, 2, 3, 9):
        got = _run(program, backend, args, split)
        assert np.abs(got - want).max() <= 1e-4 * np.abs(want).max(), (backend, split)


def test_the_program_it_builds():
    p = quantized_gemv_fma.trace(BM=1, BN=32, BK=128, G=128, zero_mode="post")
    s = make_split_k(p)
    assert s.name == "quantized_gemv_fma_split_k"
    assert [q.name for q in s.params] == ["x", "w", "scales", "zeros", "y_part", "M", "N", "K", "SPLIT"]
    part = s.param("y_part")
    assert part.dtype.name == "float32" and [str(e) for e in part.shape] == ["SPLIT", "M", "N"]
    assert len(s.grid) == 3 and str(s.grid[2]) == "SPLIT"
    assert verify(s) is s
    r = make_split_k(rowdot.trace())
    assert parse(str(r)) == r  # the text form round-trips (rowdot: no layout object among its constants)
    loop = next(st for st in s.body if type(st).__name__ == "For")
    pid2, k, split = (sympy.Symbol(n, integer=True, **kw) for n, kw in [("pid2", {"nonnegative": True}),
                      ("K", {"positive": True}), ("SPLIT", {"positive": True})])  # fmt: skip
    steps = 128 * sympy.ceiling(k / (128 * split))
    assert sympy.simplify(loop.start - pid2 * steps) == 0
    assert loop.stop == sympy.Min(k, pid2 * steps + steps) and loop.step == 128
    total = split_k_sum(p.param("y"))
    assert verify(total) is total and parse(str(total)) == total


@pytest.mark.parametrize(
    "epilogue,fragment",
    [
        ("exp", "unary exp"),
        ("affine", "binary add"),
        ("square", "binary mul"),
        ("start_at_one", "does not start as zeros"),
    ],
)
def test_refuses_what_splitting_would_change(epilogue, fragment):
    with pytest.raises(SplitKError, match=fragment) as e:
        make_split_k(rowdot.trace(epilogue=epilogue))
    assert "rowdot" in str(e.value) and "split along K" in str(e.value)


def test_refuses_kernels_without_one_reduction_loop():
    @T.kernel
    def copy(a: T.Tensor("float32", ("N",)), y: T.Tensor("float32", ("N",)), N: T.int32, B: T.constexpr = 8):
        (p,) = T.grid(T.cdiv(N, B))
        T.store(y, (p * B,), T.load(a, (p * B,), (B,)))

    with pytest.raises(SplitKError, match="0 top-level loops named 'k0'"):
        make_split_k(copy.trace())
    with pytest.raises(SplitKError, match="split already"):
        make_split_k(make_split_k(rowdot.trace()))


@pytest.mark.parametrize("bad", [0, -2, "2", 1.5, True])
def test_the_option_names_a_bad_value(bad):
    with pytest.raises(BackendError, match="split_k"):
        compile_program(rowdot.trace(), "reference", {"split_k": bad})
