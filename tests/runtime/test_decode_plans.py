"""The executor's CPU hot path: bound launchers, decode plans (a decode-only step recorded once per batch size
and KV split count, then replayed as plain calls) and the int8-activation decode GEMV chosen by the graph.

Oracles: the same executor with the hot path off (`fast = False`: every op through `lowbit.ops`, the same
kernels and arguments, so logits must be bit-identical), and the float64 reference model for the int8 path
(its only extra error is the activations' int8 rounding, ~1% relative on the logits here)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from runtime_oracle import dequantized_overrides

from lowbit.compiler.quantize import quantize_params
from lowbit.config.spec import LinearSpec
from lowbit.graph import PassContext, build_graph, optimize
from lowbit.models import ArchConfig
from lowbit.models.reference import reference_logits
from lowbit.models.synthetic import synthetic_weights
from lowbit.ops.weight import QuantizedWeight
from lowbit.runtime.batch import SeqChunk
from lowbit.runtime.runner import ModelRunner

ARCH = ArchConfig(
    model_type="llama", vocab_size=256, hidden_size=64, intermediate_size=128, num_layers=2, num_heads=4,
    num_kv_heads=2, head_dim=16, max_position_embeddings=128,
)  # fmt: skip
SPEC = LinearSpec("rtn", "int4", 32)


@pytest.fixture(scope="module")
def weights():
    return synthetic_weights(ARCH, 0)


def runner(weights, decode_activations="float", kv="int8"):
    ctx = PassContext(
        arch=ARCH, resolve=lambda m: SPEC, backend="tvm", dtype="float32", kv_dtype=kv,
        decode_activations=decode_activations,
    )  # fmt: skip
    g = optimize(build_graph(ARCH), ctx)
    params = quantize_params(g, weights, tied=ARCH.tie_word_embeddings, dtype=torch.float32)
    return ModelRunner(ARCH, g, params, kv_dtype=kv, dtype="float32", backend="tvm", max_model_len=64), params


def generate(r, prompts, steps):
    """Prefill every prompt, then `steps` greedy decode steps of all sequences together; logits per step."""
    tables = []
    for p in prompts:
        t: list[int] = []
        r.cache.grow(t, len(p) + steps)
        tables.append(tuple(t))
    out = [r.step([SeqChunk(i, tuple(p), 0, tables[i]) for i, p in enumerate(prompts)]).numpy()]
    toks = out[0].argmax(-1)
    for j in range(steps):
        chunks = [SeqChunk(i, (int(toks[i]),), len(p) + j, tables[i]) for i, p in enumerate(prompts)]
        out.append(r.step(chunks).numpy())
        toks = out[-1].argmax(-1)
    return out


class NoPlans(dict):
    """An executor's plan table that forgets every plan: each decode step is recorded, never replayed."""

    def __setitem__(self, key, value):
        pass

    def move_to_end(self, key):
        pass


def rel(a, b) -> float:
    err = float(np.linalg.norm(a - b) / np.linalg.norm(b))
    assert np.isfinite(err)
    return err


@pytest.mark.parametrize("kv", ["int8", "float16"])
def test_replays_equal_recorded_steps_and_the_ops_path(weights, kv):
    prompts = [[1, 2, 3, 4, 5], [9, 8, 7]]
    fast, _ = runner(weights, kv=kv)
    recorded, _ = runner(weights, kv=kv)
    recorded.executor.plans = NoPlans()
    slow, _ = runner(weights, kv=kv)
    slow.executor.fast = False
    a, b, c = (generate(r, prompts, 6) for r in (fast, recorded, slow))
    for x, y, z in zip(a, b, c):
        assert np.array_equal(x, y)  # a replay is the recorded step, call for call
        assert rel(x, z) < 1e-5  # the ops path: the same kernels but SwiGLU in torch (fp32 rounding apart)
    assert list(fast.executor.plans) == [(2, 1)]  # recorded at the first decode step, replayed after
    assert not slow.executor.plans


