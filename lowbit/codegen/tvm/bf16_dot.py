"""AVX-512 BF16 dot products (`vdpbf16ps`) in TVM 0.27 kernels, through a rewrite of the built LLVM IR.

`vdpbf16ps acc, a, b` adds a[2i]·b[2i] + a[2i+1]·b[2i+1] to fp32 lane i for 32 bf16 pairs: two products per
lane and instruction, twice an fp32 FMA's. TVM 0.27 cannot call it from TIR: its pipeline legalizes
bfloat16 vectors to float32 before LLVM (`BF16ComputeLegalize`, not configurable), and its LLVM code
generator has no bfloat16 vector type (a bf16 vector reaching it crashes the build), while the intrinsic's
operands are `<32 x bfloat>`. Hence this module (written here because no library covers it):

* the lowering emits a stand-in with the same operand shapes, VNNI's `llvm.x86.avx512.vpdpwssd.512` over the
  bf16 bit patterns as int16 lanes with the fp32 accumulator reinterpreted as int32 (`stand_in`). It is a
  pure intrinsic, so LLVM schedules, hoists and unrolls around it as it would around the real one; no
  other lowbit kernel uses `vpdpwssd`;
* after `tvm.compile`, `patch_module` rewrites every stand-in call of the module's LLVM IR into bitcasts
  and the `dpbf16ps` call (`patch_ir`) and builds that IR again (`tvm.runtime.load_module` of a `.ll`
  file); the result exports and loads like any built kernel.

Numerics: vdpbf16ps multiplies bf16 values exactly and adds the pair and the accumulator in fp32 with
round-to-nearest-even (MXCSR is ignored; denormal inputs and outputs are flushed to zero, which the
kernels' bf16 activations and table values do not reach in practice: |x| >= 2^-126).
"""

from __future__ import annotations

import os
import re
import tempfile
from typing import Any

STAND_IN = "llvm.x86.avx512.vpdpwssd.512"
DPBF16 = "llvm.x86.avx512bf16.dpbf16ps.512"
# an operand: a value, or a constant LLVM may fold in (the zero accumulator of a fully unrolled first step)
_OPERAND = r"(%[-\w.$]+|zeroinitializer|poison|undef|splat \([^()]*\)|<[^<>]*>)"
_CALL = re.compile(
    r"(%[-\w.$]+) = (?:tail |notail )?call <16 x i32> @" + re.escape(STAND_IN) + r"\("
    rf"<16 x i32> {_OPERAND}, <32 x i16> {_OPERAND}, <32 x i16> {_OPERAND}\)"
)
_DECLARE = f"declare <16 x float> @{DPBF16}(<16 x float>, <32 x bfloat>, <32 x bfloat>)"


class PatchError(RuntimeError):
    """The built IR has a stand-in call `patch_ir` cannot rewrite (a constant operand, a new IR form)."""


def stand_in(acc: str, a: str, b: str) -> str:
    """TIR text of acc (float32x16) + the pairwise bf16 dot of a and b (int16x32 bit patterns of 32 bf16)."""
    acc_i = f'T.reinterpret("int32x16", {acc})'
    call = f'T.call_llvm_pure_intrin("int32x16", "{STAND_IN}", {acc_i}, {a}, {b})'
    return f'T.reinterpret("float32x16", {call})'


def uses_stand_in(source: str) -> bool:
    """Whether TIR text calls the stand-in (its module then needs `patch_module`)."""
    return STAND_IN in source


def patch_ir(ll: str) -> tuple[str, int]:
    """(LLVM IR with each stand-in call replaced by the dpbf16ps call on bitcast operands, the count)."""
    count = 0

    def one(m: re.Match[str]) -> str:
        nonlocal count
        count += 1
        r, acc, a, b = m.groups()
        i = count
        return (
            f"%lowbit.acc.{i} = bitcast <16 x i32> {acc} to <16 x float>\n"
            f"  %lowbit.a.{i} = bitcast <32 x i16> {a} to <32 x bfloat>\n"
            f"  %lowbit.b.{i} = bitcast <32 x i16> {b} to <32 x bfloat>\n"
            f"  %lowbit.r.{i} = call <16 x float> @{DPBF16}(<16 x float> %lowbit.acc.{i}, "
            f"<32 x bfloat> %lowbit.a.{i}, <32 x bfloat> %lowbit.b.{i})\n"
            f"  {r} = bitcast <16 x float> %lowbit.r.{i} to <16 x i32>"
        )

    out = _CALL.sub(one, ll)
    left = len(re.findall(r"call <16 x i32> @" + re.escape(STAND_IN) + r"\(", out))
    if left:
        raise PatchError(
            f"{left} call(s) of {STAND_IN} in the built IR are not in the form `%r = call <16 x i32> "
            f"@{STAND_IN}(<16 x i32> %acc, <32 x i16> %a, <32 x i16> %b)`; the bf16 dot cannot be patched "
            "(build the kernel with option bf16_dot='none')"
        )
    if count and _DECLARE not in out:
        out += f"\n{_DECLARE}\n"
    return out, count


def patch_module(executable: Any) -> Any:
    """The module of `tvm.compile`'s result rebuilt from its patched LLVM IR (callable, exportable)."""
    import tvm

    module = getattr(executable, "mod", executable)
    ll, count = patch_ir(module.inspect_source("ll"))
    if not count:
        return executable
    with tempfile.TemporaryDirectory(prefix="lowbit-bf16-") as d:
        path = os.path.join(d, "kernel.ll")
        with open(path, "w") as f:
            f.write(ll)
        return tvm.runtime.load_module(path)


__all__ = ["DPBF16", "STAND_IN", "PatchError", "patch_ir", "patch_module", "stand_in", "uses_stand_in"]
