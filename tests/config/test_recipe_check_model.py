"""check_against_model: the model-dependent rules, before any weight is loaded."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from lowbit.config import RecipeError, check_against_model, model_arch, parse_config, valid_group_sizes
from lowbit.models import ArchConfig

ARCH = {"hidden_size": 128, "intermediate_size": 320, "num_layers": 2, "num_heads": 4, "num_kv_heads": 2}


def problems(recipe: dict, arch: ArchConfig | None = None, sets: tuple[str, ...] = ()) -> dict:
    recipe = {"model": {"architecture": ARCH}, **recipe}
    cfg = parse_config(recipe, source="m.yaml", sets=sets)
    with pytest.raises(RecipeError) as info:
        check_against_model(cfg, arch or model_arch(cfg))
    return {p.path: p for p in info.value.problems}


def test_group_size_not_dividing_names_module_and_divisors():
    p = problems({"quantization": {"weights": {"group_size": 128}}})["quantization.weights.group_size"]
    assert p.value == "128"
    assert "does not divide in_features 320 of model.layers.0.mlp.down_proj (and 1 more)" in p.problem
    assert "use 16, 32, 64 or -1 (per channel)" in p.fix and "128, 320" in p.fix
    assert str(p).startswith("m.yaml: quantization.weights.group_size: 128: ")


def test_group_size_blamed_on_the_override_that_states_it():
    recipe = {
        "quantization": {
            "weights": {"group_size": 64},
            "overrides": [
                {"pattern": r".*down_proj", "group_size": 96},
                {"pattern": r".*up_proj", "dtype": "int8"},  # inherits 64: fine
            ],
        }
    }
    found = problems(recipe)
    assert list(found) == ["quantization.overrides[0].group_size"]
    assert "in_features 320 of model.layers.0.mlp.down_proj" in found["quantization.overrides[0].group_size"].problem
    # from the command line: the --set is named as the source
    found = problems({"quantization": {"weights": {"group_size": 64}}}, sets=("quantization.weights.group_size=48",))
    assert found["quantization.weights.group_size"].source == "--set quantization.weights.group_size=48"


@settings(max_examples=40)
@given(st.lists(st.integers(1, 64).map(lambda x: 16 * x), min_size=1, max_size=4), st.sampled_from([32, 100, 128]))
def test_suggested_group_sizes_divide_every_in_features(ks, near):
    sizes = valid_group_sizes(ks, near)
    assert sizes and all(k % g == 0 for g in sizes for k in ks)
    assert all(g >= 16 and g & (g - 1) == 0 for g in sizes)  # 16 divides every K here: kernel-friendly sizes
    assert sizes == sorted(sizes)


def test_suggested_group_sizes_without_power_of_two():
    assert valid_group_sizes([15, 45]) == [3, 5, 15]


def test_patterns_that_match_nothing_or_never_apply():
    recipe = {
        "quantization": {
            "overrides": [
                {"pattern": r"model\.layers\.0\..*", "dtype": "int8"},
                {"pattern": r"q_proj", "dtype": "int3"},  # re.search would match; fullmatch does not
                {"pattern": r"model\.layers\.0\.mlp\.up_proj", "dtype": "int2"},  # shadowed by [0]
                {"pattern": r"model\.layer\.1\.mlp\.gate_proj", "dtype": "int2"},  # typo
                {"pattern": r"lm_head", "dtype": "int8"},  # ignored first
            ],
            "ignore": ["lm_head", r"model\.norm"],
        }
    }
    found = problems(recipe)
    assert "write '.*q_proj'" in found["quantization.overrides[1].pattern"].fix
    shadowed = found["quantization.overrides[2].pattern"]
    assert "never applies" in shadowed.problem and "move it before quantization.overrides[0]" in shadowed.fix
    typo = found["quantization.overrides[3].pattern"]
    assert typo.problem == "matches no linear module of this model"
    assert "model.layers.1.mlp.gate_proj" in typo.fix
    assert "quantization.ignore[0]" in found["quantization.overrides[4].pattern"].problem
    assert "matches no linear module" in found["quantization.ignore[1]"].problem
    assert "quantization.overrides[0].pattern" not in found and "quantization.ignore[0]" not in found


def test_lengths_and_attention_limits():
    arch = ArchConfig("mistral", 256, 160, 320, 2, 4, 2, 36, max_position_embeddings=1024, sliding_window=256)
    recipe = {
        "quantization": {"weights": {"group_size": 32}, "kv_cache": {"dtype": "int4"}, "algorithm": "awq",
                         "calibration": {"seq_len": 2048}},
        "target": {"max_model_len": 2048, "device": "cuda"},
    }  # fmt: skip
    found = problems(recipe, arch)
    mml = found["target.max_model_len"]
    assert "max_position_embeddings 1024" in mml.problem or "sliding_window 256" in mml.problem
    # both limits are reported (the dict above keeps one problem per field)
    cfg = parse_config({"model": {"architecture": ARCH}, **recipe}, source="m.yaml")
    with pytest.raises(RecipeError) as info:
        check_against_model(cfg, arch)
    limits = " | ".join(p.problem for p in info.value.problems if p.path == "target.max_model_len")
    assert "max_position_embeddings 1024" in limits and "sliding_window 256" in limits
    assert "head_dim 36 is not a multiple of 8" in found["quantization.kv_cache.dtype"].problem
    assert "power-of-two head_dim" in found["target.backend"].problem and "tvm" in found["target.backend"].fix
    assert "seq_len <= 1024" in found["quantization.calibration.seq_len"].fix


def test_a_fitting_recipe_passes():
    cfg = parse_config({"model": {"architecture": ARCH}, "quantization": {"weights": {"group_size": 64}}})
    check_against_model(cfg, model_arch(cfg))
    # and algorithm none never complains about group sizes
    cfg = parse_config({"model": {"architecture": ARCH}, "quantization": {"algorithm": "none"}})
    check_against_model(cfg, model_arch(cfg))
