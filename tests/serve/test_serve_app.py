"""The OpenAI-compatible app against a fake engine (in process, starlette's TestClient): response shapes, usage,
streaming, sampling parameters reaching the engine, error objects and status codes, metrics, tokenize."""

from __future__ import annotations

import json

import pytest
from prometheus_client.parser import text_string_to_metric_families
from serve_fakes import FAKE_TEXT, FakeEngine, fake_completion
from starlette.testclient import TestClient

from lowbit.serve.app import build_app
from lowbit.serve.chat import PLAIN_TEMPLATE, ChatTemplate


@pytest.fixture
def engine():
    return FakeEngine()


@pytest.fixture
def client(engine):
    with TestClient(build_app(engine), raise_server_exceptions=False) as c:
        yield c


def events(text: str) -> list:
    """The SSE body as parsed JSON events (and the final "[DONE]")."""
    assert text.endswith("data: [DONE]\n\n")
    out = []
    for block in text.split("\n\n")[:-1]:
        assert block.startswith("data: ")
        payload = block[len("data: ") :]
        out.append(payload if payload == "[DONE]" else json.loads(payload))
    return out


def encode(engine, text, special=True):
    return engine.tokenizer.encode(text, add_special_tokens=special)


def test_completion_text_usage_and_finish_reason(client, engine):
    r = client.post("/v1/completions", json={"model": "fake-model", "prompt": "Hello", "max_tokens": 7})
    assert r.status_code == 200
    body = r.json()
    assert body["object"] == "text_completion" and body["model"] == "fake-model" and body["id"].startswith("cmpl-")
    (choice,) = body["choices"]
    assert choice["text"] == fake_completion(7) and choice["finish_reason"] == "length" and choice["index"] == 0
    n_prompt = len(encode(engine, "Hello"))
    assert body["usage"] == {"prompt_tokens": n_prompt, "completion_tokens": 7, "total_tokens": n_prompt + 7}


def test_sampling_parameters_reach_the_engine(client, engine):
    req = {"prompt": [5, 6, 7], "max_tokens": 9, "temperature": 0.5, "top_p": 0.9, "top_k": 4, "seed": 11,
           "stop": "zz", "stop_token_ids": [2, 3], "ignore_eos": True, "min_tokens": 2, "priority": -1,
           "include_stop_str_in_output": True, "skip_special_tokens": False, "user": "someone"}  # fmt: skip
    assert client.post("/v1/completions", json=req).status_code == 200
    ((_, ids, p, priority),) = engine.seen
    assert ids == [5, 6, 7] and priority == -1
    assert (p.max_tokens, p.temperature, p.top_p, p.top_k, p.seed) == (9, 0.5, 0.9, 4, 11)
    assert p.stop == ("zz",) and p.stop_token_ids == (2, 3) and p.ignore_eos and p.min_tokens == 2
    assert p.include_stop_str_in_output and not p.skip_special_tokens


def test_defaults_follow_openai(client, engine):
    client.post("/v1/completions", json={"prompt": "a"})
    client.post("/v1/chat/completions", json={"messages": [{"role": "user", "content": "a"}]})
    (_, _, p0, _), (_, ids1, p1, _) = engine.seen
    assert p0.max_tokens == 16 and p0.temperature == 1.0 and p0.top_p == 1.0 and p0.top_k == 0 and p0.seed is None
    assert p1.max_tokens == engine.max_model_len - len(ids1)  # chat: whatever fits


def test_several_prompts_and_n(client, engine):
    r = client.post("/v1/completions", json={"prompt": ["ab", [9, 10, 11]], "n": 2, "max_tokens": 3, "seed": 5})
    body = r.json()
    assert [c["index"] for c in body["choices"]] == [0, 1, 2, 3]
    assert all(c["text"] == fake_completion(3) for c in body["choices"])
    assert sorted(p.seed for _, _, p, _ in engine.seen) == [5, 5, 6, 6]  # sample i of a prompt: seed + i
    n_prompt = len(encode(engine, "ab")) + 3  # counted once per prompt, as vLLM
    assert body["usage"] == {"prompt_tokens": n_prompt, "completion_tokens": 12, "total_tokens": n_prompt + 12}
    assert len({rid for rid, *_ in engine.seen}) == 4


def test_echo(client):
    body = client.post("/v1/completions", json={"prompt": "Hi there", "max_tokens": 3, "echo": True}).json()
    assert body["choices"][0]["text"] == "Hi there" + fake_completion(3)
    chunks = events(client.post("/v1/completions", json={"prompt": "Hi", "max_tokens": 3, "echo": True,
                                                         "stream": True}).text)  # fmt: skip
    assert "".join(c["choices"][0]["text"] for c in chunks[:-1]) == "Hi" + fake_completion(3)


