"""Quantize-on-append into the paged KV cache: k, v [T, Hkv, D] (after RoPE) go to slot_mapping [T].

Cache layout and conventions are `lowbit.reference.paged`'s (vLLM's): slot = page·PS + offset, slot < 0 is
padding (skipped); every other slot of the cache is left as it was. Per kv_dtype, each of k and v is stored as

    float32              k_cache [NP, PS, Hkv, D] float32              as is (fp32 models checked exactly)
    float16              k_cache [NP, PS, Hkv, D] float16              round to nearest even
    bfloat16             k_cache [NP, PS, Hkv, D] bfloat16             round to nearest even
    fp8_e4m3             k_cache [NP, PS, Hkv, D] fp8_e4m3             e4m3(x / layer_scale), RNE, saturating
                         (layer_scales [2] float32: k's, v's)
    int8 (KV8)           v_cache [NP, PS, Hkv, D] uint8 codes          per token and head, asymmetric, with
                         k_cache [NP, Hkv, D // 4, PS] int32 words     k_scales, k_zeros [NP, PS, Hkv] fp16
    int4 (KV4)           v_cache [NP, PS, Hkv, D // 8] int32 words     (likewise)
                         k_cache [NP, Hkv, D // 8, PS] int32 words
                         (8 codes per word, code j at bits 4j..4j+3: `lowbit.reference.paged.pack_int4`'s
                         uint32 words; keys: `pack_int4_keys` / `pack_int8_keys`, 4 int8 codes per
                         word at bits 8j; declared int32, the launcher takes either)

int4 words are declared int32 because the TVM backend passes uint32 arrays as int32 (`cache_dtype`); the
launcher views the caller's arrays (fp8 as uint8 bit patterns or float8_e4m3fn, uint32 words) accordingly.

KV8/KV4 follow `lowbit.quant.kv.quantize_kv` (its docstring has the why), in fp32 with exact corrections:

    scale = ceil16(max((hi − lo) / steps, 2^⌈log2(|lo|·2^-11)⌉)),  1 for an all-zero row
    zero  = rne16(clip(−lo / scale, ±65504))
    q     = clip(rint(x / scale + zero), 0, steps)

* ceil16 of (hi − lo)/steps is exact although hi − lo and the quotient round in fp32: hi − lo = r + e exactly
  (TwoSum), and a candidate fp16 c is >= (hi − lo)/steps iff c·steps − r >= e, where c·steps is exact
  (11 + 8 bits) and c·steps − r is exact whenever it is small enough to matter (Sterbenz). The candidate
  from the fp32 quotient is off by at most one fp16 step; one step up or down fixes it.
* the zero term is a power of two built from |lo|'s exponent bits (exact).
* rne16(−lo/scale): fp32 division then RNE to fp16 rounds twice, which is wrong only when the fp32
  quotient lands exactly on an fp16 midpoint m; then m·scale (12 + 11 bits) is exact, and comparing it
  with −lo decides the direction (ties: even).
So scales and zeros equal the float64 reference bit for bit. The codes round x/scale + zero computed in
fp32 (two roundings, ≤ 2^-22·(|x/scale| + |zero|) off), so a code may differ by one where x/scale + zero
lies that close to a half-integer; rint is built from floor (exact: fraction, compare, parity).
fp8 divides in fp32 and rounds to e4m3 (twice: wrong only where x/layer_scale is within an fp32 ulp of an
e4m3 midpoint).

Grid (T, ⌈Hkv/BH⌉): block (t, j) reads slot t once and writes BH heads of k and of v. D is a power of two
(a whole head is one tile row; int4 needs D % 8 == 0).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

import lowbit.lang as T
from lowbit.codegen.backend import compile_program
from lowbit.dtypes import dtype as dtype_of
from lowbit.kernels.launch import bind, serial_options
from lowbit.quant.kv import KV_BITS, KV_DTYPES

FP16, FP8 = dtype_of("float16"), dtype_of("fp8_e4m3")
FP16_MAX = FP16.max
ZERO_BOUND_EXPONENT = 11  # |zero| <= 2^11 (lowbit.quant.kv.ZERO_BOUND)


def cache_dtype(kv_dtype: str) -> str:
    """The element dtype of the cache tensor the kernel writes for `kv_dtype`: KV8 codes as uint8, KV4 words
    as int32 (the TVM backend passes uint32 arrays as int32), the float formats as themselves."""
    return {"int8": "uint8", "int4": "int32"}.get(kv_dtype, kv_dtype)


def cache_width(kv_dtype: str, D: Any) -> Any:
    """Last dim of the cache tensor: D elements, or D // 8 uint32 words for int4."""
    return D // 8 if kv_dtype == "int4" else D


