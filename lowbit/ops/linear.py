"""`quantized_linear(x, qweight)`: y[..., N] = x[..., K] @ Ŵ[N, K]ᵀ (+ bias) through the kernel library.

Kernel choice (documented rule):
  scheme w_a16:         native Triton (a CUDA GPU), M = 1 -> `quantized_gemv_fma` (FMA_GPU_MAX_M);
                        M <= 16 rows -> `quantized_gemv` (regrouped: one dot per group on raw codes);
                        M > 16       -> `quantized_gemm` (dequantize a tile, then dot); but on the CPU (tvm)
                        a weight of 1-8-bit codes read column-tiled (`gemv_serves`: AVX-512) runs
                        `quantized_gemv` at every M: past 16 rows its dot is a GEMM form, the tile's codes
                        decoded once (4-bit: the table decode; other widths: `_dot_decoded_gemm`), then AMX-BF16
                        tiles, register blocks of vdpbf16ps (bf16 x, AVX-512 BF16) or fp32 FMAs
                        (lowbit/codegen/tvm/README.md, "GEMM forms of the table-decoded dot", "Decoded GEMM form").
                        With float16 x, a weight whose dequantized values float16 cannot hold
                        (`QuantizedWeight.fits_float16`: |ŵ| past 65504, or channels in its subnormals) runs
                        `quantized_gemv` at every M (the GEMM rounds its dequantized tile to x's dtype).
                        CPU torch fp16 x of any rows and bf16 x of up to 28 (`x16.X16_MAX_M`) with 2- to 4-bit
                        integer codes (int2 .. int4, uint2 .. uint4, any zeros; AVX-512 VNNI) runs the x16 plan
                        (`lowbit.ops.x16`; past 4 rows in row tiles of 4). On TVM
                        an N that is not a multiple of CPU_PAD_N runs a copy padded to one (`PaddedLaunch`).
  scheme w4a8_group:    `w4a8_gemm_per_group`;  scheme w4a8_channel: `w4a8_gemm_per_channel`
                        (x is first quantized per token to int8 with an fp16 scale, as in lowbit.quant); on
                        TVM (the CPU), `quantized_gemv_a8` at every M (`w4a8_runs_a8`; row tiles past 16):
                        float x quantized per token by its first kernel (`quantize_tokens_int8`, bit for bit
                        as lowbit.quant), int8 x regrouped (`regroup_int8`), scales s2·s1 and zero points per
                        group (`_w4a8_gemv_operands`), the GEMM's integer sums scaled per group in fp32 (no
                        int8 dequantization of the weight); 4096², streamed: M = 1 0.44 vs 5.3 ms, M = 256 5.9 vs 28.9.
  kernel="quantized_gemv_a8" (asked for by name, e.g. by the executor when the graph chose it for a CPU decode
                        bucket): 4-bit w_a16 weights, any M (row tiles up to 16: a prefill runs it too); x is
                        quantized to int8 per row and per weight group (`quantize_groups_int8`), then
                        `quantized_gemv_a8` runs u8·i8 dot products on the column-tiled words (`retile_columns`;
                        a row-layout weight is re-tiled once and the copy kept on it). Not the default: it adds
                        the int8 rounding of x (~0.7% relative on y).
  kernel="quantized_gemm" (asked for by name): w_a16 weights, the tiled GEMM at any M (where the rule picks
                        the GEMV's GEMM forms instead: a comparison, or a backend without them).
  kernel="quantized_gemv_fma" (asked for by name): w_a16 weights, the dot-free GEMV
                        (`lowbit.kernels.gemv_fma`: fp32 FMAs of decoded weights into register tiles, one
                        reduction after the K loop; tiles of up to 4 rows), a GPU form for decode at M <= 4
                        written for CUDA cores; it runs on every backend (the GPU's default at M = 1).
Backend "auto": "triton" when torch sees CUDA and the Triton backend is present, else "tvm" when TVM and the
TVM backend are present, else "reference" (the NumPy interpreter: exact but slow).
Tiles and options: `config` (a Config) if given; else with tune=True the tuner's choice (cached per kernel,
backend, fixed constants and shape); else a config pinned to the weight for this M by a compiled artifact
(`lowbit.codegen.tune.records`); else the search space's default (lowbit.kernels.spaces).
Output dtype = x's dtype (float16, bfloat16, float32; float64 x runs rounded to float32, y widened back). A
bias is added in fp32 after the kernel's rounding to the output dtype, then rounded again (one extra rounding;
not fused yet).
"""

from __future__ import annotations

import functools
import importlib.util
import math
import threading
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np

from lowbit.artifact.fingerprint import isa_flags
from lowbit.codegen.backend import Config, available_backends, compile_program, freeze
from lowbit.codegen.tune.records import lookup as pinned_config
from lowbit.dtypes import dtype as as_dtype
from lowbit.ir.layout import PackedLayout
from lowbit.kernels.gemv import quantized_gemv
from lowbit.kernels.gemv_a8 import (
    A8_DTYPES,
    A8_GROUPS,
    quantize_groups_int8,
    quantize_rows_int8,
    quantize_tokens_int8,
    quantized_gemv_a8,
    regroup_int8,
    tile_group_rows,
)
from lowbit.kernels.gemv_fma import quantized_gemv_fma
from lowbit.kernels.launch import PersistentLauncher, activation_dtype, bind, runs_persistent, serial_options
from lowbit.kernels.layouts import row_packed
from lowbit.kernels.quantized_gemm import ROW_PACKED, quantized_gemm
from lowbit.kernels.spaces import (
    GEMV_PREFETCH_LOCALITY,
    default_config,
    native_triton,
    pair_dot_runs,
    space,
    tvm_cuda_default,
)
from lowbit.kernels.w4a8 import w4a8_gemm_per_channel, w4a8_gemm_per_group
from lowbit.lang import Kernel
from lowbit.ops.weight import QuantizedWeight, is_offset_binary, offset_binary, pad_columns, retile_columns
from lowbit.ops.x16 import X16_BN, X16_SHARED_BITS, x16_plan, x16_serves
from lowbit.quant import quantize_per_token_int8

GEMV_MAX_M = 16
# rows up to which native Triton (a CUDA GPU) runs w_a16 weights on the dot-free GEMV: H200, 8192², int4 g128,
# streamed (session 48): M = 1 26.6 us (split-K 8, `spaces.gpu_default`) against the tensor-core GEMV's 41.6;
# at M = 4 its best tile was no faster (43.6 against 43.0 us), so the GEMV keeps M > 1
FMA_GPU_MAX_M = 1
A8_KERNEL = quantized_gemv_a8.name
FMA_KERNEL = quantized_gemv_fma.name
GEMM_KERNEL = quantized_gemm.name
NAMED_KERNELS = (A8_KERNEL, FMA_KERNEL, GEMM_KERNEL)  # what `kernel=` may ask for (A8 runs through `A8Plan`)
A16_KERNELS = (FMA_KERNEL, GEMM_KERNEL)  # named kernels of w_a16 weights only
# the named kernels `_compiled` / `tvm_cuda_kernel` build (keyed by `named`, None: the rule's kernel)
_BY_NAME: dict[str | None, Kernel] = {FMA_KERNEL: quantized_gemv_fma, GEMM_KERNEL: quantized_gemm}
A8_BN = 32  # the a8 GEMV's column tile = the column_tiled layout's block
A8_AMX_ROWS = 32  # the a8 GEMV's prefill row tile where its int8 dots run on AMX
# ... and its wide row tile, taken where it pads no more rows (M = 256 at 4096²: 0.90x the time of 32-row tiles,
# hot, 2 threads, the Xeon VM with AMX; 128-row tiles took 1.17x)
A8_AMX_WIDE_ROWS = 64
# column tiles per program of the a8 GEMV's decode plans (`quantized_gemv_a8`'s TILES): each thread then reads
# two weight streams, not one. 4096² int4, bf16 x, weights streamed (a ring of copies), 2 threads, the Xeon VM,
# alternating in one process, medians: M = 1 0.397 / 0.408 vs 0.427 / 0.444 ms (two runs), M = 4 0.480 vs 0.519
A8_DECODE_TILES = 2


def tvm_int8_dot() -> str:
    """The int8 dot form the TVM backend's "auto" picks for this CPU ("amx", "vnni", "avx2" or "none")."""
    from lowbit.codegen.tvm.runtime import cpu_target, resolve_options

    return str(resolve_options({"int8_dot": "auto"}, cpu_target())["int8_dot"])


CPU_TILE_N = 64  # cpu_weight's column block (the float GEMV's default column tile, lowbit.kernels.spaces), but
# X16_BN for the 4-bit integer weights the x16 plan runs (`cpu_block`): with bfloat16 x its GEMV reads that copy
# in place (`lowbit.ops.x16.x16_source`), one copy for every M. 32-column blocks cost the float
# kernels nothing measurable (session 58, 4096², a ring of weights, 2 threads, alternating, time ratios 32 / 64:
# bf16 x int4 M = 1 / 64 / 256 1.00 / 1.00 / 0.99, 11008x4096 M = 1 / 64 1.03 / 1.01; fp32 x int4 M = 1 / 16 /
# 64 1.04 / 1.01 / 1.00), while the x16 GEMV over 64-column blocks took 1.13-1.42x its time over 32 (M = 2 / 4).
# the widest column tile of the CPU kernels' defaults (the float GEMVs' 256, `gemm_column_tile` 256 / 128 / 64,
# x16's 32): a TVM launcher runs a weight whose N is not a multiple of it on a copy padded to one
# (`PaddedLaunch`): the last, partial tile of a kernel takes its masked scalar form over all of K, so 4096x4096
# int4 M = 1 (bf16 x) took 155 us and 4160x4096 355, int8 473 against 639 (hot, 2 threads, session 53)
CPU_PAD_N = 256
_TUNED: dict[tuple[Any, ...], Config] = {}


