"""Reading a `model.yaml`: YAML -> plain data -> `--set key=value` -> schema -> recipe checks -> resolved file.

    load_config(path, sets=())                      a file
    parse_config(data, source="<dict>", sets=())    data already in memory

Every problem found on the way (YAML duplicates, bad --set arguments, unknown keys, wrong types, the recipe's
cross-field rules) is collected and raised as one RecipeError; the returned ModelYaml has every default filled
in (`to_yaml()` of it loads back to an equal object). Relative paths (model.path, quantization.calibration.path)
resolve against the yaml file's directory, or the working directory for --set values and in-memory data.
"""

from __future__ import annotations

import copy
import os
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from lowbit.config.check import recipe_problems
from lowbit.config.errors import (
    FieldProblem,
    Loc,
    Origins,
    Problem,
    RecipeError,
    dotted,
    problems_from_pydantic,
    show,
)
from lowbit.config.schema import Architecture, ModelYaml

PATH_FIELDS: tuple[Loc, ...] = (("model", "path"), ("quantization", "calibration", "path"))
# keys that only one value of a section's `source` uses: a --set that switches the source drops the file's
# keys of the other source (so `--set model.source=hf_dir --set model.path=...` works on a synthetic recipe)
SOURCE_ONLY: dict[Loc, dict[str, tuple[str, ...]]] = {
    ("model",): {"synthetic": ("seed", "architecture"), "hf_dir": ("path",)},
    ("quantization", "calibration"): {"synthetic": (), "file": ("path",)},
}
_KEY = re.compile(r"([A-Za-z_][A-Za-z0-9_-]*)((?:\[\d+\])*)")


def load_config(path: str | Path, sets: Sequence[str] = (), *, check_files: bool = True) -> ModelYaml:
    """Read, override (`sets`: "a.b.c=value", value parsed as YAML), validate and resolve a model.yaml.

    check_files: also check that the files the recipe names exist (hf_dir, calibration file); pass False to
    re-read a resolved file stored away from them. Raises RecipeError listing every problem."""
    source = str(path)
    try:
        text = Path(path).read_text()
    except OSError as e:
        raise RecipeError(
            [Problem(source, (), "<file>", f"cannot read it ({e.strerror})", "pass the path of a model.yaml")]
        ) from None
    data, spellings, problems = read_yaml(text, source)
    return _build(data, source, Path(path).resolve().parent, sets, spellings, problems, check_files)


def parse_config(
    data: Any,
    source: str = "<dict>",
    sets: Sequence[str] = (),
    *,
    base_dir: str | Path | None = None,
    check_files: bool = True,
) -> ModelYaml:
    """As `load_config`, for data already read (a dict as YAML would give). `source` names it in errors;
    relative paths resolve against `base_dir` (default: the working directory)."""
    base = Path(base_dir) if base_dir is not None else Path.cwd()
    return _build(copy.deepcopy(data), source, base, sets, {}, [], check_files)


def read_yaml(text: str, source: str) -> tuple[Any, dict[Loc, str], list[Problem]]:
    """Plain data from YAML text, the file's spelling of every boolean (by location), and duplicate keys."""
    loader = yaml.SafeLoader(text)
    try:
        node = loader.get_single_node()
        data = loader.construct_document(node) if node is not None else None
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}" if mark is not None else "<file>"
        what = getattr(e, "problem", None) or str(e)
        fix = "fix the YAML there (indent with spaces; quote values containing ': ' or starting with * & ! %)"
        raise RecipeError([Problem(source, (), where, f"not valid YAML ({what})", fix)]) from None
    finally:
        loader.dispose()
    spellings: dict[Loc, str] = {}
    problems: list[Problem] = []
    if node is not None:
        _walk(node, (), spellings, problems, source, 0)
    return data, spellings, problems


def _walk(node: Any, loc: Loc, spellings: dict[Loc, str], problems: list[Problem], source: str, depth: int) -> None:
    if depth > 50:  # recursive aliases
        return
    if isinstance(node, yaml.MappingNode):
        seen: set[Any] = set()
        for key_node, value_node in node.value:
            key = key_node.value
            if key != "<<" and key in seen:
                line = key_node.start_mark.line + 1
                problems.append(
                    Problem(source, (*loc, key), f"line {line}", "duplicate key (YAML keeps the last)", "keep one")
                )
            seen.add(key)
            _walk(value_node, (*loc, key), spellings, problems, source, depth + 1)
    elif isinstance(node, yaml.SequenceNode):
        for i, item in enumerate(node.value):
            _walk(item, (*loc, i), spellings, problems, source, depth + 1)
    elif node.tag == "tag:yaml.org,2002:bool":
        spellings[loc] = node.value


def _build(
    data: Any,
    source: str,
    base: Path,
    sets: Sequence[str],
    spellings: dict[Loc, str],
    problems: list[Problem],
    check_files: bool,
) -> ModelYaml:
    if data is None:
        data = {}  # an empty file: every default
    if not isinstance(data, dict):
        fix = "a model.yaml is a mapping: schema_version, model, quantization, target"
        raise RecipeError([Problem(source, (), type(data).__name__, "the file is not a mapping", fix)])
    _resolve_paths(data, base)
    origin_sets, set_problems = _apply_sets(data, sets, spellings)
    _resolve_paths(data, Path.cwd())
    origins = Origins(source, origin_sets)
    problems = problems + set_problems
    try:
        cfg = ModelYaml.model_validate(data)
    except ValidationError as e:
        raise RecipeError(problems + problems_from_pydantic(e, ModelYaml, origins, spellings)) from None
    cfg._origins = origins
    problems += recipe_problems(cfg, check_files=check_files)
    if problems:
        raise RecipeError(problems)
    resolved = ModelYaml.model_validate(_filled(cfg))
    resolved._origins = origins
    return resolved


