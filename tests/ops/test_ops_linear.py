"""quantized_linear on the reference backend vs the independent NumPy oracle; inputs validated up front."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from linear_reference import HOST, bound, reference, relative_error

from lowbit.artifact.fingerprint import isa_flags
from lowbit.codegen.backend import Config, available_backends
from lowbit.dtypes import SMALL_FLOAT_TYPES, holds_exactly
from lowbit.kernels import quantized_gemm, quantized_gemv, w4a8_gemm_per_channel, w4a8_gemm_per_group
from lowbit.ops import quantize, quantized_linear, select_backend, select_kernel

INT_DTYPES = [f"{s}int{b}" for s in ("", "u") for b in range(1, 9)]
FLOAT_DTYPES = [t.name for t in SMALL_FLOAT_TYPES]  # every eXmY format, fp2_e1m0 .. fp8_e7m0
WIDE_FOR_FP16 = ["fp6_e5m0", "fp7_e5m1", "fp7_e6m0", "fp8_e6m1", "fp8_e7m0"]  # values fp16 does not hold


def activations(shape, adtype, seed=0):
    return np.random.default_rng(seed).standard_normal(shape).astype(np.float32).astype(HOST[adtype])


def weight(n, k, seed=0):
    return np.random.default_rng(seed + 1).standard_normal((n, k)).astype(np.float32)


def plans(qw):
    """The keys of the plans kept on `qw` and on its padded copies (a ragged N runs one: `cpu_padded`)."""
    from lowbit.ops.linear import plans_of

    return list(plans_of(qw))


@settings(max_examples=30)
@given(
    M=st.integers(1, 20),
    N=st.integers(1, 64),
    kg=st.sampled_from([(64, 32), (128, 64), (256, 128), (96, -1)]),
    name=st.sampled_from(INT_DTYPES + FLOAT_DTYPES),
    zero=st.sampled_from(["default", "post", "pre"]),
    adtype=st.sampled_from(["float16", "bfloat16", "float32"]),
    seed=st.integers(0, 2**16),
)
def test_matches_numpy_oracle(M, N, kg, name, zero, adtype, seed):
    K, G = kg
    is_float = name.startswith("fp")
    kwargs = {} if zero == "default" or is_float else dict(symmetric=False, zero_mode=zero)
    qw = quantize(weight(N, K, seed), name, G, **kwargs)
    x = activations((M, K), adtype, seed)
    y = quantized_linear(x, qw, backend="reference")
    assert y.dtype == x.dtype and y.shape == (M, N)
    err = relative_error(y, reference(x, qw))
    assert err <= bound(qw, M, adtype), f"{qw} M={M} {adtype}: {err}"


@pytest.mark.parametrize("name", WIDE_FOR_FP16)
@pytest.mark.parametrize("M,G", [(1, 32), (4, -1), (20, 64)])
def test_wide_exponent_codes_with_fp16_activations(name, M, G):
    """Codes fp16 cannot hold (fp7_e5m1's 98304, fp8_e7m0's 2^-63) meet fp16 activations: the GEMV widens its
    dot to fp32 and the GEMM scales before rounding, so the result is finite and within the fp16 bound."""
    assert not holds_exactly("float16", name)
    qw = quantize(weight(24, 128, M), name, G)
    x = activations((M, 128), "float16", M)
    y = quantized_linear(x, qw, backend="reference")
    err = relative_error(y, reference(x, qw))
    assert err <= bound(qw, M, "float16"), f"{name} M={M}: {err}"


@pytest.mark.parametrize(
    "scheme,G", [("w4a8_group", 64), ("w4a8_group", 128), ("w4a8_group", -1), ("w4a8_group", 256), ("w4a8_channel", -1)]
)
@pytest.mark.parametrize("M", [3, 20])
@pytest.mark.parametrize("adtype", ["float16", "float32"])
def test_w4a8_schemes(scheme, G, M, adtype):
    qw = quantize(weight(40, 256, M), scheme=scheme, group_size=G)
    x = activations((M, 256), adtype, M)
    err = relative_error(quantized_linear(x, qw, backend="reference"), reference(x, qw))
    assert err <= bound(qw, M, adtype), err


def test_kernel_rule_and_auto_backend():
    qw = quantize(weight(8, 64), "int4", 32)
    assert select_kernel(qw, 16) is quantized_gemv and select_kernel(qw, 17) is quantized_gemm
    assert select_kernel(quantize(weight(8, 64), scheme="w4a8_group", group_size=32), 1) is w4a8_gemm_per_group
    assert select_kernel(quantize(weight(8, 64), scheme="w4a8_channel"), 99) is w4a8_gemm_per_channel
    assert select_backend("auto") in ("reference", "tvm", "triton")
    with pytest.raises(ValueError, match="backend 'cuda' is not known"):
        select_backend("cuda")


def test_native_triton_runs_one_row_of_a16_weights_on_the_dot_free_gemv(monkeypatch):
    """On a GPU (native Triton) one row of a w_a16 weight takes the dot-free GEMV (26.6 against 41.6 us at 8192²
    on the H200, FMA_GPU_MAX_M); two rows, the interpreter, other backends and W4A8 keep their kernels."""
    import lowbit.ops.linear as linear

    qw = quantize(weight(8, 64), "int4", 32)
    a8w = quantize(weight(8, 64), scheme="w4a8_group", group_size=32)
    assert select_kernel(qw, 1, adtype="float16", backend="triton") is quantized_gemv  # the interpreter here
    monkeypatch.setattr(linear, "native_triton", lambda: True)
    assert select_kernel(qw, 1, adtype="float16", backend="triton").name == "quantized_gemv_fma"
    assert select_kernel(qw, 2, adtype="float16", backend="triton") is quantized_gemv
    assert select_kernel(qw, 1, adtype="float16", backend="reference") is quantized_gemv
    assert select_kernel(a8w, 1, adtype="float16", backend="triton") is w4a8_gemm_per_group


def test_torch_batched_bias_out_and_config():
    qw = quantize(weight(24, 128), "uint4", 64)
    x = torch.randn(2, 3, 128, dtype=torch.bfloat16)
    bias = torch.linspace(-1, 1, 24)
    y = quantized_linear(x, qw, backend="reference", bias=bias)
    assert isinstance(y, torch.Tensor) and y.dtype == torch.bfloat16 and y.shape == (2, 3, 24)
    ref = reference(x.float().numpy(), qw) + bias.numpy()
    assert relative_error(y.float().numpy(), ref) <= 2 * bound(qw, 6, "bfloat16")
    out = np.zeros((5, 24), np.float16)
    x16 = activations((5, 128), "float16")
    forced = Config.make({"BM": 4, "BN": 16, "BK": 32})
    got = quantized_linear(x16, qw, backend="reference", out=out, config=forced)
    assert got is out and relative_error(out, reference(x16, qw)) <= bound(qw, 5, "float16")
    empty = quantized_linear(np.zeros((0, 128), np.float32), qw, backend="reference")
    assert empty.shape == (0, 24)


def test_unusual_group_size_falls_back_to_one_group_per_step():
    qw = quantize(weight(16, 120), "int4", 40)
    x = activations((2, 120), "float32")
    assert relative_error(quantized_linear(x, qw, backend="reference"), reference(x, qw)) <= 2e-5


@pytest.mark.parametrize("backend", ["reference", "tvm"])
@pytest.mark.parametrize("kind", ["numpy", "torch"])
def test_float64_x_runs_as_float32_and_returns_float64(backend, kind):
    """NumPy's default float: x rounded to float32 runs the kernels, y widened to float64 (with bias, out)."""
    if backend not in available_backends():
        pytest.skip(f"{backend} backend not installed")
    qw = quantize(weight(24, 256), "int3", 64)
    x = np.random.default_rng(3).standard_normal((2, 3, 256))
    b = np.random.default_rng(4).standard_normal(24)
    wrap = torch.from_numpy if kind == "torch" else np.asarray
    y = quantized_linear(wrap(x), qw, backend=backend)
    assert str(y.dtype).removeprefix("torch.") == "float64" and tuple(y.shape) == (2, 3, 24)
    assert relative_error(y, reference(x, qw)) <= 2e-6
    y32 = quantized_linear(wrap(x.astype(np.float32)), qw, backend=backend)
    assert np.array_equal(np.asarray(y), np.asarray(y32).astype(np.float64))  # the float32 run, widened
    out = wrap(np.empty((2, 3, 24)))
    assert quantized_linear(wrap(x), qw, backend=backend, bias=wrap(b), out=out) is out
    assert relative_error(out, reference(x, qw) + b) <= 2e-6
    with pytest.raises(ValueError, match=r"for float64 x pass a float64 .* of shape \[2, 3, 24\]"):
        quantized_linear(wrap(x), qw, backend=backend, out=wrap(np.empty((2, 3, 24), np.float32)))
    with pytest.raises(ValueError, match=r"bias has shape \[5\]; pass a \[24\] bias"):
        quantized_linear(wrap(x), qw, backend=backend, bias=np.zeros(5))


