"""The recipe's own rules (no model needed), run by `load_config` after the schema: each yields FieldProblems
naming the field, its value and the fix. Model-dependent rules are in `check_model.py`."""

from __future__ import annotations

import difflib
import json
import warnings
from collections.abc import Iterator
from pathlib import Path

from lowbit.config.errors import FieldProblem, Loc, Problem
from lowbit.config.recipe import merge, spec_for
from lowbit.config.schema import CALIBRATION_SUFFIXES, Architecture, ModelYaml, Override, Quantization, Weights
from lowbit.models import ConfigError
from lowbit.models.arch import ROPE_TYPES

WEIGHT_KEYS = ("dtype", "group_size", "symmetric", "zero_mode")
TENSOR_PARALLEL = (1, 2, 4, 8)  # target.tensor_parallel values
TRITON_MIN_GROUP = {"w_a16": 16, "w4a8_group": 32}  # the smallest K of a tl.dot (fp16 / int8 operands)


class RecipeWarning(UserWarning):
    """A recipe that works but probably not as meant (e.g. AWQ scales fitted to random tokens)."""


def recipe_problems(cfg: ModelYaml, *, check_files: bool = True) -> list[Problem]:
    """Every model-independent problem of a schema-valid recipe (empty if none); warns RecipeWarning."""
    errors = [
        *_model_problems(cfg, check_files),
        *_quantization_problems(cfg),
        *_calibration_problems(cfg, check_files),
        *_target_problems(cfg),
    ]
    q = cfg.quantization
    if cfg.model.source == "hf_dir" and q.calibrated and q.calibration.source == "synthetic":
        warnings.warn(
            "quantization.calibration.source is synthetic: the calibration statistics (algorithm "
            f"{q.algorithm}, kv_cache {q.kv_cache.dtype}) come from random tokens, which misrepresents a real "
            "checkpoint; set source: file and a .txt/.jsonl path",
            RecipeWarning,
            stacklevel=3,
        )
    return [cfg.origins.problem(e) for e in errors]


# ---- model ---------------------------------------------------------------------------------------------


def _model_problems(cfg: ModelYaml, check_files: bool) -> Iterator[FieldProblem]:
    m = cfg.model
    if m.source == "synthetic":
        if m.path is not None:
            fix = "drop model.path, or set model.source: hf_dir"
            yield FieldProblem("a synthetic model is generated, not read", fix, loc=("model", "path"), value=m.path)
        if m.architecture is not None:
            yield from _architecture_problems(m.architecture)
        return
    for key in ("seed", "architecture"):
        if getattr(m, key) is not None:
            fix = f"drop model.{key} (an hf_dir model's architecture is its config.json), or set source: synthetic"
            yield FieldProblem("used only by model.source synthetic", fix, loc=("model", key), value=getattr(m, key))
    if m.path is None:
        fix = "set model.path to the checkpoint directory (config.json, *.safetensors, tokenizer.json)"
        yield FieldProblem("source hf_dir needs a path", fix, loc=("model", "path"), show="<missing>")
    elif check_files:
        yield from _hf_dir_problems(Path(m.path))


def _hf_dir_problems(path: Path) -> Iterator[FieldProblem]:
    loc: Loc = ("model", "path")
    if not path.is_dir():
        fix = "fix the path (relative paths resolve against the yaml file's directory) or download the checkpoint"
        yield FieldProblem("no such directory", fix, loc=loc, value=str(path))
        return
    if not (path / "config.json").is_file():
        fix = "point model.path at the HF snapshot directory that holds config.json"
        yield FieldProblem("has no config.json", fix, loc=loc, value=str(path))
    index = path / "model.safetensors.index.json"
    if index.is_file():
        try:
            shards = set(json.loads(index.read_text())["weight_map"].values())
        except (ValueError, KeyError, AttributeError):
            fix = "restore the file (it maps each tensor to its shard)"
            yield FieldProblem(f"{index.name} has no readable weight_map", fix, loc=loc, value=str(path))
            return
        missing = sorted(s for s in shards if not (path / s).is_file())
        if missing:
            fix = "download every shard the index lists"
            yield FieldProblem(f"shards missing: {', '.join(missing[:3])}", fix, loc=loc, value=str(path))
    elif not any(path.glob("*.safetensors")):
        fix = "lowbit reads safetensors; save with save_pretrained(..., safe_serialization=True)"
        yield FieldProblem("has no *.safetensors weights", fix, loc=loc, value=str(path))


