"""Build lowered TVMScript with TVM (LLVM for the CPU, CUDA when asked), call it, export and reload it.

Targets are JSON dicts (TVM 0.27 rejects target strings); the CPU's `mcpu` comes from
`llvm_get_system_cpu()` because `mcpu=native` silently falls back to generic SSE code. TVM runs one thread
on this kind of VM unless TVM_NUM_THREADS is set, so it is set (to the core count) before TVM starts, and
TVM_BIND_THREADS to 0 (unpinned workers: a pinned worker on a busy core stalls every parallel kernel).
Arguments reach the compiled function as torch CPU tensors (zero-copy through DLPack); buffers are declared
with 4-byte alignment, so views and `torch.from_numpy` arrays are safe to pass.

`compile_tvm` goes through the disk cache of `lowbit.codegen.kernel_cache`: a kernel built once is saved as
`<key>.so` + `<key>.json` and later processes load the library instead of building (`kernel_key_parts` says
what the key covers); `regenerate(record)` builds a cached kernel again from its record's program text.
"""

from __future__ import annotations

import functools
import hashlib
import importlib.util
import os
import re
import shutil
import threading
import warnings
from collections.abc import Callable, Mapping
from typing import Any

import sympy

from lowbit.codegen import kernel_cache
from lowbit.codegen.backend import BackendError
from lowbit.codegen.scalar_eval import compile_expr
from lowbit.codegen.tvm.arguments import element, tensor_argument
from lowbit.codegen.tvm.bf16_dot import patch_module, uses_stand_in
from lowbit.codegen.tvm.lower import check_options, lower
from lowbit.ir.program import Program
from lowbit.ir.values import TensorParam

os.environ.setdefault("TVM_NUM_THREADS", str(os.cpu_count() or 1))
# TVM pins its pool's workers to cores by default; on a shared VM a pinned worker whose core is busy holds up
# every parallel kernel until it runs again (the 1.1B decode GEMVs streamed 7-9 GB/s pinned vs 12-13 GB/s
# unpinned on this 2-core VM under a load average of 3; not measured on an idle machine): let the OS place them
os.environ.setdefault("TVM_BIND_THREADS", "0")

import tvm

# /proc/cpuinfo flags the lowering emits intrinsics for (or vectorizes with), as LLVM feature names. A VM's
# CPUID model can name an older CPU than the one it runs on (LLVM reads "rocketlake" on a Sapphire Rapids VM
# whose cpuinfo lists avx512_bf16): the target adds what the host has and its mcpu lacks, so a kernel built
# for it may use the instruction. avx512_fp16 is left out on purpose: with it LLVM does half arithmetic
# natively instead of in fp32, which would change results.
_LLVM_FEATURES = {
    "avx2": "avx2",
    "fma": "fma",
    "f16c": "f16c",
    "avx512f": "avx512f",
    "avx512bw": "avx512bw",
    "avx512vl": "avx512vl",
    "avx512_vnni": "avx512vnni",
    "avx512_bf16": "avx512bf16",
    "avx_vnni": "avxvnni",
    "amx_tile": "amx-tile",
    "amx_int8": "amx-int8",
    "amx_bf16": "amx-bf16",
    # read from the target only (`_target_features`): not in lowbit.artifact.fingerprint.ISA_FLAGS, so a target
    # whose mcpu lacks it is not given it (the decoded GEMM form then keeps its table decode)
    "avx512vbmi": "avx512vbmi",
}

# Linux hands a process AMX's 8 KiB tile state only when asked (arch_prctl ARCH_REQ_XCOMP_PERM for
# XFEATURE_XTILEDATA); a tile instruction before that raises SIGILL
_ARCH_REQ_XCOMP_PERM, _XFEATURE_XTILEDATA, _SYS_ARCH_PRCTL = 0x1023, 18, 158
_AMX_OP = "llvm.x86.ldtilecfg"  # every kernel with AMX tiles loads their configuration


@functools.cache
def amx_permitted() -> bool:
    """Whether this process may run AMX tile instructions (asks Linux once; False off x86-64 Linux or when
    the CPU lacks AMX)."""
    import ctypes
    import platform

    from lowbit.artifact.fingerprint import isa_flags

    if platform.system() != "Linux" or platform.machine() != "x86_64" or "amx_int8" not in isa_flags():
        return False
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        return libc.syscall(_SYS_ARCH_PRCTL, _ARCH_REQ_XCOMP_PERM, _XFEATURE_XTILEDATA) == 0
    except (OSError, AttributeError):
        return False


