"""TVM backend: tile IR -> TVMScript (lower.py) -> LLVM (CPU) / CUDA modules (runtime.py)."""

from lowbit.codegen.backend import register_backend
from lowbit.codegen.tvm.lower import OPTIONS, LoweredTir, lower
from lowbit.codegen.tvm.runtime import TvmKernel, compile_tvm, cpu_target, load_module

register_backend("tvm", compile_tvm, runs_pipeline=True)  # the kernel cache skips the passes on a hit

__all__ = ["OPTIONS", "LoweredTir", "TvmKernel", "compile_tvm", "cpu_target", "load_module", "lower"]
