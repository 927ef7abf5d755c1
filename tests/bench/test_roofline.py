"""Roofline arithmetic is exact; the measurements return finite positive numbers (never asserted fast)."""

from __future__ import annotations

import math

import pytest

from lowbit.bench.roofline import (
    BF16X3,
    INT8X2,
    INT8X3,
    Machine,
    layer_bytes,
    linear_flops,
    measure_bandwidth,
    measure_peak_flops,
    roofline_ms,
)


def test_layer_bytes_w4_4096_g128_fp32_scales_u8_zeros():
    # APIS.md C: 8.39 MB weights + 0.52 MB scales + 0.13 MB zeros; plus fp32 x [1, 4096] and y [1, 4096]
    weights, scales, zeros, io = 4096 * 4096 // 2, 4096 * 32 * 4, 4096 * 32, 2 * 4096 * 4
    assert (weights, scales, zeros) == (8388608, 524288, 131072)
    got = layer_bytes(4096, 4096, 1, bits=4, group_size=128, scale_bytes=4, zero_bits=8)
    assert got == weights + scales + zeros + io == 9076736


@pytest.mark.parametrize(
    ("kwargs", "expected"),
    [
        ({"bits": 32, "group_size": None}, 4096 * 4096 * 4),  # dense fp32: no scales
        ({"bits": 16, "group_size": None}, 4096 * 4096 * 2),
        ({"bits": 3, "group_size": 128, "scale_bytes": 2}, 4096 * 4096 * 3 // 8 + 4096 * 32 * 2),  # dense int3
        ({"bits": 3, "group_size": 128, "scale_bytes": 2, "per_word": 10}, 4096 * 410 * 4 + 4096 * 32 * 2),
        ({"bits": 4, "group_size": -1, "scale_bytes": 2, "zero_bits": 4}, 4096 * 4096 // 2 + 4096 * 2 + 2048),
    ],
)
def test_layer_bytes_weight_forms(kwargs, expected):
    assert layer_bytes(4096, 4096, 0, **kwargs) == expected


def test_layer_bytes_counts_activations_and_output():
    base = layer_bytes(256, 512, 0, bits=4, group_size=128, zero_bits=8)
    assert layer_bytes(256, 512, 3, bits=4, group_size=128, zero_bits=8, act_bytes=2, out_bytes=2) == base + (
        3 * 512 * 2 + 3 * 256 * 2
    )


def test_roofline_is_the_slower_of_memory_and_compute():
    # 1e9 bytes at 10 GB/s = 100 ms; 1e9 flops at 100 GFLOP/s = 10 ms
    assert roofline_ms(1e9, 1e9, 10.0, 100.0) == pytest.approx(100.0)
    assert roofline_ms(1e6, 1e12, 10.0, 100.0) == pytest.approx(10_000.0)
    assert linear_flops(2, 3, 5) == 60


def test_machine_peak_falls_back():
    m = Machine("cuda", "gpu", 1, None, 100.0, {"bfloat16": 500.0})
    assert m.peak("float16") == 500.0 and m.peak("float32") == 500.0
    assert "100.0 GB/s" in m.header()


def test_fp32_rows_as_three_bf16_parts_are_bounded_by_a_third_of_the_bf16_peak():
    m = Machine("cpu", "cpu", 2, None, 30.0, {"float32": 350.0, "bfloat16": 2100.0})
    assert m.peak(BF16X3) == 700.0 and m.peak("float32") == 350.0


def test_rows_on_int8_planes_are_bounded_by_that_share_of_the_int8_peak():
    """x16 (16-bit x in two int8 planes) and x24 (fp32 x in three): each product costs two / three int8 ones."""
    from types import SimpleNamespace

    from lowbit.bench.gemm import _runs_x16

    m = Machine("cpu", "cpu", 2, None, 30.0, {"float32": 170.0, "int8": 780.0})
    assert m.peak(INT8X2) == 390.0 and m.peak(INT8X3) == 260.0
    assert Machine("cpu", "cpu", 2, None, 30.0, {"float32": 170.0}).peak(INT8X3) == 170.0  # no int8 peak: fp32's
    qw = SimpleNamespace(_plans={(4, "tvm", "float32", "x16"): object(), ("bound", 1, "float32", False): object()})
    assert _runs_x16(qw, 4) and not _runs_x16(qw, 1)


def test_the_bench_finds_the_amx_bf16_kernel_of_its_row():
    from types import SimpleNamespace

    from lowbit.bench.gemm import _runs_tdpbf16ps

    amx = SimpleNamespace(source='T.call_llvm_intrin("void", "llvm.x86.tdpbf16ps", ...)')
    fma = SimpleNamespace(source="vfmadd")
    qw = SimpleNamespace(_plans={(64, "tvm", "float32"): amx, (16, "tvm", "float32"): fma, "other": amx})
    assert _runs_tdpbf16ps(qw, 64) and not _runs_tdpbf16ps(qw, 16) and not _runs_tdpbf16ps(qw, 256)


def test_measurements_are_finite_and_positive():
    bw = measure_bandwidth("cpu", nbytes=8 * 2**20, repeats=2)
    peak = measure_peak_flops("float32", "cpu", n=128, repeats=2)
    assert math.isfinite(bw) and bw > 0 and math.isfinite(peak) and peak > 0
    int8 = measure_peak_flops("int8", "cpu", n=64, repeats=2)  # torch._int_mm: the a8 rows' bound
    assert math.isfinite(int8) and int8 > 0
    with pytest.raises(ValueError, match="float32"):
        measure_peak_flops("int4", "cpu", n=8)


def test_machine_ceiling_takes_the_better_of_two_measurements():
    a = Machine("cpu", "c", 2, None, 20.0, {"float32": 100.0, "bfloat16": 10.0})
    b = Machine("cpu", "c", 2, None, 25.0, {"float32": 90.0, "bfloat16": 20.0})
    c = a.ceiling(b)
    assert (c.bandwidth_gbs, c.peak_gflops) == (25.0, {"float32": 100.0, "bfloat16": 20.0})