@functools.cache
def cpu_target() -> Any:
    """This CPU as an LLVM target: LLVM's host mcpu plus the `_LLVM_FEATURES` cpuinfo lists and mcpu lacks."""
    from lowbit.artifact.fingerprint import isa_flags

    cpu = tvm.target.codegen.llvm_get_system_cpu()
    spec: dict[str, Any] = {"kind": "llvm", "mcpu": cpu, "num-cores": os.cpu_count() or 1}
    base = tvm.target.Target(spec)
    extra = [
        f"+{_LLVM_FEATURES[f]}"
        for f in isa_flags()
        if f in _LLVM_FEATURES and not tvm.target.codegen.llvm_cpu_has_features([_LLVM_FEATURES[f]], base)
    ]
    return tvm.target.Target({**spec, "mattr": extra}) if extra else base


_FEATURES: dict[str, frozenset[str]] = {}

# explicit x86 forms and the LLVM feature each needs
_OPTION_FEATURES = {
    ("int8_dot", "amx"): "amx-int8",
    ("int8_dot", "vnni"): "avx512vnni",
    ("int8_dot", "avx2"): "avx2",
    ("bf16_dot", "avx512bf16"): "avx512bf16",
    ("bf16_dot", "amx"): "amx-bf16",
    ("lut", "avx512"): "avx512f",
    ("multishift", "avx512vbmi"): "avx512vbmi",
}


def _target_features(target: Any) -> frozenset[str]:
    """The `_LLVM_FEATURES` an LLVM target can encode (its mcpu and mattr)."""
    key = str(target)
    if key not in _FEATURES:
        has = tvm.target.codegen.llvm_cpu_has_features
        _FEATURES[key] = frozenset(f for f in _LLVM_FEATURES.values() if has([f], target))
    return _FEATURES[key]


def resolve_options(options: Mapping[str, Any], target: Any) -> dict[str, Any]:
    """`options` with "auto" choices made for `target`: int8_dot "vnni" for an LLVM (CPU) target that has
    AVX-512 VNNI, else "avx2" when it has AVX2, else "none" (likewise bf16_dot and lut; an explicit x86 form
    the target lacks raises BackendError); vector 16 lanes with AVX-512 (or off x86 and on GPUs), 8 on an
    AVX2 CPU without it (one 256-bit register of fp32)."""
    from lowbit.artifact.fingerprint import fp32_lanes

    out = dict(options)
    cpu = str(getattr(target, "kind", "")) == "llvm" or "llvm" in str(target)
    # what the target can encode (its mcpu and mattr), not /proc/cpuinfo: an intrinsic the target lacks
    # aborts the process inside LLVM ("Do not know how to split this operator's operand")
    flags = _target_features(target) if cpu else frozenset()
    for (name, form), feature in _OPTION_FEATURES.items():
        if cpu and out.get(name) == form and feature not in flags:
            raise BackendError(
                f'TVM option {name}="{form}" needs the LLVM feature {feature}, which target {target} lacks; '
                f'use {name}="auto" (the best form this target has) or "none"'
            )
    for name in ("int8_dot", "bf16_dot"):
        if cpu and out.get(name) == "amx" and not amx_permitted():
            raise BackendError(
                f'TVM option {name}="amx": Linux did not grant this process the AMX tile state; use "auto"'
            )
    if cpu and out.get("bf16_dot") == "amx" and "avx512bf16" not in flags:  # its other forms run vdpbf16ps
        raise BackendError(f'TVM option bf16_dot="amx" needs avx512bf16 too, which target {target} lacks; use "auto"')
    if out.get("int8_dot") == "auto":
        amx = "amx-int8" in flags and "amx-tile" in flags and amx_permitted()
        out["int8_dot"] = "amx" if amx else "vnni" if "avx512vnni" in flags else "avx2" if "avx2" in flags else "none"
    if out.get("bf16_dot") == "auto":
        amx = {"amx-bf16", "amx-tile", "avx512bf16"} <= flags and amx_permitted()
        out["bf16_dot"] = "amx" if amx else "avx512bf16" if "avx512bf16" in flags else "none"
    if out.get("multishift") == "auto":
        out["multishift"] = "avx512vbmi" if "avx512vbmi" in flags else "none"
    if out.get("lut") == "auto":
        out["lut"] = "avx512" if "avx512f" in flags else "none"
    if out.get("vector") == "auto":
        out["vector"] = fp32_lanes() if cpu else 16
    if not cpu:  # the x86 forms (VNNI, vpermps tables, vdpbf16ps, prefetch hints, SIMD lanes) are CPU-only
        out.update(
            int8_dot="none",
            lut="none",
            bf16_dot="none",
            multishift="none",
            inner_dot=0,
            prefetch=0,
            vector=1,
            fma_chains=1,
        )
    return out