def test_plans_per_batch_size_and_fallbacks(weights):
    r, _ = runner(weights)
    ref, _ = runner(weights)
    ref.executor.fast = False
    for rr in (r, ref):
        generate(rr, [[3, 1, 4]], 2)
        generate(rr, [[5, 9], [2, 6], [5, 3]], 2)
    assert sorted(r.executor.plans) == [(1, 1), (3, 1)]
    # a mixed step (one prefill, one decode) runs op by op and records nothing
    t0: list[int] = []
    t1: list[int] = []
    r.cache.grow(t0, 8)
    r.cache.grow(t1, 8)
    r.step([SeqChunk(0, (1, 2, 3), 0, tuple(t0))])
    r.step([SeqChunk(0, (4,), 3, tuple(t0)), SeqChunk(1, (7, 7), 0, tuple(t1))])
    assert sorted(r.executor.plans) == [(1, 1), (3, 1)]
    # a position beyond max_positions leaves the plan and fails in the RoPE rule, as without plans
    far: list[int] = []
    r.cache.grow(far, 65)
    with pytest.raises(ValueError, match="beyond max_positions"):
        r.step([SeqChunk(0, (1,), 64, tuple(far))])


def test_int8_decode_activations(weights):
    prompt = [5, 17, 200, 3, 44, 91, 12]
    r, params = runner(weights, decode_activations="int8")
    kernels = [dict(n.attrs).get("kernels") for n in r.executor.nodes if n.op == "linear"]
    assert all(dict(k)[16] == dict(k)[64] == "quantized_gemv_a8" for k in kernels)  # prefill buckets too
    # the executor re-tiles the a8 weights for itself; the caller's params keep the row layout
    name = next(n.attrs_dict["weight"] for n in r.executor.nodes if n.op == "linear")
    assert isinstance(params[name], QuantizedWeight) and r.executor.params[name] is not params[name]
    assert np.array_equal(r.executor.params[name].dequantize(), params[name].dequantize())
    steps = generate(r, [prompt], 5)
    ids = np.array(prompt + [int(o.argmax(-1)[0]) for o in steps[:-1]])
    overrides = dequantized_overrides(ARCH, weights, r.executor.graph, params)
    ref = reference_logits(ARCH, weights, ids[None], overrides=overrides)[0]
    got = np.stack([o[0] for o in steps])
    want = ref[len(prompt) - 1 :]
    err = float(np.linalg.norm(got - want) / np.linalg.norm(want))
    assert np.isfinite(err) and err < 5e-2, err
    assert list(r.executor.plans) == [(1, 1)]


def test_select_kernels_keeps_ineligible_linears_with_a_note():
    def resolve(module):
        return LinearSpec("rtn", "int3", 32) if module.endswith("down_proj") else SPEC

    ctx = PassContext(arch=ARCH, resolve=resolve, backend="tvm", dtype="float32", decode_activations="int8")
    g = optimize(build_graph(ARCH), ctx)
    kinds = {
        n.name.rsplit(".", 1)[-1]: dict(dict(n.attrs)["kernels"])[16] for n in g.nodes_in_order() if n.op == "linear"
    }
    assert kinds["down_proj"] == "quantized_gemv" and kinds["o_proj"] == "quantized_gemv_a8"
    assert any("int3 codes" in note and "down_proj" in note for note in g.meta.get("notes", ()))
    gpu = optimize(build_graph(ARCH), PassContext(**{**ctx.__dict__, "device": "cuda", "backend": "triton"}))
    assert all(
        dict(dict(n.attrs)["kernels"])[16] != "quantized_gemv_a8" for n in gpu.nodes_in_order() if n.op == "linear"
    )
    with pytest.raises(ValueError, match="decode_activations 'int4'"):
        PassContext(arch=ARCH, decode_activations="int4")
