"""Tensor arguments of a TVM kernel: host arrays and torch tensors turned into the flat torch tensor of the
buffer's element type, with the rules of the Triton backend (`lowbit.codegen.triton.arguments`), checked
before the launch.

    t, write_back = tensor_argument(kernel_name, param, value, output)

The element type (`element`): a packed tensor's words as int32; otherwise TVM's storage type (float16,
bfloat16, float32, ints, bool; 8-bit floats as their codes, uint8). Taken as they are: that dtype, or the
same bits as another integer of its width when the element is an integer or bfloat16 (uint32 words, int16 /
uint16 codes of bfloat16, ml_dtypes bfloat16 / float8). A float format without a native type here (bfloat16,
the 8-bit floats) also takes float values: encoded once (round to nearest even, `lowbit.dtypes.encode`) and,
for a tensor the kernel stores to, decoded back into the caller's array after the launch. Anything else
(float32 for a float16 tensor, int64 for int32) would be converted value by value: `TvmArgumentError`,
which names the argument, the dtype given and taken, and the fix, as Triton's `KernelArgumentError` (the
reference interpreter converts anything). TVM's own message was `TypeError: Mismatched x_1.dtype`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from lowbit.codegen.backend import BackendError
from lowbit.codegen.reference import KernelArgumentError
from lowbit.codegen.tvm.lower import storage_type
from lowbit.dtypes import decode, encode
from lowbit.ir.layout import PackedLayout
from lowbit.ir.values import TensorParam


class TvmArgumentError(BackendError, KernelArgumentError):
    """A tensor argument the kernel cannot take, raised before the launch: a BackendError, and the
    KernelArgumentError of the reference interpreter and the Triton backend."""


def element(p: TensorParam) -> str:
    """The element type (torch / TVM dtype name) of p's buffer."""
    return "int32" if isinstance(p.layout, PackedLayout) else storage_type(p.dtype)


def _raw(dtype: Any) -> bool:
    """Whether a torch dtype is bits that may be viewed as another of its width: integers, bfloat16, float8."""
    import torch

    if dtype == torch.bool:
        return False
    return not dtype.is_floating_point or dtype == torch.bfloat16 or dtype.itemsize == 1


def tensor_argument(kernel: str, p: TensorParam, v: Any, output: bool) -> tuple[Any, Callable[[], None] | None]:
    """(contiguous torch tensor of p's element type holding argument v, the write-back to run after the launch
    or None). A copy (a non-contiguous array, or float values encoded) is written back only for an `output`."""
    import torch

    want = getattr(torch, element(p))
    host: np.ndarray | None = None
    if isinstance(v, torch.Tensor):
        if not v.is_contiguous():
            raise BackendError(f"kernel {kernel}: argument {p.name} is not contiguous; pass contiguous tensors")
        t = v
    else:
        host = np.asarray(v)
        a = host
        if a.dtype.kind == "V" or (a.dtype.kind == "f" and a.dtype.itemsize == 1) or a.dtype.name == "bfloat16":
            a = a.view(f"uint{a.dtype.itemsize * 8}")  # ml_dtypes bfloat16 / float8: their bits
        flat = np.ascontiguousarray(a)
        t = torch.from_numpy(flat)
    copied = host is not None and not np.shares_memory(t.numpy(), host)
    if t.dtype == want:
        pass
    elif t.dtype.itemsize == want.itemsize and _raw(t.dtype) and _raw(want):
        t = t.view(want)  # the same bits
    elif p.dtype.is_float and _raw(want) and t.dtype.is_floating_point:  # values of a float without a native type
        values = (host if host is not None else t.detach().cpu().numpy()).astype(np.float32)
        codes = encode(p.dtype, values)
        t = torch.from_numpy(np.ascontiguousarray(codes)).view(want)
        if not output:
            return t, None
        return t, lambda: _write_values(v, decode(p.dtype, codes_of(t)))
    else:
        given = host.dtype.name if host is not None else str(t.dtype).removeprefix("torch.")
        raise TvmArgumentError(_refusal(kernel, p, given))
    if not (copied and output):
        return t, None
    assert host is not None
    src = t
    return t, lambda: np.copyto(host, src.numpy().reshape(host.shape).view(host.dtype))


def codes_of(t: Any) -> np.ndarray:
    """The codes in a tensor of element type (unsigned, NumPy)."""
    import torch

    bits = t.element_size() * 8
    return t.view(getattr(torch, f"int{bits}")).numpy().view(f"uint{bits}")


def _write_values(v: Any, values: np.ndarray) -> None:
    import torch

    if isinstance(v, torch.Tensor):
        v.copy_(torch.from_numpy(values.reshape(tuple(v.shape))))
    else:
        v[...] = values.reshape(np.shape(v))


def _refusal(kernel: str, p: TensorParam, given: str) -> str:
    want = element(p)
    if isinstance(p.layout, PackedLayout):
        takes, fix = "its packed words as int32 or uint32", "pass the words PackedLayout.pack returns for it"
    elif p.dtype.is_float and want in ("bfloat16", "uint8"):
        bits = 16 if want == "bfloat16" else 8
        takes, fix = f"{p.dtype.name} (ml_dtypes / torch), its codes as {bits}-bit ints, or floats", "convert it"
    else:
        width = want.removeprefix("u").removeprefix("int")
        takes = want + (f" (or the same bits as another {width}-bit int)" if "int" in want else "")
        fix = f"convert it first (.astype(np.{want}) / .to(torch.{want}))"
    where = f"kernel {kernel}: argument {p.name} has dtype {given}"
    return f"{where}, but the {p.dtype.name} parameter takes {takes}; {fix}"
