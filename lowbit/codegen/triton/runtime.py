"""Running generated Triton source: the module cache on disk, interpreter mode, argument conversion, launch.

Interpreter or GPU is decided once per process, at import of this module and before any generated module
is imported: the Triton interpreter when `torch.cuda.is_available()` is False (or TRITON_INTERPRET=1 is
already set). The decision must come before `triton` itself is imported (its standard library, `tl.sum`
and friends, is decorated once at import), so this module sets TRITON_INTERPRET and imports triton itself.
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
import sys
import warnings
from collections.abc import Callable, Mapping
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np
import sympy

from lowbit.codegen.backend import BackendError
from lowbit.codegen.scalar_eval import evaluate
from lowbit.codegen.triton.arguments import ArgumentCheck
from lowbit.codegen.triton.lower import CODEGEN_VERSION, check_options, kernel_name, lower
from lowbit.codegen.triton.memory import host_element
from lowbit.dtypes import encode
from lowbit.ir.program import Program
from lowbit.ir.values import TensorParam


def _select_mode() -> bool:
    """True for the interpreter. Sets TRITON_INTERPRET before triton is imported."""
    import torch

    interpret = os.environ.get("TRITON_INTERPRET", "0") not in ("", "0") or not torch.cuda.is_available()
    os.environ.setdefault("TRITON_DEFAULT_FP_FUSION", "1")
    if interpret:
        already = "triton" in sys.modules
        os.environ["TRITON_INTERPRET"] = "1"
        import triton

        triton.knobs.runtime.interpret = True
        if already:
            from triton.runtime.jit import JITFunction

            if isinstance(triton.language.standard.sum, JITFunction):
                warnings.warn(
                    "triton was imported before lowbit.codegen.triton chose the interpreter; reductions in "
                    "generated kernels will fail. Import lowbit.codegen.triton first or set TRITON_INTERPRET=1",
                    stacklevel=2,
                )
    return interpret


INTERPRET = _select_mode()
DEVICE = "cpu" if INTERPRET else "cuda"


def interpreter_conflict() -> str | None:
    """Why this Triton's interpreter cannot run lowbit's kernels here, or None. Triton 3.6's interpreter
    turns a scalar argument into an index with int() of a one-element array, which NumPy 2.4 refuses
    (`range(0, K, BK)` fails: "only 0-dimensional arrays can be converted"); 3.7 squeezes it first. Seen in
    session 30 (Triton 3.6 with NumPy 2.4.6 against 2.3.5). Native CUDA compiles are not affected."""
    import numpy
    import triton

    def version(text: str) -> tuple[int, ...]:
        return tuple(int(p) for p in text.split("+")[0].split(".")[:2] if p.isdigit())

    if version(triton.__version__) < (3, 7) and version(numpy.__version__) >= (2, 4):
        return (
            f"the Triton {triton.__version__} interpreter fails with NumPy {numpy.__version__} (scalar kernel "
            "arguments as loop bounds); install triton>=3.7 or numpy<2.4 to run Triton kernels on the CPU"
        )
    return None


INTERPRETER_CONFLICT = interpreter_conflict() if INTERPRET else None


def cache_dir() -> Path:
    root = Path(os.environ.get("LOWBIT_CACHE_DIR", Path.home() / ".cache" / "lowbit"))
    path = root / "triton"
    path.mkdir(parents=True, exist_ok=True)
    return path


def load_module(source: str) -> tuple[ModuleType, Path]:
    """Write `source` to the cache as `<hash>.py` (a real file: compiled @triton.jit needs its source) and
    import it. `LOWBIT_DUMP_TRITON=<dir>` also writes a copy there."""
    import triton

    digest = hashlib.sha256(f"{CODEGEN_VERSION}\n{triton.__version__}\n{source}".encode()).hexdigest()[:24]
    name = f"lowbit_triton_{digest}"
    path = cache_dir() / f"{digest}.py"
    if not path.exists() or path.read_text() != source:
        tmp = path.with_suffix(f".{os.getpid()}.tmp")
        tmp.write_text(source)
        tmp.replace(path)
    dump = os.environ.get("LOWBIT_DUMP_TRITON")
    if dump:
        Path(dump).mkdir(parents=True, exist_ok=True)
        (Path(dump) / f"{digest}.py").write_text(source)
    if name in sys.modules:
        return sys.modules[name], path
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module, path


# ---- arguments -------------------------------------------------------------------------------------


def _raw_bits(t: Any) -> Any:
    """Torch tensor `t` with the dtypes NumPy lacks (bfloat16, float8, uint16/32/64) viewed as signed ints of
    their width."""
    import torch

    if t.dtype.itemsize <= 2 and t.dtype.is_floating_point and t.dtype != torch.float16:
        t = t.view(torch.int8 if t.dtype.itemsize == 1 else torch.int16)
    if t.dtype in (torch.uint16, torch.uint32, torch.uint64):
        t = t.view({2: torch.int16, 4: torch.int32, 8: torch.int64}[t.dtype.itemsize])
    return t


def _to_numpy(arg: Any) -> np.ndarray:
    if hasattr(arg, "detach"):  # torch: non-NumPy dtypes (bfloat16, float8) as raw bits
        t = _raw_bits(arg.detach())
        return t.cpu().numpy() if t.device.type != "cpu" else t.numpy()
    return np.asarray(arg)


def _host_dtype(arg: Any) -> np.dtype:
    """The dtype `_to_numpy(arg)` has, without converting `arg`."""
    if hasattr(arg, "detach"):
        import torch

        return _raw_bits(torch.empty(0, dtype=arg.dtype)).numpy().dtype
    return arg.dtype if isinstance(arg, np.ndarray) else np.asarray(arg).dtype


def _numel(arg: Any) -> int:
    return int(arg.numel()) if hasattr(arg, "numel") else int(np.size(arg))


def _canonical(p: TensorParam, a: np.ndarray) -> tuple[np.ndarray, Callable[[np.ndarray], np.ndarray]]:
    """`a` in the device element form, and how to turn that form back into `a`'s dtype."""
    want, _ = host_element(p)
    dt = p.dtype
    if a.dtype == want:
        return a, lambda r: r
    if dt.is_float and want.kind == "i" and a.dtype.kind == "f":  # values of a non-native float: encode
        from lowbit.dtypes import decode

        codes = encode(dt, a.astype(np.float32)).astype(want.str.replace("i", "u")).view(want)
        return codes, lambda r: decode(dt, r.view(r.dtype.str.replace("i", "u")).astype(dt.code_dtype)).astype(a.dtype)
    if a.dtype.itemsize == want.itemsize and a.dtype.kind in "iuV" and want.kind in "iu":  # same bits
        return a.view(want), lambda r: r.view(a.dtype)
    return a.astype(want), lambda r: r.astype(a.dtype)


