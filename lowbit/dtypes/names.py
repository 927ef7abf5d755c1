"""Data type names: `dtype(name)` parses canonical names and aliases into a `DataType`.

Grammar (case-insensitive, surrounding spaces ignored):

    int{N}  | i{N} | s{N}             signed,   N in 1..8, 16, 32, 64
    uint{N} | u{N}                    unsigned, N in 1..8, 16, 32
    fp{B}_e{X}m{Y}[fn|_ieee]          float, 1 + X + Y == B (also f{B}e{X}m{Y}, float{B}_e{X}m{Y}fn,
    e{X}m{Y}[fn|_ieee]                the ml_dtypes spelling, and a bare e{X}m{Y} that implies B)
    float16 | fp16 | f16 | half
    bfloat16 | bf16
    float32 | fp32 | f32 | float
    boolean | bool

A float without a suffix gets its default convention (`default_convention`: "ieee" for e5m2 and
anything wider than 8 bits, else "fn"). The suffix ``fn`` asks for the finite convention explicitly: it
is a no-op where that is the default (float8_e4m3fn == fp8_e4m3) and gives the finite variant where it
is not (fp8_e5m2fn: no inf, NaN at S.11111.11, max 98304 — not ml_dtypes float8_e5m2). ``_ieee``
asks for IEEE specials (fp8_e4m3_ieee is ml_dtypes float8_e4m3, max 240). Note: ml_dtypes'
``float8_e4m3`` and ``float8_e3m4`` without ``fn`` are IEEE types, but here a missing suffix means the
default (fn) convention, so spell those fp8_e4m3_ieee / fp8_e3m4_ieee.
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Callable

import numpy as np

from lowbit.dtypes.datatype import DataType, bool_type, float_type, int_type, uint_type
from lowbit.dtypes.instances import ALL_TYPES, INSTANCE_NAMES

GRAMMAR = (
    "int{N}/i{N}/s{N} (N in 1..8, 16, 32, 64), uint{N}/u{N} (N in 1..8, 16, 32), "
    "fp{B}_e{X}m{Y}[fn|_ieee] with X >= 1, Y >= 0, 1+X+Y == B (also f{B}e{X}m{Y}, float{B}_e{X}m{Y}fn, "
    "e{X}m{Y}), float16/fp16/f16/half, bfloat16/bf16, float32/fp32/f32/float, boolean/bool"
)

_NAMED = {
    "float16": float_type(5, 10), "fp16": float_type(5, 10), "f16": float_type(5, 10),
    "half": float_type(5, 10),
    "bfloat16": float_type(8, 7), "bf16": float_type(8, 7),
    "float32": float_type(8, 23), "fp32": float_type(8, 23), "f32": float_type(8, 23),
    "float": float_type(8, 23),
    "boolean": bool_type(), "bool": bool_type(),
}  # fmt: skip

_INT_RE = re.compile(r"(int|i|s|uint|u)(\d+)")
_FLOAT_RE = re.compile(r"(?:(?:fp|f|float)(\d+)_?)?e(\d+)m(\d+)(fn|_ieee)?")

# Spellings used only to suggest a close match in error messages.
_SUGGESTIONS = tuple(dict.fromkeys((
    *INSTANCE_NAMES, *_NAMED,
    "float4_e2m1fn", "float6_e2m3fn", "float6_e3m2fn", "float8_e4m3fn", "float8_e5m2",
)))  # fmt: skip


def dtype(name_or_type: str | DataType | np.dtype | type) -> DataType:
    """The `DataType` for a name (see the module docstring for the grammar), a `DataType` (returned
    as is), or a NumPy / ml_dtypes dtype that some lowbit type stores bit-exactly in host memory
    (np.float16, ml_dtypes.bfloat16, np.int8, ml_dtypes.float8_e4m3fn, ...).

    Raises ValueError naming the value, the accepted grammar and the closest known name; TypeError
    for other objects."""
    if isinstance(name_or_type, DataType):
        return name_or_type
    if isinstance(name_or_type, str):
        return _parse(name_or_type)
    if name_or_type is None:  # np.dtype(None) would quietly mean float64
        raise TypeError(f"dtype() takes a name, a DataType or a NumPy dtype, got None; {GRAMMAR}")
    try:
        np_dtype = np.dtype(name_or_type)
    except TypeError:
        raise TypeError(
            f"dtype() takes a name, a DataType or a NumPy dtype, got {type(name_or_type).__name__} {name_or_type!r}"
        ) from None
    for dt in ALL_TYPES:
        if dt.host_dtype is not None and dt.host_dtype == np_dtype:  # np.dtype == None is float64!
            return dt
    raise ValueError(
        f"NumPy dtype {np_dtype} has no lowbit equivalent stored bit-exactly in host memory; "
        f"pass a name instead ({GRAMMAR})"
    )


def _parse(name: str) -> DataType:
    key = name.strip().lower()
    if key in _NAMED:
        return _NAMED[key]
    if m := _INT_RE.fullmatch(key):
        make, bits = (uint_type if m.group(1).startswith("u") else int_type), int(m.group(2))
        return _build(name, lambda: make(bits))
    if m := _FLOAT_RE.fullmatch(key):
        total, x, y, suffix = m.groups()
        x, y = int(x), int(y)
        if total is not None and int(total) != 1 + x + y:
            raise ValueError(
                f"data type {name!r}: 1 sign + {x} exponent + {y} mantissa bits = {1 + x + y} bits, "
                f"not {total}; write fp{1 + x + y}_e{x}m{y} or pick X + Y = {int(total) - 1}"
            )
        convention = {None: None, "fn": "fn", "_ieee": "ieee"}[suffix]
        return _build(name, lambda: float_type(x, y, convention))
    raise ValueError(f"unknown data type {name!r}{_did_you_mean(key)}; accepted: {GRAMMAR}")


def _build(name: str, make: Callable[[], DataType]) -> DataType:
    # The grammar matched; let DataType's own validation say what is out of range, naming the input.
    try:
        return make()
    except ValueError as err:
        raise ValueError(f"data type {name!r}: {err}") from None


def _did_you_mean(key: str) -> str:
    close = difflib.get_close_matches(key, _SUGGESTIONS, n=3, cutoff=0.6)
    return f" (did you mean {' or '.join(repr(c) for c in close)}?)" if close else ""
