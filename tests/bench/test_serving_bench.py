"""`lowbit bench serve`: vLLM's metric definitions against hand-computed values, the seeded arrival process,
request sources (synthetic, ShareGPT), the streaming client on a mocked transport, and the command end to end
against an in-process fake OpenAI server and against `lowbit serve` on the tiny artifact."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
import json
import math
import sys
import threading
import time

import httpx
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from lowbit.bench.arrivals import arrival_offsets, parse_rate
from lowbit.bench.client import RequestOptions, run_load
from lowbit.bench.compare import json_safe, ratios, side_by_side
from lowbit.bench.datasets import SampleRequest, read_sharegpt, sharegpt_requests, synthetic_requests
from lowbit.bench.metrics import RequestResult, serving_metrics, tpot
from lowbit.bench.server_process import free_port
from lowbit.bench.serving import add_arguments, format_report
from lowbit.bench.serving import main as serve_main

# -- metrics: a synthetic trace computed by hand ------------------------------------------------------------
TRACE = [
    RequestResult(10, 5, True, ttft=0.1, itl=(0.2, 0.3, 0.1, 0.4), latency=1.1),
    RequestResult(20, 3, True, ttft=0.3, itl=(0.5, 0.2), latency=1.0),
    RequestResult(30, 1, True, ttft=0.6, itl=(), latency=0.6),
    RequestResult(40, 0, False, error="HTTP 500: boom"),
]


def test_metrics_match_hand_computed_values():
    m = serving_metrics(TRACE, duration=2.0, percentiles=(50, 90, 99))
    approx = pytest.approx
    assert (m["completed"], m["failed"]) == (3, 1)
    assert (m["total_input_tokens"], m["total_output_tokens"]) == (60, 9)  # the failed request counts nothing
    assert m["request_throughput"] == approx(1.5)
    assert m["output_throughput"] == approx(4.5)
    assert m["total_token_throughput"] == approx(34.5)
    # TTFT [100, 300, 600] ms: p90 at rank 0.9*2 = 1.8 -> 300 + 0.8*300 (linear interpolation)
    assert m["mean_ttft_ms"] == approx(1000 / 3)
    assert m["median_ttft_ms"] == approx(300) == m["p50_ttft_ms"]
    assert m["std_ttft_ms"] == approx(
        math.sqrt(((100 - 1000 / 3) ** 2 + (300 - 1000 / 3) ** 2 + (600 - 1000 / 3) ** 2) / 3)
    )
    assert m["p90_ttft_ms"] == approx(540)
    assert m["p99_ttft_ms"] == approx(594)
    # TPOT = (e2e - ttft) / (out - 1): (1.1-0.1)/4 = 250 ms, (1.0-0.3)/2 = 350 ms; one-token request excluded
    assert m["mean_tpot_ms"] == approx(300)
    assert m["p90_tpot_ms"] == approx(340)
    # ITL: every gap of every request pooled: [100, 200, 200, 300, 400, 500]
    assert m["mean_itl_ms"] == approx(1700 / 6)
    assert m["median_itl_ms"] == approx(250)
    assert m["p90_itl_ms"] == approx(450)
    # E2E [600, 1000, 1100]
    assert m["mean_e2el_ms"] == approx(900)
    assert m["p99_e2el_ms"] == approx(1098)


def test_tpot_needs_two_tokens_and_success():
    assert tpot(TRACE[0]) == pytest.approx(0.25)
    assert tpot(TRACE[2]) is None and tpot(TRACE[3]) is None


def test_metrics_keys_are_vllms():
    m = serving_metrics(TRACE, 1.0, (99,))
    expected = {"duration", "completed", "total_input_tokens", "total_output_tokens", "request_throughput",
                "output_throughput", "total_token_throughput"}  # fmt: skip
    for name in ("ttft", "tpot", "itl", "e2el"):
        expected |= {f"mean_{name}_ms", f"median_{name}_ms", f"std_{name}_ms", f"p99_{name}_ms"}
    assert expected <= set(m)
    assert "p99.9_ttft_ms" in serving_metrics(TRACE, 1.0, (99.9,))


def test_all_failed_still_has_every_key():
    m = serving_metrics([TRACE[3]], 1.0)
    assert m["completed"] == 0 and m["mean_ttft_ms"] == 0.0 and m["p99_itl_ms"] == 0.0


def test_duration_must_be_positive():
    with pytest.raises(ValueError, match="duration"):
        serving_metrics(TRACE, 0.0)


# -- arrivals -----------------------------------------------------------------------------------------------
def test_poisson_gaps_are_exponential_with_the_rate():
    rate, n = 5.0, 20001
    t = np.asarray(arrival_offsets(n, rate, "poisson", seed=123))
    gaps = np.diff(t)
    assert t[0] == 0.0 and np.all(gaps >= 0)
    assert gaps.mean() == pytest.approx(1 / rate, rel=0.03)  # std error 0.7%
    assert gaps.std() / gaps.mean() == pytest.approx(1.0, rel=0.03)  # exponential: CV 1
    assert np.mean(gaps < 1 / rate) == pytest.approx(1 - math.exp(-1), abs=0.015)  # CDF at the mean


def test_burstiness_sets_the_coefficient_of_variation():
    gaps = np.diff(arrival_offsets(20001, 2.0, burstiness=4.0, seed=1))
    assert gaps.mean() == pytest.approx(0.5, rel=0.03)
    assert gaps.std() / gaps.mean() == pytest.approx(0.5, rel=0.05)  # Gamma(k): CV = 1/sqrt(k)


def test_arrivals_are_seeded():
    a = arrival_offsets(50, 3.0, seed=7)
    assert a == arrival_offsets(50, 3.0, seed=7)
    assert a != arrival_offsets(50, 3.0, seed=8)


def test_fixed_and_infinite_rates():
    assert arrival_offsets(4, 2.0, "fixed") == pytest.approx((0.0, 0.5, 1.0, 1.5))
    assert arrival_offsets(3, float("inf")) == (0.0, 0.0, 0.0)
    assert arrival_offsets(0, 1.0) == ()


@settings(max_examples=20)
@given(n=st.integers(1, 50), rate=st.floats(0.01, 1e4), seed=st.integers(0, 2**32 - 1))
def test_offsets_start_at_zero_and_never_go_back(n, rate, seed):
    t = arrival_offsets(n, rate, seed=seed)
    assert len(t) == n and t[0] == 0.0 and all(b >= a for a, b in itertools.pairwise(t))


@pytest.mark.parametrize("bad", ["0", "-1", "fast", "nan"])
def test_bad_rates_name_the_flag(bad):
    with pytest.raises(ValueError, match="--request-rate"):
        parse_rate(bad)


# -- requests -----------------------------------------------------------------------------------------------
class WordTokenizer:
    """Whitespace 'tokenizer': BOS (id 1) + one id per word; specials 0..2."""

    class _Enc:
        def __init__(self, ids):
            self.ids = ids

    def encode(self, text, add_special_tokens=True):
        return self._Enc(([1] if add_special_tokens else []) + [3 + len(w) for w in text.split()])

    def decode(self, ids):
        return " ".join("w" * max(1, i - 3) for i in ids)

    def get_added_tokens_decoder(self):
        class T:
            special = True

        return {0: T(), 1: T(), 2: T()}


def _conv(human: str, gpt: str) -> dict:
    return {"id": "x", "conversations": [{"from": "human", "value": human}, {"from": "gpt", "value": gpt}]}


def test_sharegpt_parsing_and_filters(tmp_path):
    words = lambda k: " ".join(["a"] * k)  # noqa: E731
    data = [
        _conv(words(5), words(7)),  # prompt 6 tokens (BOS + 5), output 7: kept
        _conv(words(2), words(7)),  # prompt 3 < 4: pruned
        _conv(words(5), words(3)),  # output 3 < 4: pruned
        {"id": "one-turn", "conversations": [{"from": "human", "value": words(9)}]},  # skipped: no reply
        _conv(words(40), words(30)),  # 41 + 30 > max_model_len 64: pruned
        _conv(words(9), words(4)),  # kept: 10 + 4
    ]
    f = tmp_path / "sharegpt.json"
    f.write_text(json.dumps(data))
    assert len(read_sharegpt(f)) == 5
    reqs = sharegpt_requests(f, 10, WordTokenizer(), seed=0, max_model_len=64)
    assert sorted((r.prompt_len, r.output_len) for r in reqs) == [(6, 7), (10, 4)]
    assert all(isinstance(r.prompt, str) for r in reqs)
    assert reqs == sharegpt_requests(f, 10, WordTokenizer(), seed=0, max_model_len=64)  # seeded order
    assert len(sharegpt_requests(f, 1, WordTokenizer(), seed=0, max_model_len=64)) == 1
    fixed = sharegpt_requests(f, 10, WordTokenizer(), max_model_len=64, fixed_output_len=2)
    assert [r.output_len for r in fixed] == [2] * 5  # with a fixed output length only the length limit prunes


def test_sharegpt_errors_name_the_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="nothing is downloaded"):
        read_sharegpt(tmp_path / "missing.json")
    bad = tmp_path / "bad.json"
    bad.write_text('{"conversations": []}')
    with pytest.raises(ValueError, match="expected a list"):
        read_sharegpt(bad)
    bad.write_text(json.dumps([_conv("a b c d e", "x y z w v"), {"conversations": [{"from": "human"}, {}]}]))
    with pytest.raises(ValueError, match="entry 1"):
        read_sharegpt(bad)
    tiny = tmp_path / "tiny.json"
    tiny.write_text(json.dumps([_conv("a b c d e", "x y z w v")]))
    with pytest.raises(ValueError, match="max-model-len"):
        sharegpt_requests(tiny, 4, WordTokenizer(), max_model_len=8)


def test_synthetic_requests_exact_lengths_no_special_ids_seeded():
    reqs = synthetic_requests(8, 12, 5, vocab_size=40, seed=3, tokenizer=WordTokenizer())
    assert all(r.prompt_len == len(r.prompt) == 12 and r.output_len == 5 for r in reqs)
    assert all(3 <= t < 40 for r in reqs for t in r.prompt)
    assert reqs == synthetic_requests(8, 12, 5, vocab_size=40, seed=3, tokenizer=WordTokenizer())
    assert reqs != synthetic_requests(8, 12, 5, vocab_size=40, seed=4, tokenizer=WordTokenizer())


def test_synthetic_range_ratio_bounds():
    reqs = synthetic_requests(200, 100, 10, vocab_size=50, range_ratio=0.5, seed=0)
    ins = [r.prompt_len for r in reqs]
    outs = [r.output_len for r in reqs]
    assert 50 <= min(ins) < 60 and 140 < max(ins) <= 150
    assert min(outs) >= 5 and max(outs) <= 15
    with pytest.raises(ValueError, match="--range-ratio"):
        synthetic_requests(2, 10, 10, vocab_size=50, range_ratio=1.0)


def test_text_prompts_need_a_tokenizer():
    with pytest.raises(ValueError, match="--tokenizer"):
        synthetic_requests(2, 4, 4, vocab_size=50, prompt_format="text")
    reqs = synthetic_requests(2, 4, 4, vocab_size=50, prompt_format="text", tokenizer=WordTokenizer())
    assert all(isinstance(r.prompt, str) and r.prompt_len == 5 for r in reqs)  # BOS + 4 words


# -- the client, on a mocked transport ----------------------------------------------------------------------
def _sse(objs: list) -> bytes:
    return b"".join(f"data: {json.dumps(o) if not isinstance(o, str) else o}\n\n".encode() for o in objs)


def _handler(request: httpx.Request) -> httpx.Response:
    body = json.loads(request.content)
    assert body["stream"] is True and body["stream_options"] == {"include_usage": True} and body["ignore_eos"]
    n = body["max_tokens"]
    if n == 99:
        return httpx.Response(400, json={"error": {"message": "max_tokens too large", "type": "invalid_request"}})
    if n == 98:
        return httpx.Response(200, content=_sse(["[DONE]"]), headers={"content-type": "text/event-stream"})
    chunks: list = [{"choices": [{"index": 0, "text": f"t{i}", "finish_reason": None}]} for i in range(n)]
    chunks += [{"choices": [], "usage": {"prompt_tokens": len(body["prompt"]) + 1, "completion_tokens": n}}, "[DONE]"]
    return httpx.Response(200, content=b": ping\n\n" + _sse(chunks), headers={"content-type": "text/event-stream"})


def test_client_times_chunks_and_reads_usage():
    reqs = [SampleRequest((5, 6, 7), 3, 4), SampleRequest((5,), 1, 99), SampleRequest((5,), 1, 98)]
    results, duration = asyncio.run(
        run_load("http://mock", reqs, [0.0, 0.0, 0.0], RequestOptions("m"), transport=httpx.MockTransport(_handler))
    )
    ok, bad, empty = results
    assert duration > 0
    assert ok.success and ok.output_len == 4 and len(ok.itl) == 3 and ok.generated_text == "t0t1t2t3"
    assert ok.prompt_len == 4 and ok.prompt_len_source == "server"  # usage wins over the client's count
    assert ok.latency >= ok.ttft >= 0
    assert not bad.success and bad.error == "HTTP 400: max_tokens too large"
    assert not empty.success and "never received" in empty.error


def test_client_respects_max_concurrency_and_arrivals():
    in_flight, peak = 0, 0

    async def handler(request: httpx.Request) -> httpx.Response:
        nonlocal in_flight, peak
        in_flight += 1
        peak = max(peak, in_flight)
        await asyncio.sleep(0.02)
        in_flight -= 1
        return _handler(request)

    reqs = [SampleRequest((5,), 1, 2)] * 6
    t0 = time.perf_counter()
    results, _ = asyncio.run(
        run_load("http://mock", reqs, [0.0] * 5 + [0.15], RequestOptions("m"), max_concurrency=2,
                 transport=httpx.MockTransport(handler))
    )  # fmt: skip
    assert all(r.success for r in results) and peak == 2
    assert results[-1].start_time - t0 >= 0.15  # sent at its offset, not before


def test_side_by_side_ratio_and_json_safe():
    runs = [{"x": 2.0, "n": 3}, {"x": 3.0, "n": 0}]
    table = side_by_side([("x", "x", "{:.1f}"), ("n", "n", "{:d}")], runs, ["unsplit", "nano"])
    assert "nano/unsplit" in table and "1.50x" in table
    assert ratios(runs, ["x", "n"]) == {"x": 1.5, "n": 0.0}
    assert json_safe({"r": float("inf"), "v": [float("nan"), 1.0]}) == {"r": "inf", "v": [None, 1.0]}


# -- the command, end to end --------------------------------------------------------------------------------
def _parse(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser()
    add_arguments(p)
    return p.parse_args(argv)


FAKE_SERVER = r"""
import asyncio, json, sys
import uvicorn
from starlette.applications import Starlette
from starlette.responses import JSONResponse, StreamingResponse
from starlette.routing import Route

