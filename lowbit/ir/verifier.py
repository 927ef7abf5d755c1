"""The verifier: checks a program's typing, scoping and index expressions, and points at the statement.

Rules (each failure becomes a `Diagnostic` naming the statement, its source line and the fix):
- every `Let`'s instruction types (its `result_type()` rule) and the result matches the declared tile type;
- a tile is defined once and used only after its definition, in the same or an enclosing block;
- `Assign` writes a visible tile of the same dtype and shape;
- `Store` writes a tile of the tensor's dtype and rank, with one offset per dimension;
- scalar expressions mention only scalar parameters, block indices and enclosing loop variables;
- offsets, indices, loop bounds, grid extents and tensor dimensions are integer expressions (`//`, not `/`);
- sub-byte tensors carry a packed layout of their bit width.

Tiles are named in messages as the printer names them in the whole program (`print_program`), so a message
and the statement it shows agree, and so do they with the program's text.
"""

from __future__ import annotations

import contextlib
import functools
from dataclasses import dataclass
from typing import Any

import sympy

from lowbit.ir.instructions import IRTypeError, Load
from lowbit.ir.program import Program
from lowbit.ir.statements import Assign, For, If, Let, ScalarLoad, Stmt, Store, tiles_read
from lowbit.ir.types import non_integer_part
from lowbit.ir.values import TensorParam, Tile


@dataclass(frozen=True)
class Diagnostic:
    message: str
    statement: str = ""
    loc: str = ""

    def __str__(self) -> str:
        where = f" (at {self.loc})" if self.loc else ""
        stmt = f"\n    in: {self.statement}" if self.statement else ""
        return f"{self.message}{where}{stmt}"


class VerificationError(ValueError):
    def __init__(self, program_name: str, diagnostics: list[Diagnostic]):
        self.diagnostics = diagnostics
        lines = "\n".join(f"  - {d}" for d in diagnostics)
        super().__init__(f"kernel {program_name} failed verification:\n{lines}")


def loop_text(loop: For) -> str:
    from lowbit.ir.printer import print_stmt

    return f"`{print_stmt(loop).rstrip(' {')}`"


def verify(program: Program) -> Program:
    """Return `program` unchanged if it is well formed; raise VerificationError listing every problem."""
    diagnostics = _Checker(program).run()
    if diagnostics:
        raise VerificationError(program.name, diagnostics)
    return program


