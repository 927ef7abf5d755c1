"""Quantization algorithms and their NumPy reference numerics (see README.md in this folder)."""

from lowbit.quant import reference
from lowbit.quant.reference import *  # noqa: F403 — the reference API is the package API
from lowbit.quant.reference import __all__ as _reference_all

__all__ = ["reference", *_reference_all]
