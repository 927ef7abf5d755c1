"""Load and Store lowering: pointer arithmetic, masks, packed sub-byte words, CuTe layouts.

A tile access at offsets (o_0, ..) of extent (n_0, ..) builds one coordinate tensor per axis,
`<tile>_i<d> = o_d + tl.arange(0, n_d)` shaped to broadcast against the others, and evaluates the
tensor's layout at those coordinates: row-major strides, a CuTe `Layout`, or a `PackedLayout`'s
(word, bit). The mask is "inside the logical shape" and the user's mask. Packed elements are read as
`(word >> bit) & mask` on words reinterpreted as uint32 (dense layouts also read the next word when an
element straddles), and written with two atomics per element (and-clear, then or-set), so programs that
share a word never lose each other's bits.
"""

from __future__ import annotations

import functools
import math
from typing import Any

import numpy as np
import sympy

from lowbit.codegen.backend import BackendError
from lowbit.codegen.triton import numerics as nx
from lowbit.codegen.triton.lower import Emitter, expr, rule
from lowbit.codegen.triton.numerics import holder
from lowbit.dtypes import DataType
from lowbit.ir import instructions as I
from lowbit.ir.layout import PackedLayout
from lowbit.ir.statements import ScalarLoad, Store
from lowbit.ir.values import TensorParam, Tile, index_symbol


def host_element(param: TensorParam) -> tuple[np.dtype, str]:
    """The canonical element type of a tensor argument on the device: (NumPy dtype, Triton pointer type).

    Packed tensors: their words as signed ints of the word width. Non-native floats (bfloat16, fp8, ...):
    their codes as int8 / int16. float16 / float32 / bool: themselves. Integers: the signed integer of the
    host width (uint8 stays uint8); sub-byte integers without a packed layout: int8.
    """
    dt = param.dtype
    if isinstance(param.layout, PackedLayout):
        bits = param.layout.word_bits
        return np.dtype(f"int{bits}"), f"*i{bits}"
    if dt.is_bool:
        return np.dtype(np.bool_), "*i1"
    if dt.is_float:
        if nx.is_native_float(dt):
            return np.dtype(f"float{dt.bits}"), f"*fp{dt.bits}"
        bits = 8 if dt.bits <= 8 else 16
        return np.dtype(f"int{bits}"), f"*i{bits}"
    if dt.bits <= 8:
        return (np.dtype(np.uint8), "*u8") if dt.bits == 8 and not dt.is_signed else (np.dtype(np.int8), "*i8")
    bits = 1 << math.ceil(math.log2(dt.bits))
    return np.dtype(f"int{bits}"), f"*i{bits}"


def _coordinates(em: Emitter, base: str, offsets: tuple[Any, ...], shape: tuple[int, ...]) -> list[sympy.Symbol]:
    """One broadcastable coordinate tensor per axis; returns their symbols."""
    rank, symbols = len(shape), []
    if rank == 0:
        raise BackendError("loads and stores of rank-0 tiles are not supported by the triton backend")
    for d, (o, n) in enumerate(zip(offsets, shape)):
        index = "" if rank == 1 else "[" + ", ".join(":" if i == d else "None" for i in range(rank)) + "]"
        start = expr(o)
        arange = f"tl.arange(0, {n}){index}"
        name = em.let(f"{base}_i{d}", arange if start == "0" else f"{start} + {arange}")
        symbols.append(index_symbol(name))
    return symbols


def assumed_inside(em: Emitter, extent: Any) -> bool:
    """Whether the caller guarantees that no tile crosses `extent` (option `inbounds`: the extent is built
    from those size symbols alone, e.g. N, K, K // 128), so its mask term can be left out."""
    names = {str(s) for s in sympy.sympify(extent).free_symbols}
    return bool(names) and names <= set(em.options["inbounds"])


def _bound_terms(em: Emitter, coords: list[Any], extents: Any, offsets: tuple[Any, ...] | None = None) -> list[str]:
    terms = []
    for d, (c, extent) in enumerate(zip(coords, extents)):
        if offsets is not None and not sympy.sympify(offsets[d]).is_nonnegative:
            terms.append(f"({c} >= 0)")
        if not assumed_inside(em, extent):
            terms.append(f"({c} < {expr(extent)})")
    return terms


