"""Explore GEMV forms for M = 1..4 on the GPU without tensor cores (hand-written Triton, not lowbit's lowering):
which tile shape, code conversion and K split let a W4A16 g128 decode GEMV approach HBM bandwidth. The DSL
lowering then reproduces the winner. Each form is checked against x @ dequant(W)^T in float64 and timed with
streamed weights (a ring larger than L2, CUDA-graph replays) beside torch bf16 `F.linear`.

    python3 benchmarks/gpu/gemv_forms.py --out DIR          # on the device
    python3 benchmarks/gpu/gemv_forms.py --ptx              # here: sm_90 compile, instruction counts

The weight is lowbit's row-packed int4 layout: int32 words [K/8, N], word (k // 8, n) holds codes k..k+7 of
column n in nibbles 0..7, two's complement. Scales fp16 [K/G, N]. y = x @ (q * s).
"""

from __future__ import annotations

import argparse
import itertools
import json
import sys
from pathlib import Path

import triton
import triton.language as tl


@triton.jit
def _pair_f32(words, SHIFT: tl.constexpr):
    """Codes SHIFT/4 and SHIFT/4 + 4 of each word as fp32 q = u - 8 (u the offset-binary nibble): one lop3 puts
    both nibbles into an f16x2 of 1024 + u, one sub.f16x2 makes q exactly, two cvt widen (GPU only)."""
    return tl.inline_asm_elementwise(
        asm=f"""{{
        .reg .b32 t, h, c;
        .reg .b16 lo, hi;
        mov.b32 c, 0x64086408;
        shr.u32 t, $2, {SHIFT};
        lop3.b32 t, t, 0x000F000F, c, 0x6a;
        sub.f16x2 h, t, c;
        mov.b32 {{lo, hi}}, h;
        cvt.f32.f16 $0, lo;
        cvt.f32.f16 $1, hi;
        }}""",
        constraints="=r,=r,r",
        args=[words],
        dtype=(tl.float32, tl.float32),
        is_pure=True,
        pack=1,
    )


