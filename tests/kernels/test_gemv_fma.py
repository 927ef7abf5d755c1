"""The dot-free GEMV (`quantized_gemv_fma`) equals float64 x @ dequant(W) on the reference interpreter, Triton
(interpreter, plus an sm_90 compile) and TVM (CPU, and its CUDA lowering run through `simulate`); its magic
decode is exact for every integer width; on sm_90 its main loop keeps the codes in registers.

Bounds (relative Frobenius error against float64): every ŵ = q·s is exact in fp32 and the products and sums
are fp32, so the error is the output rounding (fp16 ≤ 2^-11, bf16 ≤ 2^-8 per element) plus fp32 accumulation
(< 1e-5 here even where a post zero cancels): the GEMV's bounds (tests/kernels/test_gemv.py).
"""

from __future__ import annotations

import re

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from lowbit.codegen.backend import compile_program
from lowbit.dtypes import dtype
from lowbit.kernels.gemv_fma import MAGIC, magic_offset, quantized_gemv_fma
from lowbit.kernels.quantized_gemm import relative_error
from tests.codegen.backend_harness import FLOAT_DTYPES, INT_DTYPES
from tests.kernels.test_gemv import BOUND, check_backend, exact_reference, problem


def run_fma(M, N, K, wdtype, G, zero_mode, adtype="float16", seed=0, **tiles):
    p, consts = problem(M, N, K, wdtype, G, zero_mode, adtype, seed)
    quantized_gemv_fma.run(**p.args, **consts, **tiles)
    return p, exact_reference(p, K, G, zero_mode, wdtype)


@pytest.mark.parametrize("wdtype", INT_DTYPES + FLOAT_DTYPES)
def test_every_weight_dtype(wdtype):
    zero_mode = "post" if dtype(wdtype).is_integer else "none"
    p, ref = run_fma(3, 40, 128, wdtype, 32, zero_mode, BM=2, BN=16, BK=64)
    err = relative_error(p.args["y"], ref)
    assert err <= BOUND["float16"], f"{wdtype}: relative error {err}"


@settings(max_examples=30)
@given(
    M=st.integers(1, 9),
    N=st.integers(1, 70),
    kg=st.sampled_from([(64, 32), (128, 64), (256, 128), (96, 32), (128, -1), (100, -1)]),
    wdtype=st.sampled_from(INT_DTYPES + FLOAT_DTYPES),
    zero_mode=st.sampled_from(["none", "post", "pre"]),
    adtype=st.sampled_from(["float16", "bfloat16", "float32"]),
    tiles=st.sampled_from([dict(BM=1, BN=16, BK=32), dict(BM=2, BN=32, BK=64), dict(BM=4, BN=64, BK=128)]),
    fold=st.sampled_from([0, 4, 8]),
    seed=st.integers(0, 2**16),
)
def test_ragged_shapes_groups_zero_modes_activations(M, N, kg, wdtype, zero_mode, adtype, tiles, fold, seed):
    """Ragged M / N / K (masked loads and stores), BK below, at and above the group (sub-steps), per channel;
    the folded form (FOLD > 0: integer codes) within the same bounds."""
    K, G = kg
    p, ref = run_fma(M, N, K, wdtype, G, zero_mode, adtype, seed, **tiles, FOLD=fold)
    err = relative_error(p.args["y"], ref)
    assert err <= BOUND[adtype], f"{wdtype} G={G} {zero_mode} {adtype} {M}x{N}x{K} {tiles} FOLD={fold}: {err}"


@pytest.mark.parametrize("bits", range(1, 9))
@pytest.mark.parametrize("signed", [True, False])
def test_folded_decode_is_exact_for_every_code(bits, signed):
    """The folded form's decode: bits(u << (23 − b) | 1.0's bits) = 1 + u / 2^b, and 2^b·v − (2^b + offset) = q
    for every code q of the width, exactly."""
    from lowbit.kernels.gemv_fma import ONE

    name = f"{'' if signed else 'u'}int{bits}"
    offset = magic_offset(name)
    lo = -(1 << (bits - 1)) if signed else 0
    q = np.arange(lo, lo + (1 << bits), dtype=np.int64)
    u = (q + offset).astype(np.uint32)
    v = ((u << np.uint32(23 - bits)) | np.uint32(ONE)).view(np.float32)
    assert np.array_equal(v.astype(np.float64), 1 + u / 2.0**bits)
    assert np.array_equal(v.astype(np.float32) * np.float32(2**bits) - np.float32(2**bits + offset), q)


