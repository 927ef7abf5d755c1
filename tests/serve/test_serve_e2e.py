"""The server end to end: the real engine on the tiny artifact behind a real uvicorn on loopback, driven by the
official `openai` client and raw HTTP. Greedy text equals what `ModelRunner.generate` (lowbit generate) makes;
streamed == whole; usage counts; stop strings; chat; a client gone mid-stream frees its pages; malformed bodies
get error objects and leave the server healthy; 32 concurrent streams all complete with every page free."""

from __future__ import annotations

import asyncio
import json

import httpx
import openai
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from prometheus_client.parser import text_string_to_metric_families
from serve_fakes import ServerThread, wait_until

from lowbit.compiler import load_compiled
from lowbit.runtime.async_engine import AsyncLLMEngine
from lowbit.runtime.engine import LLMEngine
from lowbit.runtime.sampler import SamplingParams
from lowbit.serve.app import build_app

NAME = "tiny-llama"
GREEDY = {"temperature": 0.0, "extra_body": {"ignore_eos": True}}


@pytest.fixture(scope="module")
def served(tiny_artifact):
    engine = AsyncLLMEngine(LLMEngine(tiny_artifact, max_num_seqs=16, verify="none"), max_waiting=256)
    with ServerThread(build_app(engine, manage_engine=True, shutdown_timeout=5)) as srv:
        yield srv, engine


@pytest.fixture(scope="module")
def client(served):
    srv, _ = served
    with openai.OpenAI(base_url=f"{srv.url}/v1", api_key="unused", max_retries=0) as c:
        yield c


def idle(engine) -> bool:
    s = engine.stats()
    return s.num_running == 0 and s.num_waiting == 0 and s.kv_usage == 0.0


def test_greedy_completion_equals_lowbit_generate(client, served, tiny_artifact):
    model = load_compiled(tiny_artifact, verify="none")
    prompt = "Hello, lowbit!"
    ids = model.tokenizer.encode(prompt).ids
    (ref,) = model.runner(max_num_seqs=1).generate([ids], SamplingParams(max_tokens=10, ignore_eos=True))
    r = client.completions.create(model=NAME, prompt=prompt, max_tokens=10, **GREEDY)
    assert r.choices[0].text == model.tokenizer.decode(ref.token_ids)
    assert r.choices[0].finish_reason == "length"
    assert (r.usage.prompt_tokens, r.usage.completion_tokens, r.usage.total_tokens) == (len(ids), 10, len(ids) + 10)
    assert r.model == NAME and [m.id for m in client.models.list().data] == [NAME]


def test_stream_equals_whole_answer_with_usage(client):
    whole = client.completions.create(model=NAME, prompt=[5, 6, 7, 8], max_tokens=12, **GREEDY)
    stream = client.completions.create(model=NAME, prompt=[5, 6, 7, 8], max_tokens=12, stream=True,
                                       stream_options={"include_usage": True}, **GREEDY)  # fmt: skip
    chunks = list(stream)
    usage = chunks[-1].usage
    assert chunks[-1].choices == [] and (usage.prompt_tokens, usage.completion_tokens) == (4, 12)
    assert "".join(c.choices[0].text for c in chunks[:-1]) == whole.choices[0].text
    assert chunks[-2].choices[0].finish_reason == "length"


def test_stop_string(client):
    text = client.completions.create(model=NAME, prompt="stop here", max_tokens=24, **GREEDY).choices[0].text
    pairs = [text[i : i + 2] for i in range(4, len(text) - 2)]
    stop = next(p for p in pairs if p.strip() and p.isprintable())
    r = client.completions.create(model=NAME, prompt="stop here", max_tokens=24, stop=[stop], **GREEDY)
    assert r.choices[0].text == text[: text.index(stop)] and r.choices[0].finish_reason == "stop"
    assert r.usage.completion_tokens < 24


def test_chat_both_ways(client, served):
    srv, _ = served
    messages = [{"role": "user", "content": "Say something."}]
    whole = client.chat.completions.create(model=NAME, messages=messages, max_completion_tokens=8, **GREEDY)
    assert whole.choices[0].message.role == "assistant" and whole.usage.completion_tokens == 8
    n_prompt = httpx.post(f"{srv.url}/tokenize", json={"messages": messages}).json()["count"]
    assert whole.usage.prompt_tokens == n_prompt
    chunks = list(client.chat.completions.create(model=NAME, messages=messages, max_tokens=8, stream=True, **GREEDY))
    assert chunks[0].choices[0].delta.role == "assistant"
    assert "".join(c.choices[0].delta.content or "" for c in chunks) == whole.choices[0].message.content


def test_disconnect_mid_stream_frees_pages(served):
    srv, engine = served
    body = {"model": NAME, "prompt": "a long one", "max_tokens": 200, "ignore_eos": True, "stream": True}
    with httpx.Client(base_url=srv.url) as c, c.stream("POST", "/v1/completions", json=body) as r:
        lines = r.iter_lines()
        got: list = []
        for line in lines:
            if line.startswith("data: "):
                got.append(json.loads(line[6:]))
                if len(got) == 3:
                    break
        assert engine.stats().kv_usage > 0
    assert wait_until(lambda: idle(engine), timeout=10)
    metrics = httpx.get(f"{srv.url}/metrics").text
    aborted = [s.value for fam in text_string_to_metric_families(metrics) for s in fam.samples
               if s.name == "lowbit:request_success_total" and s.labels.get("finished_reason") == "abort"]  # fmt: skip
    assert aborted and aborted[0] >= 1


