"""The baseline a user without lowbit writes: keep the weight packed, dequantize it in torch on every call,
then run a dense fp32 matmul.

    packed = pack_naive(w, "int4", group_size=128)         # w: [N, K] float32 torch tensor
    y = naive_linear(x, packed)                             # x: [M, K] -> [M, N]; dequantizes all of W each call

Storage (independent of lowbit.ops' layout on purpose; it is what a plain-torch user would pick):
* codes word-aligned along K: floor(32 / bits) codes in each int32 word (int3: 10 per word, fp6: 5), so
  the unpack is one broadcast shift and mask;
* integer dtypes: asymmetric RTN per group, unsigned codes 0 .. 2^bits - 1, fp32 scale and uint8 zero per group,
  w = (q - z) * s;
* float dtypes (fp4_e2m1, fp6_e3m2, ...): symmetric per group, fp32 scale = absmax / max(dtype), codes from
  `lowbit.dtypes.encode`, a 2^bits-entry table turns codes into values, w = value * s.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from lowbit.dtypes import decode, dtype, encode

if TYPE_CHECKING:
    import torch


@dataclass(frozen=True)
class NaivePacked:
    """A packed [N, K] weight in the naive layout above."""

    dtype: str
    bits: int
    group_size: int
    shape: tuple[int, int]  # (N, K)
    words: torch.Tensor  # int32 [N, ceil(K / per_word)]
    scales: torch.Tensor  # float32 [N, K // G]
    zeros: torch.Tensor | None  # uint8 [N, K // G] for integer dtypes, None for float dtypes
    lut: torch.Tensor | None  # float32 [2^bits] code -> value for float dtypes

    @property
    def per_word(self) -> int:
        return 32 // self.bits

    @property
    def nbytes(self) -> int:
        """Bytes of the stored weight: words + scales + zeros."""
        zeros = 0 if self.zeros is None else self.zeros.numel()
        return self.words.numel() * 4 + self.scales.numel() * 4 + zeros


def pack_naive(w: torch.Tensor, dtype_name: str, group_size: int = 128) -> NaivePacked:
    """Quantize a float [N, K] weight groupwise along K (RTN) and pack it (see the module docstring)."""
    import torch

    dt = dtype(dtype_name)
    N, K = w.shape
    if K % group_size:
        raise ValueError(f"group_size {group_size} does not divide K={K}; use a divisor of {K} such as 128 or 64")
    g = w.detach().float().reshape(N, K // group_size, group_size)
    zeros: torch.Tensor | None = None
    lut: torch.Tensor | None = None
    if dt.is_float:
        table = decode(dt, np.arange(dt.num_codes))
        fmax = float(np.nanmax(np.abs(np.where(np.isfinite(table), table, np.nan))))
        scales = (g.abs().amax(-1) / fmax).clamp_min(1e-12)  # [N, K//G]
        codes = torch.from_numpy(encode(dt, (g / scales[..., None]).numpy()).astype(np.int64))
        lut = torch.from_numpy(np.nan_to_num(table.astype(np.float32)))
    else:
        qmax = (1 << dt.bits) - 1
        lo, hi = g.amin(-1).clamp_max(0), g.amax(-1).clamp_min(0)
        scales = ((hi - lo) / qmax).clamp_min(1e-12)
        z = torch.round(-lo / scales).clamp(0, qmax)
        codes = (torch.round(g / scales[..., None]) + z[..., None]).clamp(0, qmax).to(torch.int64)
        zeros = z.to(torch.uint8)
    codes = codes.reshape(N, K)
    per_word = 32 // dt.bits
    kw = math.ceil(K / per_word)
    codes = torch.nn.functional.pad(codes, (0, kw * per_word - K)).reshape(N, kw, per_word)
    shifts = torch.arange(per_word, dtype=torch.int64) * dt.bits
    words = (codes << shifts).sum(-1)  # fits in 32 bits: per_word * bits <= 32
    words = torch.where(words >= 2**31, words - 2**32, words).to(torch.int32)  # same bits as uint32
    return NaivePacked(dt.name, dt.bits, group_size, (N, K), words.contiguous(), scales.contiguous(), zeros, lut)


def naive_dequantize(p: NaivePacked) -> torch.Tensor:
    """[N, K] float32 weight from the packed form: shift, mask, (table), subtract zero, scale."""
    import torch

    N, K = p.shape
    shifts = torch.arange(p.per_word, dtype=torch.int32, device=p.words.device) * p.bits  # where the words lie
    codes = (p.words.unsqueeze(-1) >> shifts) & ((1 << p.bits) - 1)  # [N, Kw, per_word]
    codes = codes.reshape(N, -1)[:, :K]
    values = p.lut[codes.long()] if p.lut is not None else codes.float()
    values = values.reshape(N, K // p.group_size, p.group_size)
    if p.zeros is not None:
        values = values - p.zeros.unsqueeze(-1).float()
    return (values * p.scales.unsqueeze(-1)).reshape(N, K)


def naive_linear(x: torch.Tensor, p: NaivePacked) -> torch.Tensor:
    """x [M, K] @ dequant(W)^T in fp32 -> [M, N]; the whole weight is dequantized on every call."""
    import torch.nn.functional as F

    return F.linear(x.float(), naive_dequantize(p))


__all__ = ["NaivePacked", "naive_dequantize", "naive_linear", "pack_naive"]