def test_stream_matches_the_whole_answer_and_reports_usage(client, engine):
    req = {"prompt": "Hello", "max_tokens": 12, "stream": True, "stream_options": {"include_usage": True}}
    r = client.post("/v1/completions", json=req)
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
    *chunks, usage, done = events(r.text)
    assert done == "[DONE]"
    assert all(c["object"] == "text_completion" and len(c["choices"]) == 1 for c in chunks)
    assert "".join(c["choices"][0]["text"] for c in chunks) == fake_completion(12)
    assert [c["choices"][0]["finish_reason"] for c in chunks][-1] == "length"
    assert all(c["choices"][0]["finish_reason"] is None for c in chunks[:-1])
    n_prompt = len(encode(engine, "Hello"))
    assert usage["choices"] == [] and usage["usage"] == {"prompt_tokens": n_prompt, "completion_tokens": 12,
                                                         "total_tokens": n_prompt + 12}  # fmt: skip
    no_usage = events(client.post("/v1/completions", json={**req, "stream_options": None}).text)
    assert all("usage" not in c for c in no_usage[:-1])


def test_stop_string(client):
    body = client.post("/v1/completions", json={"prompt": "x", "max_tokens": 40, "stop": ["fox", "never"]}).json()
    (c,) = body["choices"]
    assert c["text"] == FAKE_TEXT[: FAKE_TEXT.index("fox")] and c["finish_reason"] == "stop"
    assert c["stop_reason"] == "fox"


def test_chat_plain_template_and_stream(client, engine):
    parts = [{"type": "text", "text": "Hi"}]
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": parts}]
    body = client.post("/v1/chat/completions", json={"messages": messages, "max_completion_tokens": 6}).json()
    assert body["object"] == "chat.completion" and body["id"].startswith("chatcmpl-")
    (c,) = body["choices"]
    assert c["message"] == {"role": "assistant", "content": fake_completion(6)} and c["finish_reason"] == "length"
    prompt_ids = engine.seen[0][1]
    assert prompt_ids == encode(engine, "system: Be brief.\nuser: Hi\nassistant:")  # PLAIN_TEMPLATE + tokenizer BOS
    assert body["usage"]["prompt_tokens"] == len(prompt_ids)
    r = client.post("/v1/chat/completions", json={"messages": messages, "max_tokens": 6, "stream": True, "n": 2})
    *chunks, _ = events(r.text)
    assert all(c["object"] == "chat.completion.chunk" for c in chunks)
    for i in range(2):
        mine = [c["choices"][0] for c in chunks if c["choices"][0]["index"] == i]
        assert mine[0]["delta"] == {"role": "assistant", "content": ""}
        assert "".join(d["delta"].get("content", "") for d in mine) == fake_completion(6)
        assert mine[-1]["finish_reason"] == "length"


def test_chat_uses_the_given_template(engine):
    tpl = ChatTemplate("{{ bos_token }}{% for m in messages %}<{{ m.role }}>{{ m.content | upper }}{% endfor %}"
                       "{% if add_generation_prompt %}<assistant>{% endif %}", add_special_tokens=False,
                       special_tokens={"bos_token": "<s>"})  # fmt: skip
    with TestClient(build_app(engine, chat_template=tpl)) as c:
        r = c.post("/tokenize", json={"messages": [{"role": "user", "content": "hi"}]})
        assert r.json()["tokens"] == encode(engine, "<s><user>HI<assistant>", special=False)
        c.post("/v1/chat/completions", json={"messages": [{"role": "user", "content": "hi"}], "max_tokens": 2})
        assert engine.seen[-1][1] == r.json()["tokens"]


