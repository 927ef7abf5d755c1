"""Tile IR -> Triton source: one lowering rule per IR instruction and statement.

    source = lower(program, options)        # a Python module defining `@triton.jit def <name>_kernel(...)`

Kernel signature: one pointer `<tensor>_ptr` per tensor parameter (its elements in the canonical host form
of `runtime.host_element`), then the scalar parameters by name. Tiles keep the names the IR printer gives
them (`%acc` -> `acc`, `%3` -> `t3`), and every statement is preceded by its IR line as a comment.
Representation of values: numerics.py. Memory access: memory.py.
"""

from __future__ import annotations

import keyword
import linecache
from collections.abc import Callable
from typing import Any

import sympy

from lowbit.codegen.backend import BackendError
from lowbit.codegen.triton import numerics as nx
from lowbit.dtypes import float32
from lowbit.ir import instructions as I
from lowbit.ir.layout.symbolic import SourcePrinter
from lowbit.ir.printer import _Namer, stmt_lines
from lowbit.ir.program import Program
from lowbit.ir.statements import STATEMENTS, Assign, For, If, Let, ScalarLoad, Stmt, walk
from lowbit.ir.values import Tile

CODEGEN_VERSION = "2"
# inbounds: names of the program's size symbols (e.g. ("N", "K")) along which the caller guarantees no tile
#   crosses the tensor's end (every extent divisible by its tile); a mask term `i < extent` whose extent is
#   built from these symbols alone is left out (the per-element compares and selects of a packed tile's codes
#   cost as much ALU work as their decode). lowbit.ops passes it for divisible shapes (`ops.linear`).
# magic_cast: an integer code of <= 10 bits becomes fp16 by placing it in the mantissa of 1024.0 (an add, a
#   bitcast and an fp16 subtract, exact) instead of a int->fp16 conversion (a quarter-rate instruction on sm_90).
# codes_last: a packed tile whose words run along a leading axis (int4 codes along K of a [BK, BN] tile) is
#   split with that axis permuted last, by a tree of tl.join (`memory._load_words`). Fewer instructions (the
#   8192² GEMV's sm_90 PTX 511 against 778: bfe.s32, f16x2 math, 16-byte shared stores), but measured on an
#   H200 (session 30, 8192², streamed): GEMV 63.8 against 42.1 us, GEMM M = 256 136.8 against 121.1 us, W4A8
#   M = 4096 1673 against 1672; only the 64-row GEMM gains (57.1 against 70.9 us), so off except there
#   (`kernels.spaces.gpu_default`).
OPTIONS = {
    "num_warps": 4,
    "num_stages": 2,
    "allow_tf32": False,
    "inbounds": (),
    "magic_cast": True,
    "codes_last": False,
}


def check_options(options: dict[str, Any]) -> dict[str, Any]:
    unknown = sorted(set(options) - set(OPTIONS))
    if unknown:
        raise BackendError(f"unknown triton backend option(s) {unknown}; the options are {sorted(OPTIONS)}")
    return {**OPTIONS, **options}


# ---- scalar expressions -----------------------------------------------------------------------------


class TritonPrinter(SourcePrinter):
    """Index expressions as Triton source: `cdiv` -> `tl.cdiv`, `min`/`max` -> `tl.minimum`/`tl.maximum`."""

    def _print_ceiling(self, expr: sympy.ceiling) -> str:
        num, den = self._fraction(expr.args[0])
        return self._print(num) if den == 1 else f"tl.cdiv({self._print(num)}, {self._print(den)})"

    def _print_floor(self, expr: sympy.floor) -> str:
        num, den = self._fraction(expr.args[0])
        return self._print(num) if den == 1 else f"{self._operand(num)} // {self._divisor(den)}"

    def _nested(self, fn: str, args: tuple[Any, ...]) -> str:
        out = self._print(args[0])
        for a in args[1:]:
            out = f"{fn}({out}, {self._print(a)})"
        return out

    def _print_Min(self, expr: sympy.Min) -> str:
        return self._nested("tl.minimum", expr.args)

    def _print_Max(self, expr: sympy.Max) -> str:
        return self._nested("tl.maximum", expr.args)


