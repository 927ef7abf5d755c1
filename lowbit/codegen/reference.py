"""The reference interpreter: runs any tile-IR program with NumPy, exactly. Ground truth for every backend.

Numerics (what "exact" means here):
- tiles hold values, never codes: float tiles as float32 arrays whose values are representable in the tile
  dtype, integer tiles as int64 arrays of in-range values, boolean tiles as bool arrays;
- every instruction computes in float64 / int64 and rounds once to its result dtype (floats: round to nearest
  even via `lowbit.dtypes.round_to`; integers: two's complement wrap), so a dot product is the exactly
  rounded sum of its float64 products (backends differ only by summation order);
- integer `floordiv`/`mod` follow Python (floor) semantics, like the scalar index expressions; division by
  zero gives 0 for both (NumPy's answer, which Triton's CPU interpreter shares) and never raises, so padding
  lanes of a ragged tile (loads outside a tensor read 0) run through. Stored lanes get 0 too, but the
  compiled backends promise nothing there (GPUs give all ones, x86 traps): a kernel should not store them;
- float->int casts truncate toward zero and saturate (NaN -> 0); int->int casts wrap; shifts by >= bits
  give 0 (shl, shr of non-negative) or -1 (shr of negative).

Memory: a tensor argument is a NumPy array in host form: the logical shape and host dtype for row-major
byte-sized tensors; a flat buffer indexed by the layout for a CuTe `Layout`; the words produced by
`PackedLayout.pack` for sub-byte tensors. Outputs are written back in place. Torch tensors are taken too
(`ReferenceKernel`): through `.numpy()`, with the float types NumPy lacks (bfloat16, float8) viewed as
their bits and then as the ml_dtypes type, and GPU tensors copied to the host and back.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import numpy as np
import sympy

from lowbit.codegen.scalar_eval import evaluate
from lowbit.dtypes import DataType, decode, encode, round_to, wrap
from lowbit.ir import instructions as I
from lowbit.ir.layout import PackedLayout
from lowbit.ir.program import Program
from lowbit.ir.statements import Assign, For, If, Let, ScalarLoad, Stmt, Store
from lowbit.ir.values import TensorParam, Tile, index_symbol


class KernelArgumentError(ValueError):
    """Bad arguments for a kernel run."""


# ---- values -----------------------------------------------------------------------------------------


def to_values(dt: DataType, x: np.ndarray) -> np.ndarray:
    """Host numbers of dtype `dt` as interpreter values (float32 / int64 / bool), rounding to the dtype."""
    x = np.asarray(x)
    if dt.is_bool:
        return x.astype(bool)
    if dt.is_float:
        return round_to(dt, x.astype(np.float32)).astype(np.float32)
    return wrap(dt, x.astype(np.int64))


def round_float64(dt: DataType, x: np.ndarray) -> np.ndarray:
    """float64 -> nearest value of float dtype `dt` (RNE), held as float32."""
    x = np.asarray(x, dtype=np.float64)
    if dt.bits == 16 and dt.exponent_bits == 5:  # fp16: NumPy rounds float64 -> float16 directly
        return x.astype(np.float16).astype(np.float32)
    with np.errstate(over="ignore"):
        return round_to(dt, x.astype(np.float32)).astype(np.float32)


def cast_values(x: np.ndarray, src: DataType, dst: DataType) -> np.ndarray:
    if dst.is_bool:
        return x != 0
    if dst.is_float:
        return round_float64(dst, x.astype(np.float64))
    if src.is_float:
        with np.errstate(invalid="ignore"):
            t = np.trunc(np.nan_to_num(x.astype(np.float64), nan=0.0))
        return np.clip(t, dst.min, dst.max).astype(np.int64)
    return wrap(dst, x.astype(np.int64))


def to_codes(dt: DataType, v: np.ndarray) -> np.ndarray:
    """Interpreter values -> unsigned bit patterns (uint64)."""
    if dt.is_bool:
        return v.astype(np.uint64)
    if dt.is_float:
        return encode(dt, v.astype(np.float32)).astype(np.uint64)
    return (v.astype(np.int64) & ((1 << dt.bits) - 1)).astype(np.uint64)


def from_codes(dt: DataType, c: np.ndarray) -> np.ndarray:
    if dt.is_bool:
        return c.astype(bool)
    if dt.is_float:
        return decode(dt, c.astype(dt.code_dtype)).astype(np.float32)
    return decode(dt, c.astype(dt.code_dtype)).astype(np.int64)


# ---- memory -------------------------------------------------------------------------------------------


class Memory:
    """One tensor argument as a logical array of values, plus how to write it back to the caller's array."""

    def __init__(self, param: TensorParam, arg: Any, env: dict[str, int]):
        self.param, self.arg = param, arg
        self.shape = tuple(int(evaluate(s, env)) for s in param.shape)
        self.dirty = False
        coords = np.indices(self.shape, dtype=np.int64) if self.shape else np.zeros((0,), np.int64)
        names = {f"_c{i}": coords[i] for i in range(len(self.shape))}
        symbols = tuple(index_symbol(n) for n in names)
        full_env = {**env, **names}
        dt = param.dtype
        if not isinstance(arg, np.ndarray):
            raise KernelArgumentError(f"argument {param.name} must be a NumPy array, got {type(arg).__name__}")
        if isinstance(param.layout, PackedLayout):
            words_expr, bit_expr = param.layout.locate(symbols)
            self.word = np.broadcast_to(evaluate(words_expr, full_env), self.shape).astype(np.int64)
            self.bit = np.broadcast_to(evaluate(bit_expr, full_env), self.shape).astype(np.int64)
            self.word_bits = int(param.layout.word_bits)
            flat = arg.reshape(-1)
            needed = int(self.word.max()) + 1 if self.word.size else 0
            if flat.size < needed:
                raise KernelArgumentError(
                    f"argument {param.name}: {flat.size} words, but {dt.name}{list(self.shape)} in layout "
                    f"{param.layout} needs at least {needed}; pack it with that layout"
                )
            self.values = from_codes(dt, self._gather_codes(flat))
        elif param.layout is not None:
            offset = np.broadcast_to(evaluate(param.layout(*symbols), full_env), self.shape).astype(np.int64)
            flat = arg.reshape(-1)
            if offset.size and int(offset.max()) >= flat.size:
                raise KernelArgumentError(
                    f"argument {param.name}: buffer of {flat.size} elements, layout {param.layout} reaches "
                    f"offset {int(offset.max())}"
                )
            self.offset = offset
            self.values = to_values(dt, flat[offset])
        else:
            if tuple(arg.shape) != self.shape:
                raise KernelArgumentError(
                    f"argument {param.name} has shape {list(arg.shape)}, the kernel declares "
                    f"{[str(s) for s in param.shape]} = {list(self.shape)}"
                )
            self.values = to_values(dt, arg)

    def _gather_codes(self, words: np.ndarray) -> np.ndarray:
        bits, wb = self.param.dtype.bits, self.word_bits
        w = words.astype(np.uint64)
        lo = w[self.word] >> self.bit.astype(np.uint64)
        straddle = self.bit + bits > wb
        if straddle.any():
            nxt = np.where(straddle, self.word + 1, self.word).clip(max=w.size - 1)
            lo = lo | np.where(straddle, w[nxt] << (wb - self.bit).astype(np.uint64), 0)
        return lo & np.uint64((1 << bits) - 1)

    def _scatter_codes(self, words: np.ndarray, codes: np.ndarray) -> None:
        """Write every element's bits into `words` in place, keeping bits no element owns (padding)."""
        bits, wb = self.param.dtype.bits, self.word_bits
        word, bit = self.word.reshape(-1), self.bit.reshape(-1).astype(np.uint64)
        c = codes.reshape(-1).astype(np.uint64)
        field_mask, word_mask = np.uint64((1 << bits) - 1), np.uint64((1 << wb) - 1)
        clear = np.zeros(words.size, np.uint64)
        value = np.zeros(words.size, np.uint64)
        np.bitwise_or.at(clear, word, (field_mask << bit) & word_mask)
        np.bitwise_or.at(value, word, (c << bit) & word_mask)
        straddle = bit + np.uint64(bits) > np.uint64(wb)  # the high part goes into the next word
        if straddle.any():
            rest = np.uint64(wb) - bit[straddle]
            np.bitwise_or.at(clear, word[straddle] + 1, field_mask >> rest)
            np.bitwise_or.at(value, word[straddle] + 1, c[straddle] >> rest)
        words[...] = ((words.astype(np.uint64) & ~clear) | value).astype(words.dtype)

    def write_back(self) -> None:
        if not self.dirty:
            return
        dt = self.param.dtype
        if isinstance(self.param.layout, PackedLayout):
            self._scatter_codes(self.arg.reshape(-1), to_codes(dt, self.values))
            return
        host = self.values
        if dt.is_float and dt.host_dtype is not None:
            host = self.values.astype(dt.host_dtype)
        if self.param.layout is not None:
            self.arg.reshape(-1)[self.offset] = host
        else:
            self.arg[...] = host


