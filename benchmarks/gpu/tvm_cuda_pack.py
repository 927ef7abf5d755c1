"""TVM's CUDA kernels on a GPU machine that has no TVM: build them here, run them there.

The device machine's image has no apache-tvm, and its wheel (100 MB) does not fit in what a device call
carries. The CUDA kernels TVM builds need nothing of TVM to run, though: `cuda_launch.DriverLaunch` launches
the device function through the CUDA driver (cuda-bindings, in the device's image). So this script, run here,
builds a set of library kernels for CUDA with the TVM backend, compiles each to an sm_90 cubin with NVRTC,
runs the reference interpreter on the same inputs, and pickles (kernel name, device entry, grid size, cubin,
inputs, reference outputs) into one file; `--run` (on the device) launches each cubin on the GPU and compares
its outputs with the reference's.

    python benchmarks/gpu/tvm_cuda_pack.py --pack .tvmcuda/kernels.pkl     # here (TVM, NVRTC)
    python benchmarks/gpu/tvm_cuda_pack.py --run .tvmcuda/kernels.pkl      # on the GPU (torch, cuda-bindings)

The `--run` side imports no TVM: it loads `lowbit/codegen/tvm/cuda_launch.py` by path.
"""

from __future__ import annotations

import argparse
import copy
import importlib.util
import pickle
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[2]
BOUND = 2e-3  # fp16 outputs of fp32 accumulations: the same ops, another summation order


def _cases() -> list[tuple[str, object, dict, dict, dict]]:
    """(label, kernel, constants, compile options, arguments) of the kernels checked."""
    from lowbit.kernels.gemv import quantized_gemv
    from lowbit.kernels.quantized_gemm import quantized_gemm, random_problem
    from lowbit.kernels.w4a8 import random_problem as w4a8_random_problem
    from lowbit.kernels.w4a8 import w4a8_gemm_per_channel, w4a8_gemm_per_group

    cases = []
    for wdtype, zero_mode, g, m, n, k in [
        ("int4", "post", 128, 33, 70, 256),
        ("uint3", "pre", 64, 17, 96, 192),
        ("fp4_e2m1", "none", 32, 5, 64, 128),
        ("int8", "none", -1, 64, 128, 96),
    ]:
        p = random_problem(m, n, k, wdtype, G=g, zero_mode=zero_mode, seed=1, BM=16, BN=32, BK=32)
        cases.append((f"gemm {wdtype} {zero_mode} M={m}", quantized_gemm, p.constants, {"threads": 128}, dict(p.args)))
    p = random_problem(3, 70, 256, "int4", G=128, zero_mode="post", seed=2, BM=4, BN=32, BK=128)
    cases.append(("gemv int4 M=3", quantized_gemv, {**p.constants, "adtype": "float16"}, {}, dict(p.args)))
    for per_group, kernel, bk in ((True, w4a8_gemm_per_group, 128), (False, w4a8_gemm_per_channel, 64)):
        q = w4a8_random_problem(5, 40, 256, per_group=per_group, G=128, seed=3)
        label = f"w4a8 per {'group' if per_group else 'channel'}"
        cases.append((label, kernel, {**q.constants, "BM": 16, "BN": 32, "BK": bk}, {}, q.args))
    return cases


def pack(path: Path) -> None:
    from lowbit.codegen.backend import compile_program
    from lowbit.lang.kernel import infer_scalars

    records = []
    for label, kernel, consts, options, args in _cases():
        program = kernel.trace(**consts)
        args = {a: v for a, v in args.items() if a in {p.name for p in program.params}}
        ref = infer_scalars(program, copy.deepcopy(args))
        compile_program(program, "reference")(ref)
        built = compile_program(program, "tvm", {"target": "cuda", **options})
        launch = built.driver_launch()
        call = infer_scalars(program, copy.deepcopy(args))
        values = [call[a] for a in built.arg_names]
        outputs = sorted(program.stored)
        records.append(
            {
                "label": label,
                "name": built.program.name,
                "entry": launch.entry,
                "blocks": launch.blocks(values),
                "cubin": built.cubin(),
                "arg_names": built.arg_names,
                "args": {a: np.ascontiguousarray(v) if isinstance(v, np.ndarray) else int(v) for a, v in call.items()},
                "expected": {a: np.asarray(ref[a]) for a in outputs},
            }
        )
        print(f"packed {label:<28} {built.program.name:<24} blocks={records[-1]['blocks']} outputs={outputs}")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(pickle.dumps(records))
    print(f"{len(records)} kernels -> {path} ({path.stat().st_size / 1e6:.1f} MB)")


def run(path: Path) -> int:
    import torch

    spec = importlib.util.spec_from_file_location("cuda_launch", ROOT / "lowbit/codegen/tvm/cuda_launch.py")
    cuda_launch = importlib.util.module_from_spec(spec)
    # dataclasses look their module up in sys.modules, and the pickled records name it by its package path:
    # registered under both, unpickling never imports lowbit.codegen.tvm (which imports TVM)
    sys.modules["cuda_launch"] = sys.modules["lowbit.codegen.tvm.cuda_launch"] = cuda_launch
    spec.loader.exec_module(cuda_launch)
    failures = 0
    for r in pickle.loads(path.read_bytes()):
        major, minor = torch.cuda.get_device_capability()
        arch = f"sm_{major}{minor}"

        def cubin(want: str, r=r) -> bytes:
            if want != "sm_90":
                raise RuntimeError(f"packed for sm_90, this GPU is {want}")
            return r["cubin"]

        launch = cuda_launch.DriverLaunch(r["entry"], cubin, lambda _args, r=r: r["blocks"], r["name"])
        device = {}
        for a, v in r["args"].items():
            if isinstance(v, np.ndarray):
                t = torch.from_numpy(v.view(np.int16) if v.dtype.name == "bfloat16" else v).cuda()
                if a in r["expected"]:
                    t.view(torch.uint8).fill_(0xFF)  # poisoned: every output element must be written
                device[a] = t
        values = [device[a].reshape(-1) if a in device else r["args"][a] for a in r["arg_names"]]
        try:
            launch(*values)
            torch.cuda.synchronize()
        except Exception as e:  # a launch the driver refused: named, and the run goes on
            print(f"FAIL  {r['label']:<28} {arch}: {type(e).__name__}: {e}")
            failures += 1
            continue
        for a, want in r["expected"].items():
            got = device[a].cpu().numpy().astype(np.float64)
            ref = want.astype(np.float64)
            err = float(np.linalg.norm(got - ref) / max(np.linalg.norm(ref), 1e-30))
            ok = bool(np.isfinite(got).all() and err <= BOUND)
            failures += not ok
            print(f"{'ok  ' if ok else 'FAIL'}  {r['label']:<28} {a}: relative error {err:.2e} (bound {BOUND:g})")
    print(f"{failures} failure(s)")
    return 1 if failures else 0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    group = ap.add_mutually_exclusive_group(required=True)
    group.add_argument("--pack", type=Path, help="build the kernels here and write them to this file")
    group.add_argument("--run", type=Path, help="launch the packed kernels on this machine's GPU and check them")
    args = ap.parse_args()
    if args.pack:
        pack(args.pack)
        return 0
    return run(args.run)


if __name__ == "__main__":
    sys.exit(main())
