"""Search spaces: the frozen configurations a kernel may be compiled with, and why some are invalid.

A kernel declares, per backend, a `SearchSpace`: the values each tunable DSL constant (tile sizes, split-K)
and each backend option (Triton: num_warps, num_stages; TVM: vector, parallel, unroll) may take, the
default point, and constraints. A constraint is a function `(config, problem) -> reason or None`;
`problem` maps the kernel's size parameters and fixed constants (M, N, K, G, wdtype, ...) to values, so
a constraint can prune on divisibility, shared memory or register budgets and say why.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

from lowbit.codegen.backend import Config, freeze

Constraint = Callable[[Config, Mapping[str, Any]], "str | None"]


@dataclass(frozen=True)
class SearchSpace:
    """The cross product of `constants` and `options` axes (each a tuple of values), filtered by
    `constraints`. `default` is the point used when tuning is off or impossible (interpreter)."""

    constants: tuple[tuple[str, tuple[Any, ...]], ...]
    options: tuple[tuple[str, tuple[Any, ...]], ...] = ()
    default: Config = field(default_factory=Config)
    constraints: tuple[Constraint, ...] = ()

    @classmethod
    def make(
        cls,
        constants: Mapping[str, tuple[Any, ...]],
        options: Mapping[str, tuple[Any, ...]] | None = None,
        default: Mapping[str, Any] | None = None,
        constraints: tuple[Constraint, ...] = (),
    ) -> SearchSpace:
        """`default` maps every axis name to a value; when omitted, the first value of each axis."""
        options = options or {}
        names = set(constants) | set(options)
        chosen = dict(default or {})
        unknown = set(chosen) - names
        if unknown:
            raise ValueError(f"default names {sorted(unknown)}, which are not axes of this space ({sorted(names)})")
        point = {n: chosen.get(n, vals[0]) for n, vals in {**constants, **options}.items()}
        dflt = Config.make({n: point[n] for n in constants}, {n: point[n] for n in options})
        return cls(
            freeze({k: tuple(v) for k, v in constants.items()}),
            freeze({k: tuple(v) for k, v in options.items()}),
            dflt,
            constraints,
        )

    def __iter__(self) -> Iterator[Config]:
        """Every point of the cross product, the default first (valid or not: see `check`)."""
        yield self.default
        c_names = [n for n, _ in self.constants]
        o_names = [n for n, _ in self.options]
        axes = [v for _, v in self.constants] + [v for _, v in self.options]
        for values in itertools.product(*axes):
            cfg = Config.make(dict(zip(c_names, values[: len(c_names)])), dict(zip(o_names, values[len(c_names) :])))
            if cfg != self.default:
                yield cfg

    def __len__(self) -> int:
        n = 1
        for _, v in self.constants + self.options:
            n *= len(v)
        return n

    def check(self, config: Config, problem: Mapping[str, Any]) -> str | None:
        """Why `config` is invalid for `problem` (the first failing constraint's reason), or None."""
        for constraint in self.constraints:
            reason = constraint(config, problem)
            if reason:
                return reason
        return None

    def valid(self, problem: Mapping[str, Any]) -> list[Config]:
        return [c for c in self if self.check(c, problem) is None]


__all__ = ["Constraint", "SearchSpace"]