# ---- interpreter ------------------------------------------------------------------------------------


def run_reference(program: Program, args: dict[str, Any]) -> None:
    """Run `program` over its whole grid. `args` maps parameter names to arrays and scalars."""
    env: dict[str, Any] = {}
    for p in program.scalar_params:
        if p.name not in args:
            raise KernelArgumentError(f"kernel {program.name}: missing scalar argument {p.name} ({p.dtype.name})")
        env[p.name] = int(args[p.name]) if p.dtype.is_integer else float(args[p.name])
    missing = [p.name for p in program.tensor_params if p.name not in args]
    if missing:
        raise KernelArgumentError(f"kernel {program.name}: missing tensor arguments {missing}")
    extra = set(args) - {p.name for p in program.params}
    if extra:
        raise KernelArgumentError(f"kernel {program.name}: unknown arguments {sorted(extra)}")
    memory = {p.name: Memory(p, args[p.name], env) for p in program.tensor_params}
    grid = [int(evaluate(g, env)) for g in program.grid]
    for pids in np.ndindex(*grid):
        block_env = dict(env)
        block_env.update({f"pid{i}": int(v) for i, v in enumerate(pids)})
        _Block(memory, block_env).run(program.body)
    for m in memory.values():
        m.write_back()


class _Block:
    def __init__(self, memory: dict[str, Memory], env: dict[str, Any]):
        self.memory, self.env = memory, env
        self.tiles: dict[int, np.ndarray] = {}

    def run(self, body: tuple[Stmt, ...]) -> None:
        for stmt in body:
            if isinstance(stmt, Let):
                self.tiles[id(stmt.tile)] = self.execute(stmt.inst)
            elif isinstance(stmt, Assign):
                self.tiles[id(stmt.dst)] = self.tiles[id(stmt.src)]
            elif isinstance(stmt, Store):
                self.store(stmt)
            elif isinstance(stmt, ScalarLoad):
                mem = self.memory[stmt.tensor.name]
                idx = tuple(int(evaluate(e, self.env)) for e in stmt.indices)
                inside = all(0 <= i < n for i, n in zip(idx, mem.shape))
                self.env[str(stmt.var)] = int(mem.values[idx]) if inside else 0
            elif isinstance(stmt, For):
                start, stop, step = (int(evaluate(e, self.env)) for e in (stmt.start, stmt.stop, stmt.step))
                for v in range(start, stop, step):
                    self.env[str(stmt.var)] = v
                    self.run(stmt.body)
            elif isinstance(stmt, If):
                taken = _truth(stmt.cond, self.env)
                self.run(stmt.then_body if taken else stmt.else_body)
            else:
                raise NotImplementedError(f"reference interpreter has no rule for {type(stmt).__name__}")

    def get(self, t: Tile) -> np.ndarray:
        return self.tiles[id(t)]

    def window(self, mem: Memory, offsets: tuple[Any, ...], shape: tuple[int, ...]):
        idx = [int(evaluate(o, self.env)) + np.arange(n) for o, n in zip(offsets, shape)]
        inside = np.ones(shape, dtype=bool)
        for d, ix in enumerate(idx):
            ok = (ix >= 0) & (ix < mem.shape[d])
            inside &= ok.reshape([-1 if i == d else 1 for i in range(len(shape))])
        clipped = [np.clip(ix, 0, max(n - 1, 0)) for ix, n in zip(idx, mem.shape)]
        return np.ix_(*clipped), inside

    def store(self, s: Store) -> None:
        mem = self.memory[s.tensor.name]
        value = self.get(s.tile)
        sel, inside = self.window(mem, s.offsets, value.shape)
        if s.mask is not None:
            inside = inside & self.get(s.mask)
        # only the elements inside: clipped duplicates must not overwrite real ones
        coords = tuple(np.broadcast_to(ix, value.shape)[inside] for ix in sel)
        mem.values[coords] = value[inside]
        mem.dirty = True

    def execute(self, inst: I.Inst) -> np.ndarray:
        rule = _RULES.get(type(inst))
        if rule is None:
            raise NotImplementedError(f"reference interpreter has no rule for {type(inst).__name__}")
        return rule(self, inst)


