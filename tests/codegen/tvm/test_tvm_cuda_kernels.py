"""Every library kernel through the TVM backend's CUDA lowering: the kernel and ops tests of the CPU TVM backend
run again, verbatim, with their oracles, while `compile_program(..., "tvm")` builds for CUDA (option target
"cuda", NVRTC compiles the CUDA C for sm_90) and runs the result's own TVMScript on the CPU (`simulate`)."""

from __future__ import annotations

import functools
import importlib.util
import pathlib
import sys

import numpy as np
import pytest

import lowbit.codegen.backend as backend_module

TESTS = pathlib.Path(__file__).resolve().parents[2]
_CUBINS: set[str] = set()


def _module(relpath: str):
    """A test module of the suite by path (they are not a package); cached in sys.modules under its path."""
    name = "cuda_lowering__" + relpath.replace("/", "__").removesuffix(".py")
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, TESTS / relpath)
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)
    return sys.modules[name]


@pytest.fixture
def tvm_runs_cuda_code(monkeypatch):
    """compile_program(program, "tvm", options) -> the CUDA build's CPU simulation; each distinct kernel is
    also compiled to an sm_90 cubin once. The kernel caches of the ops (the launchers' `_COMPILED` dicts,
    attention's lru caches) are swapped for empty ones during the test, so it never runs a CPU kernel built
    before it, and no later test runs one of its simulations; the test must have built at least one."""
    from lowbit.kernels import activation, kv_append, norm, rope
    from lowbit.ops import attention

    real = backend_module._compile_cached.__wrapped__
    built: list[str] = []

    @functools.cache
    def compile_cuda(program, backend, options):
        if backend != "tvm":
            return real(program, backend, options)
        kernel = real(program, "tvm", tuple(sorted({**dict(options), "target": "cuda"}.items())))
        if kernel.source not in _CUBINS:
            assert kernel.cubin()[:4] == b"\x7fELF"
            # launchable without TVM's CUDA runtime: every device parameter is one of the program's arguments
            entry = kernel.driver_launch().entry
            assert sorted(p.arg for p in entry.params) == sorted(kernel.arg_names)
            _CUBINS.add(kernel.source)
        built.append(program.name)
        return kernel.simulate()

    monkeypatch.setattr(backend_module, "_compile_cached", compile_cuda)
    for module in (activation, kv_append, norm, rope):
        monkeypatch.setattr(module, "_COMPILED", {})
    for name in ("_compiled_cached", "_persistent_cached"):
        cached = getattr(attention, name)
        monkeypatch.setattr(attention, name, functools.lru_cache(maxsize=None)(cached.__wrapped__))
    yield
    assert built, "no kernel was built for CUDA: the test ran cached CPU kernels"


def test_rms_norm(tvm_runs_cuda_code):
    norm = _module("kernels/test_norm.py")
    norm.test_launchers("tvm")
    for dm, tiles, fused, adtype in norm.CASES[2:4]:  # one ragged tile, two passes of a ragged chunk
        norm.test_rms_norm_matches_references("tvm", dm, tiles, fused, adtype)


def test_rope(tvm_runs_cuda_code):
    rope = _module("kernels/test_rope.py")
    rope.test_apply_rope_launcher("tvm")
    rope.test_rope_in_place("tvm")


@pytest.mark.parametrize("kv_dtype", ["int4", "fp8_e4m3"])
def test_kv_append(tvm_runs_cuda_code, kv_dtype):
    _module("kernels/test_kv_append.py").test_append_kv_launcher("tvm", kv_dtype)


def test_silu_mul(tvm_runs_cuda_code):
    silu = _module("kernels/test_silu_mul.py")
    for dtype in ("float32", "bfloat16"):
        silu.test_silu_mul_matches_float64("tvm", dtype, 3, 1500)


def test_gemv_a8(tvm_runs_cuda_code):
    a8 = _module("kernels/test_gemv_a8.py")
    a8.test_quantize_groups_matches_formula_and_zero_pads("tvm")
    for case in a8.CASES[1:3]:
        a8.test_gemv_a8_equals_its_fp64_formula("tvm", *case, 1)
    a8.test_gemv_a8_equals_its_fp64_formula("tvm", *a8.CASES[1], 2)  # two column tiles (a CPU decode form)
    a8.test_regroup_lays_out_per_token_codes_as_the_quantizer_does("tvm", 3, 4, 64, 4)
    for kind in ("halves", "nonfinite"):
        a8.check_token_quantizer("tvm", 3, 2, 64, 4, kind, "bfloat16", 5)
        a8.check_row_quantizer("tvm", 3, 200, 1, 128, kind, "float32", 5)


def test_decode_attention(tvm_runs_cuda_code):
    _module("ops/test_ops_attention.py").test_decode_equals_the_float64_reference("tvm")


@pytest.mark.parametrize("causal,dt", [(True, "float32"), (False, "float16")])
def test_prefill_attention(tvm_runs_cuda_code, causal, dt):
    # sequences of <= 16 tokens: the CPU's tiles for longer ones (up to 128 query rows) need more than the 48 KiB
    # of static shared memory a block has
    t = _module("ops/test_ops_attention.py")
    rng = np.random.default_rng(7)
    cu = np.array([0, 5, 5, 16], np.int32)  # an empty sequence, ragged tiles
    q, k, v = (rng.standard_normal((16, h, 64)).astype(dt) for h in (4, 2, 2))
    out = t.prefill_attention(q, k, v, cu, causal=causal, backend="tvm")
    assert out.dtype == np.dtype(dt)
    assert t.rel(out, t.prefill_reference(q, k, v, cu, causal=causal)) < (t.FP32_BOUND if dt == "float32" else 2e-3)
