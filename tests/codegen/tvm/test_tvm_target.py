"""The CPU target (`runtime.cpu_target`) and the x86 forms `resolve_options` picks for a target: what the
target can encode (mcpu + mattr), never /proc/cpuinfo alone. A VM whose CPUID model makes LLVM read an older
CPU than it runs on (mcpu "rocketlake" on a Sapphire Rapids with AVX-512 BF16) aborted the process inside
LLVM when a bf16 kernel emitted vdpbf16ps for a target without the feature."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import tvm

from lowbit.artifact.fingerprint import isa_flags
from lowbit.codegen.backend import BackendError
from lowbit.codegen.tvm import runtime
from lowbit.kernels.gemv import quantized_gemv
from lowbit.kernels.layouts import column_tiled
from lowbit.ops import quantize
from lowbit.ops.weight import retile_columns

# AVX-512 F/BW/VL and VNNI, no BF16: what LLVM reads on an older CPU, or on a VM that names one
NO_BF16 = tvm.target.Target({"kind": "llvm", "mcpu": "cascadelake", "num-cores": 1})
needs_avx512 = pytest.mark.skipif("avx512f" not in isa_flags(), reason="runs AVX-512 code on this CPU")


def test_cpu_target_encodes_every_feature_the_cpu_lists():
    target = runtime.cpu_target()
    has = tvm.target.codegen.llvm_cpu_has_features
    listed = [f for f in isa_flags() if f in runtime._LLVM_FEATURES]
    assert listed == [] or "avx2" in listed or "avx512f" in listed or "fma" in listed
    for flag in listed:
        assert has([runtime._LLVM_FEATURES[flag]], target), (flag, str(target))
    assert "avx512fp16" not in str(target)  # native half arithmetic would change results


def test_auto_forms_follow_the_target_not_the_cpu():
    opts = {"int8_dot": "auto", "bf16_dot": "auto", "lut": "auto", "vector": 16}
    got = runtime.resolve_options(opts, NO_BF16)
    assert got["bf16_dot"] == "none"
    assert got["int8_dot"] == "vnni" and got["lut"] == "avx512"
    generic = tvm.target.Target({"kind": "llvm", "mcpu": "x86-64", "num-cores": 1})  # SSE2 only
    got = runtime.resolve_options(opts, generic)
    assert (got["int8_dot"], got["bf16_dot"], got["lut"]) == ("none", "none", "none")


@pytest.mark.parametrize(
    "name,form,feature",
    [
        ("bf16_dot", "avx512bf16", "avx512bf16"),
        ("bf16_dot", "amx", "amx-bf16"),
        ("int8_dot", "vnni", "avx512vnni"),
        ("int8_dot", "amx", "amx-int8"),
        ("multishift", "avx512vbmi", "avx512vbmi"),
    ],
)
def test_an_explicit_form_the_target_lacks_is_a_clear_error(name, form, feature):
    generic = tvm.target.Target({"kind": "llvm", "mcpu": "x86-64", "num-cores": 1})
    with pytest.raises(BackendError, match=rf'{name}="{form}" needs the LLVM feature {feature}.*"auto"'):
        runtime.resolve_options({name: form}, generic)


@needs_avx512
def test_bf16_gemv_builds_and_is_exact_for_a_target_without_avx512_bf16():
    """The kernel that aborted the process: a bf16 4-bit GEMV for a target without the bf16 dot. It builds
    with the fp32 form and matches the fp64 x @ dequant(W) to fp32 accumulation and one bf16 rounding."""
    M, N, K, G = 2, 64, 256, 128
    rng = np.random.default_rng(3)
    qw = quantize(rng.standard_normal((N, K)).astype(np.float32), "int4", G)
    tiled = retile_columns(qw, 64, pairs=True)
    assert tiled.layout == column_tiled((K, N), 4, 64, pairs=True)
    consts = dict(wdtype="int4", G=G, zero_mode=qw.zero_mode, adtype="bfloat16", sdtype=str(qw.scales.dtype))
    consts.update(wlayout=tiled.layout, BM=M, BN=64, BK=G)
    kernel = runtime.compile_tvm(quantized_gemv.trace(**consts), {"tm": 4, "vector": 16}, NO_BF16)
    x = torch.from_numpy(rng.standard_normal((M, K)).astype(np.float32)).bfloat16()
    y = torch.full((M, N), float("nan"), dtype=torch.bfloat16)
    kernel(dict(x=x, w=tiled.words, scales=qw.scales, zeros=np.zeros_like(qw.scales), y=y, M=M, N=N, K=K))
    ref = x.double().numpy() @ qw.dequantize().astype(np.float64).T
    got = y.double().numpy()
    assert np.isfinite(got).all()
    err = float(np.linalg.norm(got - ref) / np.linalg.norm(ref))
    assert err < 2.0**-8 + 1e-5, err


def test_auto_picks_amx_where_the_target_has_it_and_linux_grants_it():
    sapphire = tvm.target.Target({"kind": "llvm", "mcpu": "sapphirerapids", "num-cores": 1})
    got = runtime.resolve_options({"int8_dot": "auto", "bf16_dot": "auto"}, sapphire)
    assert got["int8_dot"] == ("amx" if runtime.amx_permitted() else "vnni")
    assert got["bf16_dot"] == ("amx" if runtime.amx_permitted() else "avx512bf16")
    assert runtime.resolve_options({"bf16_dot": "auto"}, NO_BF16)["bf16_dot"] == "none"
    assert runtime.resolve_options({"int8_dot": "auto"}, NO_BF16)["int8_dot"] == "vnni"  # no AMX in its mcpu
    if "amx_int8" in isa_flags():
        assert runtime.amx_permitted()  # Linux >= 5.16 grants it; the AMX kernels are then tested for real


def test_auto_multishift_follows_the_target():
    """vpmultishiftqb (AVX-512 VBMI) is picked where the target encodes it: Sapphire Rapids has it, Cascade
    Lake (AVX-512 without VBMI) does not, and a GPU build never does."""
    sapphire = tvm.target.Target({"kind": "llvm", "mcpu": "sapphirerapids", "num-cores": 1})
    assert runtime.resolve_options({"multishift": "auto"}, sapphire)["multishift"] == "avx512vbmi"
    assert runtime.resolve_options({"multishift": "auto"}, NO_BF16)["multishift"] == "none"
    assert runtime.resolve_options({"multishift": "avx512vbmi"}, runtime.cuda_target())["multishift"] == "none"