@pytest.mark.parametrize(
    "case,match",
    [
        ("k", r"x has shape \[3, 100\] but qweight has in_features K=128; pass x of shape \[\.\.\., 128\]"),
        ("dtype", r"x has dtype int32; activations must be one of \['float16', 'bfloat16', 'float32'\]"),
        ("strided_out", r"out is not contiguous.*out\.contiguous\(\)"),
        ("qweight", "qweight is a ndarray; build it with lowbit.ops.quantize"),
        ("bias", r"bias has shape \[7\]; pass a \[24\] bias"),
        ("out_shape", r"out has shape \[3, 7\]; it must be \[3, 24\]"),
        ("out_dtype", "out must have x's dtype float16"),
        ("backend", "backend 'gpu' is not known"),
        ("out_kind", "out is a torch tensor but x is a ndarray; pass out of x's kind"),
        ("config", r"config is a str \('abc'\); pass a lowbit.codegen.backend.Config"),
    ],
)
def test_validation_errors_name_the_field(case, match):
    qw = quantize(weight(24, 128), "int4", 32)
    x = activations((3, 128), "float16")
    kwargs: dict = {"backend": "reference"}
    if case == "k":
        x = activations((3, 100), "float16")
    elif case == "dtype":
        x = np.zeros((3, 128), np.int32)
    elif case == "strided_out":
        kwargs["out"] = np.zeros((24, 3), np.float16).T
    elif case == "qweight":
        qw = np.zeros((24, 128))
    elif case == "bias":
        kwargs["bias"] = np.zeros(7, np.float32)
    elif case == "out_shape":
        kwargs["out"] = np.zeros((3, 7), np.float16)
    elif case == "out_dtype":
        kwargs["out"] = np.zeros((3, 24), np.float32)
    elif case == "backend":
        kwargs["backend"] = "gpu"
    elif case == "out_kind":
        kwargs["out"] = torch.zeros((3, 24), dtype=torch.float16)
    elif case == "config":
        kwargs["config"] = "abc"
    with pytest.raises(ValueError, match=match):
        quantized_linear(x, qw, **kwargs)