def cuda_target(arch: str = "sm_90") -> Any:
    return tvm.target.Target({"kind": "cuda", "arch": arch, "max_num_threads": 1024})


def option_target(options: Mapping[str, Any]) -> Any:
    """The TVM target the options name: this CPU, or CUDA for option target "cuda" (option `arch`)."""
    opts = check_options(options)
    return cuda_target(opts["arch"]) if opts["target"] == "cuda" else cpu_target()


def is_cuda(target: Any) -> bool:
    return str(getattr(target, "kind", "")) == "cuda"


_THREAD_LOOP = re.compile(r'T\.thread_binding\((.*?), thread="threadIdx\.x"\)')
_BLOCK_LOOP = re.compile(r'T\.thread_binding\((.*?), thread="blockIdx\.x"\)')


def cpu_simulation_source(source: str) -> str:
    """The TVMScript of a CUDA-lowered kernel rewritten to run on the CPU with the same semantics: each
    thread loop (`gpu_nest`) a serial loop (so every loop of a block's threads finishes before the next one
    starts: what the __syncthreads() TVM inserts between them guarantees on the GPU), the block loop parallel,
    shared and local buffers ordinary ones. Everything else, the element-to-thread arithmetic included, is the
    CUDA kernel's own text."""
    text = _THREAD_LOOP.sub(r"T.serial(\1)", source)
    text = _BLOCK_LOOP.sub(r"T.parallel(\1)", text)
    text = text.replace('T.tvm_storage_sync("shared")', "T.evaluate(0)")
    for scope in ("shared", "local"):
        text = text.replace(f', scope="{scope}"', "")
    return text