_PRINTER = TritonPrinter()


def expr(e: Any) -> str:
    if isinstance(e, bool) or e is sympy.true or e is sympy.false:
        return "True" if bool(e) else "False"
    if isinstance(e, int):
        return str(e)
    return _PRINTER.doprint(sympy.sympify(e))


def cond(c: Any) -> str:
    """A uniform `if` condition (comparisons joined with & | ~ on scalar tl tensors)."""
    if isinstance(c, (sympy.And, sympy.Or)):
        op = " & " if isinstance(c, sympy.And) else " | "
        return op.join(f"({cond(a)})" for a in c.args)
    if isinstance(c, sympy.Not):
        return f"~({cond(c.args[0])})"
    if isinstance(c, sympy.core.relational.Relational):
        return f"{expr(c.lhs)} {c.rel_op} {expr(c.rhs)}"
    return expr(c)


def shape_tuple(shape: tuple[int, ...]) -> str:
    return "(" + ", ".join(map(str, shape)) + ("," if len(shape) == 1 else "") + ")"


# ---- the emitter ------------------------------------------------------------------------------------


class Emitter:
    """Accumulates the kernel body: unique names, indentation, and the tile -> name map."""

    def __init__(self, program: Program, options: dict[str, Any]):
        self.program, self.options = program, options
        self.lines: list[str] = []
        self.indent = "    "
        self.ir_names = _Namer()  # the IR printer's names, for the comments
        self.names: dict[int, str] = {}
        self.used: set[str] = {"tl", "triton", "INF", "NAN", "range", "min", "max", "float", "int"}
        self.used |= {name for name, _ in COMBINE_HELPERS.values()}
        self.helpers: set[str] = set()  # ops of COMBINE_HELPERS the kernel reduces with (defined before it)
        self.used |= {p.name for p in program.params} | {f"{p.name}_ptr" for p in program.tensor_params}
        self.used |= {str(s) for s in program.program_ids}
        self.used |= {str(s.var) for s in walk(program.body) if isinstance(s, (For, ScalarLoad))}
        self.loops: dict[sympy.Symbol, tuple[Any, Any]] = {}  # the enclosing loops' (start, step) by variable

    def fresh(self, base: str) -> str:
        base = base if base.isidentifier() and not keyword.iskeyword(base) else f"t_{base}"
        name, n = base, 1
        while name in self.used:
            name, n = f"{base}_{n}", n + 1
        self.used.add(name)
        return name

    def let(self, base: str, code: str) -> str:
        """Emit `name = code`; `base` is used as is when it is a tile's own name (its defining statement)."""
        name = base if base in self.names.values() else self.fresh(base)
        self.emit(f"{name} = {code}")
        return name

    def emit(self, line: str) -> None:
        self.lines.append(self.indent + line)

    def tile(self, t: Tile) -> str:
        """The Triton name of tile `t` (assigned at its definition)."""
        if id(t) not in self.names:
            ir = self.ir_names(t)[1:]
            self.names[id(t)] = self.fresh(ir if ir.isidentifier() else f"t{ir}")
        return self.names[id(t)]

    def comment(self, stmt: Stmt) -> None:
        self.emit("# " + stmt_lines(stmt, self.ir_names, "", False)[0].rstrip(" {"))

    def body(self, stmts: tuple[Stmt, ...]) -> None:
        for s in stmts:
            lower_node(self, s)


Rule = Callable[..., None]
RULES: dict[type, Rule] = {}


def rule(cls: type) -> Callable[[Rule], Rule]:
    def register(fn: Rule) -> Rule:
        RULES[cls] = fn
        return fn

    return register


