"""The Triton lowering's speed options compute the same function as the reference interpreter:
`inbounds` (mask terms left out along sizes the caller's tiles divide), `magic_cast` (integer codes to fp16
through the mantissa of 1024.0) and `codes_last` (a packed tile split along its last axis by a tree of
tl.join). Each is checked bit for bit (loads) or against the reference GEMV (casts, dots), and the source
shows the form each option asks for."""

from __future__ import annotations

import re

import numpy as np
import pytest
from backend_harness import assert_same, run_both
from hypothesis import given, settings
from hypothesis import strategies as st

# the packed-word tests' kernel: tiles of a packed [K, N] tensor copied out as float32 (and column maxima)
from test_triton_packed_words import packed_tiles as tile_copy

import lowbit.lang as T
from lowbit.codegen.backend import BackendError, compile_program
from lowbit.dtypes import decode, dtype, encode
from lowbit.ir.layout import packed_along
from lowbit.kernels.gemv import quantized_gemv
from lowbit.kernels.quantized_gemm import random_problem, relative_error
from lowbit.lang.kernel import infer_scalars


def _copy(dt: str, K: int, N: int, axis: int, options: dict, seed: int = 0) -> np.ndarray:
    d = dtype(dt)
    codes = np.random.default_rng(seed).integers(0, 1 << d.bits, (K, N)).astype(d.code_dtype)
    if d.has_nan or d.has_inf:
        codes = encode(d, np.nan_to_num(decode(d, codes), nan=0.0, posinf=0.0, neginf=0.0))
    layout = packed_along((K, N), d.bits, axis)
    args = {"x": layout.pack(codes), "f": np.zeros((K, N), np.float32), "top": np.zeros((1, N), np.float32)}
    ref, tri = run_both(tile_copy, {"DT": dt, "lay": T.packed(axis=axis)}, args, options)
    assert_same(tri["f"], ref["f"], f"{dt} axis {axis} {K}x{N} {options}")
    return tri["f"]


def _source(options: dict, **constants) -> str:
    return compile_program(tile_copy.trace(**constants), "triton", options).source


@settings(max_examples=10)
@given(
    dt=st.sampled_from(["int4", "uint2", "int8", "fp4_e2m1", "uint1"]),
    K=st.integers(1, 70),
    N=st.integers(1, 40),
    axis=st.sampled_from([0, 1]),
    seed=st.integers(0, 3),
)
def test_codes_last_loads_equal_the_reference(dt, K, N, axis, seed):
    _copy(dt, K, N, axis, {"codes_last": True}, seed)


def test_codes_last_splits_words_by_joins():
    src = _source({"codes_last": True})
    assert "tl.permute" in src and src.count("tl.join(") == 7  # 8 int4 codes: a tree of 4 + 2 + 1 joins
    assert "tl.join(" not in _source({})
    assert "tl.join(" not in _source({"codes_last": True}, lay=T.packed(axis=1))  # the run is already last


@pytest.mark.parametrize("dt, K, N", [("int4", 64, 32), ("uint2", 96, 48), ("fp4_e2m1", 32, 16)])
def test_inbounds_drops_masks_of_divided_sizes(dt, K, N):
    full = _source({}, DT=dt)
    pruned = _source({"inbounds": ("K", "N")}, DT=dt)
    assert "< K)" in full and "< N)" in full
    assert "< K)" not in pruned and "< N)" not in pruned
    # the packed words' load and the float tile's store lose their masks (the [1, BN] maxima row keeps its
    # constant-extent term)
    assert "_w = tl.load(x_ptr + (" in pruned and not re.search(r"tl\.load\(x_ptr[^\n]*mask=", pruned)
    assert not re.search(r"tl\.store\(f_ptr[^\n]*mask=", pruned)
    _copy(dt, K, N, 0, {"inbounds": ("K", "N")})  # K, N multiples of the 32 x 16 tiles


