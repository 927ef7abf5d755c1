"""Where `lowbit compile`'s time goes: the compile phases, and inside the kernel builds the TVM stages
(lowering to TVMScript, parsing it, `tvm.compile`, LLVM code generation for the JIT or the export).

    python benchmarks/compile/compile_time.py                          # the README's example, fresh caches
    python benchmarks/compile/compile_time.py --recipe my.yaml --set target.max_model_len=512

Each run uses a fresh `LOWBIT_CACHE_DIR` (a temp dir), so every kernel is built; `--kernel-cache 0` builds in
memory only (kernels JIT-compiled, the artifact's libraries exported separately). The stage timers wrap the
library functions in this process only (wall time, so TVM's C++ work is counted where it runs); they add a
few microseconds per call. Compare rows of one machine and one load: the VM is shared.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path
from typing import Any


def _timed(table: dict[str, list[float]], name: str, fn: Any) -> Any:
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        t = time.perf_counter()
        try:
            return fn(*args, **kwargs)
        finally:
            table[name].append(time.perf_counter() - t)

    return wrapper


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--recipe", default="examples/tiny-llama.yaml")
    ap.add_argument("--set", action="append", default=[], help="recipe overrides, as `lowbit compile --set`")
    ap.add_argument("--kernel-cache", default="1", choices=["0", "1"], help="LOWBIT_KERNEL_CACHE for the run")
    args = ap.parse_args(argv)

    tmp = Path(tempfile.mkdtemp(prefix="lowbit-compile-time-"))
    os.environ["LOWBIT_CACHE_DIR"] = str(tmp / "cache")
    os.environ["LOWBIT_KERNEL_CACHE"] = args.kernel_cache

    import tvm

    import lowbit.codegen.tvm.runtime as rt
    from lowbit.compiler import compile_model
    from lowbit.config import load_config

    stages: dict[str, list[float]] = defaultdict(list)
    rt.lower = _timed(stages, "lower (tile IR -> TVMScript)", rt.lower)
    tvm.script.from_source = _timed(stages, "parse (tvm.script.from_source)", tvm.script.from_source)
    tvm.compile = _timed(stages, "tvm.compile (TIR passes, LLVM IR)", tvm.compile)
    rt.load_module = _timed(stages, "load a library", rt.load_module)
    jit = tvm.runtime.Executable.__getitem__
    tvm.runtime.Executable.__getitem__ = _timed(stages, "JIT code generation", jit)
    export = tvm.runtime.Executable.export_library
    tvm.runtime.Executable.export_library = _timed(stages, "export (code generation + link)", export)

    cfg = load_config(args.recipe, list(args.set))
    t = time.perf_counter()
    result = compile_model(cfg, tmp / "artifact", quiet=True)
    total = time.perf_counter() - t
    print(f"# {os.cpu_count()} cores, load average {os.getloadavg()[0]:.1f}; recipe {args.recipe} {args.set or ''}")
    print(f"# LOWBIT_KERNEL_CACHE={args.kernel_cache}, fresh cache {tmp / 'cache'}")
    print(f"compile total {total:7.1f} s")
    for phase in result.report.get("phases", []):
        print(f"  phase {phase['name']:10s} {phase['seconds']:7.1f} s")
    print(f"{'stage':38s} {'calls':>5s} {'total s':>8s} {'ms/call':>8s}")
    for name, times in stages.items():
        print(f"{name:38s} {len(times):5d} {sum(times):8.1f} {1000 * sum(times) / len(times):8.0f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
