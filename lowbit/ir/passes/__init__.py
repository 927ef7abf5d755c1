"""Named passes and the pipeline. Each pass is a pure function Program -> Program that returns its input
object when nothing changed. `LOWBIT_DUMP_IR=dir` writes the IR after every stage that changed it."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

from lowbit.ir.passes.eliminate_dead_code import eliminate_dead_code
from lowbit.ir.passes.fuse_dot_accumulate import fuse_dot_accumulate
from lowbit.ir.passes.persistent import make_persistent  # on request (T.persistent), not in the pipeline
from lowbit.ir.passes.simplify_exprs import simplify_exprs
from lowbit.ir.program import Program
from lowbit.ir.verifier import verify

Pass = Callable[[Program], Program]

# The pipeline, in order. Verification runs before the first pass and after every pass that changed the IR.
PIPELINE: tuple[Pass, ...] = (
    simplify_exprs,
    eliminate_dead_code,
    fuse_dot_accumulate,
)


def run_pipeline(
    program: Program, pipeline: tuple[Pass, ...] = PIPELINE, dump_dir: str | os.PathLike | None = None
) -> Program:
    dump = dump_dir if dump_dir is not None else os.environ.get("LOWBIT_DUMP_IR")
    verify(program)
    if dump:
        _dump(program, Path(dump), 0, "input")
    for i, p in enumerate(pipeline, start=1):
        new = p(program)
        if new is not program:
            verify(new)
            if dump:
                _dump(new, Path(dump), i, p.__name__)
        program = new
    return program


def _dump(program: Program, directory: Path, index: int, stage: str) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    (directory / f"{program.name}.{index:02d}.{stage}.lbir").write_text(str(program))


__all__ = [
    "PIPELINE",
    "Pass",
    "eliminate_dead_code",
    "fuse_dot_accumulate",
    "make_persistent",
    "run_pipeline",
    "simplify_exprs",
]
