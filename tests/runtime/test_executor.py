"""The executor runs the op graph through the kernels and matches the float64 reference model: unfused and
optimized graphs, a whole prompt and token-by-token decode over the paged cache, quantized weights against the
reference evaluated with the same dequantized weights, and mixed prefill + decode batches."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
from runtime_oracle import dequantized_overrides

from lowbit.artifact.fingerprint import isa_flags
from lowbit.codegen.backend import available_backends
from lowbit.compiler.quantize import quantize_params
from lowbit.config.spec import LinearSpec
from lowbit.graph import PassContext, build_graph, optimize
from lowbit.kernels.layouts import column_tiled, plane_layout
from lowbit.models import ArchConfig
from lowbit.models.reference import reference_logits
from lowbit.models.synthetic import synthetic_weights
from lowbit.ops.weight import QuantizedWeight
from lowbit.ops.x16 import X16_BN, x16_serves
from lowbit.runtime.batch import SeqChunk
from lowbit.runtime.runner import ModelRunner

ARCH = ArchConfig(
    model_type="llama", vocab_size=256, hidden_size=64, intermediate_size=128, num_layers=2, num_heads=4,
    num_kv_heads=2, head_dim=16, max_position_embeddings=128,
)  # fmt: skip
# every linear's N a multiple of 256 (CPU_PAD_N): no padded copies
WIDE = dataclasses.replace(ARCH, hidden_size=256, intermediate_size=512, num_layers=1, head_dim=64)


def rel(a: np.ndarray, b: np.ndarray) -> float:
    err = float(np.linalg.norm(a - b) / np.linalg.norm(b))
    assert np.isfinite(err)
    return err


def runner(arch, weights, *, spec=None, fused=True, kv="float16", backend="tvm", dtype="float32"):
    g = build_graph(arch)
    if fused or spec is not None:
        ctx = PassContext(arch=arch, resolve=lambda m: spec, backend=backend, dtype=dtype, kv_dtype=kv)
        g = optimize(g, ctx)
    params = quantize_params(g, weights, tied=arch.tie_word_embeddings, dtype=torch.float32)
    return ModelRunner(arch, g, params, kv_dtype=kv, dtype=dtype, backend=backend, max_model_len=128), params


@pytest.fixture(scope="module")
def weights():
    return synthetic_weights(ARCH, 0)


@pytest.mark.parametrize("fused", [False, True])
def test_prompt_logits_match_float64_reference(weights, fused):
    ids = np.random.default_rng(1).integers(0, ARCH.vocab_size, (1, 24))
    ref = reference_logits(ARCH, weights, ids)[0]
    r, _ = runner(ARCH, weights, fused=fused)
    assert rel(r.logits(ids[0].tolist()).numpy(), ref) < 1e-5


@pytest.mark.parametrize("kv, bound", [("float32", 1e-5), ("float16", 2e-5), ("int8", 2e-2), ("int4", 2e-1)])
def test_decode_over_the_paged_cache(weights, kv, bound):
    ids = np.random.default_rng(2).integers(0, ARCH.vocab_size, 20)
    ref = reference_logits(ARCH, weights, ids[None])[0]
    r, _ = runner(ARCH, weights, kv=kv)
    table: list[int] = []
    r.cache.grow(table, 20)
    rows = [r.step([SeqChunk(0, tuple(ids[:8].tolist()), 0, tuple(table))], all_logits=True).numpy()]
    for j in range(8, 20):  # token by token: attention reads the (quantized) cache
        rows.append(r.step([SeqChunk(0, (int(ids[j]),), j, tuple(table))]).numpy())
    assert rel(np.concatenate(rows), ref) < bound


def test_mixed_batch_and_chunked_prefill_equal_separate_runs(weights):
    rng = np.random.default_rng(3)
    a, b = rng.integers(0, ARCH.vocab_size, 13), rng.integers(0, ARCH.vocab_size, 9)
    ra, rb = (reference_logits(ARCH, weights, s[None])[0] for s in (a, b))
    r, _ = runner(ARCH, weights)
    ta: list[int] = []
    tb: list[int] = []
    r.cache.grow(ta, 13)
    r.cache.grow(tb, 9)
    # step 1: a's first 6 tokens (prefill) + b whole (prefill); step 2: a's last 7 tokens as a chunk over the cache
    first = r.step([SeqChunk(0, tuple(a[:6].tolist()), 0, tuple(ta)), SeqChunk(1, tuple(b.tolist()), 0, tuple(tb))],
                   all_logits=True).numpy()  # fmt: skip
    second = r.step([SeqChunk(0, tuple(a[6:].tolist()), 6, tuple(ta))], all_logits=True).numpy()
    assert rel(np.concatenate([first[:6], second]), ra) < 2e-5
    assert rel(first[6:], rb) < 1e-5


@pytest.mark.parametrize(
    "spec",
    [LinearSpec("rtn", "int4", 32, "none"), LinearSpec("rtn", "uint3", 32, "post"),
     LinearSpec("rtn", "fp6_e3m2", 64, "none"), LinearSpec("rtn", "uint4", 32, "post", "w4a8_group")],
    ids=lambda s: s.describe(),
)  # fmt: skip
def test_quantized_model_equals_reference_with_dequantized_weights(weights, spec):
    ids = np.random.default_rng(4).integers(0, ARCH.vocab_size, (1, 16))
    r, params = runner(ARCH, weights, spec=spec)
    overrides = dequantized_overrides(ARCH, weights, r.executor.graph, params)
    assert overrides, "the recipe quantized nothing"
    ref = reference_logits(ARCH, weights, ids, overrides=overrides)[0]
    bound = 3e-2 if spec.act_int8 else 1e-4  # W4A8 also rounds the activations to int8 per token
    assert rel(r.logits(ids[0].tolist()).numpy(), ref) < bound


@pytest.mark.parametrize("kv, bound", [("float32", 1e-5), ("int8", 2e-2)])
def test_chunked_logits_read_the_cache(weights, kv, bound):
    """runner.logits(chunk=) equals one prefill for an exact KV cache and carries the KV rounding otherwise
    (the compile report's evaluation uses it so the KV format is in the KL)."""
    ids = np.random.default_rng(5).integers(0, ARCH.vocab_size, 21).tolist()
    r, _ = runner(ARCH, weights, kv=kv)
    whole = r.logits(ids).numpy()
    chunked = r.logits(ids, chunk=8).numpy()
    assert chunked.shape == whole.shape
    assert np.array_equal(chunked[:8], whole[:8])  # the first chunk is the same prefill
    err = rel(chunked, whole)
    assert err < bound
    if kv != "float32":
        assert err > 0  # later chunks really read the quantized cache
    with pytest.raises(ValueError, match="chunk"):
        r.logits(ids, chunk=0)


@pytest.mark.skipif(
    "tvm" not in available_backends() or "avx512_vnni" not in isa_flags(), reason="the x16 plan needs TVM and VNNI"
)
@pytest.mark.parametrize(
    "spec, dtype",
    [
        (LinearSpec("rtn", "int4", 32, "none"), "float16"),
        (LinearSpec("rtn", "uint2", 64, "post"), "float16"),
        (LinearSpec("rtn", "int4", 32, "none"), "bfloat16"),
        (LinearSpec("rtn", "uint4", 64, "post"), "bfloat16"),
    ],
    ids=lambda v: v if isinstance(v, str) else v.describe(),
)
def test_serving_holds_each_x16_weight_once(weights, spec, dtype):
    """float16 activations: every M of a 1-, 2- or 4-bit integer linear runs the x16 plan, so the executor keeps
    that weight in the plane layout alone (`x16_weight`; a signed one offset binary). bfloat16, 4-bit codes: the x16
    plan runs 2-28 rows, the bf16 float kernels the rest, and both read `cpu_weight`'s column-tiled copy (32-column
    blocks; in pair order where the CPU has AVX-512 BF16; signed codes xor-ed in the x16 GEMV). Either way the
    plan reads the words in place: after a prefill and decode steps no weight holds a second array of its codes,
    and the logits equal the reference model's with the same dequantized weights to the dtype's rounding."""
    from lowbit.kernels.spaces import pair_dot_runs

    # bfloat16: every N a multiple of CPU_PAD_N, so the M = 1 float kernels need no padded copy (`PaddedLaunch`)
    arch = ARCH if dtype == "float16" else WIDE
    weights = weights if dtype == "float16" else synthetic_weights(WIDE, 0)
    ids = np.random.default_rng(6).integers(0, arch.vocab_size, 12)
    r, params = runner(arch, weights, spec=spec, dtype=dtype)
    table: list[int] = []
    r.cache.grow(table, 12)
    rows = [r.step([SeqChunk(0, tuple(ids[:9].tolist()), 0, tuple(table))], all_logits=True).float().numpy()]
    for j in range(9, 12):
        rows.append(r.step([SeqChunk(0, (int(ids[j]),), j, tuple(table))]).float().numpy())
    overrides = dequantized_overrides(arch, weights, r.executor.graph, params)
    ref = reference_logits(arch, weights, ids[None], overrides=overrides)[0]
    assert rel(np.concatenate(rows), ref) < (1e-2 if dtype == "float16" else 4e-2)
    held = [w for w in r.executor.params.values() if isinstance(w, QuantizedWeight) and x16_serves(w, 2, dtype, "vnni")]
    assert held, "no linear the x16 plan serves"  # (a group of all of K is per channel: the other kernels')
    for w in held:
        n, k = w.shape
        bits = w.dtype.bits
        if dtype == "float16":
            assert w.layout == plane_layout((k, n), bits, w.group_size, X16_BN) and not w.dtype.is_signed
        else:
            assert w.layout == column_tiled((k, n), bits, X16_BN, pairs=pair_dot_runs(dtype, bits))
            assert w.dtype.name == spec.weight_dtype  # codes as quantized: the float kernels read them too
        assert w.__dict__["_x16_operands"]["w"].data_ptr() == w.words.ctypes.data  # read in place
        own = w.words.ctypes.data
        codes = [a for a in _arrays(w.__dict__) if a.dtype in (np.int32, np.uint32) and a.nbytes >= w.words.nbytes]
        copies = [a for a in codes if a.ctypes.data != own]  # (x's int8 planes, float y: scratch, not codes)
        assert not copies, [a.shape for a in copies]


def _arrays(o, seen=None):
    """Every NumPy array and torch tensor reachable from `o` (dicts, lists, tuples, objects' attributes), a torch
    tensor (of a dtype NumPy has) as a NumPy array sharing its memory, so that dtypes, sizes and addresses compare."""
    seen = set() if seen is None else seen
    if id(o) in seen:
        return
    seen.add(id(o))
    if isinstance(o, np.ndarray):
        yield o
    elif isinstance(o, torch.Tensor):
        if o.dtype != torch.bfloat16 and o.numel():
            yield o.detach().numpy()
    elif isinstance(o, dict):
        for v in o.values():
            yield from _arrays(v, seen)
    elif isinstance(o, list | tuple):
        for v in o:
            yield from _arrays(v, seen)
    elif hasattr(o, "__dict__") and not isinstance(o, type):
        yield from _arrays(vars(o), seen)


@pytest.mark.skipif(
    "tvm" not in available_backends() or "avx512_bf16" not in isa_flags(),
    reason="the pair GEMM needs AVX-512 BF16",
)
def test_bfloat16_serving_holds_4bit_linears_in_pair_order():
    """With bfloat16 activations the executor keeps a 4-bit linear's one copy in the pair order the bf16 GEMM
    forms read (`cpu_weight(w, "bfloat16")`; the plain tiles had taken them twice the time), for prefill rows
    past the x16 plan's limit, and the logits equal the reference model's with the same dequantized weights."""
    from lowbit.ops.linear import cpu_block

    weights = synthetic_weights(ARCH, 0)
    spec = LinearSpec("rtn", "int4", 32, "none")
    ids = np.random.default_rng(7).integers(0, ARCH.vocab_size, (1, 40))  # 40 rows: past X16_MAX_M
    r, params = runner(ARCH, weights, spec=spec, dtype="bfloat16")
    overrides = dequantized_overrides(ARCH, weights, r.executor.graph, params)
    ref = reference_logits(ARCH, weights, ids, overrides=overrides)[0]
    assert rel(r.logits(ids[0].tolist()).float().numpy(), ref) < 3e-2
    held = [w for w in r.executor.params.values() if isinstance(w, QuantizedWeight) and w.group_size > 0]
    assert held
    for w in held:
        n, k = w.shape
        assert w.layout == column_tiled((k, n), 4, cpu_block(w), pairs=True)
