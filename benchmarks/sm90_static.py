"""Static sm_90 report of the GPU GEMM kernels as a default run would launch them, made without a GPU.

    python benchmarks/sm90_static.py            # the H200 defaults (132 SMs) at the bench's GPU layers
    python benchmarks/sm90_static.py --tvm      # the TVM backend's CUDA lowering (NVRTC's ptxas) instead

For each case, the config `lowbit.kernels.spaces.gpu_default` picks is compiled for sm_90 with the JIT's
aligned specialization (`compile_sm90(aligned=True)`). The report gives ptxas's registers and spill bytes,
and counts the PTX's asynchronous copies by size and its tensor-core instructions. These are facts about the
code, not timings: no GPU runs here. `--tvm`: the same cases through the TVM backend's CUDA lowering with
`spaces.tvm_cuda_default` tiles, compiled by NVRTC (`lowbit[cuda-aot]`): registers, static shared memory, spills.
"""

from __future__ import annotations

import collections
import re
import subprocess
import sys
import tempfile
from pathlib import Path

CASES = (  # (kernel, M, N, weight dtype); K = 8192, group 128, fp16 x
    ("quantized_gemv", 1, 8192, "int4"),
    ("quantized_gemv", 16, 28672, "int4"),
    ("quantized_gemv", 1, 8192, "int3"),
    ("quantized_gemm", 64, 8192, "int4"),
    ("quantized_gemm", 256, 8192, "int4"),
    ("quantized_gemm", 4096, 28672, "int4"),
    ("w4a8_gemm_per_group", 1024, 8192, "uint4"),
    ("w4a8_gemm_per_group", 4096, 28672, "uint4"),
)
SMS = 132  # H100 / H200


def ptxas() -> Path:
    """The newest ptxas in the Triton wheel (the PTX Triton emits can be newer than the plain `ptxas`)."""
    import triton

    bin_dir = Path(triton.__file__).parent / "backends" / "nvidia" / "bin"
    for name in ("ptxas-blackwell", "ptxas"):
        if (bin_dir / name).exists():
            return bin_dir / name
    raise SystemExit(f"no ptxas under {bin_dir}; install the triton wheel (it ships one)")


def report(kernel: str, m: int, n: int, wdtype: str) -> str:
    import lowbit.codegen.triton as triton_backend
    import lowbit.kernels as K
    from lowbit.codegen.backend import compile_program
    from lowbit.kernels.spaces import gpu_default

    problem = {"M": m, "N": n, "K": 8192, "G": 128, "wdtype": wdtype, "adtype": "float16"}
    cfg = gpu_default(kernel, problem, SMS)
    assert cfg is not None
    fixed = {"wdtype": wdtype, "G": 128} | ({} if kernel.startswith("w4a8") else {"adtype": "float16"})
    program = getattr(K, kernel).trace(**fixed, **cfg.constant_dict)
    ptx = triton_backend.compile_sm90(compile_program(program, "triton", cfg.option_dict), aligned=True)["ptx"]
    with tempfile.NamedTemporaryFile("w", suffix=".ptx", delete=False) as f:
        f.write(ptx)
    info = subprocess.run([ptxas(), "-v", "-arch=sm_90a", f.name, "-o", "/dev/null"], capture_output=True, text=True)
    Path(f.name).unlink()
    regs = re.search(r"Used (\d+) registers", info.stderr)
    spills = re.search(r"(\d+) bytes spill stores", info.stderr)
    copies = collections.Counter(
        re.findall(r"cp\.async\.c[ag]\.shared\.global(?:\.\S+)? \[[^\]]*\], \[[^\]]*\], (\w+)", ptx)
    )
    mma = collections.Counter(re.findall(r"\b((?:wgmma\.mma_async|mma\.sync)\.[\w.]+)", ptx))
    tiles = " ".join(f"{k}={v}" for k, v in cfg.constant_dict.items())
    opts = " ".join(f"{k}={v}" for k, v in cfg.option_dict.items())
    return (
        f"{kernel:20s} M={m:<5} N={n:<6} {wdtype:6s} | {tiles} {opts} | regs {regs and regs.group(1)} "
        f"spill {spills and spills.group(1)} B | cp.async {dict(copies)} | {dict(mma)}"
    )


def report_tvm(kernel: str, m: int, n: int, wdtype: str) -> str:
    import lowbit.kernels as K
    from lowbit.codegen.backend import compile_program
    from lowbit.codegen.tvm.runtime import nvrtc_resources
    from lowbit.kernels.spaces import tvm_cuda_default

    problem = {"M": m, "N": n, "K": 8192, "G": 128, "wdtype": wdtype, "adtype": "float16"}
    cfg = tvm_cuda_default(kernel, problem)
    fixed = {"wdtype": wdtype, "G": 128} | ({} if kernel.startswith("w4a8") else {"adtype": "float16"})
    kernel_obj = compile_program(getattr(K, kernel).trace(**fixed, **cfg.constant_dict), "tvm", cfg.option_dict)
    res = nvrtc_resources(kernel_obj.cuda_source, "sm_90", kernel)
    tiles = " ".join(f"{k}={v}" for k, v in cfg.constant_dict.items())
    return (
        f"{kernel:20s} M={m:<5} N={n:<6} {wdtype:6s} | {tiles} threads 128 | regs {res['registers']} smem "
        f"{res['shared_bytes']} B | spill {res['spill_stores']} / {res['spill_loads']} B | stack {res['stack_bytes']} B"
    )


if __name__ == "__main__":
    run = report_tvm if "--tvm" in sys.argv[1:] else report
    for case in CASES:
        print(run(*case), flush=True)
    sys.exit(0)
