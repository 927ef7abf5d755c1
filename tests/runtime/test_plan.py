"""The pipeline plan: JSON round trip (hypothesis plans, with and without planned queue orders), refusal of
unknown keys / other versions / bad fields with the field named, rule matching (first match wins, op classes,
name patterns), and the nano-batch cut points (tile multiples, snapping to sequence boundaries) against a
brute-force oracle."""

from __future__ import annotations

import itertools
import json
import math
from dataclasses import replace

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from lowbit.runtime.plan import (
    OP_CLASSES,
    OP_KINDS,
    OpRule,
    PipelinePlan,
    PlanError,
    Unit,
    default_plan,
    nano_ranges,
    unsplit_plan,
)


def _fractions(n: int, weights: list[int]) -> tuple[float, ...]:
    total = sum(weights[:n])
    fr = [w / total for w in weights[: n - 1]]
    return (*fr, 1.0 - sum(fr))


@st.composite
def plans(draw):
    n_units = draw(st.integers(1, 3))
    units = tuple(
        Unit(f"u{i}", draw(st.sampled_from(["compute", "memory", "network"])),
             tuple(draw(st.sets(st.integers(0, 7), max_size=3))), draw(st.none() | st.integers(0, 3)))
        for i in range(n_units)
    )  # fmt: skip
    rules = []
    ordered = draw(st.booleans())  # planned queue orders: on every rule or on none
    for _ in range(draw(st.integers(0, 4))):
        n = draw(st.integers(1, 4))
        fr = _fractions(n, draw(st.lists(st.integers(1, 9), min_size=4, max_size=4)))
        names = [u.name for u in units]
        unit_names = tuple(draw(st.sampled_from(names)) for _ in range(draw(st.sampled_from([1, n]))))
        ops = tuple(draw(st.lists(st.sampled_from([*OP_KINDS, *OP_CLASSES]), max_size=2, unique=True)))
        pattern = draw(st.none() | st.sampled_from([".*", r"model\.layers\.\d+\..*", "lm_head"]))
        if not ops and pattern is None:
            pattern = ".*"
        order = tuple(draw(st.floats(-2, 80, allow_nan=False)) for _ in range(n)) if ordered else ()
        rules.append(OpRule(ops, pattern, fr, unit_names, order=order))
    return PipelinePlan(units, tuple(rules), draw(st.integers(1, 256)), draw(st.integers(0, 512)))


@settings(max_examples=40)
@given(plans())
def test_json_round_trip(plan):
    text = plan.to_json()
    back = PipelinePlan.from_json(text)
    assert back == plan
    assert PipelinePlan.from_json(json.loads(text)) == plan  # the dict form too
    assert back.to_json() == text


@pytest.mark.parametrize("plan", [default_plan(None, "cpu"), default_plan(None, "cuda", num_nano=4), unsplit_plan()])
def test_shipped_plans_round_trip(plan):
    assert PipelinePlan.from_json(plan.to_json()) == plan


def test_orders_are_in_the_json_only_when_set():
    """A plan without orders writes the JSON it wrote before orders existed (artifacts stay byte-identical)."""
    plan = default_plan(None, "cpu")
    assert '"order"' not in plan.to_json() and not plan.ordered
    before = {"version": 1, "tile": 8, "min_tokens": 16,
              "units": [{"name": "compute", "kind": "compute", "cores": [], "stream": 0},
                        {"name": "memory", "kind": "memory", "cores": [], "stream": 1}],
              "rules": [{"ops": ["attention"], "pattern": None, "fractions": [0.5, 0.5], "units": ["memory"]},
                        {"ops": [], "pattern": ".*", "fractions": [0.5, 0.5], "units": ["compute"]}]}  # fmt: skip
    assert plan.to_json() == json.dumps(before, indent=1)
    ordered = PipelinePlan(plan.units, tuple(replace(r, order=(0.25, 0.5)) for r in plan.rules), 8, 16)
    assert ordered.ordered and json.loads(ordered.to_json())["rules"][0]["order"] == [0.25, 0.5]
    assert PipelinePlan.from_json(ordered.to_json()) == ordered


