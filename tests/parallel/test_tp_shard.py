"""lowbit.parallel.shard: shards are exact blocks of the quantized weight (the law Ŵ_r = Ŵ[rows_r][:, cols_r]),
column shards concatenate and row shards sum back to the unsharded linear, group boundaries are enforced."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from lowbit.compiler.quantize import quantize_params
from lowbit.config.spec import LinearSpec
from lowbit.graph import PassContext, build_graph, optimize
from lowbit.models.arch import ArchConfig
from lowbit.models.synthetic import synthetic_weights
from lowbit.ops.weight import QuantizedWeight, quantize
from lowbit.parallel.shard import column_rows, local_arch, shard_params, slice_quantized

ARCH = ArchConfig("llama", 64, 64, 128, 2, 4, 2, 16, qkv_bias=True, o_bias=True)


@settings(max_examples=12)
@given(
    dtype=st.sampled_from(["int4", "uint4", "int8", "fp4_e2m1", "int3"]),
    group=st.sampled_from([16, 32, -1]),
    layout=st.sampled_from(["row", "reordered"]),
    tp=st.sampled_from([2, 4]),
    seed=st.integers(0, 2**16),
)
def test_slices_are_exact_blocks_of_the_dequantized_weight(dtype, group, layout, tp, seed):
    assume(not (dtype == "int3" and layout == "reordered"))  # 3-bit codes do not tile the reordered layout
    rng = np.random.default_rng(seed)
    n, k = 64, 128
    qw = quantize(rng.standard_normal((n, k)).astype(np.float32), dtype, group, layout=layout)
    full = qw.dequantize()
    for r in range(tp):
        rows = np.arange(r * n // tp, (r + 1) * n // tp)
        cols = (r * k // tp, (r + 1) * k // tp)
        got = slice_quantized(qw, rows, cols, layout=layout).dequantize()
        np.testing.assert_array_equal(got, full[rows][:, cols[0] : cols[1]])  # bit-exact: nothing re-rounded


def test_a_slice_that_cuts_a_group_is_refused():
    qw = quantize(np.ones((8, 64), np.float32), "int4", 32)
    with pytest.raises(ValueError, match=r"columns \[16, 48\) cut a weight group of group_size 32.*multiples of 32"):
        slice_quantized(qw, cols=(16, 48))


def test_column_rows_take_each_fused_part_of_the_rank():
    # fused [q (4 rows/rank); k (2); v (2)] over 2 ranks: q rows 0..7, k rows 8..11, v rows 12..15
    assert column_rows([4, 2, 2], 0, 2).tolist() == [0, 1, 2, 3, 8, 9, 12, 13]
    assert column_rows([4, 2, 2], 1, 2).tolist() == [4, 5, 6, 7, 10, 11, 14, 15]
    both = np.sort(np.concatenate([column_rows([4, 2, 2], r, 2) for r in range(2)]))
    assert both.tolist() == list(range(16))  # a partition of the rows


def test_local_arch_divides_heads_and_mlp_only():
    a = local_arch(ARCH, 2)
    assert (a.num_heads, a.num_kv_heads, a.intermediate_size) == (2, 1, 64)
    assert (a.hidden_size, a.head_dim, a.vocab_size) == (ARCH.hidden_size, ARCH.head_dim, ARCH.vocab_size)
    assert local_arch(ARCH, 1) is ARCH


def _dense(p) -> np.ndarray:
    return p.dequantize().astype(np.float64) if isinstance(p, QuantizedWeight) else p.double().numpy()


@pytest.mark.parametrize("spec", [LinearSpec("rtn", "int4", 16), None], ids=["int4-g16", "dense"])
@pytest.mark.parametrize("tp", [2, 4])
def test_sharded_linears_reassemble_the_unsharded_ones(spec, tp):
    """Column-parallel outputs concatenate (per fused split), row-parallel partial outputs sum (bias once) to
    the unsharded linear's output on the same input: x @ Ŵ.T + b."""
    arch = ArchConfig("llama", 64, 64, 128, 2, 4, 4, 16, qkv_bias=True, o_bias=True, mlp_bias=True)
    resolve = lambda m: None if m == "lm_head" else spec  # noqa: E731
    full = optimize(build_graph(arch), PassContext(arch, resolve))
    shard = optimize(build_graph(arch), PassContext(arch, resolve, tensor_parallel=tp))
    params = quantize_params(full, synthetic_weights(arch, 0), tied=False, dtype=torch.float32)
    ranks = [shard_params(shard, params, r, tp) for r in range(tp)]
    rng = np.random.default_rng(1)
    kinds = set()
    for node in shard.nodes_in_order():
        if node.op != "linear":
            continue
        a, kind = node.attrs_dict, node.attrs_dict.get("parallel")
        kinds.add(kind)
        w, b = _dense(params[a["weight"]]), a.get("bias") and params[a["bias"]].double().numpy()
        bias_of = lambda p: 0 if b is None else p[a["bias"]].double().numpy()  # noqa: B023, E731
        x = rng.standard_normal((3, w.shape[1]))
        want = x @ w.T + (0 if b is None else b)
        if kind == "column":
            parts = [x @ _dense(p[a["weight"]]).T + bias_of(p) for p in ranks]
            splits = [int(s) for s in a["splits"]]
            got = np.concatenate(  # rank-major parts -> split-major columns of the unsharded output
                [part[:, off : off + s] for off, s in zip(np.cumsum([0, *splits[:-1]]), splits) for part in parts],
                axis=1,
            )
        elif kind == "row":
            k = int(a["in_features"])
            got = sum(x[:, r * k : (r + 1) * k] @ _dense(p[a["weight"]]).T + bias_of(p) for r, p in enumerate(ranks))
        else:  # replicated: the same object on every rank
            assert all(p[a["weight"]] is params[a["weight"]] for p in ranks)
            continue
        assert np.linalg.norm(got - want) / np.linalg.norm(want) < 1e-12, node.name
    assert kinds == {"column", "row", None}