@pytest.mark.parametrize("scheme", ["w_a16", "w4a8_group"])
def test_linear_problem_is_what_quantized_linear_runs(scheme):
    """A tuner's view (linear_problem + default_linear_config, compiled by hand) computes quantized_linear's y."""
    from lowbit.codegen.backend import compile_program
    from lowbit.ops.linear import default_linear_config, linear_problem

    qw = quantize(weight(24, 64), scheme=scheme, group_size=32)
    x = activations((3, 64), "float32", seed=5)
    kernel, fixed, args = linear_problem(qw, x, backend="reference")
    assert kernel is select_kernel(qw, 3) and args["M"] == 3
    cfg = default_linear_config(kernel, fixed, args, "reference")
    compile_program(kernel.trace(**fixed, **cfg.constant_dict), "reference", cfg.option_dict)(args)
    want = quantized_linear(x, qw, backend="reference")
    assert np.isfinite(want).all() and np.array_equal(args["y"], want)


@pytest.mark.parametrize("scheme", ["w_a16", "w4a8_group"])
def test_linear_problem_on_the_triton_launch_device_is_the_device_call(scheme, monkeypatch):
    """For torch x where Triton launches, the tuner's arguments are the device call's (the weight's device
    copy, y there): timing them converts nothing through NumPy, and they compute quantized_linear's y."""
    from lowbit.codegen.backend import compile_program
    from lowbit.codegen.triton import runtime
    from lowbit.ops.linear import default_linear_config, device_weight, linear_problem

    if "triton" not in available_backends():
        pytest.skip("triton is not installed")
    qw = quantize(weight(24, 64), scheme=scheme, group_size=32)
    x = torch.from_numpy(activations((3, 64), "float32", seed=5)).to(torch.float16).to(runtime.DEVICE)
    kernel, fixed, args = linear_problem(qw, x, backend="triton")
    assert args["w"] is device_weight(qw, x.device)["words"] and isinstance(args["y"], torch.Tensor)
    cfg = default_linear_config(kernel, fixed, args, "triton")
    monkeypatch.setattr(runtime, "_to_numpy", lambda a: pytest.fail("the tuner's call converted an argument"))
    compile_program(kernel.trace(**fixed, **cfg.constant_dict), "triton", cfg.option_dict)(args)
    want = quantized_linear(x, qw, backend="triton")
    assert torch.isfinite(want.float()).all() and torch.equal(args["y"], want)


@pytest.mark.parametrize(
    "M,N,K,adtype", [(1, 96, 256, torch.float32), (3, 64, 128, torch.bfloat16), (20, 40, 128, torch.float32)]
)
def test_tvm_torch_calls_take_the_bound_launcher_and_match_the_dict_call(M, N, K, adtype):
    """CPU torch activations on TVM run the weight's bound launcher (kept on the weight, column-tiled words);
    the result equals the same kernel called with converted arguments (a NumPy x), and a second call reuses
    the launcher."""
    from lowbit.ops.linear import cpu_weight

    rng = np.random.default_rng(M)
    qw = quantize(rng.standard_normal((N, K)).astype(np.float32), "int4", 64)
    x = torch.from_numpy(rng.standard_normal((M, K)).astype(np.float32)).to(adtype)
    y = quantized_linear(x, qw, backend="tvm")
    bound_keys = [k for k in qw.__dict__["_plans"] if k[0] == "bound"]
    assert bound_keys == [("bound", M, str(adtype).removeprefix("torch."), False)]
    assert cpu_weight(qw) is not qw and cpu_weight(qw).layout != qw.layout  # column-tiled copy
    x_np = x.float().numpy() if adtype == torch.float32 else None
    if x_np is not None:
        assert np.array_equal(y.numpy(), quantized_linear(x_np, qw, backend="tvm"))
    ref = x.double() @ torch.from_numpy(qw.dequantize()).double().T
    assert torch.isfinite(y).all() and relative_error(y.double().numpy(), ref.numpy()) < (
        1e-5 if adtype == torch.float32 else 2e-2
    )
    quantized_linear(x, qw, backend="tvm")
    assert [k for k in qw.__dict__["_plans"] if k[0] == "bound"] == bound_keys
    bias = torch.from_numpy(rng.standard_normal(N).astype(np.float32))
    out = torch.empty((M, N), dtype=adtype)
    got = quantized_linear(x, qw, backend="tvm", bias=bias, out=out)
    assert got is out and torch.equal(out, (y.float() + bias).to(adtype))
    if x_np is not None:  # the NumPy path adds the bias the same way
        assert np.array_equal(out.numpy(), quantized_linear(x_np, qw, backend="tvm", bias=bias.numpy()))