def _truth(cond: Any, env: dict[str, Any]) -> bool:
    if isinstance(cond, (bool, sympy.logic.boolalg.BooleanAtom)):
        return bool(cond)
    sub = {s: env[str(s)] for s in cond.free_symbols}
    return bool(cond.xreplace({k: sympy.Integer(v) for k, v in sub.items()}))


_RULES: dict[type, Callable[[_Block, Any], np.ndarray]] = {}


def rule(cls: type):
    def register(fn):
        _RULES[cls] = fn
        return fn

    return register


@rule(I.Load)
def _load(b: _Block, inst: I.Load) -> np.ndarray:
    mem = b.memory[inst.tensor.name]
    sel, inside = b.window(mem, inst.offsets, inst.shape)
    if inst.mask is not None:
        inside = inside & b.get(inst.mask)
    other = to_values(inst.tensor.dtype, np.full(inst.shape, inst.other))
    return np.where(inside, mem.values[sel], other)


@rule(I.Arange)
def _arange(b: _Block, inst: I.Arange) -> np.ndarray:
    return np.arange(inst.start, inst.stop, dtype=np.int64)


@rule(I.Full)
def _full(b: _Block, inst: I.Full) -> np.ndarray:
    v = evaluate(inst.value, b.env)
    return to_values(inst.dtype, np.full(inst.shape, v, dtype=np.float64 if inst.dtype.is_float else np.int64))