def _architecture_problems(a: Architecture) -> Iterator[FieldProblem]:
    loc: Loc = ("model", "architecture")
    if a.num_heads % a.num_kv_heads:
        divisors = [d for d in range(1, a.num_heads + 1) if a.num_heads % d == 0]
        yield FieldProblem(
            f"num_heads {a.num_heads} is not a multiple of it (GQA needs whole groups)",
            f"use one of {', '.join(map(str, divisors))}",
            loc=(*loc, "num_kv_heads"),
            value=a.num_kv_heads,
        )
    rope = dict(a.rope_scaling or {})
    rope_type = rope.get("rope_type", rope.get("type", "default"))
    if rope_type not in ROPE_TYPES:
        hint = difflib.get_close_matches(str(rope_type), ROPE_TYPES, n=1)
        fix = f"did you mean {hint[0]!r}?" if hint else f"lowbit implements rope_type {', '.join(ROPE_TYPES)}"
        where = (*loc, "rope_scaling", "rope_type" if "rope_type" in rope else "type")
        yield FieldProblem("RoPE scaling type not supported", fix, loc=where, value=rope_type)
        return
    head_dim = a.head_dim
    if head_dim is None and a.hidden_size % a.num_heads:
        yield FieldProblem(
            f"hidden_size {a.hidden_size} is not divisible by num_heads {a.num_heads}, so head_dim has no default",
            "set head_dim, or a num_heads that divides hidden_size",
            loc=(*loc, "head_dim"),
            show="<missing>",
        )
        return
    head_dim = head_dim or a.hidden_size // a.num_heads
    if head_dim % 2:
        fix = f"use an even head_dim such as {head_dim + 1}"
        yield FieldProblem("odd head_dim: RoPE rotates channel pairs", fix, loc=(*loc, "head_dim"), value=head_dim)
        return
    from lowbit.config.source import build_arch

    try:
        build_arch(a)
    except ConfigError as e:
        yield FieldProblem(str(e), "fix the architecture", loc=loc, value=a.model_dump())


# ---- quantization -----------------------------------------------------------------------------------------


def _quantization_problems(cfg: ModelYaml) -> Iterator[FieldProblem]:
    q = cfg.quantization
    if q.algorithm == "imported" and cfg.model.source != "hf_dir":
        yield FieldProblem(
            "imported takes the codes of an AutoAWQ / GPTQ checkpoint as stored; a synthetic model has none",
            "use algorithm rtn (or awq, gptq, qoq), or model.source: hf_dir with a quantized checkpoint",
            loc=("quantization", "algorithm"),
            value="imported",
        )
    if q.algorithm == "qoq" and q.activations != "int8":
        yield FieldProblem(
            "QoQ is the W4A8 recipe (progressive int8 -> uint4 weights for int8 activations)",
            "set quantization.activations: int8, or use algorithm awq or rtn for weight-only quantization",
            loc=("quantization", "algorithm"),
            value="qoq",
        )
    backend = cfg.target.effective_backend
    if q.algorithm not in ("none", "imported"):  # imported: the checkpoint's format replaces the weights section
        yield from _weights_problems(q.weights, q, ("quantization", "weights"), None, backend)
    for i, o in enumerate(q.overrides):
        loc: Loc = ("quantization", "overrides", i)
        if o.skip:
            stated = [k for k in WEIGHT_KEYS if getattr(o, k) is not None]
            if stated:
                fix = f"drop {', '.join(stated)}, or drop skip"
                yield FieldProblem("skip: true keeps the matched modules dense", fix, loc=(*loc, "skip"), value=True)
        elif q.algorithm != "none":
            yield from _weights_problems(merge(q.weights, o), q, loc, o, backend)