class TvmKernel:
    """A program compiled by TVM for the CPU. `source` is the TVMScript it was built from; `key` and
    `library` name its entry in the kernel cache (None when it has none)."""

    backend = "tvm"

    def __init__(self, program: Program, options: Mapping[str, Any], target: Any = None):
        self.program = program
        self.options = check_options(options)
        self.target = target or option_target(self.options)
        self.cuda = is_cuda(self.target)
        lowered = lower(program, resolve_options(self.options, self.target), cpu=not self.cuda)
        self.source = lowered.source
        self.arg_names = lowered.arg_names
        self._buffers = lowered.buffers
        self.key: str | None = None
        self.library: str | None = None
        _dump(program.name, self.source)
        try:
            func = tvm.script.from_source(self.source)
        except Exception as e:  # a lowering bug: show the generated text with the parser's message
            raise BackendError(f"tvm backend produced TVMScript that does not parse: {e}\n{self.source}") from None
        self._module: Any = tvm.IRModule({"main": func})
        # CUDA: no common-subexpression pass, which would pass the device function values computed on the host
        # (ceil(N / BN), ...) and keep it from being launched without TVM's host code (`cuda_launch`)
        with tvm.transform.PassContext(config={"tirx.disable_cse_tir": True} if self.cuda else {}):
            self.executable = tvm.compile(self._module, target=self.target)
        if self.cuda and len(self.executable.mod.imports) != 1:  # TVM builds an unbound function host-only, silently
            raise BackendError(f"tvm backend: {program.name} built for CUDA has no device module")
        if self.cuda:  # the device module holds CUDA C, compiled when it is loaded (on a GPU)
            use_nvrtc_for_tvm()
        if uses_stand_in(self.source):  # bf16 dots: the stand-in calls become vdpbf16ps (bf16_dot.py)
            self.executable = patch_module(self.executable)
        self._function: Any = None  # JIT-compiled on first use, unless `use_library` loads an export first
        self._loaded = False  # True: a disk-cache hit, nothing was built in this process
        self._from_file = False  # True: `executable` is a loaded library (`library`), so exports copy it

    @classmethod
    def from_library(
        cls, program: Program, options: Mapping[str, Any], target: Any, library: str, record: Mapping[str, Any]
    ) -> TvmKernel:
        """A kernel loaded from a cached library (no lowering, no build); `record` is its cache record."""
        self = cls.__new__(cls)
        self.program = program
        self.options = check_options(options)
        self.source = str(record["source"])
        self.arg_names = tuple(record["arg_names"])
        self._buffers = ()  # a CPU kernel (CUDA builds are not cached)
        self.key = str(record["key"])
        self.library = library
        _dump(program.name, self.source)
        if _AMX_OP in self.source and not amx_permitted():  # the cache's key covers the ISA, not the OS grant
            raise BackendError(f"cached kernel {program.name} runs AMX tiles, which Linux did not grant this process")
        self.target = target
        self.cuda = False
        self._module = None
        self.executable = load_module(library)
        self._function = self.executable["main"]
        self._loaded = self._from_file = True
        return self

    @property
    def cuda_source(self) -> str:
        """The CUDA C TVM generated (a kernel built for a CUDA target)."""
        if not self.cuda:
            raise BackendError(f"kernel {self.program.name} was built for {self.target}, not CUDA")
        return str(self.executable.mod.imports[0].inspect_source("cuda"))

    def cubin(self) -> bytes:
        """`cuda_source` compiled for the kernel's arch by NVRTC (`nvrtc_cubin`): the GPU compiler's verdict on
        the generated code, on a machine without a GPU."""
        return nvrtc_cubin(self.cuda_source, self.options["arch"], self.program.name)

    def simulate(self) -> TvmKernel:
        """This CUDA kernel's code run on the CPU (`cpu_simulation_source`): the thread-level index arithmetic,
        guards and staging checked against the reference interpreter on a machine without a GPU."""
        if not self.cuda:
            raise BackendError(f"kernel {self.program.name} is a CPU kernel; simulate() runs CUDA kernels on the CPU")
        done: TvmKernel | None = getattr(self, "_simulated", None)
        if done is not None:
            return done
        sim = TvmKernel.__new__(TvmKernel)
        self._simulated = sim
        sim.program, sim.options, sim.arg_names = self.program, self.options, self.arg_names
        sim.target, sim.cuda, sim.key, sim.library = cpu_target(), False, None, None
        sim.source = cpu_simulation_source(self.source)
        sim._module = tvm.IRModule({"main": tvm.script.from_source(sim.source)})
        sim.executable = tvm.compile(sim._module, target=sim.target)
        sim._function, sim._loaded, sim._from_file = None, False, False
        return sim

    @property
    def function(self) -> Any:
        """The callable kernel: from the loaded library, else JIT-compiled from the executable (once; a CUDA
        kernel only where CUDA is)."""
        if self._function is None:
            if self.cuda:
                _need_cuda(self.program.name)
                if not tvm_has_cuda_runtime():  # the PyPI wheel: the device function launched by the driver
                    self._function = self.driver_launch()
                    return self._function
            self._function = self.executable["main"]
        return self._function

    def driver_launch(self) -> Any:
        """This CUDA kernel as a `cuda_launch.DriverLaunch`: NVRTC's cubin of `cuda_source` for the device's
        arch, launched through the CUDA driver with one block per grid program (what runs it where TVM has no
        CUDA runtime; built without touching a GPU, launched on the first call)."""
        from lowbit.codegen.tvm.cuda_launch import DriverLaunch, device_entry

        if not self.cuda:
            raise BackendError(f"kernel {self.program.name} is a CPU kernel; driver_launch() runs CUDA kernels")
        entry = device_entry(self.cuda_source, self.arg_names, self._buffers)
        blocks, names = compile_expr(sympy.Mul(*self.program.grid))  # the grid programs, flattened
        missing = [n for n in names if n not in self.arg_names]
        if missing:
            raise BackendError(f"kernel {self.program.name}: its grid depends on {missing}, which it does not take")
        where = [self.arg_names.index(n) for n in names]
        source, name = self.cuda_source, self.program.name
        return DriverLaunch(
            entry,
            lambda arch: nvrtc_cubin(source, arch, name),
            lambda args: int(blocks(*(int(args[i]) for i in where))),
            name,
        )

    def use_library(self, library: str) -> None:
        """Run this kernel from `library`, its own export (the disk cache's copy): LLVM's code generation ran
        once, for the export, instead of once more for the JIT (~0.35 s per kernel here)."""
        self.executable = load_module(library)
        self._function = self.executable["main"]
        self.library = library
        self._from_file = True

    @property
    def module(self) -> Any:
        """The TIR IRModule (parsed again from `source` for a kernel loaded from the cache)."""
        if self._module is None:
            self._module = tvm.IRModule({"main": tvm.script.from_source(self.source)})
        return self._module

    def export(self, path: str) -> None:
        """Write a shared library (or a .tar of objects) loadable with `load_module`. A kernel loaded from
        the cache copies its library (a .so only)."""
        if self.library is None or not self._from_file:
            self.executable.export_library(path)
            return
        if not path.endswith(".so"):
            raise BackendError(f"kernel {self.program.name} was loaded from {self.library}; it exports only as .so")
        shutil.copyfile(self.library, path)

    def __call__(self, args: Mapping[str, Any]) -> None:
        fn = self.function  # first: a CUDA kernel on a machine without CUDA says so before any copy
        call_args: list[Any] = []
        write_backs: list[Callable[[], None]] = []
        on_device: list[tuple[Any, Any]] = []
        params = {p.name: p for p in self.program.params}
        for name in self.arg_names:  # every argument converted (and checked) before the launch
            if name not in args:
                raise BackendError(f"kernel {self.program.name}: missing argument {name!r}")
            v = args[name]
            p = params[name]
            if not isinstance(p, TensorParam):  # scalar
                call_args.append(int(v))
                continue
            t, back = tensor_argument(self.program.name, p, v, name in self.program.stored)
            if back is not None:
                write_backs.append(back)
            if self.cuda and not t.is_cuda:  # host data for a CUDA kernel: a device copy, copied back after
                device = t.cuda()
                on_device.append((t, device))
                t = device
            call_args.append(t.reshape(-1))
        fn(*call_args)
        for host, device in on_device:
            host.copy_(device)
        for back in write_backs:
            back()

    def bind(self, fixed: Mapping[str, Any], dynamic: tuple[str, ...]) -> Any:
        """A positional caller for repeated launches: `call(*values)` runs the kernel with `fixed` (converted
        to flat torch tensors once, here) and `values` for the `dynamic` names (contiguous CPU torch tensors,
        flattened with a view, or ints), with none of `__call__`'s per-argument conversion and checks."""
        params = {p.name: p for p in self.program.params}
        missing = set(self.arg_names) - set(fixed) - set(dynamic)
        if missing:
            raise BackendError(f"kernel {self.program.name}: bind lacks arguments {sorted(missing)}")
        template: list[Any] = []
        for name in self.arg_names:
            if name in dynamic:
                template.append(None)
            elif not isinstance(p := params[name], TensorParam):
                template.append(int(fixed[name]))
            else:
                t, back = tensor_argument(self.program.name, p, fixed[name], output=True)
                if back is not None:
                    raise BackendError(
                        f"kernel {self.program.name}: bound argument {name} would be a converted copy; pass a "
                        f"contiguous array of {element(p)}"
                    )
                if self.cuda and not t.is_cuda:
                    t = t.cuda()
                template.append(t.reshape(-1))
        # (argument position, is a tensor) per dynamic name; -1 for a name the compiled kernel does not take
        where = [
            (self.arg_names.index(n), hasattr(params[n], "layout")) if n in self.arg_names else (-1, False)
            for n in dynamic
        ]
        fn, name = self.function, self.program.name
        slots = [(j, i) for j, (i, _) in enumerate(where) if i >= 0]  # (value position, argument position)

        def flat(*values: Any) -> None:
            """The launch with the dynamic tensors already flat (1-D views): `call` without its views, one torch
            op fewer per tensor (`lowbit.ops.linear`'s fast path)."""
            args = template.copy()
            for j, i in slots:
                args[i] = values[j]
            calls = RECORDING.calls
            if calls is not None:  # a step being recorded for replay (lowbit.runtime.executor's decode plans)
                calls.append((fn, tuple(args)))
                RECORDING.names.append(name)  # type: ignore[union-attr]
            fn(*args)

        def call(*values: Any) -> None:
            flat(*[v.view(-1) if tensor else v for (_, tensor), v in zip(where, values)])

        call.flat = flat  # type: ignore[attr-defined]
        # for a caller that keeps its own argument list (`lowbit.ops.x16.X16Plan`): the compiled function, the
        # arguments with the dynamic ones None, (value position, argument position) per dynamic name, the name
        call.parts = (fn, template, slots, name)  # type: ignore[attr-defined]
        return call


