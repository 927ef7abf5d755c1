"""The executor runs the prefill of a linear whose decode buckets take int8 activations through the a8 GEMV
too (`Executor.a8_prefill`, on by default): a 20-token prompt (beyond the 16-row decode buckets, where the
graph's choice is the float GEMM) gives logits within the activation rounding of the fp64 reference model,
different from the float GEMM's (the path did change), and every linear of the prefill ran the a8 plan."""

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
from lowbit.runtime.batch import SeqChunk
from lowbit.runtime.executor import linear_kernel
from lowbit.runtime.runner import ModelRunner

ARCH = ArchConfig(
    model_type="llama", vocab_size=256, hidden_size=64, intermediate_size=128, num_layers=2, num_heads=4,
    num_kv_heads=2, head_dim=16, max_position_embeddings=128,
)  # fmt: skip
SPEC = LinearSpec("rtn", "int4", 32)
PROMPT = [int(t) for t in np.random.default_rng(5).integers(0, 256, 20)]


@pytest.fixture(scope="module")
def setup():
    weights = synthetic_weights(ARCH, 0)
    ctx = PassContext(
        arch=ARCH, resolve=lambda m: SPEC, backend="tvm", dtype="float32", kv_dtype="float16",
        decode_activations="int8",
    )  # fmt: skip
    g = optimize(build_graph(ARCH), ctx)
    params = quantize_params(g, weights, tied=ARCH.tie_word_embeddings, dtype=torch.float32)
    return weights, g, params


def prefill(g, params, a8_prefill: bool) -> np.ndarray:
    r = ModelRunner(ARCH, g, params, kv_dtype="float16", dtype="float32", backend="tvm", max_model_len=64)
    r.executor.a8_prefill = a8_prefill
    t: list[int] = []
    r.cache.grow(t, len(PROMPT))
    logits = r.executor.forward(_batch(r, t), all_logits=True).numpy()
    keys = {k for k in r.executor.launchers if isinstance(k, tuple) and k[1] == "rows"}
    assert bool(keys) == a8_prefill  # the prefill launchers of the a8 linears (one per linear, any length)
    return logits


def _batch(r, table):
    from lowbit.runtime.batch import Batch

    return Batch([SeqChunk(0, tuple(PROMPT), 0, tuple(table))], r.cache.page_size)


def test_prefill_rows_run_the_a8_gemv(setup):
    weights, g, params = setup
    kernels = [dict(n.attrs).get("kernels") for n in g.nodes_in_order() if n.op == "linear"]
    assert all(linear_kernel(k, 20) == "quantized_gemv_a8" for k in kernels)
    assert all(linear_kernel(k, 20, a8_prefill=False) is None for k in kernels)
    assert all(linear_kernel(k, 16, a8_prefill=False) == "quantized_gemv_a8" for k in kernels)  # decode rows
    assert linear_kernel(((16, "quantized_gemv"), (64, "quantized_gemm")), 8) is None  # not an a8 linear
    a8 = prefill(g, params, True)
    fp = prefill(g, params, False)
    overrides = dequantized_overrides(ARCH, weights, g, params)
    ref = reference_logits(ARCH, weights, np.array(PROMPT)[None], overrides=overrides)[0]
    err_a8 = float(np.linalg.norm(a8 - ref) / np.linalg.norm(ref))
    err_fp = float(np.linalg.norm(fp - ref) / np.linalg.norm(ref))
    assert np.isfinite(err_a8) and err_a8 < 5e-2, err_a8
    assert np.isfinite(err_fp) and err_fp < 1e-3, err_fp  # the float GEMM: only fp32 rounding
    assert not np.array_equal(a8, fp)
