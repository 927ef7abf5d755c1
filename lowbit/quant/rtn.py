"""Round-to-nearest under a `LinearSpec`: the one quantizer RTN, AWQ, GPTQ and QoQ share.

`rtn_quantize(w, spec)` and `qoq_quantize(w, spec)` are thin forwards to `lowbit.ops.weight.quantize`
with the spec's fields (the packed `QuantizedWeight` every kernel reads). The algorithms need the same
numerics *without packing*, many times and one group or one column at a time, so this module also holds
`SpecQuantizer`: the spec resolved against K, with

    params(block[R, G'])          -> (scales[R, 1], zeros[R, 1] | None)   min-max parameters of a block
    values(cols[R, M], s, z)      -> code values [R, M] on the dtype's grid
    dequant(values, s, z)         -> float64 ŵ, computed exactly like `QuantizedWeight.dequantize`

built from the same primitives `quantize()` calls (`quantize_groupwise`, the float encoder, QoQ level 1/2),
so `fake_quantize(w, spec)` equals `rtn_quantize(w, spec).dequantize()` bit for bit (tests/quant/test_gptq.py
checks it over dtypes, zero modes, schemes and group sizes). For QoQ (`w4a8_group`) the level-1 channel
scale s1 comes from the whole weight first (`channel_scales(w)`); `values` and `params` then work on the
int8 level-1 codes q8 = rint(clip(w / s1, −P, P)).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from lowbit.config.spec import LinearSpec
from lowbit.dtypes import DataType, decode, encode
from lowbit.ir.layout import PackedLayout
from lowbit.ops.weight import QuantizedWeight, _code_dtype, _zero_mode
from lowbit.ops.weight import quantize as quantize_weight
from lowbit.quant.affine import ZeroConvention, quantize, resolve_group_size
from lowbit.quant.grid import IntGrid, format_scale, storage_scale
from lowbit.quant.groupwise import quantize_groupwise
from lowbit.quant.qoq import protective_range, qoq_level2

W4A8_SCHEMES = ("w4a8_group", "w4a8_channel")


def spec_quantize_kwargs(spec: LinearSpec) -> dict[str, Any]:
    """The `lowbit.ops.weight.quantize` keyword arguments that a LinearSpec stands for."""
    if spec.algorithm == "none":
        raise ValueError(f"spec {spec.describe()} has algorithm 'none': the weight stays dense; do not quantize it")
    if spec.scheme in W4A8_SCHEMES:
        if spec.zero_mode == "pre":
            raise ValueError(
                f"spec {spec.describe()}: scheme {spec.scheme!r} has an integer (post) zero, not zero_mode 'pre'"
            )
        return {"dtype": spec.weight_dtype, "group_size": spec.group_size, "scheme": spec.scheme}
    return {"dtype": spec.weight_dtype, "group_size": spec.group_size, "zero_mode": spec.zero_mode}


def rtn_quantize(w: Any, spec: LinearSpec, layout: str | PackedLayout = "row") -> QuantizedWeight:
    """Round-to-nearest quantization of w[N, K] with the spec's dtype, group size, zero mode and scheme."""
    return quantize_weight(w, layout=layout, **spec_quantize_kwargs(spec))


def qoq_quantize(w: Any, spec: LinearSpec, layout: str | PackedLayout = "row") -> QuantizedWeight:
    """QoQ weight quantization of w[N, K]: progressive W4 per group (scheme "w4a8_group": per-channel int8
    with protective range, then uint4 with integer scale/zero per group) or per channel ("w4a8_channel")."""
    if spec.scheme not in W4A8_SCHEMES:
        raise ValueError(
            f"spec {spec.describe()} has scheme {spec.scheme!r}; QoQ weights use scheme 'w4a8_group' "
            f"(progressive, g128) or 'w4a8_channel'"
        )
    return rtn_quantize(w, spec, layout)


