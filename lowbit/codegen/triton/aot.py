"""Ahead-of-time compilation of a generated kernel for sm_90 (H100/H200), no GPU needed.

    stages = compile_sm90(kernel_or_program, options)
    # {"source": str, "ttir": str, "ttgir": str, "llir": str, "ptx": str, "cubin": bytes}

This catches what the interpreter accepts but the GPU compiler does not (dot shapes: K >= 16 for fp16,
K >= 32 for int8; unsupported ops). Triton's compiler needs `JITFunction`s, which a process running the
interpreter does not have (the mode is fixed when triton is imported), so in interpreter mode the
compile runs in one long-lived helper process started with TRITON_INTERPRET unset.
"""

from __future__ import annotations

import base64
import json
import os
import subprocess
import sys
import threading
from collections.abc import Mapping
from typing import Any

from lowbit.codegen.backend import BackendError
from lowbit.ir.program import Program

TARGET = ("cuda", 90, 32)

# the helper process: compiles the kernel `name` of the module at `path`; one JSON request per line
_WORKER = r"""
import base64, importlib.util, json, sys
import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource

def compile_one(req):
    spec = importlib.util.spec_from_file_location(req["module"], req["path"])
    mod = importlib.util.module_from_spec(spec)
    sys.modules[req["module"]] = mod
    spec.loader.exec_module(mod)
    attrs = {(i,): [["tt.divisibility", 16]] for i in req.get("aligned", [])}
    src = ASTSource(fn=getattr(mod, req["name"]), signature=req["signature"], constexprs={}, attrs=attrs)
    k = triton.compile(src, target=GPUTarget(*req["target"]), options=req["options"])
    return {n: (base64.b64encode(v).decode() if isinstance(v, bytes) else v) for n, v in k.asm.items()}

for line in sys.stdin:
    req = json.loads(line)
    try:
        out = {"ok": True, "stages": compile_one(req)}
    except Exception as e:
        out = {"ok": False, "error": f"{type(e).__name__}: {e}"}
    sys.stdout.write(json.dumps(out) + "\n")
    sys.stdout.flush()
"""

_lock = threading.Lock()
_worker: subprocess.Popen[str] | None = None


def signature(program: Program) -> dict[str, str]:
    from lowbit.codegen.triton.memory import host_element

    sig = {f"{p.name}_ptr": host_element(p)[1] for p in program.tensor_params}
    for p in program.scalar_params:
        sig[p.name] = ("i64" if p.dtype.bits > 32 else "i32") if p.dtype.is_integer else "fp32"
    return sig


def _ask_worker(request: dict[str, Any]) -> dict[str, Any]:
    global _worker
    with _lock:
        if _worker is None or _worker.poll() is not None:
            env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
            env.setdefault("TRITON_DEFAULT_FP_FUSION", "1")
            _worker = subprocess.Popen(
                [sys.executable, "-c", _WORKER], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env
            )
        assert _worker.stdin is not None and _worker.stdout is not None
        _worker.stdin.write(json.dumps(request) + "\n")
        _worker.stdin.flush()
        line = _worker.stdout.readline()
    if not line:
        raise BackendError("the sm_90 compile helper process died; run with TRITON_INTERPRET unset to see why")
    return json.loads(line)


def aligned_arguments(program: Program) -> list[int]:
    """Indices of the arguments the JIT specializes as divisible by 16 when they are: every pointer (16-byte
    aligned data) and every integer scalar (a size that is a multiple of 16, as in every benchmark shape)."""
    return [i for i, t in enumerate(signature(program).values()) if t.startswith("*") or t.startswith("i")]


def compile_sm90(
    kernel_or_program: Any, options: Mapping[str, Any] | None = None, *, aligned: bool = False
) -> dict[str, Any]:
    """Compile a `TritonKernel` (or a `Program`, lowered with `options`) for sm_90: Triton's stages by name
    (`cubin` as bytes). Raises BackendError with Triton's message when the compile fails. `aligned=True`
    compiles the specialization the JIT picks for aligned pointers and sizes that are multiples of 16
    (vectorized loads need it); the default assumes nothing, the case every launch can fall back to."""
    from lowbit.codegen.triton.lower import kernel_name
    from lowbit.codegen.triton.runtime import INTERPRET, TritonKernel, load_module

    kernel = kernel_or_program
    if isinstance(kernel, Program):
        kernel = TritonKernel(kernel, options or {})
    elif options:
        raise BackendError("compile_sm90: pass options only with a Program; a kernel already has its options")
    if hasattr(kernel, "splits"):  # a SplitKKernel (option split_k): its partial sum must compile too
        compile_sm90(kernel.sum, aligned=aligned)
        kernel = kernel.main
    program = kernel.program
    compile_options = {"num_warps": kernel.options["num_warps"], "num_stages": kernel.options["num_stages"]}
    module, path = load_module(kernel.source)
    name = kernel_name(program)
    if not INTERPRET:
        import triton
        from triton.backends.compiler import GPUTarget
        from triton.compiler import ASTSource

        try:
            attrs = {(i,): [["tt.divisibility", 16]] for i in (aligned_arguments(program) if aligned else [])}
            src = ASTSource(fn=getattr(module, name), signature=signature(program), constexprs={}, attrs=attrs)
            return dict(triton.compile(src, target=GPUTarget(*TARGET), options=compile_options).asm)
        except Exception as e:
            raise BackendError(f"sm_90 compile of {program.name} failed: {type(e).__name__}: {e}") from e
    request = {
        "module": module.__name__,
        "path": str(path),
        "name": name,
        "signature": signature(program),
        "target": list(TARGET),
        "options": compile_options,
        "aligned": aligned_arguments(program) if aligned else [],
    }
    reply = _ask_worker(request)
    if not reply["ok"]:
        raise BackendError(f"sm_90 compile of {program.name} failed: {reply['error']}")
    stages = dict(reply["stages"])
    if "cubin" in stages:
        stages["cubin"] = base64.b64decode(stages["cubin"])
    return stages
