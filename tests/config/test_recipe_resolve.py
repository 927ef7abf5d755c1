"""Recipe resolution: ignore, then the first matching override, then the defaults; the weight rules agree with
lowbit.ops.weight (the quantizer that consumes the specs), checked exhaustively and over random override lists."""

from __future__ import annotations

import itertools
import re
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from lowbit.config import ALGORITHMS, LinearSpec, RecipeError, load_config, model_arch, parse_config, resolve_linear
from lowbit.config.recipe import check_code_dtype, scheme_for, zero_mode_for
from lowbit.config.schema import ALGORITHMS as SCHEMA_ALGORITHMS
from lowbit.config.schema import KV_CACHE_DTYPES
from lowbit.dtypes import ALL_TYPES
from lowbit.models import ArchConfig
from lowbit.ops.weight import _code_dtype, _zero_mode, quantize

EXAMPLES = sorted((Path(__file__).parents[2] / "examples").glob("*.yaml"))
TINY = ArchConfig("llama", 64, 64, 128, 3, 4, 2, 16)
NAMES = [m.name for m in TINY.linears()]


def test_first_matching_override_wins():
    recipe = {
        "quantization": {
            "weights": {"dtype": "int4", "group_size": 32},
            "overrides": [
                {"pattern": r"model\.layers\.0\..*", "dtype": "int8"},
                {"pattern": r".*\.q_proj", "dtype": "int3", "group_size": 16},
                {"pattern": r"model\.layers\.0\.self_attn\.q_proj", "dtype": "int2"},  # shadowed by the first
                {"pattern": r".*down_proj", "skip": True},
            ],
            "ignore": ["lm_head", r"model\.layers\.2\.mlp\..*"],
        }
    }
    cfg = parse_config(recipe)
    assert resolve_linear(cfg, "model.layers.0.self_attn.q_proj") == LinearSpec("rtn", "int8", 32, "none")
    assert resolve_linear(cfg, "model.layers.1.self_attn.q_proj") == LinearSpec("rtn", "int3", 16, "none")
    assert resolve_linear(cfg, "model.layers.1.self_attn.k_proj") == LinearSpec("rtn", "int4", 32, "none")
    assert resolve_linear(cfg, "model.layers.1.mlp.down_proj") is None  # skip
    assert resolve_linear(cfg, "model.layers.0.mlp.down_proj") == LinearSpec("rtn", "int8", 32, "none")
    assert resolve_linear(cfg, "model.layers.2.mlp.up_proj") is None  # ignore
    assert resolve_linear(cfg, "lm_head") is None
    # reordering the first two changes layer 0's q_proj
    swapped = dict(recipe["quantization"], overrides=[recipe["quantization"]["overrides"][i] for i in (1, 0, 2, 3)])
    first = resolve_linear(parse_config({"quantization": swapped}), "model.layers.0.self_attn.q_proj")
    assert first is not None and first.weight_dtype == "int3"
    # algorithm none: everything dense
    none = parse_config(recipe, sets=["quantization.algorithm=none"])
    assert all(resolve_linear(none, n) is None for n in NAMES)


def test_override_stating_dtype_takes_its_symmetry():
    cfg = parse_config(
        {
            "quantization": {
                "weights": {"dtype": "uint4", "symmetric": False, "zero_mode": "pre", "group_size": 64},
                "overrides": [
                    {"pattern": ".*down_proj", "dtype": "fp6_e3m2"},  # no symmetric: false inherited
                    {"pattern": ".*up_proj", "group_size": 32},  # same dtype: zero_mode pre inherited
                    {"pattern": ".*gate_proj", "dtype": "uint4"},  # restated dtype: default zero (post)
                ],
            }
        }
    )
    assert resolve_linear(cfg, "model.layers.0.mlp.down_proj") == LinearSpec("rtn", "fp6_e3m2", 64, "none")
    assert resolve_linear(cfg, "model.layers.0.mlp.up_proj") == LinearSpec("rtn", "uint4", 32, "pre")
    assert resolve_linear(cfg, "model.layers.0.mlp.gate_proj") == LinearSpec("rtn", "uint4", 64, "post")
    assert resolve_linear(cfg, "model.layers.0.self_attn.q_proj") == LinearSpec("rtn", "uint4", 64, "pre")