def _inside(em: Emitter, base: str, p: TensorParam, offsets: tuple[Any, ...], coords: list[Any], mask: Tile | None):
    """The tile's mask as a let-bound name, or None when every element is inside (no terms left)."""
    terms = _bound_terms(em, coords, p.shape, offsets)
    if mask is not None:
        terms.append(em.tile(mask))
    return em.let(f"{base}_in", " & ".join(terms)) if terms else None


def _masked(inside: str | None, load: bool = True) -> str:
    """The mask arguments of a tl.load (with other=0) or, `load` False, a tl.store / atomic: none for an
    unmasked tile."""
    if inside is None:
        return ""
    return f", mask={inside}, other=0" if load else f", mask={inside}"


def _element_offset(p: TensorParam, coords: list[sympy.Symbol]) -> Any:
    if p.layout is not None:
        return p.layout(*coords)
    offset, stride = sympy.Integer(0), sympy.Integer(1)
    for c, extent in reversed(list(zip(coords, p.shape))):
        offset, stride = offset + c * stride, stride * extent
    return offset


@rule(I.Load)
def _load(em: Emitter, inst: I.Load, out: str) -> None:
    p, dt = inst.tensor, inst.tensor.dtype
    coords = _coordinates(em, out, inst.offsets, inst.shape)
    inside = _inside(em, out, p, inst.offsets, coords, inst.mask)
    from lowbit.codegen.reference import to_values

    other = to_values(dt, np.array(inst.other)).item()
    # masked lanes load code 0, whose value is 0: only another `other` needs a select
    plain = other == 0 and not (dt.is_float and math.copysign(1.0, other) < 0)
    target = out if plain else f"{out}_v"
    if isinstance(p.layout, PackedLayout):
        run = _word_run(em, p.layout, inst.offsets, inst.shape)
        if run is not None:
            value = _load_words(em, p, inst, run, inside, target)
        else:
            value = _load_packed(em, p, coords, inside, target)
    else:
        offset = expr(_element_offset(p, coords))
        raw = em.let(f"{out}_raw", f"tl.load({p.name}_ptr + ({offset}){_masked(inside)})")
        value = nx.from_raw(em, dt, raw, target)
    if not plain:
        fill = value if inside is None else f"tl.where({inside}, {value}, {nx.const_value(dt, other)})"
        em.emit(f"{out} = {fill}.to({holder(dt)})")


def _words(em: Emitter, p: TensorParam, word: str, mask: str | None, base: str) -> str:
    """Words at `word` as nonnegative int32 (word_bits < 32) or uint32 (`mask` None: unmasked)."""
    layout: PackedLayout = p.layout
    raw = em.let(base, f"tl.load({p.name}_ptr + ({word}){_masked(mask)})")
    if layout.word_bits == 32:
        return em.let(f"{base}_u", f"{raw}.to(tl.uint32, bitcast=True)")
    return em.let(f"{base}_u", f"{raw}.to(tl.int32) & {hex((1 << layout.word_bits) - 1)}")