NAME, TOKEN_GAP = "fake-server", 0.002  # as a script: "fake-<schedule>", --gap seconds between tokens
SEEN = []  # max_tokens of every completion request, in arrival order


async def health(request):
    return JSONResponse({})


async def models(request):
    return JSONResponse({"object": "list", "data": [{"id": NAME, "object": "model", "max_model_len": 128}]})


async def completions(request):
    body = await request.json()
    SEEN.append(body["max_tokens"])

    async def stream():
        for i in range(body["max_tokens"]):
            await asyncio.sleep(TOKEN_GAP)
            yield "data: " + json.dumps({"choices": [{"index": 0, "text": f" w{i}"}]}) + "\n\n"
        usage = {"prompt_tokens": len(body["prompt"]), "completion_tokens": body["max_tokens"]}
        yield "data: " + json.dumps({"choices": [], "usage": usage}) + "\n\ndata: [DONE]\n\n"

    return StreamingResponse(stream(), media_type="text/event-stream")


app = Starlette(routes=[Route("/health", health), Route("/v1/models", models),
                        Route("/v1/completions", completions, methods=["POST"])])
if __name__ == "__main__":
    NAME = "fake-" + sys.argv[sys.argv.index("--schedule") + 1]
    TOKEN_GAP = float(sys.argv[sys.argv.index("--gap") + 1]) if "--gap" in sys.argv else TOKEN_GAP
    port = int(sys.argv[sys.argv.index("--port") + 1])
    uvicorn.run(app, host="127.0.0.1", port=port, log_level="warning")
