"""Tile instructions: each produces one tile from tiles, scalars and attributes.

Every instruction is a frozen value with a `result_type()` typing rule (the one place a rule lives: the
DSL calls it to build IR, the verifier calls it to check IR) and `operands` (the tiles it reads).
Typing failures raise `IRTypeError` with a message that names the operand and the fix.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import ClassVar

from lowbit.dtypes import DataType, boolean, float32, int32
from lowbit.ir.types import Expr, TileType
from lowbit.ir.values import TensorParam, Tile


class IRTypeError(TypeError):
    """An instruction whose operands do not fit its typing rule."""


def _check(cond: bool, msg: str) -> None:
    if not cond:
        raise IRTypeError(msg)


def _shape(shape: tuple[int, ...]) -> str:
    return "[" + ", ".join(map(str, shape)) + "]"


@dataclass(frozen=True)
class Inst:
    opname: ClassVar[str] = "inst"

    @property
    def operands(self) -> tuple[Tile, ...]:
        return tuple(v for f in fields(self) if isinstance(v := getattr(self, f.name), Tile))

    def result_type(self) -> TileType:
        raise NotImplementedError(type(self).__name__)


@dataclass(frozen=True)
class Load(Inst):
    """tile[i...] = tensor[offsets + i...] for i in shape; elements outside the tensor (or masked off) read `other`."""

    opname: ClassVar[str] = "load"
    tensor: TensorParam
    offsets: tuple[Expr, ...]
    shape: tuple[int, ...]
    mask: Tile | None = None
    other: float = 0

    def result_type(self) -> TileType:
        _check(
            len(self.offsets) == self.tensor.rank == len(self.shape),
            f"load from {self.tensor.name}: tensor rank {self.tensor.rank}, {len(self.offsets)} offsets, "
            f"tile shape {_shape(self.shape)}; give one offset and one tile extent per tensor dimension",
        )
        if self.mask is not None:
            _check(self.mask.dtype == boolean, f"load mask must be a boolean tile, got {self.mask.dtype.name}")
            _check(self.mask.shape == self.shape, f"load mask shape {_shape(self.mask.shape)} != {_shape(self.shape)}")
        return TileType(self.tensor.dtype, self.shape)


@dataclass(frozen=True)
class Arange(Inst):
    """[start, start+1, ..., stop-1] as an int32 tile."""

    opname: ClassVar[str] = "arange"
    start: int
    stop: int

    def result_type(self) -> TileType:
        _check(self.stop > self.start, f"arange({self.start}, {self.stop}) is empty; stop must exceed start")
        return TileType(int32, (self.stop - self.start,))


@dataclass(frozen=True)
class Full(Inst):
    """A tile filled with one scalar value (a constant or a scalar expression such as `pid0*16`)."""

    opname: ClassVar[str] = "full"
    shape: tuple[int, ...]
    value: Expr
    dtype: DataType

    def result_type(self) -> TileType:
        _check(all(s > 0 for s in self.shape), f"full: shape {_shape(self.shape)} must be positive")
        return TileType(self.dtype, self.shape)


@dataclass(frozen=True)
class Dot(Inst):
    """acc_dtype[M, N] = a[M, K] @ b[K, N] (+ c[M, N]); products and sums exact, rounded once to acc_dtype.
    Float operands accumulate in a float dtype; an integer accumulator takes integer operands only."""

    opname: ClassVar[str] = "dot"
    a: Tile
    b: Tile
    c: Tile | None = None
    acc_dtype: DataType = float32

    def result_type(self) -> TileType:
        a, b = self.a.type, self.b.type
        _check(a.rank == 2 and b.rank == 2, f"dot needs 2-D tiles, got {a} and {b}")
        _check(a.shape[1] == b.shape[0], f"dot: a is {_shape(a.shape)} but b is {_shape(b.shape)}; inner dims differ")
        _check(a.dtype == b.dtype, f"dot operands differ in dtype ({a.dtype.name} vs {b.dtype.name}); cast one first")
        _check(
            not a.dtype.is_subbyte and a.dtype.bits >= 8,
            f"dot on {a.dtype.name} tiles: dequantize or cast sub-byte tiles to a compute dtype first",
        )
        _check(
            self.acc_dtype.is_float or not a.dtype.is_float,
            f"dot of {a.dtype.name} tiles with acc_dtype {self.acc_dtype.name} would truncate every product; "
            f"accumulate float operands in float32 (acc_dtype=float32) and cast the result",
        )
        out = TileType(self.acc_dtype, (a.shape[0], b.shape[1]))
        if self.c is not None:
            _check(self.c.type == out, f"dot accumulator is {self.c.type}, expected {out}")
        return out


@dataclass(frozen=True)
class Cast(Inst):
    """Value conversion: floats round to nearest even; float->int truncates toward zero and saturates;
    int->int wraps."""

    opname: ClassVar[str] = "cast"
    x: Tile
    dtype: DataType

    def result_type(self) -> TileType:
        return self.x.type.with_dtype(self.dtype)


@dataclass(frozen=True)
class View(Inst):
    """Bit reinterpretation. Same width: shape kept. Different widths: the last axis is rescaled, little-endian
    (element j of a wide word holds narrow elements j*r .. j*r+r-1, lowest bits first)."""

    opname: ClassVar[str] = "view"
    x: Tile
    dtype: DataType

    def result_type(self) -> TileType:
        src, dst = self.x.dtype.bits, self.dtype.bits
        shape = self.x.shape
        if src == dst:
            return TileType(self.dtype, shape)
        _check(self.x.type.rank >= 1, "view between widths needs a tile of rank >= 1")
        if src > dst:
            _check(src % dst == 0, f"view {self.x.dtype.name} -> {self.dtype.name}: {dst} bits do not divide {src}")
            return TileType(self.dtype, (*shape[:-1], shape[-1] * (src // dst)))
        _check(dst % src == 0, f"view {self.x.dtype.name} -> {self.dtype.name}: {src} bits do not divide {dst}")
        _check(
            shape[-1] % (dst // src) == 0,
            f"view {self.x.dtype.name} -> {self.dtype.name}: last dim {shape[-1]} not a multiple of {dst // src}",
        )
        return TileType(self.dtype, (*shape[:-1], shape[-1] // (dst // src)))


ZERO_MODES = ("none", "post", "pre")


@dataclass(frozen=True)
class Dequantize(Inst):
    """Group-wise dequantization along `axis`, groups of `group_size` elements:

    post: out = (q - zero) * scale   (integer zero point, AWQ/GPTQ style)
    pre:  out = q * scale - zero     (zero already scaled, "scale and min" style)
    none: out = q * scale            (symmetric)

    q is the decoded value of each code (an integer, or the float a float code stands for); scales and zeros
    have the codes' shape with `axis` divided by `group_size`. Computed exactly, rounded once to `dtype`.
    """

    opname: ClassVar[str] = "dequantize"
    codes: Tile
    scales: Tile
    zeros: Tile | None
    axis: int
    group_size: int
    zero_mode: str
    dtype: DataType

    def result_type(self) -> TileType:
        q, s = self.codes.type, self.scales.type
        _check(self.zero_mode in ZERO_MODES, f"zero_mode {self.zero_mode!r}; use one of {ZERO_MODES}")
        _check(0 <= self.axis < q.rank, f"dequantize axis {self.axis} out of range for {q}")
        _check(self.dtype.is_float, f"dequantize output must be a float dtype, got {self.dtype.name}")
        _check(self.group_size > 0, f"group_size {self.group_size} must be positive")
        extent = q.shape[self.axis]
        _check(
            extent % self.group_size == 0,
            f"group_size {self.group_size} does not divide the tile extent {extent} along axis {self.axis}: "
            f"a dequantize tile holds whole groups, so its extent must be a multiple of group_size"
            + (
                f"; for a tile inside one group (groups of {self.group_size} cut into tiles of {extent}), pass "
                f"group_size={extent} with the one scale of the tile's group (scales tile extent 1, loaded at "
                f"offset // {self.group_size})"
                if self.group_size % extent == 0
                else f"; use a group_size that divides {extent} or a tile extent that is a multiple of "
                f"{self.group_size}"
            ),
        )
        groups = list(q.shape)
        groups[self.axis] //= self.group_size
        _check(
            s.shape == tuple(groups),
            f"scales tile is {_shape(s.shape)}, expected {_shape(tuple(groups))} "
            f"(codes {_shape(q.shape)} with axis {self.axis} divided by group_size {self.group_size})",
        )
        _check(s.dtype.is_float, f"scales must be a float tile, got {s.dtype.name}")
        if self.zero_mode == "none":
            _check(self.zeros is None, "zero_mode 'none' takes no zeros; pass zero_mode='post' or 'pre'")
        else:
            _check(self.zeros is not None, f"zero_mode {self.zero_mode!r} needs a zeros tile")
            assert self.zeros is not None
            _check(self.zeros.shape == s.shape, f"zeros tile {_shape(self.zeros.shape)} != scales {_shape(s.shape)}")
        return TileType(self.dtype, q.shape)


UNARY_OPS = (
    "neg",
    "abs",
    "exp",
    "exp2",
    "log",
    "log2",
    "sqrt",
    "rsqrt",
    "sin",
    "cos",
    "tanh",
    "sigmoid",
    "floor",
    "ceil",
    "not",
)
FLOAT_ONLY_UNARY = ("exp", "exp2", "log", "log2", "sqrt", "rsqrt", "sin", "cos", "tanh", "sigmoid", "floor", "ceil")


@dataclass(frozen=True)
class Unary(Inst):
    opname: ClassVar[str] = "unary"
    op: str
    x: Tile

    def result_type(self) -> TileType:
        _check(self.op in UNARY_OPS, f"unknown unary op {self.op!r}; use one of {UNARY_OPS}")
        if self.op in FLOAT_ONLY_UNARY:
            _check(self.x.dtype.is_float, f"{self.op} needs a float tile, got {self.x.dtype.name}; cast first")
        if self.op == "not":
            _check(self.x.dtype == boolean or self.x.dtype.is_integer, f"not on {self.x.dtype.name}")
        return self.x.type


ARITH_OPS = ("add", "sub", "mul", "div", "floordiv", "mod", "max", "min")
BIT_OPS = ("and", "or", "xor", "shl", "shr")
COMPARE_OPS = ("eq", "ne", "lt", "le", "gt", "ge")
BINARY_OPS = ARITH_OPS + BIT_OPS + COMPARE_OPS


@dataclass(frozen=True)
class Binary(Inst):
    """Elementwise op on two tiles of the same shape and dtype (the DSL inserts broadcasts and casts)."""

    opname: ClassVar[str] = "binary"
    op: str
    a: Tile
    b: Tile

    def result_type(self) -> TileType:
        a, b = self.a.type, self.b.type
        _check(self.op in BINARY_OPS, f"unknown binary op {self.op!r}; use one of {BINARY_OPS}")
        _check(a.shape == b.shape, f"{self.op}: shapes {_shape(a.shape)} and {_shape(b.shape)} differ; broadcast first")
        _check(a.dtype == b.dtype, f"{self.op}: dtypes {a.dtype.name} and {b.dtype.name} differ; cast first")
        if self.op in BIT_OPS:
            _check(a.dtype.is_integer or a.dtype == boolean, f"{self.op} needs integer tiles, got {a.dtype.name}")
        if self.op in ("floordiv", "mod"):
            _check(a.dtype.is_integer, f"{self.op} needs integer tiles, got {a.dtype.name}")
        if self.op in COMPARE_OPS:
            return TileType(boolean, a.shape)
        return TileType(a.dtype, a.shape)


@dataclass(frozen=True)
class Where(Inst):
    opname: ClassVar[str] = "where"
    cond: Tile
    a: Tile
    b: Tile

    def result_type(self) -> TileType:
        _check(self.cond.dtype == boolean, f"where condition must be boolean, got {self.cond.dtype.name}")
        _check(
            self.cond.shape == self.a.shape == self.b.shape,
            f"where: shapes {_shape(self.cond.shape)}, {_shape(self.a.shape)}, {_shape(self.b.shape)} differ",
        )
        _check(self.a.dtype == self.b.dtype, f"where: dtypes {self.a.dtype.name} and {self.b.dtype.name} differ")
        return TileType(self.a.dtype, self.a.shape)


REDUCE_OPS = ("sum", "max", "min")


@dataclass(frozen=True)
class Reduce(Inst):
    """`op` (sum, max, min) along `axis`, in x's dtype. There is no sum of a boolean tile (a count is a sum
    of the tile cast to int32)."""

    opname: ClassVar[str] = "reduce"
    op: str
    x: Tile
    axis: int
    keepdims: bool = False

    def result_type(self) -> TileType:
        _check(self.op in REDUCE_OPS, f"unknown reduction {self.op!r}; use one of {REDUCE_OPS}")
        _check(0 <= self.axis < self.x.type.rank, f"reduce axis {self.axis} out of range for {self.x.type}")
        _check(
            not (self.op == "sum" and self.x.dtype.is_bool),
            "sum of a boolean tile is not defined; to count the true elements, cast the tile to int32 first",
        )
        shape = list(self.x.shape)
        if self.keepdims:
            shape[self.axis] = 1
        else:
            del shape[self.axis]
        return TileType(self.x.dtype, tuple(shape))


@dataclass(frozen=True)
class Broadcast(Inst):
    """NumPy broadcasting to `shape` at equal rank: extents of 1 are repeated."""

    opname: ClassVar[str] = "broadcast"
    x: Tile
    shape: tuple[int, ...]

    def result_type(self) -> TileType:
        src = self.x.shape
        _check(
            len(src) == len(self.shape),
            f"broadcast {_shape(src)} to {_shape(self.shape)}: reshape to equal rank first",
        )
        for i, (s, t) in enumerate(zip(src, self.shape)):
            _check(s in (1, t), f"broadcast {_shape(src)} to {_shape(self.shape)}: dim {i} has {s}, needs 1 or {t}")
        return TileType(self.x.dtype, self.shape)


@dataclass(frozen=True)
class Reshape(Inst):
    opname: ClassVar[str] = "reshape"
    x: Tile
    shape: tuple[int, ...]

    def result_type(self) -> TileType:
        new = TileType(self.x.dtype, self.shape)
        _check(
            new.numel == self.x.type.numel,
            f"reshape {_shape(self.x.shape)} to {_shape(self.shape)} changes the size",
        )
        return new


@dataclass(frozen=True)
class Transpose(Inst):
    opname: ClassVar[str] = "transpose"
    x: Tile
    perm: tuple[int, ...]

    def result_type(self) -> TileType:
        _check(
            sorted(self.perm) == list(range(self.x.type.rank)),
            f"transpose perm {list(self.perm)} is not a permutation of the {self.x.type.rank} axes",
        )
        return TileType(self.x.dtype, tuple(self.x.shape[p] for p in self.perm))


INSTRUCTIONS: tuple[type[Inst], ...] = (
    Load,
    Arange,
    Full,
    Dot,
    Cast,
    View,
    Dequantize,
    Unary,
    Binary,
    Where,
    Reduce,
    Broadcast,
    Reshape,
    Transpose,
)


__all__ = [
    "ARITH_OPS",
    "BINARY_OPS",
    "BIT_OPS",
    "COMPARE_OPS",
    "INSTRUCTIONS",
    "REDUCE_OPS",
    "UNARY_OPS",
    "ZERO_MODES",
    "Arange",
    "Binary",
    "Broadcast",
    "Cast",
    "Dequantize",
    "Dot",
    "Full",
    "IRTypeError",
    "Inst",
    "Load",
    "Reduce",
    "Reshape",
    "Transpose",
    "Unary",
    "View",
    "Where",
]