@pytest.mark.skipif("tvm" not in available_backends(), reason="tvm is not installed")
@pytest.mark.parametrize(
    "kernel,tiles", [(None, {"BM": 4, "BN": 16, "BK": 64}), ("quantized_gemm", None), ("quantized_gemv_fma", None)]
)
def test_tvm_torch_calls_with_a_config_or_a_named_kernel_take_a_bound_launcher(kernel, tiles):
    """A CPU torch call with `config=` or a named w_a16 kernel runs a bound launcher kept on the weight per
    (kernel, config), like a plain call (the dict call converted every argument: 1.4 against 0.58 ms at int3
    M = 16), computes what the same kernel and config compute from NumPy x, never enters the fast table (whose key
    holds neither), and a plain call afterwards still runs the default kernel."""
    from lowbit.ops.linear import _FAST, linear_problem

    rng = np.random.default_rng(3)
    qw = quantize(rng.standard_normal((40, 128)).astype(np.float32), "int3", 64)
    x = torch.from_numpy(rng.standard_normal((5, 128)).astype(np.float32))
    config = Config.make(tiles) if tiles else None
    got = quantized_linear(x, qw, backend="tvm", config=config, kernel=kernel)
    bound_keys = [k for k in qw.__dict__["_plans"] if k[0] == "bound"]
    assert bound_keys == [("bound", 5, "float32", False, kernel, config)]
    assert not qw.__dict__.get(_FAST)
    want = quantized_linear(x.numpy(), qw, backend="tvm", config=config, kernel=kernel)  # the dict call
    ref = x.double().numpy() @ qw.dequantize().astype(np.float64).T
    assert np.array_equal(got.numpy(), want) and relative_error(got.double().numpy(), ref) < 1e-5
    assert torch.equal(quantized_linear(x, qw, backend="tvm", config=config, kernel=kernel), got)
    assert [k for k in qw.__dict__["_plans"] if k[0] == "bound"] == bound_keys  # reused
    plain = quantized_linear(x, qw, backend="tvm")
    assert relative_error(plain.double().numpy(), ref) < 1e-5
    if tiles:  # another config compiled another kernel: the plain call's tiles are the space's default
        kern = linear_problem(qw, x, "tvm")[0]
        assert kern.name == "quantized_gemv" and ("bound", 5, "float32", False) in qw.__dict__["_plans"]
    with pytest.raises(ValueError, match="runs a plan of several kernels"):
        quantized_linear(x, qw, backend="tvm", kernel="quantized_gemv_a8", config=Config.make({"BM": 4}))
    if kernel is None:  # tune=True with the a8 plan runs it untuned (what `lowbit bench gemm --tune` times)
        q4 = quantize(rng.standard_normal((32, 128)).astype(np.float32), "int4", 64)
        y8 = quantized_linear(x, q4, backend="tvm", kernel="quantized_gemv_a8", tune=True)
        ref4 = x.double().numpy() @ q4.dequantize().astype(np.float64).T
        assert torch.isfinite(y8).all() and relative_error(y8.double().numpy(), ref4) < 2e-2


@pytest.mark.skipif("tvm" not in available_backends(), reason="tvm is not installed")
@pytest.mark.parametrize("wdtype,kernel", [("int4", None), ("int4", "quantized_gemv_a8"), ("int3", None)])
def test_repeated_torch_calls_take_the_fast_path_and_equal_the_checked_one(wdtype, kernel, monkeypatch):
    """A CPU torch call whose (backend, kernel, x dtype / shape / device) this weight has seen runs the
    remembered launch (`_FAST`) and returns a new tensor equal to the checked path's; anything else (bias, out,
    a strided x, another dtype, a subclass, a copied weight) takes the checked path, bad inputs still fail
    with their message, and the table stays bounded. The decode plans of several kernels (the a8 GEMV's,
    int3's x16 plan where the CPU has VNNI) run there through their `flat` launches."""
    import lowbit.ops.linear as L

    rng = np.random.default_rng(7)
    qw = quantize(rng.standard_normal((48, 128)).astype(np.float32), wdtype, 32)
    shapes = [(1, 128), (2, 3, 128), (128,), (5, 128)]
    xs = {s: torch.from_numpy(rng.standard_normal(s).astype(np.float32)).to(torch.bfloat16) for s in shapes}
    first = {s: quantized_linear(x, qw, backend="tvm", kernel=kernel) for s, x in xs.items()}
    table = qw.__dict__[L._FAST]
    assert {k[3] for k in table} == set(shapes) and all(k[1] == kernel for k in table)
    if wdtype == "int3" and "avx512_vnni" in isa_flags():  # one row of int3 codes and bf16 x: the x16 plan
        assert any(isinstance(k, tuple) and k[-1] == "x16" for k in plans(qw))

    def refuse(*args, **kwargs):
        raise AssertionError("the fast path ran the checked path")

    with monkeypatch.context() as mp:  # the checked path's dispatch would fail now: hits never reach it
        mp.setattr(L, "select_backend", refuse)
        again = {s: quantized_linear(x, qw, backend="tvm", kernel=kernel) for s, x in xs.items()}
    for s, y in again.items():
        assert y.shape == (*s[:-1], 48) and y.dtype == torch.bfloat16 and y is not first[s]
        assert torch.isfinite(y.float()).all() and torch.equal(y, first[s])
        ref = reference(xs[s].float().numpy(), qw)
        assert relative_error(y.float().numpy(), ref) < (1e-2 if kernel else 2e-2)
    x = xs[(5, 128)]
    bias = torch.from_numpy(rng.standard_normal(48).astype(np.float32))
    assert torch.equal(
        quantized_linear(x, qw, backend="tvm", kernel=kernel, bias=bias),
        (first[(5, 128)].float() + bias).to(torch.bfloat16),
    )
    strided = torch.from_numpy(rng.standard_normal((128, 10)).astype(np.float32)).to(torch.bfloat16).T[::2]
    assert torch.equal(
        quantized_linear(strided, qw, backend="tvm", kernel=kernel),
        quantized_linear(strided.contiguous(), qw, backend="tvm", kernel=kernel),
    )
    with pytest.raises(ValueError, match="in_features K=128"):
        quantized_linear(torch.zeros(1, 64, dtype=torch.bfloat16), qw, backend="tvm", kernel=kernel)
    with pytest.raises(ValueError, match="not known"):
        quantized_linear(x, qw, backend="tvmm", kernel=kernel)
    param = torch.nn.Parameter(x.float(), requires_grad=False)
    quantized_linear(param, qw, backend="tvm", kernel=kernel)
    assert not any(k[2] == torch.float32 and k[3] == (5, 128) for k in qw.__dict__[L._FAST])
    from lowbit.bench.gemm import _copy

    assert L._FAST not in _copy(qw).__dict__  # a copy in its own memory starts with no launches
    for m in range(17, L._FAST_MOST + 25):  # prompt lengths: the table starts again past _FAST_MOST keys
        quantized_linear(torch.zeros(m, 128, dtype=torch.bfloat16), qw, backend="tvm", kernel=kernel)
        assert len(qw.__dict__[L._FAST]) <= L._FAST_MOST


