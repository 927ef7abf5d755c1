"""The x16 GEMV (`lowbit.kernels.gemv_x16`: 16-bit activations in two int8 planes) against NumPy oracles.

* `plane_words` vs its definition: decoding every plane with `plane_terms` in NumPy gives back the codes.
* `quantize_groups_x16` vs its docstring's formula in float64 (float32 x: three planes, 65536·hi + 256·mid + lo
  = r): 256·hi + lo = r, r·xs = x exactly for bf16
  groups spanning at most 2^6, |r·xs − x| <= xs/2 otherwise, xsum = Σ r; scales below 1 and tiny groups
  (a scale that was clamped at 1 made every group of max |x| < 1 wrong by its power of two).
* The two kernels on the reference interpreter and on TVM vs the fp64 oracle x @ Ŵᵀ, within the GEMV's bound
  for the activation dtype (the error of carrying x in 15 bits is ~2^-15 of a group's max, far below it).
"""

from __future__ import annotations

import sys
from pathlib import Path

import ml_dtypes
import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from lowbit.artifact.fingerprint import isa_flags
from lowbit.codegen.backend import compile_program
from lowbit.kernels.gemv_a8 import tile_group_rows
from lowbit.kernels.gemv_x16 import (
    PLANES,
    X16_BITS,
    flip_mask,
    plane_terms,
    plane_words,
    quantize_groups_x16,
    quantized_gemv_x16,
    x_order,
)
from lowbit.kernels.layouts import column_tiled, plane_layout
from lowbit.ops import quantize
from lowbit.ops.weight import retile_columns
from lowbit.ops.x16 import X16_BM, X24_BM, unsigned_codes, x16_parts

sys.path.insert(0, str(Path(__file__).parents[1] / "ops"))
from linear_reference import bound, reference, relative_error

HOST = {"bfloat16": ml_dtypes.bfloat16, "float16": np.float16, "float32": np.float32}
VNNI = "avx512_vnni" in isa_flags()


def decode_planes(words: np.ndarray, bits: int, k: int, n: int, group: int, bn: int) -> np.ndarray:
    """The codes [K, N] the plane words hold, by `plane_terms` (the kernel's reading) in NumPy."""
    w = words.astype(np.int64) & 0xFFFFFFFF  # [nb, groups, bits, blocks, bn]
    out = np.zeros((w.shape[0], w.shape[1], w.shape[3], PLANES, 4, bn), np.int64)  # [nb, groups, t, p, j, bn]
    for p, terms in enumerate(plane_terms(bits)):
        for word, shift, mask in terms:
            for j in range(4):
                out[:, :, :, p, j] |= ((w[:, :, word] >> (shift + 8 * j)) & mask) << 0
    # [nb, groups, blocks t, planes p, 4 (j), bn] -> [K, N], k in a group = (group / 8)·p + 4t + j
    codes = out.transpose(1, 3, 2, 4, 0, 5).reshape(k, -1)
    return codes[:, :n]


@settings(max_examples=20)
@given(bits=st.sampled_from(X16_BITS), group=st.sampled_from([32, 64, 128]), groups=st.integers(1, 3),
       n=st.integers(1, 70), bn=st.sampled_from([16, 32]), seed=st.integers(0, 2**16))  # fmt: skip