def test_scheme_follows_activations():
    cfg = parse_config(
        {
            "quantization": {
                "algorithm": "qoq",
                "activations": "int8",
                "weights": {"dtype": "uint4", "group_size": 64},
                "overrides": [{"pattern": ".*down_proj", "group_size": -1}],
            }
        }
    )
    assert resolve_linear(cfg, "model.layers.0.mlp.up_proj") == LinearSpec("qoq", "uint4", 64, "post", "w4a8_group")
    down = resolve_linear(cfg, "model.layers.0.mlp.down_proj")
    assert down == LinearSpec("qoq", "uint4", -1, "post", "w4a8_channel") and down.act_int8


def test_weight_dtype_names_are_canonical():
    cfg = parse_config({"quantization": {"weights": {"dtype": "i4"}, "overrides": [{"pattern": "x", "dtype": "U4"}]}})
    assert cfg.quantization.weights.dtype == "int4" and cfg.quantization.overrides[0].dtype == "uint4"


# ---- the rules vs lowbit.ops.weight (the oracle: what quantize accepts) ------------------------------------


def _oracle(dt: Any, scheme: str, symmetric: bool | None, zero_mode: str | None) -> str | None:
    """lowbit.ops.weight's resolution of the zero mode, None where it raises."""
    try:
        _code_dtype(dt.name, scheme)
        return _zero_mode(dt, scheme, symmetric, zero_mode)
    except ValueError:
        return None


def _ours(dt: Any, scheme: str, symmetric: bool | None, zero_mode: str | None) -> str | None:
    try:
        check_code_dtype(dt, scheme)
        return zero_mode_for(dt, scheme, symmetric, zero_mode)
    except ValueError:
        return None


def test_weight_rules_equal_ops_weight_exhaustively():
    code_types = [t for t in ALL_TYPES if t.bits <= 8 and not t.is_bool]
    cases = itertools.product(
        code_types, ("w_a16", "w4a8_group", "w4a8_channel"), (None, True, False), (None, "none", "post", "pre")
    )
    n = 0
    for dt, scheme, sym, zero in cases:
        assert _ours(dt, scheme, sym, zero) == _oracle(dt, scheme, sym, zero), (dt.name, scheme, sym, zero)
        n += 1
    assert n > 1000
    assert scheme_for("float", -1) == "w_a16" and scheme_for("int8", 32) == "w4a8_group"


def test_enums_match_the_library():
    from lowbit.ops.attention import KV_DTYPES

    assert set(KV_CACHE_DTYPES) == set(KV_DTYPES)
    assert SCHEMA_ALGORITHMS == ALGORITHMS


# ---- random override lists vs an independent resolver --------------------------------------------------

PATTERNS = [
    r"model\.layers\.0\..*",
    r"model\.layers\.\d+\.self_attn\..*",
    r".*\.(q|k)_proj",
    r".*mlp\.down_proj",
    r"model\.layers\.2\.mlp\.up_proj",
    r".*",
    r"lm_head",
    r"nothing",
]
DTYPES = ["int4", "int8", "uint4", "int3", "fp6_e3m2", "uint8"]


