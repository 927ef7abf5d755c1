"""The NumPy reference quantizers in one namespace: the numerics every kernel is tested against.

Each concept lives in its own module (grid, affine, groupwise, activation, qoq, gemm, kv); this module
only re-exports them so tests and kernels can `from lowbit.quant import reference as ref`.
"""

from lowbit.quant.activation import dequantize_per_token, quantize_per_token_int8
from lowbit.quant.affine import ZeroConvention, dequantize, expand_groups, quantize, resolve_group_size
from lowbit.quant.gemm import w4a8_gemm_per_channel, w4a8_gemm_per_group
from lowbit.quant.grid import IntGrid, format_scale, storage_scale
from lowbit.quant.groupwise import GroupQuant, quantize_groupwise
from lowbit.quant.kv import KVQuant, dequantize_kv, quantize_kv
from lowbit.quant.qoq import (
    QoQWeight,
    protective_range,
    qoq_level1,
    qoq_level2,
    quantize_qoq,
    quantize_w4a8_per_channel,
)

__all__ = [
    "GroupQuant",
    "IntGrid",
    "KVQuant",
    "QoQWeight",
    "ZeroConvention",
    "dequantize",
    "dequantize_kv",
    "dequantize_per_token",
    "expand_groups",
    "format_scale",
    "protective_range",
    "qoq_level1",
    "qoq_level2",
    "quantize",
    "quantize_groupwise",
    "quantize_kv",
    "quantize_per_token_int8",
    "quantize_qoq",
    "quantize_w4a8_per_channel",
    "resolve_group_size",
    "storage_scale",
    "w4a8_gemm_per_channel",
    "w4a8_gemm_per_group",
]