def select_backend(backend: str = "auto") -> str:
    """The backend "auto" stands for on this machine (see the module docstring), or `backend` checked."""
    if backend != "auto":
        if backend not in ("reference", "triton", "tvm"):
            raise ValueError(f"backend {backend!r} is not known; use 'auto', 'reference', 'triton' or 'tvm'")
        return backend
    have = available_backends()
    if "triton" in have and _has_module("lowbit.codegen.triton") and _cuda():
        return "triton"
    if "tvm" in have and _has_module("lowbit.codegen.tvm"):
        return "tvm"
    return "reference"


def a8_reason(scheme: str, dtype: str, group_size: int, zero_mode: str, k: int) -> str | None:
    """Why `quantized_gemv_a8` cannot run a weight of this kind with K = k (None when it can). Group size -1
    (per channel, also how `quantize` stores a group size equal to K) is one group of K."""
    if scheme != "w_a16":
        return f"scheme {scheme} already has int8 activations"
    if dtype not in A8_DTYPES:
        return f"{dtype} codes (the a8 GEMV reads 4-bit int4/uint4 nibbles)"
    g = _a8_group(group_size, k)
    if g not in A8_GROUPS or k % g:
        return f"group size {group_size} with K={k} (the a8 GEMV takes {list(A8_GROUPS)} dividing K)"
    if dtype == "uint4" and zero_mode == "none":
        return "uint4 without a zero point"
    return None


def _a8_group(group_size: int, k: int) -> int:
    return k if group_size == -1 else group_size


def a8_ineligible(qweight: QuantizedWeight) -> str | None:
    """Why `quantized_gemv_a8` cannot run `qweight` (None when it can)."""
    q = qweight
    return a8_reason(q.scheme, q.dtype.name, q.group_size, q.zero_mode, q.in_features)


def scheme_kernel(scheme: str, m: int, a8: bool = False) -> Kernel:
    """The library kernel for a weight of `scheme` and M rows: the rule in the module docstring, written once
    for `select_kernel` and the graph's select_kernels pass. `a8`: the weight can run `quantized_gemv_a8`
    (`a8_reason` is None) and the linear takes int8 activations: it runs `quantized_gemv_a8` at every M (a
    prefill in row tiles of 16: on the CPU a tenth of the float W4A16 GEMM's time for the same ~0.7% activation
    rounding decode already takes)."""
    if scheme == "w4a8_group":
        return w4a8_gemm_per_group
    if scheme == "w4a8_channel":
        return w4a8_gemm_per_channel
    if a8:
        return quantized_gemv_a8
    return quantized_gemm if m > GEMV_MAX_M else quantized_gemv


def select_kernel(
    qweight: QuantizedWeight,
    m: int,
    decode_activations: str = "float",
    adtype: str | None = None,
    backend: str | None = None,
) -> Kernel:
    """The library kernel for `qweight`'s scheme and M rows (`scheme_kernel`); decode_activations "int8"
    picks `quantized_gemv_a8` (any M) when the weight allows it. Given the activation dtype and backend: a
    weight whose table-decoded dot has a GEMM form (`gemv_serves`) runs `quantized_gemv` at every M."""
    a8 = decode_activations == "int8" and a8_ineligible(qweight) is None
    if not a8 and m <= FMA_GPU_MAX_M and backend == "triton" and qweight.scheme == "w_a16" and native_triton():
        return quantized_gemv_fma  # a GPU decode row: the dot-free GEMV (FMA_GPU_MAX_M)
    if not a8 and adtype is not None and backend is not None and gemv_serves(qweight, backend, adtype):
        return quantized_gemv
    return _half_safe(scheme_kernel(qweight.scheme, m, a8), qweight, adtype)


def _half_safe(kernel: Kernel, qweight: QuantizedWeight, adtype: str | None) -> Kernel:
    """`kernel`, or `quantized_gemv` in place of `quantized_gemm` for float16 activations and a weight whose
    dequantized values float16 cannot hold (`QuantizedWeight.fits_float16`: past 65504, or channels down in
    its subnormals): the GEMM rounds its dequantized tile to x's dtype before the dot, the GEMV applies the
    scales to its fp32 accumulator."""
    if kernel is quantized_gemm and adtype == "float16" and not qweight.fits_float16:
        return quantized_gemv
    return kernel


def gemv_serves(qweight: QuantizedWeight, backend: str, adtype: str) -> bool:
    """Whether `quantized_gemv` runs `qweight` at every M: on TVM, a w_a16 weight of codes of at most 8 bits
    that the kernels read column-tiled (`cpu_weight`: from the row layout), on a CPU with AVX-512. Past
    GEMV_MAX_M rows the GEMV's dot is then a GEMM form (lowbit/codegen/tvm/README.md): the tile's codes decoded
    once (4-bit codes by the table decode, other widths by `_dot_decoded_gemm`), AMX-BF16 tiles, register
    blocks of vdpbf16ps (bf16 x on AVX-512 BF16) or of fp32 FMAs. 4096² int4, weights streamed, 2 threads,
    fp32 x, against `quantized_gemm`: M = 64 5.71 vs 7.70 ms, M = 256 21.9 vs 28.7 ms; int8 and int3 on the
    AMX Xeon, hot, alternating: bf16 x M = 64 7.7 / 6.9 -> 3.3 / 2.9 ms, M = 256 29.4 / 27.4 -> 8.0 / 7.5 ms
    (then 5.3 ms with 256-row tiles, int8), fp32 x M = 256 35.5 / 34.9 -> 14.9 / 14.1 ms."""
    if backend != "tvm" or qweight.scheme != "w_a16" or qweight.dtype.bits > 8 or "avx512f" not in isa_flags():
        return False
    tiled = cpu_weight(qweight, adtype)
    if tiled is not qweight and tiled.layout != qweight.layout:
        return True
    # a copy already in the layout `cpu_weight` gives (a ragged N's padded copy, `cpu_padded`)
    from lowbit.kernels.layouts import column_tiled

    n, k = qweight.shape
    bits, bn = qweight.dtype.bits, cpu_block(qweight)
    own = [column_tiled((k, n), bits, bn)] + ([column_tiled((k, n), bits, bn, pairs=True)] if bits == 4 else [])
    return qweight.layout in own


def cpu_block(qw: QuantizedWeight) -> int:
    """`cpu_weight`'s column block for `qw`: X16_BN where the x16 plan runs its rows of bfloat16 x over that copy
    (`x16_serves`, codes of `X16_SHARED_BITS`; `CPU_TILE_N`'s note), else CPU_TILE_N. 2-bit codes keep their own
    x16 planes."""
    shared = qw.dtype.bits in X16_SHARED_BITS and x16_serves(qw, 2, "bfloat16", tvm_int8_dot())
    return X16_BN if shared else CPU_TILE_N


