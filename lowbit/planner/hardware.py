"""`Hardware`: what the cost model needs to know about a device, as presets (A100-80G, H100-SXM, H200, this
machine's CPU from ANCHORS) or measured by a probe (`probe_cpu`).

A resource share is a fraction of the device's `units` (SMs on a GPU, cores on a CPU), in steps of
`share_quantum` units (NanoFlow: SM counts 8..128 in steps of 8). How fast a kernel runs on a share:

    compute  rate = peak(dtype) · min(1, share / compute_knee) · wave efficiency
    memory   rate = hbm_gbs · kernel efficiency · min(1, share / memory_knee)
    network  rate = net_gbs · min(1, share / network_knee)

`peak` is the dense-GEMM rate a large GEMM reaches on the whole device (the "Compute" of NanoFlow's optimal
throughput, e.g. ≈256 TFLOP/s on A100 rather than the 312 of the datasheet); int8 / fp8 tensor cores run twice
the bf16 rate (ANCHORS: W4A8 doubles the compute ceiling). A knee below 1 says the rate saturates before the
whole device is used: memory-bound kernels reach HBM bandwidth with about a third of the SMs, collectives need
a few SMs to drive NVLink, and a GEMM on ~90% of the SMs keeps most of its full-device rate (full-device GEMMs
run power- and L2-limited). Those knees and the `interference` table (slowdown of one category while another
runs beside it) are modelling assumptions with stated defaults, not measurements: a `KernelProfile` (cost.py,
`lowbit plan --profile`) replaces the modelled time of each (op, share) it measured, and a Hardware JSON
(`--hardware FILE`) any of these numbers.
"""

from __future__ import annotations

import functools
import json
import math
import os
from collections.abc import Mapping
from dataclasses import asdict, dataclass, replace
from typing import Any, Literal

CATEGORIES = ("compute", "memory", "network")
Category = Literal["compute", "memory", "network"]
DeviceKind = Literal["gpu", "cpu"]


class HardwareError(ValueError):
    """An unknown preset or a malformed hardware description; the message names the field and the fix."""


@dataclass(frozen=True)
class Hardware:
    name: str
    kind: DeviceKind
    units: int  # SMs (GPU) or cores (CPU): what a resource share is a fraction of
    share_quantum: int  # shares are multiples of this many units
    peak_tflops: tuple[tuple[str, float], ...]  # compute dtype -> dense GEMM TFLOP/s on the whole device
    hbm_gbs: float  # sustained memory bandwidth, GB/s (1e9 B/s)
    net_gbs: float = 0.0  # collective bus bandwidth per device (NCCL busbw), GB/s; 0: no interconnect
    launch_us: float = 3.0  # per kernel: the gap between dependent kernels on the device (launch, ramp, tail)
    compute_knee: float = 0.85
    memory_knee: float = 0.2
    network_knee: float = 0.10
    gemm_tile: tuple[int, int] = (128, 128)  # (rows, output features) of one GEMM tile (wave quantization)
    memory_gb: float = 80.0
    interference: tuple[tuple[str, str, float], ...] = ()  # (victim, co-runner, time factor >= 1)
    source: str = ""  # where the numbers come from

    def __post_init__(self) -> None:
        if self.kind not in ("gpu", "cpu"):
            raise HardwareError(f"hardware {self.name}: kind {self.kind!r}; use 'gpu' or 'cpu'")
        if self.units < 1 or not 1 <= self.share_quantum <= self.units:
            raise HardwareError(
                f"hardware {self.name}: units {self.units}, share_quantum {self.share_quantum}; "
                "need units >= 1 and 1 <= share_quantum <= units"
            )
        if not self.peak_tflops or any(v <= 0 for _, v in self.peak_tflops):
            raise HardwareError(f"hardware {self.name}: peak_tflops {self.peak_tflops} must give positive rates")
        if self.hbm_gbs <= 0 or self.net_gbs < 0:
            raise HardwareError(f"hardware {self.name}: hbm_gbs {self.hbm_gbs} must be > 0, net_gbs >= 0")
        for knee in ("compute_knee", "memory_knee", "network_knee"):
            v = getattr(self, knee)
            if not 0 < v <= 1:
                raise HardwareError(f"hardware {self.name}: {knee} {v} must be in (0, 1]")
        for victim, other, f in self.interference:
            if victim not in CATEGORIES or other not in CATEGORIES or not f >= 1:
                raise HardwareError(
                    f"hardware {self.name}: interference ({victim!r}, {other!r}, {f}) needs two of "
                    f"{list(CATEGORIES)} and a time factor >= 1"
                )

    # -- rates ----------------------------------------------------------------------------------------------
    def peak(self, dtype: str) -> float:
        """Dense GEMM FLOP/s for `dtype` on the whole device; float16 falls back to bfloat16, fp8 to int8."""
        p = _peak(self, dtype)
        if p is None:
            raise HardwareError(
                f"hardware {self.name} has no peak for {dtype!r}; it knows {sorted(dict(self.peak_tflops))}"
            )
        return p

    def has_dtype(self, dtype: str) -> bool:
        return _peak(self, dtype) is not None

    def interference_factor(self, victim: str, other: str) -> float:
        return _interference(self, victim, other)

    @property
    def min_share(self) -> float:
        return self.share_quantum / self.units

    def share_grid(self) -> list[float]:
        """Every share the device can give: k·share_quantum/units for k = 1 .. units/share_quantum (and 1.0)."""
        steps = self.units // self.share_quantum
        grid = [k * self.share_quantum / self.units for k in range(1, steps + 1)]
        return grid if math.isclose(grid[-1], 1.0) else [*grid, 1.0]

    def quantize_share(self, share: float) -> float:
        """The nearest share of the grid (ties up)."""
        return min(self.share_grid(), key=lambda s: (abs(s - share), -s))

    def with_interference(self, table: Mapping[tuple[str, str], float]) -> Hardware:
        return replace(self, interference=tuple((v, o, float(f)) for (v, o), f in sorted(table.items())))

    def scaled_interference(self, k: float) -> Hardware:
        """The same device with every interference slowdown (f - 1) scaled by k >= 0."""
        return replace(self, interference=tuple((v, o, 1.0 + k * (f - 1.0)) for v, o, f in self.interference))

    # -- JSON -----------------------------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["peak_tflops"] = dict(self.peak_tflops)
        d["gemm_tile"] = list(self.gemm_tile)
        d["interference"] = [list(t) for t in self.interference]
        return d

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=1)

    @staticmethod
    def from_json(text: str | Mapping[str, Any]) -> Hardware:
        d = dict(json.loads(text) if isinstance(text, str) else text)
        known = set(Hardware.__dataclass_fields__)
        unknown = sorted(set(d) - known)
        if unknown:
            raise HardwareError(f"hardware JSON has unknown key(s) {unknown}; the known keys are {sorted(known)}")
        d["peak_tflops"] = tuple((str(k), float(v)) for k, v in dict(d.get("peak_tflops", {})).items())
        if "gemm_tile" in d:
            d["gemm_tile"] = tuple(d["gemm_tile"])
        d["interference"] = tuple((str(v), str(o), float(f)) for v, o, f in d.get("interference", ()))
        return Hardware(**d)


