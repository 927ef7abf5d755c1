"""Every class of recipe error names the source, the dotted field path, the value and a fix; all problems of a
file come in one RecipeError."""

from __future__ import annotations

import warnings
from pathlib import Path

import pytest

from lowbit.config import RecipeError, RecipeWarning, load_config, parse_config


def error_of(tmp_path: Path, text: str, sets: tuple[str, ...] = ()) -> RecipeError:
    p = tmp_path / "model.yaml"
    p.write_text(text)
    with pytest.raises(RecipeError) as info:
        load_config(p, sets)
    return info.value


def only(err: RecipeError, path: str):
    hits = [p for p in err.problems if p.path == path]
    assert hits, f"no problem at {path}: {err}"
    return hits[0]


@pytest.mark.parametrize(
    ("text", "path", "suggestion"),
    [
        ("modle: {}\n", "modle", "'model'"),
        ("model: {sorce: synthetic}\n", "model.sorce", "'source'"),
        ("quantization: {weights: {gruop_size: 64}}\n", "quantization.weights.gruop_size", "'group_size'"),
        ("quantization: {kv_cache: {dtpye: int8}}\n", "quantization.kv_cache.dtpye", "'dtype'"),
        ("quantization: {overrides: [{pattern: lm_head, grop_size: 64}]}\n", "quantization.overrides[0].grop_size",
         "'group_size'"),
        ("target: {tuning: {budget: 5}}\n", "target.tuning.budget", "'budget_s'"),
        ("model: {architecture: {num_hidden_layers: 3}}\n", "model.architecture.num_hidden_layers", "'num_layers'"),
    ],
)  # fmt: skip
def test_unknown_key_names_path_and_closest_key(tmp_path, text, path, suggestion):
    err = error_of(tmp_path, text)
    p = only(err, path)
    assert p.problem == "unknown key" and suggestion in p.fix
    assert str(p).startswith(f"{tmp_path / 'model.yaml'}: {path}: ")


def test_unknown_key_without_close_match_lists_valid_keys(tmp_path):
    p = only(error_of(tmp_path, "quantization: {weights: {xyzzy: 1}}\n"), "quantization.weights.xyzzy")
    assert "dtype" in p.fix and "group_size" in p.fix and "zero_mode" in p.fix


@pytest.mark.parametrize(
    ("line", "path", "fix"),
    [
        ("quantization: {activations: off}", "quantization.activations", "quote it: activations: 'float'"),
        ("target: {tuning: {policy: off}}", "target.tuning.policy", "quote it: policy: 'off'"),
        ("target: {tuning: {policy: No}}", "target.tuning.policy", "quote it: policy: 'off'"),
        ("quantization: {kv_cache: {dtype: yes}}", "quantization.kv_cache.dtype", "quote it: dtype: 'float16'"),
        ("target: {backend: on}", "target.backend", "quote it"),
    ],
)
def test_yaml_booleans_in_enum_fields(tmp_path, line, path, fix):
    p = only(error_of(tmp_path, line + "\n"), path)
    spelled = line.split(": ")[-1].strip("}")
    assert p.value.startswith(("True", "False")) and f"YAML reads bare {spelled} as a boolean" in p.value
    assert p.problem.startswith("not one of") and fix in p.fix


def test_yaml_boolean_from_dict_data_still_explained():
    with pytest.raises(RecipeError, match=r"quantization\.activations: False \(YAML reads bare on/off/yes/no"):
        parse_config({"quantization": {"activations": False}})


def test_enum_typo_suggests_choice(tmp_path):
    p = only(error_of(tmp_path, "target: {backend: trition}\n"), "target.backend")
    assert "did you mean 'triton'" in p.fix and "auto | tvm | triton | reference" in p.problem


