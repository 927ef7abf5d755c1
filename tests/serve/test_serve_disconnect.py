"""Through a real uvicorn on loopback with the fake engine: a client that goes away (mid-stream, while waiting
for a non-streaming answer, while queued) gets its engine request aborted and its pages freed; shutdown drains
in-flight requests, aborts what outlives the timeout and closes the engine."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator

import httpx
import pytest
from serve_fakes import FakeEngine, ServerThread, wait_until

from lowbit.serve.app import build_app


def _data_events(lines: Iterator[str], count: int) -> list:
    """The next `count` SSE payloads. Keep one `lines = response.iter_lines()` per response: dropping a
    half-read line iterator closes the response (and its connection)."""
    got = []
    for line in lines:
        if line.startswith("data: "):
            got.append(line[6:])
            if len(got) == count:
                break
    return got


def test_disconnect_mid_stream_aborts_and_frees_pages():
    eng = FakeEngine(step_s=0.01)
    with ServerThread(build_app(eng)) as srv, httpx.Client(base_url=srv.url) as c:
        body = {"prompt": "x", "max_tokens": 100, "stream": True}
        with c.stream("POST", "/v1/completions", json=body) as r:
            assert r.status_code == 200
            lines = r.iter_lines()
            assert len(_data_events(lines, 3)) == 3
            assert eng.pages_in_use > 0
        # closing an unfinished response closes its connection
        assert wait_until(lambda: eng.pages_in_use == 0 and len(eng.aborted) == 1)
        ((rid, *_),) = eng.seen
        assert rid in eng.aborted and rid not in eng.finished
        assert c.get("/health").status_code == 200


def test_disconnect_while_waiting_for_a_whole_answer():
    eng = FakeEngine(step_s=0.03)  # 100 tokens take >= 3 s: the 0.3 s client is long gone before they are done
    with ServerThread(build_app(eng)) as srv:
        with pytest.raises(httpx.ReadTimeout):
            httpx.post(f"{srv.url}/v1/completions", json={"prompt": "x", "max_tokens": 100}, timeout=0.3)
        assert wait_until(lambda: eng.pages_in_use == 0 and len(eng.aborted) == 1)
        assert eng.finished == {}


def test_disconnect_while_queued():
    eng = FakeEngine(step_s=0.03, max_num_seqs=1)  # the first request's 100 tokens (>= 3 s) outlast the checks below
    with ServerThread(build_app(eng)) as srv, httpx.Client(base_url=srv.url) as c:
        with c.stream("POST", "/v1/completions", json={"prompt": "a", "max_tokens": 100, "stream": True}) as first:
            _data_events(lines := first.iter_lines(), 1)
            with pytest.raises(httpx.ReadTimeout):  # no seat: headers wait for the first token
                httpx.post(f"{srv.url}/v1/completions", json={"prompt": "b", "stream": True}, timeout=0.3)
            assert wait_until(lambda: eng.waiting == 0 and len(eng.aborted) == 1)
            assert len(_data_events(lines, 1)) == 1  # the first is still streaming
        assert wait_until(lambda: eng.pages_in_use == 0 and len(eng.aborted) == 2)


def test_shutdown_finishes_in_flight_requests_then_closes_the_engine():
    eng = FakeEngine(step_s=0.01)
    srv = ServerThread(build_app(eng, manage_engine=True), timeout_graceful_shutdown=10)
    with srv, httpx.Client(base_url=srv.url) as c:
        assert eng.started
        with c.stream("POST", "/v1/completions", json={"prompt": "x", "max_tokens": 40, "stream": True}) as r:
            _data_events(lines := r.iter_lines(), 2)
            srv.stop(wait=False)
            rest = _data_events(lines, 10_000)
        chunks = [json.loads(e) for e in rest[:-1]]
        assert rest[-1] == "[DONE]" and chunks[-1]["choices"][0]["finish_reason"] == "length"
        assert srv.thread.join(30) is None and not srv.thread.is_alive()
        assert eng.shut_down and eng.pages_in_use == 0
        with pytest.raises(httpx.ConnectError):
            httpx.get(f"{srv.url}/health")


def test_shutdown_aborts_what_outlives_the_timeout():
    eng = FakeEngine(step_s=0.02)
    srv = ServerThread(build_app(eng, manage_engine=True, shutdown_timeout=1), timeout_graceful_shutdown=1)
    with srv:
        outcome: dict = {}

        def client() -> None:
            try:
                body = {"prompt": "x", "max_tokens": 120}
                outcome["r"] = httpx.post(f"{srv.url}/v1/completions", json=body, timeout=30)
            except httpx.HTTPError as e:
                outcome["e"] = e

        t = threading.Thread(target=client)
        t.start()
        assert wait_until(lambda: eng.pages_in_use > 0)
        srv.stop()
        t.join(10)
        assert eng.shut_down and eng.pages_in_use == 0 and len(eng.aborted) == 1
        r = outcome["r"]  # the cancelled handler aborted its request and still answered
        assert r.status_code == 503 and r.json()["error"]["code"] == "unavailable" and "retry-after" in r.headers
