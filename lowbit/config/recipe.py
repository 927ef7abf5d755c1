"""Recipe resolution: the `LinearSpec` (or dense) each linear module of the model gets.

Order, for an HF module name such as `model.layers.3.mlp.down_proj`:
  1. `quantization.algorithm: none`                 -> dense
  2. the first `quantization.ignore` regex that fullmatches    -> dense
  3. the first `quantization.overrides[i].pattern` that fullmatches:
         `skip: true` -> dense, else its keys merged over `quantization.weights` (`merge`)
  4. `quantization.weights`
The scheme follows the activations: float -> w_a16; int8 -> w4a8_group (group_size > 0) or w4a8_channel (-1).
`symmetric` / `zero_mode` resolve as `lowbit.ops.weight` does (`zero_mode_for`; tests hold the two equal), so
a spec from here is always one `lowbit.ops.quantize` accepts.
"""

from __future__ import annotations

import re
from typing import Any

from lowbit.config.errors import FieldProblem, Loc, RecipeError
from lowbit.config.schema import ModelYaml, Override, Quantization, Weights
from lowbit.config.spec import LinearSpec

WEIGHTS_LOC: Loc = ("quantization", "weights")


def merge(base: Weights, override: Override) -> Weights:
    """`override`'s stated keys over `base`. An override that states `dtype` gets that dtype's default symmetry
    (symmetric / zero_mode null) unless it states them too: symmetry belongs to the dtype (uint4 asymmetric,
    int4 and fp6_e3m2 symmetric), so `{dtype: fp6_e3m2}` over a uint4 default does not inherit `symmetric: false`.
    """
    update: dict[str, Any] = {}
    if override.dtype is not None:
        update.update(dtype=override.dtype, symmetric=None, zero_mode=None)
    for key in ("group_size", "symmetric", "zero_mode"):
        if getattr(override, key) is not None:
            update[key] = getattr(override, key)
    return base.model_copy(update=update)


def decide(cfg: ModelYaml, module: str) -> tuple[Loc, Weights | None]:
    """The rule that decides `module` (its location in the file) and the weights it gets (None = dense)."""
    q = cfg.quantization
    if q.algorithm == "none":
        return ("quantization", "algorithm"), None
    for i, pattern in enumerate(q.ignore):
        if re.fullmatch(pattern, module):
            return ("quantization", "ignore", i), None
    for i, o in enumerate(q.overrides):
        if re.fullmatch(o.pattern, module):
            return ("quantization", "overrides", i), None if o.skip else merge(q.weights, o)
    return WEIGHTS_LOC, q.weights


def resolve_linear(cfg: ModelYaml, module_name: str) -> LinearSpec | None:
    """The `LinearSpec` of the linear `module_name` (HF name), or None when it stays dense (ignored,
    algorithm none, or an override with skip: true). Raises RecipeError for a combination that no kernel
    takes (a validated file has none)."""
    loc, weights = decide(cfg, module_name)
    if weights is None:
        return None
    try:
        return spec_for(weights, cfg.quantization)
    except FieldProblem as e:
        raise RecipeError([cfg.origins.problem(e, loc + e.loc)]) from None


def spec_for(weights: Weights, q: Quantization) -> LinearSpec:
    """The LinearSpec for resolved weights; FieldProblem (loc relative to the weights) if no kernel takes them."""
    from lowbit.dtypes import dtype

    scheme = scheme_for(q.activations, weights.group_size)
    dt = dtype(weights.dtype)
    check_code_dtype(dt, scheme)
    mode = zero_mode_for(dt, scheme, weights.symmetric, weights.zero_mode)
    return LinearSpec(q.algorithm, dt.name, weights.group_size, mode, scheme)


def scheme_for(activations: str, group_size: int) -> str:
    if activations == "float":
        return "w_a16"
    return "w4a8_channel" if group_size == -1 else "w4a8_group"


def check_code_dtype(dt: Any, scheme: str) -> None:
    """Weight code dtypes each scheme takes (lowbit.ops.weight._code_dtype's rule, in recipe terms)."""
    if scheme != "w_a16" and not (dt.is_integer and not dt.is_signed):
        raise FieldProblem(
            f"{dt.name} codes with activations int8: the W4A8 kernels take unsigned codes",
            "use dtype: uint4 (asymmetric with an integer zero), or activations: float",
            loc=("dtype",),
            value=dt.name,
        )
    if scheme == "w4a8_channel" and dt.bits > 7:
        raise FieldProblem(
            f"{dt.name} with activations int8 and group_size -1: per-channel W4A8 casts codes to int8",
            "use uint1..uint7 (e.g. uint4), or a group size such as 128",
            loc=("dtype",),
            value=dt.name,
        )


def zero_mode_for(dt: Any, scheme: str, symmetric: bool | None, zero_mode: str | None) -> str:
    """ "none" | "post" | "pre" for a dtype and the stated symmetric / zero_mode (null = by dtype), by the rule
    of lowbit.ops.weight._zero_mode; FieldProblem naming symmetric or zero_mode otherwise."""
    if scheme != "w_a16":
        if symmetric:
            raise _sym(symmetric, "W4A8 weights are asymmetric with an integer zero", "drop symmetric (or set false)")
        if zero_mode not in (None, "post"):
            raise _zero(zero_mode, "W4A8 weights use an integer zero (post)", "drop zero_mode or set it 'post'")
        return "post"
    if dt.is_float:
        if symmetric is False:
            raise _sym(symmetric, f"{dt.name} is a float format, quantized symmetrically", "drop symmetric")
        if zero_mode not in (None, "none"):
            raise _zero(zero_mode, f"{dt.name} is a float format: no zero point", "drop zero_mode (or set 'none')")
        return "none"
    if symmetric is None:
        symmetric = zero_mode == "none" or (zero_mode is None and dt.is_signed and dt.bits >= 2)
    if symmetric:
        if not dt.is_signed or dt.bits < 2:
            fix = f"use symmetric: false (a zero point) or a signed dtype like int{max(dt.bits, 2)}"
            if zero_mode == "none":
                raise _zero(zero_mode, f"zero_mode none is symmetric, which {dt.name} cannot be", fix)
            raise _sym(True, f"a symmetric grid needs a signed dtype of >= 2 bits, not {dt.name}", fix)
        if zero_mode not in (None, "none"):
            raise _zero(zero_mode, "symmetric weights have no zero point", "drop zero_mode or set symmetric: false")
        return "none"
    if zero_mode == "none":
        raise _zero(zero_mode, "asymmetric weights need a zero point", "use zero_mode: post (integer zero) or pre")
    return zero_mode or "post"


def _sym(value: bool | None, problem: str, fix: str) -> FieldProblem:
    return FieldProblem(problem, fix, loc=("symmetric",), value=value)


def _zero(value: str | None, problem: str, fix: str) -> FieldProblem:
    return FieldProblem(problem, fix, loc=("zero_mode",), value=value)


__all__ = ["decide", "merge", "resolve_linear", "scheme_for", "spec_for", "zero_mode_for"]
