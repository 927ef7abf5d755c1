"""`@kernel`: turn a Python function into tile IR by tracing it once per set of compile-time constants.

    @T.kernel
    def scale(x: T.Tensor("float32", ("N",)), y: T.Tensor("float32", ("N",)), N: T.int32, B: T.constexpr = 64):
        (pid,) = T.grid(T.cdiv(N, B))
        T.store(y, (pid * B,), T.load(x, (pid * B,), (B,)) * 2.0)

Parameters are annotated with `T.Tensor(dtype, shape, layout=None)` (global tensors), a dtype such as
`T.int32` (runtime scalars) or `T.constexpr` (compile-time constants that specialise the kernel). A tensor's
dtype may name a constexpr parameter (`T.Tensor("wdtype", ...)`); shape entries are ints, parameter names
or expressions over them (`"K // G"`); `layout` is None (row-major), a layout, `T.packed(axis=...)`, or the
name of a constexpr holding one of those.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import sympy

from lowbit.dtypes import DataType, dtype
from lowbit.ir.instructions import Load
from lowbit.ir.layout import packed_along
from lowbit.ir.passes.persistent import make_persistent
from lowbit.ir.program import Program
from lowbit.ir.statements import Let, ScalarLoad, Store, walk
from lowbit.ir.types import non_integer_part
from lowbit.ir.values import ScalarParam, TensorParam
from lowbit.ir.verifier import verify
from lowbit.lang.builder import Builder, DSLError, tracing


class _Constexpr:
    def __repr__(self) -> str:
        return "T.constexpr"


constexpr = _Constexpr()


@dataclass(frozen=True)
class Tensor:
    """Annotation of a global tensor parameter (see the module docstring)."""

    dtype: Any
    shape: tuple[Any, ...]
    layout: Any = None


@dataclass(frozen=True)
class packed:
    """Layout spec: sub-byte elements packed along `axis` into `word_bits`-bit words (`packed_along`)."""

    axis: int = -1
    word_bits: int = 32
    per_word: int | None = None
    dense: bool = False

    def resolve(self, shape: tuple[Any, ...], d: DataType) -> Any:
        axis = self.axis + len(shape) if self.axis < 0 else self.axis
        return packed_along(shape, d.bits, axis, word_bits=self.word_bits, dense=self.dense, per_word=self.per_word)


@dataclass(frozen=True)
class TensorHandle:
    """What a tensor parameter is inside a traced kernel: pass it to T.load / T.store."""

    param: TensorParam

    @property
    def shape(self) -> tuple[sympy.Expr, ...]:
        return self.param.shape

    @property
    def dtype(self) -> DataType:
        return self.param.dtype


def cdiv(a: Any, b: Any) -> Any:
    """Ceiling division for ints and scalar expressions."""
    if isinstance(a, int) and isinstance(b, int):
        return -(-a // b)
    return sympy.ceiling(sympy.sympify(a) / b)


class Kernel:
    """A DSL kernel. `trace(**constants)` gives its IR; `run(backend=..., **args)` executes it."""

    def __init__(self, fn: Callable[..., Any], persistent: bool = False):
        self.fn = fn
        self.persistent = persistent
        self.name = fn.__name__ + ("_persistent" if persistent else "")
        functools.update_wrapper(self, fn)  # type: ignore[arg-type]
        self.signature = inspect.signature(fn)
        try:
            hints = inspect.get_annotations(fn, eval_str=True)
        except Exception:
            hints = dict(fn.__annotations__)
        self.annotations = hints
        for name in self.signature.parameters:
            if name not in hints:
                raise DSLError(
                    f"kernel {self.name}: parameter {name!r} has no annotation; annotate it with "
                    f"T.Tensor(...), a scalar dtype such as T.int32, or T.constexpr",
                    loc=f"{fn.__code__.co_filename}:{fn.__code__.co_firstlineno}",
                )
        self.constexpr_names = tuple(n for n, a in hints.items() if a is constexpr)
        self._cache: dict[tuple, Program] = {}

    def __repr__(self) -> str:
        return f"<lowbit kernel {self.name}>"

    def constants(self, given: dict[str, Any]) -> dict[str, Any]:
        """The full set of compile-time constants: given values, then defaults; errors for missing ones."""
        out: dict[str, Any] = {}
        for name in self.constexpr_names:
            if name in given:
                out[name] = given[name]
            elif self.signature.parameters[name].default is not inspect.Parameter.empty:
                out[name] = self.signature.parameters[name].default
            else:
                raise DSLError(
                    f"kernel {self.name}: compile-time constant {name!r} is missing; pass {name}=...", loc=self._loc
                )
        unknown = set(given) - set(self.constexpr_names)
        if unknown:
            raise DSLError(
                f"kernel {self.name}: {sorted(unknown)} are not T.constexpr parameters "
                f"(constants: {list(self.constexpr_names)})",
                loc=self._loc,
            )
        return out

    @property
    def _loc(self) -> str:
        return f"{self.fn.__code__.co_filename}:{self.fn.__code__.co_firstlineno}"

    def trace(self, **constants: Any) -> Program:
        """The verified IR of this kernel specialised to `constants` (cached)."""
        consts = self.constants(constants)
        key = tuple((k, _hashable(v)) for k, v in sorted(consts.items()))
        if key not in self._cache:
            self._cache[key] = self._trace(consts)
        return self._cache[key]

    def _trace(self, consts: dict[str, Any]) -> Program:
        scalars: dict[str, ScalarParam] = {}
        for name, ann in self.annotations.items():
            if name in self.signature.parameters and isinstance(ann, DataType):
                scalars[name] = ScalarParam(name, ann)
        namespace: dict[str, Any] = {n: p.symbol for n, p in scalars.items()}
        namespace.update(consts)
        namespace["cdiv"] = cdiv
        params: list[ScalarParam | TensorParam] = []
        args: dict[str, Any] = {}
        for name in self.signature.parameters:
            ann = self.annotations[name]
            if ann is constexpr:
                args[name] = consts[name]
            elif isinstance(ann, DataType):
                params.append(scalars[name])
                args[name] = scalars[name].symbol
            elif isinstance(ann, Tensor):
                p = self._tensor_param(name, ann, namespace)
                params.append(p)
                args[name] = TensorHandle(p)
            else:
                raise DSLError(
                    f"kernel {self.name}: parameter {name!r} has annotation {ann!r}; use T.Tensor(...), "
                    f"a dtype such as T.int32, or T.constexpr",
                    loc=self._loc,
                )
        builder = Builder(names={p.name for p in params} | {"pid0", "pid1", "pid2"})
        with tracing(builder):
            self.fn(**args)
        if builder.grid is None:
            raise DSLError(
                f"kernel {self.name} never called T.grid(...); call it first to declare the blocks", loc=self._loc
            )
        used = _tensors_used(builder.blocks[0])
        params = [p for p in params if not isinstance(p, TensorParam) or p.name in used]
        program = Program(
            self.fn.__name__,
            tuple(params),
            builder.grid,
            tuple(builder.blocks[0]),
            tuple((k, _hashable(v)) for k, v in consts.items()),
            self._loc,
        )
        program = verify(program)
        return verify(make_persistent(program)) if self.persistent else program

    def _tensor_param(self, name: str, ann: Tensor, ns: dict[str, Any]) -> TensorParam:
        d = ns.get(ann.dtype, ann.dtype) if isinstance(ann.dtype, str) else ann.dtype
        try:
            d = dtype(d)
        except (ValueError, TypeError) as e:
            raise DSLError(f"kernel {self.name}: dtype of tensor {name!r}: {e}", loc=self._loc) from None
        shape = tuple(self._shape_entry(name, i, s, ns) for i, s in enumerate(ann.shape))
        layout = ns.get(ann.layout, ann.layout) if isinstance(ann.layout, str) else ann.layout
        if isinstance(layout, packed):
            layout = layout.resolve(shape, d)
        elif callable(layout) and not hasattr(layout, "shape"):
            layout = layout(shape, d)
        if layout is None and d.is_subbyte:
            layout = packed().resolve(shape, d)
        return TensorParam(name, d, shape, layout)

    def _shape_entry(self, name: str, i: int, s: Any, ns: dict[str, Any]) -> sympy.Expr:
        text = s
        if isinstance(s, str):
            try:
                s = eval(s, self.fn.__globals__, ns)  # the kernel's parameters and module-level helpers
            except Exception as e:
                raise DSLError(
                    f"kernel {self.name}: shape entry {s!r} of tensor {name!r}: {e}; shape entries are "
                    f"ints, parameter names or expressions over them",
                    loc=self._loc,
                ) from None
        if non_integer_part(s) is not None:
            raise DSLError(
                f"kernel {self.name}: dimension {i} of tensor {name!r} is {s}"
                + (f" ({text!r})" if isinstance(text, str) else "")
                + ", which is not an integer; use // for floor division",
                loc=self._loc,
            )
        return sympy.sympify(s)

    def run(self, backend: str = "reference", options: dict[str, Any] | None = None, **kwargs: Any) -> None:
        """Run the kernel on NumPy arrays or torch tensors (outputs are written in place). Constants and
        arguments are passed by name; integer scalars that equal a tensor dimension may be omitted (they are
        read off the arrays). `backend` is "reference", "triton" or "tvm"; `options` are backend options."""
        from lowbit.codegen.backend import compile_program

        consts = {k: kwargs.pop(k) for k in list(kwargs) if k in self.constexpr_names}
        program = self.trace(**consts)
        compile_program(program, backend, options)(infer_scalars(program, kwargs))


def infer_scalars(program: Program, args: dict[str, Any]) -> dict[str, Any]:
    """Fill in integer scalar parameters that a tensor argument's shape determines (x: [M, K] gives M, K)."""
    args = dict(args)
    for p in program.tensor_params:
        a = args.get(p.name)
        if a is None or p.is_packed or p.layout is not None or not hasattr(a, "shape") or len(a.shape) != p.rank:
            continue
        for expr, extent in zip(p.shape, a.shape):
            if isinstance(expr, sympy.Symbol) and str(expr) not in args:
                args[str(expr)] = int(extent)
    return args


