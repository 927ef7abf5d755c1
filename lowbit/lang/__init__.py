"""The lowbit tile DSL: `import lowbit.lang as T`.

Builtins are thin, documented functions over `lowbit.lang.semantic`, which checks shapes and dtypes and
builds tile IR. Errors are reported at the kernel author's source line.
"""

from __future__ import annotations

import builtins
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any, TypeAlias

import sympy

from lowbit.dtypes import (
    bfloat16,
    boolean,
    float16,
    float32,
    int8,
    int16,
    int32,
    uint8,
    uint32,
)
from lowbit.ir.statements import For, If
from lowbit.ir.values import program_id_symbol
from lowbit.lang import semantic as _s
from lowbit.lang.builder import DSLError, current, for_target, user_location
from lowbit.lang.kernel import Kernel, Tensor, TensorHandle, cdiv, constexpr, kernel, packed, persistent
from lowbit.lang.semantic import TileValue

Scalar: TypeAlias = int | float | sympy.Expr


# ---- blocks and control flow ---------------------------------------------------------------------------


def grid(*extents: Scalar) -> tuple[sympy.Symbol, ...]:
    """Declare the grid of blocks (up to 3 integer extents; runtime expressions allowed, e.g.
    `T.cdiv(M, BM)`) and return this block's indices `(pid0, pid1, ...)`. Call once, before anything else
    (DSLError otherwise)."""
    b = current()
    if b.grid is not None:
        raise DSLError("T.grid(...) was already called; declare the grid once")
    if len(b.blocks) > 1 or b.blocks[0]:
        raise DSLError("T.grid(...) must come first, before any load, store, loop or tile; move it to the top")
    if not 1 <= len(extents) <= 3:
        raise DSLError(f"T.grid takes 1 to 3 extents, got {len(extents)}")
    b.grid = tuple(_s.index(e, f"T.grid extent {i}") for i, e in enumerate(extents))
    return tuple(program_id_symbol(i) for i in builtins.range(len(extents)))


def range(
    start: Scalar, stop: Scalar | None = None, step: Scalar = 1, name: str | None = None
) -> Iterator[sympy.Symbol]:
    """A loop in the kernel: `for k in T.range(0, K, BK): ...` (integer bounds; they may be runtime
    expressions). The loop variable is named in the IR and in messages as in the `for` statement (`k`
    when that cannot be read, e.g. a tuple target), or `name`.

    The body is traced once. Values that live across iterations are tiles created before the loop and
    updated in place (`acc += T.dot(a, b)` or `T.assign(acc, value)`)."""
    if stop is None:
        start, stop = 0, start
    first, last, stride = (_s.index(v, f"T.range {w}") for v, w in ((start, "start"), (stop, "stop"), (step, "step")))
    if stride.is_number and stride <= 0:
        raise DSLError(f"T.range step {step!r} must be positive (the loop counts up from start to stop)")
    b = current()
    var = b.fresh_symbol(name or for_target(sys._getframe(1)) or "k")
    loc = user_location()
    with b.block() as body:
        yield var
    b.emit(For(var, first, last, stride, tuple(body), loc))


def static_range(*args: int) -> builtins.range:
    """A loop unrolled at trace time (the body is traced once per iteration)."""
    return builtins.range(*args)


@contextmanager
def if_(cond: Any) -> Iterator[None]:
    """A block-uniform branch on a scalar condition: `with T.if_(k0 + BK <= K): ...`.
    (Elementwise choices use T.where; Python `if` on constants is resolved at trace time.)"""
    if isinstance(cond, TileValue):
        raise DSLError("T.if_ takes a scalar condition; for a tile condition use T.where(cond, a, b)")
    if isinstance(cond, bool):
        raise DSLError(
            f"T.if_ got the Python bool {cond}: `==`/`!=` on scalar expressions compare them structurally in "
            f"Python; write T.eq(a, b) / T.ne(a, b) (a branch on a compile-time constant is a plain Python `if`)"
        )
    b = current()
    loc = user_location()
    with b.block() as body:
        yield
    b.emit(If(sympy.sympify(cond), tuple(body), (), loc))


def eq(a: Scalar, b: Scalar) -> sympy.Basic:
    """The scalar condition a == b, for T.if_ (Python's `==` on expressions compares their structure)."""
    return sympy.Eq(sympy.sympify(a), sympy.sympify(b))


def ne(a: Scalar, b: Scalar) -> sympy.Basic:
    """The scalar condition a != b, for T.if_."""
    return sympy.Ne(sympy.sympify(a), sympy.sympify(b))