class _Recording(threading.local):
    """`RECORDING.calls`: a list on the thread recording a decode step; every bound launch appends (function, its
    final arguments) to it, so the step can be replayed as plain calls on the same buffers, and its kernel's
    name to `RECORDING.names` (for profiles). None on every other thread and time: class-level defaults, so a
    launch reads them without the AttributeError that `getattr(local, name, None)` raises and catches on a
    thread that never set them (0.41 us a launch, against ~2.7 us for a whole small TVM call)."""

    calls: list[tuple[Any, tuple[Any, ...]]] | None = None
    names: list[str] | None = None


RECORDING = _Recording()


def _include_dir(package: str) -> str | None:
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        return None
    path = os.path.join(next(iter(spec.submodule_search_locations)), "include")
    return path if os.path.isdir(path) else None


def nvrtc_resources(source: str, arch: str = "sm_90", name: str = "kernel") -> dict[str, int]:
    """What ptxas (inside NVRTC) reports for `source` on `arch`: registers per thread, static shared memory
    bytes, spill stores / loads bytes and the local stack frame, from its `-v` log (`nvrtc_cubin`)."""
    log = _nvrtc(source, arch, name, verbose=True)[1]
    out = {}
    for key, pattern in (
        ("registers", r"Used (\d+) registers"),
        ("shared_bytes", r"(\d+) bytes smem"),
        ("spill_stores", r"(\d+) bytes spill stores"),
        ("spill_loads", r"(\d+) bytes spill loads"),
        ("stack_bytes", r"(\d+) bytes stack frame"),
    ):
        out[key] = max((int(v) for v in re.findall(pattern, log)), default=0)
    return out