def quantized_linear(
    x: Any,
    qweight: QuantizedWeight,
    *,
    backend: str = "auto",
    bias: Any = None,
    out: Any = None,
    tune: bool = False,
    config: Config | None = None,
    kernel: str | None = None,
) -> Any:
    """y[..., N] = x[..., K] @ qweight.dequantize().T (+ bias), in x's dtype and framework (numpy or torch).

    x: float16/bfloat16/float32 array or tensor with last dim K = qweight.in_features (a strided view is copied);
    float64 x runs as float32 and y comes back in float64 (`_linear_float64`).
    bias: [N] or None. out: a contiguous [..., N] array/tensor of x's dtype to write into (returned).
    kernel: None (the rule in the module docstring), "quantized_gemv_a8" (int8 activations, any M),
    "quantized_gemv_fma" (w_a16 weights: the dot-free GEMV, any M in tiles of up to 4 rows) or
    "quantized_gemm" (w_a16 weights: the GEMM that dequantizes a tile to x's dtype before its dot, any M).
    Raises ValueError naming the argument, its value and the fix for bad inputs.
    """
    if bias is None and out is None and config is None and kernel in (None, A8_KERNEL) and not tune:
        # a call whose arguments' kind was seen before on this weight: its launcher straight away (`_FAST`)
        seen = getattr(qweight, "__dict__", _NONE).get(_FAST)
        if seen is not None and type(x) is _TORCH_TENSOR[0]:
            hit = seen.get((backend, kernel, x.dtype, x.shape, x.device))
            if hit is not None and x.is_contiguous():
                return hit(x)
    if not isinstance(qweight, QuantizedWeight):
        raise ValueError(f"qweight is a {type(qweight).__name__}; build it with lowbit.ops.quantize(w, ...)")
    is_torch = _is_torch(x)
    if str(getattr(x, "dtype", "")).removeprefix("torch.") == "float64":
        return _linear_float64(x, qweight, backend, bias, out, tune, config, kernel)
    adtype = activation_dtype(x, "x")
    n, k = qweight.shape
    shape = tuple(x.shape)
    if len(shape) < 1 or shape[-1] != k:
        raise ValueError(
            f"x has shape {list(shape)} but qweight has in_features K={k}; pass x of shape [..., {k}] "
            f"(qweight.shape is (out_features, in_features) = {qweight.shape})"
        )
    if not (x.is_contiguous() if is_torch else x.flags.c_contiguous):
        x = x.contiguous() if is_torch else np.ascontiguousarray(x)  # a strided view is copied, as F.linear reads any
    if bias is not None and not hasattr(bias, "shape"):
        try:  # a list or tuple of numbers
            bias = np.asarray(bias, np.float32)
        except (TypeError, ValueError) as e:
            raise ValueError(f"bias of type {type(bias).__name__} is not numeric; pass a [{n}] array or None") from e
    if bias is not None and tuple(bias.shape) != (n,):
        raise ValueError(f"bias has shape {list(bias.shape)}; pass a [{n}] bias (out_features) or None")
    if config is not None and not isinstance(config, Config):
        raise ValueError(
            f"config is a {type(config).__name__} ({config!r}); pass a lowbit.codegen.backend.Config (e.g. "
            "lowbit.kernels.spaces.space(kernel, backend).default) or None for the default"
        )
    if out is not None:
        if _is_torch(out) != is_torch:
            raise ValueError(
                f"out is a {'torch tensor' if _is_torch(out) else type(out).__name__} but x is a "
                f"{'torch tensor' if is_torch else type(x).__name__}; pass out of x's kind (or out=None)"
            )
        if tuple(out.shape) != (*shape[:-1], n):
            raise ValueError(f"out has shape {list(out.shape)}; it must be {[*shape[:-1], n]} (x's rows by N)")
        if activation_dtype(out, "out") != adtype:
            raise ValueError(f"out must have x's dtype {adtype}; allocate it with that dtype or pass out=None")
        _check_contiguous("out", out, _is_torch(out))
    m = math.prod(shape[:-1])
    backend_arg, backend = backend, select_backend(backend)
    if kernel is not None and kernel not in NAMED_KERNELS:
        raise ValueError(f"kernel {kernel!r} is not selectable by name; pass None or one of {list(NAMED_KERNELS)}")
    if kernel in A16_KERNELS and qweight.scheme != "w_a16":
        raise ValueError(
            f"kernel {kernel} runs w_a16 weights; this weight's scheme is {qweight.scheme!r} (int8 "
            "activations): pass kernel=None"
        )
    if kernel == A8_KERNEL:
        if config is not None:  # (tune=True is allowed: `lowbit bench gemm --tune` times these rows untuned)
            raise ValueError(
                f"kernel {A8_KERNEL} runs a plan of several kernels, each with its own default config; pass "
                "config=None (or name one kernel: " + ", ".join(A16_KERNELS) + ")"
            )
        why = a8_ineligible(qweight)
        if why:
            raise ValueError(f"kernel {A8_KERNEL} cannot run this weight: {why}; pass kernel=None")
    if kernel == A8_KERNEL or (
        (not is_torch or x.device.type == "cpu") and not (tune or config) and w4a8_runs_a8(qweight, m, backend)
    ):
        # the a8 GEMV's plan: asked for by name, or a W4A8 weight on the CPU, whose first kernel quantizes x per
        # token bit for bit as the W4A8 GEMM's callers do (`quantize_tokens_int8`: no NumPy pass over x)
        if is_torch and backend != "reference" and m:  # the result stays a torch tensor, as below
            ya = _torch_empty((m, n), x)
            plan = a8_plan(qweight, m, backend, adtype)
            plan.run(x.reshape(m, k), ya)
            _remember(qweight, x, backend_arg, kernel, plan.launcher, m, n)
            return _torch_result(ya, bias, shape, out)
        y2 = _run_a8(x, qweight, m, backend, adtype, is_torch)  # [M, N] numpy
    elif is_torch and m and _on_launch_device(x, backend):
        # torch activations on the Triton launch device (a CUDA GPU; the CPU under the interpreter): the weight's
        # arrays are copied there once and kept on the weight (`device_weight`), x and y never leave it, and the
        # call launches the kernel directly (no host round trip: a per-call copy of a 32 MB weight over PCIe
        # would be what a GPU benchmark timed), so it can be captured in a CUDA graph
        ya = _torch_empty((m, n), x)
        fixed, args = _device_arguments(qweight, x.reshape(m, k), ya, adtype, backend)
        _compiled(qweight, m, backend, adtype, fixed, args, tune, config, kernel)(args)
        return _torch_result(ya, bias, shape, out)
    elif is_torch and m and backend == "tvm" and x.device.type == "cuda":
        # torch CUDA activations with backend "tvm": the TVM backend's CUDA kernels (`tvm_cuda_kernel`), on the
        # weight's device copy, x and y where they lie
        if tune:
            raise ValueError(
                "tune=True: the TVM backend's CUDA kernels have no tuner yet; pass config=Config.make(tiles) "
                "or use backend='triton' (tuned on the GPU)"
            )
        ya = _torch_empty((m, n), x)
        fixed, args = _device_arguments(qweight, x.reshape(m, k), ya, adtype, backend)
        tvm_cuda_kernel(qweight, m, adtype, fixed, args, config, kernel)(args)
        return _torch_result(ya, bias, shape, out)
    elif backend == "tvm" and is_torch and x.device.type == "cpu" and not tune and qweight.scheme == "w_a16" and m:
        # CPU torch activations: the weight's bound launcher (linear_launcher, kept on the weight per kernel and
        # config), not the per-call argument conversion of a dict call (~0.1 ms a call, a fifth of a 4096x4096
        # M=1 GEMV; with a config, 0.8 ms of 1.4 at int3 M = 16), and the result stays a torch tensor (no NumPy
        # round trip: after a cache flush the ops layer's Python path cost ~0.26 ms against ~0.03 ms warm)
        ya = _torch_empty((m, n), x)
        launch = bound_launcher(qweight, m, adtype, kernel, config)
        launch(x.reshape(m, k), ya)
        if config is None and kernel is None:  # the fast table's key holds neither
            _remember(qweight, x, backend_arg, kernel, launch, m, n)
        return _torch_result(ya, bias, shape, out)
    elif backend == "tvm" and not is_torch and not tune and qweight.scheme == "w_a16" and m and adtype in _NUMPY_TORCH:
        # NumPy float32 / float16 x: the launcher that torch x runs, on a zero-copy view, so both kinds of x get
        # the same kernel and the same bits (the x16 plan serves torch launches only; a dict call would run another)
        import torch

        ya = torch.empty((m, n), dtype=getattr(torch, adtype))
        bound_launcher(qweight, m, adtype, kernel, config)(torch.from_numpy(x).reshape(m, k), ya)
        y2 = ya.numpy()
    else:
        x2 = _host(x, is_torch).reshape(m, k)  # [M, K] numpy, bf16 as ml_dtypes.bfloat16
        run = qweight  # a ragged N runs the padded copy, as the launchers do (`PaddedLaunch`): the same kernel
        if backend == "tvm" and qweight.scheme == "w_a16" and n % CPU_PAD_N:
            run = cpu_padded(qweight, adtype)
        xa, ya = _kernel_io(x, x2, is_torch, backend, run.shape[0])  # what the backend reads and writes
        if m:
            fixed, args = _arguments(run, x2, xa, ya, adtype, backend)
            _compiled(run, m, backend, adtype, fixed, args, tune, config, kernel)(args)
        y2 = (ya if isinstance(ya, np.ndarray) else _host(ya, True))[:, :n]  # [M, N]
    if bias is not None:
        b = _host(bias, _is_torch(bias)).astype(np.float32)
        y2 = (y2.astype(np.float32) + b[None, :]).astype(y2.dtype)
    y = y2.reshape(*shape[:-1], n)
    result = _like(y, x, is_torch)
    if out is not None:
        out[...] = result
        return out
    return result


# `quantized_linear`'s fast path: per weight (its __dict__ slot `_FAST`), the launches of the CPU torch calls it
# has seen, keyed by (the backend and kernel asked for, x's dtype, shape and device; x a torch.Tensor proper),
# each taking x and returning a new y. A call that finds its key (no bias, out, config or tune; x contiguous)
# skips the checks and the dispatch it already passed with these arguments: Python work that a decode GEMV
# streaming its weight from DRAM pays with cold caches. 4096² M = 1 bf16 x, a ring of 32 weights, 2 threads,
# alternating: int4 0.310 vs 0.326 ms, int2 0.170 vs 0.181; 11008x4096 int4 0.812 vs 0.831.
_FAST = "_fast_launches"
_NUMPY_TORCH = ("float32", "float16")  # NumPy activation dtypes torch.from_numpy views (bfloat16's ml_dtypes type: no)
_TORCH_TENSOR: list[Any] = [None]  # torch.Tensor, set by the first `_remember` (torch is imported lazily here)
_FAST_MOST = 64  # keys kept per weight (a prompt length is a shape: past this many the table starts again)
_NONE: dict[str, Any] = {}


def _remember(qw: QuantizedWeight, x: Any, backend: str, kernel: str | None, launch: Callable, m: int, n: int) -> None:
    """Record `launch` (y2 [m, n] from x2 [m, K], torch tensors) for calls with x's kind (`_FAST`)."""
    import torch

    _TORCH_TENSOR[0] = torch.Tensor
    seen = qw.__dict__.setdefault(_FAST, {})
    if len(seen) >= _FAST_MOST:
        seen.clear()
    if type(x) is not torch.Tensor:  # a subclass (nn.Parameter, a tensor wrapper) takes the checked path
        return
    k = int(x.shape[-1])
    shape = (*x.shape[:-1], n)
    dtype, device = x.dtype, x.device
    flat = getattr(launch, "flat", None)  # a TVM bound launch taking flat tensors (`TvmKernel.bind`)
    if flat is not None:
        # torch parses each keyword on every call: the CPU's allocation passes no device
        at: dict[str, Any] = {} if device.type == "cpu" else {"device": device}

        def run(x2: Any) -> Any:
            y = torch.empty(m * n, dtype=dtype, **at)
            flat(x2.view(-1), y)
            return y.view(shape)

    elif x.dim() == 2:

        def run(x2: Any) -> Any:
            y = torch.empty((m, n), dtype=dtype, device=device)
            launch(x2, y)
            return y

    else:

        def run(x2: Any) -> Any:
            y = torch.empty((m, n), dtype=dtype, device=device)
            launch(x2.view(m, k), y)
            return y.view(shape)

    seen[(backend, kernel, dtype, x.shape, device)] = run


def _linear_float64(
    x: Any, qw: QuantizedWeight, backend: str, bias: Any, out: Any, tune: bool, config: Any, kernel: Any
) -> Any:
    """`quantized_linear` for float64 x (NumPy's default float): the kernels' widest activation type runs it,
    x rounded to float32; y comes back in float64 (a float32 result widened), the bias added in float64.
    So y carries float32's rounding (~1e-7 relative per element), not float64's: a user who wants the
    weight's exact product in float64 multiplies by `qw.dequantize()` themselves."""
    is_torch = _is_torch(x)
    n = qw.shape[0]
    if bias is not None:
        b = _host(bias, _is_torch(bias)) if hasattr(bias, "shape") else np.asarray(bias)
        if b.shape != (n,):
            raise ValueError(f"bias has shape {list(b.shape)}; pass a [{n}] bias (out_features) or None")
        bias = _like(b.astype(np.float64), x, is_torch)
    want = [*tuple(x.shape)[:-1], n]
    if out is not None and (_is_torch(out) != is_torch or list(out.shape) != want or "float64" not in str(out.dtype)):
        raise ValueError(
            f"out is a {type(out).__name__} of shape {list(out.shape)} and dtype {out.dtype}; for float64 x pass a "
            f"float64 {'tensor' if is_torch else 'array'} of shape {want} (or out=None)"
        )
    x32 = x.float() if is_torch else np.asarray(x, np.float32)
    y = quantized_linear(x32, qw, backend=backend, tune=tune, config=config, kernel=kernel)
    y = y.double() if is_torch else y.astype(np.float64)
    if bias is not None:
        y = y + bias
    if out is None:
        return y
    out[...] = y
    return out