@pytest.mark.parametrize(
    "order, match",
    [
        ((0.1,), r"order \(0.1,\) must be empty or 2 finite numbers, one queue key per nano-batch"),
        ((0.1, 0.2, 0.3), r"order \(0.1, 0.2, 0.3\) must be empty or 2 finite numbers"),
        ((0.1, math.nan), r"order \(0.1, nan\) must be empty or 2 finite"),
        ((math.inf, 0.0), r"order \(inf, 0.0\) must be empty or 2 finite"),
        ((True, 0.0), r"order \(True, 0.0\) must be empty"),
        (("0.1", 0.0), r"order \('0.1', 0.0\) must be empty"),
    ],
)
def test_bad_orders_are_refused_with_the_value_and_the_fix(order, match):
    with pytest.raises(PlanError, match=match):
        OpRule(ops=("linear",), fractions=(0.5, 0.5), units=("c",), order=order)


def test_orders_on_some_rules_only_are_refused():
    units = (Unit("c"), Unit("m", "memory"))
    rules = (OpRule(ops=("attention",), fractions=(0.5, 0.5), units=("m",), order=(0.1, 0.4)),
             OpRule(pattern=".*", fractions=(1.0,), units=("c",)))  # fmt: skip
    with pytest.raises(PlanError, match=r"rules \[\"ops=\[\] pattern='\.\*'\"\] have no order while others do"):
        PipelinePlan(units, rules)
    d = _doc()
    d["rules"][0]["order"] = "0.1 0.2"
    with pytest.raises(PlanError, match=r"plan.rules\[0\].order is str '0.1 0.2'; it must be a list of numbers"):
        PipelinePlan.from_json(d)
    d["rules"][0]["order"] = [0.0, float("nan")]  # JSON's NaN reads as a float: refused as not finite
    d["rules"][1]["order"] = [0.0, 0.5]
    with pytest.raises(PlanError, match="finite"):
        PipelinePlan.from_json(json.dumps(d))


def _doc() -> dict:
    return json.loads(default_plan(None, "cpu").to_json())


@pytest.mark.parametrize(
    "edit, match",
    [
        (lambda d: d.update(extra=1), r"plan has unknown key\(s\) \['extra'\]"),
        (lambda d: d["units"][0].update(threads=2), r"plan.units\[0\] has unknown key\(s\) \['threads'\]"),
        (lambda d: d["rules"][1].update(split=2), r"plan.rules\[1\] has unknown key\(s\) \['split'\]"),
        (lambda d: d.update(version=2), "plan version 2: this lowbit reads version 1"),
        (lambda d: d.pop("version"), r"plan misses key\(s\) \['version'\]"),
        (lambda d: d["units"][0].update(kind="disk"), "kind 'disk' is not one of"),
        (lambda d: d["rules"][0].update(units=["gpu"]), "names unit 'gpu', which is not in the plan's units"),
        (lambda d: d["rules"][0].update(fractions=[0.5, 0.6]), "sum to 1.1; they must sum to 1"),
        (lambda d: d["rules"][0].update(fractions=[1.5, -0.5]), "must be positive numbers"),
        (lambda d: d["rules"][0].update(ops=["matmul"]), "rule op 'matmul' is not an op or op class"),
        (lambda d: d["rules"][0].update(ops=[], pattern=None), "a rule needs `ops` or `pattern`"),
        (lambda d: d["rules"][0].update(pattern="(("), "is not a valid regex"),
        (lambda d: d["rules"][0].update(units=["memory", "compute", "memory"]), "3 units .* for 2 nano-batches"),
        (lambda d: d["units"][0].update(cores="0-3"), r"plan.units\[0\].cores is str '0-3'; it must be a list"),
        (lambda d: d["units"][0].update(cores=[1, 1]), "repeat a core"),
        (lambda d: d["units"][1].update(name="compute"), r"unit names \['compute'\] repeat"),
        (lambda d: d.update(tile=0), "tile 0 must be a positive number"),
        (lambda d: d.update(min_tokens=-1), "min_tokens -1 must be a non-negative"),
        (lambda d: d.update(units="compute"), "plan.units is str"),
    ],
)
def test_malformed_json_is_refused_with_the_field_named(edit, match):
    d = _doc()
    edit(d)
    with pytest.raises(PlanError, match=match):
        PipelinePlan.from_json(json.dumps(d))


