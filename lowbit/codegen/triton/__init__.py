"""The Triton backend: tile IR -> readable Triton source, run natively on CUDA or in the Triton interpreter.

    kernel = compile_program(program, "triton", {"num_warps": 4})
    kernel(args)                 # host arrays by parameter name; outputs written back
    print(kernel.source)         # the generated module
    compile_sm90(kernel)         # {"ttir": ..., "ptx": ..., "cubin": ...} without a GPU (lowbit.codegen.triton.aot)

Files: lower.py (rules for statements and instructions), memory.py (Load/Store), numerics.py (value
representation, float formats by bit manipulation), runtime.py (module cache, launch), arguments.py (the
checks of tensor arguments), aot.py (sm_90).
"""

from lowbit.codegen.backend import register_backend
from lowbit.codegen.triton.aot import compile_sm90
from lowbit.codegen.triton.lower import OPTIONS, lower
from lowbit.codegen.triton.runtime import INTERPRET, TritonKernel, compile_triton  # picks interpreter or GPU

register_backend("triton", compile_triton)

__all__ = ["INTERPRET", "OPTIONS", "TritonKernel", "compile_sm90", "compile_triton", "lower"]