@pytest.mark.parametrize(
    ("text", "path", "words"),
    [
        ("quantization: {weights: {group_size: '64'}}", "quantization.weights.group_size", "not an integer"),
        ("quantization: {weights: {group_size: true}}", "quantization.weights.group_size", "not an integer"),
        ("quantization: {weights: {group_size: 0}}", "quantization.weights.group_size", "not a group size"),
        ("quantization: {weights: {dtype: int16}}", "quantization.weights.dtype", "1..8 bits"),
        ("quantization: {weights: {dtype: int44}}", "quantization.weights.dtype", "int44"),
        ("quantization: {weights: 4}", "quantization.weights", "not a mapping"),
        ("quantization: {ignore: ['model.(']}", "quantization.ignore[0]", "not a valid regular expression"),
        ("target: {max_model_len: -5}", "target.max_model_len", "must be > 0"),
        ("quantization: {qoq: {smooth_alpha: 2}}", "quantization.qoq.smooth_alpha", "must be <= 1"),
        ("schema_version: 2", "schema_version", "not one of 1"),
        ("schema_version: '1'", "schema_version", "not one of 1"),
        ("quantization: {weights: {dtype: bool}}", "quantization.weights.dtype", "not a code dtype"),
        (
            "model: {architecture: {rope_scaling: {rope_type: yarn}}}",
            "model.architecture.rope_scaling.rope_type",
            "not supported",
        ),
    ],
)
def test_type_and_range_errors(tmp_path, text, path, words):
    p = only(error_of(tmp_path, text + "\n"), path)
    assert words in f"{p.value}: {p.problem}" and p.fix


def test_all_problems_of_a_file_in_one_error(tmp_path):
    text = (
        "model: {sorce: synthetic}\n"
        "quantization: {activations: off, weights: {gruop_size: 64}}\n"
        "target: {backend: trition}\n"
    )
    err = error_of(tmp_path, text)
    assert {p.path for p in err.problems} == {
        "model.sorce",
        "quantization.activations",
        "quantization.weights.gruop_size",
        "target.backend",
    }
    assert str(err).splitlines()[0] == "4 problems in the recipe:"
    assert len(str(err).splitlines()) == 5


def test_duplicate_key_and_yaml_syntax(tmp_path):
    err = error_of(tmp_path, "model: {}\nmodel: {}\n")
    assert only(err, "model").problem.startswith("duplicate key")
    err = error_of(tmp_path, "model: [1\n")
    assert "not valid YAML" in str(err) and "line" in err.problems[0].value


@pytest.mark.parametrize(
    ("yaml_text", "path", "fix"),
    [
        # W4A8 needs unsigned codes; <= 7 bits per channel
        ("quantization: {activations: int8, weights: {dtype: int4}}", "quantization.weights.dtype", "uint4"),
        ("quantization: {activations: int8, weights: {dtype: uint8, group_size: -1}}", "quantization.weights.dtype",
         "uint1..uint7"),
        ("quantization: {activations: int8, weights: {dtype: fp4_e2m1}}", "quantization.weights.dtype", "uint4"),
        ("quantization: {activations: int8, weights: {dtype: uint4, symmetric: true}}",
         "quantization.weights.symmetric", "drop symmetric"),
        # float formats are symmetric; uints need a zero point
        ("quantization: {weights: {dtype: fp6_e3m2, symmetric: false}}", "quantization.weights.symmetric",
         "drop symmetric"),
        ("quantization: {weights: {dtype: fp4_e2m1, zero_mode: post}}", "quantization.weights.zero_mode",
         "drop zero_mode"),
        ("quantization: {weights: {dtype: uint4, symmetric: true}}", "quantization.weights.symmetric",
         "symmetric: false"),
        ("quantization: {weights: {dtype: int4, symmetric: false, zero_mode: none}}",
         "quantization.weights.zero_mode", "post"),
        # an override's merged result, with what it inherited named
        ("quantization: {activations: int8, weights: {dtype: uint4},"
         " overrides: [{pattern: lm_head, dtype: int8}]}", "quantization.overrides[0].dtype", "uint4"),
        ("quantization: {overrides: [{pattern: lm_head, skip: true, dtype: int8}]}",
         "quantization.overrides[0].skip", "drop dtype"),
        ("quantization: {algorithm: qoq, weights: {dtype: uint4}}", "quantization.algorithm", "activations: int8"),
        ("target: {backend: triton, device: cpu}", "target.backend", "tvm"),
        ("target: {device: cuda}\nquantization: {weights: {group_size: 8}}", "quantization.weights.group_size",
         "group_size 16 or more"),
        ("target: {page_size: 24}", "target.page_size", "16"),
        ("target: {tuning: {policy: tune, budget_s: 0}}", "target.tuning.budget_s", "budget_s > 0"),
        ("model: {architecture: {num_heads: 6, num_kv_heads: 4, hidden_size: 192}}",
         "model.architecture.num_kv_heads", "1, 2, 3, 6"),
        ("model: {architecture: {hidden_size: 100, num_heads: 3}}", "model.architecture.head_dim", "set head_dim"),
        ("model: {architecture: {head_dim: 33}}", "model.architecture.head_dim", "even"),
        ("model: {source: synthetic, path: /x}", "model.path", "hf_dir"),
    ],
)  # fmt: skip
def test_recipe_rules(tmp_path, yaml_text, path, fix):
    p = only(error_of(tmp_path, yaml_text + "\n"), path)
    assert fix in p.fix, str(p)