def _tensors_used(body: list) -> set[str]:
    """Tensor parameters a specialisation reads or writes; the others are dropped from its signature
    (e.g. `zeros` when zero_mode is "none")."""
    used = set()
    for stmt in walk(tuple(body)):
        if isinstance(stmt, Store):
            used.add(stmt.tensor.name)
        if isinstance(stmt, Let) and isinstance(stmt.inst, Load):
            used.add(stmt.inst.tensor.name)
        if isinstance(stmt, ScalarLoad):
            used.add(stmt.tensor.name)
    return used


def _hashable(v: Any) -> Any:
    try:
        hash(v)
        return v
    except TypeError:
        return repr(v)


def kernel(fn: Callable[..., Any]) -> Kernel:
    """Decorator: make `fn` a lowbit kernel (see the module docstring)."""
    return Kernel(fn)


def persistent(k: Kernel) -> Kernel:
    """The persistent form of kernel `k` (`lowbit.ir.passes.persistent`): the same constants and arguments
    plus the int32 scalar `BUDGET` >= 1, the number of programs it may occupy (SMs on a GPU). It launches
    `min(BUDGET, tiles)` programs, each looping over tiles `t = pid, pid + P, ...` of `k`'s grid, and writes
    exactly what `k` writes."""
    if k.persistent:
        raise DSLError(f"kernel {k.name} is persistent already; pass the kernel it was made from")
    return Kernel(k.fn, persistent=True)
