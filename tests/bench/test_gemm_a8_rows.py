"""`lowbit bench gemm` on the CPU (tvm): lowbit_a8 rows (the decode GEMV with int8 activations) next to the
W4A16 lowbit rows for 4-bit weights at every M (beyond 16 in row tiles, as an int8 prefill), none for other
dtypes; checked against
x @ dequant(W)^T with the activation rounding's bound. Performance is never asserted."""

from __future__ import annotations

import pytest

from lowbit.bench import gemm
from lowbit.bench.roofline import Machine


@pytest.fixture(scope="module")
def report():
    machine = Machine("cpu", "test cpu", 2, None, 10.0, {"float32": 100.0, "bfloat16": 100.0})
    return gemm.run_report((1, 4, 32), ((64, 256),), ("int4", "int3"), 128, ("tvm",), 1, threads=2,
                           machine=machine, flush=False)  # fmt: skip


def test_a8_rows_for_4bit_weights_at_every_m(report):
    a8 = {(r.M, r.dtype) for r in report.rows if r.method == "lowbit_a8"}
    assert a8 == {(1, "int4"), (4, "int4"), (32, "int4")}
    assert all(r.backend == "tvm" for r in report.rows if r.method == "lowbit_a8")


def test_a8_rows_are_checked_with_the_rounding_bound(report):
    for m in (1, 4, 32):
        a8 = next(r for r in report.rows if r.method == "lowbit_a8" and m == r.M)
        w16 = next(r for r in report.rows if r.method == "lowbit" and m == r.M and r.dtype == "int4")
        assert a8.rel_error is not None and a8.rel_error < gemm.A8_TOLERANCE and "MISMATCH" not in a8.note
        assert a8.rel_error > w16.rel_error  # the int8 activations did run: their rounding shows
        assert a8.bytes == w16.bytes and a8.median_ms > 0
    assert not report.mismatches