def _torch_result(ya: Any, bias: Any, shape: tuple[int, ...], out: Any) -> Any:
    """A kernel's torch output ya [M, N] as `quantized_linear` returns it: plus the bias (in fp32 after the
    kernel's rounding, then rounded again, as the NumPy path), shaped [..., N], written into `out` if given."""
    if bias is not None:
        import torch

        b = bias if _is_torch(bias) else torch.from_numpy(np.asarray(bias, np.float32))
        ya = (ya.float() + b.float()[None, :].to(ya.device)).to(ya.dtype)
    result = ya.reshape(*shape[:-1], ya.shape[-1])
    if out is not None:
        out[...] = result if _is_torch(out) else result.float().numpy()
        return out
    return result


def linear_problem(qweight: QuantizedWeight, x: Any, backend: str = "auto") -> tuple[Kernel, dict, dict]:
    """(kernel, fixed DSL constants, call arguments) that `quantized_linear(x, qweight, backend=backend)`
    compiles and runs for activations x [M, K] (NumPy or torch, an activation dtype): what a tuner times.
    The arguments include a fresh output y [M, N]."""
    backend = select_backend(backend)
    is_torch = _is_torch(x)
    adtype = activation_dtype(x, "x")
    n, k = qweight.shape
    if is_torch and _on_launch_device(x, backend):  # what quantized_linear launches there: the device copy
        x2d = x.reshape(-1, k).contiguous()
        fixed, args = _device_arguments(qweight, x2d, _torch_empty((x2d.shape[0], n), x2d), adtype, backend)
        return select_kernel(qweight, x2d.shape[0], adtype=adtype, backend=backend), fixed, args
    x2 = _host(x, is_torch).reshape(-1, k)  # [M, K]
    xa, ya = _kernel_io(x, x2, is_torch, backend, n)
    fixed, args = _arguments(qweight, x2, xa, ya, adtype, backend)
    return select_kernel(qweight, x2.shape[0], adtype=adtype, backend=backend), fixed, args


def default_linear_config(kernel: Kernel, fixed: dict, args: dict, backend: str) -> Config:
    """The config `quantized_linear` runs for `linear_problem`'s problem when it is given no `config`, no
    `tune` and the weight has no pinned one (the search space's default)."""
    return _choose_config(kernel, fixed, args, select_backend(backend), False, args["M"])


def quantized_linear_int8(
    xq: Any, sx: Any, qweight: QuantizedWeight, *, out_dtype: str = "float32", backend: str = "auto", bias: Any = None
) -> Any:
    """y [M, N] (out_dtype) = W4A8 linear of activations already quantized per token: xq [M, K] int8, sx [M]
    float16 (`lowbit.quant.quantize_per_token_int8`'s output; the fused RMSNorm + quantize of W4A8 models).
    NumPy or torch in, the same out. Only the W4A8 schemes take int8 activations."""
    if qweight.scheme == "w_a16":
        raise ValueError("qweight has scheme 'w_a16' (float activations); call quantized_linear with float x")
    is_torch = _is_torch(xq)
    n, k = qweight.shape
    backend = select_backend(backend)
    rows = int(xq.shape[0]) if is_torch and xq.ndim == 2 else -1
    cpu_a8 = is_torch and _is_torch(sx) and xq.device.type == "cpu" and w4a8_runs_a8(qweight, rows, backend)
    if cpu_a8 or (is_torch and _is_torch(sx) and _on_launch_device(xq, backend)):
        # on the Triton launch device (the weight's device copy) or the CPU's a8 path: y allocated where x lies,
        # no NumPy round trip
        import torch

        m = int(xq.shape[0]) if xq.ndim == 2 else -1
        if xq.dtype != torch.int8 or m < 0 or xq.shape[1] != k or tuple(sx.shape) != (m,):
            raise ValueError(f"xq {xq.dtype}{list(xq.shape)}, sx {list(sx.shape)}: expected int8 [M, {k}] and [M]")
        if cpu_a8:
            return _torch_result(_run_w4a8_a8(qweight, xq, sx, out_dtype, backend), bias, (m, k), None)
        yd = torch.empty((m, n), dtype=getattr(torch, out_dtype), device=xq.device)
        if m:
            arrays = device_weight(qweight, xq.device)
            fixed, args = _w4a8_arguments(qweight, arrays, xq.contiguous(), sx.float(), yd, out_dtype)
            _compiled(qweight, m, backend, "int8->" + out_dtype, fixed, args)(args)
        return _torch_result(yd, bias, (m, k), None)
    qa, sa = _host(xq, is_torch), _host(sx, _is_torch(sx))
    if qa.dtype != np.int8 or qa.ndim != 2 or qa.shape[1] != k or sa.shape != (qa.shape[0],):
        raise ValueError(f"xq {qa.dtype}{list(qa.shape)}, sx {list(sa.shape)}: expected int8 [M, {k}] and [M]")
    m = qa.shape[0]
    host = as_dtype(out_dtype).host_dtype
    y: Any = np.zeros((m, n), host)
    if w4a8_runs_a8(qweight, m, backend):
        y = _run_w4a8_a8(qweight, qa, sa, out_dtype, backend)
    elif m:
        if backend != "reference" and (is_torch or out_dtype == "bfloat16"):
            import torch

            y = torch.zeros((m, n), dtype=getattr(torch, out_dtype))
        fixed, args = _w4a8_arguments(qweight, _host_arrays(qweight), qa, sa.astype(np.float32), y, out_dtype)
        _compiled(qweight, m, backend, "int8->" + out_dtype, fixed, args)(args)
    y2 = y if isinstance(y, np.ndarray) else _host(y, True)
    if bias is not None:
        b = _host(bias, _is_torch(bias)).astype(np.float32)
        y2 = (y2.astype(np.float32) + b[None, :]).astype(y2.dtype)
    if not is_torch:
        return y2
    import torch

    return torch.from_numpy(np.asarray(y2, dtype=np.float32)).to(getattr(torch, out_dtype))


# ---- the int8-activation decode path -------------------------------------------------------------------


def cpu_weight(qw: QuantizedWeight, adtype: str = "float32") -> QuantizedWeight:
    """`qw` as the TVM (CPU) float-activation kernels read it: a w_a16 weight in the row layout re-tiled to
    `column_tiled(cpu_block(qw))` (a copy kept on `qw`, like `a8_weight`'s); any other weight as it is. With
    bfloat16 activations on a CPU with AVX-512 BF16, a 4-bit weight's copy has its codes in pair order
    (`column_tiled(pairs=True)`), what the bf16 pair-dot GEMV reads (`lowbit/codegen/tvm` README, "bf16 dot");
    the float kernels read it too. Elsewhere bf16 activations share the plain copy (no second copy unused).

    Why: in the row layout the words of a [K, N] weight run along N, so a GEMV tile of 64 columns walking K
    reads K / per_word separate 256-byte pieces N·4 bytes apart, a stream the hardware prefetcher cannot follow;
    column-tiled, the same tile is one contiguous run. Measured (ring of weights larger than L3, 2 threads,
    W4A16 g128 M = 1, alternating): 0.53x the time at 4096x4096 and 0.33x at 11008x4096; the GEMM at M = 64 reads
    it as fast (0.94x). Both kernels take any packed layout, so only the words move (scales and zeros stay)."""
    if qw.scheme != "w_a16":
        return qw
    pairs = pair_dot_runs(adtype, qw.dtype.bits)
    slot = "_cpu_pairs" if pairs else "_cpu_tiled"
    tiled = qw.__dict__.get(slot)
    if tiled is None:
        n, k = qw.shape
        if qw.layout != row_packed((k, n), qw.dtype.bits):  # already a kernel layout (column-tiled, reordered)
            return qw
        tiled = qw.__dict__[slot] = retile_columns(qw, cpu_block(qw), pairs=pairs)
    return tiled


def a8_weight(qw: QuantizedWeight) -> QuantizedWeight:
    """`qw` as the a8 GEMV reads it: in the column-tiled layout, an int4 weight as the equal offset-binary uint4
    weight (`offset_binary`: no xor per word in the kernel); itself when already so, else a copy kept on `qw`."""
    tiled = qw.__dict__.get("_a8_tiled")
    if tiled is None:
        tiled = offset_binary(retile_columns(qw, A8_BN))
        if tiled is not qw:
            qw.__dict__["_a8_tiled"] = tiled
    return tiled


def _run_w4a8_a8(qw: QuantizedWeight, codes: Any, scale: Any, ydtype: str, backend: str) -> Any:
    """y [M, N] (a torch tensor of `ydtype`) of a W4A8 weight on its a8 plan (`w4a8_runs_a8`), from activations
    quantized per token: codes [M, K] int8 and scales [M] (NumPy or CPU torch). y is not zero-filled: that
    would be a parallel torch op right before the kernel, and torch's OpenMP workers, unless they wait
    passively (lowbit/__init__.py), then spin on the cores TVM's pool needs (4096² M = 16: 4.0 vs 0.4 ms)."""
    import torch

    codes, scale = torch.as_tensor(codes).contiguous(), torch.as_tensor(scale).float().contiguous()
    y = torch.empty((int(codes.shape[0]), qw.shape[0]), dtype=getattr(torch, ydtype))
    a8_plan(qw, int(codes.shape[0]), backend, ydtype).run_int8(codes, scale, y)
    return y


def w4a8_runs_a8(qw: QuantizedWeight, m: int, backend: str) -> bool:
    """Whether a W4A8 weight's M rows run `quantized_gemv_a8` (module docstring): on TVM, M > 0, a weight the
    GEMV takes (`w4a8_gemv_group`); past GEMV_MAX_M rows in row tiles, as a w_a16 prefill with int8 x."""
    return backend == "tvm" and m > 0 and w4a8_gemv_group(qw) is not None