class _Checker:
    def __init__(self, program: Program):
        self.program = program
        self.diagnostics: list[Diagnostic] = []
        self.defined: set[int] = set()  # every tile defined so far (to tell "out of scope" from "undefined")
        self.where_defined: dict[int, Stmt] = {}
        self.ended_loops: dict[sympy.Symbol, For] = {}  # loops already left, by variable

    @functools.cached_property
    def namer(self) -> Any:
        """Tile names as `print_program` gives them (made on the first error: it prints the program)."""
        from lowbit.ir.printer import Namer, body_lines

        namer = Namer()
        with contextlib.suppress(Exception):  # a statement it cannot print: later tiles are named on first use
            body_lines(self.program.body, namer, "", False)
        return namer

    def run(self) -> list[Diagnostic]:
        p = self.program
        names = [q.name for q in p.params]
        for n in {n for n in names if names.count(n) > 1}:
            self.error(f"parameter name {n!r} is used twice; rename one")
        scalars = {q.symbol for q in p.scalar_params}
        for t in p.tensor_params:
            self.check_tensor(t, scalars)
        for i, g in enumerate(p.grid):
            self.check_expr(g, scalars, f"grid dimension {i}")
        self.block(p.body, scalars | set(p.program_ids), frozenset())
        return self.diagnostics

    def error(self, message: str, stmt: Stmt | None = None) -> None:
        from lowbit.ir.printer import print_stmt

        text = print_stmt(stmt, self.namer) if stmt is not None else ""
        self.diagnostics.append(Diagnostic(message, text, stmt.location if stmt else ""))

    def name(self, tile: Tile) -> str:
        return self.namer(tile)

    def check_tensor(self, t: TensorParam, scalars: set) -> None:
        for i, s in enumerate(t.shape):
            self.check_expr(s, scalars, f"dimension {i} of tensor {t.name}")
        if t.dtype.is_subbyte:
            bits = getattr(t.layout, "bits", None)
            if not t.is_packed or bits != t.dtype.bits:
                self.error(
                    f"tensor {t.name} holds {t.dtype.name} ({t.dtype.bits} bits) but its layout is {t.layout!r}; "
                    f"sub-byte tensors need a PackedLayout with bits={t.dtype.bits} (e.g. packed_along(shape, "
                    f"{t.dtype.bits}, axis))"
                )

    def check_expr(self, e: object, allowed: set, what: str, stmt: Stmt | None = None, integer: bool = True) -> None:
        if not isinstance(e, sympy.Basic):
            if not isinstance(e, (int, float)):
                self.error(f"{what} is {e!r} of type {type(e).__name__}, expected an integer expression", stmt)
            elif integer and non_integer_part(e) is not None:
                self.error(f"{what} is {e!r}, not an integer; indices are integers (use an int)", stmt)
            return
        unknown = {s for s in e.free_symbols if s not in allowed}
        if unknown:
            names = ", ".join(sorted(map(str, unknown)))
            ended = [
                f"{s} is the variable of the loop at {loop.location or loop_text(loop)}, which has ended"
                for s in sorted(unknown, key=str)
                if (loop := self.ended_loops.get(s)) is not None
            ]
            self.error(
                f"{what} mentions {names}, which is not a scalar parameter, block index, enclosing loop "
                f"variable or loaded scalar here" + (f" ({'; '.join(ended)})" if ended else ""),
                stmt,
            )
        elif integer and (bad := non_integer_part(e)) is not None:
            part = f" ({bad} is not)" if bad != e else ""
            self.error(
                f"{what} is {e}, which is not an integer{part}; index expressions are integers: floor division "
                f"is //, not /",
                stmt,
            )

    def use(self, tile: Tile, visible: frozenset[int], stmt: Stmt) -> None:
        if id(tile) in visible:
            return
        if id(tile) in self.defined:
            src = self.where_defined[id(tile)]
            where = f" at {src.location}" if src.location else ""
            self.error(
                f"tile {self.name(tile)} is used outside the block that defines it{where}; to carry a value "
                f"out of a loop or branch, create it before and update it in place (`acc += ...` or "
                f"`T.assign(acc, value)`)",
                stmt,
            )
        else:
            self.error(f"tile {self.name(tile)} is used before it is defined", stmt)

    def block(self, body: tuple[Stmt, ...], scalars: set, visible: frozenset[int]) -> None:
        for stmt in body:
            for t in tiles_read(stmt):
                self.use(t, visible, stmt)
            if isinstance(stmt, Let):
                self.let(stmt, scalars)
                visible = visible | {id(stmt.tile)}
            elif isinstance(stmt, Assign):
                self.use(stmt.dst, visible, stmt)
                if (stmt.dst.dtype, stmt.dst.shape) != (stmt.src.dtype, stmt.src.shape):
                    self.error(
                        f"assign {stmt.src.type} to {stmt.dst.type}: dtype and shape must match; cast or reshape first",
                        stmt,
                    )
            elif isinstance(stmt, Store):
                self.store(stmt, scalars)
            elif isinstance(stmt, ScalarLoad):
                self.scalar_load(stmt, scalars)
                scalars = scalars | {stmt.var}
            elif isinstance(stmt, For):
                for what, e in (("loop start", stmt.start), ("loop stop", stmt.stop), ("loop step", stmt.step)):
                    self.check_expr(e, scalars, what, stmt)
                if stmt.var in scalars:
                    self.error(f"loop variable {stmt.var} shadows an outer name; rename it", stmt)
                if isinstance(stmt.step, (int, sympy.Integer)) and int(stmt.step) <= 0:
                    self.error(f"loop step {stmt.step} must be positive", stmt)
                self.block(stmt.body, scalars | {stmt.var}, visible)
                self.ended_loops[stmt.var] = stmt
            elif isinstance(stmt, If):
                self.check_expr(stmt.cond, scalars, "branch condition", stmt, integer=False)
                self.block(stmt.then_body, scalars, visible)
                self.block(stmt.else_body, scalars, visible)
            else:
                self.error(f"unknown statement {type(stmt).__name__}", stmt)

    def let(self, stmt: Let, scalars: set) -> None:
        if id(stmt.tile) in self.defined:
            self.error(f"tile {self.name(stmt.tile)} is defined twice; use Assign to update it", stmt)
        self.defined.add(id(stmt.tile))
        self.where_defined[id(stmt.tile)] = stmt
        try:
            rt = stmt.inst.result_type()
        except IRTypeError as e:
            self.error(str(e), stmt)
            return
        declared = stmt.tile.type
        if (rt.dtype, rt.shape) != (declared.dtype, declared.shape):
            self.error(f"the instruction produces {rt} but the tile is declared {declared}", stmt)
        if declared.layout is not None and tuple(declared.layout.shape) != declared.shape:
            self.error(f"tile layout shape {list(declared.layout.shape)} != tile shape {list(declared.shape)}", stmt)
        if isinstance(stmt.inst, Load):
            for i, o in enumerate(stmt.inst.offsets):
                self.check_expr(o, scalars, f"load offset {i}", stmt)

    def scalar_load(self, stmt: ScalarLoad, scalars: set) -> None:
        t = stmt.tensor
        if not t.dtype.is_integer or t.is_packed or t.dtype.bits > 32:
            self.error(
                f"scalar load from {t.name} ({t.dtype.name}): scalars are read from byte-addressed integer tensors "
                f"of up to 32 bits (block tables, lengths, offsets); store them as int32",
                stmt,
            )
        if len(stmt.indices) != t.rank:
            n = len(stmt.indices)
            self.error(f"scalar load from {t.name} (rank {t.rank}) with {n} indices; give one per dimension", stmt)
        if stmt.var in scalars:
            self.error(f"scalar {stmt.var} shadows an outer name; rename it", stmt)
        for i, e in enumerate(stmt.indices):
            self.check_expr(e, scalars, f"scalar load index {i}", stmt)

    def store(self, stmt: Store, scalars: set) -> None:
        t = stmt.tensor
        if stmt.tile.dtype != t.dtype:
            self.error(f"store of a {stmt.tile.dtype.name} tile into {t.name} ({t.dtype.name}); cast it first", stmt)
        if len(stmt.offsets) != t.rank or stmt.tile.type.rank != t.rank:
            self.error(
                f"store into {t.name} (rank {t.rank}) with {len(stmt.offsets)} offsets and a rank-"
                f"{stmt.tile.type.rank} tile; give one offset per dimension and reshape the tile",
                stmt,
            )
        if stmt.mask is not None and (stmt.mask.shape != stmt.tile.shape or stmt.mask.dtype.name != "boolean"):
            self.error(f"store mask must be a boolean tile of shape {list(stmt.tile.shape)}", stmt)
        for i, o in enumerate(stmt.offsets):
            self.check_expr(o, scalars, f"store offset {i}", stmt)