def test_fold_must_divide_the_k_step():
    with pytest.raises(ValueError, match="FOLD=3 must divide the K step 32"):
        quantized_gemv_fma.trace(wdtype="int4", G=32, BK=64, FOLD=3)


@pytest.mark.parametrize("bits", range(1, 9))
@pytest.mark.parametrize("signed", [True, False])
def test_magic_decode_is_exact_for_every_code(bits, signed):
    """bits(u | 2^23's bits) − (2^23 + offset) = q for every code q of the width (u = q + offset)."""
    name = f"{'' if signed else 'u'}int{bits}"
    offset = magic_offset(name)
    lo = -(1 << (bits - 1)) if signed else 0
    q = np.arange(lo, lo + (1 << bits), dtype=np.int64)
    u = (q + offset).astype(np.uint32)
    assert u.min() == 0 and u.max() == (1 << bits) - 1  # the field's bits, top bit flipped when signed
    v = (u | np.uint32(MAGIC)).view(np.float32).astype(np.float64) - (2**23 + offset)
    assert np.array_equal(v, q.astype(np.float64))
    assert magic_offset("fp4_e2m1") is None


CASES = [
    ("int4", 128, "none", "float16", 1),
    ("uint3", 32, "post", "float32", 3),
    ("int2", 64, "pre", "float16", 4),
    ("fp6_e3m2", 64, "none", "bfloat16", 2),
    ("uint8", -1, "post", "float16", 1),
    ("fp4_e2m1", -1, "none", "float32", 4),
]


@pytest.mark.parametrize("fold", [0, 4])
@pytest.mark.parametrize("backend", ["triton", "tvm", "tvm-cuda"])
@pytest.mark.parametrize("wdtype,G,zero_mode,adtype,M", CASES)
def test_backends_equal_the_oracle(backend, wdtype, G, zero_mode, adtype, M, fold):
    """Each backend against float64 (Triton's kernel also compiled for sm_90, with the GPU's codes_last), in
    both forms (FOLD 4: the folded one for integer codes)."""
    tiles = {"BM": min(M, 4), "BN": 16, "BK": 64, "FOLD": fold}
    check_backend(quantized_gemv_fma, backend, wdtype, G, zero_mode, adtype, M, tiles, 7)