@pytest.mark.parametrize("backend", ["reference", "tvm"])
def test_strided_x_is_copied_not_refused(backend):
    """A non-contiguous x (a transposed or sliced view, NumPy or torch) gives the contiguous x's result."""
    if backend not in available_backends():
        pytest.skip(f"{backend} is not installed")
    qw = quantize(weight(24, 128), "int4", 32)
    base = activations((128, 6), "float32")
    views = [base.T[::2], torch.from_numpy(base).T[1::2]]
    for x in views:
        want = reference(np.ascontiguousarray(np.asarray(x)), qw)
        got = quantized_linear(x, qw, backend=backend)
        assert relative_error(np.asarray(got), want) <= 2e-5


@pytest.mark.parametrize(
    "scheme,name,G,M,adtype",
    [
        ("w_a16", "int4", 32, 3, torch.float16),
        ("w_a16", "fp4_e2m1", -1, 20, torch.bfloat16),
        ("w4a8_group", "uint4", 64, 20, torch.float16),
        ("w4a8_channel", "uint4", -1, 3, torch.float32),
    ],
)
def test_triton_torch_calls_stay_on_the_launch_device(scheme, name, G, M, adtype, monkeypatch):
    """Torch activations where the Triton backend launches (cuda natively, the CPU under the interpreter): the
    weight is copied there once and kept on it, nothing is converted through NumPy per call, and the result
    equals the NumPy call of the same kernel bit for bit (W4A8: the torch per-token quantizer is NumPy's)."""
    from lowbit.codegen.triton import runtime
    from lowbit.ops.linear import device_weight

    if "triton" not in available_backends():
        pytest.skip("triton is not installed")
    K = 256 if scheme == "w4a8_group" else 128
    qw = quantize(weight(40, K, M), name, G, scheme=scheme)
    xt = torch.from_numpy(activations((M, K), "float32", M)).to(adtype).to(runtime.DEVICE)
    x_np = xt.float().cpu().numpy().astype(HOST[str(adtype).removeprefix("torch.")])
    expected = quantized_linear(x_np, qw, backend="triton")

    def no_conversion(a):
        raise AssertionError("a device call converted an argument through NumPy")

    with monkeypatch.context() as m:
        m.setattr(runtime, "_to_numpy", no_conversion)
        y = quantized_linear(xt, qw, backend="triton")
        arrays = device_weight(qw, xt.device)
        again = quantized_linear(xt, qw, backend="triton")
    assert device_weight(qw, xt.device) is arrays and torch.equal(y, again)
    assert isinstance(y, torch.Tensor) and y.dtype == adtype and y.device == xt.device and y.shape == (M, 40)
    assert torch.isfinite(y.float()).all()
    assert np.array_equal(y.float().cpu().numpy(), np.asarray(expected, np.float32))


@settings(max_examples=25)
@given(
    M=st.integers(1, 6),
    K=st.integers(1, 70),
    scale=st.sampled_from([0.0, 1e-9, 1e-3, 1.0, 1e6]),
    seed=st.integers(0, 2**16),
)
def test_torch_per_token_quantizer_is_numpys(M, K, scale, seed):
    from lowbit.ops.linear import quantize_per_token_int8_torch
    from lowbit.quant import quantize_per_token_int8

    x = (np.random.default_rng(seed).standard_normal((M, K)) * scale).astype(np.float32)
    x[0] = 0.0  # an all-zero row: scale 1
    qa, sa = quantize_per_token_int8(x)
    qt, st_ = quantize_per_token_int8_torch(torch.from_numpy(x))
    assert qt.dtype == torch.int8 and st_.dtype == torch.float16
    assert np.array_equal(qt.numpy(), qa) and np.array_equal(st_.numpy(), sa)


