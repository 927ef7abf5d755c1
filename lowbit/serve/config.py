"""`lowbit serve` settings: command line > `--config FILE` (YAML, the same keys as the flags, dashes or
underscores) > defaults, as vLLM does."""

from __future__ import annotations

import argparse
import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

CHOICES: dict[str, tuple[str, ...]] = {
    "schedule": ("artifact", "unsplit", "nano"),
    "policy": ("fcfs", "priority"),
    "verify": ("full", "quick", "none"),
    "log_level": ("critical", "error", "warning", "info", "debug", "trace"),
}


@dataclass(frozen=True)
class ServeConfig:
    artifact: str | None = None
    host: str = "127.0.0.1"
    port: int = 8000
    served_model_name: str | None = None  # default: the artifact's model.name
    max_num_seqs: int | None = None  # default: the artifact's target.max_num_seqs
    max_model_len: int | None = None  # default: the artifact's target.max_model_len
    max_num_batched_tokens: int | None = None
    kv_cache_bytes: int | None = None
    max_waiting: int = 1024  # queued requests beyond which the server answers 429
    schedule: str = "artifact"
    plan: str | None = None  # a PipelinePlan JSON file (`lowbit plan ... --write-plan FILE`) run instead of plan.json
    research_every: int | None = None  # steps between re-searches of the artifact's split plan (0: never)
    policy: str = "fcfs"
    backend: str | None = None
    verify: str = "full"
    api_key: str | None = None
    chat_template: str | None = None
    shutdown_timeout: float = 30.0
    log_level: str = "info"

    def engine_kwargs(self) -> dict[str, Any]:
        names = ("backend", "max_num_seqs", "max_model_len", "max_num_batched_tokens", "kv_cache_bytes", "schedule",
                 "policy", "verify", "research_every")  # fmt: skip
        kw = {k: getattr(self, k) for k in names}
        if self.plan is not None:
            kw["plan"] = read_plan(self.plan)
        return kw


def read_plan(path: str | Path) -> Any:
    """The PipelinePlan in `path`; errors name the flag, the file and the fix."""
    from lowbit.runtime.plan import PipelinePlan

    try:
        return PipelinePlan.from_json(Path(path).read_text())
    except OSError as e:
        raise ValueError(
            f"plan = {str(path)!r}: cannot read it ({e.strerror}); give a file `lowbit plan --write-plan` wrote"
        ) from e
    except (ValueError, TypeError, KeyError) as e:
        raise ValueError(
            f"plan = {str(path)!r} is not a pipeline plan ({e}); "
            "write one with `lowbit plan ARTIFACT --write-plan FILE`"
        ) from e


FIELDS = {f.name: f for f in dataclasses.fields(ServeConfig)}
_TYPES = {"port": int, "max_num_seqs": int, "max_model_len": int, "max_num_batched_tokens": int,
          "kv_cache_bytes": int, "max_waiting": int, "shutdown_timeout": float, "research_every": int}  # fmt: skip


def _coerce(key: str, value: Any, where: str) -> Any:
    """A config-file value as the flag would parse it; errors name the key, the value and the fix."""
    if value is None:
        return None
    if isinstance(value, bool):  # PyYAML reads bare on/off/yes/no as booleans
        raise ValueError(f"{where}: {key} = {value!r} is a YAML boolean; quote the value ('{key}: \"...\"')")
    kind = _TYPES.get(key, str)
    if kind is int and not isinstance(value, int):
        raise ValueError(f"{where}: {key} = {value!r} is not an integer")
    if kind is float and not isinstance(value, (int, float)):
        raise ValueError(f"{where}: {key} = {value!r} is not a number")
    out = kind(value)
    if key in CHOICES and out not in CHOICES[key]:
        raise ValueError(f"{where}: {key} = {value!r}; use one of {', '.join(CHOICES[key])}")
    return out


def read_config_file(path: str | Path) -> dict[str, Any]:
    data = yaml.safe_load(Path(path).read_text()) or {}
    if not isinstance(data, dict):
        raise ValueError(f"{path}: a serve config is a YAML mapping of flag names to values")
    out: dict[str, Any] = {}
    for raw, value in data.items():
        key = str(raw).replace("-", "_")
        if key not in FIELDS or key == "config":
            known = ", ".join(k.replace("_", "-") for k in FIELDS)
            raise ValueError(f"{path}: unknown key {raw!r}; the keys are the flags of lowbit serve: {known}")
        out[key] = _coerce(key, value, str(path))
    return out


def resolve(args: argparse.Namespace) -> ServeConfig:
    """Flags given on the command line (not None) beat the config file, which beats the defaults."""
    values = read_config_file(args.config) if getattr(args, "config", None) else {}
    values.update({k: v for k, v in vars(args).items() if k in FIELDS and v is not None})
    cfg = ServeConfig(**values)
    if cfg.artifact is None:
        raise ValueError("give the artifact directory (lowbit serve ARTIFACT, or `artifact:` in --config)")
    if cfg.max_waiting < 1:
        raise ValueError(f"max_waiting = {cfg.max_waiting}: must be >= 1 (the queue limit before 429)")
    if cfg.research_every is not None and cfg.research_every < 0:
        raise ValueError(f"research_every = {cfg.research_every}: give a number of steps >= 0 (0 turns re-search off)")
    if cfg.plan is not None:
        read_plan(cfg.plan)  # a bad plan file fails here, before the engine loads the artifact
    return cfg


__all__ = ["CHOICES", "ServeConfig", "read_config_file", "read_plan", "resolve"]
