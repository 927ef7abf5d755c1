"""`lowbit.ops.x16`'s weight copy for the executor: `x16_weight` holds a weight in the plane layout, the x16 plan
reads it in place with the result it gives for the original, and every other kernel still reads it right."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from linear_reference import bound, reference, relative_error

from lowbit.artifact.fingerprint import isa_flags
from lowbit.codegen.backend import available_backends
from lowbit.kernels.layouts import column_tiled, plane_layout
from lowbit.kernels.spaces import pair_dot_runs
from lowbit.ops import quantize, quantized_linear
from lowbit.ops.weight import constant_offset
from lowbit.ops.x16 import X16_BN, x16_operands, x16_weight

X16 = "tvm" in available_backends() and "avx512_vnni" in isa_flags()


def _weight(n: int, k: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((n, k)).astype(np.float32)


@settings(max_examples=8, deadline=None)
@given(
    name=st.sampled_from(["int2", "int4", "uint2", "uint4"]),
    zero=st.sampled_from(["default", "post", "pre"]),
    g=st.sampled_from([32, 64, 128]),
    groups=st.integers(2, 3),  # (one group of all of K is per channel, which the plan does not take)
    n=st.sampled_from([32, 96, 200]),
    seed=st.integers(0, 2**16),
)
def test_x16_weight_holds_the_same_values_in_the_plane_layout(name, zero, g, groups, n, seed):
    """The copy dequantizes to exactly the original's values; a signed weight without zeros becomes the
    offset-binary unsigned one (zero point 2^(b-1): `constant_offset`), any other as its own dtype and zeros;
    a signed weight with zeros keeps its copies (None); the copy of a copy is itself."""
    k = g * groups
    kwargs = {} if zero == "default" else dict(symmetric=False, zero_mode=zero)
    qw = quantize(_weight(n, k, seed), name, g, **kwargs)
    xw = x16_weight(qw)
    if qw.dtype.is_signed and qw.zero_mode != "none":
        assert xw is None
        return
    assert xw is not None and xw.layout == plane_layout((k, n), qw.dtype.bits, g, X16_BN)
    np.testing.assert_array_equal(xw.dequantize(), qw.dequantize())
    assert not xw.dtype.is_signed and xw.dtype.bits == qw.dtype.bits
    assert constant_offset(xw) == (1 << (qw.dtype.bits - 1) if qw.dtype.is_signed else constant_offset(qw))
    assert xw.words.ctypes.data % 64 == 0
    assert x16_weight(xw) is xw


def test_x16_weight_is_none_where_the_plan_does_not_serve():
    assert x16_weight(quantize(_weight(32, 128, 0), "int3", 64)) is None  # planes split 3-bit codes
    assert x16_weight(quantize(_weight(32, 128, 0), "int4", -1)) is None  # per channel
    assert x16_weight(quantize(_weight(32, 128, 0), "fp4_e2m1", 64)) is None
    assert x16_weight(quantize(_weight(32, 128, 0), "int8", 64)) is None


@pytest.mark.skipif(not X16, reason="the x16 plan needs TVM and AVX-512 VNNI")
@pytest.mark.parametrize(
    "name,zero,m", [("int4", "default", 1), ("int2", "default", 6), ("uint4", "post", 3), ("uint2", "pre", 9)]
)
def test_x16_plan_reads_the_copy_in_place_with_the_originals_result(name, zero, m):
    """float16 / bfloat16 / float32 x: the plan on the copy gives the original's output bit for bit and binds the
    copy's own words (no plane copy of them); a float kernel asked for by name reads the plane layout too, within
    the oracle's bound."""
    kwargs = {} if zero == "default" else dict(symmetric=False, zero_mode=zero)
    qw = quantize(_weight(96, 256, 1), name, 64, **kwargs)
    xw = x16_weight(qw)
    assert xw is not None
    rng = np.random.default_rng(2)
    for adtype in ("float16", "bfloat16", "float32"):
        x = torch.from_numpy(rng.standard_normal((m, 256)).astype(np.float32)).to(getattr(torch, adtype))
        assert torch.equal(quantized_linear(x, xw, backend="tvm"), quantized_linear(x, qw, backend="tvm"))
    assert x16_operands(xw)["w"].data_ptr() == xw.words.ctypes.data
    assert "zeros" not in x16_operands(xw) or not constant_offset(xw)
    x32 = rng.standard_normal((m, 256)).astype(np.float32)
    for kernel in (None, "quantized_gemm"):
        y = quantized_linear(torch.from_numpy(x32), xw, backend="tvm", kernel=kernel).numpy()
        err = relative_error(y, reference(x32, qw))
        assert err <= bound(qw, m, "float32"), (kernel, err)