def _weights_problems(
    w: Weights, q: Quantization, loc: Loc, override: Override | None, backend: str
) -> Iterator[FieldProblem]:
    try:
        spec = spec_for(w, q)
    except FieldProblem as e:
        key = str(e.loc[0])
        inherited = override is not None and getattr(override, key) is None
        note = f" (inherited from quantization.weights.{key})" if inherited and key != "zero_mode" else ""
        value = e.value if e.value is not None else getattr(w, key)
        yield FieldProblem(e.problem + note, e.fix, loc=loc + e.loc, value=value, show=e.show)
        return
    need = TRITON_MIN_GROUP.get(spec.scheme, 0)
    inherited_group = override is not None and override.group_size is None
    if backend == "triton" and spec.group_size != -1 and spec.group_size < need and not inherited_group:
        yield FieldProblem(
            f"below {need}, the triton backend's smallest dot K for scheme {spec.scheme}",
            f"use group_size {need} or more (32, 64, 128) or -1, or target.backend: tvm",
            loc=(*loc, "group_size"),
            value=spec.group_size,
        )


def _calibration_problems(cfg: ModelYaml, check_files: bool) -> Iterator[FieldProblem]:
    c = cfg.quantization.calibration
    loc: Loc = ("quantization", "calibration", "path")
    if c.source == "synthetic":
        if c.path is not None:
            fix = "drop path, or set quantization.calibration.source: file"
            problem = "synthetic calibration samples random tokens; no file is read"
            yield FieldProblem(problem, fix, loc=loc, value=c.path)
        return
    suffixes = " or ".join(CALIBRATION_SUFFIXES)
    if c.path is None:
        fix = 'set quantization.calibration.path: ./calib.jsonl (.txt, or .jsonl with a "text" field per line)'
        yield FieldProblem("calibration source file needs a path", fix, loc=loc, show="<missing>")
    elif Path(c.path).suffix not in CALIBRATION_SUFFIXES:
        fix = 'use a .txt file (samples separated by blank lines) or a .jsonl file with one {"text": ...} per line'
        yield FieldProblem(f"not a {suffixes} file", fix, loc=loc, value=c.path)
    elif check_files and not Path(c.path).is_file():
        fix = "fix the path (relative paths resolve against the yaml file's directory)"
        yield FieldProblem("no such file", fix, loc=loc, value=c.path)


# ---- target ---------------------------------------------------------------------------------------------------


def _target_problems(cfg: ModelYaml) -> Iterator[FieldProblem]:
    t = cfg.target
    if t.backend == "triton" and t.device == "cpu":
        yield FieldProblem(
            "on device cpu the triton backend runs only in Triton's interpreter (slow; for kernel tests)",
            "use backend: tvm (or auto) on cpu, or device: cuda",
            loc=("target", "backend"),
            value="triton",
        )
    ps = t.page_size
    if ps & (ps - 1):
        fix = "use 16 (vLLM's default), 32 or 64"
        yield FieldProblem("not a power of two", fix, loc=("target", "page_size"), value=ps)
    elif t.effective_backend == "triton" and ps < 16:
        fix = "use 16 or more"
        yield FieldProblem("the triton attention kernels need >= 16", fix, loc=("target", "page_size"), value=ps)
    tp = t.tensor_parallel
    if tp not in TENSOR_PARALLEL:
        fix = f"use one of {', '.join(map(str, TENSOR_PARALLEL))} (a power of two <= 8)"
        yield FieldProblem("not a power of two <= 8", fix, loc=("target", "tensor_parallel"), value=tp)
    elif tp > 1 and cfg.quantization.activations == "int8":
        yield FieldProblem(
            "W4A8 quantizes each row-parallel linear's input per token over its shard of K, which would differ "
            "from the unsharded model",
            "use quantization.activations: float (decode_activations: int8 is fine), or tensor_parallel: 1",
            loc=("target", "tensor_parallel"),
            value=tp,
        )
    if t.tuning.policy == "tune" and t.tuning.budget_s == 0:
        fix = "give budget_s > 0 seconds, or use policy: cached"
        yield FieldProblem("policy tune with no time to measure", fix, loc=("target", "tuning", "budget_s"), value=0.0)


__all__ = ["RecipeWarning", "recipe_problems"]