@contextmanager
def else_() -> Iterator[None]:
    """The else-branch of the `T.if_` block just before it."""
    b = current()
    last = b.blocks[-1][-1] if b.blocks[-1] else None
    if not isinstance(last, If) or last.else_body:
        raise DSLError("T.else_() must directly follow a `with T.if_(...)` block")
    with b.block() as body:
        yield
    b.blocks[-1][-1] = If(last.cond, last.then_body, tuple(body), last.loc)


# ---- tile creation and memory ----------------------------------------------------------------------------


def zeros(shape: Any, dtype: Any = float32, name: str = "", layout: Any = None) -> TileValue:
    """A tile of zeros, e.g. the accumulator `acc = T.zeros((BM, BN), T.float32)`. `layout` optionally
    fixes how the tile is spread over threads (a `lowbit.ir.layout.RegisterLayout` of the tile's shape)."""
    return _s.full(shape, 0, dtype, name, layout)


def full(shape: Any, value: Scalar, dtype: Any = float32, name: str = "", layout: Any = None) -> TileValue:
    """A tile filled with `value` (a number of `dtype`, else DSLError, or a scalar expression); `layout` as
    for T.zeros."""
    return _s.full(shape, value, dtype, name, layout)


def arange(start: int, stop: int | None = None) -> TileValue:
    """int32 tile [start, ..., stop-1] (compile-time bounds); add a scalar to shift it: `pid*B + T.arange(B)`."""
    return _s.arange(start, stop)


def load(
    tensor: TensorHandle, offsets: Any, shape: Any, mask: TileValue | None = None, other: float = 0, layout: Any = None
) -> TileValue:
    """Load the tile `tensor[offsets[0] : offsets[0]+shape[0], ...]`. Elements outside the tensor, or where
    `mask` is false, read `other`. A sub-byte tensor loads codes of its dtype; the packed layout is handled
    for you. `layout` optionally fixes the tile's register layout (thread, local) -> index."""
    return _s.load(tensor, offsets, shape, mask, other, layout)


def load_scalar(tensor: TensorHandle, indices: Any, name: str = "s") -> sympy.Symbol:
    """Read one element of an integer tensor (int8..int32) into a block-uniform scalar, e.g. a page of a
    block table: `page = T.load_scalar(block_tables, (b, j), name="page")`. The result can be used in
    offsets, loop bounds, `T.if_` conditions and tile arithmetic below it. Indices outside the tensor
    read 0."""
    return _s.load_scalar(tensor, indices, name)


def store(tensor: TensorHandle, offsets: Any, value: TileValue, mask: TileValue | None = None) -> None:
    """Store `value` at `tensor[offsets...]`; elements outside the tensor (or masked off) are skipped.
    The tile must have the tensor's dtype (use T.cast)."""
    _s.store(tensor, offsets, value, mask)


def assign(dst: TileValue, value: Any) -> TileValue:
    """Overwrite tile `dst` with `value` in place (what `dst += x` does for `+`), cast to dst's dtype;
    a float value into an integer tile is a DSLError (write the T.cast)."""
    return _s.assign(dst, value)


# ---- compute --------------------------------------------------------------------------------------------


def dot(a: TileValue, b: TileValue, acc_dtype: Any = float32) -> TileValue:
    """Matrix product a[M, K] @ b[K, N] -> acc_dtype[M, N]. Operands share a dtype of >= 8 bits
    (int8 x int8 -> int32 for W4A8; fp16/bf16/fp32 -> fp32). Float operands need a float acc_dtype (an
    integer accumulator would truncate: DSLError). Accumulate with `acc += T.dot(a, b)`."""
    return _s.dot(a, b, acc_dtype)


def cast(x: TileValue, dtype: Any) -> TileValue:
    """Convert values: float rounding is to nearest even, float->int truncates toward zero and saturates,
    int->int wraps."""
    return _s.cast(x, dtype)


def view(x: TileValue, dtype: Any) -> TileValue:
    """Reinterpret bits (e.g. uint32 words as eight int4 codes along the last axis, little-endian)."""
    return _s.view(x, dtype)


def dequantize(
    codes: TileValue,
    scales: TileValue,
    zeros: TileValue | None = None,
    *,
    axis: int = 0,
    group_size: int,
    zero_mode: str | None = None,
    dtype: Any = float32,
) -> TileValue:
    """Group-wise dequantization of `codes` (any int/uint/float dtype) along `axis` in groups of
    `group_size`: post-scale zero (q - z)*s (default when zeros are given), pre-scale zero q*s - z
    (`zero_mode="pre"`), or symmetric q*s. `scales`/`zeros` have the codes' shape with `axis` divided by
    `group_size`."""
    return _s.dequantize(codes, scales, zeros, axis, group_size, zero_mode, dtype)


