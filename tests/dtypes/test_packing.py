"""Packing: unpack(pack(x)) == x for every width, and every code sits at the bit position the spec says
(checked with Python big integers, not with the packer's own arithmetic)."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

import lowbit.dtypes as D
from lowbit.dtypes import dense_nbytes, pack_dense, pack_words, unpack_dense, unpack_words, words_per_count
from lowbit.dtypes.packing import PACK_BITS, WORD_BITS


def _case(bits: int, n: int, seed: int, order_kind: str, word_aligned: bool):
    """(codes, order, word_bits, per_word): random codes, a random permutation, reversal or None."""
    rng = np.random.default_rng(seed + bits)
    codes = rng.integers(0, 2**bits, size=n, dtype=np.uint64).astype(D.code_dtype_for_bits(bits))
    order = {"none": None, "perm": rng.permutation(n), "reverse": np.arange(n)[::-1].copy()}[order_kind]
    word_bits = int(rng.choice([w for w in WORD_BITS if w >= bits])) if word_aligned else 0
    fit = word_bits // bits if word_aligned else 1
    per_word = None if rng.random() < 0.5 else int(rng.integers(1, fit + 1))
    return codes, order, word_bits, per_word


def _slots(n: int, order) -> list[int]:
    return list(range(n)) if order is None else [int(s) for s in order]


sizes, seeds = st.integers(0, 70), st.integers(0, 2**32 - 1)
order_kinds = st.sampled_from(["none", "perm", "reverse"])


# Each example checks every width: hypothesis's draws cost more than the checks.
@given(n=sizes, seed=seeds, order_kind=order_kinds)
def test_dense_round_trip_and_bit_positions(n: int, seed: int, order_kind: str):
    for bits in PACK_BITS:
        codes, order, _, _ = _case(bits, n, seed, order_kind, word_aligned=False)
        stream = pack_dense(codes, bits, order)
        assert stream.dtype == np.uint8 and stream.size == dense_nbytes(n, bits) == -(-n * bits // 8)
        big = int.from_bytes(stream.tobytes(), "little")  # bit k of the stream is bit k of this integer
        for i, slot in enumerate(_slots(n, order)):  # element i occupies bits [slot·b, (slot+1)·b)
            assert (big >> (slot * bits)) & ((1 << bits) - 1) == int(codes[i])
        assert big >> (n * bits) == 0  # padding bits are zero
        back = unpack_dense(stream, bits, n, order)
        assert back.dtype == codes.dtype
        np.testing.assert_array_equal(back, codes)


@given(n=sizes, seed=seeds, order_kind=order_kinds)
def test_words_round_trip_and_bit_positions(n: int, seed: int, order_kind: str):
    for bits in PACK_BITS:
        codes, order, word_bits, per_word = _case(bits, n, seed, order_kind, word_aligned=True)
        words = pack_words(codes, bits, word_bits, per_word, order)
        k = per_word or word_bits // bits
        assert words.dtype == np.dtype(f"uint{word_bits}")
        assert words.size == words_per_count(n, bits, word_bits, per_word) == -(-n // k)
        for i, slot in enumerate(_slots(n, order)):  # word slot // k, bits [(slot % k)·b, ...)
            assert (int(words[slot // k]) >> ((slot % k) * bits)) & ((1 << bits) - 1) == int(codes[i])
        assert all(int(w) >> (k * bits) == 0 for w in words)  # the bits a word cannot fill stay zero
        np.testing.assert_array_equal(unpack_words(words, bits, n, word_bits, per_word, order), codes)


def test_int3_examples():
    codes = D.encode(D.int3, [1, 2, 3, -4, -3, -2, -1, 0])  # codes 1 2 3 4 5 6 7 0
    # dense: 001 010 011 100 101 110 111 000, LSB first -> 0b10_011_010_001... = 0xd1 0x58 0x1f
    assert pack_dense(codes, 3).tolist() == [0b11010001, 0b01011000, 0b00011111]
    words = pack_words(np.arange(12) % 8, D.int3, per_word=10)  # MLC: 10 int3 per uint32, 2 bits wasted
    assert words.tolist() == [sum((i % 8) << (3 * i) for i in range(10)), 2 | (3 << 3)]
    assert pack_words([1, 2, 3], 3, word_bits=8).tolist() == [1 | (2 << 3), 3]  # floor(8/3) = 2 per byte


def test_signed_word_containers_are_accepted():
    words = pack_words(np.arange(8) + 8, 4, word_bits=32)  # top nibble 15: negative as int32
    np.testing.assert_array_equal(unpack_words(words.view(np.int32), 4, 8), np.arange(8) + 8)


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda: pack_dense([8], 3), r"code 8 does not fit 3 bits \(valid: 0..7\)"),
        (lambda: pack_dense([-1], 3), "code -1 does not fit 3 bits"),
        (lambda: pack_dense([1.5], 3), "integer codes, got a float64 array"),
        (lambda: pack_dense([1], 9), r"cannot pack 9-bit codes; bits must be one of"),
        (lambda: pack_dense([1, 2], 3, order=[0, 0]), "slot 0 is used 2 times"),
        (lambda: pack_dense([1, 2], 3, order=[0, 2]), r"slot 2 outside range\(2\)"),
        (lambda: pack_dense([1, 2], 3, order=[0]), r"order must be 2 integer slots"),
        (lambda: pack_words([1], 3, per_word=11), "per_word=11 3-bit codes do not fit a 32-bit word; use 1..10"),
        (lambda: pack_words([1], 16, word_bits=8), "does not fit a 8-bit word"),
        (lambda: pack_words([1], 3, word_bits=12), "word_bits=12 is not one of"),
        (lambda: unpack_dense(np.zeros(1, np.uint8), 3, 3), "need 2 elements, got 1"),
        (lambda: unpack_dense(np.zeros(2, np.float32), 3, 3), "must be uint8, got float32"),
        (lambda: unpack_words(np.zeros(1, np.uint16), 3, 3), "must be uint32, got uint16"),
    ],
)
def test_errors_name_the_value(call, message: str):
    with pytest.raises(ValueError, match=message):
        call()