@rule(I.Dot)
def _dot(b: _Block, inst: I.Dot) -> np.ndarray:
    a, w = b.get(inst.a), b.get(inst.b)
    if inst.acc_dtype.is_float:
        out = a.astype(np.float64) @ w.astype(np.float64)
        if inst.c is not None:
            out = out + b.get(inst.c).astype(np.float64)
        return round_float64(inst.acc_dtype, out)
    iout = a.astype(np.int64) @ w.astype(np.int64)
    if inst.c is not None:
        iout = iout + b.get(inst.c)
    return wrap(inst.acc_dtype, iout)


@rule(I.Cast)
def _cast(b: _Block, inst: I.Cast) -> np.ndarray:
    return cast_values(b.get(inst.x), inst.x.dtype, inst.dtype)


@rule(I.View)
def _view(b: _Block, inst: I.View) -> np.ndarray:
    src, dst = inst.x.dtype, inst.dtype
    codes = to_codes(src, b.get(inst.x))
    if src.bits > dst.bits:  # split each wide code into r narrow ones, lowest bits first
        r = src.bits // dst.bits
        shifts = np.arange(r, dtype=np.uint64) * np.uint64(dst.bits)
        parts = (codes[..., None] >> shifts) & np.uint64((1 << dst.bits) - 1)
        codes = parts.reshape(*codes.shape[:-1], codes.shape[-1] * r)
    elif src.bits < dst.bits:
        r = dst.bits // src.bits
        parts = codes.reshape(*codes.shape[:-1], codes.shape[-1] // r, r)
        shifts = np.arange(r, dtype=np.uint64) * np.uint64(src.bits)
        codes = np.bitwise_or.reduce(parts << shifts, axis=-1)
    return from_codes(dst, codes)


@rule(I.Dequantize)
def _dequantize(b: _Block, inst: I.Dequantize) -> np.ndarray:
    q = b.get(inst.codes).astype(np.float64)
    s = np.repeat(b.get(inst.scales).astype(np.float64), inst.group_size, axis=inst.axis)
    if inst.zero_mode == "none":
        out = q * s
    else:
        z = np.repeat(b.get(inst.zeros).astype(np.float64), inst.group_size, axis=inst.axis)  # type: ignore[arg-type]
        out = (q - z) * s if inst.zero_mode == "post" else q * s - z
    return round_float64(inst.dtype, out)


_FLOAT_UNARY: dict[str, Callable[[np.ndarray], np.ndarray]] = {
    "exp": np.exp,
    "exp2": np.exp2,
    "log": np.log,
    "log2": np.log2,
    "sqrt": np.sqrt,
    "rsqrt": lambda x: 1.0 / np.sqrt(x),
    "sin": np.sin,
    "cos": np.cos,
    "tanh": np.tanh,
    "sigmoid": lambda x: 1.0 / (1.0 + np.exp(-x)),
    "floor": np.floor,
    "ceil": np.ceil,
    "neg": np.negative,
    "abs": np.abs,
}


@rule(I.Unary)
def _unary(b: _Block, inst: I.Unary) -> np.ndarray:
    x, dt = b.get(inst.x), inst.x.dtype
    if dt.is_bool:
        return ~x if inst.op == "not" else x
    if dt.is_float:
        with np.errstate(all="ignore"):
            return round_float64(dt, _FLOAT_UNARY[inst.op](x.astype(np.float64)))
    if inst.op == "not":
        return wrap(dt, ~x)
    return wrap(dt, np.negative(x) if inst.op == "neg" else np.abs(x))


def _shift(x: np.ndarray, n: np.ndarray, left: bool, bits: int) -> np.ndarray:
    big = n >= bits
    n = np.clip(n, 0, 63)
    if left:
        return np.where(big, 0, x << n)
    return np.where(big, np.where(x < 0, -1, 0), x >> n)


_INT_BINARY = {
    "add": np.add,
    "sub": np.subtract,
    "mul": np.multiply,
    "max": np.maximum,
    "min": np.minimum,
    "and": np.bitwise_and,
    "or": np.bitwise_or,
    "xor": np.bitwise_xor,
}
_COMPARE = {
    "eq": np.equal,
    "ne": np.not_equal,
    "lt": np.less,
    "le": np.less_equal,
    "gt": np.greater,
    "ge": np.greater_equal,
}
_FLOAT_BINARY = {
    "add": np.add,
    "sub": np.subtract,
    "mul": np.multiply,
    "div": np.divide,
    "max": np.maximum,
    "min": np.minimum,
}


@rule(I.Binary)
def _binary(b: _Block, inst: I.Binary) -> np.ndarray:
    x, y, dt, op = b.get(inst.a), b.get(inst.b), inst.a.dtype, inst.op
    if op in _COMPARE:
        return _COMPARE[op](x, y)
    if dt.is_bool:
        return {"and": np.logical_and, "or": np.logical_or, "xor": np.logical_xor}[op](x, y)
    if dt.is_float:
        if op not in _FLOAT_BINARY:
            raise NotImplementedError(f"{op} on float tiles")
        with np.errstate(all="ignore"):
            return round_float64(dt, _FLOAT_BINARY[op](x.astype(np.float64), y.astype(np.float64)))
    if op in ("floordiv", "mod", "div"):
        zero = y == 0
        y = np.where(zero, 1, y)
        return wrap(dt, np.where(zero, 0, np.floor_divide(x, y) if op != "mod" else np.mod(x, y)))
    if op in ("shl", "shr"):
        return wrap(dt, _shift(x, y, op == "shl", dt.bits))
    return wrap(dt, _INT_BINARY[op](x, y))


@rule(I.Where)
def _where(b: _Block, inst: I.Where) -> np.ndarray:
    return np.where(b.get(inst.cond), b.get(inst.a), b.get(inst.b))


@rule(I.Reduce)
def _reduce(b: _Block, inst: I.Reduce) -> np.ndarray:
    x, dt = b.get(inst.x), inst.x.dtype
    if inst.op == "sum":
        if dt.is_float:
            return round_float64(dt, np.sum(x.astype(np.float64), axis=inst.axis, keepdims=inst.keepdims))
        return wrap(dt, np.sum(x, axis=inst.axis, keepdims=inst.keepdims))
    fn = np.max if inst.op == "max" else np.min
    return fn(x, axis=inst.axis, keepdims=inst.keepdims)


@rule(I.Broadcast)
def _broadcast(b: _Block, inst: I.Broadcast) -> np.ndarray:
    return np.broadcast_to(b.get(inst.x), inst.shape).copy()


@rule(I.Reshape)
def _reshape(b: _Block, inst: I.Reshape) -> np.ndarray:
    return b.get(inst.x).reshape(inst.shape)


@rule(I.Transpose)
def _transpose(b: _Block, inst: I.Transpose) -> np.ndarray:
    return np.transpose(b.get(inst.x), inst.perm).copy()


assert set(_RULES) == set(I.INSTRUCTIONS), "every IR instruction needs a reference rule"


# ---- backend registration --------------------------------------------------------------------------


class ReferenceKernel:
    """The interpreter behind the backend interface (`lowbit.codegen.backend`)."""

    backend = "reference"
    source = ""

    def __init__(self, program: Program, options: dict[str, Any]):
        if options:
            raise KernelArgumentError(f"the reference backend takes no options, got {sorted(options)}")
        self.program = program

    def __call__(self, args: Any) -> None:
        # torch CPU tensors share memory with their NumPy views, so outputs land in the caller's tensors;
        # tensors on a device are copied to the host and, when the program stores into them, back
        converted = {k: _as_numpy(v) for k, v in args.items()}
        run_reference(self.program, {k: a for k, (a, _) in converted.items()})
        for name, (_, copy_back) in converted.items():
            if copy_back is not None and name in self.program.stored:
                copy_back()


@functools.cache
def _torch_bits_types() -> dict[Any, tuple[Any, Any]]:
    """torch float dtypes NumPy has no type for -> (torch int dtype of their width, ml_dtypes type)."""
    import ml_dtypes
    import torch

    names = ("bfloat16", "float8_e4m3fn", "float8_e5m2", "float8_e4m3fnuz", "float8_e5m2fnuz")
    out = {}
    for name in names:
        if hasattr(torch, name) and hasattr(ml_dtypes, name):
            t = getattr(torch, name)
            out[t] = (torch.int16 if t.itemsize == 2 else torch.int8, getattr(ml_dtypes, name))
    return out


def _as_numpy(v: Any) -> tuple[Any, Callable[[], Any] | None]:
    """(the NumPy form of argument `v`, how to copy results back into `v` when they do not share memory)."""
    if not (hasattr(v, "detach") and hasattr(v, "numpy")):
        return v, None
    t = v.detach()
    host = t if t.device.type == "cpu" else t.cpu()
    bits = _torch_bits_types().get(t.dtype)
    array = host.view(bits[0]).numpy().view(bits[1]) if bits else host.numpy()
    return array, None if host is t else (lambda: t.copy_(host))


def _register() -> None:
    from lowbit.codegen.backend import register_backend

    def compile_reference(program: Program, options: Any) -> ReferenceKernel:
        return ReferenceKernel(program, dict(options))

    register_backend("reference", compile_reference)


_register()
