"""The semantic layer: checks what a builtin was given, inserts broadcasts and casts, and builds IR.

Builtins in `lowbit.lang` are thin documented wrappers over these functions. Typing rules live on the IR
instructions (`result_type`); this layer adds the conveniences (scalars, broadcasting, promotion) and turns
every failure into a `DSLError` at the user's source line.
"""

from __future__ import annotations

import numbers
from typing import Any, TypeAlias

import sympy

from lowbit.dtypes import DataType, boolean, dtype, float32, int32
from lowbit.ir import instructions as I
from lowbit.ir.statements import Assign, Let, ScalarLoad, Store
from lowbit.ir.types import TileType, non_integer_part
from lowbit.ir.values import TensorParam, Tile, scalar_symbol
from lowbit.lang.builder import DSLError, current, user_location
from lowbit.lang.scalars import OP_TEXT, holder, number, unrepresentable

Scalar: TypeAlias = int | float | sympy.Expr


class TileValue:
    """A tile in a kernel being traced. Arithmetic operators build IR; `+=` and friends update in place
    (an `Assign`), which is how loop-carried values such as a GEMM accumulator are written."""

    __slots__ = ("ir",)

    def __init__(self, ir: Tile):
        self.ir = ir

    @property
    def shape(self) -> tuple[int, ...]:
        return self.ir.shape

    @property
    def dtype(self) -> DataType:
        return self.ir.dtype

    def __repr__(self) -> str:
        return f"TileValue({self.ir.type})"

    def __bool__(self) -> bool:
        raise DSLError(
            "a tile has no truth value while tracing; use T.where(cond, a, b) for elementwise choice or "
            "`with T.if_(scalar_condition):` for a branch"
        )

    # arithmetic
    def __add__(self, o: Any) -> TileValue:
        return binary("add", self, o)

    def __radd__(self, o: Any) -> TileValue:
        return binary("add", o, self)

    def __sub__(self, o: Any) -> TileValue:
        return binary("sub", self, o)

    def __rsub__(self, o: Any) -> TileValue:
        return binary("sub", o, self)

    def __mul__(self, o: Any) -> TileValue:
        return binary("mul", self, o)

    def __rmul__(self, o: Any) -> TileValue:
        return binary("mul", o, self)

    def __truediv__(self, o: Any) -> TileValue:
        return binary("div", self, o)

    def __rtruediv__(self, o: Any) -> TileValue:
        return binary("div", o, self)

    def __floordiv__(self, o: Any) -> TileValue:
        return binary("floordiv", self, o)

    def __rfloordiv__(self, o: Any) -> TileValue:
        return binary("floordiv", o, self)

    def __mod__(self, o: Any) -> TileValue:
        return binary("mod", self, o)

    def __rmod__(self, o: Any) -> TileValue:
        return binary("mod", o, self)

    def __and__(self, o: Any) -> TileValue:
        return binary("and", self, o)

    def __rand__(self, o: Any) -> TileValue:
        return binary("and", o, self)

    def __or__(self, o: Any) -> TileValue:
        return binary("or", self, o)

    def __ror__(self, o: Any) -> TileValue:
        return binary("or", o, self)

    def __xor__(self, o: Any) -> TileValue:
        return binary("xor", self, o)

    def __rxor__(self, o: Any) -> TileValue:
        return binary("xor", o, self)

    def __lshift__(self, o: Any) -> TileValue:
        return binary("shl", self, o)

    def __rshift__(self, o: Any) -> TileValue:
        return binary("shr", self, o)

    def __lt__(self, o: Any) -> TileValue:
        return binary("lt", self, o)

    def __le__(self, o: Any) -> TileValue:
        return binary("le", self, o)

    def __gt__(self, o: Any) -> TileValue:
        return binary("gt", self, o)

    def __ge__(self, o: Any) -> TileValue:
        return binary("ge", self, o)

    def __eq__(self, o: Any) -> TileValue:  # type: ignore[override]
        return binary("eq", self, o)

    def __ne__(self, o: Any) -> TileValue:  # type: ignore[override]
        return binary("ne", self, o)

    def __neg__(self) -> TileValue:
        return unary("neg", self)

    def __abs__(self) -> TileValue:
        return unary("abs", self)

    def __invert__(self) -> TileValue:
        return unary("not", self)

    __hash__ = object.__hash__

    # in-place updates: the tile keeps its identity, its value is replaced
    def __iadd__(self, o: Any) -> TileValue:
        return assign(self, binary("add", self, o))

    def __isub__(self, o: Any) -> TileValue:
        return assign(self, binary("sub", self, o))

    def __imul__(self, o: Any) -> TileValue:
        return assign(self, binary("mul", self, o))

    def __itruediv__(self, o: Any) -> TileValue:
        return assign(self, binary("div", self, o))

    def __getitem__(self, index: Any) -> TileValue:
        """Only `None` (new axis) and `:` are supported: `x[:, None]` is expand_dims."""
        index = index if isinstance(index, tuple) else (index,)
        shape, src = [], iter(self.shape)
        for ix in index:
            if ix is None:
                shape.append(1)
            elif ix == slice(None):
                shape.append(next(src))
            else:
                raise DSLError(f"tile indexing supports only None and ':', got {ix!r}; use T.load with offsets")
        shape.extend(src)
        return reshape(self, tuple(shape))

    @property
    def T(self) -> TileValue:
        return transpose(self, tuple(reversed(range(len(self.shape)))))


