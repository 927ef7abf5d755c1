"""timing.py: samples, statistics, cache flushing, thread and device settings."""

from __future__ import annotations

import os
import time

import numpy as np
import pytest

from lowbit.codegen.tune.timing import (
    MAX_RING,
    RING_MAX_BYTES,
    RING_MIN_BYTES,
    Timing,
    benchmark,
    benchmark_ring,
    device_name,
    flush_cache,
    last_level_cache_bytes,
    ring_copies,
    set_threads,
)


def test_benchmark_samples_are_positive_and_median_is_bracketed() -> None:
    a = np.random.default_rng(0).standard_normal((64, 64))
    t = benchmark(lambda: a @ a, repeats=5, flush=False)
    assert len(t.samples) >= 5
    assert all(s > 0 for s in t.samples)
    assert t.min <= t.median <= t.max
    assert t.iqr >= 0


def test_benchmark_calls_warmup_untimed_then_repeats() -> None:
    calls = []
    t = benchmark(lambda: calls.append(1), repeats=3, warmup=2, flush=False)
    assert len(calls) == 5 and len(t.samples) == 3


def test_benchmark_min_time_takes_more_samples() -> None:
    t = benchmark(lambda: time.sleep(0.002), repeats=1, warmup=0, flush=False, min_time_ms=10)
    assert len(t.samples) >= 2 and sum(t.samples) >= 10


def test_benchmark_with_flush_still_measures_only_the_call() -> None:
    t = benchmark(lambda: time.sleep(0.001), repeats=2, warmup=0, flush=True)
    assert len(t.samples) == 2 and t.min >= 1.0


def test_benchmark_ring_warms_every_copy_then_cycles_in_order() -> None:
    calls: list[int] = []
    fns = [lambda i=i: calls.append(i) for i in range(3)]
    t = benchmark_ring(fns, repeats=4, warmup=1, warmup_ms=0)
    # one untimed (building) pass, one untimed pass more, then whole passes covering >= 4 samples: 6 timed calls
    assert calls == [0, 1, 2] * 4
    assert len(t.samples) == 6 and all(s > 0 for s in t.samples)
    calls.clear()
    slow = [lambda i=i: (calls.append(i), time.sleep(0.002)) for i in range(3)]
    t = benchmark_ring(slow, repeats=3, warmup=1, warmup_ms=10)
    # one untimed pass (~6 ms), then untimed calls in ring order for 10 ms counted after it (the pass's time
    # does not count: a first pass that builds plans is not the steady state) and at least one whole pass,
    # then one timed pass
    warm = calls[3:-3]
    assert calls[:3] == [0, 1, 2] and calls[-3:] == [0, 1, 2] and len(t.samples) == 3
    assert 3 <= len(warm) <= 6 and warm == [i % 3 for i in range(len(warm))]
    calls.clear()
    benchmark_ring(slow, repeats=1, warmup=1, warmup_ms=0)
    assert calls == [0, 1, 2] * 3  # no warm-up time asked for: still the one whole pass after building
    calls.clear()
    benchmark_ring(slow, repeats=1, warmup=0, warmup_ms=1)
    assert calls == [0, 0, 1, 2]  # warmup=0 still warms up for warmup_ms: one call, then the timed pass
    calls.clear()
    benchmark_ring(fns, repeats=1, warmup=0, warmup_ms=0)
    assert calls == [0, 1, 2]  # nothing untimed at all
    with pytest.raises(ValueError, match="repeats"):
        benchmark_ring(fns, repeats=0)
    with pytest.raises(ValueError, match="call"):
        benchmark_ring([], repeats=1)


def test_ring_copies_moves_the_ring_minimum_between_uses() -> None:
    llc = last_level_cache_bytes() or 64 * 2**20
    moved = min(max(2 * llc, RING_MIN_BYTES), RING_MAX_BYTES)
    for nbytes in (llc // 3, llc, 3 * llc, moved // 7 + 1, moved + 1):
        n = ring_copies(nbytes)
        assert (n - 1) * nbytes >= moved or n == MAX_RING  # the others move >= the ring minimum
        assert (n - 2) * nbytes < moved  # and no copy more than that needs
    assert ring_copies(moved + 1) == 2
    assert ring_copies(1) == MAX_RING


def test_benchmark_rejects_zero_repeats() -> None:
    with pytest.raises(ValueError, match="repeats"):
        benchmark(lambda: None, repeats=0)


def test_timing_statistics_oracle() -> None:
    t = Timing((5.0, 1.0, 3.0, 2.0, 4.0))
    assert (t.median, t.min, t.max) == (3.0, 1.0, 5.0)
    assert t.iqr == pytest.approx(2.0)  # numpy linear percentiles: 4 - 2
    assert "3 ms" in str(t)


def test_flush_cache_runs_default_and_sized() -> None:
    flush_cache()
    flush_cache(nbytes=1 << 20)
    flush_cache(nbytes=1 << 20)  # the buffer is reused


def test_last_level_cache_is_positive_when_known() -> None:
    llc = last_level_cache_bytes()
    assert llc is None or llc >= 1 << 16


def test_set_threads_sets_env_and_torch() -> None:
    old = {k: os.environ.get(k) for k in ("TVM_NUM_THREADS", "OMP_NUM_THREADS")}
    torch = pytest.importorskip("torch")
    old_torch = torch.get_num_threads()
    try:
        assert set_threads(1) == 1
        assert os.environ["TVM_NUM_THREADS"] == "1" and os.environ["OMP_NUM_THREADS"] == "1"
        assert torch.get_num_threads() == 1
        assert set_threads() == os.cpu_count()
    finally:
        torch.set_num_threads(old_torch)
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def test_device_name_names_the_cpu_and_cores() -> None:
    name = device_name()
    assert f"({os.cpu_count()} cores)" in name and len(name) > len(" cores") + 3


@pytest.mark.gpu
def test_cuda_benchmark_uses_events_and_flushes() -> None:
    import torch

    a = torch.randn(1024, 1024, device="cuda")
    flush_cache("cuda")
    t = benchmark(lambda: a @ a, repeats=5, device="cuda")
    assert len(t.samples) == 5 and t.min > 0
    assert device_name("cuda") == torch.cuda.get_device_name()


@pytest.mark.gpu
def test_cuda_ring_in_a_graph_times_the_kernels_not_the_launches() -> None:
    """A ring captured in one CUDA graph: a sample per replay, each the replay's time over the calls; the
    host's launch cost is out (a small matmul's graphed time is below its eager time); a call that cannot be
    captured (it copies to the host) falls back to eager samples."""
    import torch

    a = [torch.randn(256, 256, device="cuda") for _ in range(4)]
    fns = [lambda a=a_: a @ a for a_ in a]
    graphed = benchmark_ring(fns, repeats=8, device="cuda", graph=True)
    eager = benchmark_ring(fns, repeats=8, device="cuda")
    assert graphed.graphed and not eager.graphed and len(graphed.samples) == 8
    assert 0 < graphed.median < eager.median
    host = benchmark_ring([lambda: a[0].sum().item()], repeats=3, device="cuda", graph=True)
    assert not host.graphed and len(host.samples) == 3
