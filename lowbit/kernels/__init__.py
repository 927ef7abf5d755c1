"""The kernel library, written in the lowbit DSL."""

from lowbit.kernels.quantized_gemm import quantized_gemm

__all__ = ["quantized_gemm"]