def _emit(inst: I.Inst, name: str = "", layout: Any = None) -> TileValue:
    try:
        ty = inst.result_type()
    except I.IRTypeError as e:
        raise DSLError(str(e)) from None
    if layout is not None:
        if tuple(layout.shape) != ty.shape:
            raise DSLError(f"layout {layout} has shape {list(layout.shape)} but the tile is {list(ty.shape)}")
        ty = TileType(ty.dtype, ty.shape, layout)
    tile = Tile(ty, name)
    current().emit(Let(tile, inst, user_location()))
    return TileValue(tile)


def as_dtype(d: Any, what: str = "dtype") -> DataType:
    try:
        return dtype(d)
    except (ValueError, TypeError) as e:
        raise DSLError(f"{what}: {e}") from None


def as_shape(shape: Any, what: str = "shape") -> tuple[int, ...]:
    shape = (shape,) if isinstance(shape, (int, sympy.Integer)) else tuple(shape)
    out = []
    for s in shape:
        if isinstance(s, sympy.Basic) and not s.is_Number:
            raise DSLError(
                f"{what} {list(shape)} has the runtime value {s}; tile shapes are compile-time: make it a "
                f"T.constexpr parameter"
            )
        if isinstance(s, bool) or not isinstance(s, (numbers.Integral, sympy.Integer)):
            raise DSLError(
                f"{what} {list(shape)} has the non-integer extent {s!r}; tile extents are ints: use // for "
                f"floor division (or an int T.constexpr)"
            )
        if int(s) <= 0:
            raise DSLError(f"{what} {list(shape)} must be positive")
        out.append(int(s))
    return tuple(out)


def _scalar_dtype(v: Scalar) -> DataType:
    if isinstance(v, bool):
        return boolean
    if isinstance(v, int) or (isinstance(v, sympy.Basic) and v.is_integer):
        return int32
    return float32


def scalar_operand(v: Any, like: DataType, shape: tuple[int, ...], op: str) -> TileValue:
    """The Python scalar operand `v` of an elementwise op whose tile operand has dtype `like`, as a tile of
    `shape`. The scalar takes that dtype (an fp16 tile times 0.5 stays fp16), except that a float scalar
    with an integer or boolean tile makes the operation float32. A scalar that is not a value of the dtype
    is an error, never wrapped or rounded to infinity."""
    if not isinstance(v, (numbers.Real, sympy.Basic)):
        raise DSLError(f"`{OP_TEXT.get(op, op)}`: expected a tile or a scalar, got {type(v).__name__} {v!r}")
    n = number(v)
    v = v if n is None else n
    d = float32 if not like.is_float and _scalar_dtype(v).is_float else like
    problem = unrepresentable(v, d)
    if problem:
        raise DSLError(
            f"the constant {v!r} of `{OP_TEXT.get(op, op)}` with the {like.name} tile: {problem} (a Python scalar "
            f"takes the tile's dtype); T.cast the tile to a type that holds it first, e.g. T.cast(x, {holder(v)})"
        )
    return full(shape, v, d)


