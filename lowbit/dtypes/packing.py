"""Bit packing of `bits`-wide codes (1..8, 16, 32): dense bit streams and word-aligned words.

* Dense: slot s occupies bits [s·b, (s+1)·b) of a little-endian byte stream (bit k lives in byte k // 8
  at bit k % 8); a code may straddle bytes. ceil(n·b / 8) bytes.
* Word-aligned: `per_word` slots per uint{word_bits} word (default floor(word_bits / b)); slot s lives in
  word s // per_word at bits [(s % per_word)·b, (s % per_word + 1)·b); the high bits a word cannot fill
  stay zero (MLC-style int3 packs 10 per uint32 and wastes 2 bits).

`order[i]` is the slot of logical element i (a permutation of range(n), chosen by a layout); None is
the identity. Packing writes code i into slot order[i]; unpacking reads it back from there.
"""

from __future__ import annotations

import numpy as np
from numpy.typing import ArrayLike

from lowbit.dtypes.datatype import DataType, code_dtype_for_bits

PACK_BITS = (1, 2, 3, 4, 5, 6, 7, 8, 16, 32)
WORD_BITS = (8, 16, 32, 64)


def dense_nbytes(count: int, bits: int | DataType) -> int:
    """Bytes in the dense stream of `count` codes of `bits` bits: ceil(count·bits / 8)."""
    return -(-count * _check_bits(bits) // 8)


def words_per_count(count: int, bits: int | DataType, word_bits: int = 32, per_word: int | None = None) -> int:
    """Words holding `count` codes word-aligned: ceil(count / per_word)."""
    return -(-count // _per_word(_check_bits(bits), word_bits, per_word))


def pack_dense(codes: ArrayLike, bits: int | DataType, order: ArrayLike | None = None) -> np.ndarray:
    """Pack `codes` (flattened in C order, each in [0, 2^bits)) into a dense little-endian bit stream.

    Returns uint8 of length `dense_nbytes(n, bits)`; the unused high bits of the last byte are 0."""
    b = _check_bits(bits)
    slots = _to_slots(codes, b, order)  # [n] uint64, slots[order[i]] = codes[i]
    bit_matrix = (slots[:, None] >> np.arange(b, dtype=np.uint64)) & np.uint64(1)  # [n, b], LSB first
    return np.packbits(bit_matrix.astype(np.uint8).reshape(-1), bitorder="little")


def unpack_dense(stream: ArrayLike, bits: int | DataType, count: int, order: ArrayLike | None = None) -> np.ndarray:
    """Read `count` codes back from a dense stream written by `pack_dense` (same `bits`, `order`).

    Returns codes [count] in the code dtype for `bits` (uint8 up to 8 bits, uint16, uint32)."""
    b = _check_bits(bits)
    s = _check_container(stream, np.uint8, dense_nbytes(count, b), f"dense stream of {count} {b}-bit codes")
    bit_stream = np.unpackbits(s, count=count * b, bitorder="little")  # [count·b]
    bit_matrix = bit_stream.reshape(count, b).astype(np.uint64)  # [count, b], LSB first
    slots = np.bitwise_or.reduce(bit_matrix << np.arange(b, dtype=np.uint64), axis=1)  # [count]
    return _from_slots(slots.reshape(count), b, order)


def pack_words(
    codes: ArrayLike,
    bits: int | DataType,
    word_bits: int = 32,
    per_word: int | None = None,
    order: ArrayLike | None = None,
) -> np.ndarray:
    """Pack `codes` (flattened, each in [0, 2^bits)) `per_word` to a uint{word_bits} word.

    Returns uint{word_bits} words [ceil(n / per_word)]; slots past n are zero."""
    b = _check_bits(bits)
    k = _per_word(b, word_bits, per_word)
    slots = _to_slots(codes, b, order)  # [n]
    num_words = -(-slots.size // k)
    padded = np.zeros(num_words * k, dtype=np.uint64)
    padded[: slots.size] = slots
    shifts = np.arange(k, dtype=np.uint64) * np.uint64(b)  # [k] bit offset of each slot in its word
    words = np.bitwise_or.reduce(padded.reshape(num_words, k) << shifts, axis=1)  # [num_words]
    return words.reshape(num_words).astype(np.dtype(f"uint{word_bits}"))


def unpack_words(
    words: ArrayLike,
    bits: int | DataType,
    count: int,
    word_bits: int = 32,
    per_word: int | None = None,
    order: ArrayLike | None = None,
) -> np.ndarray:
    """Read `count` codes back from words written by `pack_words` (same `bits`, `word_bits`,
    `per_word`, `order`). Returns codes [count] in the code dtype for `bits`."""
    b = _check_bits(bits)
    k = _per_word(b, word_bits, per_word)
    num_words = -(-count // k)
    w = _check_container(words, np.dtype(f"uint{word_bits}"), num_words, f"words of {count} {b}-bit codes")
    shifts = np.arange(k, dtype=np.uint64) * np.uint64(b)  # [k]
    fields = (w[:num_words].astype(np.uint64)[:, None] >> shifts) & np.uint64((1 << b) - 1)  # [words, k]
    return _from_slots(fields.reshape(-1)[:count], b, order)


# --- checks and slot permutation ---------------------------------------------------------------------
def _check_bits(bits: int | DataType) -> int:
    b = bits.bits if isinstance(bits, DataType) else bits
    if b not in PACK_BITS:
        raise ValueError(f"cannot pack {b}-bit codes; bits must be one of {PACK_BITS}")
    return int(b)


def _per_word(bits: int, word_bits: int, per_word: int | None) -> int:
    if word_bits not in WORD_BITS:
        raise ValueError(f"word_bits={word_bits} is not one of {WORD_BITS}")
    fit = word_bits // bits
    if per_word is None:
        if fit == 0:
            raise ValueError(f"a {bits}-bit code does not fit a {word_bits}-bit word; use word_bits >= {bits}")
        return fit
    if not 1 <= per_word <= fit:
        raise ValueError(f"per_word={per_word} {bits}-bit codes do not fit a {word_bits}-bit word; use 1..{fit}")
    return per_word


def _check_container(a: ArrayLike, want: np.dtype | type, min_len: int, what: str) -> np.ndarray:
    arr = np.asarray(a)
    want = np.dtype(want)
    if arr.dtype.kind in "iu" and arr.dtype.itemsize == want.itemsize:
        arr = arr.view(want)  # int32 words (as GPU kernels hold them) are the same bits
    else:
        raise ValueError(f"{what} must be {want}, got {arr.dtype}; pass the array pack_* returned")
    arr = arr.reshape(-1)
    if arr.size < min_len:
        raise ValueError(f"{what} need {min_len} elements, got {arr.size}; is count too large?")
    return arr


def _to_slots(codes: ArrayLike, bits: int, order: ArrayLike | None) -> np.ndarray:
    c = np.asarray(codes)
    if c.dtype.kind not in "biu":
        raise ValueError(f"pack takes integer codes, got a {c.dtype} array; encode values first (lowbit.encode)")
    c = c.reshape(-1)
    if c.size and (c.min() < 0 or int(c.max()) >> bits):
        bad = c[(c < 0) | (c.astype(np.uint64) >> np.uint64(bits) != 0)][0]
        raise ValueError(
            f"code {bad} does not fit {bits} bits (valid: 0..{(1 << bits) - 1}); encode first or mask "
            f"with & {(1 << bits) - 1}"
        )
    c = c.astype(np.uint64)
    if order is None:
        return c
    slots = np.empty_like(c)
    slots[_check_order(order, c.size)] = c  # code i goes to slot order[i]
    return slots


def _from_slots(slots: np.ndarray, bits: int, order: ArrayLike | None) -> np.ndarray:
    codes = slots if order is None else slots[_check_order(order, slots.size)]  # code i from slot order[i]
    return codes.astype(code_dtype_for_bits(bits))


def _check_order(order: ArrayLike, n: int) -> np.ndarray:
    o = np.asarray(order)
    if o.dtype.kind not in "iu" or o.shape != (n,):
        raise ValueError(f"order must be {n} integer slots (a permutation of range({n})), got {o.dtype} {o.shape}")
    if n and (o.min() < 0 or o.max() >= n):
        raise ValueError(f"order has slot {o.min() if o.min() < 0 else o.max()} outside range({n})")
    counts = np.bincount(o.astype(np.int64), minlength=n)
    if (counts != 1).any():
        slot = int(np.flatnonzero(counts != 1)[0])
        raise ValueError(
            f"order is not a permutation of range({n}): slot {slot} is used {counts[slot]} times; "
            "each slot must hold exactly one element"
        )
    return o.astype(np.int64)
