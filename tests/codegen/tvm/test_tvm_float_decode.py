"""The TVM backend's float-code decode (`lower._decode_float_expr`) against `lowbit.dtypes.decode`, bit for bit,
for every code of every float format of 2-8 bits: zero and its sign, the subnormal codes (built without a float32
subnormal on the way), the normal range, inf / NaN where the format has them."""

from __future__ import annotations

import numpy as np
import pytest

import lowbit.dtypes as dtypes
import lowbit.lang as T
from lowbit.codegen.backend import compile_program
from lowbit.ir.layout import packed_along

FORMATS = sorted(
    (n for n in dir(dtypes) if n.startswith("fp") and n[2].isdigit() and dtypes.dtype(n).bits <= 8),
    key=lambda n: (dtypes.dtype(n).bits, n),
)
ROWS = 256


@T.kernel
def cast_codes(
    w: T.Tensor("WD", (ROWS, 16), layout="LAYOUT"),
    y: T.Tensor("float32", (ROWS, 16)),
    WD: T.constexpr,
    LAYOUT: T.constexpr,
    TO: T.constexpr,
):
    T.grid(1)
    T.store(y, (0, 0), T.cast(T.cast(T.load(w, (0, 0), (ROWS, 16)), TO), "float32"))


def test_formats_cover_every_width():
    assert {dtypes.dtype(n).bits for n in FORMATS} == set(range(2, 9))
    assert "fp8_e4m3" in FORMATS and "fp6_e3m2" in FORMATS


@pytest.mark.parametrize("name", FORMATS)
def test_every_code_decodes_bit_for_bit(name):
    dt = dtypes.dtype(name)
    codes = (np.arange(ROWS * 16) % (1 << dt.bits)).reshape(ROWS, 16).astype(dt.code_dtype)
    layout = packed_along((ROWS, 16), dt.bits, 0)
    kernel = compile_program(cast_codes.trace(WD=name, LAYOUT=layout, TO="float32"), "tvm")
    y = np.full((ROWS, 16), 7.0, np.float32)
    kernel({"w": layout.pack(codes), "y": y})
    want = dtypes.decode(dt, codes).astype(np.float32)
    nan = np.isnan(want)
    assert (np.isnan(y) == nan).all(), name
    assert (y[~nan].view(np.uint32) == want[~nan].view(np.uint32)).all(), (name, y[~nan][:8], want[~nan][:8])


@pytest.mark.parametrize(
    "name,to,exact",
    [("int8", "bfloat16", True), ("uint8", "bfloat16", True), ("fp8_e4m3", "float16", True),
     ("fp6_e3m2", "bfloat16", True), ("fp8_e5m2", "bfloat16", True), ("fp8_e6m1", "float16", False)],
)  # fmt: skip
def test_casts_of_codes_to_floats(name, to, exact):
    """A cast to a float that holds every value of the source (int8 -> bf16, fp8_e4m3 -> fp16) is the value as
    it is, with no rounding arithmetic in the source (`cast_expr`); one that does not (fp8_e6m1's 2^32 past fp16)
    still rounds (saturating to inf as the reference does). Either equals the reference bit for bit."""
    dt = dtypes.dtype(name)
    codes = (np.arange(ROWS * 16) % (1 << dt.bits)).reshape(ROWS, 16).astype(dt.code_dtype)
    layout = packed_along((ROWS, 16), dt.bits, 0)
    kernel = compile_program(cast_codes.trace(WD=name, LAYOUT=layout, TO=to), "tvm")
    y = np.full((ROWS, 16), 7.0, np.float32)
    kernel({"w": layout.pack(codes), "y": y})
    values = dtypes.decode(dt, codes).astype(np.float64)
    want = dtypes.decode(dtypes.dtype(to), dtypes.encode(dtypes.dtype(to), values)).astype(np.float32)
    nan = np.isnan(want)
    assert (np.isnan(y) == nan).all()
    assert (y[~nan].view(np.uint32) == want[~nan].view(np.uint32)).all(), name
    rounds = "32767" in kernel.source or 'T.Cast("float16"' in kernel.source
    assert rounds != exact, kernel.source[-2000:]