@functools.lru_cache(maxsize=1024)
def _peak(hw: Hardware, dtype: str) -> float | None:
    table = dict(hw.peak_tflops)
    for d in (dtype, {"float16": "bfloat16", "fp8": "int8", "int8": "fp8"}.get(dtype, "")):
        if d in table:
            return table[d] * 1e12
    return None


@functools.lru_cache(maxsize=4096)
def _interference(hw: Hardware, victim: str, other: str) -> float:
    return next((f for v, o, f in hw.interference if v == victim and o == other), 1.0)


# Slowdowns of a kernel while a kernel of another category runs beside it (time x factor). Defaults, not
# measurements: GEMMs lose a little to HBM/L2 traffic of a concurrent attention, attention loses more to the
# GEMM's L2 pressure, collectives share the copy engines and L2. A Hardware JSON (`--hardware FILE`) replaces them.
GPU_INTERFERENCE = (
    ("compute", "memory", 1.05),
    ("memory", "compute", 1.10),
    ("compute", "network", 1.03),
    ("network", "compute", 1.05),
    ("memory", "network", 1.03),
    ("network", "memory", 1.03),
)
# On the 2-core CPU two threads share the L3 and DRAM: ANCHORS measured 1.21-1.32x for a matmul beside a
# memory-bound op against an ideal 1.43x, i.e. each slows by ~8-18%.
CPU_INTERFERENCE = (("compute", "memory", 1.12), ("memory", "compute", 1.12))