BAD = [  # (body, status, param or None)
    (b"{not json", 400, None),
    (b"[1, 2]", 400, None),
    ({"prompt": "x", "max_tokens": 0}, 400, "max_tokens"),
    ({"prompt": "x", "max_tokens": -3}, 400, "max_tokens"),
    ({"prompt": "x", "max_tokens": 10_000}, 400, "max_tokens"),
    ({"prompt": [1] * 200, "max_tokens": 1}, 400, "prompt"),
    ({"prompt": "x", "bogus": 1}, 400, "bogus"),
    ({"prompt": "x", "temperature": -1}, 400, "temperature"),
    ({"prompt": "x", "top_p": 0}, 400, "top_p"),
    ({"prompt": "x", "top_k": -2}, 400, "top_k"),
    ({"prompt": "x", "n": 0}, 400, "n"),
    ({"prompt": "x", "n": 99}, 400, "n"),
    ({"prompt": "x", "stop": [""]}, 400, "stop"),
    ({"prompt": "x", "min_tokens": 5, "max_tokens": 2}, 400, None),
    ({"prompt": "x", "logprobs": 1}, 400, None),
    ({"prompt": "x", "presence_penalty": 0.5}, 400, None),
    ({"prompt": "x", "frequency_penalty": -1}, 400, None),
    ({"prompt": "x", "logit_bias": {"5": 1}}, 400, None),
    ({"prompt": "x", "best_of": 3}, 400, None),
    ({"prompt": "x", "suffix": "y"}, 400, None),
    ({"prompt": "x", "stream_options": {"include_usage": True}}, 400, None),
    ({"prompt": []}, 400, "prompt"),
    ({"prompt": [[]]}, 400, "prompt"),
    ({"prompt": [1, "a"]}, 400, "prompt"),
    ({"prompt": [-1]}, 400, "prompt"),
    ({"prompt": 5}, 400, "prompt"),
    ({"max_tokens": 3}, 400, "prompt"),
    ({"prompt": "x", "model": "gpt-4"}, 404, "model"),
]
BAD_CHAT = [
    ({"messages": []}, 400, "messages"),
    ({"messages": [{"role": "wizard", "content": "x"}]}, 400, "messages.0.role"),
    ({"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x"}}]}]}, 400, None),
    ({"messages": [{"role": "user", "content": "x"}], "logprobs": True}, 400, None),
    ({"messages": [{"role": "user", "content": "x"}], "tools": [{"type": "function"}]}, 400, None),
    ({"messages": [{"role": "user", "content": "x"}], "response_format": {"type": "json_object"}}, 400, None),
    ({"messages": [{"role": "user", "content": "x" * 400}]}, 400, "messages"),
    ({"messages": [{"role": "user", "content": "x"}], "max_completion_tokens": 0}, 400, "max_completion_tokens"),
]


@pytest.mark.parametrize("path,body,status,param", [("/v1/completions", *b) for b in BAD] +
                         [("/v1/chat/completions", *b) for b in BAD_CHAT])  # fmt: skip
def test_bad_requests_get_error_objects(client, engine, path, body, status, param):
    r = client.post(path, content=body) if isinstance(body, bytes) else client.post(path, json=body)
    assert r.status_code == status, r.text
    err = r.json()["error"]
    assert set(err) == {"message", "type", "param", "code"} and err["message"]
    assert err["type"] == "invalid_request_error"
    if param is not None:
        assert err["param"] == param, err
    assert engine.seen == []  # refused before the engine
    assert client.get("/health").status_code == 200
    assert client.post("/v1/completions", json={"prompt": "ok", "max_tokens": 2}).status_code == 200


def test_api_key(engine):
    with TestClient(build_app(engine, api_key="sesame")) as c:
        req = {"prompt": "x", "max_tokens": 1}
        assert c.post("/v1/completions", json=req).status_code == 401
        r = c.post("/v1/completions", json=req, headers={"Authorization": "Bearer wrong"})
        assert r.status_code == 401 and r.json()["error"]["code"] == "invalid_api_key"
        assert c.get("/v1/models").status_code == 401
        ok = {"Authorization": "Bearer sesame"}
        assert c.post("/v1/completions", json=req, headers=ok).status_code == 200
        assert c.get("/v1/models", headers=ok).status_code == 200
        assert c.get("/health").status_code == 200 and c.get("/metrics").status_code == 200


def test_queue_full_is_429_with_retry_after(engine, client):
    engine.max_waiting = 0
    for stream in (False, True):
        r = client.post("/v1/completions", json={"prompt": "x", "max_tokens": 2, "stream": stream})
        assert r.status_code == 429 and r.headers["retry-after"] == "1"
        assert r.json()["error"]["code"] == "queue_full"


def test_dead_engine_is_503(engine, client):
    engine.dead = True
    r = client.post("/v1/completions", json={"prompt": "x", "max_tokens": 2})
    assert r.status_code == 503 and "retry-after" in r.headers
    assert client.get("/health").status_code == 200
    engine.is_running = False  # AsyncLLMEngine's step thread is gone
    r = client.get("/health")
    assert r.status_code == 503 and r.json()["error"]["type"] == "service_unavailable"


def test_engine_failures_are_500_without_internals(engine, client, caplog):
    engine.fail = "start"
    for stream in (False, True):
        r = client.post("/v1/completions", json={"prompt": "x", "max_tokens": 5, "stream": stream})
        assert r.status_code == 500 and "secret" not in r.text and "Traceback" not in r.text
        assert r.json()["error"]["type"] == "server_error"
    assert "secret internals" in caplog.text  # logged instead
    engine.fail = "mid"
    r = client.post("/v1/completions", json={"prompt": "x", "max_tokens": 5})
    assert r.status_code == 500 and "secret" not in r.text
    r = client.post("/v1/completions", json={"prompt": "x", "max_tokens": 5, "stream": True})
    *_, err, _ = events(r.text)  # headers went out with the first token: the error is the last event
    assert r.status_code == 200 and err["error"]["type"] == "server_error" and "secret" not in r.text
    engine.fail = None
    assert client.get("/health").status_code == 200
    assert client.post("/v1/completions", json={"prompt": "x", "max_tokens": 2}).status_code == 200
    assert engine.pages_in_use == 0