def w4a8_gemv_group(qw: QuantizedWeight) -> int | None:
    """The group size at which `quantized_gemv_a8` runs a W4A8 weight (None: it cannot; the W4A8 GEMM does):
    its group size where the GEMV takes it (`A8_GROUPS`), else, for one scale row per channel (w4a8_channel,
    group -1) or a larger group, the largest of A8_GROUPS dividing it (the rows repeated)."""
    k = qw.in_features
    if qw.scheme == "w_a16" or qw.dtype.name not in A8_DTYPES or qw.zeros is None or qw.zero_mode != "post":
        return None
    gw = k if qw.group_size == -1 else qw.group_size
    return next((g for g in sorted(A8_GROUPS, reverse=True) if gw % g == 0), None)


def _w4a8_gemv_operands(qw: QuantizedWeight, g: int) -> tuple[QuantizedWeight, np.ndarray, np.ndarray]:
    """A W4A8 weight as `quantized_gemv_a8` reads it at group size g (made once, kept on the weight): its codes
    column-tiled, float32 scales and zero points column-tiled (`tile_group_rows`), a row per group of g.
    w4a8_group: ŵ = (q − z)·s2·s1, so the scale is s2·s1 (int8 times float16: exact in float32) and the GEMV's
    per-group (p − z·Σxq)·sx·s sums what the W4A8 GEMM's int32 dot scales once; w4a8_channel: s and z."""
    key = f"_a8_w4a8_{g}"
    ops = qw.__dict__.get(key)
    if ops is None:
        k = qw.in_features
        assert qw.zeros is not None  # `w4a8_gemv_group` took the weight
        s = qw.scales.astype(np.float32)
        if qw.channel_scales is not None:
            s = s * qw.channel_scales.astype(np.float32)[None, :]
        reps = (k if qw.group_size == -1 else qw.group_size) // g
        s, z = np.repeat(s, reps, axis=0), np.repeat(qw.zeros.astype(np.float32), reps, axis=0)
        ops = qw.__dict__[key] = (retile_columns(qw, A8_BN), tile_group_rows(s, A8_BN), tile_group_rows(z, A8_BN))
    return ops


def _group_tiles(qw: QuantizedWeight, field: str) -> np.ndarray:
    """`qw.scales` / `qw.zeros` column-tiled for the a8 GEMV (`tile_group_rows`), made once per weight and
    kept on it, so the plans of every row bucket share one copy."""
    key = f"_a8_{field}_tiles"
    tiles = qw.__dict__.get(key)
    if tiles is None:
        tiles = qw.__dict__[key] = tile_group_rows(getattr(qw, field), A8_BN)
    return tiles