def test_rules_first_match_wins_classes_and_patterns():
    units = (Unit("c"), Unit("m", "memory"))
    plan = PipelinePlan(
        units,
        (
            OpRule(pattern=r"model\.layers\.0\..*", fractions=(1.0,), units=("m",)),
            OpRule(ops=("norm",), fractions=(0.5, 0.5), units=("c", "m")),
            OpRule(ops=("linear",), pattern=".*down_proj", fractions=(0.25, 0.75), units=("c",)),
        ),
    )
    assert plan.rule_for("linear", "model.layers.0.mlp.down_proj") is plan.rules[0]
    assert plan.rule_for("add_rms_norm", "model.layers.1.input_layernorm") is plan.rules[1]
    assert plan.rule_for("rms_norm_quant", "model.norm") is plan.rules[1]
    assert plan.rule_for("linear", "model.layers.1.mlp.down_proj") is plan.rules[2]
    assert plan.rule_for("linear", "model.layers.1.mlp.gate_up_proj") is None
    assert plan.rules[1].unit_of(1) == "m" and plan.rules[2].unit_of(1) == "c"
    assert plan.unit_index("m") == 1


def test_default_plan_puts_attention_on_a_memory_unit():
    plan = default_plan(None, "cuda")
    attn, gemm = plan.rule_for("attention", "a"), plan.rule_for("linear", "b")
    assert attn is not None and gemm is not None
    assert plan.units[plan.unit_index(attn.units[0])].kind == "memory"
    assert plan.units[plan.unit_index(gemm.units[0])].kind == "compute"
    assert attn.num_nano == gemm.num_nano == 2 and plan.tile == 128 and plan.min_tokens == 256
    assert unsplit_plan().rule_for("linear", "x") is None
    with pytest.raises(PlanError, match="device 'tpu'"):
        default_plan(None, "tpu")


def _oracle_cuts(n, fractions, tile, bounds):
    cuts, acc = [0], 0.0
    for f in fractions[:-1]:
        acc += f
        x = acc * n
        cands = bounds if bounds is not None else range(0, n + tile, tile)
        best = min(cands, key=lambda c: (abs(c - x), c))
        if cuts[-1] < best < n:
            cuts.append(best)
    return [*cuts, n]


@settings(max_examples=60)
@given(
    st.integers(1, 300),
    st.integers(1, 4).flatmap(lambda n: st.lists(st.integers(1, 9), min_size=n, max_size=n)),
    st.sampled_from([1, 4, 16, 128]),
    st.booleans(),
    st.data(),
)
def test_nano_ranges(n, weights, tile, snap, data):
    fractions = _fractions(len(weights), [*weights, 1, 1, 1])
    bounds = None
    if snap:
        inner = data.draw(st.sets(st.integers(1, n - 1), max_size=5)) if n > 1 else set()
        bounds = [0, *sorted(inner), n]
    cuts = nano_ranges(n, fractions, tile, bounds)
    assert cuts[0] == 0 and cuts[-1] == n and all(a < b for a, b in itertools.pairwise(cuts))
    assert len(cuts) - 1 <= len(fractions)
    for c in cuts[1:-1]:
        assert c in bounds if bounds is not None else c % tile == 0
    assert cuts == _oracle_cuts(n, fractions, tile, bounds)


def test_nano_ranges_examples():
    assert nano_ranges(256, (0.5, 0.5), 128) == [0, 128, 256]
    assert nano_ranges(100, (0.5, 0.5), 128) == [0, 100]  # under a tile: unsplit
    assert nano_ranges(2048, (0.125, 0.1875, 0.375, 0.3125), 128) == [0, 256, 640, 1408, 2048]  # NanoFlow's
    assert nano_ranges(10, (0.5, 0.5), 1, bounds=[0, 3, 10]) == [0, 3, 10]  # a sequence is never cut
    assert nano_ranges(10, (0.5, 0.5), 1, bounds=[0, 10]) == [0, 10]
