"""The reference schedules the report compares, as plans:

    unsplit_plan(mo)                        every op on the whole batch, one after another, whole device
    split_plan(mo, wl, overlap=False)       NanoFlow's nano-batches, still one after another on one stream
    split_plan(mo, wl, overlap=True)        NanoFlow-like: the same nano-batches on three units (GEMMs and
                                            elementwise ops / attention / collectives) with fixed shares

NanoFlow's split for Llama-2-70B on 8xA100 at dense batch 2048 (ANCHORS): the attention block (input norm,
QKV, rope, attention) in 4 nano-batches of 256/384/768/640 rows, the rest (O, its all-reduce, post norm,
up-gate, activation, down, its all-reduce) in 2 of 640/1408; other batches keep the same fractions.
"""

from __future__ import annotations

from collections.abc import Mapping

from lowbit.planner.nanoplan import NanoPlan, Placement
from lowbit.planner.ops import ModelOps
from lowbit.planner.workload import Workload
from lowbit.runtime.plan import Unit

NANOFLOW_ATTN = (256 / 2048, 384 / 2048, 768 / 2048, 640 / 2048)
NANOFLOW_MLP = (640 / 2048, 1408 / 2048)
ATTN_BLOCK = ("input_norm", "qkv", "rope", "attn")
# The NanoFlow-like fixed shares: most SMs to the GEMMs, a slice to attention, a few to the collectives (the
# three sum to 1 so they can all overlap).
NANOFLOW_SHARES: Mapping[str, float] = {"compute": 0.75, "memory": 0.15, "network": 0.10}
KIND_UNIT = {"gemm": "compute", "elementwise": "compute", "attention": "memory", "collective": "network"}


def units_for(mo: ModelOps) -> tuple[Unit, ...]:
    """compute + memory units, and a network unit when the model has collectives (tp > 1)."""
    units = [Unit("compute", "compute", stream=0), Unit("memory", "memory", stream=1)]
    if any(o.kind == "collective" for o in mo.ops):
        units.append(Unit("network", "network", stream=2))
    return tuple(units)


def _meta(mo: ModelOps, wl: Workload | None, hardware: str) -> dict:
    return {"model": mo.name, "precision": mo.precision.name, "tp": mo.tp, "workload": wl, "hardware": hardware}


def unsplit_plan(mo: ModelOps, wl: Workload | None = None, *, tile: int = 128, hardware: str = "") -> NanoPlan:
    """The sequential schedule: one unit, every op whole, the whole device."""
    return NanoPlan((Unit("compute", "compute", stream=0),), (), tile, **_meta(mo, wl, hardware))


def split_plan(
    mo: ModelOps,
    wl: Workload | None = None,
    *,
    overlap: bool = True,
    tile: int = 128,
    shares: Mapping[str, float] = NANOFLOW_SHARES,
    hardware: str = "",
) -> NanoPlan:
    """NanoFlow's nano-batch fractions; with `overlap` on three units with `shares` per unit kind, else all on
    one unit with the whole device (nano-batching without overlap: NanoFlow's ablation)."""
    units = units_for(mo) if overlap else (Unit("compute", "compute", stream=0),)
    placements = []
    for o in mo.ops:
        fr = NANOFLOW_ATTN if o.name in ATTN_BLOCK else NANOFLOW_MLP
        unit = KIND_UNIT[o.kind] if overlap else "compute"
        placements.append(Placement(o.name, fr, (unit,), (shares[unit] if overlap else 1.0,)))
    return NanoPlan(units, tuple(placements), tile, **_meta(mo, wl, hardware))


__all__ = ["ATTN_BLOCK", "KIND_UNIT", "NANOFLOW_ATTN", "NANOFLOW_MLP", "NANOFLOW_SHARES", "split_plan", "units_for",
           "unsplit_plan"]  # fmt: skip
