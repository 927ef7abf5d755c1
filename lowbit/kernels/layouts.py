"""Weight layouts for the kernel library: the row layout and a Marlin-style tile-reordered layout.

`row_packed(shape, bits)` is the default: codes of the [K, N] weight packed along K, `⌊32/bits⌋` per
uint32 word (`packed_along`), words row-major over (K / per_word, N).

`reordered_packed(shape, bits, tile=(BK, BN))` re-lays the codes out offline so a kernel reads each weight
tile as one contiguous block made of whole 16-byte vectors, whatever the bit width (ANCHORS, Tilus:
"re-lay out weights offline so each thread's fragment is contiguous bytes"; Marlin does the same for int4).
The order, outermost first (slot = code position before word packing, word = slot // per_word):

    column block nt (N / BN)  >  K tile kt (K / BK)  >  fragment row kv (BK / V)  >  column n (BN)  >  k (V)

A *fragment* is V = (vector_bytes / 4)·per_word consecutive k of one column: exactly one 16-byte vector
(4 words; e.g. 32 int4, 40 int3, 64 int2, 16 int8 codes). Consecutive vector lanes (threads) take consecutive
columns of the same fragment row, so a warp's loads are one coalesced run; a block walking K for its column
block reads one contiguous stream. Bit widths with unused word bits (3, 5, 6, 7) keep the word-aligned
per-word count, so a fragment never straddles a vector. Ragged shapes are padded up to whole tiles (the
padding codes are 0; the logical shape stays (K, N), so loads past it still read 0).

The CuTe layout is built with the algebra, not an index table:
    kmode  = Layout(V) * Layout(BK / V, BN)          fragments of V codes, fragment rows BN·V apart
    tile   = make_layout(kmode, Layout(BN, V))       (k, n) in a tile -> slot in the tile
    whole  = tile * Layout((KT, NT), (1, KT))        tiles repeated, K tiles of a column block adjacent
    layout = ((kmode, KT), (BN, NT)) regrouped from `whole`: logical (k, n) -> slot
"""

from __future__ import annotations

from typing import Any

import numpy as np

from lowbit.ir.layout import Layout, LayoutError, PackedLayout, logical_product, make_layout, packed_along

WORD_BITS = 32
VECTOR_ALIGN = 64  # bytes: a cache line, one AVX-512 vector


def aligned(a: np.ndarray, alignment: int = VECTOR_ALIGN) -> np.ndarray:
    """`a` C-contiguous with its data starting on an `alignment`-byte boundary: `a` itself when it already is,
    else a copy. Hand-written because NumPy has no aligned allocation: its arrays start 16-byte aligned (a
    large one typically 16 or 48 bytes past a cache line), and a 64-byte vector load from such an address
    straddles two lines. Measured (Zen 4, one thread, a C loop of the int2 x16 GEMV's body, L2-resident
    weights): 190 us per 4096² at offsets 16 and 48 against 154 at 0 and 32; the int4 x16 GEMV, 1024x4096,
    53.5 against 60.6 us. Packed weights and their per-group parameters go through this once, when made."""
    a = np.asarray(a)
    if a.flags.c_contiguous and (a.nbytes == 0 or a.ctypes.data % alignment == 0):  # empty: no loads
        return a
    raw = np.empty(a.nbytes + alignment, np.uint8)
    start = -raw.ctypes.data % alignment
    out = raw[start : start + a.nbytes].view(a.dtype).reshape(a.shape)
    np.copyto(out, a)
    return out


def row_packed(shape: tuple[int, int], bits: int) -> PackedLayout:
    """Codes of a [K, N] weight packed along K into uint32 words (the kernels' default layout)."""
    return packed_along(tuple(shape), bits, 0)