@triton.jit
def gemv_words(
    x_ptr,
    w_ptr,
    s_ptr,
    y_ptr,
    N,
    K,
    M: tl.constexpr,
    BN: tl.constexpr,
    NG: tl.constexpr,
    G: tl.constexpr,
    SPLIT: tl.constexpr,
    FORM: tl.constexpr,
):
    """Program (pn, ps): columns pn*BN.., K range ps*K/SPLIT.. in steps of NG groups; acc [NG, BN] per row,
    reduced once at the end. FORM: 0 cvt.rn.f32.s32, 1 2^23 magic, 2 f = 1 + u/16 with Σx·q = 16·Σx·f − 24·Σx,
    3 f16x2 pairs by inline PTX."""
    pn = tl.program_id(0)
    ps = tl.program_id(1)
    GW: tl.constexpr = G // 8
    n = pn * BN + tl.arange(0, BN)
    g = tl.arange(0, NG)
    r = tl.arange(0, GW)
    kspan = K // SPLIT
    acc0 = tl.zeros([NG, BN], tl.float32)
    acc1 = tl.zeros([NG, BN], tl.float32)
    acc2 = tl.zeros([NG, BN], tl.float32)
    acc3 = tl.zeros([NG, BN], tl.float32)
    for k0 in range(ps * kspan, ps * kspan + kspan, NG * G):
        # axes [GW, 8, NG, BN]: the default layout puts the 32 lanes on BN and the warps on NG, so each
        # thread's codes of one column and group (GW words x 8 nibbles) are its own: the group sum is in-thread
        wrow = k0 // 8 + g[None, :, None] * GW + r[:, None, None]  # [GW, NG, 1]
        words = tl.load(w_ptr + wrow * N + n[None, None, :]).to(tl.uint32, bitcast=True)  # [GW, NG, BN]
        s = tl.load(s_ptr + (k0 // G + g)[:, None] * N + n[None, :]).to(tl.float32)  # [NG, BN]
        if FORM == 3:
            # nibble pairs (j, j + 4) from one lop3: order the 8 codes as [j, j + 4] per shift
            j = tl.arange(0, 4)
            a, b = _pair_f32(words[:, None, :, :] >> (j * 4)[None, :, None, None], 0)  # [GW, 4, NG, BN] each
            kk = k0 + g[None, None, :] * G + r[:, None, None] * 8 + j[None, :, None]  # [GW, 4, NG]
            xa = tl.load(x_ptr + kk).to(tl.float32)
            xb = tl.load(x_ptr + kk + 4).to(tl.float32)
            acc0 += tl.sum(tl.sum(a * xa[:, :, :, None] + b * xb[:, :, :, None], axis=0), axis=0) * s
        else:
            j = tl.arange(0, 8)
            kk = k0 + g[None, None, :] * G + r[:, None, None] * 8 + j[None, :, None]  # [GW, 8, NG]
            x0 = tl.load(x_ptr + kk).to(tl.float32)
            if FORM == 2:
                sh = 19 - 4 * j  # nibble j to mantissa bits 19..22: f = 1 + u/16, exact times an fp16 x
                t = tl.where(
                    sh[None, :, None, None] >= 0,
                    words[:, None, :, :] << tl.maximum(sh, 0)[None, :, None, None],
                    words[:, None, :, :] >> tl.maximum(-sh, 0)[None, :, None, None],
                )
                f = ((t & 0x00780000) ^ 0x3FC00000).to(tl.float32, bitcast=True)
                sx = tl.sum(tl.sum(x0, axis=0), axis=0)  # [NG]
                p = tl.sum(tl.sum(f * x0[:, :, :, None], axis=0), axis=0)  # [NG, BN]
                acc0 += (16.0 * p - 24.0 * sx[:, None]) * s
            else:
                c = (words[:, None, :, :] >> (j * 4)[None, :, None, None]) & 15  # [GW, 8, NG, BN]
                if FORM == 1:
                    f = ((c ^ 8) | 0x4B000000).to(tl.float32, bitcast=True) - 8388616.0
                else:
                    f = ((c ^ 8).to(tl.int32) - 8).to(tl.float32)
                acc0 += tl.sum(tl.sum(f * x0[:, :, :, None], axis=0), axis=0) * s
                if M > 1:
                    x1 = tl.load(x_ptr + K + kk).to(tl.float32)
                    acc1 += tl.sum(tl.sum(f * x1[:, :, :, None], axis=0), axis=0) * s
                if M > 2:
                    x2 = tl.load(x_ptr + 2 * K + kk).to(tl.float32)
                    acc2 += tl.sum(tl.sum(f * x2[:, :, :, None], axis=0), axis=0) * s
                if M > 3:
                    x3 = tl.load(x_ptr + 3 * K + kk).to(tl.float32)
                    acc3 += tl.sum(tl.sum(f * x3[:, :, :, None], axis=0), axis=0) * s
    if SPLIT == 1:
        tl.store(y_ptr + n, tl.sum(acc0, axis=0))
        if M > 1:
            tl.store(y_ptr + N + n, tl.sum(acc1, axis=0))
        if M > 2:
            tl.store(y_ptr + 2 * N + n, tl.sum(acc2, axis=0))
        if M > 3:
            tl.store(y_ptr + 3 * N + n, tl.sum(acc3, axis=0))
    else:
        tl.atomic_add(y_ptr + n, tl.sum(acc0, axis=0), sem="relaxed")
        if M > 1:
            tl.atomic_add(y_ptr + N + n, tl.sum(acc1, axis=0), sem="relaxed")
        if M > 2:
            tl.atomic_add(y_ptr + 2 * N + n, tl.sum(acc2, axis=0), sem="relaxed")
        if M > 3:
            tl.atomic_add(y_ptr + 3 * N + n, tl.sum(acc3, axis=0), sem="relaxed")


def forms(m: int) -> list[dict]:
    out = []
    if m == 1:
        out.append({"M": m, "BN": 64, "NG": 4, "num_warps": 4, "SPLIT": 1, "FORM": 0})
        for form, bn, ng, split in itertools.product((3, 2, 1), (32, 64, 128), (4, 8), (1, 2, 4)):
            out.append({"M": m, "BN": bn, "NG": ng, "num_warps": 4, "SPLIT": split, "FORM": form})
        for bn, ng, split in itertools.product((64, 128), (4, 8), (1, 2)):
            out.append({"M": m, "BN": bn, "NG": ng, "num_warps": 8, "SPLIT": split, "FORM": 3})
    else:
        for bn, ng, split in itertools.product((32, 64), (4, 8), (1, 2)):
            out.append({"M": m, "BN": bn, "NG": ng, "num_warps": 4, "SPLIT": split, "FORM": 1})
    return out


def ptx_report() -> None:
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    sig = {"x_ptr": "*fp16", "w_ptr": "*i32", "s_ptr": "*fp16", "y_ptr": "*fp32", "N": "i32", "K": "i32"}
    for f in [
        {"M": 1, "BN": 32, "NG": 8, "num_warps": 4, "SPLIT": 1, "FORM": 0},
        {"M": 1, "BN": 32, "NG": 8, "num_warps": 4, "SPLIT": 1, "FORM": 1},
        {"M": 1, "BN": 32, "NG": 8, "num_warps": 4, "SPLIT": 1, "FORM": 2},
        {"M": 1, "BN": 32, "NG": 8, "num_warps": 4, "SPLIT": 2, "FORM": 3},
        {"M": 4, "BN": 32, "NG": 4, "num_warps": 4, "SPLIT": 1, "FORM": 1},
    ]:
        consts = {"M": f["M"], "BN": f["BN"], "NG": f["NG"], "G": 128, "SPLIT": f["SPLIT"], "FORM": f["FORM"]}
        s = dict(sig, **{k: "constexpr" for k in consts})
        src = ASTSource(
            fn=gemv_words, signature=s, constexprs=consts, attrs={(i,): [["tt.divisibility", 16]] for i in range(6)}
        )
        k = triton.compile(src, target=GPUTarget("cuda", 90, 32), options={"num_warps": f["num_warps"]})
        ptx = k.asm["ptx"]
        body = [ln for ln in ptx.splitlines() if ln.strip() and not ln.strip().startswith(("//", ".", "$", "{", "}"))]
        codes = f["NG"] * 128 * f["BN"]
        ttgir = k.asm["ttgir"]
        print(
            f,
            "instr",
            len(body),
            "cvt_layout",
            ttgir.count("convert_layout"),
            "shared",
            k.metadata.shared,
            "regs?",
            "cvt.rn.f32.s32" in ptx,
            "codes/iter",
            codes,
        )
        Path(f"/tmp/gemv_{f['M']}_{f['BN']}_{f['NG']}_{f['SPLIT']}_{f['FORM']}.ptx").write_text(ptx)
        Path(f"/tmp/gemv_{f['M']}_{f['BN']}_{f['NG']}_{f['SPLIT']}_{f['FORM']}.ttgir").write_text(ttgir)
        print("   SASS", sass_mix(k.asm["cubin"]))


def sass_mix(cubin: bytes) -> str:
    """Opcode counts of the SASS (cuobjdump from Triton's wheel), with the instructions per code of the loop."""
    import collections
    import re
    import subprocess
    import tempfile

    tool = Path(triton.__file__).parent / "backends" / "nvidia" / "bin" / "cuobjdump"
    with tempfile.NamedTemporaryFile(suffix=".cubin") as fh:
        fh.write(cubin)
        fh.flush()
        text = subprocess.run([str(tool), "-sass", fh.name], capture_output=True, text=True).stdout
    ops = collections.Counter()
    for line in text.splitlines():
        m = re.match(r"\s*/\*[0-9a-f]{4}\*/\s+(@!?U?P\w+\s+)?([A-Z][A-Z0-9]*)", line)
        if m:
            ops[m.group(2)] += 1
    return f"{sum(ops.values())} " + " ".join(f"{o}:{n}" for o, n in ops.most_common(16))


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default=".")
    ap.add_argument("--ptx", action="store_true")
    ap.add_argument("--budget", type=float, default=200)
    a = ap.parse_args()
    if a.ptx:
        ptx_report()
        return 0
    import time

    import numpy as np
    import torch
    import torch.nn.functional as F

    from lowbit.codegen.tune.timing import benchmark_ring, ring_copies

    def t(fns):
        # ms -> us (1e6 until session 48: results/s48_run1's "us" read ns and its "GBs" TB/s)
        return float(np.median(benchmark_ring(fns, repeats=10, warmup=2, device="cuda", graph=True).samples)) * 1e3

    t0 = time.time()
    rows = []
    torch.manual_seed(0)
    for (n, k), m in itertools.product(((8192, 8192), (28672, 8192)), (1, 4)):
        codes = torch.randint(-8, 8, (k, n), device="cuda", dtype=torch.int32)
        nib = (codes & 15).view(k // 8, 8, n)
        words = torch.zeros(k // 8, n, dtype=torch.int64, device="cuda")
        for i in range(8):
            words |= nib[:, i, :].to(torch.int64) << (4 * i)
        words = torch.where(words >= 2**31, words - 2**32, words).to(torch.int32).contiguous()
        scales = (torch.rand(k // 128, n, device="cuda") * 0.02 + 0.001).half()
        x = torch.randn(m, k, device="cuda").half()
        wdq = codes.double() * scales.double().repeat_interleave(128, 0)  # [K, N]
        ref = x.double() @ wdq
        wbf = wdq.t().contiguous().bfloat16()
        nbytes = words.numel() * 4 + scales.numel() * 2
        copies = ring_copies(nbytes, "cuda")
        ring_w = [words.clone() for _ in range(copies)]
        ring_s = [scales.clone() for _ in range(copies)]
        ring_b = [wbf.clone() for _ in range(ring_copies(wbf.numel() * 2, "cuda"))]
        xb = x.bfloat16()
        tb = t([lambda w=w, xb=xb: F.linear(xb, w) for w in ring_b])
        row0 = {"N": n, "K": k, "M": m, "form": "torch bf16", "us": tb, "GBs": wbf.numel() * 2 / tb / 1e3}
        rows.append(row0)
        print(row0, flush=True)
        t_shape = time.time()
        for f in forms(m):
            if time.time() - t_shape > a.budget / 4 or time.time() - t0 > a.budget:
                break
            y = torch.zeros(m, n, device="cuda", dtype=torch.float32)
            grid = (n // f["BN"], f["SPLIT"])

            def run(w, s, f=f, y=y, grid=grid, x=x, n=n, k=k):
                if f["SPLIT"] > 1:
                    y.zero_()
                gemv_words[grid](
                    x,
                    w,
                    s,
                    y,
                    n,
                    k,
                    M=f["M"],
                    BN=f["BN"],
                    NG=f["NG"],
                    G=128,
                    SPLIT=f["SPLIT"],
                    FORM=f["FORM"],
                    num_warps=f["num_warps"],
                    num_stages=1,
                )

            try:
                run(words, scales)
                torch.cuda.synchronize()
                err = float(torch.linalg.norm(y.double() - ref) / torch.linalg.norm(ref))
                us = t([lambda w=w, s=s: run(w, s) for w, s in zip(ring_w, ring_s)])
            except Exception as e:  # a form that fails to compile is reported, not fatal
                print(f, "FAILED", type(e).__name__, str(e)[:200], flush=True)
                continue
            row = {"N": n, "K": k, **f, "us": us, "x_bf16": tb / us, "GBs": nbytes / us / 1e3, "rel_err": err}
            rows.append(row)
            print({kk: (round(v, 3) if isinstance(v, float) else v) for kk, v in row.items()}, flush=True)
        del ring_w, ring_s, ring_b
        torch.cuda.empty_cache()
    Path(a.out).mkdir(parents=True, exist_ok=True)
    Path(a.out, "gemv_forms.json").write_text(json.dumps(rows, indent=1))
    best = {}
    for r in rows:
        if "form" in r:
            continue
        key = (r["N"], r["M"])
        if r.get("rel_err", 1) < 1e-3 and (key not in best or r["us"] < best[key]["us"]):
            best[key] = r
    for key, r in best.items():
        print("BEST", key, r)
    return 0


if __name__ == "__main__":
    sys.exit(main())