@pytest.mark.skipif(not X16, reason="the x16 plan needs TVM and AVX-512 VNNI")
@pytest.mark.parametrize("name,zero", [("int4", "default"), ("uint4", "post"), ("int4", "pre")])
def test_bfloat16_rows_of_every_count_read_one_copy(name, zero):
    """bfloat16 x, 4-bit codes: M = 1 (the bf16 float kernels), 2-28 rows (the x16 plan) and 40 rows (the float
    kernels' GEMM forms) all read `cpu_weight`'s one column-tiled copy (`x16_source`:
    the x16 plan binds its words in place, xor-ing signed codes in its GEMV), each within the oracle's bound;
    the weight holds no other array of its codes."""
    kwargs = {} if zero == "default" else dict(symmetric=False, zero_mode=zero)
    qw = quantize(_weight(256, 256, 3), name, 64, **kwargs)
    rng = np.random.default_rng(4)
    for m in (1, 4, 40):
        x = rng.standard_normal((m, 256)).astype(np.float32)
        xb = torch.from_numpy(x).to(torch.bfloat16)
        y = quantized_linear(xb, qw, backend="tvm").float().numpy()
        err = relative_error(y, reference(xb.float().numpy(), qw))
        assert err <= bound(qw, m, "bfloat16"), (m, err)
    copies = [v for v in qw.__dict__.values() if isinstance(v, type(qw))]
    assert len(copies) == 1, [type(v) for v in copies]
    tiled = copies[0]
    assert tiled.layout == column_tiled((256, 256), 4, X16_BN, pairs=pair_dot_runs("bfloat16", 4))
    assert tiled.__dict__["_x16_operands"]["w"].data_ptr() == tiled.words.ctypes.data  # read in place
    assert "_x16_operands" not in qw.__dict__  # no plane copy of the row-layout original


@pytest.mark.skipif(not X16, reason="the x16 plan needs TVM and AVX-512 VNNI")
def test_plans_share_the_threads_scratch_and_keep_no_caller_tensor():
    """Every x16 plan of a thread runs on one scratch, grown to the largest call (`_Scratch`): a plan built
    before a larger one grew it still gives its result after; no plan holds the x or y of its last call."""
    import lowbit.ops.x16 as x16

    x16._SCRATCH.bufs = None  # this thread's scratch starts empty (earlier tests here may have grown it)
    qw = quantize(_weight(64, 256, 3), "int4", 64)
    xs = {m: torch.from_numpy(np.random.default_rng(m).standard_normal((m, 256)).astype(np.float32)) for m in (2, 40)}
    small = x16.x16_plan(qw, 2, "float32")
    want = torch.empty(2, 64)
    small(xs[2], want)
    before = x16._SCRATCH.generation
    big_y = torch.empty(40, 64)
    x16.x16_plan(qw, 40, "float32")(xs[40], big_y)
    assert x16._SCRATCH.generation == before + 1  # 40 rows' planes did not fit: the scratch grew
    again = torch.empty(2, 64)
    small(xs[2], again)
    assert torch.equal(again, want)
    planes = x16._SCRATCH.bufs[0]
    assert small._scratch.calls[0][1][1].data_ptr() == planes.data_ptr()  # the small plan's views: the new buffer
    y40 = quantized_linear(xs[40], qw, backend="tvm")
    assert relative_error(big_y.numpy(), y40.numpy()) == 0.0
    for _, args, slot in small._scratch.calls:
        assert args[slot] is None