def _promote(a: DataType, b: DataType, op: str) -> DataType:
    if a == b:
        return a
    for d in (a, b):
        if d.is_subbyte or (d.is_float and d.bits == 8):
            raise DSLError(f"{op} of {a.name} and {b.name}: dequantize or T.cast the {d.name} tile first")
    if a.is_float and b.is_float:
        return a if a.bits > b.bits else b if b.bits > a.bits else float32
    if a.is_float != b.is_float:
        return a if a.is_float else b
    if a.is_bool or b.is_bool:
        return b if a.is_bool else a
    if a.is_signed == b.is_signed:
        return a if a.bits >= b.bits else b
    raise DSLError(f"{op} of {a.name} and {b.name} mixes signedness; T.cast one operand explicitly")


def to_tile(v: Any, like: TileValue | None = None, dtype_: DataType | None = None) -> TileValue:
    if isinstance(v, TileValue):
        return v
    if isinstance(v, (int, float, sympy.Basic)):
        d = dtype_ or _scalar_dtype(v)
        shape = like.shape if like is not None else (1,)
        return full(shape, v, d)
    raise DSLError(f"expected a tile or a scalar, got {type(v).__name__} {v!r}")


def broadcast_shapes(a: tuple[int, ...], b: tuple[int, ...], op: str) -> tuple[int, ...]:
    n = max(len(a), len(b))
    a1, b1 = (1,) * (n - len(a)) + a, (1,) * (n - len(b)) + b
    out = []
    for i, (x, y) in enumerate(zip(a1, b1)):
        if x != y and 1 not in (x, y):
            raise DSLError(f"{op}: shapes {list(a)} and {list(b)} do not broadcast (dim {i}: {x} vs {y})")
        out.append(max(x, y))
    return tuple(out)


def broadcast_to(x: TileValue, shape: tuple[int, ...]) -> TileValue:
    if x.shape == shape:
        return x
    if len(x.shape) < len(shape):
        x = reshape(x, (1,) * (len(shape) - len(x.shape)) + x.shape)
    return _emit(I.Broadcast(x.ir, shape)) if x.shape != shape else x


def cast(x: TileValue, d: Any) -> TileValue:
    d = as_dtype(d)
    return x if x.dtype == d else _emit(I.Cast(x.ir, d))


def binary(op: str, a: Any, b: Any) -> TileValue:
    if not isinstance(a, TileValue) and not isinstance(b, TileValue):
        raise DSLError(f"{op} needs at least one tile operand")
    ta = a if isinstance(a, TileValue) else scalar_operand(a, b.dtype, b.shape, op)
    tb = b if isinstance(b, TileValue) else scalar_operand(b, ta.dtype, ta.shape, op)
    shape = broadcast_shapes(ta.shape, tb.shape, op)
    ta, tb = broadcast_to(ta, shape), broadcast_to(tb, shape)
    d = _promote(ta.dtype, tb.dtype, op)
    if op == "div" and not d.is_float:
        d = float32  # true division, like Python and Triton
    if op in ("and", "or", "xor") and ta.dtype.is_bool and tb.dtype.is_bool:
        d = boolean
    return _emit(I.Binary(op, cast(ta, d).ir, cast(tb, d).ir))


def unary(op: str, x: Any) -> TileValue:
    x = to_tile(x)
    if op in I.FLOAT_ONLY_UNARY and not x.dtype.is_float:
        x = cast(x, float32)
    return _emit(I.Unary(op, x.ir))


def where(cond: TileValue, a: Any, b: Any) -> TileValue:
    if not isinstance(cond, TileValue) or not cond.dtype.is_bool:
        raise DSLError("where: the condition must be a boolean tile (e.g. a comparison)")
    if not isinstance(a, TileValue) and not isinstance(b, TileValue):  # two scalars: the wider of their types
        d = _promote(_scalar_dtype(a), _scalar_dtype(b), "where")
        a = scalar_operand(a, d, cond.shape, "where")
    ta = a if isinstance(a, TileValue) else scalar_operand(a, b.dtype, b.shape, "where")  # as in binary()
    tb = b if isinstance(b, TileValue) else scalar_operand(b, ta.dtype, ta.shape, "where")
    d = _promote(ta.dtype, tb.dtype, "where")
    shape = broadcast_shapes(broadcast_shapes(cond.shape, ta.shape, "where"), tb.shape, "where")
    c, ta, tb = broadcast_to(cond, shape), broadcast_to(cast(ta, d), shape), broadcast_to(cast(tb, d), shape)
    return _emit(I.Where(c.ir, ta.ir, tb.ir))