"""


@contextlib.contextmanager
def serve_in_thread(app):
    """uvicorn on a free loopback port in a daemon thread; yields the base URL."""
    import uvicorn

    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="error"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started and time.monotonic() < deadline:
        time.sleep(0.01)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(10)


@pytest.fixture
def fake_server(tmp_path):
    """The fake OpenAI streaming server above, in this process (tokens 2 ms apart)."""
    ns: dict = {"__name__": "fake"}
    exec(compile(FAKE_SERVER, "fake_server", "exec"), ns)
    with serve_in_thread(ns["app"]) as url:
        yield url, ns["SEEN"]


def test_bench_serve_against_a_url(fake_server, tmp_path, capsys):
    url, seen = fake_server
    out = tmp_path / "serve.json"
    argv = ["--url", url, "--vocab-size", "100", "--num-prompts", "6", "--input-len", "8", "--output-len", "20",
            "--request-rate", "50", "--max-concurrency", "3", "--warmup", "2", "--json", str(out)]  # fmt: skip
    assert serve_main(_parse(argv)) == 0
    assert seen == [16] * (1 + 2) + [20] * 6  # warm-up (untimed, capped at 16 tokens): 1 alone, then 2 at once
    report = json.loads(out.read_text())
    run = report["runs"][0]
    assert run["model"] == "fake-server" and run["completed"] == 6 and run["failed"] == 0
    assert run["total_input_tokens"] == 48 and run["total_output_tokens"] == 120
    assert run["mean_tpot_ms"] > 0 and run["p99_itl_ms"] > 0 and run["median_e2el_ms"] >= run["median_ttft_ms"]
    assert report["config"]["request_rate"] == 50.0 and run["max_concurrency"] == 3
    assert "mean TTFT (ms)" in capsys.readouterr().out


def test_bench_serve_needs_exactly_one_target(capsys):
    assert serve_main(_parse(["--vocab-size", "10"])) == 2
    assert "--url" in capsys.readouterr().err


def test_format_report_puts_schedules_side_by_side():
    m = serving_metrics(TRACE, 2.0)
    slow = {**m, "output_throughput": 2 * m["output_throughput"]}
    report = {
        "machine": {"name": "cpu", "device": "cpu"},
        "config": {"num_prompts": 4, "dataset": None, "input_len": 8, "output_len": 4, "range_ratio": 0.0,
                   "request_rate": "inf", "arrival": "poisson", "max_concurrency": None, "seed": 0,
                   "percentiles": [50.0, 90.0, 99.0]},
        "runs": [{"schedule": "unsplit", **m}, {"schedule": "nano", **slow, "errors_sample": ["HTTP 500: x"]}],
    }  # fmt: skip
    text = format_report(report)
    assert "nano/unsplit" in text and "rate inf" in text and "error (nano): HTTP 500: x" in text
    line = next(x for x in text.splitlines() if x.startswith("output tok/s"))
    assert line.split()[-1] == "2.00x"


def test_bench_serve_starts_a_server_per_schedule(tmp_path, monkeypatch):
    """ARTIFACT mode: one server process per schedule on a free port, /health awaited, stopped afterwards, the
    runs side by side. The process is the fake server (lowbit serve itself is the next test, in-process)."""
    import lowbit.bench.server_process as sp

    script = tmp_path / "fake_server.py"
    script.write_text(FAKE_SERVER)
    monkeypatch.setattr(sp, "serve_command", lambda art, host, port, args: (sys.executable, str(script), "--port",
                        str(port), *args))  # fmt: skip
    art = tmp_path / "art"
    art.mkdir()
    (art / "config.json").write_text(json.dumps({"vocab_size": 100}))
    out = tmp_path / "serve.json"
    argv = [str(art), "--num-prompts", "4", "--input-len", "8", "--output-len", "4", "--schedules", "unsplit,nano",
            "--server-args", "--gap 0.001", "--log-dir", str(tmp_path), "--json", str(out)]  # fmt: skip
    assert serve_main(_parse(argv)) == 0
    report = json.loads(out.read_text())
    assert [r["schedule"] for r in report["runs"]] == ["unsplit", "nano"]
    assert [r["model"] for r in report["runs"]] == ["fake-unsplit", "fake-nano"]  # each run hit its own server
    assert report["runs"][1]["server_args"] == ["--schedule", "nano", "--gap", "0.001"]
    assert all(r["completed"] == 4 and r["total_output_tokens"] == 16 for r in report["runs"])
    assert set(report["ratios"]["nano/unsplit"]) >= {"output_throughput", "mean_ttft_ms", "p99_itl_ms"}


def test_bench_serve_reports_a_server_that_dies(tmp_path, monkeypatch, capsys):
    import lowbit.bench.server_process as sp

    monkeypatch.setattr(
        sp, "serve_command", lambda *a: (sys.executable, "-c", "import sys; print('no model'); sys.exit(3)")
    )
    art = tmp_path / "art"
    art.mkdir()
    (art / "config.json").write_text(json.dumps({"vocab_size": 100}))
    assert serve_main(_parse([str(art), "--num-prompts", "1", "--schedules", "nano", "--log-dir", str(tmp_path)])) == 1
    err = capsys.readouterr().err
    assert "exited with code 3" in err and "no model" in err  # the log's tail is quoted


def test_bench_serve_against_lowbit_serve(tiny_artifact, tmp_path):
    """The real server (lowbit.serve.app over the engine) on the tiny artifact, in this process, 4 requests."""
    from lowbit.runtime.async_engine import AsyncLLMEngine
    from lowbit.runtime.engine import LLMEngine
    from lowbit.serve.app import build_app

    engine = AsyncLLMEngine(LLMEngine(tiny_artifact, max_num_seqs=4, verify="none"), max_waiting=16)
    out = tmp_path / "serve.json"
    with serve_in_thread(build_app(engine, manage_engine=True, shutdown_timeout=5)) as url:
        argv = ["--url", url, "--tokenizer", str(tiny_artifact), "--num-prompts", "4", "--input-len", "8",
                "--output-len", "4", "--warmup", "0", "--json", str(out)]  # fmt: skip
        assert serve_main(_parse(argv)) == 0
    (run,) = json.loads(out.read_text())["runs"]
    assert run["model"] == "tiny-llama" and run["completed"] == 4 and run["failed"] == 0
    assert run["total_input_tokens"] == 32 and run["total_output_tokens"] == 16  # exact: token-id prompts, ignore_eos
    assert 0 < run["mean_ttft_ms"] <= run["mean_e2el_ms"] and run["mean_tpot_ms"] > 0