def test_triton_linear_launcher_binds_the_device_weight(monkeypatch):
    """The executor's bound launcher on triton reads the weight's device copy: a call converts nothing and
    equals quantized_linear's."""
    from lowbit.codegen.triton import runtime
    from lowbit.ops.linear import linear_launcher

    if "triton" not in available_backends():
        pytest.skip("triton is not installed")
    qw = quantize(weight(40, 128, 5), "int4", 64, symmetric=False)
    x = torch.from_numpy(activations((4, 128), "float32", 5)).to(torch.float16)
    launch = linear_launcher(qw, 4, "triton", "float16")
    y = torch.empty((4, 40), dtype=torch.float16)

    def no_conversion(a):
        raise AssertionError("the bound launcher converted an argument through NumPy")

    monkeypatch.setattr(runtime, "_to_numpy", no_conversion)
    launch(x, y)
    assert torch.isfinite(y.float()).all() and torch.equal(y, quantized_linear(x, qw, backend="triton"))


@pytest.mark.parametrize("scheme,G", [("w4a8_group", 64), ("w4a8_channel", -1)])
def test_triton_int8_activations_stay_on_the_launch_device(scheme, G, monkeypatch):
    """`quantized_linear_int8` (the W4A8 executor's call: activations already quantized per token) on torch
    tensors where Triton launches: no conversion through NumPy, the result and the bias equal the NumPy
    call's bit for bit, and both agree with the reference backend."""
    from lowbit.codegen.triton import runtime
    from lowbit.ops.linear import quantized_linear_int8
    from lowbit.quant import quantize_per_token_int8

    if "triton" not in available_backends():
        pytest.skip("triton is not installed")
    qw = quantize(weight(40, 256, 7), scheme=scheme, group_size=G)
    qa, sa = quantize_per_token_int8(activations((5, 256), "float32", 7))
    bias = np.linspace(-1, 1, 40).astype(np.float32)
    expected = quantized_linear_int8(qa, sa, qw, out_dtype="float16", backend="triton", bias=bias)
    reference_y = quantized_linear_int8(qa, sa, qw, out_dtype="float16", backend="reference", bias=bias)

    def no_conversion(a):
        raise AssertionError("a device call converted an argument through NumPy")

    xq, sx = torch.from_numpy(qa).to(runtime.DEVICE), torch.from_numpy(sa).to(runtime.DEVICE)
    with monkeypatch.context() as m:
        m.setattr(runtime, "_to_numpy", no_conversion)
        y = quantized_linear_int8(xq, sx, qw, out_dtype="float16", backend="triton", bias=torch.from_numpy(bias))
    assert isinstance(y, torch.Tensor) and y.dtype == torch.float16 and y.shape == (5, 40)
    assert np.array_equal(y.float().cpu().numpy(), expected.astype(np.float32))
    assert relative_error(expected, reference_y) <= 1e-3
    with pytest.raises(ValueError, match="expected int8"):
        quantized_linear_int8(xq.float(), sx, qw, backend="triton")


def test_triton_launches_drop_the_masks_of_sizes_their_tiles_divide():
    from lowbit.codegen.backend import Config
    from lowbit.ops.linear import inbounds_option

    cfg = Config.make({"BM": 16, "BN": 32, "BK": 256}, {"num_warps": 4})
    assert inbounds_option(cfg, {"M": 1, "N": 8192, "K": 8192}, "triton") == {"inbounds": ("N", "K")}
    assert inbounds_option(cfg, {"M": 32, "N": 8200, "K": 8192}, "triton") == {"inbounds": ("M", "K")}
    assert inbounds_option(cfg, {"M": 32, "N": 8192, "K": 8192}, "tvm") == {}
    pinned = Config.make(cfg.constant_dict, {"inbounds": ()})
    assert inbounds_option(pinned, {"M": 16, "N": 64, "K": 256}, "triton") == {}  # the config's own choice stays


@pytest.mark.gpu
@pytest.mark.parametrize("wdtype", ["int4", "uint3", "int2", "int8", "fp4_e2m1", "fp6_e3m2"])
@pytest.mark.parametrize("m, n, k", [(1, 256, 512), (16, 384, 1024), (64, 256, 512), (37, 200, 384), (300, 512, 256)])
def test_quantized_linear_on_cuda_equals_numpy(wdtype, m, n, k):
    # the GPU path as a user calls it: the kernel ops picks, its gpu_default tiles, the inbounds option where
    # the tiles divide (ragged n = 200 and m = 37 keep their masks), x and y on the device
    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA GPU")
    rng = np.random.default_rng(m * 7 + n)
    qw = quantize((rng.standard_normal((n, k)) * 0.02).astype(np.float32), wdtype, 128)
    x = torch.randn(m, k, dtype=torch.float16, device="cuda")
    y = quantized_linear(x, qw, backend="triton")
    assert y.device.type == "cuda" and y.dtype == torch.float16 and y.shape == (m, n)
    assert relative_error(y.double().cpu().numpy(), reference(x.float().cpu().numpy(), qw)) <= bound(qw, m, "float16")


@pytest.mark.gpu
@pytest.mark.parametrize("m", [1, 64, 1024])
def test_w4a8_on_cuda_equals_numpy(m):
    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA GPU")
    rng = np.random.default_rng(m)
    qw = quantize((rng.standard_normal((384, 512)) * 0.02).astype(np.float32), "uint4", 128, scheme="w4a8_group")
    x = torch.randn(m, 512, dtype=torch.float16, device="cuda")
    y = quantized_linear(x, qw, backend="triton")
    assert relative_error(y.double().cpu().numpy(), reference(x.float().cpu().numpy(), qw)) <= bound(qw, m, "float16")


