"""Packed sub-byte layouts: where each low-bit element lives inside an array of machine words.

A `PackedLayout` is a memory `Layout` from a logical coordinate to an element *slot*, plus the packing
rule from slots to (word, bit) (ANCHORS.md "Data types": both packings are layouts, the choice is a
parameter):

* word-aligned: `per_word` elements per word (default ⌊word_bits/bits⌋, e.g. ten int3 per uint32, the
  top bits unused): word = slot // per_word, bit = (slot % per_word)·bits.
* dense: one little-endian bit stream, element at bit slot·bits: word = (slot·bits) // word_bits,
  bit = (slot·bits) % word_bits; an element may straddle into word + 1.

Symbolic closed forms. `locate` never divides the whole slot: each leaf mode of the slot layout whose
stride is a multiple of the word (in slots or bits) adds `coord·stride/unit` straight to the word index;
only the remaining modes go through `//` and `%`, and not even that when they provably stay inside one
word. So `packed_along((K, N), 4, axis=0)` locates `(k, n)` at word `(k // 8)*N + n`, bit `(k % 8)*4`,
without asking sympy to prove `floor((k % 8 + 8*x)/8) == x`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import sympy

from .memory import Layout, LayoutError, make_layout, offsets, size
from .symbolic import cdiv, is_symbolic, mod, simplify_index, to_source

__all__ = ["PackedLayout", "packed_along"]

_WORD_BITS = (8, 16, 32)


def _exact_div(d: Any, unit: int) -> Any:
    # d / unit when it is provably an integer, else None
    if is_symbolic(d):
        q = sympy.sympify(d) / unit
        return q if q.is_integer else None
    return d // unit if d % unit == 0 else None


@dataclass(frozen=True, init=False)
class PackedLayout:
    """Logical coordinate → (word, bit) for `bits`-wide codes packed into `word_bits`-bit words.

    `layout` maps a coordinate to an element slot; `shape` is the logical tensor shape (default: the
    sizes of `layout`'s top-level modes); `word_shape` is the shape of the word array (default
    `(num_words,)`). Shapes and strides may be sympy expressions for `locate`; `pack`/`unpack` need ints.
    """

    layout: Layout
    bits: int
    word_bits: int
    per_word: int | None  # word-aligned: elements per word; dense: None
    dense: bool
    shape: tuple[Any, ...]
    word_shape: tuple[Any, ...]

    def __init__(
        self,
        layout: Layout,
        bits: int,
        word_bits: int = 32,
        per_word: int | None = None,
        dense: bool = False,
        *,
        shape: tuple[Any, ...] | None = None,
        word_shape: tuple[Any, ...] | None = None,
    ) -> None:
        if word_bits not in _WORD_BITS:
            raise LayoutError(f"word_bits {word_bits} is not supported; use one of {_WORD_BITS}")
        if not 1 <= bits <= word_bits:
            raise LayoutError(f"bits {bits} must be in [1, word_bits={word_bits}]")
        if dense and per_word is not None:
            raise LayoutError("per_word applies to word-aligned packing; dense packing has no per-word count")
        if not dense:
            per_word = word_bits // bits if per_word is None else per_word
            if not 1 <= per_word * bits <= word_bits:
                raise LayoutError(
                    f"per_word {per_word} × bits {bits} does not fit a {word_bits}-bit word; "
                    f"use at most {word_bits // bits}"
                )
        set_ = object.__setattr__
        set_(self, "layout", layout)
        set_(self, "bits", bits)
        set_(self, "word_bits", word_bits)
        set_(self, "per_word", per_word)
        set_(self, "dense", dense)
        set_(self, "shape", tuple(size(m) for m in layout) if shape is None else tuple(shape))
        if word_shape is None:
            slots = layout.cosize
            words = cdiv(slots * bits, word_bits) if dense else cdiv(slots, per_word)
            word_shape = (simplify_index(words),)
        set_(self, "word_shape", tuple(word_shape))

    @property
    def num_words(self) -> Any:
        """Number of words in the word array (an int, or a sympy expression for symbolic shapes)."""
        return simplify_index(math.prod(self.word_shape))

    @property
    def word_dtype(self) -> np.dtype:
        return np.dtype(f"uint{self.word_bits}")

    def locate(self, *coord: Any) -> tuple[Any, Any]:
        """(word, bit) of the element at `coord`: ints, numpy index arrays (elementwise) or sympy.

        `bit` is the position of the element's least significant bit in `word`; in a dense layout the
        element continues into `word + 1` when `bit + bits > word_bits`.
        """
        # per leaf mode: whole words go straight to the word index, the rest is an offset in units
        unit, scale = (self.word_bits, self.bits) if self.per_word is None else (self.per_word, 1)  # None: dense
        word: Any = 0
        rest: Any = 0
        rest_max: Any = 0
        for c, (s, d) in zip(self.layout.flat_coord(*coord), self.layout.flat_modes()):
            q = _exact_div(d * scale, unit)
            if q is not None:
                word = word + c * q
            else:
                rest = rest + c * d * scale
                rest_max = rest_max + (s - 1) * d * scale
        if is_symbolic(rest_max) or rest_max >= unit:  # the rest may cross words: divide it
            word, rest = word + rest // unit, mod(rest, unit)
        bit = rest if self.dense else rest * self.bits
        return simplify_index(word), simplify_index(bit)

    # -- numeric packing
    def _int_shapes(self, op: str) -> tuple[tuple[int, ...], int]:
        if any(is_symbolic(x) for x in (*self.shape, *self.word_shape)):
            raise LayoutError(f"PackedLayout.{op} needs integer shapes; substitute the size symbols first")
        return tuple(int(x) for x in self.shape), int(self.num_words)

    def _all_locations(self, shape: tuple[int, ...]) -> tuple[np.ndarray, np.ndarray]:
        coords = np.indices(shape).reshape(len(shape), -1)  # [ndim, numel]
        numel = coords.shape[1]
        word, bit = self.locate(tuple(coords))
        word = np.broadcast_to(np.asarray(word, np.int64), (numel,))  # [numel]
        bit = np.broadcast_to(np.asarray(bit, np.int64), (numel,))  # [numel]
        return word, bit

    def pack(self, codes: np.ndarray) -> np.ndarray:
        """Pack unsigned codes (each < 2**bits) of shape `shape` into words of shape `word_shape`."""
        shape, num_words = self._int_shapes("pack")
        codes = np.asarray(codes)
        if codes.shape != shape:
            raise LayoutError(f"PackedLayout.pack: codes have shape {codes.shape}, the layout {shape}")
        flat = codes.reshape(-1).astype(np.int64)  # [numel]
        if flat.size and (flat.min() < 0 or flat.max() >= 1 << self.bits):
            raise LayoutError(
                f"PackedLayout.pack: codes must be unsigned {self.bits}-bit patterns in "
                f"[0, {(1 << self.bits) - 1}], got [{flat.min()}, {flat.max()}]; encode them first"
            )
        if not self.dense:
            return self._pack_aligned(flat, shape, num_words)
        word, bit = self._all_locations(shape)
        self._check_injective(self._slots(shape))
        acc = np.zeros(num_words + 1, np.uint64)  # [num_words + 1]: one spare for a straddling tail
        if flat.size and word.max() >= num_words:
            raise LayoutError(f"PackedLayout.pack: {self} reaches word {word.max()} of {num_words}")
        full = flat.astype(np.uint64) << bit.astype(np.uint64)  # [numel], below bit 2*word_bits
        np.bitwise_or.at(acc, word, full & np.uint64((1 << self.word_bits) - 1))
        np.bitwise_or.at(acc, word + 1, full >> np.uint64(self.word_bits))
        if acc[num_words]:
            raise LayoutError(f"PackedLayout.pack: {self} straddles past its last word {num_words - 1}")
        return acc[:num_words].astype(self.word_dtype).reshape(tuple(int(w) for w in self.word_shape))

    def _pack_aligned(self, flat: np.ndarray, shape: tuple[int, ...], num_words: int) -> np.ndarray:
        """Word-aligned packing (word = slot // per_word, bit = (slot % per_word)·bits) as one scatter of the codes
        to their slots and per_word shifted ORs. What `pack` did through `locate` and `np.bitwise_or.at` is
        written out here for speed: `quantize` of a 4096x4096 int4 weight took 0.81 s against 1.62 on the AMD VM
        (a 28672x8192 layer had taken 60-80 s on the H200 machine's host, session 48); test_packed.py checks that
        every element lands where `locate` puts it."""
        per = int(self.per_word or 1)
        slots = self._slots(shape)
        self._check_injective(slots)
        if slots.size and slots.max() >= num_words * per:
            raise LayoutError(f"PackedLayout.pack: {self} reaches word {slots.max() // per} of {num_words}")
        grid = np.zeros(num_words * per, self.word_dtype)  # [num_words * per_word]: codes by slot
        grid[slots] = flat
        grid = grid.reshape(num_words, per)
        words = np.zeros(num_words, self.word_dtype)  # [num_words]
        for j in range(per):
            words |= grid[:, j] << self.word_dtype.type(j * self.bits)
        return words.reshape(tuple(int(w) for w in self.word_shape))

    def unpack(self, words: np.ndarray) -> np.ndarray:
        """Codes of shape `shape` (uint8/16/32 by `bits`) read back from a word array."""
        shape, num_words = self._int_shapes("unpack")
        words = np.asarray(words).reshape(-1)
        if words.size != num_words:
            raise LayoutError(f"PackedLayout.unpack: got {words.size} words, the layout has {num_words}")
        code_dtype = np.uint8 if self.bits <= 8 else np.uint16 if self.bits <= 16 else np.uint32
        if not self.dense:  # word-aligned: every word's slots at once, then each element's slot
            per = int(self.per_word or 1)
            # in the words' own unsigned width, each slot cast to the codes' width before the gather (int64 all
            # along took 0.92 s for an 11008x4096 int2 weight)
            wide: Any = np.uint64 if self.word_bits > 32 else np.uint32
            w: np.ndarray = words.astype(wide) & np.asarray((1 << self.word_bits) - 1, wide)
            shifts = (np.arange(per) * self.bits).astype(wide)  # [per_word]
            codes = (w[:, None] >> shifts) & np.asarray((1 << self.bits) - 1, wide)
            grid = codes.astype(code_dtype).reshape(-1)
            return grid[self._slots(shape)].reshape(shape)  # grid: [num_words * per_word]
        acc = np.zeros(num_words + 1, np.uint64)  # [num_words + 1]
        acc[:num_words] = words.astype(np.int64) & ((1 << self.word_bits) - 1)
        word, bit = self._all_locations(shape)
        full = acc[word] | (acc[word + 1] << np.uint64(self.word_bits))  # [numel]
        codes = (full >> bit.astype(np.uint64)) & np.uint64((1 << self.bits) - 1)
        return codes.astype(code_dtype).reshape(shape)

    def _slots(self, shape: tuple[int, ...]) -> np.ndarray:
        """The slot of every element, in row-major order of `shape` ([numel] int64)."""
        numel = math.prod(shape)
        fast = offsets(self.layout, shape)
        if fast is not None:
            return fast
        slots = self.layout(tuple(np.indices(shape).reshape(len(shape), -1)))
        return np.broadcast_to(np.asarray(slots, np.int64), (numel,)).reshape(-1)

    def _check_injective(self, slots: np.ndarray) -> None:
        # one O(n) pass instead of np.unique's sort (0.05 s vs 13 s for a 4096x4096 weight): mark each slot; two
        # elements share one iff fewer slots are marked than there are elements (bool marks, not bincount's
        # int64 counts: 0.2 s vs 0.8 for an 11008x4096 int2 weight)
        if not slots.size:
            return
        seen = np.zeros(int(slots.max()) + 1, dtype=bool) if slots.min() >= 0 else None
        if seen is not None:
            seen[slots] = True
        if seen is None or int(np.count_nonzero(seen)) != slots.size:
            raise LayoutError(f"PackedLayout.pack: {self} gives two elements the same slot")

    def __str__(self) -> str:
        packing = "dense" if self.dense else f"{self.per_word}/word"
        shape = ",".join(to_source(s) for s in self.shape)
        return f"packed<u{self.bits} in u{self.word_bits}, {packing}>[{shape}] {self.layout}"


def packed_along(
    shape: tuple[Any, ...],
    bits: int,
    axis: int,
    word_bits: int = 32,
    dense: bool = False,
    per_word: int | None = None,
) -> PackedLayout:
    """The standard layout packing consecutive elements along `axis` of a row-major tensor.

    The packed axis of extent E splits into (group, cdiv(E, group)) with the group in one word
    (word-aligned: group = per_word, default ⌊word_bits/bits⌋) or, for dense packing, in the fewest
    whole words, group = word_bits / gcd(bits, word_bits) elements in bits / gcd(...) words (32 int3
    in 3 uint32). The words form a row-major array of shape `shape` with `shape[axis]` replaced by
    cdiv(E, group), plus a trailing axis of the words of a group when a group spans several words.
    Shapes may be sympy size symbols. Example: `packed_along((K, N), 4, axis=0).locate(k, n)` is
    (`(k // 8)*N + n`, `(k % 8)*4`).
    """
    shape = tuple(shape)
    axis = axis % len(shape) if -len(shape) <= axis < len(shape) else axis
    if not 0 <= axis < len(shape):
        raise LayoutError(f"packed_along: axis {axis} out of range for shape {shape}")
    if dense:
        if per_word is not None:
            raise LayoutError("packed_along: per_word is for word-aligned packing; drop it or dense=False")
        group = word_bits // math.gcd(bits, word_bits)
        group_words = group * bits // word_bits
    else:
        group = word_bits // bits if per_word is None else per_word
        group_words = 1
    grouped = tuple(cdiv(e, group) if i == axis else e for i, e in enumerate(shape))
    group_strides = []  # row-major strides of the grouped array, in groups
    running: Any = 1
    for e in reversed(grouped):
        group_strides.append(running)
        running = running * e
    group_strides.reverse()
    modes = [
        Layout((group, grouped[i]), (1, group_strides[i] * group)) if i == axis else Layout(e, group_strides[i] * group)
        for i, e in enumerate(shape)
    ]
    word_shape = grouped + ((group_words,) if group_words > 1 else ())
    return PackedLayout(
        make_layout(*modes),
        bits,
        word_bits,
        None if dense else group,
        dense,
        shape=tuple(simplify_index(e) for e in shape),
        word_shape=tuple(simplify_index(w) for w in word_shape),
    )
