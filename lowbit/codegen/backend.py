"""Backends behind one interface: compile a tile-IR `Program` once, call it many times.

    kernel = compile_program(program, "tvm", options={"vector": 16})
    kernel({"x": x, "w": words, "scales": s, "y": y, "M": 4, "N": 64, "K": 128})   # writes y in place
    print(kernel.source)                                                           # readable generated code

Arguments are passed by parameter name in host form (what the reference interpreter takes): row-major
arrays of the logical shape for byte-sized tensors, the words of `PackedLayout.pack` for packed sub-byte
tensors, a flat buffer for tensors with a CuTe layout; integer scalars as ints. Arrays may be NumPy arrays
or torch tensors; outputs are written back into the caller's arrays. Every backend names its options (the
knobs a tuner may turn that do not change the IR: warps and stages for Triton, vector width and
parallelism for TVM); unknown options are an error.
"""

from __future__ import annotations

import functools
import importlib.util
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol

import sympy

from lowbit.ir.program import Program
from lowbit.ir.values import TensorParam


class BackendError(RuntimeError):
    """A backend that is missing, cannot compile a program, or got bad options."""


class CompiledKernel(Protocol):
    """A program compiled by one backend."""

    program: Program
    backend: str
    source: str  # the generated code (Python/Triton source, TVMScript); "" for the interpreter

    def __call__(self, args: Mapping[str, Any]) -> None: ...


def freeze(d: Mapping[str, Any] | None) -> tuple[tuple[str, Any], ...]:
    """A mapping as a sorted tuple of pairs: hashable, order-independent."""
    return tuple(sorted((d or {}).items()))


@dataclass(frozen=True)
class Config:
    """One point of a kernel's search space: DSL compile-time constants (tile sizes, split-K) that change
    the IR, and backend options that do not. Frozen and hashable; `Config.make(...)` builds one from dicts."""

    constants: tuple[tuple[str, Any], ...] = ()
    options: tuple[tuple[str, Any], ...] = ()

    @classmethod
    def make(cls, constants: Mapping[str, Any] | None = None, options: Mapping[str, Any] | None = None) -> Config:
        return cls(freeze(constants), freeze(options))

    @property
    def constant_dict(self) -> dict[str, Any]:
        return dict(self.constants)

    @property
    def option_dict(self) -> dict[str, Any]:
        return dict(self.options)

    def __str__(self) -> str:
        parts = [f"{k}={v}" for k, v in self.constants + self.options]
        return "Config(" + ", ".join(parts) + ")"


Compiler = Callable[[Program, Mapping[str, Any]], CompiledKernel]
_BACKENDS: dict[str, tuple[str, str]] = {
    # name -> (module that registers it, the pip extra that installs its toolchain)
    "reference": ("lowbit.codegen.reference", ""),
    "triton": ("lowbit.codegen.triton", "triton"),
    "tvm": ("lowbit.codegen.tvm", "tvm"),
}
_TOOLCHAIN = {"reference": "numpy", "triton": "triton", "tvm": "tvm"}
_COMPILERS: dict[str, Compiler] = {}
_RUNS_PIPELINE: set[str] = set()


def register_backend(name: str, compiler: Compiler, runs_pipeline: bool = False) -> None:
    """Called by a backend module at import: `compiler(program, options) -> CompiledKernel`. The compiler
    gets the program after the pass pipeline, or with `runs_pipeline=True` the program as traced: it then
    runs `run_pipeline` itself when it builds, so a persistent cache keyed by the traced program skips the
    passes too on a hit (TVM)."""
    _COMPILERS[name] = compiler
    if runs_pipeline:
        _RUNS_PIPELINE.add(name)


def available_backends() -> list[str]:
    """Backends whose toolchain is installed on this machine (the reference is always there)."""
    return [name for name, tool in _TOOLCHAIN.items() if importlib.util.find_spec(tool) is not None]


def get_compiler(backend: str) -> Compiler:
    if backend not in _BACKENDS:
        raise BackendError(f"unknown backend {backend!r}; use one of {sorted(_BACKENDS)}")
    if backend not in _COMPILERS:
        module, extra = _BACKENDS[backend]
        if importlib.util.find_spec(_TOOLCHAIN[backend]) is None:
            raise BackendError(
                f"backend {backend!r} needs {_TOOLCHAIN[backend]}, which is not installed; "
                f"pip install 'lowbit[{extra}]' (available here: {available_backends()})"
            )
        importlib.import_module(module)
    return _COMPILERS[backend]


