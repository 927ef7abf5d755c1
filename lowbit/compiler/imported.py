"""Compiling an already-quantized checkpoint (AutoAWQ GEMM, GPTQ v1 / v2): the recipe it needs and its params.

A checkpoint whose config.json has a `quantization_config` is compiled with `quantization.algorithm: imported`:
the codes, zeros and scales of every quantized linear are taken as stored (no rounding happens), the rest of
the model (embeddings, norms, biases, linears the checkpoint keeps float) is dense. `algorithm: none` is
allowed too (every linear dense, from the exact dequantization). Anything else would quantize the
dequantized weights a second time and is refused in the validate phase (`imported_recipe`).

With `imported` the recipe's weight format is the checkpoint's (AWQ: uint4 with integer zeros; GPTQ sym:
int{b}, asym: uint{b} with integer zeros; the checkpoint's group size). The resolved model.yaml written into
the artifact states it, so the artifact is self-describing and loads without the checkpoint:
  quantization.weights   {dtype, group_size} of the checkpoint (symmetric / zero_mode follow the dtype)
  quantization.ignore    the user's ignore list + every linear the checkpoint stores float (exact names)
What the user may state: `weights` fields left at their defaults or equal to the checkpoint's; `ignore` and
`overrides` with `skip: true` (those modules are served dense, dequantized); `activations: float`;
`kv_cache.dtype` anything (KV quantization is independent), `smooth_attention: false`.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from lowbit.config.errors import FieldProblem, Loc, RecipeError
from lowbit.config.schema import ModelYaml, Weights
from lowbit.config.spec import LinearSpec
from lowbit.dtypes import decode
from lowbit.ops.weight import QuantizedWeight, pack_quantized
from lowbit.quant.checkpoint_import import CheckpointFormat

RECOMPILING = ("rtn", "awq", "gptq", "qoq")


def checkpoint_of(cfg: ModelYaml) -> tuple[CheckpointFormat, tuple[str, ...]] | None:
    """(format, quantized module names) of the recipe's hf_dir checkpoint, None for float or synthetic models.
    Reads config.json and the safetensors headers only; a malformed quantization_config is a RecipeError
    naming model.path and the config key."""
    if cfg.model.source != "hf_dir" or cfg.model.path is None:
        return None
    from lowbit.models import ConfigError, WeightError
    from lowbit.models.hf import checkpoint_quantization

    try:
        return checkpoint_quantization(Path(cfg.model.path))
    except (ConfigError, WeightError) as e:
        fix = "use the files the quantizer wrote (config.json and its safetensors together), or the float checkpoint"
        raise RecipeError([cfg.origins.problem(FieldProblem(str(e), fix), ("model", "path"), cfg.model.path)]) from None


def imported_recipe(cfg: ModelYaml, found: tuple[CheckpointFormat, tuple[str, ...]] | None, arch: Any) -> ModelYaml:
    """`cfg` checked against the checkpoint's quantization (`checkpoint_of`) and, for `algorithm: imported`,
    resolved to state it (see the module docstring). Raises RecipeError naming every disagreeing field."""
    q = cfg.quantization
    where = f"the checkpoint {cfg.model.path}"
    if found is None:
        if q.algorithm == "imported":
            raise _error(cfg, [FieldProblem(
                f"{where} has no quantization_config in config.json: there are no stored codes to import",
                "use algorithm rtn, awq, gptq or qoq to quantize a float checkpoint, or point model.path at an "
                "AutoAWQ / GPTQ checkpoint",
                loc=("quantization", "algorithm"), value="imported",
            )])  # fmt: skip
        return cfg
    fmt, modules = found
    if q.algorithm in RECOMPILING:
        raise _error(cfg, [FieldProblem(
            f"{where} is already quantized ({fmt.describe()}); {q.algorithm} would round its dequantized weights "
            "a second time",
            "set quantization.algorithm: imported (serve the stored codes as they are), or none (dense, "
            "dequantized), or point model.path at the float checkpoint",
            loc=("quantization", "algorithm"), value=q.algorithm,
        )])  # fmt: skip
    problems = list(_group_problems(fmt, modules, arch))
    if q.algorithm == "none":
        if problems:
            raise _error(cfg, problems)
        return cfg
    problems += list(_agreement_problems(cfg, fmt))
    if problems:
        raise _error(cfg, problems)
    weights = Weights(dtype=fmt.weight_dtype, group_size=fmt.group_size)
    resolved = cfg.model_copy(update={"quantization": q.model_copy(update={"weights": weights})})
    stored = set(modules)
    from lowbit.config.recipe import decide

    float_ones = [m.name for m in arch.linears() if m.name not in stored and decide(resolved, m.name)[1] is not None]
    if float_ones:
        ignore = (*q.ignore, *(re.escape(name) for name in float_ones))
        resolved = resolved.model_copy(
            update={"quantization": resolved.quantization.model_copy(update={"ignore": ignore})}
        )
    return resolved


def _error(cfg: ModelYaml, problems: Sequence[FieldProblem]) -> RecipeError:
    return RecipeError([cfg.origins.problem(p) for p in problems])


def _group_problems(fmt: CheckpointFormat, modules: Sequence[str], arch: Any) -> Iterator[FieldProblem]:
    if fmt.group_size == -1:
        return
    shapes = {m.name: m for m in arch.linears()}
    bad = [shapes[m] for m in modules if m in shapes and shapes[m].in_features % fmt.group_size]
    if bad:
        more = f" (and {len(bad) - 1} more)" if len(bad) > 1 else ""
        yield FieldProblem(
            f"config.json quantization_config.group_size {fmt.group_size} does not divide in_features "
            f"{bad[0].in_features} of {bad[0].name}{more}: the checkpoint and its config disagree",
            "restore the config.json the quantizer wrote (its group_size), or use the float checkpoint",
            loc=("model", "path"),
        )


def _agreement_problems(cfg: ModelYaml, fmt: CheckpointFormat) -> Iterator[FieldProblem]:
    q = cfg.quantization
    stored = f"the checkpoint stores {fmt.describe()}"
    if q.activations != "float":
        yield FieldProblem(
            f"{stored} codes for float activations; int8 activations (W4A8) need weights re-quantized for them",
            "set quantization.activations: float",
            loc=("quantization", "activations"), value=q.activations,
        )  # fmt: skip
    if q.kv_cache.smooth_attention:
        yield FieldProblem(
            "SmoothAttention rescales W_q and W_k, which would re-quantize the imported q_proj / k_proj",
            "set quantization.kv_cache.smooth_attention: false",
            loc=("quantization", "kv_cache", "smooth_attention"), value=True,
        )  # fmt: skip
    w, defaults = q.weights, Weights()
    want = {"dtype": fmt.weight_dtype, "group_size": fmt.group_size}
    for key, value in want.items():  # a value left at the schema default states nothing: it is replaced
        if getattr(w, key) not in (value, getattr(defaults, key)):
            yield FieldProblem(
                f"{stored}; algorithm imported serves them as stored",
                f"drop quantization.weights (it is filled in from the checkpoint) or write {key}: {value}",
                loc=("quantization", "weights", key), value=getattr(w, key),
            )  # fmt: skip
    if w.symmetric is not None and w.symmetric != fmt.sym:
        yield FieldProblem(
            stored, f"drop symmetric (or write {str(fmt.sym).lower()})",
            loc=("quantization", "weights", "symmetric"), value=w.symmetric,
        )  # fmt: skip
    if w.zero_mode is not None and w.zero_mode != fmt.zero_mode:
        yield FieldProblem(
            stored, f"drop zero_mode (or write {fmt.zero_mode})",
            loc=("quantization", "weights", "zero_mode"), value=w.zero_mode,
        )  # fmt: skip
    for i, o in enumerate(q.overrides):
        stated = [k for k in ("dtype", "group_size", "symmetric", "zero_mode") if getattr(o, k) is not None]
        if not o.skip or stated:
            key = stated[0] if stated else "skip"
            loc: Loc = ("quantization", "overrides", i, key)
            yield FieldProblem(
                "algorithm imported keeps every stored module's format; an override would re-quantize it",
                "drop the override, or make it `skip: true` alone (the matched modules are served dense)",
                loc=loc, value=getattr(o, key),
            )  # fmt: skip


# -- the quantize phase: params from the stored codes ----------------------------------------------------


def imported_param(
    quantized: Mapping[str, QuantizedWeight], sources: Sequence[str], spec: LinearSpec, layout: Any = "row"
) -> QuantizedWeight:
    """The QuantizedWeight of a graph param made of the HF weights `sources` (`<module>.weight`, several for a
    fused q/k/v or gate/up, concatenated along out_features) from the imported modules, in `spec`'s format
    and `layout`. Codes and parameters are moved, never rounded: symmetric int{b} parts join an uint{b}
    (integer zero) spec as q + 2^(b−1) with zero 2^(b−1), which dequantizes identically."""
    values, scales, zeros = [], [], []
    for src in sources:
        module = src.removesuffix(".weight")
        if module not in quantized:
            raise ValueError(
                f"{src} is quantized by the recipe ({spec.describe()}) but the checkpoint stores it float; "
                f"add {re.escape(module)!r} to quantization.ignore"
            )
        v, s, z = _parts(quantized[module], spec, module)
        values.append(v)
        scales.append(s)
        zeros.append(z)
    scale = np.concatenate(scales, axis=0)
    return pack_quantized(
        np.concatenate(values, axis=0),
        scale,
        None if spec.zero_mode == "none" else np.concatenate([z for z in zeros if z is not None], axis=0),
        dtype=spec.weight_dtype,
        group_size=spec.group_size,
        zero_mode=spec.zero_mode,
        scale_dtype=str(scale.dtype),
        layout=layout,
    )


def _parts(qw: QuantizedWeight, spec: LinearSpec, module: str) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    # values [N, K] on the code grid, scales [N, groups], zeros [N, groups] | None -- in spec's convention
    values = decode(qw.dtype, qw.codes()).T.astype(np.float64)
    scales = np.ascontiguousarray(qw.scales.T)
    zeros = None if qw.zeros is None else np.ascontiguousarray(qw.zeros.T).astype(np.float64)
    mid = float(1 << (qw.dtype.bits - 1))
    if spec.zero_mode == "post" and qw.zero_mode == "none":  # int{b} symmetric -> uint{b} with zero 2^(b-1)
        values, zeros = values + mid, np.full(scales.shape, mid)
    elif spec.zero_mode == "none" and qw.zero_mode == "post":
        if zeros is None or not np.all(zeros == mid):
            raise ValueError(
                f"{module}: the recipe says symmetric {spec.weight_dtype} but the checkpoint's zeros are not all "
                f"{mid:g}; compile it with its own quantization_config (sym: false)"
            )
        values, zeros = values - mid, None
    return values, scales, zeros


def import_report(fmt: CheckpointFormat, modules: Sequence[str], path: Any) -> dict[str, Any]:
    """The report's `source_quantization` entry (also shown by `lowbit inspect`)."""
    return {**fmt.to_json(), "description": fmt.describe(), "modules": len(modules), "checkpoint": str(path)}


__all__ = ["checkpoint_of", "import_report", "imported_param", "imported_recipe"]
