"""When each request of a load test is sent: offsets in seconds from the start of the run.

    arrival_offsets(4, float("inf"))                  -> (0, 0, 0, 0)           all at once
    arrival_offsets(4, 2.0, "poisson", seed=0)        -> (0, g1, g1+g2, ...)    gaps ~ Exp(mean 1/rate)
    arrival_offsets(4, 2.0, "fixed")                  -> (0, 0.5, 1.0, 1.5)

Like vLLM's `get_request`: the first request goes at once and a gap follows every request; the gaps are
Gamma(shape=burstiness, scale=1/(rate·burstiness)) (burstiness 1: exponential, a Poisson process; < 1 burstier,
> 1 more regular), drawn from numpy's PCG64 seeded with `seed`, so a run's schedule is reproducible. The
sender sleeps until `start + offset` (absolute times: a slow send does not push every later request back).
"""

from __future__ import annotations

import math
from typing import Literal

import numpy as np

Arrival = Literal["poisson", "fixed"]
ARRIVALS: tuple[str, ...] = ("poisson", "fixed")


def arrival_offsets(
    n: int, rate: float, arrival: Arrival = "poisson", *, burstiness: float = 1.0, seed: int = 0
) -> tuple[float, ...]:
    """Send offsets (seconds) of `n` requests at `rate` requests/s (inf: all at 0)."""
    if n < 0:
        raise ValueError(f"n {n} requests must be >= 0")
    if not (rate > 0):
        raise ValueError(f"--request-rate {rate!r} must be > 0 requests/s (or inf: all at once)")
    if arrival not in ARRIVALS:
        raise ValueError(f"--arrival {arrival!r} is not known; use one of {list(ARRIVALS)}")
    if not (burstiness > 0 and math.isfinite(burstiness)):
        raise ValueError(f"--burstiness {burstiness!r} must be a finite number > 0 (1 = Poisson)")
    if n == 0:
        return ()
    if math.isinf(rate):
        return (0.0,) * n
    if arrival == "fixed":
        gaps = np.full(n - 1, 1.0 / rate)
    else:
        rng = np.random.Generator(np.random.PCG64(seed))
        gaps = rng.gamma(shape=burstiness, scale=1.0 / (rate * burstiness), size=n - 1)
    return (0.0, *(float(t) for t in np.cumsum(gaps)))


def parse_rate(text: str) -> float:
    """`--request-rate`: "inf" or a positive float (requests per second)."""
    try:
        rate = float(text)
    except ValueError:
        raise ValueError(f"--request-rate {text!r} is not a number; use e.g. 4, 0.5 or inf") from None
    if not rate > 0:
        raise ValueError(f"--request-rate {text!r} must be > 0 requests/s, or inf for all at once")
    return rate


__all__ = ["ARRIVALS", "Arrival", "arrival_offsets", "parse_rate"]
