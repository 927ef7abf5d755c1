"""The tile-reordered weight layout: a bijection, 16-byte fragments, and kernels unchanged on it."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from lowbit.dtypes import dtype
from lowbit.ir.layout import LayoutError, packed_along
from lowbit.kernels.gemv import quantized_gemv
from lowbit.kernels.gemv_x16 import plane_words
from lowbit.kernels.layouts import (
    PLANE_BITS,
    VECTOR_ALIGN,
    aligned,
    column_tiled,
    fragment_codes,
    plane_layout,
    reordered_packed,
    weight_layout,
)
from lowbit.kernels.quantized_gemm import quantized_gemm, random_problem

BITS = list(range(1, 9))


def shape_and_tile(bits, kt, nt, bk_vectors, bn, k_ragged, n_ragged):
    v = fragment_codes(bits)
    bk = v * bk_vectors
    return (kt * bk - k_ragged % bk, nt * bn - n_ragged % bn), (bk, bn)


@settings(max_examples=30)
@given(
    bits=st.sampled_from(BITS),
    kt=st.integers(1, 3),
    nt=st.integers(1, 3),
    bk_vectors=st.integers(1, 2),
    bn=st.sampled_from([4, 8, 16]),
    k_ragged=st.integers(0, 40),
    n_ragged=st.integers(0, 15),
    seed=st.integers(0, 2**16),
)
def test_bijection_pack_unpack_round_trip(bits, kt, nt, bk_vectors, bn, k_ragged, n_ragged, seed):
    shape, tile = shape_and_tile(bits, kt, nt, bk_vectors, bn, k_ragged, n_ragged)
    layout = reordered_packed(shape, bits, tile)
    coords = np.indices(shape).reshape(2, -1)
    slots = np.asarray(layout.layout(tuple(coords)))
    assert np.unique(slots).size == slots.size  # injective on the logical shape
    padded = (-(-shape[0] // tile[0]) * tile[0]) * (-(-shape[1] // tile[1]) * tile[1])
    assert slots.min() >= 0 and slots.max() < padded  # into the padded tiles: a bijection when not ragged
    codes = np.random.default_rng(seed).integers(0, 1 << bits, shape).astype(np.uint8)
    assert np.array_equal(layout.unpack(layout.pack(codes)), codes)


@pytest.mark.parametrize("bits", BITS)
def test_fragments_are_whole_16_byte_runs(bits):
    v = fragment_codes(bits)
    bk, bn = 2 * v, 8
    shape = (3 * bk, 2 * bn)
    layout = reordered_packed(shape, bits, (bk, bn))
    for k0 in range(0, shape[0], v):
        for n in range(shape[1]):
            word, _ = layout.locate(np.arange(k0, k0 + v), np.full(v, n))
            byte = np.unique(np.asarray(word)) * 4  # the bytes of the words this fragment touches
            assert byte[0] % 16 == 0 and np.array_equal(byte, byte[0] + 4 * np.arange(4)), (k0, n, byte)
    # consecutive columns of a fragment row are consecutive vectors; a tile is one contiguous block
    w0, _ = layout.locate(0, 0)
    w1, _ = layout.locate(0, 1)
    assert w1 - w0 == 4
    tile_words = {int(layout.locate(k, n)[0]) for k in range(bk) for n in range(bn)}
    assert tile_words == set(range(bk * bn // (v // 4)))


def test_order_is_documented_one():
    # int4: V = 32 codes per fragment; order nt > kt > kv > n > kin (layouts.py)
    layout = reordered_packed((128, 64), 4, (64, 32))
    slot = lambda k, n: int(layout.layout((k, n)))  # noqa: E731
    assert slot(1, 0) == 1 and slot(0, 1) == 32 and slot(32, 0) == 32 * 32
    assert slot(64, 0) == 64 * 32 and slot(0, 32) == 128 * 32


def test_errors_name_value_and_fix():
    with pytest.raises(LayoutError, match=r"BK=48 must be a positive multiple of 32.*use BK=64"):
        reordered_packed((128, 64), 4, (48, 32))
    with pytest.raises(LayoutError, match="layout 'tiled' is not known"):
        weight_layout("tiled", (128, 64), 4)
    with pytest.raises(LayoutError, match="build it for this weight"):
        weight_layout(reordered_packed((128, 64), 4, (64, 32)), (128, 32), 4)


@pytest.mark.parametrize(
    "wdtype,G,zero_mode,shape,tile",
    [("int4", 32, "post", (256, 40), (64, 32)), ("uint2", 64, "none", (128, 24), (64, 8)),
     ("int8", -1, "pre", (64, 33), (32, 16)), ("fp4_e2m1", 128, "none", (256, 64), (128, 32))],
)  # fmt: skip
def test_kernels_unchanged_on_reordered_layout(wdtype, G, zero_mode, shape, tile):
    K, N = shape
    p = random_problem(5, N, K, wdtype, G=G, zero_mode=zero_mode, seed=7, BK=64, BN=32)
    bits = dtype(wdtype).bits
    codes = packed_along((K, N), bits, 0).unpack(p.args["w"])  # [K, N] bit patterns
    reordered = reordered_packed((K, N), bits, tile)
    for kernel in (quantized_gemm, quantized_gemv):
        row_args = dict(p.args, y=np.zeros_like(p.args["y"]))
        kernel.run(**row_args, **p.constants)
        re_args = dict(p.args, w=reordered.pack(codes), y=np.zeros_like(p.args["y"]))
        kernel.run(**re_args, **p.constants, wlayout=reordered)
        assert np.array_equal(row_args["y"], re_args["y"]), kernel.name


@pytest.mark.parametrize("bits", [2, 4, 8])
def test_column_tiled_pairs_puts_even_k_in_the_low_half(bits):
    """pairs=True: k = 2s + h of a word's per codes at slot h·per/2 + s; the same codes as the plain layout,
    and `retile_columns(pairs=True)`'s fast word shuffle equals packing through the layout."""
    from lowbit.ops import quantize
    from lowbit.ops.weight import retile_columns

    k, n, per = 64, 96, 32 // bits
    lay = column_tiled((k, n), bits, 64, pairs=True)
    kk = np.arange(k)[:, None]
    word, bit = (np.broadcast_to(np.asarray(v), (k, 3)) for v in lay.locate(kk, np.array([[0, 5, 70]])))
    plain_word, _ = (
        np.broadcast_to(np.asarray(v), (k, 3))
        for v in column_tiled((k, n), bits, 64).locate(kk, np.array([[0, 5, 70]]))
    )
    assert (word == plain_word).all()
    r = np.arange(k)[:, None] % per
    assert (bit == bits * ((r % 2) * (per // 2) + r // 2)).all()
    codes = np.random.default_rng(bits).integers(0, 1 << bits, (k, n)).astype(np.uint8)
    assert np.array_equal(lay.unpack(lay.pack(codes)), codes)
    qw = quantize(np.random.default_rng(0).standard_normal((n, k)).astype(np.float32), f"int{bits}", 32)
    tiled = retile_columns(qw, 64, pairs=True)
    assert tiled.layout == lay and np.array_equal(tiled.words, lay.pack(qw.codes()))


def test_pairs_need_an_even_fragment():
    with pytest.raises(LayoutError, match="even fragment length"):
        column_tiled((60, 32), 6, 32, pairs=True)  # 5 six-bit codes a word


@settings(max_examples=25)
@given(
    dtype_name=st.sampled_from(["uint8", "int8", "int32", "float16", "float32"]),
    shape=st.lists(st.integers(0, 9), min_size=1, max_size=3),
    offset=st.integers(0, 15),
)
def test_aligned_keeps_values_and_starts_on_a_cache_line(dtype_name, shape, offset):
    # a view `offset` elements into a buffer: a start 0..15 elements past NumPy's own alignment
    n = int(np.prod(shape))
    base = np.arange(n + offset, dtype=np.int64).astype(dtype_name)
    a = base[offset:].reshape(shape)
    got = aligned(a)
    assert got.ctypes.data % VECTOR_ALIGN == 0 or got.nbytes == 0
    assert got.flags.c_contiguous and got.dtype == a.dtype and got.shape == a.shape
    np.testing.assert_array_equal(got, a)
    assert aligned(got) is got  # already aligned: no second copy


def test_aligned_copies_a_strided_view_into_order():
    a = np.arange(64, dtype=np.int32).reshape(8, 8).T  # Fortran order
    got = aligned(a)
    assert got.flags.c_contiguous and got.ctypes.data % VECTOR_ALIGN == 0
    np.testing.assert_array_equal(got, a)


@settings(max_examples=20)
@given(
    bits=st.sampled_from(PLANE_BITS),
    group=st.sampled_from([32, 64, 128]),
    groups=st.integers(1, 3),
    n=st.integers(1, 70),
    bn=st.sampled_from([16, 32, 64]),
    seed=st.integers(0, 2**16),
)
def test_plane_layout_is_the_words_plane_words_writes(bits, group, groups, n, bn, seed):
    """The algebra's plane layout packs exactly the words the x16 GEMV's hand-written packer (`plane_words`)
    does, padding columns included, and unpacks them back: two independent constructions of one layout."""
    k = group * groups
    codes = np.random.default_rng(seed).integers(0, 1 << bits, (k, n))
    layout = plane_layout((k, n), bits, group, bn)
    words = layout.pack(codes)
    np.testing.assert_array_equal(words, plane_words(codes, bits, group, bn).view(np.uint32).reshape(-1))
    np.testing.assert_array_equal(layout.unpack(words), codes)


def test_plane_layout_refuses_split_codes_and_partial_groups():
    with pytest.raises(LayoutError, match="3-bit codes do not fill whole bytes"):
        plane_layout((128, 32), 3, 64)
    with pytest.raises(LayoutError, match="multiple of 32 dividing K = 96"):
        plane_layout((96, 32), 2, 64)
