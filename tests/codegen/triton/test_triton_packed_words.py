"""Packed loads that are whole words along a run axis of the layout load each word once and split it into
its codes (`memory._load_words`); the result equals the reference interpreter's for every dtype, packing
axis, ragged size (a last word with spare slots holding garbage), user mask and `other`, and the per-code
path is kept where a tile's offset is not provably a multiple of the codes per word."""

from __future__ import annotations

import numpy as np
import pytest
from backend_harness import assert_same, run_both
from hypothesis import given, settings
from hypothesis import strategies as st

import lowbit.lang as T
from lowbit.codegen.backend import compile_program
from lowbit.codegen.triton.memory import _runs
from lowbit.dtypes import decode, dtype, encode
from lowbit.ir.layout import packed_along
from lowbit.kernels.layouts import column_tiled, reordered_packed

ROW_PACKED = T.packed(axis=0)


@T.kernel
def packed_tiles(
    x: T.Tensor("DT", ("K", "N"), layout="lay"),
    f: T.Tensor("float32", ("K", "N")),
    top: T.Tensor("float32", (1, "N")),
    K: T.int32,
    N: T.int32,
    DT: T.constexpr = "int4",
    lay: T.constexpr = ROW_PACKED,
    BK: T.constexpr = 32,
    BN: T.constexpr = 16,
    SHIFT: T.constexpr = 0,
    OTHER: T.constexpr = 0.0,
    MASKED: T.constexpr = False,
):
    # a grid over N, a loop over K: offsets from a program id and from a loop variable (plus SHIFT rows)
    # and the column maxima over whole tiles: a code read from a last word's spare slots would show there
    (pn,) = T.grid(T.cdiv(N, BN))
    m = T.full((1, BN), -1000.0, "float32", name="m")
    for k0 in T.range(0, K, BK, name="k0"):
        mask = T.broadcast_to(T.expand_dims(T.arange(0, BN) % 3 != 1, 0), (BK, BN)) if MASKED else None
        v = T.cast(T.load(x, (k0 + SHIFT, pn * BN), (BK, BN), mask=mask, other=OTHER), "float32")
        T.store(f, (k0 + SHIFT, pn * BN), v)
        T.assign(m, T.maximum(m, T.max(v, axis=0, keepdims=True)))
    T.store(top, (0, pn * BN), m)


def _words_with_garbage(layout, codes: np.ndarray, seed: int) -> np.ndarray:
    """Packed words whose slots past the tensor (a ragged last word) hold random bits, not zeros."""
    words = layout.pack(codes)
    used = layout.pack(np.full(codes.shape, (1 << layout.bits) - 1, codes.dtype))  # the bits codes occupy
    noise = np.random.default_rng(seed).integers(0, 1 << 32, words.shape, dtype=np.uint64).astype(words.dtype)
    return words | (noise & ~used)


def _run(dt: str, K: int, N: int, axis: int, seed: int = 0, **constants):
    d = dtype(dt)
    codes = np.random.default_rng(seed).integers(0, 1 << d.bits, (K, N)).astype(d.code_dtype)
    if d.has_nan or d.has_inf:  # finite values, so a NaN in the output can only come from the load
        codes = encode(d, np.nan_to_num(decode(d, codes), nan=0.0, posinf=0.0, neginf=0.0))
    layout = packed_along((K, N), d.bits, axis)
    args = {"x": _words_with_garbage(layout, codes, seed), "f": np.zeros((K, N), np.float32)}
    args["top"] = np.zeros((1, N), np.float32)
    ref, tri = run_both(packed_tiles, {"DT": dt, "lay": T.packed(axis=axis), **constants}, args)
    assert_same(tri["f"], ref["f"], f"{dt} axis {axis} {K}x{N} {constants}")
    assert_same(tri["top"], ref["top"], f"{dt} axis {axis} {K}x{N} {constants}: column maxima")
    return ref["f"]


def _source(**constants) -> str:
    return compile_program(packed_tiles.trace(**constants), "triton").source


@settings(max_examples=12)
@given(
    dt=st.sampled_from(["int4", "uint4", "int2", "uint1", "int8", "fp4_e2m1", "fp8_e4m3", "fp3_e1m1"]),
    K=st.integers(1, 70),
    N=st.integers(1, 40),
    axis=st.sampled_from([0, 1]),
    masked=st.booleans(),
    seed=st.integers(0, 3),
)
def test_word_loads_equal_the_reference(dt, K, N, axis, masked, seed):
    d = dtype(dt)
    other = (-2.0 if d.is_float or d.is_signed else 1.0) if masked else 0.0  # nonzero, of the dtype (the DSL checks)
    f = _run(dt, K, N, axis, seed, MASKED=masked, OTHER=other)
    assert not np.isnan(f).any()


@pytest.mark.parametrize("dt", ["int4", "fp4_e2m1", "uint2"])
def test_tiles_that_are_whole_words_load_each_word_once(dt):
    assert "tl.reshape" in _source(DT=dt, lay=T.packed(axis=0))
    assert "tl.reshape" in _source(DT=dt, lay=T.packed(axis=1))


@pytest.mark.parametrize(
    "axis, constants",
    [
        (0, dict(SHIFT=4)),  # k0 + 4 is not a multiple of the 8 codes per word
        (0, dict(DT="int3")),  # ten codes per word: no power-of-two tile is whole words
        (1, dict(BN=4)),  # 4 columns: half a word along N
    ],
)
def test_per_code_loads_where_a_tile_is_not_whole_words(axis, constants):
    constants = {"DT": "int4", **constants}
    assert "tl.reshape" not in _source(lay=T.packed(axis=axis), **constants)
    _run(constants.pop("DT"), 45, 24, axis, **constants)


def test_word_runs_of_the_library_layouts():
    # row-packed and column-tiled words hold runs along K; the reordered (fragment) layout has none
    assert _runs(packed_along((64, 32), 4, 0)) == ((0, 8),)
    assert _runs(packed_along((64, 32), 2, 1)) == ((1, 16),)
    assert _runs(column_tiled((128, 64), 4)) == ((0, 8),)
    assert _runs(packed_along((64, 32), 3, 0)) == ()
    assert _runs(reordered_packed((128, 64), 4)) == ()


def test_gemv_copies_each_weight_word_once_on_sm90(monkeypatch):
    # the sm_90 specialization of aligned arguments: every asynchronous copy of the word path is 16 bytes,
    # and it issues far fewer than the per-code form, which copies each int4 word once per code (Triton 3.9:
    # 12 against 54 per thread, 3 stages; compared in one run, not pinned, so a new pipeliner keeps the check)
    import re

    import lowbit.codegen.triton as triton_backend
    from lowbit.codegen.triton import memory
    from lowbit.codegen.triton.runtime import TritonKernel
    from lowbit.kernels.gemv import quantized_gemv

    program = quantized_gemv.trace(wdtype="int4", G=128, adtype="float16", BM=16, BN=64, BK=128)
    pattern = r"cp\.async\.c[ag]\.shared\.global(?:\.L2::\w+)? \[[^\]]*\], \[[^\]]*\], (0x\w+)"

    def copies() -> list[str]:  # lowered anew each time (compile_program would return its cached kernel)
        kernel = TritonKernel(program, {"num_warps": 4, "num_stages": 3})
        return re.findall(pattern, triton_backend.compile_sm90(kernel, aligned=True)["ptx"])

    words = copies()
    monkeypatch.setattr(memory, "_word_run", lambda *a: None)
    per_code = copies()
    assert words and set(words) == {"0x10"}, words
    assert 3 * len(words) <= len(per_code), (len(words), len(per_code))