def where(cond: TileValue, a: Any, b: Any) -> TileValue:
    """Elementwise `a if cond else b` (broadcasting). A Python scalar branch takes the other branch's dtype,
    as in arithmetic (`T.where(c, fp16_tile, 0.0)` is fp16)."""
    return _s.where(cond, a, b)


def maximum(a: Any, b: Any) -> TileValue:
    """Elementwise maximum (broadcasting)."""
    return _s.binary("max", a, b)


def minimum(a: Any, b: Any) -> TileValue:
    """Elementwise minimum (broadcasting)."""
    return _s.binary("min", a, b)


def _unary(op: str, doc: str):
    def f(x: Any) -> TileValue:
        return _s.unary(op, x)

    f.__name__, f.__doc__ = op, doc
    return f


exp = _unary("exp", "Elementwise e**x (float).")
exp2 = _unary("exp2", "Elementwise 2**x (float).")
log = _unary("log", "Elementwise natural log (float).")
log2 = _unary("log2", "Elementwise log base 2 (float).")
sqrt = _unary("sqrt", "Elementwise square root (float).")
rsqrt = _unary("rsqrt", "Elementwise 1/sqrt(x) (float).")
sin = _unary("sin", "Elementwise sine (float).")
cos = _unary("cos", "Elementwise cosine (float).")
tanh = _unary("tanh", "Elementwise tanh (float).")
sigmoid = _unary("sigmoid", "Elementwise 1/(1+e**-x) (float).")
floor = _unary("floor", "Elementwise floor (float).")
ceil = _unary("ceil", "Elementwise ceil (float).")
abs = _unary("abs", "Elementwise absolute value.")


def sum(x: TileValue, axis: int = -1, keepdims: bool = False) -> TileValue:
    """Sum along `axis` in x's dtype (cast first to accumulate wider). Not for boolean tiles: count with
    `T.sum(T.cast(mask, T.int32))`."""
    return _s.reduce("sum", x, axis, keepdims)


def max(x: TileValue, axis: int = -1, keepdims: bool = False) -> TileValue:
    """Maximum along `axis`."""
    return _s.reduce("max", x, axis, keepdims)


def min(x: TileValue, axis: int = -1, keepdims: bool = False) -> TileValue:
    """Minimum along `axis`."""
    return _s.reduce("min", x, axis, keepdims)


def reshape(x: TileValue, shape: Any) -> TileValue:
    """Row-major reshape to a shape of the same size."""
    return _s.reshape(x, shape)


def broadcast_to(x: TileValue, shape: Any) -> TileValue:
    """NumPy-style broadcast to `shape`."""
    return _s.broadcast_to(x, _s.as_shape(shape))


def expand_dims(x: TileValue, axis: int) -> TileValue:
    """Insert a size-1 axis at `axis` (-rank-1 <= axis <= rank; also written `x[:, None]`)."""
    shape, rank = list(x.shape), len(x.shape)
    if isinstance(axis, bool) or not isinstance(axis, int) or not -rank - 1 <= axis <= rank:
        raise DSLError(f"T.expand_dims: axis {axis!r} is out of range for a rank-{rank} tile; use {-rank - 1}..{rank}")
    shape.insert(axis % (rank + 1), 1)
    return _s.reshape(x, tuple(shape))


def transpose(x: TileValue, perm: tuple[int, ...] | None = None) -> TileValue:
    """Permute axes (default: reverse them); `x.T` is the same."""
    return _s.transpose(x, tuple(perm) if perm is not None else tuple(reversed(builtins.range(len(x.shape)))))


__all__ = [
    "DSLError",
    "Kernel",
    "Tensor",
    "TileValue",
    "abs",
    "arange",
    "assign",
    "bfloat16",
    "boolean",
    "broadcast_to",
    "cast",
    "cdiv",
    "ceil",
    "constexpr",
    "cos",
    "dequantize",
    "dot",
    "else_",
    "eq",
    "exp",
    "exp2",
    "expand_dims",
    "float16",
    "float32",
    "floor",
    "full",
    "grid",
    "if_",
    "int8",
    "int16",
    "int32",
    "kernel",
    "load",
    "log",
    "log2",
    "max",
    "maximum",
    "min",
    "minimum",
    "ne",
    "packed",
    "persistent",
    "range",
    "reshape",
    "rsqrt",
    "sigmoid",
    "sin",
    "sqrt",
    "static_range",
    "store",
    "sum",
    "tanh",
    "transpose",
    "uint8",
    "uint32",
    "view",
    "where",
    "zeros",
]