@pytest.mark.parametrize(
    "body,status",
    [
        (b"{", 400),
        ({"model": NAME, "prompt": "x", "max_tokens": 0}, 400),
        ({"model": NAME, "prompt": "x", "max_tokens": 10_000}, 400),
        ({"model": NAME, "prompt": [1] * 300}, 400),
        ({"model": NAME, "prompt": [100_000]}, 400),
        ({"model": NAME, "prompt": "x", "wat": True}, 400),
        ({"model": NAME, "prompt": "x", "presence_penalty": 1}, 400),
        ({"model": "nope", "prompt": "x"}, 404),
    ],
)
def test_malformed_requests(served, body, status):
    srv, engine = served
    kw = {"content": body} if isinstance(body, bytes) else {"json": body}
    r = httpx.post(f"{srv.url}/v1/completions", **kw)
    assert r.status_code == status and set(r.json()["error"]) == {"message", "type", "param", "code"}
    assert httpx.get(f"{srv.url}/health").status_code == 200 and idle(engine)


def test_32_concurrent_streams_complete_and_free_every_page(served):
    srv, engine = served

    async def one(c: openai.AsyncOpenAI, i: int) -> tuple[int, str]:
        stream = await c.completions.create(model=NAME, prompt=f"client {i}", max_tokens=12, stream=True,
                                            stream_options={"include_usage": True}, **GREEDY)  # fmt: skip
        text, tokens = "", 0
        async for chunk in stream:
            if chunk.choices:
                text += chunk.choices[0].text
            if chunk.usage is not None:
                tokens = chunk.usage.completion_tokens
        return tokens, text

    async def run() -> list:
        async with openai.AsyncOpenAI(base_url=f"{srv.url}/v1", api_key="unused", max_retries=0) as c:
            return await asyncio.gather(*(one(c, i) for i in range(32)), return_exceptions=True)

    results = asyncio.run(run())
    errors = [r for r in results if isinstance(r, BaseException)]
    assert errors == [], errors[:3]
    assert all(tokens == 12 for tokens, _ in results)
    assert wait_until(lambda: idle(engine), timeout=10)


EXTREMES = [-(2**70), -(2**63) - 1, -(2**63), -1, 2**31, 2**63 - 1, 2**63, 2**64, 2**70]
WIDE = st.one_of(st.integers(-3, 600), st.sampled_from(EXTREMES))
REAL = st.floats(allow_nan=False, allow_infinity=False)
FIELDS = {
    "prompt": st.one_of(
        st.text(max_size=20), st.lists(st.integers(-2, 600), max_size=5), st.lists(st.text(max_size=5), max_size=2)
    ),
    "max_tokens": st.one_of(st.none(), st.integers(-2, 6)),
    "temperature": st.one_of(st.none(), REAL),
    "top_p": REAL,
    "top_k": WIDE,
    "seed": WIDE,
    "n": st.integers(-1, 2),
    "stop": st.one_of(st.none(), st.text(max_size=3), st.lists(st.text(max_size=3), max_size=2)),
    "stop_token_ids": st.lists(WIDE, max_size=2),
    "min_tokens": WIDE,
    "priority": WIDE,
    "ignore_eos": st.booleans(),
    "echo": st.booleans(),
    "stream": st.booleans(),
    "skip_special_tokens": st.booleans(),
    "include_stop_str_in_output": st.booleans(),
}


@pytest.mark.parametrize(
    "extra",
    [
        *({"seed": v, "n": 2} for v in EXTREMES),
        *({"stop_token_ids": [v], "top_k": v, "priority": v, "temperature": 0.5} for v in EXTREMES),
        {"temperature": 1e-30},
        {"temperature": 2.0, "top_p": 1e-9},
        {"prompt": [0, 1, 2], "skip_special_tokens": False},
        {"prompt": "\x00\ud7ff\uffff", "echo": True},
        {"min_tokens": 3, "stop": ["a", "e", " "]},
    ],
)
def test_extreme_values_leave_the_engine_serving(served, extra):
    srv, engine = served
    r = httpx.post(f"{srv.url}/v1/completions", json={"prompt": "hi", "max_tokens": 3, **extra}, timeout=60)
    assert r.status_code in (200, 400) and "server_error" not in r.text, r.text
    ok = httpx.post(f"{srv.url}/v1/completions", json={"prompt": "hi", "max_tokens": 2}, timeout=60)
    assert ok.status_code == 200 and wait_until(lambda: idle(engine), timeout=10)


@settings(max_examples=25, deadline=None)
@given(body=st.fixed_dictionaries({}, optional=FIELDS))
def test_any_request_leaves_the_server_healthy(served, body):
    srv, engine = served
    r = httpx.post(f"{srv.url}/v1/completions", json=body, timeout=60)
    assert r.status_code in (200, 400), r.text
    if r.status_code == 400 or not body.get("stream"):
        assert ("error" in r.json()) == (r.status_code == 400)
    assert "server_error" not in r.text
    assert httpx.get(f"{srv.url}/health").status_code == 200
    assert wait_until(lambda: idle(engine), timeout=10)
