"""Named passes and the pipeline. Each pass is a pure function Program -> Program that returns its input
object when nothing changed. `LOWBIT_DUMP_IR=dir` writes the IR after every stage that changed it, as
`<kernel>.<hash>.<NN>.<stage>.lbir`: the hash (the first 10 hex digits of the SHA-256 of the input IR's text)
keeps the dumps of two specialisations of one kernel apart, and a run's stages together."""

from __future__ import annotations

import hashlib
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
    prefix = ""  # <kernel>.<hash of the input IR>
    if dump:
        text = str(program)
        prefix = f"{program.name}.{hashlib.sha256(text.encode()).hexdigest()[:10]}"
        _dump(text, Path(dump), f"{prefix}.00.input")
    for i, p in enumerate(pipeline, start=1):
        new = p(program)
        if new is not program:
            verify(new)
            if dump:
                _dump(str(new), Path(dump), f"{prefix}.{i:02d}.{p.__name__}")
        program = new
    return program


def _dump(text: str, directory: Path, stem: str) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    (directory / f"{stem}.lbir").write_text(text)


__all__ = [
    "PIPELINE",
    "Pass",
    "eliminate_dead_code",
    "fuse_dot_accumulate",
    "make_persistent",
    "run_pipeline",
    "simplify_exprs",
]