class LoweringError(BackendError):
    """A statement the triton backend cannot lower, reported at the user's source line (as `DSLError` is):
    `file:line: op: why` and the line itself, then the statement's IR."""

    def __init__(self, message: str, stmt: Stmt, ir_line: str, kernel: str):
        loc, what = stmt.location, stmt.inst.opname if isinstance(stmt, Let) else type(stmt).__name__.lower()
        file, _, line = loc.rpartition(":")
        src = linecache.getline(file, int(line)).strip() if line.isdigit() else ""
        where = f"{loc}: {what}" if loc else f"{what} (no source line: a statement the passes made)"
        text = (
            f"{where}: {message}" + (f"\n    {src}" if src else "") + f"\n    IR of kernel {kernel}: {ir_line.strip()}"
        )
        super().__init__(text)
        self.loc = loc


def lower_node(em: Emitter, node: Any, out: str = "") -> None:
    fn = RULES.get(type(node))
    if fn is None:
        raise BackendError(f"the triton backend has no lowering rule for {type(node).__name__}; add one in {__name__}")
    if out:
        fn(em, node, out)
        return
    try:
        fn(em, node)
    except LoweringError:
        raise  # a statement inside this one (a loop's or branch's body), located already
    except BackendError as e:
        ir_line = stmt_lines(node, em.ir_names, "", False)[0].rstrip(" {")
        raise LoweringError(str(e), node, ir_line, em.program.name) from None


def _pow2(n: int) -> bool:
    return n >= 1 and n & (n - 1) == 0


# ---- statements -------------------------------------------------------------------------------------


@rule(Let)
def _let(em: Emitter, s: Let) -> None:
    em.comment(s)
    bad = [n for n in s.tile.shape if not _pow2(n)]
    if bad:
        raise BackendError(
            f"the tile it makes has shape {list(s.tile.shape)}: Triton tiles need power-of-two extents "
            f"({', '.join(map(str, bad))} is not); choose tile sizes (or group sizes) that are powers of two"
        )
    lower_node(em, s.inst, em.tile(s.tile))


@rule(Assign)
def _assign(em: Emitter, s: Assign) -> None:
    em.comment(s)
    em.emit(f"{em.tile(s.dst)} = {em.tile(s.src)}")


@rule(For)
def _for(em: Emitter, s: For) -> None:
    em.comment(s)
    em.used.add(str(s.var))
    em.emit(f"for {s.var} in range({expr(s.start)}, {expr(s.stop)}, {expr(s.step)}):")
    outer, em.indent = em.indent, em.indent + "    "
    em.loops[s.var] = (s.start, s.step)
    em.body(s.body) if s.body else em.emit("pass")
    del em.loops[s.var]
    em.indent = outer


@rule(If)
def _if(em: Emitter, s: If) -> None:
    em.comment(s)
    em.emit(f"if {cond(s.cond)}:")
    outer, em.indent = em.indent, em.indent + "    "
    em.body(s.then_body) if s.then_body else em.emit("pass")
    em.indent = outer
    if s.else_body:
        em.emit("else:")
        em.indent = outer + "    "
        em.body(s.else_body)
        em.indent = outer


# ---- instructions (memory access: memory.py) --------------------------------------------------------


@rule(I.Arange)
def _arange(em: Emitter, inst: I.Arange, out: str) -> None:
    em.emit(f"{out} = tl.arange({inst.start}, {inst.stop})")


@rule(I.Full)
def _full(em: Emitter, inst: I.Full, out: str) -> None:
    from lowbit.codegen.reference import to_values

    dt, shape = inst.dtype, shape_tuple(inst.shape)
    value = sympy.sympify(inst.value)
    if value.is_number:
        import numpy as np

        v = to_values(dt, np.array(float(value) if dt.is_float else int(value)))
        em.emit(f"{out} = tl.full({shape}, {nx.const_value(dt, v.item())}, {nx.holder(dt)})")
        return
    kind = "tl.float32" if dt.is_float else nx.holder(dt) if not dt.is_bool else "tl.int32"
    raw = em.let(f"{out}_raw", f"tl.full({shape}, {expr(value)}, {kind})")
    if dt == float32:
        em.emit(f"{out} = {raw}")
    else:
        nx.round_to(em, dt, raw, out)


def _f32(em: Emitter, t: Tile) -> str:
    name = em.tile(t)
    return name if nx.holder(t.dtype) == "tl.float32" else f"{name}.to(tl.float32)"


