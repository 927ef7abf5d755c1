"""Packed sub-byte layouts: round trips, bit positions read from the words, and closed forms."""

from __future__ import annotations

import math

import numpy as np
import pytest
import sympy
from hypothesis import given
from hypothesis import strategies as st

from lowbit.ir.layout import Layout, LayoutError, PackedLayout, index_symbols, packed_along, size_symbols, to_source
from lowbit.ir.layout.symbolic import SOURCE_NAMESPACE

k, n, i = index_symbols("k n i")
K, N = size_symbols("K N")


@st.composite
def packed_cases(draw):
    bits = draw(st.integers(1, 8))
    word_bits = draw(st.sampled_from([8, 16, 32]))
    dense = draw(st.booleans())
    shape = tuple(draw(st.lists(st.integers(1, 9), min_size=1, max_size=3)))
    axis = draw(st.integers(0, len(shape) - 1))
    per_word = None if dense else draw(st.one_of(st.none(), st.integers(1, word_bits // bits)))
    layout = packed_along(shape, bits, axis, word_bits, dense=dense, per_word=per_word)
    codes = draw(st.lists(st.integers(0, (1 << bits) - 1), min_size=math.prod(shape), max_size=math.prod(shape)))
    return layout, np.array(codes, dtype=np.int64).reshape(shape)


def _read_bits(words: np.ndarray, word: int, bit: int, bits: int, word_bits: int) -> int:
    # the `bits` bits starting at `bit` of `word`, continuing into `word + 1` (dense straddling)
    flat = [int(w) for w in words.reshape(-1)] + [0]
    window = flat[word] | (flat[word + 1] << word_bits)
    return (window >> bit) & ((1 << bits) - 1)


@given(packed_cases())
def test_round_trip_and_locate(case) -> None:
    layout, codes = case
    words = layout.pack(codes)
    assert words.dtype == np.dtype(f"uint{layout.word_bits}")
    assert words.shape == layout.word_shape and words.size == layout.num_words
    np.testing.assert_array_equal(layout.unpack(words), codes)
    for coord in np.ndindex(codes.shape):  # locate says where pack put each element
        word, bit = layout.locate(coord)
        assert _read_bits(words, word, bit, layout.bits, layout.word_bits) == codes[coord]
        if not layout.dense:
            assert bit + layout.bits <= layout.word_bits  # word-aligned never straddles
    ones = layout.pack(np.full(codes.shape, (1 << layout.bits) - 1))
    total = sum(bin(int(w)).count("1") for w in ones.reshape(-1))
    assert total == codes.size * layout.bits  # no two elements share a bit


@pytest.mark.parametrize("dense", [False, True])
@pytest.mark.parametrize("word_bits", [8, 16, 32])
@pytest.mark.parametrize("bits", range(1, 9))
def test_every_width_round_trips(bits: int, word_bits: int, dense: bool) -> None:
    codes = (np.arange(5 * 11).reshape(5, 11) * 37) % (1 << bits)  # [5, 11], every code value for bits <= 5
    for axis in (0, 1):
        layout = packed_along(codes.shape, bits, axis, word_bits, dense=dense)
        np.testing.assert_array_equal(layout.unpack(layout.pack(codes)), codes)


@given(st.integers(1, 8), st.sampled_from([8, 16, 32]), st.integers(1, 70))
def test_dense_1d_is_the_little_endian_bit_stream(bits: int, word_bits: int, extent: int) -> None:
    # ANCHORS "Data types": element i occupies bits [i·b, (i+1)·b) of the stream
    codes = np.arange(extent) * 7 % (1 << bits)
    stream = sum(int(c) << (j * bits) for j, c in enumerate(codes))
    layout = packed_along((extent,), bits, 0, word_bits, dense=True)
    expected = [(stream >> (w * word_bits)) & ((1 << word_bits) - 1) for w in range(layout.num_words)]
    assert [int(w) for w in layout.pack(codes).reshape(-1)] == expected


@given(st.integers(1, 8), st.sampled_from([8, 16, 32]), st.integers(1, 70))
def test_aligned_1d_puts_per_word_codes_in_each_word(bits: int, word_bits: int, extent: int) -> None:
    codes = np.arange(extent) * 5 % (1 << bits)
    per_word = word_bits // bits
    layout = packed_along((extent,), bits, 0, word_bits)
    expected = [
        sum(int(c) << (t * bits) for t, c in enumerate(codes[w * per_word : (w + 1) * per_word]))
        for w in range(-(-extent // per_word))
    ]
    assert [int(w) for w in layout.pack(codes)] == expected


def test_generic_slot_layout_round_trips() -> None:
    # a column-major slot layout, 10 int3 per uint32 and a dense uint16 stream
    for packed in (PackedLayout(Layout((4, 6)), 3), PackedLayout(Layout((5, 7), (7, 1)), 5, 16, dense=True)):
        codes = np.arange(math.prod(packed.shape)).reshape(packed.shape) % (1 << packed.bits)
        np.testing.assert_array_equal(packed.unpack(packed.pack(codes)), codes)
    assert PackedLayout(Layout((4, 6)), 3).num_words == 3 and PackedLayout(Layout(20), 3).per_word == 10


# ---------------------------------------------------------------------------------------------------
# closed forms for the code generators


def _check(expr, text: str, hand_written) -> None:
    assert to_source(expr) == text
    assert sympy.expand(expr - hand_written) == 0


def test_int4_along_k_closed_form() -> None:
    word, bit = packed_along((K, N), 4, axis=0).locate((k, n))
    _check(word, "(k // 8)*N + n", (k // 8) * N + n)
    _check(bit, "(k % 8)*4", (k % 8) * 4)


def test_int3_closed_forms() -> None:
    word, bit = packed_along((K, N), 3, axis=0).locate(k, n)  # ten int3 per uint32
    _check(word, "(k // 10)*N + n", (k // 10) * N + n)
    _check(bit, "(k % 10)*3", (k % 10) * 3)
    word, bit = packed_along((K, N), 4, axis=1).locate(k, n)
    _check(word, "k*cdiv(N, 8) + n // 8", k * sympy.ceiling(N / 8) + n // 8)
    _check(bit, "(n % 8)*4", (n % 8) * 4)
    word, bit = packed_along((K, N), 3, axis=0, dense=True).locate(k, n)  # 32 int3 in 3 uint32
    assert to_source(word) == "(k // 32)*N*3 + n*3 + (k % 32)*3 // 32"
    assert to_source(bit) == "(k % 32)*3 % 32"


def test_word_shapes() -> None:
    assert packed_along((K, N), 4, 0).word_shape == (sympy.ceiling(K / 8), N)
    assert packed_along((16, 6), 4, 0).word_shape == (2, 6)
    assert packed_along((64, 4), 3, 0, dense=True).word_shape == (2, 4, 3)
    assert packed_along((4, 64), 6, 1, dense=True).word_shape == (4, 4, 3)
    assert packed_along((K, N), 4, 0).num_words == N * sympy.ceiling(K / 8)


@given(
    st.integers(1, 8),
    st.sampled_from([8, 16, 32]),
    st.booleans(),
    st.integers(0, 1),
    st.integers(1, 20),
    st.integers(1, 5),
)
def test_symbolic_locate_equals_numeric(bits: int, word_bits: int, dense: bool, axis: int, kv: int, nv: int) -> None:
    symbolic = packed_along((K, N), bits, axis, word_bits, dense=dense)
    numeric = packed_along((kv, nv), bits, axis, word_bits, dense=dense)
    word, bit = (compile(to_source(e), "<locate>", "eval") for e in symbolic.locate(k, n))
    for kk in range(kv):
        for nn in range(nv):
            env = {**SOURCE_NAMESPACE, "K": kv, "N": nv, "k": kk, "n": nn}
            assert (eval(word, env), eval(bit, env)) == numeric.locate(kk, nn)


def test_vectorised_locate_matches_scalar() -> None:
    layout = packed_along((12, 5), 3, 0, dense=True)
    kk, nn = np.meshgrid(np.arange(12), np.arange(5), indexing="ij")
    words, bits = layout.locate((kk, nn))  # [12, 5] each
    assert all((words[a, b], bits[a, b]) == layout.locate(a, b) for a in range(12) for b in range(5))


def test_errors_say_what_to_fix() -> None:
    layout = packed_along((8, 2), 4, 0)
    with pytest.raises(LayoutError, match=r"unsigned 4-bit patterns in \[0, 15\]"):
        layout.pack(np.full((8, 2), 16))
    with pytest.raises(LayoutError, match=r"codes have shape \(2, 8\)"):
        layout.pack(np.zeros((2, 8), np.int64))
    with pytest.raises(LayoutError, match=r"substitute the size symbols"):
        packed_along((K, N), 4, 0).pack(np.zeros((2, 2), np.int64))
    with pytest.raises(LayoutError, match=r"per_word 9 × bits 4 does not fit a 32-bit word; use at most 8"):
        PackedLayout(Layout(16), 4, per_word=9)
    with pytest.raises(LayoutError, match=r"gives two elements the same slot"):
        PackedLayout(Layout((4, 2), (1, 0)), 4).pack(np.zeros((4, 2), np.int64))


def test_agrees_with_dtypes_packing() -> None:
    from lowbit.dtypes import packing

    codes = np.arange(6 * 20) % 8  # [6, 20] int3 codes, packed along the last axis
    codes = codes.reshape(6, 20)
    layout = packed_along((6, 20), 3, 1)  # word-aligned, 10 per uint32, rows of 2 words
    order = np.asarray(layout.layout(tuple(np.indices((6, 20)).reshape(2, -1))))  # slot of element i
    np.testing.assert_array_equal(layout.pack(codes).reshape(-1), packing.pack_words(codes, 3, order=order))
    dense = packed_along((120,), 3, 0, word_bits=8, dense=True)  # 8 int3 in 3 bytes
    stream = packing.pack_dense(codes.reshape(-1), 3)
    np.testing.assert_array_equal(dense.pack(codes.reshape(-1)).reshape(-1), stream)