class A8Plan:
    """The two kernels of the a8 path compiled for one weight and backend, with the weight's tensors ready for
    the calls. `run(x2, y2)`: x2 [M, K] activations, y2 [M, N] output (torch tensors for compiled backends,
    NumPy for the reference interpreter); its first kernel quantizes x2 (`quantize_groups_int8`, or for a
    W4A8 weight per token as `quantize_per_token_int8` does, bit for bit: `quantize_tokens_int8`). A W4A8
    weight's plan also takes activations already quantized per token, `run_int8(codes, scale, y2)`: its first
    kernel then regroups them (`regroup_int8`). Each first kernel is compiled on its first use.

    m <= GEMV_MAX_M (decode): every call has m rows, bound once, row tile the next power of two >= m; each
    thread has its own scratch (the nano-batch executor runs row ranges of one linear concurrently).
    m = None (prefill): any number of rows per call in row tiles of GEMV_MAX_M (A8_AMX_ROWS where its dots run
    on AMX), the scratch shared by every such plan of the thread (`_ROW_SCRATCH`, grown to the largest call)
    so prompts of many lengths keep one copy, not one per weight and length."""

    def __init__(self, qw: QuantizedWeight, m: int | None, backend: str, adtype: str):
        self.n, self.k = qw.shape
        self.m, self.backend = m, backend
        # a W4A8 weight: activations quantized per token (`run`: by the first kernel; `run_int8`: already)
        self.w4a8 = qw.scheme != "w_a16"
        zeros: np.ndarray | None
        if self.w4a8:
            g = w4a8_gemv_group(qw)
            if g is None:
                raise ValueError(f"A8Plan: this {qw.scheme} weight has no group size the a8 GEMV takes")
            qw, scales, zeros = _w4a8_gemv_operands(qw, g)
            biased = False
        else:
            g = _a8_group(qw.group_size, self.k)
            qw = a8_weight(qw)  # column-tiled; an int4 weight as offset binary
            biased = is_offset_binary(qw)  # int4 stored as u = q + 8: the kernel skips its xor and the zero points
            scales = _group_tiles(qw, "scales")
            zeros = _group_tiles(qw, "zeros") if qw.zeros is not None and not biased else None
        amx = backend == "tvm" and tvm_int8_dot() == "amx"
        # prefill row tiles: 32 on AMX (two 16-row tiles share each decoded weight tile: M = 64 / 256 took 0.83x
        # / 0.79x the time of 16-row tiles, hot, 2 threads, on the Xeon VM with AMX)
        prefill_rows = A8_AMX_ROWS if amx else GEMV_MAX_M
        self.bm = prefill_rows if m is None else 1 << max(0, (min(m, GEMV_MAX_M) - 1).bit_length())
        self.mp = 0 if m is None else -(-m // self.bm) * self.bm
        self.groups = self.k // g
        # 64-bit addresses: constant offsets fold into the loads (0.87x the M = 1 CPU time, 0.97x at M = 16-256)
        opts: dict[str, Any] = {"tm": 2, "index64": True} if backend == "tvm" else {}
        if backend == "tvm" and m is not None:  # decode: the weight stream prefetched to L2 (4096² int4 M = 1,
            opts["prefetch_locality"] = GEMV_PREFETCH_LOCALITY  # streamed, alternating: 0.90x the time of L1's)
        if amx and self.bm >= 16:  # AMX tiles: no software prefetch (0.80x / 0.89x the time at M = 16 / 64)
            opts["prefetch"] = 0
        sdtype = str(scales.dtype)
        # decode rows quantize on the calling thread (`serial_options`); a prefill's row blocks in parallel (M =
        # 256, K = 4096: 1.1 ms serially, next to a 5.2 ms AMX GEMV)
        self._qopts = serial_options(backend) if m is not None else {}
        self._g, self._adtype = g, adtype
        self._firsts: dict[str, tuple[Any, Any]] = {}  # "x" / "codes" -> (compiled first kernel, its bound caller)
        self._first_lock = threading.Lock()
        wdtype, zero_mode = ("int4", "none") if biased else (qw.dtype.name, qw.zero_mode)
        # AMX's signed x signed dot takes int4 codes as 16·q bytes: no offset correction per output (M = 64 / 256:
        # 0.86-0.96x the time of the unsigned form, hot, same process, the same sums; `quantized_gemv_a8`). Only
        # where the dots are whole AMX tiles (16-row tiles, G / 2 codes in 64s): VNNI's form needs one unsigned
        # operand, so elsewhere the signed form would take the generic loops
        whole_tiles = self.bm % 16 == 0 and (g // 2) % 64 == 0
        signed_dot = amx and whole_tiles and wdtype == "int4" and zero_mode == "none"
        # two column tiles per program at decode, but not for row tiles of 2-8 rows with zero points: their
        # registers spill (4096² M = 4, hot: 0.59 vs 0.28 ms)
        tiles = A8_DECODE_TILES if m is not None and (self.bm == 1 or zeros is None) else 1
        self._trace = {
            "wdtype": wdtype, "zero_mode": zero_mode, "G": g, "ydtype": adtype, "sdtype": sdtype, "BN": A8_BN,
            "biased": biased, "signed_dot": signed_dot, "TILES": tiles,
        }  # fmt: skip
        self._opts = opts
        self.gemv = compile_program(quantized_gemv_a8.trace(**self._trace, BM=self.bm), backend, opts)
        # prefill on AMX: rows in tiles of A8_AMX_WIDE_ROWS where that pads no more rows than A8_AMX_ROWS would
        # (compiled on first use): each decoded weight tile then feeds four 16-row tiles, not two
        self.wide = amx and m is None
        self._wide_gemv: Any = None
        self._wide_lock = threading.Lock()  # the executor's threads may run one prefill plan at once
        words = qw.words.view(np.int32).reshape(-(-self.n // A8_BN), self.k // 8, A8_BN)
        self.fixed: dict[str, Any] = {"w": words, "scales": scales}
        if zeros is not None:
            self.fixed["zeros"] = zeros
        self.sizes = {"N": self.n, "K": self.k} if m is None else {"M": m, "MP": self.mp, "N": self.n, "K": self.k}
        self.direct = backend == "tvm"
        if self.direct:  # kernels called with their arguments bound (lowbit.kernels.launch.bind)
            rows = ("M", "MP") if m is None else ()
            self._gemv: Any = bind(self.gemv, {**self.fixed, **self.sizes}, ("xq", "xs", "xsum", "y", *rows))
            self._scratch = threading.local()

    def _first(self, inputs: str) -> tuple[Any, Any]:
        """(compiled, bound caller or None) of the first kernel for `inputs`: "x" (float activations) or
        "codes" (a W4A8 weight's activations already quantized per token), compiled on first use."""
        first = self._firsts.get(inputs)
        if first is not None:
            return first
        with self._first_lock:
            if inputs not in self._firsts:
                g, bm = self._g, self.bm
                if inputs == "codes":
                    program = regroup_int8.trace(G=g, BM=bm)
                elif self.w4a8:
                    program = quantize_tokens_int8.trace(G=g, adtype=self._adtype, BM=bm)
                else:
                    program = quantize_groups_int8.trace(G=g, adtype=self._adtype, BM=bm)
                kernel = compile_program(program, self.backend, self._qopts)
                bound = None
                if self.direct:
                    names = ("codes", "scale") if inputs == "codes" else ("x",)
                    rows = ("M", "MP") if self.m is None else ()
                    sizes = {"K": self.k} if self.m is None else {"M": self.m, "MP": self.mp, "K": self.k}
                    bound = bind(kernel, sizes, (*names, "xq", "xs", "xsum", *rows))
                self._firsts[inputs] = (kernel, bound)
        return self._firsts[inputs]

    def _wide(self) -> Callable[..., None]:
        """The prefill GEMV bound with row tiles of A8_AMX_WIDE_ROWS (compiled on the first call that takes it)."""
        if self._wide_gemv is not None:
            return self._wide_gemv
        with self._wide_lock:
            if self._wide_gemv is not None:
                return self._wide_gemv
            kernel = compile_program(
                quantized_gemv_a8.trace(**self._trace, BM=A8_AMX_WIDE_ROWS), self.backend, self._opts
            )
            self._wide_gemv = bind(kernel, {**self.fixed, **self.sizes}, ("xq", "xs", "xsum", "y", "M", "MP"))
            return self._wide_gemv

    def _buffers(self, mp: int | None = None) -> tuple[Any, Any, Any]:
        """The thread's (xq, xs, xsum) scratch for mp padded rows (this plan's own for a fixed m)."""
        import torch

        if mp is not None:
            bufs = getattr(_ROW_SCRATCH, "bufs", None)
            if bufs is None or bufs[0].numel() < mp * self.k or bufs[1].numel() < mp * self.groups:
                rows = max(mp, 2 * bufs[0].numel() // self.k if bufs is not None else 0)
                flat = max(rows * self.k, bufs[0].numel() if bufs is not None else 0)
                groups = max(rows * self.groups, bufs[1].numel() if bufs is not None else 0)
                bufs = _ROW_SCRATCH.bufs = (
                    torch.empty(flat, dtype=torch.int8),
                    torch.empty(groups, dtype=torch.float32),
                    torch.empty(groups, dtype=torch.int32),
                )
            return (
                bufs[0][: mp * self.k].view(self.groups, mp, self.k // self.groups),
                bufs[1][: mp * self.groups].view(mp, self.groups),
                bufs[2][: mp * self.groups].view(mp, self.groups),
            )
        bufs = getattr(self._scratch, "bufs", None)
        if bufs is None:
            bufs = self._scratch.bufs = (
                torch.empty((self.groups, self.mp, self.k // self.groups), dtype=torch.int8),  # group-major
                torch.empty((self.mp, self.groups), dtype=torch.float32),
                torch.empty((self.mp, self.groups), dtype=torch.int32),
            )
        return bufs

    def run(self, x2: Any, y2: Any) -> None:
        """y2 [M, N] from float activations x2 [M, K] (quantized by the first kernel)."""
        self._launch("x", {"x": x2}, y2, int(x2.shape[0]))

    __call__ = run

    @property
    def launcher(self) -> Callable[[Any, Any], None]:
        """`run`, as a launch whose `flat` (where this plan has one: decode rows on TVM) the fast path of
        `quantized_linear` takes."""
        return self if self.m is not None and self.direct else self.run

    def flat(self, x: Any, y: Any) -> None:
        """`run` for a decode plan on TVM with x [m·K] and y [m·N] already flat: the bound kernels' `flat` calls
        on flat scratch, no torch view per tensor (~1 us each here)."""
        if self.m is None or not self.direct:
            raise ValueError("A8Plan.flat runs a decode plan (fixed m) on the TVM backend; call run(x2, y2)")
        _, bound = self._first("x")
        bufs = getattr(self._scratch, "flat", None)
        if bufs is None:
            bufs = self._scratch.flat = tuple(b.view(-1) for b in self._buffers())
        bound.flat(x, *bufs)
        self._gemv.flat(*bufs, y)

    def run_int8(self, codes: Any, scale: Any, y2: Any) -> None:
        """A W4A8 weight's y2 [M, N] from activations quantized per token: codes [M, K] int8, scale [M] float32."""
        if not self.w4a8:
            raise ValueError("A8Plan.run_int8: this w_a16 plan quantizes float activations; call run(x2, y2)")
        self._launch("codes", {"codes": codes, "scale": scale}, y2, int(codes.shape[0]))

    def _launch(self, kind: str, inputs: dict[str, Any], y2: Any, rows: int) -> None:
        m = rows if self.m is None else self.m
        mp = -(-m // self.bm) * self.bm
        quant, bound = self._first(kind)
        if not self.direct:
            xq = np.zeros((self.groups, mp, self.k // self.groups), np.int8)
            xs = np.zeros((mp, self.groups), np.float32)
            xsum = np.zeros((mp, self.groups), np.int32)
            sizes = {**self.sizes, "M": m, "MP": mp}
            quant({**inputs, "xq": xq, "xs": xs, "xsum": xsum, "M": m, "MP": mp, "K": self.k})
            self.gemv({"xq": xq, "xs": xs, "xsum": xsum, "y": y2, **self.fixed, **sizes})
            return
        if self.m is None:
            if m == 0:
                return
            xq, xs, xsum = self._buffers(mp)
            bound(*inputs.values(), xq, xs, xsum, m, mp)
            wide = self.wide and mp >= A8_AMX_WIDE_ROWS and mp % A8_AMX_WIDE_ROWS == 0
            (self._wide() if wide else self._gemv)(xq, xs, xsum, y2, m, mp)
            return
        xq, xs, xsum = self._buffers()
        bound(*inputs.values(), xq, xs, xsum)
        self._gemv(xq, xs, xsum, y2)


_ROW_SCRATCH = threading.local()  # the prefill plans' (xq, xs, xsum) scratch, one per thread


def linear_launcher(
    qw: QuantizedWeight, m: int, backend: str, adtype: str, kernel: str | None = None, config: Config | None = None
) -> Callable[[Any, Any], None]:
    """`launch(x2, y2)`: y2 [m, N] = x2 [m, K] @ Ŵᵀ (no bias) for contiguous torch tensors of `adtype` (on the
    CPU; with triton, where it launches: CUDA, or the CPU under the interpreter),
    with the compiled kernel and the weight's tensors bound once (what `quantized_linear` runs for these
    arguments, minus its per-call checks and conversions: the executor's hot path). w_a16 weights and the
    int8-activation GEMV (`kernel`); W4A8 schemes go through `quantized_linear_int8`. `kernel` names a kernel as
    `quantized_linear`'s does, and `config` forces its tiles and options (not the int8-activation GEMV's: its
    plan chains several kernels, each with its own default)."""
    backend = select_backend(backend)
    if kernel == A8_KERNEL:
        if config is not None:
            raise ValueError(f"config is for one kernel; {A8_KERNEL} runs a plan of several: pass config=None")
        return a8_plan(qw, m, backend, adtype).launcher
    if qw.scheme != "w_a16":
        raise ValueError(f"linear_launcher takes w_a16 weights; {qw.scheme} activations go through int8 kernels")
    n = qw.shape[0]
    x16 = backend == "tvm" and kernel is None and config is None and x16_serves(qw, m, adtype, tvm_int8_dot())
    if x16 and n % X16_BN == 0:  # whole x16 column tiles: no padded copy (`x16_weight`'s is then the only one)
        return x16_plan(qw, m, adtype)  # 2-4-bit codes, 16-bit x on int8 dots (`lowbit.ops.x16`)
    if backend == "tvm" and n % CPU_PAD_N:  # (a ragged x16 weight too: its padded copy takes the branch above)
        padded = cpu_padded(qw, adtype)
        return PaddedLaunch(linear_launcher(padded, m, backend, adtype, kernel, config), m, n, padded.shape[0])
    if backend == "triton":  # the weight's copy where Triton launches: x2 / y2 live there too, nothing converts
        from lowbit.codegen.triton.runtime import DEVICE

        fixed, args = _a16_arguments(qw, device_weight(qw, DEVICE), None, None, m, adtype)
    else:
        fixed, args = _arguments(qw, np.zeros((m, qw.shape[1]), np.float32), None, None, adtype, backend)
    bound = {name: v for name, v in args.items() if name not in ("x", "y")}
    return bind(_compiled(qw, m, backend, adtype, fixed, args, False, config, kernel), bound, ("x", "y"))


def cpu_padded(qw: QuantizedWeight, adtype: str) -> QuantizedWeight:
    """`qw` with N padded to a multiple of CPU_PAD_N (`pad_columns`), in the layout `cpu_weight` gives for
    `adtype`; kept on `qw` (only the kernel-layout copy: the padded row-layout one is dropped)."""
    slot = f"_cpu_padded_{adtype}"
    padded = qw.__dict__.get(slot)
    if padded is None:
        n = qw.shape[0]
        padded = qw.__dict__[slot] = cpu_weight(pad_columns(qw, -(-n // CPU_PAD_N) * CPU_PAD_N), adtype)
    return padded


def plans_of(qw: QuantizedWeight) -> dict[Any, Any]:
    """The compiled kernels and plans kept on `qw` (its `_plans`: bound launchers, x16 / a8 plans, compiled
    kernels) and on its padded copies (`cpu_padded`: a ragged N runs there), by key; for inspecting which kernel
    ran."""
    held = [qw, *(v for k, v in qw.__dict__.items() if k.startswith("_cpu_padded_"))]
    return {key: plan for w in held for key, plan in w.__dict__.get("_plans", {}).items()}


class PaddedLaunch:
    """`launch(x2, y2)` of a weight whose N is ragged for the CPU kernels' tiles: `inner` (the launcher of the
    padded copy, `cpu_padded`) writes this thread's [m, n_pad] scratch, then y2 takes its first n columns. A
    decode step being recorded for replay (`RECORDING`) gets the copy as a call of its own after the kernel's."""

    def __init__(self, inner: Callable[[Any, Any], None], m: int, n: int, n_pad: int):
        from lowbit.codegen.tvm.runtime import RECORDING

        self.inner, self.m, self.n, self.n_pad = inner, m, n, n_pad
        self._recording = RECORDING
        self._scratch = threading.local()

    def __call__(self, x2: Any, y2: Any) -> None:
        scratch = self._scratch.__dict__.setdefault("by_dtype", {})
        yp = scratch.get(y2.dtype)
        if yp is None:  # this thread's first call with this dtype
            import torch

            yp = scratch[y2.dtype] = torch.empty((self.m, self.n_pad), dtype=y2.dtype)
        self.inner(x2, yp)
        used = yp[:, : self.n]
        y2.copy_(used)
        recorded, names = self._recording.calls, self._recording.names
        if recorded is not None and names is not None:  # replayed after the inner launch's own record
            recorded.append((y2.copy_, (used,)))
            names.append("padded columns' copy (torch)")

    def flat(self, x: Any, y: Any) -> None:
        """`__call__` on flat (1-D) x and y (`quantized_linear`'s fast path)."""
        self(x.view(self.m, -1), y.view(self.m, self.n))


def bound_launcher(
    qw: QuantizedWeight, m: int, adtype: str, kernel: str | None = None, config: Config | None = None
) -> Callable[[Any, Any], None]:
    """`linear_launcher(qw, m, "tvm", adtype, kernel, config)`, made once per (m, adtype, kernel, config) and
    kept on the weight."""
    plans = qw.__dict__.setdefault("_plans", {})
    key = ("bound", m, adtype, runs_persistent("tvm"), *((kernel, config) if kernel or config else ()))
    launch = plans.get(key)
    if launch is None:
        launch = plans[key] = linear_launcher(qw, m, "tvm", adtype, kernel, config)
    return launch


def _torch_empty(shape: tuple[int, ...], like: Any) -> Any:
    import torch

    return torch.empty(shape, dtype=like.dtype, device=like.device)


def a8_plan(qw: QuantizedWeight, m: int, backend: str, adtype: str) -> A8Plan:
    """The cached `A8Plan` of `qw` for M rows (kept on the weight, like the other kernels' plans): one per
    M <= GEMV_MAX_M, one for every larger M (rows per call)."""
    plans = qw.__dict__.setdefault("_plans", {})
    rows = m if m <= GEMV_MAX_M else None
    key = (rows, backend, adtype, "a8")
    plan = plans.get(key)
    if plan is None:
        plan = plans[key] = A8Plan(qw, rows, backend, adtype)
    return plan


def _run_a8(x: Any, qw: QuantizedWeight, m: int, backend: str, adtype: str, is_torch: bool) -> np.ndarray:
    # y2 [M, N] numpy (bf16 as ml_dtypes) of the a8 path for x [..., K]: NumPy x, the reference backend or
    # M = 0 (torch x on a compiled backend stays torch in `quantized_linear`)
    n, k = qw.shape
    if m == 0:
        return np.zeros((0, n), _host(x, is_torch).dtype)
    plan = a8_plan(qw, m, backend, adtype)
    if backend == "reference":
        x2 = _host(x, is_torch).reshape(m, k)
        y2 = np.zeros((m, n), x2.dtype)
        plan.run(x2, y2)
        return y2
    import torch

    # NumPy in (bf16 as ml_dtypes): a torch copy in the activation dtype
    xt = torch.from_numpy(np.asarray(x).reshape(m, k).astype(np.float32)).to(getattr(torch, adtype))
    y = torch.empty((m, n), dtype=xt.dtype)
    plan.run(xt, y)
    return _host(y, True)


def _compiled(
    qw: QuantizedWeight,
    m: int,
    backend: str,
    io: str,
    fixed: dict,
    args: dict,
    tune: bool = False,
    config: Config | None = None,
    named: str | None = None,
) -> Any:
    # the compiled `select_kernel(qw, m)` (or the kernel `named`: FMA_KERNEL) for this backend and io dtypes
    # ("float16", "int8->float32", ...), looked up once and kept on the weight (a decode step calls this per
    # layer per token: Python overhead must stay far below the kernel); under a nano-batch plan's share the
    # persistent form (`runs_persistent`)
    persistent = runs_persistent(backend)
    plans = qw.__dict__.setdefault("_plans", {})
    key = (m, backend, io, bool(tune), config, persistent, named)
    compiled = plans.get(key)
    if compiled is None:
        kernel = _BY_NAME.get(named) or select_kernel(qw, m, adtype=io, backend=backend)
        cfg = config or _choose_config(kernel, fixed, args, backend, tune, m, qw)
        options = {**cfg.option_dict, **inbounds_option(cfg, args, backend)}
        if persistent:  # the plan's share of the device bounds the programs: no split-K grid on top of it
            options.pop("split_k", None)
            compiled = PersistentLauncher(kernel, {**fixed, **cfg.constant_dict}, backend, options)
        else:
            compiled = compile_program(kernel.trace(**fixed, **cfg.constant_dict), backend, options)
        plans[key] = compiled
    return compiled


def inbounds_option(cfg: Config, args: Mapping[str, Any], backend: str) -> dict[str, Any]:
    """Triton's `inbounds` option for a library GEMM/GEMV launch: the sizes among M, N, K that their tiles
    (BM, BN, BK) divide. Every library linear kernel walks K in whole BK steps from 0 and tiles M and N from 0,
    so no tile crosses those sizes' ends and their masks are left out (lowbit.codegen.triton.lower, OPTIONS).
    Empty for other backends, or when the config sets it itself."""
    if backend != "triton" or "inbounds" in cfg.option_dict:
        return {}
    tiles = cfg.constant_dict
    even = tuple(s for s, t in (("M", "BM"), ("N", "BN"), ("K", "BK")) if t in tiles and int(args[s]) % tiles[t] == 0)
    return {"inbounds": even}


def tvm_cuda_kernel(
    qw: QuantizedWeight,
    m: int,
    io: str,
    fixed: dict,
    args: dict,
    config: Config | None = None,
    named: str | None = None,
) -> Any:
    """The TVM backend's CUDA build of the kernel `scheme_kernel` picks for `qw` and M rows (the GPU's rule:
    the GEMV up to 16 rows, else the GEMM; W4A8 schemes their kernels; `named` FMA_KERNEL: the dot-free
    GEMV), on the weight's row layout, with `spaces.tvm_cuda_default` tiles unless `config` is given (option
    target "cuda" added); kept on the weight.
    `fixed` / `args` as `_device_arguments` builds them (their sizes choose the tiles)."""
    plans = qw.__dict__.setdefault("_plans", {})
    key = (m, "tvm:cuda", io, config, named)
    compiled = plans.get(key)
    if compiled is None:
        kernel = _BY_NAME.get(named) or _half_safe(scheme_kernel(qw.scheme, m), qw, io)
        problem = {"M": m, "N": args["N"], "K": args["K"], "G": fixed.get("G", -1), "wdtype": fixed["wdtype"]}
        cfg = config or tvm_cuda_default(kernel.name, problem)
        options = {**cfg.option_dict, "target": "cuda"}
        compiled = plans[key] = compile_program(kernel.trace(**fixed, **cfg.constant_dict), "tvm", options)
    return compiled


def _kernel_io(x: Any, x2: np.ndarray, is_torch: bool, backend: str, n: int) -> tuple[Any, Any]:
    # the interpreter takes numpy (bf16 as ml_dtypes); compiled backends get torch tensors where numpy has no
    # dtype for them (bf16) or the input already is one (kept on its device)
    m = x2.shape[0]
    host = x2.dtype
    if backend == "reference" or not (is_torch or str(host) == "bfloat16"):
        return x2, np.zeros((m, n), host)
    import torch

    xa = x.reshape(m, x2.shape[1]) if is_torch else torch.from_numpy(x2.astype(np.float32)).to(torch.bfloat16)
    return xa, torch.zeros((m, n), dtype=xa.dtype, device=xa.device)


def _kernel_layout(qw: QuantizedWeight) -> PackedLayout | Any:
    # cached on the weight: comparing layouts costs more than a decode-step kernel
    wlayout = qw.__dict__.get("_wlayout")
    if wlayout is None:
        n, k = qw.shape
        wlayout = ROW_PACKED if qw.layout == row_packed((k, n), qw.dtype.bits) else qw.layout
        qw.__dict__["_wlayout"] = wlayout
    return wlayout


def _on_launch_device(x: Any, backend: str) -> bool:
    """Whether torch tensor `x` lies where the Triton backend launches (cuda natively, cpu interpreted)."""
    if backend != "triton":
        return False
    from lowbit.codegen.triton.runtime import DEVICE

    return bool(x.device.type == DEVICE)


def device_weight(qw: QuantizedWeight, device: Any) -> dict[str, Any]:
    """`qw`'s arrays as torch tensors on `device` in the kernels' element form (words as signed ints of the
    word width), copied once and kept on the weight: {"words", "scales", "zeros", "channel_scales"} (None
    where the weight has none)."""
    import torch

    slot = f"_on_{torch.device(device)}"
    cached = qw.__dict__.get(slot)
    if cached is None:
        signed = {np.dtype(np.uint8): np.int8, np.dtype(np.uint16): np.int16, np.dtype(np.uint32): np.int32}

        def put(a: Any) -> Any:
            if a is None:
                return None
            a = np.ascontiguousarray(a)
            a = a.view(signed[a.dtype]) if a.dtype in signed else a
            return torch.from_numpy(a).to(device)

        cached = {
            "words": put(qw.words),
            "scales": put(qw.scales),
            "zeros": put(qw.zeros),
            "channel_scales": put(qw.channel_scales),
        }
        qw.__dict__[slot] = cached
    return cached


def quantize_per_token_int8_torch(x: Any) -> tuple[Any, Any]:
    """`lowbit.quant.quantize_per_token_int8` on a torch tensor where it lies, bit for bit: (qa [M, K] int8,
    sa [M] float16). The scale's rounding and guards are storage_scale's (0 -> 1, an fp16 underflow -> the
    smallest subnormal, overflow -> 65504); no finiteness check (it would synchronize the device): a row
    with NaN or inf gets a NaN scale, so its output is NaN (F.linear's is non-finite too), not the finite
    result of a clamped scale."""
    import torch

    x32 = x.float()
    raw = x32.abs().amax(dim=-1).double() / 127.0  # [M]
    s = raw.to(torch.float16)
    s = torch.where(raw == 0, torch.ones_like(s), s)
    s = torch.where(s == 0, torch.full_like(s, 2.0**-24), s)
    s = torch.minimum(s, torch.full_like(s, 65504.0))
    s = torch.where(torch.isinf(raw), torch.full_like(s, float("nan")), s)  # NaN stays NaN through the above
    qa = torch.clamp(torch.round(x32 / s.float()[:, None]), -127, 127).to(torch.int8)
    return qa, s


@functools.cache
def _row_quantizer(adtype: str, bk: int) -> Any:
    """`quantize_rows_int8` traced and compiled for Triton, once per (x dtype, BK)."""
    return compile_program(quantize_rows_int8.trace(adtype=adtype, BM=1, BK=bk), "triton")


def quantize_rows_triton(x: Any) -> tuple[Any, Any]:
    """`lowbit.quant.quantize_per_token_int8` of torch x [M, K] where Triton launches (a CUDA GPU; the CPU
    under the interpreter), bit for bit, by one fused kernel (`kernels.quantize_rows_int8`: a pass for each
    row's extremes, one for its codes) instead of `quantize_per_token_int8_torch`'s dozen elementwise launches,
    each a full pass over x: (qa [M, K] int8, sa [M] float32 holding the float16 scales; a non-finite row:
    codes 0 and a NaN scale)."""
    import torch

    m, k = (int(n) for n in x.shape)
    adtype = str(x.dtype).removeprefix("torch.")
    bk = min(2048, 1 << max(4, (k - 1).bit_length()))  # a power of two (Triton's tiles): all of K up to 2048
    kernel = _row_quantizer(adtype, bk)
    qa = torch.empty((m, k), dtype=torch.int8, device=x.device)
    sa = torch.empty((m,), dtype=torch.float32, device=x.device)
    if m:
        kernel({"x": x, "qa": qa, "sa": sa, "M": m, "K": k})
    return qa, sa


def _device_arguments(qw: QuantizedWeight, x: Any, y: Any, adtype: str, backend: str) -> tuple[dict, dict]:
    # `_arguments` for torch x [M, K] and y [M, N] on the launch device, with the weight's device copy; W4A8
    # activations quantized per token there (Triton: one fused kernel; TVM's CUDA kernels: torch's ops)
    arrays = device_weight(qw, x.device)
    if qw.scheme == "w_a16":
        return _a16_arguments(qw, arrays, x, y, x.shape[0], adtype)
    if backend == "triton":
        qa, sa = quantize_rows_triton(x)
    else:
        qa, sa16 = quantize_per_token_int8_torch(x)
        sa = sa16.float()
    return _w4a8_arguments(qw, arrays, qa, sa, y, adtype)


def _host_arrays(qw: QuantizedWeight) -> dict[str, Any]:
    """`qw`'s NumPy arrays under `device_weight`'s names."""
    return {"words": qw.words, "scales": qw.scales, "zeros": qw.zeros, "channel_scales": qw.channel_scales}


def _a16_arguments(qw: QuantizedWeight, a: dict[str, Any], x: Any, y: Any, m: int, adtype: str) -> tuple[dict, dict]:
    # a w_a16 kernel's constants and arguments, the weight's arrays `a` where the kernel reads them
    n, k = qw.shape
    fixed = {
        "wdtype": qw.dtype.name,
        "G": qw.group_size,
        "zero_mode": qw.zero_mode,
        "adtype": adtype,
        "sdtype": str(qw.scales.dtype),
        "wlayout": _kernel_layout(qw),
    }
    args = {"x": x, "w": a["words"], "scales": a["scales"], "y": y, "M": m, "N": n, "K": k}
    if qw.zeros is not None:
        args["zeros"] = a["zeros"]
    return fixed, args


def _arguments(qw: QuantizedWeight, x2: np.ndarray, x: Any, y: Any, adtype: str, backend: str) -> tuple[dict, dict]:
    # fixed DSL constants and runtime arguments for the kernel that `select_kernel` picks;
    # x2 is x as numpy (for the activation quantizer), x and y what the backend reads and writes
    if backend == "tvm":
        qw = cpu_weight(qw, adtype)
    if qw.scheme == "w_a16":
        return _a16_arguments(qw, _host_arrays(qw), x, y, x2.shape[0], adtype)
    qa, sa = _quantize_tokens(x2)
    return _w4a8_arguments(qw, _host_arrays(qw), qa, sa, y, adtype)


def _quantize_tokens(x2: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """`quantize_per_token_int8` of x [M, K] (int8 codes, float32 scales), but a row holding a NaN or an inf gets
    codes 0 and a NaN scale: its output row is NaN, as on the device (`quantize_per_token_int8_torch`) and in
    F.linear, where the quantizer alone would refuse the whole batch."""
    x32 = x2.astype(np.float32)
    bad = np.asarray(~np.isfinite(x32).all(axis=1))  # [M]
    if bad.any():
        x32 = np.where(bad[:, None], np.float32(0), x32)
    qa, sa = quantize_per_token_int8(x32)  # [M, K] int8, [M] fp16
    sa32 = sa.astype(np.float32)
    sa32[bad] = np.nan
    return qa, sa32


def _w4a8_arguments(qw: QuantizedWeight, a: dict[str, Any], qa: Any, sx: Any, y: Any, ydtype: str) -> tuple[dict, dict]:
    # a W4A8 kernel's constants and arguments: the weight's arrays `a` (`_host_arrays` / `device_weight`),
    # int8 activations qa [M, K] and their float32 scales sx [M]
    n, k = qw.shape
    sizes = {"M": qa.shape[0], "N": n, "K": k}
    fixed = {"wdtype": qw.dtype.name, "ydtype": ydtype, "sdtype": "float16", "wlayout": _kernel_layout(qw)}
    args = {"xq": qa, "sx": sx, "w": a["words"], "y": y, **sizes}
    assert a["zeros"] is not None
    if qw.scheme == "w4a8_group":
        fixed["G"] = _a8_group(qw.group_size, k)  # per channel (-1): one group of K rows, the kernel's G = K
        args.update(s2=a["scales"], z2=a["zeros"], s1=a["channel_scales"])
    else:
        args.update(zeros=a["zeros"][0], scales=a["scales"][0])
    return fixed, args


def _choose_config(
    kernel: Kernel, fixed: dict, args: dict, backend: str, tune: bool, m: int, weight: Any = None
) -> Config:
    problem = {
        "M": m,
        "N": args["N"],
        "K": args["K"],
        "G": fixed.get("G", -1),
        "wdtype": fixed["wdtype"],
        "adtype": fixed.get("adtype", "int8"),
    }
    if tune and backend != "reference":  # the interpreter's speed means nothing: keep its default
        key = (kernel.name, backend, freeze({k: v for k, v in fixed.items() if k != "wlayout"}), problem["N"], m)
        if key not in _TUNED:
            try:
                from lowbit.codegen.tune import tune as run_tuner  # written alongside; imported on demand
            except ImportError as e:
                raise ValueError(f"tune=True needs lowbit.codegen.tune.tune, which is unavailable ({e})") from e
            _TUNED[key] = run_tuner(kernel, fixed, args, backend, space(kernel.name, backend)).best
        return _TUNED[key]
    pinned = pinned_config(weight, kernel.name, backend, fixed, m)  # tuned at compile, shipped in the artifact
    if pinned is not None:
        return pinned
    try:
        return default_config(kernel.name, backend, problem)
    except ValueError:  # an unusual group size (e.g. 40): one group per K step always fits
        g = problem["G"]
        base = space(kernel.name, backend).default
        bk = g if g != -1 else 32
        if backend == "triton" and g != -1:
            # Triton tiles are powers of two: K steps of the largest one dividing the group (slices of a group
            # share its scale), if the GPU's dot takes it (the tensor-core minimum K; the interpreter takes any)
            bk, least = g & -g, 32 if kernel.name.startswith("w4a8") else 16
            if bk < least and native_triton():
                raise ValueError(
                    f"group_size {g} on backend 'triton': its largest power-of-two divisor {bk} is below the "
                    f"dot's minimum K of {least} (Triton tiles are powers of two); use a group size that is a "
                    f"multiple of {least} (e.g. {', '.join(str(least * i) for i in (1, 2, 3, 4))}) or "
                    "backend='tvm' / 'reference'"
                ) from None
        return Config.make({**base.constant_dict, "BK": bk}, base.option_dict)


# ---- numpy / torch plumbing ---------------------------------------------------------------------------


def _has_module(name: str) -> bool:
    try:
        return importlib.util.find_spec(name) is not None
    except ModuleNotFoundError:
        return False


def _cuda() -> bool:
    try:
        import torch
    except ImportError:
        return False
    return bool(torch.cuda.is_available())


def _is_torch(x: Any) -> bool:
    return type(x).__module__.startswith("torch")


def _check_contiguous(what: str, x: Any, is_torch: bool) -> None:
    ok = x.is_contiguous() if is_torch else x.flags.c_contiguous
    if not ok:
        raise ValueError(
            f"{what} is not contiguous (strides {x.stride() if is_torch else x.strides}); pass "
            f"{what}.contiguous() (torch) or np.ascontiguousarray({what})"
        )


def _host(x: Any, is_torch: bool) -> np.ndarray:
    if not is_torch:
        return np.asarray(x)
    name = str(x.dtype).removeprefix("torch.")
    t = x.detach().cpu()
    if name == "bfloat16":  # numpy has no bf16: go through float32 (exact) to ml_dtypes.bfloat16
        return t.float().numpy().astype(as_dtype("bfloat16").host_dtype)
    return t.numpy()


def _like(y: np.ndarray, x: Any, is_torch: bool) -> Any:
    if not is_torch:
        return y
    import torch

    if y.dtype == as_dtype("bfloat16").host_dtype:
        return torch.from_numpy(y.astype(np.float32)).to(device=x.device, dtype=torch.bfloat16)
    return torch.from_numpy(y).to(x.device)


__all__ = [
    "A8_KERNEL",
    "GEMV_MAX_M",
    "A8Plan",
    "a8_ineligible",
    "a8_plan",
    "a8_reason",
    "a8_weight",
    "bound_launcher",
    "cpu_weight",
    "default_linear_config",
    "linear_launcher",
    "linear_problem",
    "quantized_linear",
    "quantized_linear_int8",
    "scheme_kernel",
    "select_backend",
    "select_kernel",
]