@functools.lru_cache(maxsize=256)
def _runs(layout: PackedLayout) -> tuple[tuple[int, int], ...]:
    """The axes d along which `layout` packs runs of per_word consecutive codes into one word in order: with
    c_d = p·U + v (v < p) and every other coordinate fixed, the word does not depend on v and the bit is
    v·bits. (axis, p) pairs, p a power of two; checked on the closed form with symbolic coordinates."""
    bits, wb = layout.bits, layout.word_bits
    p = layout.per_word if layout.per_word is not None else (wb // bits if wb % bits == 0 else None)
    if p is None or p < 2 or p & (p - 1):
        return ()
    rank = len(layout.shape)
    syms = [sympy.Symbol(f"_c{d}", integer=True, nonnegative=True) for d in range(rank)]
    u = sympy.Symbol("_u", integer=True, nonnegative=True)
    found = []
    for d in range(rank):
        at = [[*syms[:d], p * u + v, *syms[d + 1 :]] for v in range(p)]
        locs = [layout.locate(*c) for c in at]
        word0 = sympy.sympify(locs[0][0])
        if all(
            sympy.simplify(sympy.sympify(w) - word0) == 0 and sympy.simplify(sympy.sympify(b) - v * bits) == 0
            for v, (w, b) in enumerate(locs)
        ):
            found.append((d, p))
    return tuple(found)


def _multiple_of(em: Emitter, e: Any, p: int) -> bool:
    """Whether offset `e` is a multiple of p for every value its loop variables take (each loop variable
    is start + step·i)."""
    e = sympy.sympify(e)
    subs = {
        v: sympy.sympify(start) + sympy.sympify(step) * sympy.Symbol(f"_i_{v}", integer=True, nonnegative=True)
        for v, (start, step) in em.loops.items()
        if v in e.free_symbols
    }
    return sympy.expand(e.subs(subs) / p).is_integer is True


def _word_run(em: Emitter, layout: PackedLayout, offsets: tuple[Any, ...], shape: tuple[int, ...]):
    """(axis, p) when a tile at `offsets` of `shape` is whole words along a run axis of the layout: the
    tile's extent there a multiple of p and its offset provably one. Such a tile loads each word once."""
    for d, p in _runs(layout):
        if shape[d] % p == 0 and _multiple_of(em, offsets[d], p):
            return d, p
    return None


def _load_words(
    em: Emitter, p: TensorParam, inst: I.Load, run: tuple[int, int], inside: str | None, target: str
) -> str:
    """A packed tile that is whole words along axis d: load its [.., n_d / per, ..] words once (not once per
    code: per int4 word one load where the per-code form has eight), split each word into its per codes
    along a new axis right after d by one shift and mask, and reshape the codes to the tile (the new axis
    is the code's place in its word, so the row-major merge is c_d). Codes outside the tensor along d (a
    last word's spare slots) and outside the user's mask read as 0."""
    out = target.removesuffix("_v")
    layout: PackedLayout = p.layout
    d, per = run
    rank, shape = len(inst.shape), inst.shape
    wshape = tuple(n // per if i == d else n for i, n in enumerate(shape))
    wsyms = []
    for i, (o, n) in enumerate(zip(inst.offsets, wshape)):
        index = "" if rank == 1 else "[" + ", ".join(":" if j == i else "None" for j in range(rank)) + "]"
        start = expr(sympy.floor(sympy.sympify(o) / per) if i == d else o)
        arange = f"tl.arange(0, {n}){index}"
        wsyms.append(index_symbol(em.let(f"{out}_j{i}", arange if start == "0" else f"{start} + {arange}")))
    at = [per * s if i == d else s for i, s in enumerate(wsyms)]
    word, _ = layout.locate(*at)
    terms = _bound_terms(em, [expr(c) for c in at], p.shape)
    words = _words(em, p, expr(word), em.let(f"{out}_win", " & ".join(terms)) if terms else None, f"{out}_w")
    mask = hex((1 << layout.bits) - 1)
    if em.options["codes_last"] and d != rank - 1:
        # the run axis moved last (a permute only relabels the layout): each word's codes become the innermost,
        # contiguous axis of the split, so the merge is a row-major reshape of the last two axes and a thread's
        # codes of one word stay adjacent along d (the form a dot operand's shared-memory copy can store whole)
        perm = [*(i for i in range(rank) if i != d), d]
        inverse = [perm.index(i) for i in range(rank)]
        moved = em.let(f"{out}_wt", f"tl.permute({words}, {tuple(perm)})")
        parts = [f"(({moved} >> {c * layout.bits}) & {mask}).to(tl.int32)" for c in range(per)]
        # a tree of tl.join (each adds a last axis of 2 that one thread holds): level l pairs the codes whose
        # index differs by per / 2^(l+1), so the row-major merge of the new axes is the code index
        while len(parts) > 1:
            half = len(parts) // 2
            parts = [f"tl.join({parts[i]}, {parts[i + half]})" for i in range(half)]
        last = tuple(shape[i] for i in perm)
        flat = em.let(f"{out}_ct", f"tl.reshape({parts[0]}, ({', '.join(map(str, last))}))")
        codes = em.let(f"{out}_codes", f"tl.permute({flat}, {tuple(inverse)})")
    else:
        spread = "[" + ", ".join("None" if j == d + 1 else ":" for j in range(rank + 1)) + "]"
        place = "[" + ", ".join(":" if j == d + 1 else "None" for j in range(rank + 1)) + "]"
        split = f"({words}{spread} >> (tl.arange(0, {per}) * {layout.bits}){place}) & {mask}"
        codes = em.let(f"{out}_codes", f"tl.reshape(({split}).to(tl.int32), ({', '.join(map(str, shape))}))")
    code = codes if inside is None else em.let(f"{out}_code", f"tl.where({inside}, {codes}, 0)")
    return nx.value_of(em, p.dtype, code, target)


def _load_packed(em: Emitter, p: TensorParam, coords: list[Any], inside: str | None, target: str) -> str:
    out = target.removesuffix("_v")
    layout: PackedLayout = p.layout
    bits, wb = layout.bits, layout.word_bits
    word_expr, bit_expr = layout.locate(*coords)
    word = expr(word_expr)
    bit = em.let(f"{out}_bit", expr(bit_expr)) if sympy.sympify(bit_expr).free_symbols else expr(bit_expr)
    lo = _words(em, p, word, inside, f"{out}_w")
    code = f"({lo} >> {bit})"
    if layout.dense and wb % bits != 0:  # an element may continue into the next word
        straddle = f"({bit} + {bits} > {wb})" if inside is None else f"{inside} & ({bit} + {bits} > {wb})"
        hi = _words(em, p, f"{word} + 1", straddle, f"{out}_w_next")
        code = f"({code} | ({hi} << (({wb} - {bit}) % {wb})))"
    code = em.let(f"{out}_code", f"({code} & {hex((1 << bits) - 1)}).to(tl.int32)")
    return nx.value_of(em, p.dtype, code, target)


@rule(ScalarLoad)
def _scalar_load(em: Emitter, s: ScalarLoad) -> None:
    em.comment(s)
    p = s.tensor
    terms = []
    for i, extent in zip(s.indices, p.shape):
        if not sympy.sympify(i).is_nonnegative:
            terms.append(f"({expr(i)} >= 0)")
        terms.append(f"({expr(i)} < {expr(extent)})")
    offset = expr(_element_offset(p, list(s.indices)))
    em.used.add(str(s.var))
    em.emit(f"{s.var} = tl.load({p.name}_ptr + ({offset}), mask={' & '.join(terms)}, other=0).to(tl.int32)")


@rule(Store)
def _store(em: Emitter, s: Store) -> None:
    em.comment(s)
    p, dt = s.tensor, s.tensor.dtype
    base = em.fresh(f"{p.name}_st")
    coords = _coordinates(em, base, s.offsets, s.tile.shape)
    inside = _inside(em, base, p, s.offsets, coords, s.mask)
    value = em.tile(s.tile)
    if isinstance(p.layout, PackedLayout):
        _store_packed(em, p, dt, coords, inside, value, base)
        return
    raw = nx.to_raw(em, dt, value, f"{base}_code")
    offset = expr(_element_offset(p, coords))
    em.emit(f"tl.store({p.name}_ptr + ({offset}), {raw}.to({p.name}_ptr.dtype.element_ty){_masked(inside, False)})")


def _store_packed(
    em: Emitter, p: TensorParam, dt: DataType, coords: list[Any], inside: str | None, value: str, base: str
):
    layout: PackedLayout = p.layout
    mask = _masked(inside, False)
    bits, wb = layout.bits, layout.word_bits
    if wb != 32:
        raise BackendError(
            f"store to {p.name}: packed stores need 32-bit words (atomics), the layout has {wb}-bit words"
        )
    word_expr, bit_expr = layout.locate(*coords)
    word = em.let(f"{base}_word", expr(word_expr))
    bit = em.let(f"{base}_bit", expr(bit_expr)) if sympy.sympify(bit_expr).free_symbols else expr(bit_expr)
    code = nx.code_of(em, dt, value, f"{base}_code")
    field = hex((1 << bits) - 1)
    em.emit(f"tl.atomic_and({p.name}_ptr + {word}, ~({field} << {bit}){mask})")
    em.emit(f"tl.atomic_or({p.name}_ptr + {word}, {code} << {bit}{mask})")
    if layout.dense and wb % bits != 0:  # the high part of a straddling element goes into the next word
        cross = f"({bit} + {bits} > {wb})"
        straddle = em.let(f"{base}_straddle", cross if inside is None else f"{inside} & {cross}")
        rest = f"(({wb} - {bit}) % {wb})"
        em.emit(f"tl.atomic_and({p.name}_ptr + {word} + 1, ~({field} >> {rest}), mask={straddle})")
        em.emit(f"tl.atomic_or({p.name}_ptr + {word} + 1, {code} >> {rest}, mask={straddle})")
