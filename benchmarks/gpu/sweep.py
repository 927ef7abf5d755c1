"""Sweep the Triton configs of lowbit's GPU linear kernels on the device (an H200 through the `device` tool):
for the issue's GPU goal shapes, time each config of a small grid side by side with torch bf16 `F.linear` and
the kernel's default (`spaces.gpu_default`), and report the best per shape. What `lowbit bench gemm --tune`
does per row, but over a chosen grid with the codegen options (`magic_cast`, `inbounds`) A/B'd on the best,
inside one device call's time limit. Every config's output is checked against x @ dequant(W)^T in float64.

    python3 benchmarks/gpu/sweep.py --out DIR [--budget 420]

Weights are streamed: each timed call reads another copy of the weight from a ring larger than the L2
(`ring_copies`), and each sample is a CUDA-graph replay of the ring (no launch cost), as in the bench.
Writes DIR/sweep.json (`--grid tiles`; other grids DIR/sweep_<grid>.json: every trial) and prints the table of
the best configs last.
"""

from __future__ import annotations

import argparse
import functools
import itertools
import json
import math
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from lowbit.bench.gemm import _copy
from lowbit.codegen.backend import Config
from lowbit.codegen.tune.timing import benchmark_ring, ring_copies
from lowbit.ops import quantize, quantized_linear

LAYERS = ((8192, 8192), (28672, 8192))
GROUP = 128


def grid(kind: str, m: int) -> list[Config]:
    """The configs tried for `kind` ("gemv", "gemm", "w4a8") at M = m."""
    out = []
    if kind == "fma":  # the dot-free GEMV (kernel="quantized_gemv_fma"): only points its space keeps
        from lowbit.kernels.spaces import FMA, space

        sp = space(FMA, "triton")
        problem = {"M": m, "N": 8192, "K": 8192, "G": GROUP, "wdtype": "int4", "adtype": "float16"}
        bm = min(4, 1 << (m - 1).bit_length())
        for bn, bk, w, s in itertools.product((32, 64, 128), (64, 128, 256), (4, 8), (3, 4)):
            cfg = Config.make({"BM": bm, "BN": bn, "BK": bk}, {"num_warps": w, "num_stages": s, "codes_last": True})
            if sp.check(cfg, problem) is None:
                out.append(cfg)
        return out
    if kind == "gemv":
        for bn, bk, w, s in itertools.product((32, 64, 128), (128, 256), (4, 8), (3, 4)):
            out.append(Config.make({"BM": 16, "BN": bn, "BK": bk}, {"num_warps": w, "num_stages": s}))
        out.append(Config.make({"BM": 16, "BN": 16, "BK": 256}, {"num_warps": 4, "num_stages": 4}))
        return out
    bms = (64,) if m <= 64 else (64, 128)
    for bm, bn, bk, w, s in itertools.product(bms, (64, 128), (64, 128), (4, 8), (3, 4)):
        out.append(Config.make({"BM": bm, "BN": bn, "BK": bk}, {"num_warps": w, "num_stages": s}))
    return out


def deep_grid(kind: str, m: int) -> list[Config]:
    """Long K steps (--grid deep): does a program's chain of dependent K steps, not the bytes, bound the GEMV?
    (K = 8192 in steps of 256 is 32 loads each waited for in turn; num_stages changed nothing in the first
    sweep.) Fewer, longer steps for the same grid; the GEMM at M = 64 likewise."""
    if kind == "gemv":
        return [
            Config.make({"BM": 16, "BN": bn, "BK": bk}, {"num_warps": w, "num_stages": 3})
            for bn, bk, w in itertools.product((32, 64, 128), (256, 512, 1024), (4, 8))
        ]
    if kind == "gemm" and m == 64:
        return [
            Config.make({"BM": 64, "BN": bn, "BK": bk}, {"num_warps": w, "num_stages": 3})
            for bn, bk, w in itertools.product((64, 128), (128, 256), (4, 8))
        ]
    return []


def ab_grid(kind: str, m: int, n: int, k: int) -> list[Config]:
    """--grid ab: the default config (`spaces.gpu_default`) with and without the codegen option codes_last
    (a packed tile split along its last axis by a tree of tl.join), side by side."""
    from lowbit.kernels.launch import device_units
    from lowbit.kernels.spaces import gpu_default

    name = {"gemv": "quantized_gemv", "gemm": "quantized_gemm", "w4a8": "w4a8_gemm_per_group"}[kind]
    problem = {"M": m, "N": n, "K": k, "G": GROUP, "wdtype": "uint4" if kind == "w4a8" else "int4"}
    cfg = gpu_default(name, problem, device_units())
    return [Config.make(cfg.constant_dict, {**cfg.option_dict, "codes_last": v}) for v in (True, False)]


