"""Benchmarks and the roofline model: `lowbit bench gemm` (see README.md in this folder)."""

from lowbit.bench.gemm import Report, Row, run, run_report
from lowbit.bench.roofline import (
    Machine,
    layer_bytes,
    linear_flops,
    measure_bandwidth,
    measure_machine,
    measure_peak_flops,
    roofline_ms,
)

__all__ = [
    "Machine",
    "Report",
    "Row",
    "layer_bytes",
    "linear_flops",
    "measure_bandwidth",
    "measure_machine",
    "measure_peak_flops",
    "roofline_ms",
    "run",
    "run_report",
]
