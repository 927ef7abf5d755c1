"""`AsyncLLMEngine` under asyncio: concurrent streams get the same tokens as the offline engine, leaving a stream
early aborts it and frees its pages, backpressure raises QueueFull, a failing step fails only what was in
flight and the engine keeps serving, and shutdown drains or aborts cleanly."""

from __future__ import annotations

import asyncio
import time

import pytest

from lowbit import LLM
from lowbit.compiler import load_compiled
from lowbit.runtime.async_engine import AsyncLLMEngine
from lowbit.runtime.engine import LLMEngine
from lowbit.runtime.outputs import EngineDead, QueueFull
from lowbit.runtime.sampler import SamplingParams

PROMPTS = [[5, 17, 99, 3], [200, 201, 7], [42], list(range(60, 90))]


@pytest.fixture(scope="module")
def model(tiny_exact_artifact):
    return load_compiled(tiny_exact_artifact)


def slowed(engine: LLMEngine, seconds: float = 0.02) -> LLMEngine:
    """Each step takes at least `seconds`: tests about timing (queueing, timeouts) must not depend on how fast
    the kernels happen to be."""
    real = engine.runner.step

    def step(chunks, **kw):
        time.sleep(seconds)
        return real(chunks, **kw)

    engine.runner.step = step
    return engine


async def idle(eng, seconds: float = 2.0):
    """The engine's stats once nothing runs and no page is in use (or after `seconds`)."""
    end = time.monotonic() + seconds
    st = eng.stats()
    while (st.num_running or st.kv_usage) and time.monotonic() < end:
        await asyncio.sleep(0.01)
        st = eng.stats()
    return st


async def collect(eng, prompt, params, rid=None):
    deltas = []
    async for out in eng.generate(prompt, params, rid):
        deltas.append(out)
    return deltas


async def collect_rest(stream, outs):
    async for out in stream:
        outs.append(out)
    return outs


def test_concurrent_streams_equal_offline(model):
    params = SamplingParams(max_tokens=10, ignore_eos=True)
    want = [o.token_ids for o in LLM(model).generate(PROMPTS, params)]

    async def main():
        eng = AsyncLLMEngine(LLMEngine(model, max_num_seqs=2)).start()
        try:
            streams = await asyncio.gather(*(collect(eng, p, params) for p in PROMPTS))
        finally:
            await eng.shutdown(timeout=5)
        return streams, eng.stats()

    streams, stats = asyncio.run(main())
    for s, w in zip(streams, want, strict=True):
        assert [t for o in s for t in o.delta_token_ids] == w
        assert s[-1].finished and s[-1].finish_reason == "length" and not any(o.finished for o in s[:-1])
        assert s[-1].metrics.ttft is not None and s[-1].metrics.e2e >= s[-1].metrics.ttft >= 0
    assert stats.kv_usage == 0.0 and stats.generation_tokens == 10 * len(PROMPTS)


def test_leaving_a_stream_aborts_it_and_frees_pages(model):
    async def main():
        eng = AsyncLLMEngine(LLMEngine(model)).start()
        try:
            agen = eng.generate(PROMPTS[3], SamplingParams(max_tokens=200, ignore_eos=True), "long")
            first = await agen.__anext__()
            assert first.delta_token_ids
            await agen.aclose()  # what a client disconnect does to the server's iterator
            st = await idle(eng)
            # aborted, not run to its end (which would also free the pages, after 200 tokens)
            assert st.num_running == 0 and st.kv_usage == 0.0 and st.generation_tokens < 200, st
            sampled = st.generation_tokens
            # a task cancelled mid-stream (CancelledError inside the iterator) is aborted too
            started = asyncio.Event()

            async def consume():
                async for _ in eng.generate(PROMPTS[0], SamplingParams(max_tokens=250, ignore_eos=True)):
                    started.set()

            task = asyncio.create_task(consume())
            await started.wait()  # cancel right after the first token: far from its 250th
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
            return sampled, await idle(eng)
        finally:
            await eng.shutdown(timeout=1)

    sampled, st = asyncio.run(main())
    assert st.num_running == 0 and st.num_waiting == 0 and st.kv_usage == 0.0
    assert st.generation_tokens < sampled + 250  # aborted, not run to its 250th token


def test_backpressure_and_bad_requests(model):
    async def main():
        eng = AsyncLLMEngine(slowed(LLMEngine(model, max_num_seqs=1)), max_waiting=1).start()
        try:
            with pytest.raises(ValueError, match="maximum context length"):
                await collect(eng, [1] * 250, SamplingParams(max_tokens=10))
            params = SamplingParams(max_tokens=30, ignore_eos=True)
            stream = eng.generate(PROMPTS[0], params)
            first = [await stream.__anext__()]  # it runs (>= 29 more steps of 20 ms)
            running = asyncio.create_task(collect_rest(stream, first))
            waiting = asyncio.create_task(collect(eng, PROMPTS[1], params))  # it waits; the one after is refused
            await asyncio.sleep(0.05)
            with pytest.raises(QueueFull):
                await collect(eng, PROMPTS[2], params)
            done = await asyncio.gather(running, waiting)
            assert all(d[-1].finish_reason == "length" for d in done)
        finally:
            await eng.shutdown(timeout=5)
        with pytest.raises(EngineDead):
            await collect(eng, PROMPTS[0], params)

    asyncio.run(main())


def test_a_failing_step_fails_in_flight_requests_and_the_engine_goes_on(model):
    async def main():
        engine = LLMEngine(model)
        eng = AsyncLLMEngine(engine).start()
        real = engine.runner.step
        calls = {"n": 0}

        def flaky(chunks, **kw):
            calls["n"] += 1
            if calls["n"] == 2:
                raise RuntimeError("kernel exploded")
            return real(chunks, **kw)

        engine.runner.step = flaky
        try:
            with pytest.raises(RuntimeError, match="kernel exploded"):
                await collect(eng, PROMPTS[0], SamplingParams(max_tokens=5, ignore_eos=True))
            ok = await collect(eng, PROMPTS[1], SamplingParams(max_tokens=5, ignore_eos=True))
            assert ok[-1].finish_reason == "length" and eng.errors == 1
            assert eng.stats().kv_usage == 0.0
        finally:
            await eng.shutdown(timeout=5)

    asyncio.run(main())


def test_shutdown_finishes_in_flight_or_aborts_after_the_timeout(model):
    async def main():
        eng = AsyncLLMEngine(slowed(LLMEngine(model))).start()
        short = asyncio.create_task(collect(eng, PROMPTS[0], SamplingParams(max_tokens=3, ignore_eos=True)))
        long = asyncio.create_task(collect(eng, PROMPTS[1], SamplingParams(max_tokens=240, ignore_eos=True)))
        await asyncio.sleep(0.2)
        await eng.shutdown(timeout=0.5)
        s, lg = await asyncio.gather(short, long)
        return s, lg, eng

    s, lg, eng = asyncio.run(main())
    assert s[-1].finish_reason == "length"
    assert lg[-1].finished and lg[-1].finish_reason == "abort"
    assert not eng.is_running and eng.engine.stats().kv_usage == 0.0