def nvrtc_cubin(source: str, arch: str = "sm_90", name: str = "kernel") -> bytes:
    """Compile CUDA C `source` to a cubin for `arch` with NVRTC, no GPU or CUDA toolkit needed: the headers
    come from the nvidia-cuda-runtime / -cccl wheels (`pip install 'lowbit[cuda-aot]'`). Written here rather
    than through `tvm.support.nvcc`, which looks for a toolkit directory (CUDA_PATH or nvcc). IEEE division,
    square roots and denormals (no --use_fast_math), as the reference interpreter computes."""
    return _nvrtc(source, arch, name, verbose=False)[0]


def _nvrtc(source: str, arch: str, name: str, verbose: bool) -> tuple[bytes, str]:
    """(cubin, NVRTC's program log); `verbose` adds ptxas's resource lines to the log."""
    try:
        from cuda.bindings import nvrtc
    except ImportError:
        raise BackendError(
            "compiling CUDA without a toolkit needs NVRTC: pip install 'lowbit[cuda-aot]' (cuda-bindings and the "
            "nvidia-cuda-nvrtc / -runtime / -cccl wheels)"
        ) from None
    includes = [_include_dir("nvidia.cuda_cccl"), _include_dir("nvidia.cuda_runtime")]
    if None in includes:
        raise BackendError("NVRTC needs the CUDA headers: pip install 'lowbit[cuda-aot]'")
    opts = [f"--gpu-architecture={arch}", "-default-device", "--std=c++17", *(f"-I{d}" for d in includes)]
    if verbose:
        opts.append("--ptxas-options=-v")
    _, prog = nvrtc.nvrtcCreateProgram(source.encode(), f"{name}.cu".encode(), 0, [], [])
    try:
        (result,) = nvrtc.nvrtcCompileProgram(prog, len(opts), [o.encode() for o in opts])
        # NVRTC writes into the buffers it is given: fresh bytearrays, never `b" " * size`, which for a
        # 1-byte log (just the NUL) is CPython's shared b" " object: NVRTC then turned every b" " of the
        # process into b"\x00" (safetensors headers padded with NULs failed to parse later in the process)
        _, size = nvrtc.nvrtcGetProgramLogSize(prog)
        log = bytearray(size)
        nvrtc.nvrtcGetProgramLog(prog, log)
        text = bytes(log).rstrip(b"\x00").decode(errors="replace")
        if result != nvrtc.nvrtcResult.NVRTC_SUCCESS:
            errors = [ln for ln in text.splitlines() if "error" in ln]
            raise BackendError(f"NVRTC rejected the CUDA source of {name} for {arch}: " + " | ".join(errors[:5]))
        _, size = nvrtc.nvrtcGetCUBINSize(prog)
        cubin = bytearray(size)
        nvrtc.nvrtcGetCUBIN(prog, cubin)
        return bytes(cubin), text
    finally:
        nvrtc.nvrtcDestroyProgram(prog)


@functools.cache
def use_nvrtc_for_tvm() -> bool:
    """Point TVM's `tvm_callback_cuda_compile` (what its CUDA runtime calls to turn a module's CUDA C into a
    binary when it loads it) at `nvrtc_cubin`, for the arch of this process's GPU (sm_90 without one): TVM's
    own NVRTC path looks for a CUDA toolkit directory, the wheels of lowbit[cuda-aot] need none. False, and
    TVM's callback kept, when NVRTC is not installed."""
    if importlib.util.find_spec("cuda") is None or _include_dir("nvidia.cuda_cccl") is None:
        return False
    import tvm_ffi

    arch = "sm_90"
    try:
        import torch

        if torch.cuda.is_available():
            major, minor = torch.cuda.get_device_capability()
            arch = f"sm_{major}{minor}"
    except ImportError:
        pass

    def compile_for_device(code: str, *_: Any) -> bytearray:
        return bytearray(nvrtc_cubin(code, arch, "tvm_kernels"))

    tvm_ffi.register_global_func("tvm_callback_cuda_compile", compile_for_device, override=True)
    return True