def _filled(cfg: ModelYaml) -> dict[str, Any]:
    """The file with the defaults that depend on other fields written in (name, seed, architecture)."""
    d = cfg.to_dict()
    m = d["model"]
    if m["source"] == "synthetic":
        m["seed"] = 0 if m["seed"] is None else m["seed"]
        arch = m["architecture"] if m["architecture"] is not None else Architecture().model_dump(mode="json")
        if arch["head_dim"] is None:
            arch["head_dim"] = arch["hidden_size"] // arch["num_heads"]
        m["architecture"] = arch
        m["name"] = m["name"] or "synthetic"
    else:
        m["name"] = m["name"] or Path(m["path"]).name
    return d


def _resolve_paths(data: dict[str, Any], base: Path) -> None:
    for loc in PATH_FIELDS:
        parent = _get(data, loc[:-1])
        if isinstance(parent, dict) and isinstance(parent.get(loc[-1]), str) and parent[loc[-1]]:
            p = Path(parent[loc[-1]]).expanduser()
            parent[loc[-1]] = os.path.normpath(p if p.is_absolute() else base / p)


def _get(data: Any, loc: Loc) -> Any:
    for part in loc:
        if isinstance(data, dict) and part in data:
            data = data[part]
        else:
            return None
    return data


# ---- --set ---------------------------------------------------------------------------------------------


def _apply_sets(data: dict[str, Any], sets: Sequence[str], spellings: dict[Loc, str]) -> tuple[dict, list[Problem]]:
    origins: dict[Loc, str] = {}
    problems: list[Problem] = []
    for arg in sets:
        label = f"--set {arg}"
        try:
            loc, value, value_spellings = parse_set(arg)
            _assign(data, loc, value)
        except FieldProblem as e:
            problems.append(Problem(label, e.loc, e.show or "", e.problem, e.fix))
            continue
        for replaced in [k for k in spellings if k[: len(loc)] == loc]:
            del spellings[replaced]  # the file's spelling of a value the command line replaced
        spellings.update({loc + k: v for k, v in value_spellings.items()})
        origins[loc] = label
    for section, only in SOURCE_ONLY.items():
        chosen, node = _get(data, (*section, "source")), _get(data, section)
        if (*section, "source") not in origins or chosen not in only or not isinstance(node, dict):
            continue
        for other, keys in only.items():
            for key in keys if other != chosen else ():
                at: Loc = (*section, key)
                if key not in only[chosen] and not any(o[: len(at)] == at for o in origins):
                    node.pop(key, None)
    return origins, problems


def parse_set(arg: str) -> tuple[Loc, Any, dict[Loc, str]]:
    """Split `a.b[0].c=value` into (("a", "b", 0, "c"), value as YAML reads it, spellings of its booleans)."""
    key, eq, text = arg.partition("=")
    if not eq or not key.strip():
        raise FieldProblem("not key=value", "write --set section.key=value, e.g. --set target.backend=tvm", show=arg)
    loc: list[str | int] = []
    for part in key.strip().split("."):
        m = _KEY.fullmatch(part)
        if part.isdigit():
            loc.append(int(part))
        elif m is None:
            raise FieldProblem(
                f"{key!r} is not a dotted key path", "write e.g. quantization.overrides[0].dtype", show=repr(key)
            )
        else:
            loc.append(m.group(1))
            loc.extend(int(i) for i in re.findall(r"\[(\d+)\]", m.group(2)))
    try:
        value, spellings, _ = read_yaml(text, arg) if text.strip() else (None, {}, [])
    except RecipeError as e:
        raise FieldProblem(
            f"the value is not valid YAML ({e.problems[0].problem})", "quote it: --set 'key=\"value\"'", show=text
        ) from None
    return tuple(loc), value, spellings


def _assign(data: dict[str, Any], loc: Loc, value: Any) -> None:
    node: Any = data
    for depth, part in enumerate(loc):
        last = depth == len(loc) - 1
        here = loc[:depth]
        if isinstance(part, int):
            if not isinstance(node, list):
                fix = f"drop [{part}]: {dotted(here)} is not a list"
                raise FieldProblem("not a list", fix, loc=here, show=show(node))
            if part > len(node):
                fix = f"use an index up to {len(node)} ({len(node)} appends)"
                raise FieldProblem(f"index {part} is past the end of a list of {len(node)}", fix, loc=here)
            if part == len(node):
                node.append(None)
        elif not isinstance(node, dict):
            what = type(node).__name__
            fix = f"set {dotted(here)} itself, not a key inside it"
            raise FieldProblem(f"is a {what}, not a mapping", fix, loc=here, show=show(node))
        if last:
            node[part] = value
            return
        child = node[part] if not isinstance(node, dict) else node.get(part)
        if child is None:
            child = [] if isinstance(loc[depth + 1], int) else {}
            node[part] = child
        node = child


__all__ = ["load_config", "parse_config", "parse_set", "read_yaml"]
