"""The cost model: how fast a piece of an op (`Work`) runs on a resource share of a device — a roofline per
kernel, with GEMM tile/wave quantization, kernel-kind efficiencies, and calibration from measured profiles.

    cm = CostModel(get_hardware("a100"))
    cm.rates(work, share)            -> Rates: FLOP/s, HBM B/s and link B/s the piece can use on that share
    cm.time(work, share)             -> seconds in isolation (launch gap + max(F/C, Y/M, X/N))
    cm.category(work)                -> "compute" | "memory" | "network": the resource that bounds it

GEMM tiling: the device runs ceil(tiles / units) waves of `tm x tn` output tiles on the share's units; the
efficiency is the useful fraction rows·n / (waves·units·tm·tn), times the tile's own efficiency. The kernel
config is the best of a few (tile, split-K) choices, as a GEMM library picks one per shape (`gemm_config`).
Collectives are bound by the link; attention decode rows by HBM; prefill attention by FLOPs at
`Efficiency.attention_flops` of the GEMM peak.

Calibration (`KernelProfile`): measured seconds per (op, rows, share), read by `lowbit plan --profile FILE`
(written by `lowbit tune --profile`, profile.py; any tool writing the JSON works, for a CPU or a GPU alike).
Where a piece's op was measured, its work is scaled by measured / modelled time (interpolated linearly in rows,
and in 1 / share between measured shares: `KernelProfile.lookup`), so all three rates stretch alike.
"""

from __future__ import annotations

import bisect
import functools
import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from lowbit.planner.hardware import Category, Hardware
from lowbit.planner.ops import Work

# (tile rows, tile cols, split-K, efficiency of the tile itself relative to the device's largest tile)
GEMM_CONFIGS = (
    (1.0, 1.0, 1, 1.0),  # scaled by Hardware.gemm_tile: the base tile reaches the measured peak
    (1.0, 0.5, 1, 0.92),  # narrower tiles: less reuse per loaded byte
    (0.5, 0.5, 1, 0.78),
    (1.0, 1.0, 2, 0.95),  # split-K: a reduction pass over the partial sums
    (1.0, 0.5, 2, 0.88),
    (1.0, 1.0, 4, 0.90),
)


@dataclass(frozen=True)
class Efficiency:
    """Fractions of the device's rates that each kind of kernel sustains (stated defaults)."""

    attention_bw: float = 0.80  # paged decode attention (FlashInfer-class kernels: ~80-90% of HBM bandwidth)
    elementwise_bw: float = 0.80  # norms, rope, activation: short streaming kernels
    gemm_bw: float = 0.90  # the weight stream of a GEMM / GEMV
    collective_bw: float = 0.90  # HBM side of a collective
    attention_flops: float = 0.60  # prefill (flash) attention relative to the GEMM peak
    elementwise_flops: float = 0.05  # CUDA-core math of elementwise ops relative to the tensor-core peak


@dataclass(frozen=True)
class Rates:
    flops: float  # FLOP/s
    hbm: float  # B/s
    net: float  # B/s

    def time(self, w: Work) -> float:
        """max(F/C, Y/M, X/N): the roofline time of `w` at these rates (inf where a needed rate is 0)."""
        t = 0.0
        for need, rate in ((w.flops, self.flops), (w.hbm_bytes, self.hbm), (w.net_bytes, self.net)):
            if need > 0:
                t = max(t, need / rate if rate > 0 else math.inf)
        return t


@dataclass(frozen=True)
class GemmConfig:
    tile: tuple[int, int]
    split_k: int
    units: int
    waves: int
    efficiency: float  # useful fraction of the issued tile work x the tile's own efficiency

    def describe(self) -> str:
        return f"tile {self.tile[0]}x{self.tile[1]} splitK {self.split_k} ({self.waves} waves on {self.units})"


def share_units(hw: Hardware, share: float) -> int:
    return max(1, min(hw.units, round(share * hw.units)))


@functools.lru_cache(maxsize=65536)
def gemm_config(hw: Hardware, rows: int, n: int, share: float) -> GemmConfig:
    """The most efficient tile / split-K for an [rows, n] output on `share` of the device."""
    units = share_units(hw, share)
    tm0, tn0 = hw.gemm_tile
    best: GemmConfig | None = None
    for fm, fn, split, eff in GEMM_CONFIGS:
        tm, tn = max(1, int(tm0 * fm)), max(1, int(tn0 * fn))
        if (tm, tn, split) != (tm0, tn0, 1) and tm0 * tn0 == 1:
            continue  # a CPU: no tiles to choose
        tiles = math.ceil(rows / tm) * math.ceil(n / tn) * split
        waves = math.ceil(tiles / units)
        e = eff * rows * n * split / (waves * units * tm * tn) if rows and n else 1.0
        cfg = GemmConfig((tm, tn), split, units, waves, min(1.0, e))
        if best is None or cfg.efficiency > best.efficiency + 1e-12:
            best = cfg
    assert best is not None
    return best


@dataclass(frozen=True)
class ProfileRecord:
    op: str  # the op's name in the layer (ops.py) or a head op
    rows: int
    share: float
    seconds: float