@st.composite
def recipes(draw: Any) -> dict[str, Any]:
    def weights_keys(required: bool) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for key, values in (
            ("dtype", DTYPES),
            ("group_size", [16, 32, 64, -1]),
            ("symmetric", [True, False]),
            ("zero_mode", ["none", "post", "pre"]),
        ):
            if draw(st.booleans()) or (required and key in ("dtype", "group_size")):
                out[key] = draw(st.sampled_from(values))
        return out

    overrides = []
    for _ in range(draw(st.integers(0, 5))):
        o = {"pattern": draw(st.sampled_from(PATTERNS))}
        if draw(st.integers(0, 4)) == 0:
            o["skip"] = True
        else:
            o.update(weights_keys(False))
        overrides.append(o)
    return {
        "model": {"architecture": {"hidden_size": 64, "intermediate_size": 128, "num_layers": 3, "num_heads": 4}},
        "quantization": {
            "weights": weights_keys(True),
            "activations": draw(st.sampled_from(["float", "float", "int8"])),
            "overrides": overrides,
            "ignore": draw(st.lists(st.sampled_from(PATTERNS[3:]), max_size=2)),
        },
    }


def _independent(q: dict[str, Any], name: str) -> dict[str, Any] | None:
    base = {"symmetric": None, "zero_mode": None, **q["weights"]}
    if any(re.fullmatch(p, name) for p in q["ignore"]):
        return None
    for o in q["overrides"]:
        if re.fullmatch(o["pattern"], name):
            if o.get("skip"):
                return None
            w = dict(base)
            if "dtype" in o:
                w.update(dtype=o["dtype"], symmetric=None, zero_mode=None)
            w.update({k: o[k] for k in ("group_size", "symmetric", "zero_mode") if k in o})
            return w
    return base


def _oracle_spec(q: dict[str, Any], w: dict[str, Any]) -> LinearSpec | None:
    from lowbit.dtypes import dtype

    scheme = "w_a16" if q["activations"] == "float" else ("w4a8_channel" if w["group_size"] == -1 else "w4a8_group")
    mode = _oracle(dtype(w["dtype"]), scheme, w["symmetric"], w["zero_mode"])
    return None if mode is None else LinearSpec("rtn", w["dtype"], w["group_size"], mode, scheme)


@settings(max_examples=60)
@given(recipes())
def test_resolution_matches_an_independent_resolver(recipe):
    q = recipe["quantization"]
    # every rule's merged weights (the defaults and each non-skip override), as the oracle sees them
    rules = [_independent({**q, "ignore": [], "overrides": []}, "x")]
    for o in q["overrides"]:
        if not o.get("skip"):
            rules.append(_independent({**q, "ignore": [], "overrides": [{**o, "pattern": ".*"}]}, "x"))
    valid = all(_oracle_spec(q, w) is not None for w in rules if w is not None)
    try:
        cfg = parse_config(recipe)
    except RecipeError as e:
        assert not valid, f"rejected a recipe the quantizer takes: {e}"
        return
    assert valid, "accepted a recipe the quantizer rejects"
    for name in NAMES:
        w = _independent(q, name)
        assert resolve_linear(cfg, name) == (None if w is None else _oracle_spec(q, w)), name


# ---- the examples' specs are ones the quantizer takes -------------------------------------------------------


@pytest.mark.parametrize("path", EXAMPLES, ids=[p.stem for p in EXAMPLES])
def test_example_specs_quantize(path):
    cfg = load_config(path)
    arch = model_arch(cfg)
    rng = np.random.default_rng(0)
    seen = set()
    for m in arch.linears():
        spec = resolve_linear(cfg, m.name)
        if spec is None or (spec, m.in_features) in seen:
            continue
        seen.add((spec, m.in_features))
        w = rng.standard_normal((16, m.in_features)).astype(np.float32)  # 16 output rows are enough
        qw = quantize(w, spec.weight_dtype, spec.group_size, zero_mode=spec.zero_mode, scheme=spec.scheme)
        assert (qw.zero_mode, qw.scheme) == (spec.zero_mode, spec.scheme)
        err = np.linalg.norm(qw.dequantize() - w) / np.linalg.norm(w)
        assert np.isfinite(err) and err < 0.35, (m.name, spec, err)
    assert seen
