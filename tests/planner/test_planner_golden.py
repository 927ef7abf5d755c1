"""Golden checks against NanoFlow's published analysis of Llama-2-70B on 8xA100 at dense batch 2048 (Zhu et al.,
"NanoFlow: Towards Optimal Large Language Model Serving Throughput", arXiv 2408.12757; /work/shared/ANCHORS.md,
"NanoFlow"), with the bands each test asserts and how the model relates to the source.

The workload is NanoFlow's split of that batch: 1408 decode rows (the 256/384/768 attention nano-batches) and
one 640-row prefill chunk; decode rows attend to 1024 cached tokens (the KV cache then fills ~60 GB of each
80 GB GPU, as in their memory-bound-as-possible analysis).
"""

from __future__ import annotations

import pytest

from lowbit.planner.cost import CostModel
from lowbit.planner.hardware import get_hardware
from lowbit.planner.models import get_arch
from lowbit.planner.ops import model_ops
from lowbit.planner.schedules import split_plan, unsplit_plan
from lowbit.planner.simulate import optimal_tokens_per_s, simulate_step
from lowbit.planner.workload import Workload

WL = Workload(2048, 1408, 1024, 640, 0)


@pytest.fixture(scope="module")
def setup():
    mo = model_ops(get_arch("llama-2-70b"), None, 8, "llama-2-70b")
    cost = CostModel(get_hardware("a100"))
    opt = optimal_tokens_per_s(mo, cost)
    return mo, cost, opt


def test_optimal_throughput_is_nanoflows_1857(setup):
    """NanoFlow eq. (optimal throughput) = Compute / (2 * P_model): 1857 tokens/s/GPU for Llama-2-70B with the
    ~256 TFLOP/s measured A100 GEMM rate. P_model = 68.98e9 (every parameter of the HF checkpoint). Band:
    within 0.5% (their P_model rounding)."""
    _, _, opt = setup
    assert opt == pytest.approx(1857, rel=0.005)


def test_sequential_schedule_is_between_the_engines_and_nanoflows_own_sequential_pipeline(setup):
    """Two sources bound the sequential schedule. Lower: NanoFlow §3.6 / Fig. 7 put existing engines (vLLM,
    DeepSpeed-FastGen, TensorRT-LLM), which run the ops one after another, at 22-38% of optimal and ~40% compute
    utilisation; they pay CPU-side gaps the simulator does not model. Upper: NanoFlow's ablation (Fig. 9) gains
    only 1.07x (prefill-only) to 1.17x (decode-heavy) from overlapping over its own non-overlapped pipeline of
    the same kernels, so with its 68.5% that pipeline sits near 68.5 / 1.17 = 59%. Band 40-60%; the A100
    preset gives 52% (roofline kernels, no CPU gaps). The earlier docstring's "sequential ~40%" was the engines'
    figure, not a same-kernel sequential schedule."""
    mo, cost, opt = setup
    frac = simulate_step(mo, unsplit_plan(mo, WL), WL, cost).tokens_per_s / opt
    assert 0.40 <= frac <= 0.60


def test_splitting_without_overlap_is_slower_than_unsplit(setup):
    """NanoFlow's ablation: nano-batching without overlapping costs ~13% against the unsplit schedule.
    Band 2-15% slower: the cost model charges smaller GEMMs their tile / wave quantization and every extra
    nano-op a launch gap, but a per-piece tile choice keeps the 640/1408-row GEMMs efficient, so it predicts
    the direction and a smaller cost (~4%) than their fixed CUTLASS configurations showed."""
    mo, cost, _ = setup
    unsplit = simulate_step(mo, unsplit_plan(mo, WL), WL, cost).seconds
    split = simulate_step(mo, split_plan(mo, WL, overlap=False), WL, cost).seconds
    assert 1.02 <= split / unsplit <= 1.15


def test_nanoflow_like_split_overlaps_but_stays_below_their_pipeline(setup):
    """NanoFlow's 4-way / 2-way split with overlap reached 65-70% of optimal (68.5% measured for Llama-2-70B).
    Under lowbit's executor order (per unit FIFO, stage / first row / graph order: tasks.py, mirroring
    runtime/nano.py; the tensor-parallel graph's all_reduce nodes are stages of their own) the same split with
    fixed shares (GEMMs 0.75, attention 0.15, collectives 0.10) hides a little less than their pipeline. Band:
    faster than sequential, 55-70% of optimal (the model gives ~62%); the gap to NanoFlow's 68.5% is the order
    their MILP picks (the planned-order search, test_planner_order.py, closes it)."""
    mo, cost, opt = setup
    seq = simulate_step(mo, unsplit_plan(mo, WL), WL, cost).tokens_per_s
    nano = simulate_step(mo, split_plan(mo, WL), WL, cost).tokens_per_s
    assert nano > seq
    assert 0.55 <= nano / opt <= 0.70


def test_w4a16_keeps_the_ceiling_and_w4a8_doubles_it():
    """ANCHORS (NanoFlow low-bit note): W4A16 computes in bf16, so the compute ceiling stays; W4A8 on int8
    tensor cores doubles it (exactly 2x with presets whose int8 rate is twice the bf16 rate)."""
    from lowbit.planner.precision import get_precision

    arch, cost = get_arch("llama-2-70b"), CostModel(get_hardware("a100"))
    opt = {p: optimal_tokens_per_s(model_ops(arch, get_precision(p), 8), cost) for p in ("w16a16", "w4a16", "w4a8")}
    assert opt["w4a16"] == opt["w16a16"]
    assert opt["w4a8"] == pytest.approx(2 * opt["w16a16"], rel=1e-12)
