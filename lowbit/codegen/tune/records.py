"""Tuned configurations pinned to a weight: what a compiled artifact's tuning.json hands to the runtime.

A `TunedConfig` reads: on `backend`, library kernel `kernel` with fixed constants `fixed` (the weight's
code dtype, group size, zero mode, activation and scale dtypes; the layout is the weight's own) runs
`config` for token counts M in the half-open range (lo, hi] -- one token-count bucket of the graph
(`lowbit.graph` buckets: 1, 16, 64, 256, 4096), tuned at M = `tuned_m`.

    attach(qweight, records)                      the compiler (after tuning) and `load_compiled` (from tuning.json)
    lookup(qweight, kernel, backend, fixed, m)    `lowbit.ops.linear` before it falls back to the default config

The records travel with the weight object (no process-wide table), so two artifacts loaded in one process
never see each other's configs, and a loaded model runs its tuned kernels without tuning.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from lowbit.codegen.backend import Config, freeze
from lowbit.codegen.tune.cache import config_from_json, config_to_json

_ATTR = "_tuned_configs"  # where the records live on a weight object (its __dict__: weights are frozen)
NOT_FIXED = ("wlayout",)  # fixed constants a record does not compare: the weight carries them


def fixed_key(fixed: Mapping[str, Any]) -> tuple[tuple[str, Any], ...]:
    """A kernel's fixed constants as a record compares them (frozen, the layout left out)."""
    return freeze({k: v for k, v in fixed.items() if k not in NOT_FIXED})


@dataclass(frozen=True)
class TunedConfig:
    kernel: str
    backend: str
    fixed: tuple[tuple[str, Any], ...]  # fixed_key(...) of the kernel's fixed constants
    m_range: tuple[int, int]  # (lo, hi]: the token counts this config serves
    config: Config
    tuned_m: int = 0  # the M it was measured at (0: not recorded)

    def serves(self, kernel: str, backend: str, fixed: tuple[tuple[str, Any], ...], m: int) -> bool:
        lo, hi = self.m_range
        return self.kernel == kernel and self.backend == backend and self.fixed == fixed and lo < m <= hi

    def to_json(self) -> dict[str, Any]:
        return {
            "kernel": self.kernel,
            "backend": self.backend,
            "fixed": dict(self.fixed),
            "m_range": list(self.m_range),
            "tuned_m": self.tuned_m,
            "config": config_to_json(self.config),
        }

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> TunedConfig:
        lo, hi = (int(x) for x in d["m_range"])
        return cls(
            str(d["kernel"]),
            str(d["backend"]),
            fixed_key(d.get("fixed", {})),
            (lo, hi),
            config_from_json(d["config"]),
            int(d.get("tuned_m", 0)),
        )


def attach(weight: Any, records: Iterable[TunedConfig]) -> None:
    """Pin `records` to `weight` (a QuantizedWeight), replacing earlier ones, and drop the kernels already
    compiled for it so the next call compiles the pinned config."""
    weight.__dict__[_ATTR] = tuple(records)
    weight.__dict__.pop("_plans", None)  # lowbit.ops.linear's per-weight compiled kernels


def attached(weight: Any) -> tuple[TunedConfig, ...]:
    return tuple(getattr(weight, "__dict__", {}).get(_ATTR, ()))


def lookup(weight: Any, kernel: str, backend: str, fixed: Mapping[str, Any], m: int) -> Config | None:
    """The pinned config of `weight` for `kernel` on `backend` with `fixed` constants at M = m rows, or None
    (nothing pinned for that bucket: the caller uses the kernel's default)."""
    records = attached(weight) if weight is not None else ()
    if not records:
        return None
    key = fixed_key(fixed)
    for r in records:
        if r.serves(kernel, backend, key, m):
            return r.config
    return None


__all__ = ["TunedConfig", "attach", "attached", "fixed_key", "lookup"]