@pytest.mark.parametrize("backend", [b for b in ("reference", "tvm") if b in available_backends()])
@pytest.mark.parametrize("name,M", [("int1", 1), ("uint1", 1), ("int1", 20)])
def test_per_channel_zeros_where_most_codes_sit_at_the_zero(backend, name, M):
    """1-bit per-channel weights with zeros quantize Gaussian weights to mostly the zero code, so y is ~50x
    smaller than both p = Σ x·q and asum·z: the GEMV takes their difference per K tile (`quantized_gemv`), not
    once over all of K, where the fp32 sums' errors reached 1.0e-4 of y at K = 4096 (TVM, fp32 x)."""
    K = 4096
    qw = quantize(weight(64, K, 7), name, -1, symmetric=False, zero_mode="post")
    x = activations((M, K), "float32", 7)
    ref = reference(x, qw)
    assert np.abs(x.astype(np.float64)).sum(1).mean() > 30 * np.abs(ref).mean()  # the cancellation is there
    err = relative_error(quantized_linear(x, qw, backend=backend), ref)
    assert err <= bound(qw, M, "float32"), f"{name} M={M} {backend}: {err}"


@pytest.mark.skipif(
    "tvm" not in available_backends() or "avx512_vnni" not in isa_flags(), reason="the x16 plan needs TVM and VNNI"
)
@pytest.mark.parametrize(
    "name,G,M,adtype,zero",
    [
        ("int3", 128, 1, "bfloat16", "default"),
        ("uint2", 64, 3, "float16", "post"),
        ("int2", 32, 4, "bfloat16", "pre"),
        ("int4", 128, 2, "bfloat16", "default"),
        ("int4", 64, 4, "float16", "default"),
        ("uint4", 128, 6, "bfloat16", "post"),
        ("int3", 64, 13, "float16", "pre"),
    ],
)
def test_tvm_narrow_codes_with_16_bit_x_take_the_x16_plan(name, G, M, adtype, zero):
    """CPU torch bf16 / fp16 x with 2-4-bit integer codes runs `lowbit.ops.x16` (x in two int8 planes; past 4
    rows in row tiles of 4, the last one ragged): within the GEMV bound of the oracle, activations below 1
    included (a scale clamped at 1 once made every such group wrong), and a NaN in a row gives a NaN row and
    leaves the others, those of later row tiles too, bit for bit."""
    kwargs = {} if zero == "default" else dict(symmetric=False, zero_mode=zero)
    qw = quantize(weight(96, 256, M), name, G, **kwargs)
    for magnitude in (0.02, 3.0):
        x = torch.from_numpy(activations((M, 256), "float32", M) * magnitude).to(getattr(torch, adtype))
        y = quantized_linear(x, qw, backend="tvm")
        assert y.dtype == x.dtype and tuple(y.shape) == (M, 96)
        err = relative_error(y.float().numpy(), reference(x.float().numpy(), qw))
        assert err <= bound(qw, M, adtype), f"{name} M={M} {adtype} x{magnitude}: {err}"
    assert any(key[-1] == "x16" for key in plans(qw))
    bad = x.clone()
    nan_rows = [0] + ([M - 1] if M > 4 else [])  # and one in the last (ragged) row tile
    bad[nan_rows, 7] = float("nan")
    yb = quantized_linear(bad, qw, backend="tvm")
    keep = [r for r in range(M) if r not in nan_rows]
    assert torch.isnan(yb[nan_rows].float()).all() and torch.equal(yb[keep], y[keep])


