"""records.py: configs pinned to a weight serve exactly their bucket (lo, hi], kernel, backend and fixed
constants (the layout aside), survive a JSON round trip, and re-pinning drops kernels compiled before."""

from __future__ import annotations

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from lowbit.codegen.backend import Config
from lowbit.codegen.tune.records import TunedConfig, attach, attached, fixed_key, lookup
from lowbit.ops.weight import quantize

FIXED = {"wdtype": "int4", "G": 32, "zero_mode": "none", "adtype": "float32", "sdtype": "float16", "wlayout": "L"}
A = Config.make({"BM": 1, "BN": 64, "BK": 32}, {"vector": 16})
B = Config.make({"BM": 16, "BN": 32, "BK": 64}, {"vector": 8})


def weight():
    return quantize(np.ones((8, 64), np.float32), "int4", 32)


@settings(max_examples=40)
@given(m=st.integers(1, 300))
def test_lookup_serves_each_bucket(m: int) -> None:
    w = weight()
    recs = [TunedConfig("quantized_gemv", "tvm", fixed_key(FIXED), (0, 1), A, 1),
            TunedConfig("quantized_gemv", "tvm", fixed_key(FIXED), (1, 16), B, 16)]  # fmt: skip
    attach(w, recs)
    want = A if m == 1 else (B if m <= 16 else None)  # the oracle: the half-open ranges
    assert lookup(w, "quantized_gemv", "tvm", FIXED, m) == want
    assert lookup(w, "quantized_gemv", "tvm", {**FIXED, "wlayout": "other"}, m) == want  # layout: the weight's
    assert lookup(w, "quantized_gemm", "tvm", FIXED, m) is None
    assert lookup(w, "quantized_gemv", "triton", FIXED, m) is None
    assert lookup(w, "quantized_gemv", "tvm", {**FIXED, "adtype": "bfloat16"}, m) is None


def test_json_round_trip_and_repinning() -> None:
    rec = TunedConfig("quantized_gemm", "tvm", fixed_key(FIXED), (16, 64), B, 64)
    assert TunedConfig.from_json(rec.to_json()) == rec
    w = weight()
    assert lookup(w, "quantized_gemm", "tvm", FIXED, 20) is None and attached(w) == ()
    w.__dict__["_plans"] = {"compiled": object()}
    attach(w, [rec])
    assert "_plans" not in w.__dict__ and lookup(w, "quantized_gemm", "tvm", FIXED, 20) == B
    attach(w, [])
    assert lookup(w, "quantized_gemm", "tvm", FIXED, 20) is None
    assert lookup(None, "quantized_gemm", "tvm", FIXED, 20) is None