def full(shape: Any, value: Scalar, d: Any = float32, name: str = "", layout: Any = None) -> TileValue:
    d = as_dtype(d)
    if not isinstance(value, (numbers.Real, sympy.Basic)):
        raise DSLError(f"T.full: the value must be a number or a scalar expression, got {type(value).__name__}")
    n = number(value)
    value = value if n is None else n
    problem = unrepresentable(value, d)
    if problem:
        raise DSLError(f"T.full of {d.name}: {problem}; pick a dtype that holds it")
    return _emit(I.Full(as_shape(shape), value, d), name, layout)


def arange(start: int, stop: int | None = None) -> TileValue:
    if stop is None:
        start, stop = 0, start
    for v in (start, stop):
        if isinstance(v, bool) or not isinstance(v, (numbers.Integral, sympy.Integer)):
            raise DSLError(
                f"arange bounds must be compile-time integers, got {v!r} ({type(v).__name__}); add a runtime "
                f"offset afterwards (`pid * B + T.arange(B)`)"
            )
    return _emit(I.Arange(int(start), int(stop)))


def _offsets(tensor: TensorParam, offsets: Any, what: str) -> tuple[sympy.Expr, ...]:
    offsets = offsets if isinstance(offsets, (tuple, list)) else (offsets,)
    if len(offsets) != tensor.rank:
        raise DSLError(f"{what} {tensor.name}: {len(offsets)} offsets for a rank-{tensor.rank} tensor")
    return tuple(index(o, f"{what} {tensor.name}: offset {i}") for i, o in enumerate(offsets))


def index(v: Any, what: str) -> sympy.Expr:
    """A scalar index (offset, loop bound, grid extent) as a sympy integer expression; anything else is an
    error that suggests `//`."""
    if isinstance(v, TileValue):
        raise DSLError(f"{what}: indices are scalars (block-uniform); got a tile")
    if isinstance(v, numbers.Integral):
        return sympy.Integer(int(v))
    if not isinstance(v, (numbers.Real, sympy.Basic)):
        raise DSLError(f"{what} is {v!r} of type {type(v).__name__}; expected an integer expression")
    bad = non_integer_part(v)
    if bad is not None:
        part = f" ({bad} is not)" if bad is not v else ""
        raise DSLError(
            f"{what} is {v}, which is not an integer{part}; indices are integers: use // for floor division "
            f"(`N // 2`) and int T.constexpr values (64, not 64.0)"
        )
    return sympy.sympify(v)


def load(
    tensor: Any, offsets: Any, shape: Any, mask: TileValue | None = None, other: float = 0, layout: Any = None
) -> TileValue:
    t = _tensor(tensor, "load")
    shape = as_shape(shape, "load shape")
    m = None if mask is None else broadcast_to(mask, shape).ir
    if not isinstance(other, (numbers.Real, sympy.Basic)):
        raise DSLError(f"load from {t.name}: other must be a number, got {type(other).__name__} {other!r}")
    n = number(other)
    problem = unrepresentable(other, t.dtype)
    if problem:
        raise DSLError(
            f"load from {t.name} ({t.dtype.name}): other={other!r}, what masked-off elements read: {problem}; "
            f"pass a value of {t.dtype.name}"
        )
    return _emit(I.Load(t, _offsets(t, offsets, "load"), shape, m, other if n is None else n), layout=layout)


def load_scalar(tensor: Any, indices: Any, name: str) -> sympy.Symbol:
    t = _tensor(tensor, "load_scalar")
    if not t.dtype.is_integer or t.is_packed or t.dtype.bits > 32:
        raise DSLError(
            f"load_scalar from {t.name} ({t.dtype.name}): scalars come from byte-addressed integer tensors of up "
            f"to 32 bits (block tables, lengths, offsets); declare it T.Tensor('int32', ...)"
        )
    b = current()
    var = scalar_symbol(b.fresh_symbol(name).name)
    b.emit(ScalarLoad(var, t, _offsets(t, indices, "load_scalar"), user_location()))
    return var