PRESETS: dict[str, Hardware] = {
    "a100-80g": Hardware(
        name="A100-80G",
        kind="gpu",
        units=108,
        share_quantum=4,
        # NanoFlow's optimal throughput uses ~256 TFLOP/s measured dense GEMM (1857 tok/s/GPU for Llama-2-70B)
        peak_tflops=(("bfloat16", 256.0), ("int8", 512.0)),
        hbm_gbs=1800.0,  # datasheet 2039 GB/s; ~88% is what a streaming kernel sustains
        net_gbs=170.0,  # NVLink3 300 GB/s per direction; NCCL all-reduce bus bandwidth at ~32 MB messages
        memory_gb=80.0,
        interference=GPU_INTERFERENCE,
        source="datasheet + NanoFlow (arXiv 2408.12757) measured GEMM rate; knees/interference: stated defaults",
    ),
    "h100-sxm": Hardware(
        name="H100-SXM",
        kind="gpu",
        units=132,
        share_quantum=4,
        peak_tflops=(("bfloat16", 750.0), ("int8", 1500.0), ("fp8", 1500.0)),  # datasheet 989 / 1979 dense
        hbm_gbs=3000.0,  # datasheet 3350 GB/s
        net_gbs=370.0,  # NVLink4 450 GB/s per direction
        memory_gb=80.0,
        interference=GPU_INTERFERENCE,
        source="datasheet derated to sustained rates; knees/interference: stated defaults",
    ),
    "h200": Hardware(
        name="H200",
        kind="gpu",
        units=132,
        share_quantum=4,
        peak_tflops=(("bfloat16", 790.0), ("int8", 1580.0), ("fp8", 1580.0)),  # ANCHORS: ~790 measured here
        hbm_gbs=4300.0,  # ANCHORS: ~4.3 TB/s copy measured here (datasheet 4.8)
        net_gbs=370.0,
        memory_gb=141.0,
        interference=GPU_INTERFERENCE,
        source="ANCHORS (measured on this project's H200); knees/interference: stated defaults",
    ),
    "cpu-dev": Hardware(
        name="CPU (2 cores, ANCHORS)",
        kind="cpu",
        units=2,
        share_quantum=1,
        peak_tflops=(("float32", 0.080), ("bfloat16", 0.150), ("int8", 0.150)),
        hbm_gbs=25.0,
        launch_us=40.0,  # a Python-dispatched op of the runtime
        compute_knee=1.0,
        memory_knee=0.75,  # one of two cores streams ~2/3 of the bandwidth
        network_knee=1.0,
        gemm_tile=(1, 1),
        memory_gb=8.0,
        interference=CPU_INTERFERENCE,
        source="ANCHORS (this development machine: ~20-30 GB/s, ~80 GFLOP/s fp32, ~150 bf16)",
    ),
}
ALIASES = {"a100": "a100-80g", "h100": "h100-sxm", "cpu": "cpu-dev"}


def get_hardware(name: str) -> Hardware:
    """A preset by name (case-insensitive; aliases a100, h100, cpu), or a Hardware JSON file path."""
    key = ALIASES.get(name.lower(), name.lower())
    if key in PRESETS:
        return PRESETS[key]
    if os.path.isfile(name):
        with open(name) as f:
            return Hardware.from_json(f.read())
    raise HardwareError(
        f"hardware {name!r} is not a preset or a JSON file; use one of {sorted(PRESETS)} (aliases "
        f"{sorted(ALIASES)}), 'probe' to measure this CPU, or a path written by `lowbit plan --save-hardware`"
    )


def probe_cpu(*, quick: bool = True, threads: int | None = None) -> Hardware:
    """This CPU, measured: read bandwidth with all cores and with one (which sets `memory_knee`: the share at
    which a memory-bound op saturates), fp32 / bf16 `F.linear` peaks (lowbit.bench.roofline). ~2-5 s."""
    import torch

    from lowbit.bench.roofline import MiB, measure_bandwidth, measure_machine
    from lowbit.codegen.tune.timing import device_name

    cores = threads or os.cpu_count() or 1
    old = torch.get_num_threads()
    try:
        torch.set_num_threads(cores)
        m = measure_machine("cpu", cores, quick=quick)
        torch.set_num_threads(1)
        one = measure_bandwidth("cpu", (256 if quick else 512) * MiB, repeats=3)
    finally:
        torch.set_num_threads(old)
    frac = min(1.0, one / m.bandwidth_gbs) if m.bandwidth_gbs > 0 else 1.0
    knee = min(1.0, 1.0 / (cores * frac)) if cores > 1 else 1.0
    base = PRESETS["cpu-dev"]
    peaks = {k: v / 1e3 for k, v in m.peak_gflops.items()}
    peaks.setdefault("int8", peaks.get("bfloat16", peaks["float32"]))
    return replace(
        base,
        name=f"{device_name('cpu')} (probed)",
        units=cores,
        peak_tflops=tuple(sorted(peaks.items())),
        hbm_gbs=m.bandwidth_gbs,
        memory_knee=knee,
        source=f"probed: bandwidth {m.bandwidth_gbs:.1f} GB/s all cores, {one:.1f} GB/s one core; "
        f"peaks {', '.join(f'{k} {v * 1e3:.0f} GFLOP/s' for k, v in sorted(peaks.items()))}",
    )


__all__ = [
    "CATEGORIES",
    "CPU_INTERFERENCE",
    "GPU_INTERFERENCE",
    "PRESETS",
    "Category",
    "Hardware",
    "HardwareError",
    "get_hardware",
    "probe_cpu",
]
