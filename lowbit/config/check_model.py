"""`check_against_model(cfg, arch)`: the recipe's rules that need the architecture (not the weights), run before
any weight is loaded: group sizes divide in_features, every override / ignore regex applies to some linear,
max_model_len and the attention kernels' limits. One RecipeError lists every problem."""

from __future__ import annotations

import difflib
import math
import re
from collections.abc import Iterator, Sequence

from lowbit.config.check import TENSOR_PARALLEL
from lowbit.config.errors import FieldProblem, Loc, RecipeError, dotted
from lowbit.config.recipe import decide
from lowbit.config.schema import ModelYaml
from lowbit.models import ArchConfig, LinearShape


def check_against_model(cfg: ModelYaml, arch: ArchConfig) -> None:
    """Raise RecipeError naming every field of `cfg` that does not fit `arch` (see the module docstring)."""
    modules = arch.linears()
    errors = [
        *_group_problems(cfg, modules),
        *_pattern_problems(cfg, modules),
        *_limit_problems(cfg, arch),
        *_parallel_problems(cfg, arch),
    ]
    if errors:
        raise RecipeError([cfg.origins.problem(e) for e in errors])


def _group_problems(cfg: ModelYaml, modules: Sequence[LinearShape]) -> Iterator[FieldProblem]:
    # the field that sets each module's group size -> the modules it governs
    governed: dict[Loc, list[LinearShape]] = {}
    groups: dict[Loc, int] = {}
    for m in modules:
        rule, weights = decide(cfg, m.name)
        if weights is None or weights.group_size == -1:
            continue
        stated = rule != ("quantization", "weights") and cfg.quantization.overrides[int(rule[2])].group_size
        field = (*rule, "group_size") if stated else ("quantization", "weights", "group_size")
        governed.setdefault(field, []).append(m)
        groups[field] = weights.group_size
    for field, mods in governed.items():
        g = groups[field]
        bad = [m for m in mods if m.in_features % g]
        if not bad:
            continue
        more = f" (and {len(bad) - 1} more)" if len(bad) > 1 else ""
        ks = sorted({m.in_features for m in mods})
        yield FieldProblem(
            f"does not divide in_features {bad[0].in_features} of {bad[0].name}{more}",
            f"use {_or([*valid_group_sizes(ks, g), -1])} (per channel); these divide in_features "
            f"{', '.join(map(str, ks))} of the {len(mods)} modules it applies to",
            loc=field,
            value=g,
        )


def valid_group_sizes(in_features: Sequence[int], near: int = 128, count: int = 4) -> list[int]:
    """Group sizes that divide every K in `in_features`: powers of two >= 16 when there are any (the kernels'
    natural tiles), else any divisors >= 2; the `count` nearest to `near` on a log scale, ascending."""
    k = math.gcd(*in_features)
    divisors = [d for d in range(2, k + 1) if k % d == 0]
    friendly = [d for d in divisors if d >= 16 and d & (d - 1) == 0] or divisors
    return sorted(sorted(friendly, key=lambda d: abs(math.log(d / near)))[:count])


def _or(values: Sequence[int]) -> str:
    text = [str(v) for v in values]
    return ", ".join(text[:-1]) + " or " + text[-1] if len(text) > 1 else text[0]


def _pattern_problems(cfg: ModelYaml, modules: Sequence[LinearShape]) -> Iterator[FieldProblem]:
    q = cfg.quantization
    names = [m.name for m in modules]
    decided = {m: decide(cfg, m)[0] for m in names} if q.algorithm != "none" else {}
    rules: list[tuple[Loc, str]] = [(("quantization", "ignore", i), p) for i, p in enumerate(q.ignore)]
    rules += [(("quantization", "overrides", i), o.pattern) for i, o in enumerate(q.overrides)]
    for loc, pattern in rules:
        where = (*loc, "pattern") if loc[1] == "overrides" else loc
        hits = [n for n in names if re.fullmatch(pattern, n)]
        if not hits:
            yield FieldProblem(
                "matches no linear module of this model", _no_match_fix(pattern, names), loc=where, value=pattern
            )
        elif decided and not any(decided[n] == loc for n in hits):
            earlier = sorted({decided[n] for n in hits}, key=lambda r: (r[1] != "ignore", r[2:]))
            yield FieldProblem(
                f"never applies: every module it matches is decided earlier by {', '.join(dotted(r) for r in earlier)}",
                f"move it before {dotted(earlier[0])}, or delete it (the first matching rule wins; ignore comes first)",
                loc=where,
                value=pattern,
            )


