"""What a Triton launch demands of its tensor arguments, checked before every launch: the generated code
masks every access by the tensor's declared shape, so a buffer smaller than that shape would be read and
written past its end.

    check = ArgumentCheck(program.name, param)
    check.dtype(host.dtype)        # KernelArgumentError unless the dtype holds the parameter's values as they are
    check.size(numel, scalars)     # KernelArgumentError unless numel is what the shape / layout needs at scalars

Size: a row-major tensor exactly the elements of its shape (the reference interpreter demands the shape
itself; addressing needs only the count, so an array of another shape with as many elements is taken); a
CuTe layout at least its cosize elements and a packed layout at least its `num_words` words (what the
reference demands: a buffer that holds every offset the layout reaches). The sizes are the shape and
layout expressions evaluated at the call's scalar arguments; TVM's buffers are declared with the same ones.

Dtype: the device element form (`memory.host_element`), the same bits in another integer type of that width
(uint32 words, uint16 bfloat16 codes, ml_dtypes' bfloat16 / float8), or, for a float format without a
native NumPy type on the device (bfloat16, fp8, ...), float values (encoded on the way in, decoded back).
Anything else would be converted value by value (float32 into a float16 tensor, int64 into int32): TVM
rejects those, and so does this backend.

The reference's own checks (`reference.Memory`) evaluate every element's offset, O(numel) NumPy work per
call; these are one expression and one comparison per tensor.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import sympy

from lowbit.codegen.reference import KernelArgumentError
from lowbit.codegen.scalar_eval import compile_expr
from lowbit.codegen.triton.memory import host_element
from lowbit.ir.layout import PackedLayout
from lowbit.ir.layout.symbolic import to_source
from lowbit.ir.values import TensorParam


class ArgumentCheck:
    """The size and dtype checks of one tensor parameter (built once per kernel)."""

    def __init__(self, kernel: str, param: TensorParam):
        self.kernel, self.param = kernel, param
        self.element = host_element(param)[0]
        layout = param.layout
        if isinstance(layout, PackedLayout):
            need, self.unit, self.exact = layout.num_words, "words", False
        elif layout is not None:
            need, self.unit, self.exact = layout.cosize, "elements", False
        else:
            need, self.unit, self.exact = sympy.Mul(*param.shape), "elements", True
        self.need = sympy.sympify(need)
        if self.need.free_symbols:
            self._fn, self.names = compile_expr(self.need)
        else:
            self._fn, self.names = (lambda v=int(self.need): v), ()

    def needed(self, scalars: dict[str, Any]) -> int:
        """The size (elements or words) the tensor must have at these scalar arguments."""
        return int(self._fn(*(scalars[n] for n in self.names)))

    def size(self, numel: int, scalars: dict[str, Any]) -> None:
        need = self.needed(scalars)
        if numel == need or (numel > need and not self.exact):
            return
        p = self.param
        at = ", ".join(f"{n}={scalars[n]}" for n in self.names)
        at = f" at {at}" if at else ""
        if isinstance(p.layout, PackedLayout):
            what = f"{p.dtype.name}[{_shape(p)}] in layout {p.layout} needs at least {need} words{at}"
            fix = "pack the codes with that layout (PackedLayout.pack)"
        elif p.layout is not None:
            what = f"its layout {p.layout} reaches {need} elements{at}"
            fix = f"pass a buffer of at least {need} elements"
        else:
            what = f"its shape [{_shape(p)}] needs {need}{at}"
            fix = f"pass an array of {need} elements (shape [{_shape(p)}]{at})"
        scalar_fix = f", or the scalar arguments ({', '.join(self.names)}) that match it" if self.names else ""
        raise KernelArgumentError(
            f"kernel {self.kernel}: argument {p.name} has {numel} {self.unit}, but {what}; {fix}{scalar_fix}"
        )

    def accepts(self, dtype: np.dtype) -> bool:
        want = self.element
        if dtype == want:
            return True
        if dtype.itemsize == want.itemsize and dtype.kind in "iuV" and want.kind in "iu":
            return True  # the same bits (uint32 words, uint16 codes, ml_dtypes bfloat16 / float8)
        return self.param.dtype.is_float and want.kind in "iu" and dtype.kind == "f"  # values of an emulated float

    def dtype(self, dtype: np.dtype) -> None:
        if self.accepts(dtype):
            return
        p, want = self.param, self.element
        if isinstance(p.layout, PackedLayout):
            takes = f"its packed words as {want.name} or uint{want.itemsize * 8}"
            fix = "pass the words PackedLayout.pack returns for it"
        elif p.dtype.is_float and want.kind in "iu":
            takes = f"{p.dtype.name} (ml_dtypes / torch), its codes as {want.name} / uint{want.itemsize * 8}, or floats"
            fix = "convert it to one of those"
        else:
            takes = want.name + (
                f" (or the same bits as another {want.itemsize * 8}-bit int)" if want.kind in "iu" else ""
            )
            fix = f"convert it first (.astype(np.{want.name}) / .to(torch.{want.name}))"
        raise KernelArgumentError(
            f"kernel {self.kernel}: argument {p.name} has dtype {dtype.name}, but the {p.dtype.name} parameter "
            f"takes {takes}; {fix}"
        )


def _shape(p: TensorParam) -> str:
    return ", ".join(to_source(s) for s in p.shape)