@pytest.mark.parametrize("m,n", [(1, 8192), (1, 28672), (4, 8192), (4, 28672)])
def test_sm90_main_loop_keeps_codes_in_registers(m, n):
    """The GPU default's kernel (int4 g128, K = 8192, the issue's layers) on sm_90: in the K loop no layout
    conversion of a codes-sized tile (the tensor-core GEMV stages every code through shared memory; only x's
    [1, K step] rows may convert: at most one barrier pair per row and K sub-step; a 128-column tile with 4
    warps had 32 per step) and no integer-to-float conversion instruction (the magic decode)."""
    import lowbit.codegen.triton as triton_backend
    from lowbit.kernels.spaces import FMA, gpu_default

    problem_ = {"M": m, "N": n, "K": 8192, "G": 128, "wdtype": "int4", "adtype": "float16"}
    cfg = gpu_default(FMA, problem_, 132)
    program = quantized_gemv_fma.trace(wdtype="int4", G=128, adtype="float16", **cfg.constant_dict)
    options = {**cfg.option_dict, "inbounds": ("N", "K")}
    stages = triton_backend.compile_sm90(compile_program(program, "triton", options), aligned=True)
    ttgir = stages["ttgir"]
    loop = ttgir[ttgir.index("scf.for") : ttgir.index("scf.yield")]
    converts = re.findall(r"ttg\.convert_layout %\S+ : tensor<([0-9x]+)x\w+", loop)
    step = min(cfg.constant_dict["BK"], 128)
    assert all(shape.startswith("1x") for shape in converts), f"codes tiles converted in the loop: {converts}"
    assert f"{cfg.constant_dict['BN']}x{step}xf32" in loop  # the [BN, K step] accumulators are carried
    barriers = _ptx_loop(stages["ptx"]).count("bar.sync")
    allowed = 2 * cfg.constant_dict["BM"] * (cfg.constant_dict["BK"] // step)
    assert barriers <= allowed, f"{cfg}: {barriers} barriers per K step > {allowed} (shared-memory round trips)"
    assert "cvt.rn.f32.s32" not in stages["ptx"]  # no int -> float conversion: the magic decode


@pytest.mark.parametrize("m,n,bn", [(1, 8192, 64), (1, 28672, 64)])
def test_sm90_folded_loop_takes_fewer_instructions_and_registers(m, n, bn):
    """The folded form (FOLD 4, BN columns) against the GPU default (FOLD 0) of the kernel (int4 g128, K = 8192)
    on sm_90: fewer SASS instructions per code in the K loop (no FADD of the magic, no FMUL by the scale), no
    more registers, no spills, no integer-to-float conversion and no codes-sized layout conversion."""
    import lowbit.codegen.triton as triton_backend
    from lowbit.kernels.spaces import FMA, gpu_default

    problem_ = {"M": m, "N": n, "K": 8192, "G": 128, "wdtype": "int4", "adtype": "float16"}
    cfg = gpu_default(FMA, problem_, 132)
    threads = 32 * cfg.option_dict["num_warps"]
    facts = {}
    for fold, tiles in ((0, cfg.constant_dict), (4, {**cfg.constant_dict, "BN": bn, "FOLD": 4})):
        program = quantized_gemv_fma.trace(wdtype="int4", G=128, adtype="float16", **tiles)
        options = {**cfg.option_dict, "inbounds": ("N", "K")}
        stages = triton_backend.compile_sm90(compile_program(program, "triton", options), aligned=True)
        loop = stages["ttgir"][stages["ttgir"].index("scf.for") : stages["ttgir"].index("scf.yield")]
        shapes = re.findall(r"ttg\.convert_layout %\S+ : tensor<([0-9x]+)x\w+", loop)
        assert all(sum(d != "1" for d in shape.split("x")) <= 1 for shape in shapes), f"FOLD={fold}: {shapes}"
        assert "cvt.rn.f32.s32" not in stages["ptx"]
        codes = tiles["BN"] * tiles["BK"] / threads  # per thread and row, one iteration of the K loop
        facts[fold] = (_sass_loop_instructions(stages["cubin"]) / codes, _registers(stages["ptx"]))
    (i0, r0), (i4, r4) = facts[0], facts[4]
    assert i4 < 0.9 * i0, f"FOLD 4: {i4:.2f} SASS instructions a code in the K loop against {i0:.2f} for FOLD 0"
    assert r4 <= r0, f"FOLD 4: {r4} registers against {r0}"


def _sass_loop_instructions(cubin: bytes) -> int:
    """Instructions of the longest backward-branching block of the cubin's SASS (`nvdisasm`, shipped with Triton)."""
    import subprocess
    import tempfile
    from pathlib import Path

    import triton

    nvdisasm = Path(triton.__file__).parent / "backends" / "nvidia" / "bin" / "nvdisasm"
    with tempfile.NamedTemporaryFile(suffix=".cubin") as f:
        f.write(cubin)
        f.flush()
        text = subprocess.run([str(nvdisasm), "-c", f.name], capture_output=True, text=True, check=True).stdout
    lines = text.splitlines()
    labels = {m.group(1): i for i, line in enumerate(lines) if (m := re.match(r"\s*\.?(L_x_\d+):", line))}
    best = 0
    for i, line in enumerate(lines):
        m = re.search(r"BRA\s+.*?`?\(?\.?(L_x_\d+)", line)
        if m and labels.get(m.group(1), i) < i:
            body = lines[labels[m.group(1)] : i + 1]
            best = max(best, sum(1 for t in body if re.search(r"/\*[0-9a-f]{4}\*/\s+\S", t)))
    assert best, "no loop found in the SASS"
    return best


def _registers(ptx: str) -> int:
    """Registers per thread by ptxas (-v), spills refused."""
    import subprocess
    import tempfile
    from pathlib import Path

    import triton

    bin_dir = Path(triton.__file__).parent / "backends" / "nvidia" / "bin"
    ptxas = next(bin_dir / n for n in ("ptxas-blackwell", "ptxas") if (bin_dir / n).exists())
    with tempfile.NamedTemporaryFile("w", suffix=".ptx") as f:
        f.write(ptx)
        f.flush()
        info = subprocess.run(
            [str(ptxas), "-v", "-arch=sm_90a", f.name, "-o", "/dev/null"], capture_output=True, text=True
        )
    regs = re.search(r"Used (\d+) registers", info.stderr)
    spills = re.search(r"(\d+) bytes spill stores", info.stderr)
    assert regs, info.stderr[-500:]
    assert spills is None or spills.group(1) == "0", f"spills: {info.stderr[-300:]}"
    return int(regs.group(1))


def _ptx_loop(ptx: str) -> str:
    """The PTX of the K loop: from its header label to the branch back to it."""
    for label in re.findall(r"^\$(L__BB0_\d+):", ptx, flags=re.M):
        back = re.search(rf"bra(?:\.uni)?\s+\${label};", ptx)
        start = ptx.index(f"${label}:")
        if back and back.start() > start:
            return ptx[start : back.end()]
    raise AssertionError("no loop found in the PTX")
