"""Compile, for sm_90 and without a GPU, every Triton kernel a GPU run of `lowbit bench gemm` builds: each
default dtype and the QoQ W4A8 weight, at each GPU M and layer, with the kernel `quantized_linear` picks, its
`kernels.spaces.gpu_default` config and the `inbounds` option ops adds. Run it under the Triton version the
GPU machine has (the device tool's H200: 3.6) to catch what only that version rejects before spending device
time: in session 30 every W4A8 kernel failed there (`tl.dot`'s int32 out_dtype) while the suite's Triton 3.9
compiled them.

    python benchmarks/gpu/aot_check.py          # prints one line per distinct kernel, exits 1 on a failure
"""

from __future__ import annotations

import sys

import numpy as np
import torch

import lowbit.codegen.triton as triton_backend
from lowbit.bench.gemm import CUDA_LAYERS, CUDA_MS, DTYPES
from lowbit.codegen.backend import compile_program
from lowbit.kernels.spaces import gpu_default
from lowbit.ops import quantize
from lowbit.ops.linear import inbounds_option, linear_problem

UNITS = 132  # H200 SMs
GROUP = 128


def main() -> int:
    import triton

    rng = np.random.default_rng(0)
    w = rng.standard_normal((256, 512)).astype(np.float32)  # the traced constants do not depend on N, K
    weights = {dt: quantize(w, dt, GROUP) for dt in DTYPES}
    weights["w4a8 uint4"] = quantize(w, "uint4", GROUP, scheme="w4a8_group")
    seen: dict[str, str] = {}
    failures = 0
    print(f"triton {triton.__version__}: sm_90 compile of the GPU bench's kernels")
    for name, qw in weights.items():
        for m in CUDA_MS:
            kernel, fixed, _ = linear_problem(qw, torch.zeros(m, 512, dtype=torch.float16), "triton")
            for n, k in CUDA_LAYERS:
                problem = {"M": m, "N": n, "K": k, "G": fixed.get("G", GROUP), "wdtype": fixed["wdtype"]}
                cfg = gpu_default(kernel.name, problem, UNITS)
                options = {**cfg.option_dict, **inbounds_option(cfg, {"M": m, "N": n, "K": k}, "triton")}
                compiled = compile_program(kernel.trace(**fixed, **cfg.constant_dict), "triton", options)
                if compiled.source in seen:
                    continue
                what = f"{name:<11} M={m:<5} {kernel.name:<22} {cfg}"
                try:
                    stages = triton_backend.compile_sm90(compiled, aligned=True)
                    ok = bool(stages["cubin"])
                    seen[compiled.source] = what
                    print(f"ok    {what}")
                except Exception as e:  # a compile the device's Triton rejects: named, and the run goes on
                    ok = False
                    print(f"FAIL  {what}: {type(e).__name__}: {str(e).splitlines()[0][:200]}")
                failures += not ok
    print(f"{len(seen)} kernels compiled, {failures} failed")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