def test_plane_words_hold_the_codes(bits, group, groups, n, bn, seed):
    k = group * groups
    codes = np.random.default_rng(seed).integers(0, 1 << bits, (k, n))
    words = plane_words(codes, bits, group, bn)
    assert words.shape == (-(-n // bn), groups, bits, group // 32, bn) and words.dtype == np.int32
    np.testing.assert_array_equal(decode_planes(words, bits, k, n, group, bn), codes)


def test_plane_layout_refuses_a_group_of_partial_blocks():
    with pytest.raises(ValueError, match="multiple of 32"):
        plane_words(np.zeros((48, 4), np.int64), 2, 48, 16)
    with pytest.raises(ValueError, match="5-bit codes have none"):
        plane_terms(5)


def quantize_x(
    x: np.ndarray, group: int, adtype: str, backend: str, bm: int | None = None, order: str = "planes", bits: int = 4
):
    """x's planes, scales and code sums in row tiles of bm (None: one tile of all rows), MP = ⌈M / bm⌉·bm rows;
    two planes for 16-bit x, three for float32 (`x16_parts`); in the order of `bits`-bit weight words `order`."""
    m, k = x.shape
    bm = m if bm is None else min(bm, m)
    mp = -(-m // bm) * bm
    parts = x16_parts(adtype)
    trace = {"G": group, "adtype": adtype, "BM": bm, "PARTS": parts, "ORDER": order, "BITS": bits}
    q = compile_program(quantize_groups_x16.trace(**trace), backend, {})
    xq = np.full((k // group, mp, parts, 8, group // 8), 99, np.int8)  # 99: rows past M must be written
    xs = np.zeros((mp, k // group), np.float32)
    xsum = np.full((parts - 1, mp, k // group), 99, np.int32)
    if backend == "reference":
        q({"x": x, "xq": xq, "xs": xs, "xsum": xsum, "M": m, "MP": mp, "K": k})
    else:
        t = [torch.from_numpy(a) for a in (xq, xs, xsum)]
        q({"x": torch.from_numpy(x.astype(np.float32)).to(getattr(torch, adtype)), "xq": t[0], "xs": t[1],
           "xsum": t[2], "M": m, "MP": mp, "K": k})  # fmt: skip
    assert not xq[:, m:].any() and not xsum[:, m:].any()  # the last tile's rows past M: zero planes and sums
    return xq, xs, xsum


BACKENDS = ["reference"] + (["tvm"] if VNNI else [])


@settings(max_examples=5)
@given(
    m=st.integers(1, 4),
    group=st.sampled_from([32, 128]),
    magnitude=st.sampled_from([1e-30, 1e-3, 0.3, 1.0, 7.0, 1e4]),
    adtype=st.sampled_from(["bfloat16", "float16", "float32"]),
    backend=st.sampled_from(BACKENDS),
    seed=st.integers(0, 2**16),
)
def test_quantizer_carries_x_in_its_planes(m, group, magnitude, adtype, backend, seed):
    """16-bit x: r = 256·hi + lo, |r| < 2^14, one sum Σ r. float32 x: r = 65536·hi + 256·mid + lo, |r| < 2^22,
    two sums (Σ hi, and Σ (256·mid + lo): 65536·Σ hi would not fit an int32 beside it)."""
    if adtype == "float16" and not 1e-3 <= magnitude <= 1e4:
        magnitude = 1.0  # float16 holds neither 1e-30 nor its products
    k = group * 2
    rng = np.random.default_rng(seed)
    x = (rng.standard_normal((m, k)) * magnitude).astype(np.float32).astype(HOST[adtype])
    xq, xs, xsum = quantize_x(x, group, adtype, backend)
    parts = x16_parts(adtype)
    planes = xq.astype(np.int64)  # [groups, m, parts, 8 planes, G // 8]: plane p holds k = (G / 8)·p + 0 .. G / 8 - 1
    r = sum(planes[:, :, i] * 256 ** (parts - 1 - i) for i in range(parts))  # [groups, m, 8, G // 8]
    r = r.transpose(1, 0, 2, 3).reshape(m, k)
    bits = 8 * parts - 2
    assert np.all(np.abs(planes[:, :, 0]) <= 64) and np.all(np.abs(planes[:, :, 1:] + 0.5) <= 128)
    assert np.all(np.abs(r) < 2**bits)
    sums = r.reshape(m, k // group, group).sum(-1)
    if parts == 2:
        np.testing.assert_array_equal(xsum[0], sums)
    else:
        top = planes[:, :, 0].transpose(1, 0, 2, 3).reshape(m, k // group, group).sum(-1)
        np.testing.assert_array_equal(xsum[0], top)
        np.testing.assert_array_equal(xsum[1], sums - 65536 * top)
    x64 = x.astype(np.float64).reshape(m, k // group, group)
    amax = np.abs(x64).max(-1)
    expect = np.where(amax > 0, 2.0 ** (np.floor(np.log2(np.where(amax > 0, amax, 1))) - (bits - 1)), 1.0)
    np.testing.assert_array_equal(xs, expect.astype(np.float32))
    back = r.reshape(m, k // group, group) * xs.astype(np.float64)[..., None]
    assert np.all(np.abs(back - x64) <= xs[..., None] / 2)
    near = np.abs(x64) >= amax[..., None] * 2.0**-6  # within 2^6 of the group's largest: held exactly (bf16)
    if adtype == "bfloat16":
        np.testing.assert_array_equal(back[near], x64[near])


def run_x16(
    qw, x: np.ndarray, adtype: str, backend: str, bn: int = 32, tiles: int = 2, bm: int | None = None,
    order: str = "planes",
) -> np.ndarray:  # fmt: skip
    """y of the two x16 kernels, in row tiles of bm (None: one tile of all rows, as `X16Plan` runs <= 4 rows),
    reading the weight's words in `order`: its plane words, or its column-tiled words as they are ("words";
    "pairs": in bf16 pair order), two's complement codes xor-ed to offset binary by the GEMV (FLIP)."""
    m, k = x.shape
    n = qw.shape[0]
    bits = qw.dtype.bits
    g = qw.group_size if qw.group_size > 0 else k  # per channel: one group of K
    u, offset = unsigned_codes(qw)
    xq, xs, xsum = quantize_x(x, g, adtype, backend, bm, order, bits)
    trace = dict(BITS=bits, OFFSET=offset, zero_mode=qw.zero_mode, G=g, ydtype=adtype,
                 sdtype=str(qw.scales.dtype), BM=m if bm is None else min(bm, m), BN=bn, TILES=tiles,
                 PARTS=x16_parts(adtype), FLIP=int(order != "planes" and qw.dtype.is_signed))  # fmt: skip
    kernel = compile_program(quantized_gemv_x16.trace(**trace), backend, {})
    if order == "planes":
        words = plane_words(u, bits, g, bn)
    else:
        tiled = retile_columns(qw, bn, pairs=order == "pairs")
        words = tiled.words.view(np.int32).reshape(-(-n // bn), k // g, bits, g // 32, bn)
    args = {"xq": xq, "xs": xs, "xsum": xsum, "w": words,
            "scales": tile_group_rows(qw.scales, bn), "M": m, "MP": xs.shape[0], "N": n, "K": k}  # fmt: skip
    if qw.zeros is not None:
        args["zeros"] = tile_group_rows(qw.zeros, bn)
    if backend == "reference":
        y = np.zeros((m, n), HOST[adtype])
        kernel({**args, "y": y})
        return y.astype(np.float32)
    y = torch.zeros((m, n), dtype=getattr(torch, adtype))
    kernel({**{a: torch.from_numpy(v) if isinstance(v, np.ndarray) else v for a, v in args.items()}, "y": y})
    return y.float().numpy()


@settings(max_examples=8)
@given(
    m=st.integers(1, 10),
    n=st.integers(1, 80),
    kg=st.sampled_from([(64, 32), (128, 64), (256, 128), (256, 256)]),
    name=st.sampled_from([f"{s}int{b}" for s in ("", "u") for b in X16_BITS]),
    zero=st.sampled_from(["default", "post", "pre"]),
    adtype=st.sampled_from(["bfloat16", "float16", "float32"]),
    magnitude=st.sampled_from([0.01, 1.0, 30.0]),
    backend=st.sampled_from(BACKENDS),
    seed=st.integers(0, 2**16),
)
def test_x16_gemv_matches_the_oracle(m, n, kg, name, zero, adtype, magnitude, backend, seed):
    k, g = kg
    rng = np.random.default_rng(seed)
    kwargs = {} if zero == "default" else dict(symmetric=False, zero_mode=zero)
    qw = quantize(rng.standard_normal((n, k)).astype(np.float32), name, g, **kwargs)
    x = (rng.standard_normal((m, k)) * magnitude).astype(np.float32).astype(HOST[adtype])
    bm = X24_BM if adtype == "float32" else X16_BM
    y = run_x16(qw, x, adtype, backend, bm=bm)  # past bm rows: row tiles of bm, the last one ragged
    err = relative_error(y, reference(x.astype(np.float32), qw))
    assert err <= bound(qw, m, adtype), f"{qw} m={m} {adtype} {backend}: {err}"


@settings(max_examples=8)
@given(
    m=st.integers(1, 6),
    n=st.integers(1, 80),
    kg=st.sampled_from([(64, 32), (128, 64), (256, 128), (256, 256)]),
    name_order=st.sampled_from(
        [(f"{s}int{b}", o) for s in ("", "u") for b, o in ((2, "words"), (4, "words"), (4, "pairs"))]
    ),
    zero=st.sampled_from(["default", "post", "pre"]),
    adtype=st.sampled_from(["bfloat16", "float16", "float32"]),
    backend=st.sampled_from(BACKENDS),
    seed=st.integers(0, 2**16),
)  # fmt: skip
def test_x16_gemv_reads_column_tiled_words(m, n, kg, name_order, zero, adtype, backend, seed):
    """The GEMV over the column-tiled words the float kernels read (`lowbit.ops.x16.in_place`: one copy for every
    M), x gathered to match by the quantizer (`x_order`), signed codes flipped in the GEMV: the oracle's y."""
    (k, g), (name, order) = kg, name_order
    rng = np.random.default_rng(seed)
    kwargs = {} if zero == "default" else dict(symmetric=False, zero_mode=zero)
    qw = quantize(rng.standard_normal((n, k)).astype(np.float32), name, g, **kwargs)
    x = rng.standard_normal((m, k)).astype(np.float32).astype(HOST[adtype])
    bm = X24_BM if adtype == "float32" else X16_BM
    y = run_x16(qw, x, adtype, backend, bn=32, tiles=1, bm=bm, order=order)
    err = relative_error(y, reference(x.astype(np.float32), qw))
    assert err <= bound(qw, m, adtype), f"{qw} m={m} {adtype} {backend} {order}: {err}"


@pytest.mark.parametrize("bits, order", [(2, "words"), (4, "words"), (4, "pairs"), (1, "planes"), (4, "planes")])
def test_quantizer_order_follows_the_weight_words(bits, order):
    """`x_order` against the layout algebra: with x[k] = k + 1 (exact in bf16), the plane element (p, 4t + j) of
    xq is the x of the code the GEMV reads at plane p, byte j of word row t: bits b·s of that byte of word row
    w·G/32 + t (p = (8/b)·w + s) of a column, located by `column_tiled`'s (or `plane_layout`'s) own index map."""
    g = 64
    k = 2 * g
    x = (np.arange(k, dtype=np.float32) + 1)[None, :]
    xq, xs, _ = quantize_x(x, g, "bfloat16", "reference", order=order, bits=bits)
    r = xq.astype(np.int64)[:, 0, 0] * 256 + xq.astype(np.int64)[:, 0, 1]  # [groups, 8 planes, G / 8]
    got = r * xs[0].astype(np.float64)[:, None, None] - 1  # the k each element carries
    if order == "planes":
        lay = plane_layout((k, 32), bits, g, 32)
    else:
        lay = column_tiled((k, 32), bits, 32, pairs=order == "pairs")
    word, bit = (np.asarray(v) for v in lay.locate(np.arange(k), np.zeros(k, np.int64)))
    rows = g * bits // 32  # word rows of a group; each row's word of column 0 is 32 words on (3 bits: no plane
    # layout; its split fields are `plane_words`' own test)
    for kk in range(k):
        grp, row, byte = kk // g, (int(word[kk]) // 32) % rows, int(bit[kk]) // 8
        w, t = divmod(row, g // 32)
        plane = (8 // bits) * w + (int(bit[kk]) % 8) // bits
        assert got[grp, plane, 4 * t + byte] == kk % g + g * grp, (kk, grp, plane, t, byte)


@pytest.mark.skipif(not VNNI, reason="the TVM lowering of the x16 GEMV's dots needs AVX-512 VNNI")
@pytest.mark.parametrize("adtype", ["bfloat16", "float32"])
def test_tvm_reads_each_quad_as_one_word(adtype):
    """The VNNI chain takes a plane's quad as its word (`_quad_words`) and x's as one 4-byte load (`_direct_quad`):
    no quad is rebuilt from four bytes (that text had made a compile 3-5x longer: 42 s for this kernel). float32
    x's three planes of X24_BM rows run in one chain too."""
    parts = x16_parts(adtype)
    bm = X16_BM if parts == 2 else X24_BM
    trace = dict(BITS=3, OFFSET=4, zero_mode="post", G=256, ydtype=adtype, sdtype="float16", BM=bm, BN=32,
                 TILES=1, PARTS=parts)  # fmt: skip
    src = compile_program(quantized_gemv_x16.trace(**trace), "tvm", {}).source
    dots = src.count("llvm.x86.avx512.vpdpbusd.512")
    assert dots >= parts * bm * 8 * 2  # at least every plane row (BM x parts) x 8 planes x 2 column vectors
    assert src.count('T.reinterpret("int32", xq_1[T.Ramp(') == dots
    assert ", 255), 8)" not in src  # `_quad`'s second byte


@pytest.mark.skipif(not VNNI, reason="the TVM lowering of the x16 GEMV's dots needs AVX-512 VNNI")
@pytest.mark.parametrize(
    "name,bn,tiles,adtype",
    [("int3", 32, 2, "bfloat16"), ("uint2", 16, 1, "bfloat16"), ("int1", 16, 2, "bfloat16"),
     ("int4", 32, 1, "bfloat16"), ("int4", 32, 1, "float32"), ("int3", 16, 2, "float32")],
)  # fmt: skip
def test_tvm_equals_the_reference_interpreter(name, bn, tiles, adtype):
    """Exact integer sums and the same fp32 epilogue: TVM and the interpreter agree to the output's rounding."""
    rng = np.random.default_rng(7)
    qw = quantize(rng.standard_normal((72, 256)).astype(np.float32), name, 64)
    x = (rng.standard_normal((3, 256)) * 0.1).astype(np.float32).astype(HOST[adtype])
    ref = run_x16(qw, x, adtype, "reference", bn, tiles)
    got = run_x16(qw, x, adtype, "tvm", bn, tiles)
    rtol = 2**-7 if adtype == "bfloat16" else 1e-5
    np.testing.assert_allclose(got, ref, rtol=rtol, atol=1e-6 * float(np.abs(ref).max()))


def test_orders_refuse_what_they_cannot_read():
    """3-bit codes fill no whole byte fields of a column-tiled word, and only 4-bit words have a pair order: the
    quantizer's order says so and names the choices; the flip masks are every field's top bit."""
    for bits, order in ((3, "words"), (2, "pairs"), (4, "rows")):
        with pytest.raises(ValueError, match="'planes'"):
            x_order(order, bits)
    assert flip_mask(4) == 0x88888888 - 2**32 and flip_mask(2) == 0xAAAAAAAA - 2**32