@pytest.mark.skipif(
    "tvm" not in available_backends() or "avx512_vnni" not in isa_flags(), reason="the x16 plan needs TVM and VNNI"
)
def test_x16_plan_records_both_calls_for_replay_and_keeps_scratch_per_thread():
    """`X16Plan.flat` calls its two compiled functions on per-thread argument lists: a decode step being recorded
    (`RECORDING`) gets both calls, whose replay on new values in the same x buffer gives the new y; threads
    running the plan at once (the nano-batch executor's row ranges) do not share x's planes."""
    import threading

    from lowbit.codegen.tvm.runtime import RECORDING
    from lowbit.ops.x16 import x16_plan

    qw = quantize(weight(96, 256, 1), "int2", 64)
    plan = x16_plan(qw, 1, "bfloat16")
    x = torch.from_numpy(activations((1, 256), "float32", 1)).bfloat16()
    y = torch.empty(1, 96, dtype=torch.bfloat16)
    RECORDING.calls, RECORDING.names = [], []
    try:
        plan.run(x, y)
        calls, names = RECORDING.calls, RECORDING.names
    finally:
        RECORDING.calls = RECORDING.names = None
    assert len(calls) == 2 and names == ["quantize_groups_x16", "quantized_gemv_x16"]
    assert torch.equal(y, quantized_linear(x, qw, backend="tvm"))
    first = y.clone()
    x.copy_(x * 2 + 0.5)
    for fn, args in calls:
        fn(*args)
    assert torch.equal(y, quantized_linear(x, qw, backend="tvm")) and not torch.equal(y, first)
    xs = [torch.from_numpy(activations((1, 256), "float32", 10 + i)).bfloat16() for i in range(4)]
    want = [quantized_linear(xi, qw, backend="tvm") for xi in xs]
    got = [torch.empty(1, 96, dtype=torch.bfloat16) for _ in xs]

    def work(i: int) -> None:
        for _ in range(50):
            plan.run(xs[i], got[i])

    threads = [threading.Thread(target=work, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert all(torch.equal(g, w) for g, w in zip(got, want))


@pytest.mark.skipif("tvm" not in available_backends(), reason="tvm is not installed")
@pytest.mark.parametrize("name", ["int4", "int3", "int8", "fp4_e2m1", "uint2"])
@pytest.mark.parametrize("adtype", ["bfloat16", "float32"])
def test_ragged_n_runs_on_a_padded_copy_within_the_bound(name, adtype):
    """N not a multiple of CPU_PAD_N: the TVM launcher runs a copy padded to one (`PaddedLaunch`: the kernels'
    partial last tile would take their masked scalar form), kept on the weight, and y holds the first N columns:
    within the oracle's bound at GEMV and GEMM row counts, and equal to the unpadded NumPy-path call."""
    from lowbit.ops.linear import CPU_PAD_N, PaddedLaunch, bound_launcher

    qw = quantize(weight(300, 256, 3), name, 64)
    for m in (1, 3, 20):
        x = torch.from_numpy(activations((m, 256), "float32", m)).to(getattr(torch, adtype))
        y = quantized_linear(x, qw, backend="tvm")
        assert tuple(y.shape) == (m, 300) and y.dtype == x.dtype
        err = relative_error(y.float().numpy(), reference(x.float().numpy(), qw))
        assert err <= bound(qw, m, adtype), f"{name} M={m} {adtype}: {err}"
        launch = bound_launcher(qw, m, adtype)
        assert isinstance(launch, PaddedLaunch) and launch.n_pad % CPU_PAD_N == 0 and launch.n_pad >= 300
        y2 = torch.empty(m, 300, dtype=x.dtype)
        launch(x, y2)
        assert torch.equal(y2, y)
    assert qw.shape == (300, 256) and qw.__dict__[f"_cpu_padded_{adtype}"].shape == (512, 256)


@pytest.mark.skipif("tvm" not in available_backends(), reason="tvm is not installed")
def test_padded_launch_records_its_copy_for_replay():
    """A decode step being recorded gets the padded kernel's call and then the copy of its first N columns: the
    replay on new values in the same x buffer gives the new y in the caller's buffer."""
    from lowbit.codegen.tvm.runtime import RECORDING
    from lowbit.ops.linear import bound_launcher

    qw = quantize(weight(100, 128, 5), "int4", 64)
    launch = bound_launcher(qw, 1, "float32")
    x = torch.from_numpy(activations((1, 128), "float32", 4))
    y = torch.empty(1, 100)
    RECORDING.calls, RECORDING.names = [], []
    try:
        launch(x, y)
        calls, names = RECORDING.calls, RECORDING.names
    finally:
        RECORDING.calls = RECORDING.names = None
    # the kernel's call(s) (the x16 plan's two where it serves), then the copy
    assert len(calls) == len(names) >= 2 and names[-1] == "padded columns' copy (torch)"
    assert torch.equal(y, quantized_linear(x, qw, backend="tvm"))
    x.copy_(x * 2 + 0.5)
    y.zero_()
    for fn, args in calls:
        fn(*args)
    assert torch.equal(y, quantized_linear(x, qw, backend="tvm")) and y.abs().sum() > 0


def test_x16_serves_bf16_x_up_to_its_row_limit_and_fp16_and_fp32_x_at_any_rows():
    """`x16_serves` for 4-bit codes, with or without zeros (measured faster there): bfloat16 x up to X16_MAX_M
    rows (past it the bf16 GEMM forms win) but one row where the CPU has the bf16 pair GEMV (it streams faster
    there), float16 and float32 x (three planes) at any rows (the float kernels multiply in fp32 on a CPU
    without AVX-512 FP16); float32 x not where the int8 dot is AMX's (not measured there); no rows or a CPU
    without VNNI keep the other kernels. 2- and 3-bit codes take x16 at one row too."""
    from lowbit.artifact.fingerprint import isa_flags
    from lowbit.ops.x16 import X16_MAX_M, x16_serves

    sym = quantize(weight(64, 128, 2), "int4", 64)
    post = quantize(weight(64, 128, 2), "uint4", 64, symmetric=False, zero_mode="post")
    one = "avx512_bf16" not in isa_flags()
    for qw in (sym, post):
        rows = (0, 1, 2, 4, 5, X16_MAX_M, X16_MAX_M + 1)
        assert [x16_serves(qw, m, "bfloat16", "vnni") for m in rows] == [False, one, True, True, True, True, False]
        assert [x16_serves(qw, m, "float16", "vnni") for m in (1, 5, X16_MAX_M + 1, 4096)] == [True] * 4
    assert x16_serves(sym, 2, "float16", "amx") and not x16_serves(sym, 2, "float32", "amx")
    assert all(x16_serves(sym, m, "float32", "vnni") for m in (1, 2, X16_MAX_M + 1, 4096))
    assert not x16_serves(post, 2, "bfloat16", "none")
    assert all(x16_serves(quantize(weight(64, 128, 2), dt, 64), 1, "bfloat16", "vnni") for dt in ("int2", "int3"))
