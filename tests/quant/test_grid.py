"""IntGrid bounds (derived from bits) and the shared scale guard."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pytest

from lowbit.quant.grid import IntGrid, storage_scale


@pytest.mark.parametrize("bits", range(1, 9))
@pytest.mark.parametrize("signed", [True, False])
def test_grid_bounds_match_twos_complement(bits: int, signed: bool) -> None:
    # oracle: enumerate every bit pattern and read it as two's complement / unsigned
    patterns = np.arange(1 << bits)
    values = np.where(patterns >= 1 << (bits - 1), patterns - (1 << bits), patterns) if signed else patterns
    grid = IntGrid(bits, signed)
    assert (grid.qmin, grid.qmax) == (values.min(), values.max())
    assert grid.steps == (1 << bits) - 1
    assert np.array_equal(grid.codes(), np.sort(values))
    assert grid.codes().dtype == grid.code_dtype


def test_grid_from_dtype_like() -> None:
    @dataclass(frozen=True)
    class FakeDtype:
        bits: int
        is_signed: bool

    assert IntGrid.of(FakeDtype(3, True)) == IntGrid(3, True)
    assert IntGrid.of(5, False) == IntGrid(5, False)


@pytest.mark.parametrize("bits", [0, 9, 4.5])
def test_grid_rejects_bad_bits(bits: object) -> None:
    with pytest.raises(ValueError, match=r"bits .* is not an integer width in \[1, 8\]"):
        IntGrid(bits, True)  # type: ignore[arg-type]


def test_grid_of_needs_signedness() -> None:
    with pytest.raises(ValueError, match="signed is None"):
        IntGrid.of(4)


@pytest.mark.parametrize("dtype", [np.float16, np.float32])
def test_storage_scale_guards(dtype: type) -> None:
    finfo = np.finfo(dtype)
    raw = np.array([0.0, 1e-60, 0.1, 1e300, np.inf])
    s = storage_scale(raw, dtype)
    assert s.dtype == dtype
    assert s[0] == 1  # zero range -> 1
    assert s[1] == finfo.smallest_subnormal  # underflow -> smallest positive
    assert s[2] == dtype(0.1)  # ordinary values are just rounded
    assert s[3] == s[4] == finfo.max  # overflow -> largest finite
    assert np.all(np.isfinite(s)) and np.all(s > 0)


def test_storage_scale_rejects_other_dtypes() -> None:
    with pytest.raises(ValueError, match=r"scale_dtype .* use numpy.float16 or numpy.float32"):
        storage_scale(np.ones(2), np.float64)
