"""RTN under a LinearSpec: fake_quantize == quantize().dequantize() bit for bit; pack_quantized rebuilds the
same QuantizedWeight from code values and parameters; QoQ forwards; errors."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from lowbit.config.spec import LinearSpec
from lowbit.dtypes import decode
from lowbit.ops.weight import QuantizedWeight, pack_quantized, quantize
from lowbit.quant.qoq import quantize_qoq
from lowbit.quant.rtn import SpecQuantizer, fake_quantize, qoq_quantize, rtn_quantize

from .numerics import KINDS, sample

SPECS = [
    LinearSpec("rtn", "int4", 128),
    LinearSpec("rtn", "int2", 32),
    LinearSpec("rtn", "int8", -1),
    LinearSpec("rtn", "uint4", 64, "post"),
    LinearSpec("rtn", "uint3", 32, "post"),
    LinearSpec("rtn", "uint3", 64, "pre"),
    LinearSpec("rtn", "uint8", 32, "pre"),
    LinearSpec("rtn", "int5", 64, "post"),
    LinearSpec("rtn", "fp4_e2m1", 32),
    LinearSpec("rtn", "fp6_e3m2", -1),
    LinearSpec("rtn", "uint4", 128, "post", "w4a8_group"),
    LinearSpec("rtn", "uint2", 32, "post", "w4a8_group"),
    LinearSpec("rtn", "uint4", -1, "post", "w4a8_channel"),
]


def _qw_fields(qw: QuantizedWeight) -> dict[str, object]:
    return {
        "values": decode(qw.dtype, qw.codes()).T,
        "scales": qw.scales.T,
        "zeros": None if qw.zeros is None else qw.zeros.T,
        "dtype": qw.dtype,
        "group_size": qw.group_size,
        "zero_mode": qw.zero_mode,
        "scheme": qw.scheme,
        "channel_scales": qw.channel_scales,
        "scale_dtype": str(qw.scales.dtype) if qw.scheme == "w_a16" else "float16",
    }


@settings(max_examples=25)
@given(st.sampled_from(SPECS), st.sampled_from([k for k in KINDS if k != "huge"]), st.integers(0, 2**16))
def test_fake_quantize_equals_packed_dequantize(spec: LinearSpec, kind: str, seed: int) -> None:
    w = sample(np.random.default_rng(seed), (12, 128), kind)
    np.testing.assert_array_equal(fake_quantize(w, spec).astype(np.float32), rtn_quantize(w, spec).dequantize())


@settings(max_examples=20)
@given(st.sampled_from(SPECS), st.integers(0, 2**16), st.sampled_from(["row", "reordered"]))
def test_pack_quantized_rebuilds_quantize(spec: LinearSpec, seed: int, layout: str) -> None:
    w = sample(np.random.default_rng(seed), (32, 128), "outliers")
    qw = rtn_quantize(w, spec, layout=layout if spec.weight_dtype[-1] in "248" else "row")
    again = pack_quantized(**_qw_fields(qw), layout=qw.layout)  # type: ignore[arg-type]
    np.testing.assert_array_equal(again.words, qw.words)
    np.testing.assert_array_equal(again.scales, qw.scales)
    assert again.scales.dtype == qw.scales.dtype
    if qw.zeros is not None:
        assert again.zeros is not None and again.zeros.dtype == qw.zeros.dtype
        np.testing.assert_array_equal(again.zeros, qw.zeros)
    assert (again.group_size, again.zero_mode, again.scheme, again.shape) == (
        qw.group_size,
        qw.zero_mode,
        qw.scheme,
        qw.shape,
    )
    np.testing.assert_array_equal(again.dequantize(), qw.dequantize())


def test_spec_quantizer_column_by_column_matches_whole_weight() -> None:
    # params of a block + values of single columns = the vectorised fake quantization (what GPTQ relies on)
    rng = np.random.default_rng(1)
    w = rng.standard_normal((8, 128)).astype(np.float32)
    for spec in SPECS:
        q = SpecQuantizer.of(spec, 128)
        s1 = q.channel_scales(w)
        g = q.group_size
        cols = []
        for j in range(128 // g):
            s, z = q.params(w[:, j * g : (j + 1) * g], s1)
            for c in range(j * g, (j + 1) * g):
                cols.append(q.dequant(q.values(w[:, c : c + 1], s, z, s1), s, z, s1))
        np.testing.assert_array_equal(np.concatenate(cols, axis=1), q.fake_quantize(w), err_msg=spec.describe())


def test_qoq_quantize_is_the_progressive_quantizer() -> None:
    w = np.random.default_rng(2).standard_normal((16, 256)).astype(np.float32)
    qw = qoq_quantize(w, LinearSpec("qoq", "uint4", 128, "post", "w4a8_group"))
    np.testing.assert_array_equal(qw.dequantize(), quantize_qoq(w, bits=4, group_size=128).dequantize())
    assert qw.scheme == "w4a8_group" and qw.channel_scales is not None
    with pytest.raises(ValueError, match="QoQ weights use scheme 'w4a8_group'"):
        qoq_quantize(w, LinearSpec("qoq", "uint4", 128, "post"))


def test_spec_errors() -> None:
    w = np.ones((4, 96), np.float32)
    with pytest.raises(ValueError, match="algorithm 'none'"):
        rtn_quantize(w, LinearSpec("none", "int4", 32))
    with pytest.raises(ValueError, match="group_size 64 does not divide in_features K=96"):
        fake_quantize(w, LinearSpec("rtn", "int4", 64))
    with pytest.raises(ValueError, match="'pre'"):
        rtn_quantize(w, LinearSpec("rtn", "uint4", 32, "pre", "w4a8_group"))
    with pytest.raises(ValueError, match="int16"):
        fake_quantize(w, LinearSpec("rtn", "int16", 32))


def test_pack_quantized_errors() -> None:
    v = np.zeros((4, 64))
    s = np.ones((4, 2), np.float16)
    base = dict(dtype="int4", group_size=32)
    with pytest.raises(ValueError, match=r"values\[1, 2\] = 9.0 is not an integer code of int4"):
        vv = v.copy()
        vv[1, 2] = 9
        pack_quantized(vv, s, **base)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="not an integer code"):
        pack_quantized(v + 0.5, s, **base)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"scales has shape \(2, 4\); expected \[N, groups\] = \[4, 2\]"):
        pack_quantized(v, s.T, **base)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="not exactly representable as float16"):
        pack_quantized(v, np.full((4, 2), 0.1), **base)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="non-positive"):
        pack_quantized(v, np.zeros((4, 2)), **base)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="zeros given for zero_mode 'none'"):
        pack_quantized(v, s, np.zeros((4, 2)), zero_mode="none", **base)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="zero_mode 'post' needs zeros"):
        pack_quantized(v, s, dtype="uint4", group_size=32, zero_mode="post")
    with pytest.raises(ValueError, match="zeros are not integers"):
        pack_quantized(v, s, np.full((4, 2), 0.5), dtype="uint4", group_size=32, zero_mode="post")
    with pytest.raises(ValueError, match="not a fp4_e2m1 value"):
        pack_quantized(np.full((4, 64), 0.7), s, dtype="fp4_e2m1", group_size=32)
    with pytest.raises(ValueError, match="group_size 48 does not divide"):
        pack_quantized(v, s, dtype="int4", group_size=48)
    with pytest.raises(ValueError, match="needs channel_scales"):
        pack_quantized(v, np.ones((4, 2)), np.zeros((4, 2)), dtype="uint4", group_size=32, scheme="w4a8_group")
    with pytest.raises(ValueError, match="outside int8"):
        pack_quantized(
            np.full((4, 64), 15.0),
            np.full((4, 2), 16),
            np.zeros((4, 2)),
            dtype="uint4",
            group_size=32,
            scheme="w4a8_group",
            channel_scales=np.ones(4, np.float16),
        )
    with pytest.raises(ValueError, match="only used by scheme 'w4a8_group'"):
        pack_quantized(v, s, dtype="int4", group_size=32, channel_scales=np.ones(4))


def test_quantize_unchanged_by_pack_quantized_addition() -> None:
    # quantize() still builds what it always did (a spot check against the groupwise reference)
    from lowbit.quant.groupwise import quantize_groupwise

    w = np.random.default_rng(3).standard_normal((8, 64)).astype(np.float32)
    qw = quantize(w, "uint4", 32, zero_mode="post")
    gq = quantize_groupwise(w, bits=4, group_size=32, symmetric=False, scale_dtype=np.float16)
    np.testing.assert_array_equal(qw.dequantize(), gq.dequantize())