@rule(I.Dot)
def _dot(em: Emitter, inst: I.Dot, out: str) -> None:
    dt, acc = inst.a.dtype, inst.acc_dtype
    a, b = em.tile(inst.a), em.tile(inst.b)
    if dt.is_integer:
        if dt.bits != 8 or not dt.is_signed or not acc.is_integer:
            raise BackendError(
                f"dot on {dt.name} tiles accumulating in {acc.name}: the triton backend supports integer dots "
                f"only as int8 x int8 -> int32; cast the operands to int8 or float16"
            )
        c = "" if inst.c is None else f", {em.tile(inst.c)}.to(tl.int32)"
        # out_dtype explicit: Triton 3.6 defaults it to float32 and rejects an int32 accumulator
        raw = em.let(f"{out}_raw", f"tl.dot({a}.to(tl.int8), {b}.to(tl.int8){c}, out_dtype=tl.int32)")
        em.emit(f"{out} = {nx.wrap_int(acc, f'{raw}.to({nx.holder(acc)})')}")
        return
    if not acc.is_float:
        raise BackendError(f"dot on {dt.name} tiles accumulating in {acc.name}: use a float accumulator")
    precision = ""
    if nx.holder(dt) == "tl.float32":  # fp32 and emulated formats: exact products unless tf32 is allowed
        precision = ', input_precision="tf32"' if em.options["allow_tf32"] else ', input_precision="ieee"'
    c = "" if inst.c is None else f", {_f32(em, inst.c)}"
    raw = f"tl.dot({a}, {b}{c}{precision})"
    if acc == float32:
        em.emit(f"{out} = {raw}")
    else:
        nx.round_float(em, acc, em.let(f"{out}_f32", raw), out)


@rule(I.Cast)
def _cast(em: Emitter, inst: I.Cast, out: str) -> None:
    src, dst, x = inst.x.dtype, inst.dtype, em.tile(inst.x)
    if dst.is_bool:
        em.emit(f"{out} = {x} != 0")
    elif dst.is_float:
        if src == dst:
            em.emit(f"{out} = {x}")
        elif dst.bits == 16 and nx.is_native_float(dst) and src.is_integer:
            if em.options["magic_cast"] and src.bits <= 10:
                # v + bias in [1024, 2048): its fp16 bits are 0x6400 + (v + bias - 1024); minus bias is v, exactly
                bias = 1024 + (1 << (src.bits - 1) if src.is_signed else 0)
                bits = f"({x}.to(tl.int32) + {0x6400 + bias - 1024}).to(tl.int16)"
                em.emit(f"{out} = {bits}.to(tl.float16, bitcast=True) - {float(bias)}")
            else:
                em.emit(f"{out} = {x}.to(tl.float16)")
        else:
            nx.round_float(em, dst, _f32(em, inst.x), out)
    elif src.is_float:  # truncate toward zero, saturate, NaN -> 0
        lo, hi = float(dst.min), float(dst.max)
        hi_f = struct_f32_below(hi)
        f = em.let(f"{out}_f", f"{x}.to(tl.float32)")
        clamped = f"tl.minimum(tl.maximum({f}, {nx.float_literal(lo)}), {nx.float_literal(hi_f)})"
        t = em.let(f"{out}_t", f"tl.where({f} != {f}, 0.0, {clamped}).to({nx.holder(dst)})")
        em.emit(f"{out} = tl.where({f} >= {nx.float_literal(hi + 1)}, {int(hi)}, {t})" if hi_f < hi else f"{out} = {t}")
    else:
        em.emit(f"{out} = {nx.wrap_int(dst, f'{x}.to({nx.holder(dst)})')}")


def struct_f32_below(x: float) -> float:
    """The largest fp32 value <= x (x a positive integer bound of an integer type)."""
    import numpy as np

    f = np.float32(x)
    return float(f) if float(f) <= x else float(np.nextafter(f, np.float32(0)))


