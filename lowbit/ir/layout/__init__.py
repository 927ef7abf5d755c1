"""Layouts: register layouts (Tilus), memory layouts and swizzles (CuTe), packed sub-byte layouts.

See README.md in this directory for which file holds what.
"""

from .memory import (
    Layout,
    LayoutError,
    coalesce,
    column_major,
    complement,
    composition,
    cosize,
    grid,
    left_inverse,
    logical_divide,
    logical_product,
    make_layout,
    right_inverse,
    row_major,
    size,
    tiled_divide,
    zipped_divide,
)
from .packed import PackedLayout, packed_along
from .register import (
    RegisterLayout,
    canonicalize,
    column_local,
    column_spatial,
    compose,
    local,
    register_layout,
    replicated,
    spatial,
)
from .register_ops import divide, left_divide, permute, reduce, reshape, same_mapping, visualize
from .swizzle import ComposedLayout, Swizzle
from .symbolic import cdiv, index_symbols, size_symbols, to_source

__all__ = [
    "ComposedLayout",
    "Layout",
    "LayoutError",
    "PackedLayout",
    "RegisterLayout",
    "Swizzle",
    "canonicalize",
    "cdiv",
    "coalesce",
    "column_local",
    "column_major",
    "column_spatial",
    "complement",
    "compose",
    "composition",
    "cosize",
    "divide",
    "grid",
    "index_symbols",
    "left_divide",
    "left_inverse",
    "local",
    "logical_divide",
    "logical_product",
    "make_layout",
    "packed_along",
    "permute",
    "reduce",
    "register_layout",
    "replicated",
    "reshape",
    "right_inverse",
    "row_major",
    "same_mapping",
    "size",
    "size_symbols",
    "spatial",
    "tiled_divide",
    "to_source",
    "visualize",
    "zipped_divide",
]
