"""Small helpers the kernel launchers (rope.py, norm.py, kv_append.py) share: dtype checks and output buffers."""

from __future__ import annotations

from typing import Any

import numpy as np

ACTIVATIONS = ("float16", "bfloat16", "float32")


def activation_dtype(x: Any, op: str) -> str:
    """x's dtype name (NumPy or torch) if it is an activation dtype, else a ValueError naming `op`."""
    name = str(x.dtype).removeprefix("torch.")
    if name not in ACTIVATIONS:
        raise ValueError(f"{name} tensor: {op} takes float16, bfloat16 or float32")
    return name


def empty_like(x: Any) -> Any:
    """An uninitialised array of x's shape, dtype and kind (torch tensor or NumPy array)."""
    if hasattr(x, "detach"):
        import torch

        return torch.empty_like(x)
    return np.empty_like(x)