def test_inbounds_keeps_the_sizes_it_was_not_given():
    src = _source({"inbounds": ("K",)})
    assert "< N)" in src and "< K)" not in src
    _copy("int4", 64, 21, 0, {"inbounds": ("K",)})  # ragged N, masked


@pytest.mark.parametrize("wdtype", ["int4", "uint4", "int8", "uint8", "int2", "int1"])
@pytest.mark.parametrize("magic", [True, False])
def test_magic_cast_gemv_equals_the_reference(wdtype, magic):
    p = random_problem(3, 48, 256, wdtype, G=128, zero_mode="none", adtype="float16", BM=16, BN=16, BK=128)
    program = quantized_gemv.trace(**p.constants)
    kernel = compile_program(program, "triton", {"magic_cast": magic})
    assert ("bitcast=True) - " in kernel.source) == magic
    args = {k: np.copy(v) for k, v in p.args.items()}
    kernel(infer_scalars(program, args))
    assert relative_error(args["y"].astype(np.float64), p.expected) <= 2e-3


@T.kernel
def half_cast(
    x: T.Tensor("DT", ("N",)),
    h: T.Tensor("float16", ("N",)),
    N: T.int32,
    DT: T.constexpr = "int8",
    BN: T.constexpr = 64,
):
    (pn,) = T.grid(T.cdiv(N, BN))
    T.store(h, (pn * BN,), T.cast(T.load(x, (pn * BN,), (BN,)), "float16"))


@pytest.mark.parametrize("dt, magic", [("int8", True), ("uint8", True), ("int4", True), ("int16", False)])
def test_magic_cast_is_exact_and_only_for_codes_of_ten_bits_or_fewer(dt, magic):
    # every code of the dtype, cast to fp16 bit for bit as the reference does; int16 is past the 1024..2047
    # window of fp16's exponent 10, so its cast stays the conversion instruction
    d = dtype(dt)
    lo, hi = (-(1 << (d.bits - 1)), 1 << (d.bits - 1)) if d.is_signed else (0, 1 << d.bits)
    values = np.arange(lo, hi, dtype=np.int64)[:4096]
    if d.bits < 8:  # a sub-byte tensor is packed words (its default layout); the codes are the bit patterns
        x = packed_along((values.size,), d.bits, 0).pack((values & ((1 << d.bits) - 1)).astype(d.code_dtype))
    else:
        x = values.astype(f"{'' if d.is_signed else 'u'}int{d.bits}")
    args = {"x": x, "h": np.zeros(values.size, np.float16)}
    ref, tri = run_both(half_cast, {"DT": dt}, args)
    assert_same(tri["h"], ref["h"], dt)
    assert_same(tri["h"], values.astype(np.float16), dt)
    src = compile_program(half_cast.trace(DT=dt), "triton").source
    assert bool(re.search(r"bitcast=True\) - \d", src)) == magic


def test_an_interpreter_that_cannot_run_here_says_what_to_install(monkeypatch):
    # Triton 3.6's interpreter with NumPy 2.4 (measured: every kernel with a scalar loop bound fails there)
    import numpy
    import triton

    from lowbit.codegen.triton import runtime

    monkeypatch.setattr(triton, "__version__", "3.6.0")
    monkeypatch.setattr(numpy, "__version__", "2.4.6")
    assert "triton>=3.7 or numpy<2.4" in runtime.interpreter_conflict()
    monkeypatch.setattr(numpy, "__version__", "2.3.5")
    assert runtime.interpreter_conflict() is None
    monkeypatch.setattr(triton, "__version__", "3.9.0")
    monkeypatch.setattr(numpy, "__version__", "2.4.6")
    assert runtime.interpreter_conflict() is None
    monkeypatch.setattr(runtime, "INTERPRETER_CONFLICT", "the Triton 3.6.0 interpreter fails with NumPy 2.4.6 ...")
    kernel = compile_program(half_cast.trace(DT="int8"), "triton")
    with pytest.raises(BackendError, match="interpreter fails"):
        kernel({"x": np.zeros(4, np.int8), "h": np.zeros(4, np.float16), "N": 4})