@rule(I.View)
def _view(em: Emitter, inst: I.View, out: str) -> None:
    src, dst = inst.x.dtype, inst.dtype
    code = nx.code_of(em, src, em.tile(inst.x), f"{out}_code")
    rank = len(inst.x.shape)
    if src.bits > dst.bits:  # each wide code -> r narrow codes, lowest bits first
        r = src.bits // dst.bits
        _need_pow2(r, inst)
        shifts = f"tl.arange(0, {r}) * {dst.bits}"
        parts = em.let(f"{out}_parts", f"(tl.expand_dims({code}, {rank}) >> {shifts}) & {hex((1 << dst.bits) - 1)}")
        code = em.let(f"{out}_codes", f"tl.reshape({parts}, {shape_tuple(inst.result_type().shape)})")
    elif src.bits < dst.bits:  # r narrow codes -> one wide code (disjoint bits: the sum is the or)
        r = dst.bits // src.bits
        _need_pow2(r, inst)
        grouped = (*inst.x.shape[:-1], inst.x.shape[-1] // r, r)
        parts = em.let(f"{out}_parts", f"tl.reshape({code}, {shape_tuple(grouped)}).to({nx.code_holder(dst)})")
        code = em.let(f"{out}_codes", f"tl.sum({parts} << (tl.arange(0, {r}) * {src.bits}), axis={rank})")
    nx.value_of(em, dst, code, out)


def _need_pow2(r: int, inst: I.Inst) -> None:
    if not _pow2(r):
        raise BackendError(f"a ratio of {r} codes per word is not a power of two (Triton aranges)")


@rule(I.Dequantize)
def _dequantize(em: Emitter, inst: I.Dequantize, out: str) -> None:
    shape, axis, g = inst.codes.shape, inst.axis, inst.group_size

    def spread(t: Tile, base: str) -> str:  # [.., groups, ..] -> [.., groups * g, ..] (each row repeated g times)
        x = _f32(em, t)
        if g == 1:
            return x
        groups = t.shape[axis]
        if groups == 1:
            return em.let(base, f"tl.broadcast_to({x}, {shape_tuple(shape)})")
        expanded = (*t.shape[: axis + 1], g, *t.shape[axis + 1 :])
        rep = f"tl.broadcast_to(tl.expand_dims({x}, {axis + 1}), {shape_tuple(expanded)})"
        return em.let(base, f"tl.reshape({rep}, {shape_tuple(shape)})")

    q = _f32(em, inst.codes)
    s = spread(inst.scales, f"{out}_s")
    if inst.zero_mode == "none":
        value = f"{q} * {s}"
    else:
        assert inst.zeros is not None
        z = spread(inst.zeros, f"{out}_z")
        value = f"({q} - {z}) * {s}" if inst.zero_mode == "post" else f"tl.fma({q}, {s}, -{z})"
    nx.round_float(em, inst.dtype, em.let(f"{out}_f32", value), out)


_FLOAT_UNARY = {
    "neg": "-{x}",
    "abs": "tl.abs({x})",
    "exp": "tl.exp({x})",
    "exp2": "tl.exp2({x})",
    "log": "tl.log({x})",
    "log2": "tl.log2({x})",
    "sqrt": "tl.sqrt_rn({x})",
    "rsqrt": "tl.div_rn(1.0, tl.sqrt_rn({x}))",
    "sin": "tl.sin({x})",
    "cos": "tl.cos({x})",
    # tanh from exp (no tanh in tl core): sign(x) * (1 - e) / (1 + e), e = exp(-2|x|)
    "tanh": "tl.where({x} < 0, -1.0, 1.0) * tl.div_rn(1.0 - tl.exp(-2.0 * tl.abs({x})), "
    "1.0 + tl.exp(-2.0 * tl.abs({x})))",
    "sigmoid": "tl.div_rn(1.0, 1.0 + tl.exp(-{x}))",
    "floor": "tl.floor({x})",
    "ceil": "tl.ceil({x})",
}


@rule(I.Unary)
def _unary(em: Emitter, inst: I.Unary, out: str) -> None:
    dt, x = inst.x.dtype, em.tile(inst.x)
    if dt.is_bool:
        em.emit(f"{out} = {x} == 0" if inst.op == "not" else f"{out} = {x}")
    elif dt.is_float:
        nx.round_float(em, dt, em.let(f"{out}_f32", _FLOAT_UNARY[inst.op].format(x=_f32(em, inst.x))), out)
    else:
        op = {"neg": "-{x}", "abs": "tl.abs({x})", "not": "~{x}"}[inst.op]
        em.emit(f"{out} = {nx.wrap_int(dt, op.format(x=x))}")


_BOOL_BINARY = {"and": "&", "or": "|", "xor": "^"}
_COMPARE = {"eq": "==", "ne": "!=", "lt": "<", "le": "<=", "gt": ">", "ge": ">="}
_FLOAT_BINARY = {
    "add": "{a} + {b}",
    "sub": "{a} - {b}",
    "mul": "{a} * {b}",
    "div": "tl.div_rn({a}, {b})",
    "max": "tl.maximum({a}, {b}, propagate_nan=tl.PropagateNan.ALL)",
    "min": "tl.minimum({a}, {b}, propagate_nan=tl.PropagateNan.ALL)",
}
_INT_BINARY = {
    "add": "{a} + {b}",
    "sub": "{a} - {b}",
    "mul": "{a} * {b}",
    "max": "tl.maximum({a}, {b})",
    "min": "tl.minimum({a}, {b})",
    "and": "{a} & {b}",
    "or": "{a} | {b}",
    "xor": "{a} ^ {b}",
}


@rule(I.Binary)
def _binary(em: Emitter, inst: I.Binary, out: str) -> None:
    dt, op, a, b = inst.a.dtype, inst.op, em.tile(inst.a), em.tile(inst.b)
    if op in _COMPARE:
        em.emit(f"{out} = {a} {_COMPARE[op]} {b}")
    elif dt.is_bool:
        em.emit(f"{out} = {a} {_BOOL_BINARY[op]} {b}")
    elif dt.is_float:
        if op not in _FLOAT_BINARY:
            raise BackendError(f"{op} on {dt.name} tiles is not an arithmetic float op")
        value = _FLOAT_BINARY[op].format(a=_f32(em, inst.a), b=_f32(em, inst.b))
        if dt == float32:
            em.emit(f"{out} = {value}")
        else:
            nx.round_float(em, dt, em.let(f"{out}_f32", value), out)
    elif op in ("floordiv", "mod", "div"):
        # floor semantics whatever `//` does on negatives: fix q when the remainder's sign differs from b's
        q = em.let(f"{out}_q", f"{a} // {b}")
        r = em.let(f"{out}_r", f"{a} - {q} * {b}")
        fix = em.let(f"{out}_fix", f"({r} != 0) & (({r} < 0) != ({b} < 0))")
        value = f"tl.where({fix}, {q} - 1, {q})" if op != "mod" else f"tl.where({fix}, {r} + {b}, {r})"
        em.emit(f"{out} = {nx.wrap_int(dt, value)}")
    elif op in ("shl", "shr"):
        width = nx.holder_bits(dt)
        n = f"tl.minimum(tl.maximum({b}, 0), {width - 1})"
        if op == "shl":
            value = f"tl.where({b} >= {dt.bits}, 0, {a} << {n})"
        else:
            value = f"tl.where({b} >= {dt.bits}, tl.where({a} < 0, -1, 0), {a} >> {n})"
        em.emit(f"{out} = {nx.wrap_int(dt, value)}")
    else:
        em.emit(f"{out} = {nx.wrap_int(dt, _INT_BINARY[op].format(a=a, b=b))}")


@rule(I.Where)
def _where(em: Emitter, inst: I.Where, out: str) -> None:
    em.emit(f"{out} = tl.where({em.tile(inst.cond)}, {em.tile(inst.a)}, {em.tile(inst.b)})")


# float max / min reductions combine with NaN propagation, as the reference's np.max does: tl.max / tl.min
# combine with tl.maximum's default (arith.maxnumf, which drops a NaN; the interpreter uses np.nanmax). One
# `max.NaN.f32` per step on sm_90 where tl.max has one `max.f32` (the interpreter calls the combine per element).
COMBINE_HELPERS = {
    "max": ("max_propagate_nan", "tl.maximum(a, b, propagate_nan=tl.PropagateNan.ALL)"),
    "min": ("min_propagate_nan", "tl.minimum(a, b, propagate_nan=tl.PropagateNan.ALL)"),
}


@rule(I.Reduce)
def _reduce(em: Emitter, inst: I.Reduce, out: str) -> None:
    dt, x = inst.x.dtype, em.tile(inst.x)
    args = f"axis={inst.axis}, keep_dims={inst.keepdims}"
    if dt.is_float and inst.op in COMBINE_HELPERS:
        combine = COMBINE_HELPERS[inst.op][0]
        em.helpers.add(inst.op)
        em.emit(f"{out} = tl.reduce({x}, {inst.axis}, {combine}, keep_dims={inst.keepdims})")
        return
    if inst.op == "sum":
        if dt.is_float:
            raw = em.let(f"{out}_f32", f"tl.sum({_f32(em, inst.x)}, {args})")
            nx.round_float(em, dt, raw, out) if dt != float32 else em.emit(f"{out} = {raw}")
        else:
            operand = f"{x}.to(tl.int32)" if dt.is_bool else x
            em.emit(f"{out} = {nx.wrap_int(dt, f'tl.sum({operand}, {args})')}" + (" != 0" if dt.is_bool else ""))
        return
    operand = f"{x}.to(tl.int32)" if dt.is_bool else x
    em.emit(f"{out} = tl.{inst.op}({operand}, {args})" + (" != 0" if dt.is_bool else ""))


@rule(I.Broadcast)
def _broadcast(em: Emitter, inst: I.Broadcast, out: str) -> None:
    em.emit(f"{out} = tl.broadcast_to({em.tile(inst.x)}, {shape_tuple(inst.shape)})")


@rule(I.Reshape)
def _reshape(em: Emitter, inst: I.Reshape, out: str) -> None:
    em.emit(f"{out} = tl.reshape({em.tile(inst.x)}, {shape_tuple(inst.shape)})")


@rule(I.Transpose)
def _transpose(em: Emitter, inst: I.Transpose, out: str) -> None:
    em.emit(f"{out} = tl.permute({em.tile(inst.x)}, {shape_tuple(inst.perm)})")


# memory.py registers Load and Store
from lowbit.codegen.triton import memory as _memory  # noqa: E402, F401

_MISSING = [c.__name__ for c in (*I.INSTRUCTIONS, *STATEMENTS) if c not in RULES]
assert not _MISSING, f"the triton backend has no lowering rule for {_MISSING}"


# ---- the module -------------------------------------------------------------------------------------


def kernel_name(program: Program) -> str:
    base = "".join(c if c.isalnum() or c == "_" else "_" for c in program.name) or "kernel"
    return f"{base}_kernel"


def lower(program: Program, options: dict[str, Any] | None = None) -> str:
    """Triton source of `program` (a module with one `@triton.jit` kernel, see the module docstring)."""
    em = Emitter(program, check_options(dict(options or {})))
    for i, pid in enumerate(program.program_ids):
        em.emit(f"{pid} = tl.program_id({i})")
    em.body(program.body)
    params = [f"{p.name}_ptr" for p in program.tensor_params] + [p.name for p in program.scalar_params]
    header = [
        f"# generated by lowbit.codegen.triton (codegen v{CODEGEN_VERSION}) from kernel {program.name}",
        "import triton",
        "import triton.language as tl",
        "",
        'INF = tl.constexpr(float("inf"))',
        "",
        "",
    ]
    for op in sorted(em.helpers):
        name, body = COMBINE_HELPERS[op]
        header += ["@triton.jit", f"def {name}(a, b):", f"    return {body}", "", ""]
    header += ["@triton.jit", f"def {kernel_name(program)}({', '.join(params)}):"]
    return "\n".join(header + em.lines) + "\n"