def key_dtype(kv_dtype: str) -> str:
    """The element dtype of the key cache: int32 words for int4 / int8 (page-transposed), else `cache_dtype`."""
    return "int32" if kv_dtype in KV_BITS else cache_dtype(kv_dtype)


def key_dim(kv_dtype: str, axis: int, PS: Any, H: Any, D: Any) -> Any:
    """Dim `axis` (1..3) of the key cache: [NP, PS, H, width], or int4 / int8's int32 words [NP, H, D // C, PS]
    with C = 8 / 4 codes per word (`lowbit.reference.paged.pack_int4_keys` / `pack_int8_keys`)."""
    dims = (H, D * KV_BITS[kv_dtype] // 32, PS) if kv_dtype in KV_BITS else (PS, H, cache_width(kv_dtype, D))
    return dims[axis - 1]


@T.kernel
def kv_append(
    k: T.Tensor("dtype", ("NT", "H", "D")),
    v: T.Tensor("dtype", ("NT", "H", "D")),
    slot_mapping: T.Tensor("int32", ("NT",)),
    k_cache: T.Tensor(
        "kdtype",
        ("NP", "key_dim(kv_dtype, 1, PS, H, D)", "key_dim(kv_dtype, 2, PS, H, D)", "key_dim(kv_dtype, 3, PS, H, D)"),
    ),
    v_cache: T.Tensor("cdtype", ("NP", "PS", "H", "cache_width(kv_dtype, D)")),
    k_scales: T.Tensor("float16", ("NP", "PS", "H")),
    k_zeros: T.Tensor("float16", ("NP", "PS", "H")),
    v_scales: T.Tensor("float16", ("NP", "PS", "H")),
    v_zeros: T.Tensor("float16", ("NP", "PS", "H")),
    layer_scales: T.Tensor("float32", (2,)),
    NT: T.int32,
    H: T.int32,
    NP: T.int32,
    PS: T.int32,
    D: T.constexpr = 128,
    kv_dtype: T.constexpr = "int4",
    dtype: T.constexpr = "float16",
    BH: T.constexpr = 4,
    cdtype: T.constexpr = "int32",  # the value cache's dtype: must be cache_dtype(kv_dtype)
    kdtype: T.constexpr = "int32",  # the key cache's dtype: must be key_dtype(kv_dtype)
):
    if cdtype != cache_dtype(kv_dtype):
        raise T.DSLError(f"kv_append: cdtype {cdtype!r} for kv_dtype {kv_dtype!r}; pass cache_dtype(kv_dtype)")
    if kdtype != key_dtype(kv_dtype):
        raise T.DSLError(f"kv_append: kdtype {kdtype!r} for kv_dtype {kv_dtype!r}; pass key_dtype(kv_dtype)")
    t, j = T.grid(NT, T.cdiv(H, BH))
    slot = T.load_scalar(slot_mapping, (t,), name="slot")
    with T.if_(slot >= 0):
        at = (slot // PS, slot % PS, j * BH)  # page, offset in the page, first head
        for i, (x, cache, scales, zeros) in enumerate(
            ((k, k_cache, k_scales, k_zeros), (v, v_cache, v_scales, v_zeros))
        ):
            xv = T.reshape(T.cast(T.load(x, (t, j * BH, 0), (1, BH, D)), T.float32), (BH, D))  # [BH, D]
            if kv_dtype in ("float16", "bfloat16", "float32"):
                T.store(cache, (*at, 0), T.reshape(T.cast(xv, kv_dtype), (1, 1, BH, D)))
            elif kv_dtype == "fp8_e4m3":  # x / layer_scale rounded once (RNE, saturating); the cast is exact
                layer_scale = T.reshape(T.load(layer_scales, (i,), (1,)), (1, 1))
                fp8 = _round_quotient(xv, layer_scale, FP8)
                T.store(cache, (*at, 0), T.reshape(T.cast(fp8, kv_dtype), (1, 1, BH, D)))
            else:
                codes, scale, zero = _quantize_rows(xv, (1 << KV_BITS[kv_dtype]) - 1)
                if i == 0:  # keys: int32 words, word w of the token at [page, head, w, offset]
                    words = T.view(T.cast(codes, "uint4" if kv_dtype == "int4" else T.uint8), T.int32)  # [BH, W]
                    w = D * KV_BITS[kv_dtype] // 32
                    T.store(cache, (at[0], at[2], 0, at[1]), T.reshape(words, (1, BH, w, 1)))
                elif kv_dtype == "int4":  # 8 codes per little-endian uint32 word
                    words = T.view(T.cast(codes, "uint4"), T.int32)  # [BH, D // 8]
                    T.store(cache, (*at, 0), T.reshape(words, (1, 1, BH, D // 8)))
                else:
                    T.store(cache, (*at, 0), T.reshape(T.cast(codes, T.uint8), (1, 1, BH, D)))
                T.store(scales, at, T.reshape(T.cast(scale, T.float16), (1, 1, BH)))
                T.store(zeros, at, T.reshape(T.cast(zero, T.float16), (1, 1, BH)))


# ---- KV8 / KV4 per-row quantization (see the module docstring) -------------------------------------------


def _quantize_rows(x, steps):
    # x: [R, D] fp32 -> codes [R, D] int32, scale [R, 1] and zero [R, 1] (fp32 holding fp16 values)
    lo, hi = _keep(T.min(x, axis=1, keepdims=True)), _keep(T.max(x, axis=1, keepdims=True))  # [R, 1]
    r, e = _two_diff(hi, lo)  # hi − lo = r + e exactly
    c = _ceil_fp16(r / steps)  # within one fp16 step of ceil16((hi − lo) / steps)
    below = (c * steps - r < e) & (c < FP16_MAX)  # c·steps < hi − lo: one step up
    c = T.where(below, _fp16_step(c, 1), c)
    down = _fp16_step(c, -1)
    c = T.where((c > 0) & (down * steps - r >= e), down, c)  # the step below still covers the range
    raw_zero = _zero_bound_term(lo)
    scale = T.maximum(c, _ceil_fp16(raw_zero))
    scale = T.where((c == 0) & (raw_zero == 0), 1.0, scale)  # all-zero row
    zero = _round_quotient(-lo, scale, FP16)
    zero = T.where(zero == 0, 0.0, zero)  # no −0 (the reference adds +0.0)
    y = x / scale + zero  # [R, D]
    codes = T.minimum(T.maximum(_rint(y), 0.0), float(steps))
    return T.cast(codes, T.int32), scale, zero


def _keep(x):
    # x as a tile written by T.assign: every backend holds such a tile in a buffer, and the TVM backend also
    # what is computed from it with more than one use (lowbit.codegen.tvm README). It otherwise inlines a tile
    # into each of its uses, and the where-chains below use each value several times: the generated
    # expression would grow exponentially.
    held = T.zeros(x.shape, x.dtype)
    T.assign(held, x)
    return held


def _two_diff(a, b):
    # (s, e) with s = fl(a − b) and a − b = s + e exactly (Knuth's TwoSum on a and −b; adds only)
    s = a - b
    bb = s - a
    return s, (a - (s - bb)) + (-b - bb)


def _fp16_step(c, n):
    # the fp16 value n codes above c >= 0 (c: fp32 holding an fp16 value)
    code = T.view(T.cast(c, T.float16), T.int16)
    return T.cast(T.view(code + n, T.float16), T.float32)


def _ceil_fp16(raw):
    # the smallest fp16 >= raw (raw >= 0, fp32), saturating at 65504
    r = T.minimum(raw, FP16_MAX)
    s = T.cast(T.cast(r, T.float16), T.float32)  # nearest even, may be below r
    return T.where(s < r, _fp16_step(s, 1), s)


def _zero_bound_term(lo):
    # 2^⌈log2(|lo|·2^-11)⌉, 0 for lo = 0; anything in (0, 2^-24] for |lo| < 2^-13 (ceil16 makes it 2^-24)
    bits = T.view(T.abs(lo), T.int32)
    exponent = bits >> 23  # biased; |lo| >= 0, so no sign bit
    up = T.where((bits & 0x7FFFFF) != 0, 1, 0)  # not a power of two: the next one up
    biased = T.maximum(exponent + up - ZERO_BOUND_EXPONENT, 1)  # >= 1: a normal float
    term = T.view(biased << 23, T.float32)
    return T.where(lo == 0, 0.0, term)


def _round_quotient(num, den, fmt):
    # fmt's RNE of clip(num / den, ±fmt.max), rounded once: num, den > 0 fp32 tiles (den normal), result fp32
    q = _keep(T.minimum(T.maximum(num / den, -fmt.max), fmt.max))  # fp32: the first rounding
    z = T.cast(T.cast(q, fmt.name), T.float32)  # the second; wrong only if q is a midpoint of fmt
    d = q - z  # exact
    other = z + 2.0 * d  # fmt's other neighbour of q, if q is their midpoint
    midpoint = (d != 0) & (T.cast(T.cast(other, fmt.name), T.float32) == other)
    # is num / den above q? den = hi + lo with hi of 24 - (m + 2) bits, so q·hi and q·lo are exact (q has
    # m + 2 significant bits, m = fmt's mantissa bits) and num − q·hi is exact (Sterbenz: num ≈ q·den)
    hi = T.view(T.view(den, T.int32) & ~((1 << (fmt.mantissa_bits + 2)) - 1), T.float32)
    above, below = num - q * hi, q * (den - hi)
    up, down = T.maximum(z, other), T.minimum(z, other)
    fixed = T.where(above > below, up, T.where(above < below, down, z))  # equal: a true tie, z is even
    return T.where(midpoint, fixed, z)


def _rint(y):
    # round half to even (fp32 -> fp32): floor, fraction (exact), then compare and parity
    f = T.floor(y)
    frac = y - f
    odd = (f - 2.0 * T.floor(f * 0.5)) != 0
    return f + T.where((frac > 0.5) | ((frac == 0.5) & odd), 1.0, 0.0)


# ---- launcher -------------------------------------------------------------------------------------------

_COMPILED: dict[tuple[Any, ...], Any] = {}


def append_kv(
    k_new: Any,
    v_new: Any,
    slot_mapping: Any,
    k_cache: Any,
    v_cache: Any,
    kv_dtype: str,
    *,
    k_scales: Any = None,
    k_zeros: Any = None,
    v_scales: Any = None,
    v_zeros: Any = None,
    k_layer_scale: float = 1.0,
    v_layer_scale: float = 1.0,
    backend: str = "auto",
    heads_per_block: int = 4,
) -> None:
    """Write k_new, v_new [T, Hkv, D] (float16/bfloat16/float32, NumPy or torch) into the paged cache at
    slot_mapping [T] int32 (< 0: skipped), in place.

    k_cache, v_cache: [NP, PS, Hkv, D] of kv_dtype's storage (float16, bfloat16, fp8_e4m3 as uint8 bit
    patterns or float8_e4m3fn, int8 values as uint8 codes), int4 values as uint32 (or int32) words
    [NP, PS, Hkv, D // 8] (`pack_int4` of `lowbit.reference.paged.PagedKVCache`'s codes); int4 / int8 keys as
    uint32 (or int32) words [NP, Hkv, D // C, PS], C = 8 / 4 codes per word (`pack_int4_keys` /
    `pack_int8_keys`). int8/int4 also need k_scales, k_zeros, v_scales, v_zeros [NP, PS, Hkv] float16;
    fp8_e4m3 uses the layer scales.
    Raises ValueError naming the argument for a bad kv_dtype, shape or dtype."""
    if kv_dtype not in KV_DTYPES:
        raise ValueError(f"kv_dtype {kv_dtype!r} is not a KV cache format; use one of {', '.join(KV_DTYPES)}")
    if len(k_new.shape) != 3 or tuple(v_new.shape) != tuple(k_new.shape):
        raise ValueError(f"k_new {tuple(k_new.shape)} and v_new {tuple(v_new.shape)} must both be [T, Hkv, D]")
    nt, h, d = (int(s) for s in k_new.shape)
    if d & (d - 1) or (kv_dtype == "int4" and d % 8):
        raise ValueError(f"head dim {d}: the append kernel needs a power of two (>= 8 for int4)")
    if tuple(slot_mapping.shape) != (nt,):
        raise ValueError(f"slot_mapping has shape {tuple(slot_mapping.shape)}; expected [T={nt}] int32")
    width = cache_width(kv_dtype, d)
    if len(v_cache.shape) != 4 or tuple(v_cache.shape[2:]) != (h, width):
        want = f"[NP, PS, Hkv={h}, {width}]"
        raise ValueError(f"v_cache has shape {tuple(v_cache.shape)}; expected {want} for {kv_dtype}")
    np_, ps = int(v_cache.shape[0]), int(v_cache.shape[1])
    k_want = (np_, h, d * KV_BITS[kv_dtype] // 32, ps) if kv_dtype in KV_BITS else tuple(v_cache.shape)
    if tuple(k_cache.shape) != k_want:
        what = f"[NP, Hkv, D // C, PS] words (pack_{kv_dtype}_keys)" if kv_dtype in KV_BITS else "v_cache's shape"
        raise ValueError(f"k_cache has shape {tuple(k_cache.shape)}; expected {what} = {list(k_want)} for {kv_dtype}")
    args: dict[str, Any] = {"k": k_new, "v": v_new, "slot_mapping": slot_mapping}
    args.update(k_cache=_key_view(k_cache, kv_dtype), v_cache=_cache_view(v_cache, kv_dtype))
    if kv_dtype in KV_BITS:
        for name, a in (("k_scales", k_scales), ("k_zeros", k_zeros), ("v_scales", v_scales), ("v_zeros", v_zeros)):
            if a is None or tuple(a.shape) != (np_, ps, h) or "float16" not in str(a.dtype):
                got = "None" if a is None else f"{a.dtype}{tuple(a.shape)}"
                raise ValueError(f"kv_dtype {kv_dtype} needs {name} float16 [NP, PS, Hkv] = {[np_, ps, h]}; got {got}")
            args[name] = a
    if kv_dtype == "fp8_e4m3":
        args["layer_scales"] = np.asarray([k_layer_scale, v_layer_scale], np.float32)
    dtype = str(k_new.dtype).removeprefix("torch.")
    if dtype not in ("float16", "bfloat16", "float32") or str(v_new.dtype) != str(k_new.dtype):
        raise ValueError(f"k_new is {k_new.dtype}, v_new {v_new.dtype}; pass both float16, bfloat16 or float32")
    kernel = _kernel(kv_dtype, d, h, dtype, backend, heads_per_block)
    if nt:
        kernel({**args, "NT": nt, "H": h, "NP": np_, "PS": ps})


def append_launcher(
    k_cache: Any,
    v_cache: Any,
    kv_dtype: str,
    dtype: str,
    *,
    side: dict[str, Any] | None = None,
    k_layer_scale: float = 1.0,
    v_layer_scale: float = 1.0,
    backend: str = "auto",
    heads_per_block: int = 4,
) -> Callable[[Any, Any, Any], None]:
    """`launch(k_new, v_new, slot_mapping)` into this layer's caches (and `side`: the KV8/KV4 scales and zeros,
    as `append_kv` takes them), bound once: `append_kv` with no checks, the executor's hot path. k_new,
    v_new: contiguous [T, Hkv, D] tensors of `dtype`; slot_mapping [T] int32."""
    np_, ps, h = (int(s) for s in v_cache.shape[:3])  # v: [NP, PS, Hkv, width] for every kv_dtype
    d = int(v_cache.shape[3]) * (8 if kv_dtype == "int4" else 1)
    fixed: dict[str, Any] = {
        "k_cache": _key_view(k_cache, kv_dtype), "v_cache": _cache_view(v_cache, kv_dtype),
        "H": h, "NP": np_, "PS": ps, **(side or {}),
    }  # fmt: skip
    if kv_dtype == "fp8_e4m3":
        fixed["layer_scales"] = np.asarray([k_layer_scale, v_layer_scale], np.float32)
    call = bind(_kernel(kv_dtype, d, h, dtype, backend, heads_per_block), fixed, ("k", "v", "slot_mapping", "NT"))

    def launch(k_new: Any, v_new: Any, slot_mapping: Any) -> None:
        n = int(k_new.shape[0])
        if n:
            call(k_new, v_new, slot_mapping, n)

    return launch


def _kernel(kv_dtype: str, d: int, h: int, dtype: str, backend: str, heads_per_block: int) -> Any:
    from lowbit.ops.linear import select_backend  # the ops layer owns the "auto" rule

    backend = select_backend(backend)
    consts = dict(
        D=d,
        kv_dtype=kv_dtype,
        cdtype=cache_dtype(kv_dtype),
        kdtype=key_dtype(kv_dtype),
        dtype=dtype,
        BH=1 << max(0, (min(heads_per_block, h) - 1).bit_length()),
    )
    key = (backend, *sorted(consts.items()))
    if key not in _COMPILED:
        _COMPILED[key] = compile_program(kv_append.trace(**consts), backend, serial_options(backend))
    return _COMPILED[key]


def _key_view(cache: Any, kv_dtype: str) -> Any:
    # int4 / int8 keys: 32-bit words (uint32 or int32) seen as int32 (`key_dtype`); other formats as the values
    return _cache_view(cache, kv_dtype, key_dtype(kv_dtype))


def _cache_view(cache: Any, kv_dtype: str, dtype: str | None = None) -> Any:
    # the same bits in the kernel's cache dtype (`dtype`, default `cache_dtype`): int4 uint32 words as int32,
    # fp8_e4m3 bit patterns (uint8, lowbit.reference.paged's convention) as float8
    want = dtype_of(dtype or cache_dtype(kv_dtype))
    size = cache.element_size() if hasattr(cache, "element_size") else cache.dtype.itemsize
    if size * 8 != want.bits:
        raise ValueError(f"a {kv_dtype} cache holds {want.name} (or the same bits in another dtype); got {cache.dtype}")
    if hasattr(cache, "detach"):
        import torch

        return cache.view(getattr(torch, {"fp8_e4m3": "float8_e4m3fn"}.get(want.name, want.name)))
    return cache.view(np.dtype(want.host_dtype))


__all__ = ["append_kv", "append_launcher", "cache_dtype", "cache_width", "key_dim", "key_dtype", "kv_append"]
