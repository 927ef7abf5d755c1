"""Autotuning: search spaces (space.py), timing (timing.py), the tuner (tuner.py), its persistent cache
(cache.py) and tuned configs pinned to weights (records.py). See README.md in this directory."""

from lowbit.codegen.tune.cache import CODEGEN_VERSION, TuningCache
from lowbit.codegen.tune.records import TunedConfig
from lowbit.codegen.tune.space import Constraint, SearchSpace
from lowbit.codegen.tune.timing import Timing, benchmark, device_name, flush_cache, set_threads
from lowbit.codegen.tune.tuner import Trial, TuneResult, TuningError, cached_result, tune, tuning_enabled

__all__ = [
    "CODEGEN_VERSION",
    "Constraint",
    "SearchSpace",
    "Timing",
    "Trial",
    "TuneResult",
    "TunedConfig",
    "TuningCache",
    "TuningError",
    "benchmark",
    "cached_result",
    "device_name",
    "flush_cache",
    "set_threads",
    "tune",
    "tuning_enabled",
]