def _torch_element(p: TensorParam) -> Any:
    import torch

    return torch.from_numpy(np.empty(0, host_element(p)[0])).dtype


def _direct(p: TensorParam, arg: Any, want: Any = None) -> Any:
    """`arg` itself (or a same-bits view) when it is a contiguous torch tensor on the launch device already in
    the device element form of `p` (what `_canonical` would produce without converting values); else None.
    `want`: `_torch_element(p)`, when the caller has it at hand."""
    import torch

    if not isinstance(arg, torch.Tensor) or arg.device.type != DEVICE or not arg.is_contiguous():
        return None
    t = _raw_bits(arg)
    want = _torch_element(p) if want is None else want
    if t.dtype == want:
        return t
    integer = not (t.dtype.is_floating_point or t.dtype.is_complex or t.dtype == torch.bool)
    if integer and want not in (torch.bool,) and not want.is_floating_point and t.dtype.itemsize == want.itemsize:
        return t.view(want)  # the same bits, as _canonical's view
    return None


class TritonKernel:
    """A program compiled to Triton source; call it with host arguments by parameter name."""

    backend = "triton"

    def __init__(self, program: Program, options: Mapping[str, Any]):
        self.program = program
        self.options = check_options(dict(options))
        self.source = lower(program, self.options)
        self._module: ModuleType | None = None
        self.path: Path | None = None
        self.checks = [ArgumentCheck(program.name, p) for p in program.tensor_params]  # one per tensor, in order

    @property
    def fn(self) -> Any:
        """The `@triton.jit` function (imported on first use)."""
        if self._module is None:
            self._module, self.path = load_module(self.source)
        return getattr(self._module, kernel_name(self.program))

    def _grid(self, scalars: dict[str, Any]) -> tuple[int, ...]:
        return tuple(int(evaluate(g, scalars)) for g in self.program.grid)

    def _launch(self, grid: tuple[int, ...], args: list[Any]) -> None:
        if 0 not in grid:
            self.fn[grid](*args, num_warps=self.options["num_warps"], num_stages=self.options["num_stages"])

    def __call__(self, args: Mapping[str, Any]) -> None:
        import torch

        if INTERPRETER_CONFLICT:
            raise BackendError(f"kernel {self.program.name}: {INTERPRETER_CONFLICT}")
        program = self.program
        missing = [p.name for p in program.params if p.name not in args]
        if missing:
            raise BackendError(f"kernel {program.name}: missing arguments {missing}")
        extra = sorted(set(args) - {p.name for p in program.params})
        if extra:
            raise BackendError(f"kernel {program.name}: unknown arguments {extra}")
        env = {p.name: _scalar(p, args[p.name]) for p in program.scalar_params}
        scalars = [env[p.name] for p in program.scalar_params]
        direct = [_direct(p, args[p.name]) for p in program.tensor_params]
        if all(t is not None for t in direct):  # device tensors in place: no copies (and capturable in a CUDA graph)
            for check, t in zip(self.checks, direct):
                check.size(t.numel(), env)
            self._launch(self._grid(env), [*direct, *scalars])
            return
        hosts = [_to_numpy(args[p.name]) for p in program.tensor_params]
        for check, host in zip(self.checks, hosts):  # every argument checked before any is converted
            check.dtype(host.dtype)
            check.size(host.size, env)
        launch: list[Any] = []
        write_back: list[tuple[Any, np.ndarray, Any, Callable[[np.ndarray], np.ndarray]]] = []
        for p, host in zip(program.tensor_params, hosts):
            dev_np, back = _canonical(p, host)
            if not dev_np.flags.c_contiguous:
                dev_np = np.ascontiguousarray(dev_np)
            tensor = torch.from_numpy(dev_np)
            if DEVICE != "cpu":
                tensor = tensor.to(DEVICE)
            launch.append(tensor)
            shared = DEVICE == "cpu" and np.shares_memory(dev_np, host)
            if p.name in program.stored and not shared:
                write_back.append((args[p.name], host, tensor, back))
        grid = self._grid(env)
        if 0 in grid:
            return
        self._launch(grid, [*launch, *scalars])
        for original, host, tensor, back in write_back:
            result = back(tensor.cpu().numpy()).reshape(host.shape)
            if hasattr(original, "detach"):
                original.copy_(torch.from_numpy(np.ascontiguousarray(result)).view(original.dtype))
            else:
                host[...] = result

    def bind(self, fixed: Mapping[str, Any], dynamic: tuple[str, ...]) -> Callable[..., None]:
        """A positional caller for repeated launches (`lowbit.kernels.launch.bind`): `call(*values)` runs the
        kernel with `fixed` and `values` for the `dynamic` names (names the kernel does not take are ignored, as
        in TVM's bind). The fixed tensors are checked here, once: dtype, and size where it follows fixed scalars
        only. A call whose tensors are all on the launch device in the element form (`_direct`: contiguous
        torch) launches them as they are after one numel comparison per dynamic tensor (and per fixed tensor
        whose size follows a dynamic scalar); any other call goes through `__call__` (conversion, write-back,
        every check)."""
        program = self.program
        tensors, scalars = program.tensor_params, program.scalar_params
        names = {p.name for p in program.params}
        missing = names - set(fixed) - set(dynamic)
        if missing:
            raise BackendError(f"kernel {program.name}: bind lacks arguments {sorted(missing)}")
        fixed = {k: v for k, v in fixed.items() if k in names and k not in dynamic}
        fixed_env = {p.name: _scalar(p, fixed[p.name]) for p in scalars if p.name in fixed}
        late: list[tuple[int, ArgumentCheck, int | None]] = []  # (position, check, numel of a fixed tensor)
        for i, (p, check) in enumerate(zip(tensors, self.checks)):
            if p.name not in fixed:
                late.append((i, check, None))
                continue
            check.dtype(_host_dtype(fixed[p.name]))
            if set(check.names) <= set(fixed_env):
                check.size(_numel(fixed[p.name]), fixed_env)
            else:
                late.append((i, check, _numel(fixed[p.name])))

        def converting(*values: Any) -> None:
            self({**fixed, **{n: v for n, v in zip(dynamic, values) if n in names}})

        template: list[Any] = [_direct(p, fixed[p.name]) if p.name in fixed else None for p in tensors]
        if INTERPRETER_CONFLICT or any(t is None for p, t in zip(tensors, template) if p.name in fixed):
            return converting
        template += [fixed_env.get(p.name) for p in scalars]
        params: dict[str, Any] = {p.name: p for p in program.params}
        order = [p.name for p in tensors] + [p.name for p in scalars]
        # per dynamic value: (launch position, parameter, torch element dtype; None for a scalar), position -1 for
        # a name this kernel does not take
        slots: list[tuple[int, Any, Any]] = []
        for n in dynamic:
            i = order.index(n) if n in params else -1
            slots.append((i, params.get(n), _torch_element(params[n]) if 0 <= i < len(tensors) else None))
        grid = (
            self._grid(fixed_env)
            if all(str(s) in fixed_env for g in program.grid for s in sympy.sympify(g).free_symbols)
            else None
        )

        def call(*values: Any) -> None:
            args, env = template.copy(), dict(fixed_env)
            for (i, p, want), v in zip(slots, values):
                if i < 0:
                    continue
                if want is None:
                    env[p.name] = args[i] = _scalar(p, v)
                    continue
                t = _direct(p, v, want)
                if t is None:
                    converting(*values)
                    return
                args[i] = t
            for i, check, numel in late:
                check.size(args[i].numel() if numel is None else numel, env)
            self._launch(self._grid(env) if grid is None else grid, args)

        return call


def _scalar(p: Any, v: Any) -> int | float:
    return int(v) if p.dtype.is_integer else float(v)


def compile_triton(program: Program, options: Mapping[str, Any]) -> TritonKernel:
    """The backend entry point: `compile_program(program, "triton", options)` lands here."""
    return TritonKernel(program, options)