def _no_match_fix(pattern: str, names: Sequence[str]) -> str:
    if any(re.search(pattern, n) for n in names):
        return f"it must match the whole name (re.fullmatch): write '.*{pattern}'"
    plain = pattern.replace("\\.", ".").replace(".*", "").replace("\\d+", "0")
    close = difflib.get_close_matches(plain, names, n=3, cutoff=0.0)
    return f"the closest module names are {', '.join(close)} (see ArchConfig.linears(); HF names, fullmatch)"


def _limit_problems(cfg: ModelYaml, arch: ArchConfig) -> Iterator[FieldProblem]:
    t, q = cfg.target, cfg.quantization
    if t.max_model_len > arch.max_position_embeddings:
        yield FieldProblem(
            f"longer than the model's max_position_embeddings {arch.max_position_embeddings}",
            f"use max_model_len <= {arch.max_position_embeddings}",
            loc=("target", "max_model_len"),
            value=t.max_model_len,
        )
    if arch.sliding_window is not None and t.max_model_len > arch.sliding_window:
        yield FieldProblem(
            f"longer than the model's sliding_window {arch.sliding_window} (lowbit has no sliding-window attention)",
            f"use max_model_len <= {arch.sliding_window}",
            loc=("target", "max_model_len"),
            value=t.max_model_len,
        )
    d = arch.head_dim
    if q.kv_cache.dtype == "int4" and d % 8:
        yield FieldProblem(
            f"KV4 packs 8 codes per 32-bit word, but head_dim {d} is not a multiple of 8",
            "use kv_cache dtype int8 or fp8_e4m3",
            loc=("quantization", "kv_cache", "dtype"),
            value="int4",
        )
    if t.effective_backend == "triton" and (d < 16 or d & (d - 1)):
        yield FieldProblem(
            f"the triton attention kernels need a power-of-two head_dim >= 16, the model has {d}",
            "use target.backend: tvm",
            loc=("target", "backend"),
            value=t.backend,
        )
    c = q.calibration
    if q.calibrated and c.seq_len > arch.max_position_embeddings:
        yield FieldProblem(
            f"longer than the model's max_position_embeddings {arch.max_position_embeddings}",
            f"use seq_len <= {arch.max_position_embeddings}",
            loc=("quantization", "calibration", "seq_len"),
            value=c.seq_len,
        )


ROW_PARALLEL = ("o_proj", "down_proj")  # the linears whose K the graph pass shard_tensor_parallel splits


def shard_problems(cfg: ModelYaml, arch: ArchConfig, tp: int) -> list[str]:
    """Why `arch` under the recipe of `cfg` cannot be split over `tp` ranks (empty if it can): query and KV
    heads and the MLP width split evenly (KV heads are not replicated), and every row-parallel linear's K / tp
    is a whole number of its weight groups (shards are cut from the quantized weight, never re-quantized)."""
    out = []
    for what, n in (
        ("num_heads", arch.num_heads),
        ("num_kv_heads", arch.num_kv_heads),
        ("intermediate_size", arch.intermediate_size),
    ):
        if n % tp:
            out.append(f"{what} {n} does not split over {tp} ranks")
    if out or cfg.quantization.algorithm == "none":
        return out
    for m in arch.linears():
        if not m.name.endswith(ROW_PARALLEL):
            continue
        _, weights = decide(cfg, m.name)
        g = -1 if weights is None else weights.group_size
        if g != -1 and (m.in_features // tp) % g:
            out.append(
                f"in_features {m.in_features} / {tp} = {m.in_features // tp} of {m.name} (row-parallel) is not a "
                f"multiple of its group_size {g}"
            )
            break
    return out


def _parallel_problems(cfg: ModelYaml, arch: ArchConfig) -> Iterator[FieldProblem]:
    tp = cfg.target.tensor_parallel
    if tp == 1:
        return
    problems = shard_problems(cfg, arch, tp)
    if problems:
        ok = [t for t in TENSOR_PARALLEL if t < tp and not shard_problems(cfg, arch, t)]
        yield FieldProblem(
            "; ".join(problems),
            f"use tensor_parallel {_or(ok)}"
            + (", or a smaller group_size" if "group_size" in problems[-1] else "")
            + (" (KV heads are split over the ranks, not replicated)" if "num_kv_heads" in problems[0] else ""),
            loc=("target", "tensor_parallel"),
            value=tp,
        )


__all__ = ["ROW_PARALLEL", "check_against_model", "shard_problems", "valid_group_sizes"]
