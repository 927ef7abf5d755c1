"""Launch a TVM-built CUDA kernel through the CUDA driver, for TVM builds without a CUDA runtime.

The apache-tvm wheel from PyPI is built without USE_CUDA: it lowers a program to CUDA C, but it cannot load or
launch the result (`runtime.tvm_has_cuda_runtime`). The device function TVM generates is plain CUDA C whose
parameters are the program's tensors (as pointers) and its integer sizes: the CUDA lowering declares buffers
without element offsets (`lower.py`) and the build runs with TVM's common-subexpression pass off (which would
otherwise hand the kernel host-computed values such as ceil(N / BN)). So it can be launched without TVM's host
code: NVRTC compiles the CUDA C for the device's arch (`runtime.nvrtc_cubin`), the driver loads the cubin
(cuda-bindings' `cuModuleLoadData`) and `cuLaunchKernel` starts one block per grid program on torch's current
stream, `threads` threads each, static shared memory only.

    entry = device_entry(cuda_source, arg_names, buffers)   # the kernel's symbol and its parameters, checked
    launch = DriverLaunch(entry, cubin_for_arch, blocks, name)
    launch(*args)   # args in `arg_names` order: CUDA torch tensors (flat) and ints, as TVM's function takes

Written here, not taken from a library: TVM's own launcher is the CUDA runtime the wheel lacks, and Triton's
launcher is generated for Triton's calling convention.
"""

from __future__ import annotations

import ctypes
import re
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from lowbit.codegen.backend import BackendError

# the definition (with its body), not the forward declaration TVM also emits
_SIGNATURE = re.compile(r'extern "C" __global__ void __launch_bounds__\((\d+)\) (\w+)\(([^)]*)\)\s*\{')
# C parameter types of the device function: pointers (any element type) and the integer sizes
_SCALAR_TYPES = {
    "int": ctypes.c_int32,
    "int32_t": ctypes.c_int32,
    "int64_t": ctypes.c_int64,
    "long long": ctypes.c_int64,
}


@dataclass(frozen=True)
class DeviceParam:
    """One parameter of the device function: the program argument it takes (position in `arg_names`) and its C
    type: a pointer, or an integer of `ctype`."""

    c_name: str
    arg: str
    position: int
    ctype: Any  # None: a device pointer

    @property
    def is_pointer(self) -> bool:
        return self.ctype is None


@dataclass(frozen=True)
class DeviceEntry:
    """The device function of a TVM CUDA build: its symbol, the block size it was built for and its parameters."""

    symbol: str
    threads: int
    params: tuple[DeviceParam, ...]


def device_entry(cuda_source: str, arg_names: Sequence[str], buffers: Sequence[tuple[str, str]]) -> DeviceEntry:
    """Parse the one `__global__` function of `cuda_source` and map each parameter to the program argument it
    takes: a pointer `<buffer>_ptr` to the tensor of that TIR buffer (`buffers`: (buffer, tensor) pairs), an
    integer to the size of that name. A parameter that is neither (a value TVM's host code would compute) is a
    BackendError naming it: such a kernel cannot be launched without TVM's CUDA runtime."""
    found = _SIGNATURE.findall(cuda_source)
    if len(found) != 1:
        raise BackendError(
            f"tvm backend (cuda): expected one __global__ function in the CUDA source, found {len(found)}"
        )
    threads, symbol, text = found[0]
    tensor_of = dict(buffers)
    params = []
    for raw in (p.strip() for p in text.split(",") if p.strip()):
        m = re.fullmatch(r"(.+?)\s*(\*?)\s*(?:__restrict__\s+)?(\w+)", raw)
        if m is None:
            raise BackendError(f"tvm backend (cuda): cannot read the device parameter {raw!r}")
        ctype_name, star, c_name = m.group(1).strip(), m.group(2), m.group(3)
        if star or ctype_name.endswith("*"):
            arg = tensor_of.get(c_name[: -len("_ptr")] if c_name.endswith("_ptr") else c_name)
            ctype = None
        else:
            arg, ctype = c_name, _SCALAR_TYPES.get(ctype_name)
            if ctype is None:
                raise BackendError(
                    f"tvm backend (cuda): device parameter {raw!r} has a type the launcher does not pass"
                )
        if arg is None or arg not in arg_names:
            raise BackendError(
                f"tvm backend (cuda): device parameter {raw!r} is not one of the program's arguments "
                f"{list(arg_names)}: TVM's host code computes it, so only a TVM built with CUDA can launch this kernel"
            )
        params.append(DeviceParam(c_name, arg, list(arg_names).index(arg), ctype))
    return DeviceEntry(symbol, int(threads), tuple(params))