def tvm_has_cuda_runtime() -> bool:
    """Whether this TVM build can load and launch CUDA modules. The apache-tvm wheel from PyPI is built
    without CUDA (`tvm.runtime.enabled("cuda")` is False; seen with 0.27 on an H200 machine, 2026-11-23): its
    CUDA kernels build and compile (`cuda_source`, `cubin()`), but only a TVM built with USE_CUDA runs them."""
    enabled = getattr(getattr(tvm, "runtime", None), "enabled", None)  # None: not TVM (a stray `tvm` folder)
    return bool(enabled is not None and enabled("cuda"))


def driver_launch_available() -> bool:
    """Whether a CUDA kernel can run without TVM's CUDA runtime (`TvmKernel.driver_launch`): cuda-bindings and
    the NVRTC headers of lowbit[cuda-aot] are installed (the GPU and its driver are checked at the launch)."""
    return importlib.util.find_spec("cuda") is not None and _include_dir("nvidia.cuda_cccl") is not None


def _need_cuda(name: str) -> None:
    import torch

    if not torch.cuda.is_available():
        raise BackendError(
            f"kernel {name} was built for CUDA and this machine has no CUDA device; run it on a GPU, or call "
            "kernel.simulate() to run its code on the CPU"
        )
    if not tvm_has_cuda_runtime() and not driver_launch_available():
        raise BackendError(
            f"kernel {name} was built for CUDA, but this TVM build has no CUDA runtime (the apache-tvm wheel is "
            "built without USE_CUDA) and NVRTC / cuda-bindings are not installed to launch it through the driver: "
            "pip install 'lowbit[cuda-aot]', install a TVM built with CUDA, use backend='triton' on the GPU, or "
            "kernel.simulate() / kernel.cubin() to check its code without one"
        )


def load_module(path: str) -> Any:
    """Reload an exported kernel library (`TvmKernel.export`); call its `["main"]` with torch tensors."""
    return tvm.runtime.load_module(path)


def dump_path(directory: str, name: str, source: str) -> str:
    """Where `LOWBIT_DUMP_TVM` writes a kernel's TVMScript: `<name>.<hash>.tvm.py`, the hash (12 hex digits of
    the source's sha256) telling specialisations of one kernel apart (fp16 and fp32 softmax overwrote each other
    as `<name>.tvm.py`), as the Triton dumps are named by theirs."""
    digest = hashlib.sha256(source.encode()).hexdigest()[:12]
    return os.path.join(directory, f"{name}.{digest}.tvm.py")


def _dump(name: str, source: str) -> None:
    dump = os.environ.get("LOWBIT_DUMP_TVM")
    if dump:
        os.makedirs(dump, exist_ok=True)
        with open(dump_path(dump, name, source), "w") as f:
            f.write(source)


# ---- the disk cache (lowbit.codegen.kernel_cache) --------------------------------------------------------

_SOURCE_PACKAGES = ("codegen/tvm", "ir", "dtypes")  # what the generated code depends on besides the program


@functools.cache
def _toolchain() -> dict[str, str | None]:
    from lowbit.codegen.tune.cache import toolchain_versions

    versions = toolchain_versions()
    return {k: versions.get(k) for k in ("lowbit", "tvm")}


def kernel_key_parts(program: Program, options: Mapping[str, Any], target: Any) -> dict[str, Any]:
    """What a compiled TVM kernel depends on: the program as traced (before the pass pipeline, so a hit
    skips the passes), the (complete) options, the code generator (CODEGEN_VERSION and the source files
    of codegen/tvm, ir -- the passes included -- and dtypes), TVM and lowbit versions, the target (LLVM
    mcpu and cores) and the CPU's ISA flags."""
    from lowbit.artifact.fingerprint import isa_flags
    from lowbit.codegen.tune.cache import CODEGEN_VERSION

    return {
        "backend": "tvm",
        "program_sha256": hashlib.sha256(str(program).encode()).hexdigest(),
        "options": dict(sorted(check_options(options).items())),
        "codegen_version": CODEGEN_VERSION,
        "codegen_source": kernel_cache.source_digest(*_SOURCE_PACKAGES),
        "toolchain": _toolchain(),
        "target": str(target),
        "isa": list(isa_flags()),
    }


