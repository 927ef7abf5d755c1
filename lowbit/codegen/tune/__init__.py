"""Autotuning: search spaces (space.py), timing, the tuner and its persistent cache."""

from lowbit.codegen.tune.space import Constraint, SearchSpace
from lowbit.codegen.tune.timing import Timing, benchmark, device_name, flush_cache, set_threads

__all__ = ["Constraint", "SearchSpace", "Timing", "benchmark", "device_name", "flush_cache", "set_threads"]