def split_grid(kind: str, m: int, n: int, k: int) -> list[Config]:
    """--grid split: the default config (`spaces.gpu_default`) of the GEMV (M <= 16), the dot-free GEMV and the
    64-row GEMM, and its column tile halved and doubled, each with the reduction split over 1-16 programs
    (compile option split_k: `lowbit.ir.passes.split_k`, partials summed by a second kernel). At 8192² the
    default GEMV grid is 256 programs (two per SM): is it short of warps in flight?"""
    from lowbit.kernels.launch import device_units
    from lowbit.kernels.spaces import FMA, gpu_default, space

    name = {"gemv": "quantized_gemv", "gemm": "quantized_gemm", "fma": FMA}[kind]
    problem = {"M": m, "N": n, "K": k, "G": GROUP, "wdtype": "int4", "adtype": "float16"}
    base = gpu_default(name, problem, device_units())
    sp, out = space(name, "triton"), []
    for bn in sorted({max(32, base.constant_dict["BN"] // 2), base.constant_dict["BN"], base.constant_dict["BN"] * 2}):
        for split in (1, 2, 4, 8, 16) if kind != "gemm" else (1, 2, 4):
            cfg = Config.make({**base.constant_dict, "BN": bn}, {**base.option_dict, "split_k": split})
            if sp.check(cfg, problem) is None:
                out.append(cfg)
    return out


def fold_grid(kind: str, m: int, n: int, k: int) -> list[Config]:
    """--grid fold: the dot-free GEMV's default config (`spaces.gpu_default`, M = 1) in both forms, FOLD 0 and
    the folded FOLD 4 (`lowbit.kernels.gemv_fma`: sm_90 5.07 against 6.29 SASS instructions a code, 80 against
    168 registers), each at splits 4 / 8 / 16 (the folded form's lower register count admits more programs
    per SM); 128 columns with 8 warps folded too."""
    from lowbit.kernels.launch import device_units
    from lowbit.kernels.spaces import FMA, gpu_default, space

    problem = {"M": m, "N": n, "K": k, "G": GROUP, "wdtype": "int4", "adtype": "float16"}
    base = gpu_default(FMA, problem, device_units())
    sp, out = space(FMA, "triton"), []
    variants = [(0, base.constant_dict["BN"], None), (4, base.constant_dict["BN"], None), (4, 128, 8)]
    for fold, bn, warps in variants:
        for split in (4, 8, 16):
            opts = {**base.option_dict, "split_k": split, **({"num_warps": warps} if warps else {})}
            cfg = Config.make({**base.constant_dict, "BN": bn, "FOLD": fold}, opts)
            if sp.check(cfg, problem) is None:
                out.append(cfg)
    return out


def swap_grid(kind: str, m: int, n: int, k: int) -> list[Config]:
    """--grid swap: the tensor-core GEMV's default config (`spaces.gpu_default`, M = 4 and 16) beside its swapped
    dot (`lowbit.kernels.gemv` SWAP 1: yᵀ = Wᵀ·xᵀ, sm_90 warpgroup MMAs, 5.02 against 9.20 SASS instructions a
    code at BN 64 with codes_last) at 64 and 128 columns, split-K 1 / 2 / 4."""
    from lowbit.kernels.launch import device_units
    from lowbit.kernels.spaces import gpu_default, space

    problem = {"M": m, "N": n, "K": k, "G": GROUP, "wdtype": "int4", "adtype": "float16"}
    base = gpu_default("quantized_gemv", problem, device_units())
    sp, out = space("quantized_gemv", "triton"), [base]
    for bn in (64, 128):
        for split in (1, 2, 4):
            opts = {**base.option_dict, "codes_last": True, "split_k": split}
            cfg = Config.make({**base.constant_dict, "BN": bn, "SWAP": 1}, opts)
            if sp.check(cfg, problem) is None:
                out.append(cfg)
    return out


def w4a8_grid(kind: str, m: int) -> list[Config]:
    """--grid w4a8: taller and wider int8 tiles for the W4A8 GEMM at M >= 1024 (session 30: 0.38-0.61x torch
    bf16 at 128 x 128 x 128). Each decoded [BK, BN] weight tile (shift, mask, multiply, subtract per code)
    feeds BM rows of int8 MMA: 256 rows halve the decode per MMA. Shared memory at 3 stages, 256 x 256 x 128:
    3 x (32 + 16) KiB."""
    if kind != "w4a8":
        return []
    return [
        Config.make({"BM": bm, "BN": bn, "BK": bk}, {"num_warps": w, "num_stages": 3})
        for bm, bn, bk, w in itertools.product((128, 256), (128, 256), (64, 128), (4, 8))
    ]


def variants(cfg: Config) -> list[Config]:
    """The codegen-option A/B of a config: the int->fp16 conversion instruction, and the tile masks kept."""
    o = cfg.option_dict
    return [
        Config.make(cfg.constant_dict, {**o, "magic_cast": False}),
        Config.make(cfg.constant_dict, {**o, "inbounds": ()}),
    ]


def measure_bandwidth() -> float:
    """GB/s of a 2 GiB device-to-device copy (bytes read + written), best of 10."""
    a = torch.empty(1 << 29, dtype=torch.float32, device="cuda")
    b = torch.empty_like(a)
    best = math.inf
    for _ in range(12):
        e0, e1 = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        e0.record()
        b.copy_(a)
        e1.record()
        torch.cuda.synchronize()
        best = min(best, e0.elapsed_time(e1))
    return 2 * a.numel() * 4 / (best * 1e-3) / 1e9


def time_ring(fns) -> float:
    return float(np.median(benchmark_ring(fns, repeats=10, warmup=2, device="cuda", graph=True).samples))


def rel_error(y: torch.Tensor, ref: torch.Tensor) -> float:
    e = float(torch.linalg.norm(y.double() - ref) / torch.linalg.norm(ref))
    return e if math.isfinite(e) else math.inf


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default=".")
    ap.add_argument("--budget", type=float, default=420.0, help="seconds; sections still to run are skipped after")
    ap.add_argument("--layers", default=",".join(f"{n}x{k}" for n, k in LAYERS))
    ap.add_argument(
        "--grid",
        choices=("tiles", "deep", "ab", "fma", "split", "w4a8", "fold", "swap"),
        default="tiles",
        help="deep: long K steps (`deep_grid`); fma: the dot-free GEMV's tiles beside the GEMV's default, M = 1, 4; "
        "split: split-K of the GEMVs and the 64-row GEMM (`split_grid`); w4a8: big int8 tiles (`w4a8_grid`); "
        "fold: the dot-free GEMV's folded form against its default at M = 1 (`fold_grid`); swap: the GEMV's swapped "
        "dot at M = 4, 16 (`swap_grid`)",
    )
    a = ap.parse_args()
    t_start = time.perf_counter()
    layers = [tuple(int(v) for v in s.split("x")) for s in a.layers.split(",")]
    bw = measure_bandwidth()
    print(f"# {torch.cuda.get_device_name()} torch {torch.__version__} | copy bandwidth {bw:.0f} GB/s", flush=True)
    trials, best_rows = [], []
    gen = torch.Generator().manual_seed(0)
    for n, k in layers:
        if time.perf_counter() - t_start > a.budget:
            print(f"budget spent: layer {n}x{k} skipped")
            continue
        w = torch.randn(n, k, generator=gen) * 0.02
        t0 = time.perf_counter()
        q4 = quantize(w.numpy(), "int4", GROUP)
        qa8 = quantize(w.numpy(), "uint4", GROUP, scheme="w4a8_group")
        print(f"layer {n}x{k}: quantized in {time.perf_counter() - t0:.1f} s", flush=True)
        refs = {
            "int4": torch.as_tensor(np.asarray(q4.dequantize(), np.float32)).cuda(),
            "w4a8": torch.as_tensor(np.asarray(qa8.dequantize(), np.float32)).cuda(),
        }
        nbytes4 = n * k // 2 + n * (k // GROUP) * 2
        rings = {
            "int4": [q4] + [_copy(q4) for _ in range(ring_copies(nbytes4, "cuda") - 1)],
            "w4a8": [qa8] + [_copy(qa8) for _ in range(ring_copies(nbytes4, "cuda") - 1)],
        }
        w16 = w.to(torch.bfloat16).cuda()
        bf16_ring = [w16] + [w16.clone() for _ in range(ring_copies(n * k * 2, "cuda") - 1)]
        sections = [("gemv", 1), ("gemv", 16), ("gemm", 64), ("gemm", 256), ("w4a8", 1024), ("w4a8", 4096)]
        if a.grid == "deep":
            sections = [("gemv", 1), ("gemm", 64)]
        if a.grid == "fma":
            sections = [("fma", 1), ("gemv", 1), ("fma", 4), ("gemv", 4)]
        if a.grid == "split":
            sections = [("gemv", 1), ("fma", 1), ("gemv", 16), ("gemm", 64)]
        if a.grid == "w4a8":
            sections = [("w4a8", 1024), ("w4a8", 4096)]
        if a.grid == "fold":
            sections = [("fma", 1)]
        if a.grid == "swap":
            sections = [("gemv", 4), ("gemv", 16)]
        for kind, m in sections:
            if time.perf_counter() - t_start > a.budget:
                print(f"budget spent: {kind} M={m} {n}x{k} skipped", flush=True)
                continue
            x = torch.randn(m, k, device="cuda", dtype=torch.float16)
            xb = x.to(torch.bfloat16)
            key = "w4a8" if kind == "w4a8" else "int4"
            ref = x.double() @ refs[key].double().T
            t_bf16 = time_ring([functools.partial(F.linear, xb, wb) for wb in bf16_ring])

            named = {"kernel": "quantized_gemv_fma"} if kind == "fma" else {}

            def run(cfg, ring=rings[key], x=x, ref=ref, named=named):
                try:
                    y = quantized_linear(x, ring[0], backend="triton", config=cfg, **named)
                    torch.cuda.synchronize()
                    err = rel_error(y, ref)
                    fns = [
                        functools.partial(quantized_linear, x, q, backend="triton", config=cfg, **named) for q in ring
                    ]
                    return time_ring(fns), err, ""
                except Exception as e:  # a config the compiler rejects: a row, not the end of the sweep
                    return math.inf, math.inf, f"{type(e).__name__}: {str(e).splitlines()[0][:160]}"

            t_default, e_default, why = run(None)
            rows = []
            if a.grid == "ab":
                configs = ab_grid(kind, m, n, k)
            elif a.grid == "deep":
                configs = deep_grid(kind, m)
            elif a.grid == "split":
                configs = split_grid(kind, m, n, k)
            elif a.grid == "w4a8":
                configs = w4a8_grid(kind, m)
            elif a.grid == "fold":
                configs = fold_grid(kind, m, n, k)
            elif a.grid == "swap":
                configs = swap_grid(kind, m, n, k)
            elif a.grid == "fma" and kind == "gemv":
                configs = []  # the GEMV's default only: the reference the dot-free form is measured against
            else:
                configs = grid(kind, m)
            for cfg in configs:
                t, err, why = run(cfg)
                rows.append((t, err, cfg, why))
                if a.grid in ("ab", "split", "w4a8"):
                    print(f"  {kind} M={m} {cfg}: {t * 1e3:.1f} us (err {err:.1e}) {why}", flush=True)
                trials.append({"layer": [n, k], "kind": kind, "M": m, "config": str(cfg), "ms": t, "rel_err": err,
                               "error": why})  # fmt: skip
            ok = sorted((r for r in rows if r[1] <= 1e-2), key=lambda r: r[0])
            for t, _err, cfg, _ in ok[: 2 if a.grid == "tiles" and kind != "fma" else 0]:
                for v in variants(cfg):
                    tv, ev, why = run(v)
                    trials.append({"layer": [n, k], "kind": kind, "M": m, "config": str(v), "ms": tv, "rel_err": ev,
                                   "error": why, "variant_of": str(cfg), "base_ms": t})  # fmt: skip
                    print(f"  A/B {v.option_dict}: {tv * 1e3:.1f} us against {t * 1e3:.1f} us", flush=True)
            bad = [r for r in rows if r[1] > 1e-2]
            best = ok[0] if ok else (math.inf, math.inf, None, "")
            wbytes = nbytes4 + m * k * 2 + m * n * 2
            row = {
                "layer": f"{n}x{k}", "kind": kind, "M": m, "bf16_ms": t_bf16, "default_ms": t_default,
                "default_err": e_default, "best_ms": best[0], "best_err": best[1], "best": str(best[2]),
                "roof_ms": wbytes / bw / 1e6, "failed": len(bad),
                "failures": sorted({r[3] or f"rel err {r[1]:.1e}" for r in bad})[:4],
            }  # fmt: skip
            best_rows.append(row)
            print(
                f"{n}x{k} {kind} M={m}: bf16 {t_bf16 * 1e3:.1f} us | default {t_default * 1e3:.1f} us "
                f"(err {e_default:.1e}) | best {best[0] * 1e3:.1f} us {best[2]} | {len(bad)} failed "
                f"[{time.perf_counter() - t_start:.0f} s]",
                flush=True,
            )
            for f in row["failures"]:
                print(f"    failure: {f}", flush=True)
            Path(a.out, "sweep.json" if a.grid == "tiles" else f"sweep_{a.grid}.json").write_text(
                json.dumps({"bandwidth_gbs": bw, "best": best_rows, "trials": trials})
            )
        del rings, bf16_ring, refs
        torch.cuda.empty_cache()
    print("\n| layer | kernel | M | torch bf16 us | default us | best us | x bf16 (best) | % roof (best) | best |")
    print("|---|---|---|---|---|---|---|---|---|")
    for r in best_rows:
        print(
            f"| {r['layer']} | {r['kind']} | {r['M']} | {r['bf16_ms'] * 1e3:.1f} | {r['default_ms'] * 1e3:.1f} | "
            f"{r['best_ms'] * 1e3:.1f} | {r['bf16_ms'] / r['best_ms']:.2f} | "
            f"{100 * r['roof_ms'] / r['best_ms']:.0f}% | "
            f"{r['best']} |"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