@dataclass(frozen=True)
class SpecQuantizer:
    """A LinearSpec resolved against in_features K (see the module docstring for the three methods).

    kind: "int" (integer codes, min-max per group), "float" (fpN_eXmY, symmetric), "qoq" (w4a8_group).
    group_size: the resolved G (K when per channel). protective_range: QoQ's P (0 otherwise).
    """

    dtype: DataType
    group_size: int
    zero_mode: str
    scheme: str
    kind: str
    scale_dtype: np.dtype
    protective_range: int = 0

    @classmethod
    def of(cls, spec: LinearSpec, in_features: int, scale_dtype: str = "float16") -> SpecQuantizer:
        # the same validation and defaults as quantize(): resolved through its helpers
        kw = spec_quantize_kwargs(spec)
        dt = _code_dtype(kw["dtype"], spec.scheme)
        group = -1 if spec.scheme == "w4a8_channel" else spec.group_size
        try:
            g = resolve_group_size(int(group), in_features, axis_name="in_features K")
        except ValueError as e:
            raise ValueError(f"spec {spec.describe()}: group_size: {e}") from None
        mode = _zero_mode(dt, spec.scheme, None, kw.get("zero_mode"))
        if spec.scheme == "w4a8_group":
            return cls(dt, g, mode, spec.scheme, "qoq", np.dtype(np.int8), protective_range(dt.bits))
        if spec.scheme == "w4a8_channel":
            return cls(dt, g, mode, spec.scheme, "int", np.dtype(np.float16))
        return cls(dt, g, mode, spec.scheme, "float" if dt.is_float else "int", np.dtype(scale_dtype))

    @property
    def grid(self) -> IntGrid:
        return IntGrid.of(self.dtype)

    def channel_scales(self, w: np.ndarray) -> np.ndarray | None:
        """QoQ level-1 scale s1[N] fp16 from the whole weight w[N, K]; None for the other kinds."""
        if self.kind != "qoq":
            return None
        return storage_scale(
            np.abs(np.asarray(w, np.float32)).max(axis=1).astype(np.float64) / self.protective_range, np.float16
        )

    def _level1(self, w: np.ndarray, s1: np.ndarray | None) -> np.ndarray:
        # q8 = rint(clip(w / s1, −P, P)) in float32 like qoq_level1; w: [R, M], s1: [R] or [R, 1]
        assert s1 is not None, "QoQ needs the level-1 channel scales (channel_scales(w))"
        p = self.protective_range
        with np.errstate(over="ignore"):
            q8 = np.rint(np.clip(np.asarray(w, np.float32) / s1.reshape(-1, 1).astype(np.float32), -p, p))
        return q8.astype(np.float64)

    def params(self, block: np.ndarray, s1: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray | None]:
        """Min-max parameters of each row of block[R, G']: stored scales [R, 1] and zeros [R, 1] or None."""
        if self.kind == "qoq":
            _, s2, z = qoq_level2(self._level1(block, s1).astype(np.int8), bits=self.dtype.bits, group_size=-1)
            return s2.astype(np.float64), z.astype(np.float64)
        if self.kind == "float":
            amax = np.abs(np.asarray(block, np.float32)).max(axis=-1, keepdims=True).astype(np.float64)
            return format_scale(amax, float(self.dtype.max), self.scale_dtype).astype(np.float64), None
        gq = quantize_groupwise(
            np.asarray(block, np.float32),
            bits=self.dtype,
            group_size=-1,
            symmetric=self.zero_mode == "none",
            zero_convention=self._convention,
            scale_dtype=self.scale_dtype,
        )
        zeros = None if gq.zeros is None else gq.zeros.astype(np.float64)  # pre: float32 zero (codes use it)
        return gq.scales.astype(np.float64), zeros

    @property
    def _convention(self) -> ZeroConvention:
        return ZeroConvention.PRE_SCALE if self.zero_mode == "pre" else ZeroConvention.POST_SCALE

    def values(
        self, cols: np.ndarray, scales: np.ndarray, zeros: np.ndarray | None, s1: np.ndarray | None = None
    ) -> np.ndarray:
        """Code values [R, M] of cols[R, M] under per-row parameters scales/zeros [R, 1] (float64 out)."""
        if self.kind == "qoq":
            assert zeros is not None
            q = np.rint(self._level1(cols, s1) / scales) + zeros
            return np.clip(q, 0, self.grid.qmax)
        if self.kind == "float":
            with np.errstate(over="ignore"):
                x = np.asarray(cols, np.float32) / scales.astype(np.float32)
            big = float(self.dtype.max)  # saturate: an IEEE format would encode past its largest value as inf
            return decode(self.dtype, encode(self.dtype, np.clip(x, -big, big))).astype(np.float64)
        q = quantize(
            np.asarray(cols, np.float32),
            scales,
            None if zeros is None else zeros.astype(np.float32),
            bits=self.grid.bits,
            signed=self.grid.signed,
            convention=self._convention,
        )
        return q.astype(np.float64)

    def stored_zeros(self, zeros: np.ndarray | None) -> np.ndarray | None:
        """Zeros as `QuantizedWeight` stores them (a pre-scale zero is rounded to the scale dtype)."""
        if zeros is None or self.zero_mode != "pre":
            return zeros
        return zeros.astype(self.scale_dtype).astype(np.float64)

    def dequant(
        self, values: np.ndarray, scales: np.ndarray, zeros: np.ndarray | None, s1: np.ndarray | None = None
    ) -> np.ndarray:
        """ŵ in float64 from code values and per-row stored parameters, the formula of dequantize()."""
        z = self.stored_zeros(zeros)
        if z is None:
            w = values * scales
        elif self.zero_mode == "pre":
            w = values * scales - z
        else:
            w = (values - z) * scales
        if self.kind == "qoq":
            assert s1 is not None
            w = w * s1.reshape(-1, 1).astype(np.float64)
        return w

    def fake_quantize(self, w: np.ndarray) -> np.ndarray:
        """Ŵ[N, K] float64 of round-to-nearest (no packing); equals quantize(...).dequantize() exactly."""
        w = np.asarray(w, np.float32)
        n, k = w.shape
        g = self.group_size
        s1 = self.channel_scales(w)
        blocks = w.reshape(n * (k // g), g)  # [N·groups, G]
        s1b = None if s1 is None else np.repeat(s1, k // g)
        s, z = self.params(blocks, s1b)
        return self.dequant(self.values(blocks, s, z, s1b), s, z, s1b).reshape(n, k)


def fake_quantize(w: Any, spec: LinearSpec) -> np.ndarray:
    """Ŵ[N, K] float64 = `rtn_quantize(w, spec).dequantize()` without packing (fast; for searches)."""
    arr = np.asarray(w, np.float32)
    if arr.ndim != 2:
        raise ValueError(f"w has shape {arr.shape}; pass a weight [N, K]")
    return SpecQuantizer.of(spec, arr.shape[1]).fake_quantize(arr)


__all__ = [
    "SpecQuantizer",
    "fake_quantize",
    "qoq_quantize",
    "rtn_quantize",
    "spec_quantize_kwargs",
]
