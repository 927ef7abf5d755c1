"""Build lowered TVMScript with TVM (LLVM for the CPU, CUDA when asked), call it, export and reload it.

Targets are JSON dicts (TVM 0.27 rejects target strings); the CPU's `mcpu` comes from
`llvm_get_system_cpu()` because `mcpu=native` silently falls back to generic SSE code. TVM runs one thread
on this kind of VM unless TVM_NUM_THREADS is set, so it is set (to the core count) before TVM starts.
Arguments reach the compiled function as torch CPU tensors (zero-copy through DLPack); buffers are declared
with 4-byte alignment, so views and `torch.from_numpy` arrays are safe to pass.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

import numpy as np

from lowbit.codegen.backend import BackendError
from lowbit.codegen.tvm.lower import check_options, lower
from lowbit.ir.layout import PackedLayout
from lowbit.ir.program import Program

os.environ.setdefault("TVM_NUM_THREADS", str(os.cpu_count() or 1))

import tvm


def cpu_target() -> Any:
    cpu = tvm.target.codegen.llvm_get_system_cpu()
    return tvm.target.Target({"kind": "llvm", "mcpu": cpu, "num-cores": os.cpu_count() or 1})


def cuda_target(arch: str = "sm_90") -> Any:
    return tvm.target.Target({"kind": "cuda", "arch": arch})


class TvmKernel:
    """A program compiled by TVM for the CPU. `source` is the TVMScript it was built from."""

    backend = "tvm"

    def __init__(self, program: Program, options: Mapping[str, Any], target: Any = None):
        self.program = program
        self.options = check_options(options)
        lowered = lower(program, self.options)
        self.source = lowered.source
        self.arg_names = lowered.arg_names
        dump = os.environ.get("LOWBIT_DUMP_TVM")
        if dump:
            os.makedirs(dump, exist_ok=True)
            with open(os.path.join(dump, f"{program.name}.tvm.py"), "w") as f:
                f.write(self.source)
        try:
            func = tvm.script.from_source(self.source)
        except Exception as e:  # a lowering bug: show the generated text with the parser's message
            raise BackendError(f"tvm backend produced TVMScript that does not parse: {e}\n{self.source}") from None
        self.target = target or cpu_target()
        self.module = tvm.IRModule({"main": func})
        self.executable = tvm.compile(self.module, target=self.target)
        self.function = self.executable["main"]

    def export(self, path: str) -> None:
        """Write a shared library (or a .tar of objects) loadable with `load_module`."""
        self.executable.export_library(path)

    def __call__(self, args: Mapping[str, Any]) -> None:

        call_args: list[Any] = []
        copies: list[tuple[Any, Any]] = []
        params = {p.name: p for p in self.program.params}
        for name in self.arg_names:
            if name not in args:
                raise BackendError(f"kernel {self.program.name}: missing argument {name!r}")
            v = args[name]
            p = params[name]
            if not hasattr(p, "layout"):  # scalar
                call_args.append(int(v))
                continue
            t, back = _as_torch(v, isinstance(p.layout, PackedLayout))
            if back is not None:
                copies.append(back)
            call_args.append(t.reshape(-1))
        self.function(*call_args)
        for dst, src in copies:
            np.copyto(dst, src.reshape(dst.shape).view(dst.dtype))


def _as_torch(v: Any, packed: bool) -> tuple[Any, Any]:
    """A contiguous CPU torch tensor for argument `v`, and the NumPy array to copy it back into (if any)."""
    import torch

    if isinstance(v, torch.Tensor):
        if not v.is_contiguous():
            raise BackendError("tvm backend: pass contiguous tensors (call .contiguous())")
        if v.dtype == torch.uint32:
            return v.view(torch.int32), None
        if v.dtype.is_floating_point and v.element_size() == 1:  # fp8 tensors: their codes (storage_type)
            return v.view(torch.uint8), None
        return v, None
    a = np.asarray(v)
    if packed or a.dtype == np.uint32:
        a = a.view(np.int32)
    if a.dtype.kind in "fV" and a.dtype.itemsize == 1:  # ml_dtypes fp8 arrays: their codes (storage_type)
        a = a.view(np.uint8)
    bf16 = a.dtype.name == "bfloat16"  # ml_dtypes: torch cannot wrap it, but shares the bits as int16
    if bf16 or (a.dtype.kind == "u" and a.dtype.itemsize == 2):
        a = a.view(np.int16)
    src = np.ascontiguousarray(a)
    t = torch.from_numpy(src)
    if bf16:
        t = t.view(torch.bfloat16)
    if isinstance(v, np.ndarray) and not np.shares_memory(src, v):
        return t, (v, src)  # a contiguous copy was made: outputs are copied back
    return t, None


def load_module(path: str) -> Any:
    """Reload an exported kernel library (`TvmKernel.export`); call its `["main"]` with torch tensors."""
    return tvm.runtime.load_module(path)


def compile_tvm(program: Program, options: Mapping[str, Any]) -> TvmKernel:
    return TvmKernel(program, options)


__all__ = ["TvmKernel", "compile_tvm", "cpu_target", "cuda_target", "load_module"]