@dataclass(frozen=True)
class KernelProfile:
    """Measured time per (op, rows, share) on one device; JSON: {"device": ..., "records": [[op, rows, share, s]]}."""

    device: str
    records: tuple[ProfileRecord, ...] = ()

    def lookup(self, op: str, rows: int, share: float) -> float | None:
        """Seconds for `rows` rows of `op` at `share`: interpolated linearly between the nearest measured row
        counts at a measured share (beyond them: scaled from the nearest one); between two measured shares
        linearly in 1 / share (time of a fixed amount of work), below the smallest scaled by smallest / share,
        above the largest that one's time. None if `op` was not measured."""
        shares = sorted({r.share for r in self.records if r.op == op})
        if not shares or rows <= 0:
            return None
        near = next((s for s in shares if math.isclose(s, share)), None)
        if near is not None:
            return self._at_share(op, rows, near)
        if share < shares[0]:
            return self._at_share(op, rows, shares[0]) * shares[0] / share
        if share > shares[-1]:
            return self._at_share(op, rows, shares[-1])
        i = bisect.bisect_left(shares, share)
        s0, s1 = shares[i - 1], shares[i]
        t0, t1 = self._at_share(op, rows, s0), self._at_share(op, rows, s1)
        w = (1 / share - 1 / s0) / (1 / s1 - 1 / s0)
        return t0 + (t1 - t0) * w

    def _at_share(self, op: str, rows: int, share: float) -> float:
        pts = sorted((r.rows, r.seconds) for r in self.records if r.op == op and math.isclose(r.share, share))
        xs = [p[0] for p in pts]
        i = bisect.bisect_left(xs, rows)
        if i < len(xs) and xs[i] == rows:
            return pts[i][1]
        if i == 0 or i == len(xs):
            x, s = pts[0] if i == 0 else pts[-1]
            return s * rows / x
        (x0, s0), (x1, s1) = pts[i - 1], pts[i]
        return s0 + (s1 - s0) * (rows - x0) / (x1 - x0)

    def to_json(self) -> str:
        return json.dumps(
            {"device": self.device, "records": [[r.op, r.rows, r.share, r.seconds] for r in self.records]}, indent=1
        )

    @staticmethod
    def from_json(text: str | Mapping[str, Any]) -> KernelProfile:
        d = json.loads(text) if isinstance(text, str) else text
        if not isinstance(d, Mapping) or "records" not in d:
            raise ValueError(
                'a kernel profile is a JSON object {"device": ..., "records": [[op, rows, share, seconds]]}'
            )
        recs = []
        for i, r in enumerate(d["records"]):
            if not (isinstance(r, Sequence) and len(r) == 4 and r[2] > 0 and r[3] >= 0):
                raise ValueError(f"profile record {i} {r!r}: expected [op, rows, share in (0, 1], seconds >= 0]")
            recs.append(ProfileRecord(str(r[0]), int(r[1]), float(r[2]), float(r[3])))
        return KernelProfile(str(d.get("device", "")), tuple(recs))


@dataclass(frozen=True)
class CostModel:
    hw: Hardware
    eff: Efficiency = field(default_factory=Efficiency)
    profile: KernelProfile | None = None

    def rates(self, w: Work, share: float) -> Rates:
        """What `w` can use on `share` of the device when it runs alone (before bandwidth sharing)."""
        hw, e = self.hw, self.eff
        if w.flops > 0:
            peak = hw.peak(w.dtype if hw.has_dtype(w.dtype) else "float32" if hw.kind == "cpu" else "bfloat16")
        else:
            peak = 0.0
        c = min(1.0, share / hw.compute_knee)
        m = min(1.0, share / hw.memory_knee)
        n = min(1.0, share / hw.network_knee)
        if w.kind == "gemm":
            flops = peak * c * gemm_config(hw, w.rows, w.gemm_n, share).efficiency
            bw = e.gemm_bw
        elif w.kind == "attention":
            flops, bw = peak * c * e.attention_flops, e.attention_bw
        elif w.kind == "collective":
            flops, bw = peak * c * e.elementwise_flops, e.collective_bw
        else:
            flops, bw = peak * c * e.elementwise_flops, e.elementwise_bw
        return Rates(flops, hw.hbm_gbs * 1e9 * bw * m, hw.net_gbs * 1e9 * n)

    def time(self, w: Work, share: float = 1.0) -> float:
        """Seconds of `w` alone on `share` of the device, the launch gap included."""
        return self.hw.launch_us * 1e-6 + self.rates(w, share).time(w)

    def category(self, w: Work) -> Category:
        """The resource that bounds `w` on the whole device (collectives: network)."""
        if w.kind == "collective":
            return "network"
        r = self.rates(w, 1.0)
        t_c = w.flops / r.flops if r.flops > 0 else 0.0
        t_m = w.hbm_bytes / r.hbm if r.hbm > 0 else 0.0
        return "compute" if t_c >= t_m else "memory"

    def calibrated(self, op: str, w: Work, share: float) -> Work:
        """`w` scaled so that its modelled time matches the profile's measurement (unchanged without one)."""
        if self.profile is None:
            return w
        measured = self.profile.lookup(op, w.rows, share)
        if measured is None:
            return w
        model = self.rates(w, share).time(w)
        busy = max(measured - self.hw.launch_us * 1e-6, 1e-9)
        return w if model <= 0 else w.scaled(busy / model)


__all__ = [
    "GEMM_CONFIGS",
    "CostModel",
    "Efficiency",
    "GemmConfig",
    "KernelProfile",
    "ProfileRecord",
    "Rates",
    "gemm_config",
    "share_units",
]
