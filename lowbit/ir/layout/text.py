"""The text form of every layout kind, as the IR printer writes it and the IR parser reads it back.

    (8,64):(64,1)                                   CuTe `Layout`: nested (shape):(stride), leaves `to_source`
    ((8,cdiv(K, 8)),N):((1,8*N),8)                  ... with symbolic extents and strides; `(8,)` is a 1-tuple
    swizzle(3, 4, 3) o (8,64):(64,1)                `ComposedLayout` (CuTe's `Sw<3,4,3> o 0 o (8,64):(64,1)`)
    swizzle(3, 4, 3) o 16 o (8,64):(64,1)           ... with a nonzero offset
    packed(bits=4, word_bits=32, per_word=8, dense=false, shape=[K, N], word_shape=[cdiv(K, 8), N], <Layout>)
    register_layout(shape=[4, 4], mode_shape=[2, 2, 4], spatial_modes=[0, 2], local_modes=[1])

`layout_to_text` prints; `layout_from_text` parses (the grammar is the `layout` rule of
`lowbit/ir/grammar.lark`); the `*_from_parts` functions turn parsed pieces into layouts for the parser.
Every field that takes part in a layout's equality is printed, so `layout_from_text(layout_to_text(l)) == l`.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import sympy

from .memory import Layout
from .packed import PackedLayout
from .register import RegisterLayout
from .swizzle import ComposedLayout, Swizzle
from .symbolic import simplify_index, to_source

__all__ = [
    "composed_from_parts",
    "cute_from_parts",
    "layout_from_text",
    "layout_to_text",
    "packed_from_parts",
    "register_from_parts",
]

_REGISTER_FIELDS = ("shape", "mode_shape", "spatial_modes", "local_modes")


def layout_to_text(layout: Any) -> str:
    """The text form of a `Layout`, `ComposedLayout`, `PackedLayout` or `RegisterLayout`."""
    if isinstance(layout, Layout):
        return f"{_int_tuple(layout.shape)}:{_int_tuple(layout.stride)}"
    if isinstance(layout, ComposedLayout):
        sw = layout.swizzle
        offset = "" if layout.offset == 0 else f"{to_source(layout.offset)} o "
        return f"swizzle({sw.bits}, {sw.base}, {sw.shift}) o {offset}{layout_to_text(layout.layout)}"
    if isinstance(layout, PackedLayout):
        fields = [f"bits={layout.bits}", f"word_bits={layout.word_bits}"]
        if layout.per_word is not None:
            fields.append(f"per_word={layout.per_word}")
        fields += [
            f"dense={'true' if layout.dense else 'false'}",
            f"shape={_list(layout.shape)}",
            f"word_shape={_list(layout.word_shape)}",
        ]
        return f"packed({', '.join(fields)}, {layout_to_text(layout.layout)})"
    if isinstance(layout, RegisterLayout):
        fields = [f"{name}={_list(getattr(layout, name))}" for name in _REGISTER_FIELDS]
        return f"register_layout({', '.join(fields)})"
    raise TypeError(
        f"layout_to_text has no rule for {type(layout).__name__} {layout!r}; add one in lowbit/ir/layout/text.py"
    )


def layout_from_text(text: str, symbols: Mapping[str, sympy.Symbol] | None = None) -> Any:
    """Parse `layout_to_text`'s output. Names in expressions resolve through `symbols`; without a mapping
    every name is a size symbol (a positive integer, `lowbit.ir.values.size_symbol`).

    Raises `lowbit.ir.parser.IRParseError` naming the line, column and what was expected.
    """
    from lowbit.ir.parser import parse_layout  # the parser imports this module: import late

    return parse_layout(text, symbols)


# -- pieces to layouts (the parser calls these) ---------------------------------------------------------


def cute_from_parts(shape: Any, stride: Any) -> Layout:
    return Layout(shape, stride)


def composed_from_parts(bits: int, base: int, shift: int, offset: Any, layout: Any) -> ComposedLayout:
    if not isinstance(layout, Layout):
        raise ValueError(f"a swizzle composes with a CuTe layout `shape:stride`, got {layout_to_text(layout)}")
    return ComposedLayout(Swizzle(bits, base, shift), simplify_index(offset), layout)


def packed_from_parts(fields: Mapping[str, Any], layout: Any) -> PackedLayout:
    allowed = ("bits", "word_bits", "per_word", "dense", "shape", "word_shape")
    _check_fields("packed", fields, allowed, required=("bits",))
    args: dict[str, Any] = {k: tuple(map(simplify_index, v)) if isinstance(v, list) else v for k, v in fields.items()}
    return PackedLayout(layout, **args)


def register_from_parts(fields: Mapping[str, Any]) -> RegisterLayout:
    # the constructor, not `register_layout(...)`: the fields are kept exactly as printed (no canonicalize)
    _check_fields("register_layout", fields, _REGISTER_FIELDS, required=_REGISTER_FIELDS)
    args: dict[str, Any] = {k: tuple(fields[k]) for k in _REGISTER_FIELDS}
    return RegisterLayout(**args)


# -- helpers --------------------------------------------------------------------------------------------


def _int_tuple(t: Any) -> str:
    # CuTe notation: no spaces between modes; a 1-tuple keeps its comma so it reads back as a tuple
    if isinstance(t, tuple):
        inner = ",".join(_int_tuple(e) for e in t)
        return f"({inner},)" if len(t) == 1 else f"({inner})"
    return to_source(t)


def _list(values: Any) -> str:
    return "[" + ", ".join(to_source(v) for v in values) + "]"


def _check_fields(kind: str, fields: Mapping[str, Any], allowed: tuple[str, ...], required: tuple[str, ...]) -> None:
    unknown = [k for k in fields if k not in allowed]
    if unknown:
        raise ValueError(f"{kind}(...) has no field {unknown[0]!r}; its fields are {', '.join(allowed)}")
    missing = [k for k in required if k not in fields]
    if missing:
        raise ValueError(f"{kind}(...) needs {', '.join(f'{k}=' for k in missing)}")