def store(tensor: Any, offsets: Any, value: TileValue, mask: TileValue | None = None) -> None:
    t = _tensor(tensor, "store")
    if not isinstance(value, TileValue):
        raise DSLError(f"store into {t.name}: expected a tile, got {type(value).__name__}")
    if value.dtype != t.dtype:
        raise DSLError(
            f"store of a {value.dtype.name} tile into {t.name} ({t.dtype.name}): write T.cast(x, {t.dtype.name!r})"
        )
    if len(value.shape) != t.rank:
        raise DSLError(f"store into {t.name}: a rank-{len(value.shape)} tile into a rank-{t.rank} tensor; reshape it")
    m = None if mask is None else broadcast_to(mask, value.shape).ir
    current().emit(Store(t, _offsets(t, offsets, "store"), value.ir, m, user_location()))


def _tensor(x: Any, what: str) -> TensorParam:
    from lowbit.lang.kernel import TensorHandle

    if isinstance(x, TensorHandle):
        return x.param
    raise DSLError(f"{what}: expected a tensor parameter of the kernel, got {type(x).__name__}")


def dot(a: TileValue, b: TileValue, acc_dtype: Any = float32) -> TileValue:
    for name, x in (("a", a), ("b", b)):
        if not isinstance(x, TileValue):
            raise DSLError(f"T.dot: operand {name} must be a tile, got {type(x).__name__} {x!r}")
    return _emit(I.Dot(a.ir, b.ir, None, as_dtype(acc_dtype)))


def view(x: TileValue, d: Any) -> TileValue:
    return _emit(I.View(x.ir, as_dtype(d)))


def dequantize(
    codes: TileValue,
    scales: TileValue,
    zeros: TileValue | None,
    axis: int,
    group_size: int,
    zero_mode: str | None,
    d: Any,
) -> TileValue:
    if zero_mode is None:
        zero_mode = "none" if zeros is None else "post"
    axis = normalize_axis(axis, len(codes.shape), "T.dequantize")
    return _emit(
        I.Dequantize(
            codes.ir, scales.ir, None if zeros is None else zeros.ir, axis, int(group_size), zero_mode, as_dtype(d)
        )
    )


def normalize_axis(axis: Any, rank: int, what: str) -> int:
    """`axis` (negative counts from the end) as 0..rank-1; out of range is an error naming the axis given."""
    if isinstance(axis, bool) or not isinstance(axis, numbers.Integral):
        raise DSLError(f"{what}: axis must be an int, got {axis!r}")
    axis = int(axis)
    if not -rank <= axis < rank:
        raise DSLError(f"{what}: axis {axis} is out of range for a rank-{rank} tile; use 0..{rank - 1} or -{rank}..-1")
    return axis % rank


def reduce(op: str, x: TileValue, axis: int, keepdims: bool) -> TileValue:
    axis = normalize_axis(axis, len(x.shape), f"T.{op}")
    return _emit(I.Reduce(op, x.ir, axis, keepdims))


def reshape(x: TileValue, shape: Any) -> TileValue:
    shape = as_shape(shape)
    return x if shape == x.shape else _emit(I.Reshape(x.ir, shape))


def transpose(x: TileValue, perm: tuple[int, ...]) -> TileValue:
    return _emit(I.Transpose(x.ir, tuple(perm)))


def assign(dst: TileValue, value: Any) -> TileValue:
    """Overwrite `dst` with `value` (cast and broadcast to dst's dtype and shape); returns dst. A float value
    into an integer or boolean tile would truncate: that cast must be written (T.cast)."""
    src = value if isinstance(value, TileValue) else scalar_operand(value, dst.dtype, dst.shape, "assign")
    if src.dtype.is_float and not dst.dtype.is_float:
        raise DSLError(
            f"assign a {src.dtype.name} value to the {dst.dtype.name} tile (`+=` and friends included) would "
            f"truncate it; write T.cast(value, T.{dst.dtype.name}) to mean that, or keep the tile float"
        )
    src = broadcast_to(cast(src, dst.dtype), dst.shape)
    if src.shape != dst.shape:
        raise DSLError(f"assign a {list(src.shape)} tile to a {list(dst.shape)} tile")
    current().emit(Assign(dst.ir, src.ir, user_location()))
    return dst