def compile_tvm(program: Program, options: Mapping[str, Any], target: Any = None) -> TvmKernel:
    """Load `program` (as traced) from the kernel cache when an entry with its key is there; otherwise run
    the pass pipeline, build it for `target` (default: this CPU) and save it to the cache. A cached library
    that fails to load is rebuilt (and overwritten) with a warning. Every kernel gets its key and is noted
    in `kernel_cache.compiled_kernels()` (so `export_kernels` works with the disk cache off too). A kernel
    loaded from the cache keeps `program` as given (its parameters are those of the optimized one)."""
    from lowbit.ir.passes import run_pipeline

    target = target or option_target(options)
    if is_cuda(target):  # not in the disk cache: its libraries load only where CUDA does
        return TvmKernel(run_pipeline(program), options, target)
    parts = kernel_key_parts(program, options, target)
    key = kernel_cache.kernel_key(parts)
    found = kernel_cache.lookup(key)  # None when the disk cache is off (LOWBIT_KERNEL_CACHE=0)
    if found is not None:
        try:
            kernel = TvmKernel.from_library(program, options, target, str(found.library), found.record)
        except Exception as e:  # another machine's library, a dlopen failure: rebuild
            warnings.warn(
                f"kernel {program.name}: cached library {found.library} does not load "
                f"({type(e).__name__}: {str(e).strip()[:200]}); rebuilding it",
                kernel_cache.KernelCacheWarning,
                stacklevel=2,
            )
        else:
            kernel_cache.note_compiled(key, found.record, found.library, kernel.export)
            return kernel
    kernel = TvmKernel(run_pipeline(program), options, target)
    record = {
        "backend": "tvm",
        "name": program.name,
        "program": str(program),
        "options": kernel.options,
        "target": str(kernel.target),
        "arg_names": list(kernel.arg_names),
        "source": kernel.source,
        "parts": parts,
    }
    saved = kernel_cache.store(key, record, kernel.export)
    kernel.key = key
    if saved is None:
        private = _private_library(key, kernel.export)
        if private is not None:
            kernel.use_library(private)
        kernel_cache.note_compiled(key, {**record, "key": key}, None, kernel.export)
    else:
        kernel.use_library(str(saved.library))
        kernel_cache.note_compiled(key, saved.record, saved.library, kernel.export)
    return kernel


_PRIVATE: list[Any] = []  # the process's tempfile.TemporaryDirectory for `_private_library` (removed at exit)


def _private_library(key: str, write_library: Callable[[str], None]) -> str | None:
    """A kernel the disk cache does not keep (LOWBIT_KERNEL_CACHE=0, an unwritable directory) still runs from a
    shared library of its own export, in a temporary directory of this process, not from TVM's in-memory JIT of
    the same module: that ran the AMX GEMV 1.5x slower (4096² int3 bf16 x M = 16, hot, one process, the same
    kernel alternating: 0.72-0.76 against 0.48 ms; int4 M = 1 the same either way), and the export's LLVM code
    generation replaces the JIT's rather than adding to it. None (the JIT then) when the export fails."""
    import tempfile

    try:
        if not _PRIVATE:
            _PRIVATE.append(tempfile.TemporaryDirectory(prefix="lowbit-kernels-"))
        path = os.path.join(_PRIVATE[0].name, f"{key}.so")
        if not os.path.exists(path):
            write_library(path)
        return path
    except Exception as e:  # no compiler or no temporary space: the in-memory module still runs
        warnings.warn(
            f"kernel {key[:12]}: no private library ({type(e).__name__}: {e}); running TVM's JIT", stacklevel=3
        )
        return None


def regenerate(record: Mapping[str, Any]) -> TvmKernel:
    """Build a kernel again for this machine from its cache record (`<key>.json`): the program text is parsed
    and compiled with the recorded options (through the cache, so the result is saved under this machine's
    key)."""
    from lowbit.ir.parser import parse

    if record.get("backend") != "tvm":
        raise BackendError(f"regenerate: record of backend {record.get('backend')!r}, expected 'tvm'")
    return compile_tvm(parse(str(record["program"])), dict(record["options"]))


__all__ = [
    "TvmKernel",
    "compile_tvm",
    "cpu_simulation_source",
    "cpu_target",
    "cuda_target",
    "is_cuda",
    "kernel_key_parts",
    "load_module",
    "nvrtc_cubin",
    "nvrtc_resources",
    "option_target",
    "regenerate",
    "resolve_options",
    "use_nvrtc_for_tvm",
]