def test_inherited_value_is_named(tmp_path):
    text = "quantization: {activations: int8, weights: {dtype: int4}, overrides: [{pattern: lm_head, group_size: -1}]}"
    p = only(error_of(tmp_path, text + "\n"), "quantization.overrides[0].dtype")
    assert "inherited from quantization.weights.dtype" in p.problem


def test_hf_dir_path_missing_or_wrong(tmp_path):
    p = only(error_of(tmp_path, "model: {source: hf_dir}\n"), "model.path")
    assert p.value == "<missing>" and "checkpoint directory" in p.fix
    p = only(error_of(tmp_path, "model: {source: hf_dir, path: ./nowhere}\n"), "model.path")
    assert p.problem == "no such directory" and str(tmp_path / "nowhere") in p.value
    (tmp_path / "ckpt").mkdir()
    err = error_of(tmp_path, "model: {source: hf_dir, path: ckpt, architecture: {num_layers: 2}}\n")
    assert only(err, "model.path").problem == "has no config.json"
    assert "synthetic" in only(err, "model.architecture").problem
    (tmp_path / "ckpt" / "config.json").write_text("{}")
    (tmp_path / "ckpt" / "model.safetensors.index.json").write_text('{"weight_map": {"a": "model-1.safetensors"}}')
    err = error_of(tmp_path, "model: {source: hf_dir, path: ckpt}\n")
    assert "model-1.safetensors" in only(err, "model.path").problem
    # the same file read later, away from the checkpoint
    cfg = parse_config({"model": {"source": "hf_dir", "path": "/gone"}}, check_files=False)
    assert cfg.model.name == "gone"


def test_calibration_file_rules(tmp_path):
    base = "quantization: {algorithm: awq, calibration: %s}\n"
    assert "needs a path" in only(error_of(tmp_path, base % "{source: file}"), "quantization.calibration.path").problem
    p = only(error_of(tmp_path, base % "{source: file, path: c.csv}"), "quantization.calibration.path")
    assert "not a .txt or .jsonl file" in p.problem and ".jsonl" in p.fix
    p = only(error_of(tmp_path, base % "{source: file, path: c.jsonl}"), "quantization.calibration.path")
    assert p.problem == "no such file"
    p = only(error_of(tmp_path, base % "{source: synthetic, path: c.jsonl}"), "quantization.calibration.path")
    assert "source: file" in p.fix
    (tmp_path / "c.jsonl").write_text('{"text": "hi"}\n')
    (tmp_path / "model.yaml").write_text(base % "{source: file, path: c.jsonl}")
    assert load_config(tmp_path / "model.yaml").quantization.calibration.path == str(tmp_path / "c.jsonl")


def test_real_checkpoint_with_random_calibration_warns(tmp_path):
    cfg = {"model": {"source": "hf_dir", "path": "/m"}, "quantization": {"algorithm": "awq"}}
    with pytest.warns(RecipeWarning, match="random tokens"):
        parse_config(cfg, check_files=False)
    fp8 = {"model": {"source": "hf_dir", "path": "/m"}, "quantization": {"kv_cache": {"dtype": "fp8_e4m3"}}}
    with pytest.warns(RecipeWarning, match="kv_cache fp8_e4m3.* random tokens"):  # its layer scales are calibrated
        parse_config(fp8, check_files=False)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        parse_config({"quantization": {"algorithm": "awq"}})  # synthetic model: nothing to warn about