@functools.lru_cache(maxsize=512)
def _compile_cached(program: Program, backend: str, options: tuple[tuple[str, Any], ...]) -> CompiledKernel:
    from lowbit.ir.passes import run_pipeline

    compiler = get_compiler(backend)
    return compiler(program if backend in _RUNS_PIPELINE else run_pipeline(program), dict(options))


def compile_program(program: Program, backend: str, options: Mapping[str, Any] | None = None) -> CompiledKernel:
    """Run the pass pipeline on `program` and compile it with `backend` (cached per program, backend and
    options in this process; TVM kernels are also cached on disk across processes, see
    `lowbit.codegen.kernel_cache`).

    One option belongs to every backend: `split_k` (an int >= 1, default 1). Above 1 the program's reduction
    loop `k0` is split over that many programs (`lowbit.ir.passes.split_k`) and the call runs two kernels:
    the split form into an fp32 [split_k, M, N] buffer, then their sum, rounded once into the output. The
    call's arguments stay the original program's."""
    opts = dict(options or {})
    split = opts.pop("split_k", 1)
    if not isinstance(split, int) or isinstance(split, bool) or split < 1:
        raise BackendError(f"option split_k={split!r}: pass an int >= 1 (1: no split)")
    if split > 1:
        return _split_cached(program, backend, freeze(opts), split)
    return _compile_cached(program, backend, freeze(opts))


class SplitKKernel:
    """`program` compiled as its split-K form plus the partial sum (`compile_program`'s option split_k)."""

    def __init__(self, program: Program, backend: str, options: tuple[tuple[str, Any], ...], splits: int):
        from lowbit.ir.passes.split_k import SPLIT, make_split_k, output_name, partial_param, split_k_sum

        self.program, self.backend, self.splits = program, backend, splits
        self.out = output_name(program)
        y = program.param(self.out)
        assert isinstance(y, TensorParam)
        self._part, self._split_name = partial_param(y).name, SPLIT
        self._shape = y.shape
        self.main = _compile_cached(make_split_k(program), backend, options)
        sum_options = tuple((k, v) for k, v in options if k == "target")  # the device, nothing tuned
        self.sum = _compile_cached(split_k_sum(y), backend, sum_options)
        self.source = f"{self.main.source}\n\n{self.sum.source}"

    def simulate(self) -> SplitKKernel:
        """Both CUDA kernels' code run on the CPU (TVM's `simulate`, for a machine without a GPU)."""
        sim = SplitKKernel.__new__(SplitKKernel)
        sim.__dict__.update(self.__dict__)
        sim.main, sim.sum = self.main.simulate(), self.sum.simulate()  # type: ignore[attr-defined]
        return sim

    def __call__(self, args: Mapping[str, Any]) -> None:
        y = args[self.out]
        shape = (self.splits, *tuple(y.shape))
        part: Any
        if hasattr(y, "device"):  # torch: the partials beside y (a buffer per call: concurrent calls never share)
            import torch

            part = torch.empty(shape, dtype=torch.float32, device=y.device)
        else:
            import numpy as np

            part = np.empty(shape, np.float32)
        main = {k: v for k, v in args.items() if k != self.out}
        self.main({**main, self._part: part, self._split_name: self.splits})
        sizes = {str(e): int(v) for e, v in zip(self._shape, y.shape) if isinstance(e, sympy.Symbol)}
        self.sum({self._part: part, self.out: y, self._split_name: self.splits, **sizes})


@functools.lru_cache(maxsize=128)
def _split_cached(program: Program, backend: str, options: tuple[tuple[str, Any], ...], splits: int) -> SplitKKernel:
    return SplitKKernel(program, backend, options, splits)


def clear_compile_cache() -> None:
    """Forget the kernels compiled in this process (the disk cache is kept): the next `compile_program`
    goes to the backend again."""
    _compile_cached.cache_clear()
    _split_cached.cache_clear()


__all__ = [
    "BackendError",
    "CompiledKernel",
    "Config",
    "SplitKKernel",
    "available_backends",
    "clear_compile_cache",
    "compile_program",
    "freeze",
    "get_compiler",
    "register_backend",
]
