"""Python scalars in a kernel: the number a compile-time scalar stands for, and whether a dtype holds it.

The semantic layer's rule (lowbit/lang/README.md): a Python scalar operand takes its tile's dtype, and one
that is not a value of that dtype is a DSLError, never a wrapped or infinite constant.
"""

from __future__ import annotations

import math
import numbers
from typing import Any

import sympy

from lowbit.dtypes import DataType, int32


def number(v: Any) -> int | float | None:
    """The Python number a compile-time scalar stands for; None for a runtime expression (`pid0*16`)."""
    if isinstance(v, numbers.Integral):  # bool and NumPy integers too
        return int(v)
    if isinstance(v, numbers.Real):
        return float(v)
    if isinstance(v, sympy.Basic) and v.is_Number:
        return int(v) if v.is_Integer else float(v)
    return None


def unrepresentable(v: Any, d: DataType) -> str:
    """Why the scalar `v` is not a value of `d` ("" when it is, or when it is only known at run time).
    Floats: within the finite range +-max (rounding to the nearest value is fine), inf and NaN where `d`
    has them. Integers and booleans: an integral value in [min, max]."""
    n = number(v)
    if n is None:
        return ""
    if d.is_float:
        if math.isnan(n):
            return "" if d.has_nan else f"{d.name} has no NaN"
        if math.isinf(n):
            return "" if d.has_inf else f"{d.name} has no infinity"
        return f"{n!r} is outside the range of {d.name} (+-{d.max:g})" if abs(n) > d.max else ""
    if isinstance(n, float) and not n.is_integer():
        return f"{n!r} is not a value of {d.name} (an integer type)"
    return f"{n!r} is outside the range of {d.name} [{d.min}, {d.max}]" if not d.min <= n <= d.max else ""


def holder(v: Any) -> str:
    """A tile type to suggest for holding the scalar `v`."""
    n = number(v)
    return "T.int32" if isinstance(n, int) and not unrepresentable(n, int32) else "T.float32"


# how the user wrote an op, for messages
OP_TEXT = {
    **dict(add="+", sub="-", mul="*", div="/", floordiv="//", mod="%", max="T.maximum", min="T.minimum"),
    **{"and": "&", "or": "|", "xor": "^", "shl": "<<", "shr": ">>"},
    **dict(lt="<", le="<=", gt=">", ge=">=", eq="==", ne="!=", where="T.where", assign="T.assign"),
}