def test_models_version_health_routes(client):
    models = client.get("/v1/models").json()
    assert models["object"] == "list" and models["data"][0]["id"] == "fake-model"
    assert models["data"][0]["max_model_len"] == 128
    assert client.get("/version").json()["version"]
    assert client.get("/health").status_code == 200
    r = client.get("/v1/nothing")
    assert r.status_code == 404 and r.json()["error"]["code"] == "not_found"
    assert client.get("/v1/completions").status_code == 405


def test_tokenize_detokenize(client, engine):
    r = client.post("/tokenize", json={"prompt": "Hello world"}).json()
    assert r["tokens"] == encode(engine, "Hello world") and r["count"] == len(r["tokens"])
    assert r["max_model_len"] == 128 and r["token_strs"] is None
    bare = client.post("/tokenize", json={"prompt": "Hello", "add_special_tokens": False, "return_token_strs": True})
    assert bare.json()["tokens"] == encode(engine, "Hello", special=False) and len(bare.json()["token_strs"]) >= 1
    strs = bare.json()["token_strs"]
    assert len(strs) == len(bare.json()["tokens"]) and "".join(strs) == "Hello"  # one piece per token, in order
    assert client.post("/detokenize", json={"tokens": r["tokens"]}).json() == {"prompt": "Hello world"}
    assert client.post("/tokenize", json={"prompt": "a", "messages": []}).status_code == 400
    assert client.post("/detokenize", json={"tokens": [-4]}).status_code == 400
    assert client.post("/tokenize", json={"prompt": "a", "model": "other"}).status_code == 404


def test_metrics(client, engine):
    client.post("/v1/completions", json={"prompt": "Hello", "max_tokens": 4})
    client.post("/v1/completions", json={"prompt": "x", "max_tokens": 30, "stop": "fox", "stream": True})
    r = client.get("/metrics")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/plain")
    samples = {(s.name, tuple(sorted(s.labels.items()))): s.value
               for fam in text_string_to_metric_families(r.text) for s in fam.samples}  # fmt: skip
    m = (("model_name", "fake-model"),)
    assert samples[("lowbit:request_success_total", (("finished_reason", "length"), *m))] == 1
    assert samples[("lowbit:request_success_total", (("finished_reason", "stop"), *m))] == 1
    assert samples[("lowbit:time_to_first_token_seconds_count", m)] == 2
    assert samples[("lowbit:e2e_request_latency_seconds_count", m)] == 2
    assert samples[("lowbit:request_queue_time_seconds_count", m)] == 2
    assert samples[("lowbit:inter_token_latency_seconds_count", m)] >= 3  # at least the 3 gaps of the first
    assert samples[("lowbit:generation_tokens_total", m)] == engine.generation_tokens
    assert samples[("lowbit:prompt_tokens_total", m)] == engine.prompt_tokens
    assert samples[("lowbit:num_requests_running", m)] == 0 and samples[("lowbit:kv_cache_usage_perc", m)] == 0
    assert ("lowbit:num_preemptions_total", m) in samples and ("lowbit:num_requests_waiting", m) in samples
    build_app(FakeEngine())  # a second app has its own registry


def test_plain_template_text():
    t = ChatTemplate(PLAIN_TEMPLATE, add_special_tokens=True)
    msgs = [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}]
    assert t.render(msgs) == "user: a\nassistant: b\nassistant:"
    assert t.render(msgs, add_generation_prompt=False) == "user: a\nassistant: b\n"


def test_without_a_tokenizer_text_is_a_400_not_a_500():
    engine = FakeEngine()
    engine.tokenizer = None  # an artifact without tokenizer.json
    with TestClient(build_app(engine), raise_server_exceptions=False) as c:
        for path, body, param in [
            ("/v1/completions", {"prompt": [5, 6], "max_tokens": 2, "echo": True}, "echo"),
            ("/v1/completions", {"prompt": "hi", "max_tokens": 2}, "prompt"),
            ("/detokenize", {"tokens": [5]}, "tokens"),
        ]:
            r = c.post(path, json=body)
            assert r.status_code == 400 and r.json()["error"]["param"] == param, r.text
            assert "no tokenizer" in r.json()["error"]["message"]
    assert engine.seen == []
