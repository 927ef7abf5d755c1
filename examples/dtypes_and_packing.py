"""Tour of lowbit's data types and bit packing.

Run: python examples/dtypes_and_packing.py
"""

from __future__ import annotations

import numpy as np

import lowbit
from lowbit.dtypes import pack_dense, pack_words, unpack_dense, unpack_words


def print_type_table() -> None:
    print(f"{'name':<10} {'bits':>4} {'bias':>4} {'max':>10} {'min subnormal':>14}  specials")
    for name in ("int3", "uint4", "fp4_e2m1", "fp6_e2m3", "fp6_e3m2", "fp8_e4m3", "fp8_e5m2", "bf16"):
        dt = lowbit.dtype(name)
        tiny = f"{dt.smallest_subnormal:.3g}" if dt.is_float else "-"
        specials = ("inf " if dt.has_inf else "") + ("nan" if dt.has_nan else "") or "none"
        print(f"{dt.name:<10} {dt.bits:>4} {dt.bias:>4} {dt.max:>10g} {tiny:>14}  {specials}")


def show_encode_decode() -> None:
    x = np.array([0.3, 1.25, -2.6, 5.0, 100.0, -0.0, np.nan], dtype=np.float32)
    print(f"\nx                 = {x}")
    for dt in (lowbit.fp4_e2m1, lowbit.fp8_e4m3, lowbit.fp8_e5m2):
        codes = lowbit.encode(dt, x)
        print(f"{dt.name:<9} codes = {[f'{c:#04x}' for c in codes]}")
        print(f"{dt.name:<9} value = {lowbit.decode(dt, codes)}")
    print(f"int3 round_to    = {lowbit.round_to(lowbit.int3, [2.5, 3.5, -7.0, 1.4])}  (half-even, saturating)")
    print(f"int3 wrap        = {lowbit.wrap(lowbit.int3, [4, -5, 9])}  (two's complement)")


def show_int3_packing() -> None:
    values = np.array([1, 2, 3, -4, -3, -2, -1, 0, 3, -1], dtype=np.int64)
    codes = lowbit.encode(lowbit.int3, values)  # [10] uint8 codes 0..7
    print(f"\nint3 values {values.tolist()} -> codes {codes.tolist()}")

    stream = pack_dense(codes, 3)  # element i at bits [3i, 3i+3) of a little-endian byte stream
    print(f"dense  ({stream.size} bytes): {stream.tobytes().hex(' ')}")
    bits = "".join(f"{byte:08b}"[::-1] for byte in stream)  # stream bit k at position k
    groups = " ".join(bits[i : i + 3][::-1] for i in range(0, 3 * codes.size, 3))  # each read MSB-first
    print(f"  bits [3i, 3i+3) of the stream, element by element: {groups}")
    assert (unpack_dense(stream, 3, codes.size) == codes).all()

    words = pack_words(codes, 3, word_bits=32)  # floor(32/3) = 10 per uint32, top 2 bits unused
    print(f"words  ({words.size} x uint32): {words[0]:032b}  (element 0 in the low bits)")
    assert (unpack_words(words, 3, codes.size) == codes).all()

    order = np.arange(codes.size)[::-1]  # a layout's slot for each element: here, reversed
    reordered = pack_words(codes, 3, order=order)
    print(f"words, reversed order: {reordered[0]:032b}")
    assert (unpack_words(reordered, 3, codes.size, order=order) == codes).all()


def main() -> None:
    print_type_table()
    show_encode_decode()
    show_int3_packing()


if __name__ == "__main__":
    main()
