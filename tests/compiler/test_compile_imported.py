"""`lowbit compile` on AutoAWQ (GEMM) and GPTQ (v1 symmetric, v2 asymmetric) checkpoint directories.

Oracle: lowbit's float64 reference forward on the checkpoint's dequantized weights (what the quantized
checkpoint *is*): the compiled artifact's logits (TVM kernels on the stored codes) must match it within fp32
rounding, and `lowbit generate` must produce its greedy tokens. The checkpoints are written from a tiny random
transformers Llama by lowbit's exporters (tested against hand-decoded words in tests/quant)."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
import yaml

pytest.importorskip("transformers")

from hf_checkpoints import CHAT_TEMPLATE, FORMATS, hf_model, quantized_checkpoint

from lowbit.cli import main
from lowbit.compiler import compile_model, load_compiled
from lowbit.config import RecipeError, load_config
from lowbit.models import ArrayWeights
from lowbit.models.reference import reference_logits
from lowbit.ops.weight import QuantizedWeight

PROMPT = [5, 17, 42, 7]


@pytest.fixture(scope="module")
def float_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    _, path = hf_model("llama-bias-tied", tmp_path_factory.mktemp("float"))
    return path


@pytest.fixture(scope="module")
def checkpoints(float_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[Path, dict]]:
    root = tmp_path_factory.mktemp("quantized")
    return {fmt: (root / fmt, quantized_checkpoint(float_dir, root / fmt, fmt)) for fmt in FORMATS}


def write_recipe(tmp_path: Path, model_path: Path, **quantization: object) -> Path:
    spec = {
        "model": {"source": "hf_dir", "path": str(model_path), "name": "q", "dtype": "float32"},
        "quantization": {"algorithm": "imported", "kv_cache": {"dtype": "float16"}, **quantization},
        "target": {"backend": "tvm", "device": "cpu", "max_model_len": 64, "tuning": {"policy": "off"}},
    }
    path = tmp_path / "model.yaml"
    path.write_text(yaml.safe_dump(spec))
    return path


def greedy(arch: object, weights: ArrayWeights, prompt: list[int], n: int) -> list[int]:
    ids = list(prompt)
    for _ in range(n):
        ids.append(int(np.argmax(reference_logits(arch, weights, np.asarray([ids]))[0, -1])))
    return ids[len(prompt) :]


SKIP_LAYER0_MLP = [{"pattern": r"model\.layers\.0\.mlp\..*", "skip": True}]  # served dense, dequantized


@pytest.mark.parametrize("fmt", list(FORMATS))
def test_compiled_checkpoint_matches_its_dequantized_reference(fmt, checkpoints, tmp_path, capsys) -> None:
    path, floats = checkpoints[fmt]
    out = tmp_path / "artifact"
    recipe = write_recipe(tmp_path, path, **({"overrides": SKIP_LAYER0_MLP} if fmt == "gptq-v2-asym" else {}))
    evaluated = fmt == "awq"  # the evaluate phase does not depend on the format: once is enough
    assert main(["compile", str(recipe), "-o", str(out), "--quiet", "--eval-tokens", "8" if evaluated else "0"]) == 0
    model = load_compiled(out)
    qc, dtype, zero_mode, _ = FORMATS[fmt]
    # the recipe was resolved to the checkpoint's format, and the artifact states it
    resolved = yaml.safe_load((out / "model.yaml").read_text())["quantization"]
    assert resolved["algorithm"] == "imported" and resolved["weights"]["dtype"] == dtype
    assert resolved["weights"]["group_size"] == qc["group_size"]
    # every decoder linear is served from the stored codes: exactly the dequantized checkpoint
    qkv = model.params["model.layers.1.self_attn.qkv_proj.weight"]
    assert isinstance(qkv, QuantizedWeight) and qkv.dtype.name == dtype and qkv.zero_mode == zero_mode
    want = np.concatenate([floats[f"model.layers.1.self_attn.{p}_proj.weight"] for p in "qkv"], axis=0)
    np.testing.assert_array_equal(qkv.dequantize(), want)
    assert not isinstance(model.params["model.embed_tokens.weight"], QuantizedWeight)  # tied: lm_head too
    down = model.params["model.layers.0.mlp.down_proj.weight"]
    assert isinstance(down, QuantizedWeight) == (fmt != "gptq-v2-asym")
    np.testing.assert_array_equal(np.asarray(down.dequantize() if isinstance(down, QuantizedWeight) else down),
                                  floats["model.layers.0.mlp.down_proj.weight"])  # fmt: skip

    weights = ArrayWeights(floats)
    ids = np.random.default_rng(1).integers(0, model.arch.vocab_size, 24)
    ref = reference_logits(model.arch, weights, ids[None])[0]
    got = model.runner().logits(ids.tolist()).numpy()
    err = float(np.linalg.norm(got - ref) / np.linalg.norm(ref))
    assert np.isfinite(err) and err < 2e-5, err

    report = json.loads((out / "report.json").read_text())
    if evaluated:
        assert report["accuracy"]["reference"] == "dequantized checkpoint"
        assert report["accuracy"]["kl_divergence"] < 1e-8 and report["accuracy"]["top1_agreement"] == 1.0
    src = report["source_quantization"]
    assert (src["quant_method"], src["bits"], src["weight_dtype"], src["modules"]) == (qc["quant_method"], 4, dtype, 14)
    specs = [m["spec"] for m in report["modules"] if m["spec"] is not None]
    assert len(specs) == (8 if fmt != "gptq-v2-asym" else 6)  # fused: qkv, o, gate_up, down per layer
    assert all(s.startswith(f"imported:{dtype}/g32/{zero_mode}") for s in specs)
    assert model.tokenizer_config["chat_template"] == CHAT_TEMPLATE

    if fmt != "awq":
        return  # the CLI paths below do not depend on the format
    capsys.readouterr()
    args = ["generate", str(out), "--prompt-ids", ",".join(map(str, PROMPT)), "--max-tokens", "4", "--ignore-eos"]
    assert main(args) == 0
    line = next(x for x in capsys.readouterr().out.splitlines() if "tokens [" in x)
    tokens = [int(t) for t in re.search(r"tokens \[([^\]]*)\]", line).group(1).split(",")]
    assert tokens == greedy(model.arch, weights, PROMPT, 4)

    assert main(["inspect", str(out)]) == 0
    text = capsys.readouterr().out
    assert "imported checkpoint:" in text and "14 quantized modules" in text and "tuning (policy off" in text


def _edit_config(path: Path, **changes: object) -> None:
    cfg = json.loads((path / "config.json").read_text())
    cfg["quantization_config"] = {**cfg["quantization_config"], **changes}
    (path / "config.json").write_text(json.dumps(cfg))


def _drop_tensor(path: Path, name: str) -> None:
    from safetensors.numpy import load_file, save_file

    tensors = load_file(str(path / "model.safetensors"))
    del tensors[name]
    save_file(tensors, str(path / "model.safetensors"))


@pytest.mark.parametrize(
    "fmt, breakage, match",
    [
        ("gptq-v1-sym", lambda p: _drop_tensor(p, "model.layers.0.mlp.down_proj.qzeros"),
         r"model\.layers\.0\.mlp\.down_proj has a qweight but no model\.layers\.0\.mlp\.down_proj\.qzeros"),
        ("gptq-v1-sym", lambda p: _edit_config(p, bits=8),
         r"at quantization_config\.bits=8 packs to .* it holds 4-bit codes: fix quantization_config\.bits"),
        ("gptq-v2-asym", lambda p: _edit_config(p, group_size=48),
         r"group_size 48 does not divide in_features 64 of model\.layers\.0\..*restore the config\.json"),
        ("awq", lambda p: _edit_config(p, bits=3),
         r"quantization_config\.bits: 3: AutoAWQ's GEMM format packs 4-bit codes only"),
        ("gptq-v2-asym", lambda p: _edit_config(p, desc_act=True),
         r"desc_act: True: act-order .* re-quantize with desc_act: false"),
    ],
)  # fmt: skip
def test_broken_checkpoints_fail_in_validate(fmt, breakage, match, checkpoints, tmp_path) -> None:
    path = tmp_path / "broken"
    shutil.copytree(checkpoints[fmt][0], path)
    breakage(path)
    with pytest.raises(RecipeError, match=match) as e:
        compile_model(load_config(write_recipe(tmp_path, path)), tmp_path / "out", quiet=True)
    assert e.value.problems[0].path == "model.path"
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize(
    "fmt, quantization, field, match",
    [
        ("awq", {"algorithm": "rtn"}, "quantization.algorithm",
         r"'rtn': the checkpoint .* is already quantized \(AutoAWQ gemm, 4-bit, g32, asymmetric\).*set "
         r"quantization\.algorithm: imported"),
        ("awq", {"weights": {"dtype": "int8"}}, "quantization.weights.dtype",
         r"'int8': the checkpoint stores AutoAWQ gemm.*write dtype: uint4"),
        ("gptq-v1-sym", {"weights": {"dtype": "int4", "group_size": 64}}, "quantization.weights.group_size",
         r"64: .*write group_size: 32"),
        ("gptq-v2-asym", {"activations": "int8", "algorithm": "imported"}, "quantization.activations",
         r"'int8': .*set quantization\.activations: float"),
        ("awq", {"overrides": [{"pattern": r".*down_proj", "dtype": "uint8"}]}, "quantization.overrides[0].dtype",
         r"an override would re-quantize it"),
        ("awq", {"kv_cache": {"dtype": "int8", "smooth_attention": True}}, "quantization.kv_cache.smooth_attention",
         r"SmoothAttention rescales W_q"),
    ],
)  # fmt: skip
def test_recipes_that_would_requantize_fail_in_validate(fmt, quantization, field, match, checkpoints, tmp_path):
    path = checkpoints[fmt][0]
    with pytest.raises(RecipeError, match=match) as e:
        compile_model(load_config(write_recipe(tmp_path, path, **quantization)), tmp_path / "out", quiet=True)
    assert e.value.problems[0].path == field
    assert not (tmp_path / "out").exists()


def test_imported_needs_a_quantized_checkpoint(float_dir, tmp_path) -> None:
    with pytest.raises(RecipeError, match=r"quantization\.algorithm: 'imported': .* no quantization_config"):
        compile_model(load_config(write_recipe(tmp_path, float_dir)), tmp_path / "out", quiet=True)
    spec = yaml.safe_load(write_recipe(tmp_path, float_dir).read_text())
    spec["model"] = {"source": "synthetic"}
    (tmp_path / "synthetic.yaml").write_text(yaml.safe_dump(spec))
    with pytest.raises(RecipeError, match=r"quantization\.algorithm: 'imported': .*a synthetic model has none"):
        load_config(tmp_path / "synthetic.yaml")


def test_algorithm_none_is_allowed_on_a_quantized_checkpoint(checkpoints, tmp_path) -> None:
    from lowbit.compiler.imported import checkpoint_of, imported_recipe
    from lowbit.config import model_arch

    cfg = load_config(write_recipe(tmp_path, checkpoints["gptq-v2-asym"][0], algorithm="none"))
    found = checkpoint_of(cfg)
    assert found is not None and found[0].describe() == "GPTQ v2, 4-bit, g32, asymmetric" and len(found[1]) == 14
    assert imported_recipe(cfg, found, model_arch(cfg)) is cfg  # dense linears from the dequantized weights


@pytest.mark.parametrize("layout", ["row", "reordered"])
def test_imported_param_moves_codes_without_rounding(layout: str) -> None:
    """Fused sources concatenate along out_features; symmetric int4 parts join an uint4 spec as q + 8 with
    zero 8; a spec'd module the checkpoint stores float is an error naming the fix."""
    from lowbit.compiler.imported import imported_param
    from lowbit.config.spec import LinearSpec
    from lowbit.ops.weight import quantize

    rng = np.random.default_rng(0)
    a = quantize(rng.standard_normal((32, 128)).astype(np.float32), "uint4", 32, zero_mode="post")
    b = quantize(rng.standard_normal((64, 128)).astype(np.float32), "int4", 32)
    spec = LinearSpec("imported", "uint4", 32, "post")
    qw = imported_param({"m.a": a, "m.b": b}, ("m.a.weight", "m.b.weight"), spec, layout)
    assert (qw.dtype.name, qw.zero_mode, qw.shape) == ("uint4", "post", (96, 128))
    np.testing.assert_array_equal(qw.dequantize(), np.concatenate([a.dequantize(), b.dequantize()]))
    sym = imported_param({"m.b": b}, ("m.b.weight",), LinearSpec("imported", "int4", 32, "none"), layout)
    np.testing.assert_array_equal(sym.dequantize(), b.dequantize())
    with pytest.raises(ValueError, match=r"m\.c\.weight is quantized by the recipe .* add 'm\\\\.c' to quantization"):
        imported_param({"m.a": a}, ("m.a.weight", "m.c.weight"), spec, layout)
    with pytest.raises(ValueError, match=r"m\.a: the recipe says symmetric int4 but the checkpoint's zeros"):
        imported_param({"m.a": a}, ("m.a.weight",), LinearSpec("imported", "int4", 32, "none"), layout)
