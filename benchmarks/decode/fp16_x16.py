"""fp16 / fp32 activations on the CPU, old rule against new, side by side in one process (sessions 56, 57): a
TinyLlama-1.1B-shaped W4 model (`decode_model.py`: int4 g128 linears, KV int8) served with float16 activations.

    python benchmarks/decode/fp16_x16.py [float16 | bfloat16 | float32]

new: this rule: the x16 plan runs every M of float16 x (row tiles of 4) and of float32 x (three planes, "x24"),
     and the executor holds each x16 linear once, in the plane layout (`lowbit.ops.x16.x16_weight`);
old: the x16 plan at <= 4 rows of 16-bit x only, never for float32 x, and the plain column-tiled copy whatever
     the dtype (before session 56: with bfloat16 x the executor's 4-bit copy was not in the pair order the bf16
     GEMM reads), patched in.
Prints decode and prefill tok/s (medians of 3, 16 decode steps, 32-token prompts) for 1 and 16 sequences, and
the bytes of every array the quantized linears hold after the runs (their codes, scales and the kernels' copies).
"""

from __future__ import annotations

import os
import statistics
import sys
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import numpy as np
import torch
from decode_1b import run_decode
from decode_model import ARCH_1B, build_graph_1b, random_params

import lowbit.ops.linear as linear
import lowbit.runtime.executor as executor
from lowbit.ops.weight import QuantizedWeight
from lowbit.runtime.runner import ModelRunner

SERVES, WEIGHT, CPU_WEIGHT, EVERY = linear.x16_serves, executor.x16_weight, executor.cpu_weight, executor.x16_every_m


def held_bytes(params: dict[str, Any]) -> int:
    """Bytes of the distinct arrays (NumPy, torch storages) reachable from the quantized weights in `params`."""
    seen: set[int] = set()
    found: dict[int, int] = {}

    def walk(o: Any, depth: int) -> None:
        if isinstance(o, np.ndarray):
            found.setdefault(o.__array_interface__["data"][0], o.nbytes)
        elif isinstance(o, torch.Tensor):
            found.setdefault(o.untyped_storage().data_ptr(), o.untyped_storage().nbytes())
        elif depth < 8 and id(o) not in seen:
            seen.add(id(o))
            if isinstance(o, dict):
                children: Any = o.values()
            elif isinstance(o, list | tuple):
                children = o
            elif hasattr(o, "__dict__") and not isinstance(o, type):
                children = vars(o).values()
            else:
                return
            for c in children:
                walk(c, depth + 1)

    for w in params.values():
        if isinstance(w, QuantizedWeight):
            walk(w, 0)
    return sum(found.values())


def use(rule: str) -> None:
    """Patch in a rule: "old" runs x16 at <= 4 rows and keeps the column-tiled copy; "new" is the code as is."""
    if rule == "old":
        linear.x16_serves = lambda qw, m, adtype, dot: SERVES(qw, m, adtype, dot) and m <= 4 and adtype != "float32"
        executor.x16_weight = lambda w: None
        executor.x16_every_m = lambda adtype, dot: False
        executor.cpu_weight = lambda w, dtype="float32": CPU_WEIGHT(w)  # the plain tiles whatever the dtype
    else:
        linear.x16_serves, executor.x16_weight, executor.cpu_weight = SERVES, WEIGHT, CPU_WEIGHT
        executor.x16_every_m = EVERY


def main() -> int:
    dtype = sys.argv[1] if len(sys.argv) > 1 else "float16"
    g = build_graph_1b(decode_activations="float")
    params = random_params(g)
    runners = {}
    for rule in ("old", "new"):
        use(rule)
        r = ModelRunner(
            ARCH_1B, g, params, kv_dtype="int8", dtype=dtype, backend="tvm", max_model_len=512, max_num_seqs=16
        )
        run_decode(r, 16, 32, 8, 0)  # warm: every plan compiled
        run_decode(r, 1, 32, 8, 0)
        runners[rule] = r
    rates: dict[tuple[str, int], list[tuple[float, float]]] = {}
    for rep in range(3):
        for rule, r in runners.items():
            use(rule)
            for seqs in (1, 16):
                prefill, decode, _ = run_decode(r, seqs, 32, 16, rep)
                rates.setdefault((rule, seqs), []).append((seqs * 16 / decode, seqs * 32 / prefill))
    for seqs in (1, 16):
        (do, po), (dn, pn) = (
            tuple(statistics.median(v[i] for v in rates[(rule, seqs)]) for i in (0, 1)) for rule in ("old", "new")
        )
        print(f"{seqs} seqs: decode tok/s old {do:.1f} new {dn:.1f} ({dn / do:.2f}x); ", end="")
        print(f"prefill tok/s old {po:.1f} new {pn:.1f} ({pn / po:.2f}x)")
    for rule, r in runners.items():
        print(f"{rule}: the quantized linears hold {held_bytes(r.executor.params) / 2**20:.0f} MiB after the runs")
    use("new")
    return 0


if __name__ == "__main__":
    sys.exit(main())
