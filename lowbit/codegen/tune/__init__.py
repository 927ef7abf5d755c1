"""Autotuning: search spaces (space.py), timing, the tuner and its persistent cache."""

from lowbit.codegen.tune.space import Constraint, SearchSpace

__all__ = ["Constraint", "SearchSpace"]
