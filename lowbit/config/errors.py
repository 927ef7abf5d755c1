"""Recipe errors: every problem of a `model.yaml` as one line `<source>: <dotted.path>: <value>: <problem>; <fix>`,
all problems of a file collected into one `RecipeError`.

`FieldProblem` is what the schema's validators and the checks raise for one field; `problems_from_pydantic`
turns pydantic's `ValidationError` into Problems with lowbit's own text (unknown keys get the closest valid key
by difflib, YAML booleans in enum fields get a "quote it" hint).
"""

from __future__ import annotations

import difflib
import types
import typing
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel, ValidationError

Loc = tuple[str | int, ...]  # a path into the file: ("quantization", "overrides", 0, "dtype")

# HF config.json spellings of architecture fields: an unknown key among these gets a pointed hint
HF_SPELLINGS = {
    "num_hidden_layers": "num_layers",
    "num_attention_heads": "num_heads",
    "num_key_value_heads": "num_kv_heads",
    "torch_dtype": "dtype (in the model section)",
}
YAML_BOOL_WORDS = "on/off/yes/no/true/false"


class RecipeError(ValueError):
    """A `model.yaml` (or its --set overrides) is invalid. `.problems` holds every problem found; the message
    lists one per line as `<source>: <dotted.path>: <value>: <problem>; <fix>`."""

    def __init__(self, problems: Sequence[Problem]):
        self.problems = tuple(problems)
        lines = [str(p) for p in self.problems]
        head = [] if len(lines) == 1 else [f"{len(lines)} problems in the recipe:"]
        super().__init__("\n".join(head + lines))


class FieldProblem(ValueError):
    """One field's problem and its fix, raised inside validators and checks (pydantic keeps the instance)."""

    def __init__(self, problem: str, fix: str, *, loc: Loc = (), value: Any = None, show: str | None = None):
        self.problem, self.fix, self.loc, self.value, self.show = problem, fix, loc, value, show
        super().__init__(f"{problem}; {fix}")


@dataclass(frozen=True)
class Problem:
    source: str  # the file, "<dict>", or the --set argument the value came from
    loc: Loc
    value: str  # the value as shown (already formatted)
    problem: str
    fix: str

    @property
    def path(self) -> str:
        return dotted(self.loc)

    def __str__(self) -> str:
        return f"{self.source}: {self.path}: {self.value}: {self.problem}; {self.fix}"


def dotted(loc: Iterable[str | int]) -> str:
    """("quantization", "overrides", 0, "dtype") -> "quantization.overrides[0].dtype"."""
    out = ""
    for part in loc:
        index = isinstance(part, int) and not isinstance(part, bool)
        out += f"[{part}]" if index else (f".{part}" if out else str(part))
    return out or "<root>"


def show(value: Any) -> str:
    """A value as a person reads it in an error: strings quoted, containers shortened."""
    text = "'" + value.replace("'", "''") + "'" if isinstance(value, str) else str(value)  # YAML's quoting
    limit = 240 if isinstance(value, str) else 60  # paths stay whole; containers are shortened
    return text if len(text) <= limit else text[: limit - 3] + "..."


class Origins:
    """Where each value came from: the file, or the --set argument that wrote it (the longest path wins)."""

    def __init__(self, file: str, sets: Mapping[Loc, str] | None = None):
        self.file = file
        self.sets = dict(sets or {})

    def source(self, loc: Loc) -> str:
        best: tuple[int, str] | None = None
        for path, arg in self.sets.items():
            n = min(len(path), len(loc))
            if tuple(path[:n]) == tuple(loc[:n]) and (best is None or len(path) > best[0]):
                best = (len(path), arg)
        return best[1] if best else self.file

    def problem(self, err: FieldProblem, loc: Loc | None = None, value: Any = None) -> Problem:
        where = loc if loc is not None else err.loc
        shown = err.show if err.show is not None else show(err.value if err.value is not None else value)
        return Problem(self.source(where), where, shown, err.problem, err.fix)


def closest(word: str, choices: Sequence[str], n: int = 1, cutoff: float = 0.6) -> list[str]:
    return difflib.get_close_matches(str(word), list(choices), n=n, cutoff=cutoff)


def did_you_mean(word: str, choices: Sequence[str]) -> str:
    hint = closest(word, choices)
    return f"did you mean {hint[0]!r}?" if hint else f"valid keys here: {', '.join(choices)}"


def unknown_key(loc: Loc, value: Any, choices: Sequence[str]) -> FieldProblem:
    key = str(loc[-1])
    if key in HF_SPELLINGS:
        fix = f"lowbit calls it {HF_SPELLINGS[key]!r} (config.json spells it {key!r})"
    else:
        fix = did_you_mean(key, choices)
    return FieldProblem("unknown key", fix, loc=loc, value=value)


