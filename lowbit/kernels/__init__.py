"""The kernel library, written in the lowbit DSL (see README.md)."""

from lowbit.kernels.gemv import quantized_gemv
from lowbit.kernels.gemv_fma import quantized_gemv_fma
from lowbit.kernels.quantized_gemm import quantized_gemm
from lowbit.kernels.w4a8 import w4a8_gemm_per_channel, w4a8_gemm_per_group

__all__ = ["quantized_gemm", "quantized_gemv", "quantized_gemv_fma", "w4a8_gemm_per_channel", "w4a8_gemm_per_group"]