def fragment_codes(bits: int, vector_bytes: int = 16) -> int:
    """Codes in one 16-byte vector of the reordered layout: (vector_bytes / 4) words of ⌊32/bits⌋ codes."""
    if vector_bytes % (WORD_BITS // 8):
        raise LayoutError(f"vector_bytes {vector_bytes} is not a whole number of 4-byte words; use 4, 8 or 16")
    return vector_bytes // (WORD_BITS // 8) * (WORD_BITS // bits)


DEFAULT_TILE = (128, 32)


def default_tile(bits: int, vector_bytes: int = 16) -> tuple[int, int]:
    """The reordered layout's tile when none is given: (128, 32) with BK rounded up to whole fragments
    (3-bit codes come 40 to a 16-byte vector: BK = 160; 5-bit 24: 144; 6-bit 20: 140). The kernels take
    their own tiles independently of it (they read the layout through its index map)."""
    v = fragment_codes(bits, vector_bytes)
    return (-(-DEFAULT_TILE[0] // v) * v, DEFAULT_TILE[1])


def reordered_packed(
    shape: tuple[int, int],
    bits: int,
    tile: tuple[int, int] | None = None,
    vector_bytes: int = 16,
    *,
    pairs: bool = False,
) -> PackedLayout:
    """The tile-reordered layout of a [K, N] code tensor (see the module docstring for the order).

    tile = (BK, BN): the kernel's K and N tile; BK must be a multiple of the fragment length
    `fragment_codes(bits, vector_bytes)`. Raises LayoutError naming the value and the fix otherwise.
    None: `default_tile(bits)`. pairs: within a fragment of V codes, k = 2s + h sits at slot h·V/2 + s (the
    fragment Layout((2, V/2), (V/2, 1)) instead of Layout(V)): even k in the low half, odd k in the high
    half, so a 16-bit half of an int4 word holds codes k, k+2, k+4, k+6 and its other half k+1 .. k+7, the
    pair order of a bf16 pair dot (`column_tiled(pairs=True)`, lowbit/codegen/tvm README).
    """
    k, n = (int(s) for s in shape)
    if not 1 <= bits <= 8:
        raise LayoutError(f"bits {bits} is not in 1..8; the reordered layout holds sub-byte or byte codes")
    bk, bn = (int(t) for t in (default_tile(bits, vector_bytes) if tile is None else tile))
    v = fragment_codes(bits, vector_bytes)
    if bk <= 0 or bn <= 0 or bk % v:
        raise LayoutError(
            f"tile {tile}: BK={bk} must be a positive multiple of {v} (the codes in one {vector_bytes}-byte "
            f"vector at {bits} bits); use BK={max(v, -(-bk // v) * v)}"
        )
    kt, nt = -(-k // bk), -(-n // bn)
    if pairs and v % 2:
        raise LayoutError(f"pairs=True needs an even fragment length; {bits}-bit fragments hold {v} codes")
    frag = Layout((2, v // 2), (v // 2, 1)) if pairs else Layout(v)
    kmode = logical_product(frag, Layout(bk // v, bn))  # (V, BK/V):(1, BN·V)
    tile_layout = make_layout(kmode, Layout(bn, v))  # ((V, BK/V), BN) -> slot in tile
    whole = logical_product(tile_layout, Layout((kt, nt), (1, kt)))  # (tile, grid) -> slot
    layout = make_layout(make_layout(whole[0][0], whole[1][0]), make_layout(whole[0][1], whole[1][1]))
    return PackedLayout(layout, bits, WORD_BITS, WORD_BITS // bits, shape=(k, n))


def column_tiled(shape: tuple[int, int], bits: int, bn: int = 32, *, pairs: bool = False) -> PackedLayout:
    """The CPU decode layout of a [K, N] weight: the row layout's words (⌊32/bits⌋ consecutive k of one column
    each) regrouped into column blocks of `bn`, each block's [K / per_word, bn] words contiguous. As an array
    it is words[⌈N / bn⌉, K / per_word, bn] (padding columns hold code 0): a GEMV tile of bn columns reads one
    contiguous run, and one word row of the tile is one or more whole vectors. It is `reordered_packed` with
    tile (per_word, bn) and one-word fragments, so every layout law (pack/unpack/locate) holds for it.
    pairs: each word's codes in pair order (`reordered_packed`), what the bf16 GEMV reads."""
    return reordered_packed(shape, bits, (WORD_BITS // bits, bn), vector_bytes=WORD_BITS // 8, pairs=pairs)


PLANE_BITS = (1, 2, 4)  # code widths with a plane layout (whole codes in each byte)


def plane_layout(shape: tuple[int, int], bits: int, group: int, bn: int = 32) -> PackedLayout:
    """The x16 GEMV's plane layout (`lowbit.kernels.gemv_x16`) of a [K, N] weight of 1-, 2- or 4-bit codes:
    per column block of bn and group of `group` k, `bits` word rows of group / 32 words a column. With
    b = bits, byte j of word row w's t-th word holds at bit b·s the code of k = (group / 8)·p + 4t + j, plane
    p = (8 / b)·w + s: so plane p is the group / 8 consecutive k from (group / 8)·p, four of a column to a
    32-bit lane. As an array words[⌈N / bn⌉, K / group, b, group / 32, bn], the words `plane_words` writes.
    Built with the algebra (per = 32 / b codes a word, rows = group / 32, R = bn·per slots a word row):
        k = (j:4, t:rows, s:8/b, w:b, g:K/group) : (8/b, R, 1, rows·R, b·rows·R)
        n = (c:bn, block:⌈N/bn⌉) : (per, K·bn)
    3-bit codes have none: the plane layout's planes 2 and 5 split each code across two words."""
    k, n = (int(v) for v in shape)
    if bits not in PLANE_BITS:
        raise LayoutError(f"plane layout: {bits}-bit codes do not fill whole bytes; use bits in {PLANE_BITS}")
    if group <= 0 or group % 32 or k % group:
        raise LayoutError(f"plane layout: group {group} must be a multiple of 32 dividing K = {k}")
    per, rows = WORD_BITS // bits, group // 32
    row = bn * per
    kmode = Layout((4, rows, 8 // bits, bits, k // group), (8 // bits, row, 1, rows * row, bits * rows * row))
    nmode = Layout((bn, -(-n // bn)), (per, k * bn))
    return PackedLayout(make_layout(kmode, nmode), bits, WORD_BITS, per, shape=(k, n))


def weight_layout(kind: Any, shape: tuple[int, int], bits: int, tile: tuple[int, int] | None = None) -> PackedLayout:
    """Resolve a layout name ("row", "reordered") or a PackedLayout for a [K, N] weight of `bits`-bit codes
    (tile: the reordered layout's, None for `default_tile(bits)`)."""
    if isinstance(kind, PackedLayout):
        if tuple(kind.shape) != tuple(shape) or kind.bits != bits:
            raise LayoutError(
                f"layout {kind} is for {kind.bits}-bit codes of shape {tuple(kind.shape)}, the weight has "
                f"{bits}-bit codes of shape {tuple(shape)}; build it for this weight"
            )
        return kind
    if kind == "row":
        return row_packed(shape, bits)
    if kind == "reordered":
        return reordered_packed(shape, bits, tile)
    raise LayoutError(f"layout {kind!r} is not known; use 'row', 'reordered' or a PackedLayout of the [K, N] codes")


__all__ = [
    "DEFAULT_TILE",
    "PLANE_BITS",
    "column_tiled",
    "default_tile",
    "fragment_codes",
    "plane_layout",
    "reordered_packed",
    "row_packed",
    "weight_layout",
]