def enum_problem(loc: Loc, value: Any, choices: Sequence[Any], spelling: str | None = None) -> FieldProblem:
    """A value outside an enum; YAML booleans (bare on/off/yes/no) get the "quote it" hint."""
    names = " | ".join("null" if c is None else str(c) for c in choices)
    key = str(loc[-1]) if loc else "value"
    strs = [str(c) for c in choices if c is not None]
    if isinstance(value, bool):
        word = spelling or YAML_BOOL_WORDS
        shown = f"{value} (YAML reads bare {word} as a boolean)"
        meant = spelling.lower() if spelling and spelling.lower() in strs else strs[0]
        return FieldProblem(f"not one of {names}", f"quote it: {key}: {meant!r}", loc=loc, show=shown)
    same = [c for c in choices if str(c) == str(value)]
    hint = closest(str(value), strs)
    if same:  # '1' for 1: the right value in the wrong type
        fix = f"write it unquoted: {key}: {same[0]}"
    else:
        fix = f"did you mean {hint[0]!r}?" if hint else f"use one of {names}"
    return FieldProblem(f"not one of {names}", fix, loc=loc, value=value)


# ---- pydantic -> Problems -------------------------------------------------------------------------------

_TYPE_WORDS = {
    "int_type": ("not an integer", "write a whole number without quotes, e.g. 128"),
    "int_from_float": ("not an integer", "write a whole number, e.g. 128"),
    "bool_type": ("not a boolean", "write true or false"),
    "string_type": ("not a string", "write a name, quoted if YAML would read it as something else"),
    "float_type": ("not a number", "write a number, e.g. 0.5"),
    "tuple_type": ("not a list", "write a YAML list, e.g. [a, b] or one '- item' per line"),
    "list_type": ("not a list", "write a YAML list, e.g. [a, b] or one '- item' per line"),
    "dict_type": ("not a mapping", "write key: value pairs, e.g. {rope_type: llama3, factor: 8.0}"),
    "model_type": ("not a mapping", "write the section's keys indented below it (key: value), or remove it"),
    "model_attributes_type": ("not a mapping", "write the section's keys indented below it, or remove it"),
    "missing": ("required key is missing", "add it"),
}


def problems_from_pydantic(
    error: ValidationError, root: type[BaseModel], origins: Origins, spellings: Mapping[Loc, str]
) -> list[Problem]:
    """One Problem per pydantic error, in lowbit's words. `spellings` maps the locations of YAML booleans to
    how the file spelled them (so `policy: off` can say "bare off")."""
    out: list[Problem] = []
    for e in error.errors(include_url=False):
        loc: Loc = tuple(e["loc"])
        value, kind = e.get("input"), e["type"]
        ctx = e.get("ctx") or {}
        if kind == "extra_forbidden":
            err = unknown_key(loc, value, _fields_at(root, loc[:-1]))
        elif kind == "literal_error":
            err = enum_problem(loc, value, _literal_choices(root, loc), spellings.get(loc))
        elif kind == "value_error" and isinstance(ctx.get("error"), FieldProblem):
            inner: FieldProblem = ctx["error"]
            err = FieldProblem(inner.problem, inner.fix, loc=loc + inner.loc, value=value, show=inner.show)
        elif kind in ("greater_than", "greater_than_equal", "less_than_equal", "less_than"):
            op = {"greater_than": ">", "greater_than_equal": ">=", "less_than": "<", "less_than_equal": "<="}[kind]
            bound = next(iter(ctx.values()), "?")
            err = FieldProblem(f"must be {op} {bound}", f"use a value {op} {bound}", loc=loc, value=value)
        elif kind == "missing":
            err = FieldProblem(*_TYPE_WORDS[kind], loc=loc, show="<missing>")
        elif kind in _TYPE_WORDS:
            problem, fix = _TYPE_WORDS[kind]
            err = FieldProblem(f"{problem} ({type(value).__name__})", fix, loc=loc, value=value)
        else:
            err = FieldProblem(e["msg"], "see lowbit/config/README.md for this field", loc=loc, value=value)
        out.append(origins.problem(err))
    return out


def _unwrap(tp: Any) -> list[Any]:
    """The member types of an annotation (Optional / Union / tuple[...] / Annotated unwrapped)."""
    origin = typing.get_origin(tp)
    if origin is typing.Annotated:
        return _unwrap(typing.get_args(tp)[0])
    if origin in (typing.Union, types.UnionType, tuple, list):
        return [m for a in typing.get_args(tp) if a is not Ellipsis for m in _unwrap(a)]
    return [tp]


def _model_at(root: type[BaseModel], loc: Loc) -> type[BaseModel] | None:
    model: type[BaseModel] | None = root
    for part in loc:
        if model is None:
            return None
        if isinstance(part, int):
            continue
        field = model.model_fields.get(part)
        if field is None:
            return None
        model = next((m for m in _unwrap(field.annotation) if isinstance(m, type) and issubclass(m, BaseModel)), None)
    return model


def _fields_at(root: type[BaseModel], loc: Loc) -> list[str]:
    model = _model_at(root, loc)
    return list(model.model_fields) if model is not None else []


def _literal_choices(root: type[BaseModel], loc: Loc) -> list[Any]:
    model = _model_at(root, tuple(p for p in loc[:-1]))
    if model is None or not isinstance(loc[-1], str) or loc[-1] not in model.model_fields:
        return []
    choices: list[Any] = []
    for member in _unwrap(model.model_fields[loc[-1]].annotation):
        if typing.get_origin(member) is typing.Literal:
            choices.extend(typing.get_args(member))
        elif member is type(None):
            choices.append(None)
    return choices


__all__ = ["FieldProblem", "Loc", "Origins", "Problem", "RecipeError", "dotted", "enum_problem", "show"]
