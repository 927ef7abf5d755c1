"""Precision's stored weight bytes against lowbit's own count (lowbit.graph.stats.linear_weight_bytes on a
linear node): codes in the row-packed uint32 words (⌊32/bits⌋ codes per word, so 3- and 6-bit codes cost more
than bits/8 bytes) + scales + zeros, or dense at the activation width."""

from __future__ import annotations

import pytest

from lowbit.config.spec import LinearSpec
from lowbit.graph.graph import Node
from lowbit.graph.stats import linear_weight_bytes
from lowbit.planner.precision import PRECISIONS, Precision


def _node(n: int, k: int, spec: LinearSpec | None) -> Node:
    return Node.create("l", "linear", ("x",), ("y",), 0, weight="w", in_features=k, splits=(n,), spec=spec, bias=None)


@pytest.mark.parametrize(
    "spec",
    [
        None,
        PRECISIONS["w4a16"].linear,
        PRECISIONS["w4a8"].linear,
        LinearSpec("rtn", "int3", 128, "post"),
        LinearSpec("rtn", "int8", 64, "none"),
        LinearSpec("rtn", "fp6_e3m2", 128, "none"),
    ],
)
@pytest.mark.parametrize("n, k", [(4096, 4096), (384, 1280)])
def test_weight_bytes_are_lowbits_stored_bytes(spec, n, k):
    p = Precision("p", spec, "bfloat16")
    assert p.weight_bytes(n, k) == linear_weight_bytes(_node(n, k, spec), 2)


def test_bits_per_weight_of_the_presets():
    assert PRECISIONS["w16a16"].bits_per_weight() == 16.0
    assert PRECISIONS["w4a16"].bits_per_weight() == 4.25  # uint4 g128 + fp16 scale + fp16 zero per group
    assert Precision("p3", LinearSpec("rtn", "int3", 128, "none")).bits_per_weight() > 3.2  # 10 codes per word