def _driver() -> Any:
    try:
        from cuda.bindings import driver
    except ImportError:
        raise BackendError(
            "launching a TVM CUDA kernel without TVM's CUDA runtime needs cuda-bindings and NVRTC: "
            "pip install 'lowbit[cuda-aot]'; or use backend='triton' on the GPU"
        ) from None
    return driver


def _check(result: Any, what: str) -> Any:
    """The value of a cuda-bindings call (a tuple led by its CUresult); a failure as a BackendError."""
    err, *rest = result if isinstance(result, tuple) else (result,)
    if int(err) != 0:
        driver = _driver()
        name = driver.cuGetErrorName(err)[1]
        raise BackendError(f"CUDA driver: {what} failed: {name.decode() if isinstance(name, bytes) else name}")
    return rest[0] if len(rest) == 1 else tuple(rest)


class DriverLaunch:
    """A callable like TVM's compiled `main`: args in `arg_names` order (flat CUDA torch tensors, ints). The
    module is compiled (`cubin(arch)`) and loaded once per device, on the first call there; `blocks(args)` is
    the grid size (the product of the program's grid extents at those sizes)."""

    def __init__(
        self, entry: DeviceEntry, cubin: Callable[[str], bytes], blocks: Callable[[Sequence[Any]], int], name: str
    ):
        self.entry, self.cubin, self.blocks, self.name = entry, cubin, blocks, name
        self._functions: dict[int, Any] = {}  # device index -> CUfunction
        self._lock = threading.Lock()

    def function(self, device: int) -> Any:
        fn = self._functions.get(device)
        if fn is not None:
            return fn
        import torch

        with self._lock:
            if device not in self._functions:
                driver = _driver()
                major, minor = torch.cuda.get_device_capability(device)
                image = self.cubin(f"sm_{major}{minor}")
                with torch.cuda.device(device):
                    torch.cuda.current_stream(device)  # the runtime has made torch's (primary) context current
                    _check(driver.cuInit(0), "cuInit")
                    ctx = _check(
                        driver.cuDevicePrimaryCtxRetain(_check(driver.cuDeviceGet(device), "cuDeviceGet")),
                        "cuDevicePrimaryCtxRetain",
                    )
                    _check(driver.cuCtxSetCurrent(ctx), "cuCtxSetCurrent")
                    module = _check(driver.cuModuleLoadData(image), f"loading the cubin of {self.name}")
                    self._functions[device] = _check(
                        driver.cuModuleGetFunction(module, self.entry.symbol.encode()), f"finding {self.entry.symbol}"
                    )
        return self._functions[device]

    def parameters(self, args: Sequence[Any]) -> tuple[Any, list[Any], int]:
        """(the ctypes array of parameter addresses, the storage it points into, the CUDA device of the
        tensors); a host tensor, tensors on two devices or an int out of its C type's range are BackendErrors."""
        storage: list[Any] = []
        device = None
        for p in self.entry.params:
            v = args[p.position]
            if p.is_pointer:
                if not getattr(v, "is_cuda", False):
                    raise BackendError(f"kernel {self.name}: argument {p.arg} must be a CUDA tensor for a CUDA kernel")
                if device is not None and v.device.index != device:
                    raise BackendError(
                        f"kernel {self.name}: argument {p.arg} is on cuda:{v.device.index}, others on cuda:{device}"
                    )
                device = v.device.index
                storage.append(ctypes.c_void_p(v.data_ptr()))
            else:
                c = p.ctype(int(v))
                if c.value != int(v):
                    raise BackendError(
                        f"kernel {self.name}: argument {p.arg}={v} does not fit the kernel's {p.ctype.__name__}"
                    )
                storage.append(c)
        addresses = (ctypes.c_void_p * max(len(storage), 1))(*[ctypes.addressof(s) for s in storage])
        return addresses, storage, 0 if device is None else device

    @staticmethod
    def stream(device: int) -> int:
        """The handle of torch's current stream on `device`: the launch is ordered with torch's own work."""
        import torch

        return int(torch.cuda.current_stream(device).cuda_stream)

    def __call__(self, *args: Any) -> None:
        addresses, _storage, device = self.parameters(args)  # _storage: what `addresses` point into, kept alive
        blocks = int(self.blocks(args))
        if blocks <= 0:
            return
        if blocks >= 2**31:
            raise BackendError(f"kernel {self.name}: {blocks} blocks, over CUDA's 2^31 - 1 in x; use larger tiles")
        fn = self.function(device)
        stream = self.stream(device)
        driver = _driver()
        _check(
            driver.cuLaunchKernel(
                fn, blocks, 1, 1, self.entry.threads, 1, 1, 0, stream, ctypes.addressof(addresses), 0
            ),
            f"launching {self.name}",
        )
