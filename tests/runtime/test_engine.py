"""The serving engine end to end on the tiny artifacts: the same tokens as `ModelRunner.generate` (what
`lowbit generate` runs) whatever the batching, the token budget or preemption; stop rules (EOS, stop ids, stop
strings with hold-back, min_tokens, max_tokens); seeded sampling; aborts and KV sizing."""

from __future__ import annotations

import logging

import pytest

from lowbit import LLM
from lowbit.compiler import load_compiled
from lowbit.runtime.engine import LLMEngine, plan_kv_cache
from lowbit.runtime.sampler import SamplingParams

PROMPTS = [[5, 17, 99, 3], [200, 201, 7, 7, 7, 9, 11, 400, 13], [42], list(range(60, 100))]


@pytest.fixture(scope="module")
def exact(tiny_exact_artifact):
    return load_compiled(tiny_exact_artifact)


def reference_tokens(model, prompts, max_tokens):
    runner = model.runner(max_num_seqs=len(prompts))
    outs = runner.generate(prompts, SamplingParams(max_tokens=max_tokens, ignore_eos=True))
    return [o.token_ids for o in outs]


def test_engine_tokens_equal_runner_generate(exact):
    want = reference_tokens(exact, PROMPTS, 12)
    outs = LLM(exact).generate(PROMPTS, SamplingParams(max_tokens=12, ignore_eos=True))
    assert [o.token_ids for o in outs] == want
    assert all(o.finished and o.finish_reason == "length" and o.num_output_tokens == 12 for o in outs)


@pytest.mark.parametrize(
    "kw",
    [
        {"max_num_seqs": 1},  # strictly one at a time
        {"max_num_seqs": 2, "max_num_batched_tokens": 8},  # chunked prefill of the 40-token prompt
        {"max_num_seqs": 4, "policy": "priority"},
        {"max_num_seqs": 4, "schedule": "nano", "max_num_batched_tokens": 24},  # nano-batches + chunked prefill
    ],
)
def test_batching_budget_and_preemption_do_not_change_tokens(exact, kw):
    want = reference_tokens(exact, PROMPTS, 12)
    llm = LLM(exact, max_model_len=64, **kw)
    outs = llm.generate(PROMPTS, SamplingParams(max_tokens=12, ignore_eos=True), priorities=[3, 2, 1, 0])
    assert [o.token_ids for o in outs] == want
    st = llm.engine.stats()
    assert st.kv_usage == 0.0 and st.num_running == 0 and st.num_waiting == 0
    assert st.generation_tokens == 12 * len(PROMPTS) and st.prompt_tokens == sum(map(len, PROMPTS))


def test_preemption_by_recompute_is_invisible_in_the_tokens(exact):
    prompts = [[i + 1] * 15 for i in range(3)]  # one page each at admission, three pages each at the end
    want = reference_tokens(exact, prompts, 20)
    llm = LLM(exact, max_model_len=64, max_num_seqs=3, kv_cache_bytes=6 * 16 * 1024)  # 5 pages of 16 KiB (fp32)
    outs = llm.generate(prompts, SamplingParams(max_tokens=20, ignore_eos=True))
    assert [o.token_ids for o in outs] == want
    st = llm.engine.stats()
    assert st.num_preemptions > 0, "the KV budget was meant to force preemption"
    assert st.kv_usage == 0.0 and st.generation_tokens == 60 and st.prompt_tokens == 45


def test_eos_stop_token_ids_and_min_tokens(exact):
    free = LLM(exact).generate([PROMPTS[0]], SamplingParams(max_tokens=10, ignore_eos=True))[0].token_ids
    stop = free[4]
    first = free.index(stop)
    out = LLM(exact).generate([PROMPTS[0]], SamplingParams(max_tokens=10, stop_token_ids=(stop,), ignore_eos=True))[0]
    assert out.token_ids == free[: first + 1] and out.finish_reason == "stop" and out.stop_reason == stop
    # the model's own EOS: make the stop token the EOS of an engine
    eng = LLMEngine(exact)
    eng.eos_token_ids = (stop,)
    eng.add_request("a", PROMPTS[0], SamplingParams(max_tokens=10))
    outs = []
    while eng.has_unfinished_requests():
        outs += eng.step()
    assert outs[-1].token_ids == free[: first + 1] and outs[-1].stop_reason is None
    assert outs[-1].finished and outs[-1].finish_reason == "stop"
    # min_tokens bans the stop token until then: the stream must differ from the free one where it was banned
    m = LLM(exact).generate(
        [PROMPTS[0]], SamplingParams(max_tokens=10, stop_token_ids=(stop,), min_tokens=first + 2, ignore_eos=True)
    )[0]
    assert len(m.token_ids) >= first + 2 and stop not in m.token_ids[: first + 2]


def test_stop_strings_trim_and_hold_back(tiny_artifact):
    llm = LLM(tiny_artifact)
    free = llm.generate(["Hello"], SamplingParams(max_tokens=16, ignore_eos=True))[0]
    text = free.text
    assert len(text) > 6, "the tiny model should produce some text"
    stop = text[3:6]
    cut = text.find(stop)
    out = llm.generate(["Hello"], SamplingParams(max_tokens=16, stop=(stop,), ignore_eos=True))[0]
    assert out.text == text[:cut] and out.finish_reason == "stop" and out.stop_reason == stop
    inc = llm.generate(["Hello"], SamplingParams(max_tokens=16, stop=(stop,), include_stop_str_in_output=True,
                                                 ignore_eos=True))[0]  # fmt: skip
    assert inc.text == text[: cut + len(stop)]
    # streaming: the deltas never show a stop string that is then taken back, and concatenate to the text
    eng = LLMEngine(tiny_artifact)
    eng.add_request("s", "Hello", SamplingParams(max_tokens=16, stop=(stop,), ignore_eos=True))
    deltas = []
    while eng.has_unfinished_requests():
        deltas += [o.delta_text for o in eng.step()]
    assert "".join(deltas) == out.text


def test_seeded_sampling_is_reproducible_and_batch_independent(exact):
    p = SamplingParams(max_tokens=8, temperature=1.0, top_p=0.9, seed=7, ignore_eos=True)
    alone = LLM(exact).generate([PROMPTS[1]], p)[0].token_ids
    crowd = LLM(exact).generate([PROMPTS[0], PROMPTS[1], PROMPTS[2]], [SamplingParams(max_tokens=8), p, p])
    assert crowd[1].token_ids == alone  # a per-request generator: the batch around it does not matter
    other = LLM(exact).generate([PROMPTS[1]], SamplingParams(max_tokens=8, temperature=1.0, seed=8, ignore_eos=True))
    assert other[0].token_ids != alone


def test_abort_frees_pages_and_reports(exact):
    eng = LLMEngine(exact)
    eng.add_request("x", PROMPTS[3], SamplingParams(max_tokens=50, ignore_eos=True))
    eng.add_request("y", PROMPTS[1], SamplingParams(max_tokens=3, ignore_eos=True))
    eng.step()
    assert eng.stats().kv_usage > 0
    assert eng.abort_request("x") and not eng.abort_request("nope")
    outs = []
    while eng.has_unfinished_requests():
        outs += eng.step()
    fin = {o.request_id: o for o in outs if o.finished}
    assert fin["x"].finish_reason == "abort" and fin["y"].finish_reason == "length"
    assert eng.stats().kv_usage == 0.0


def test_bad_requests_fail_before_any_work(exact):
    eng = LLMEngine(exact, max_model_len=64)
    with pytest.raises(ValueError, match="maximum context length is 64"):
        eng.add_request("a", list(range(1, 60)), SamplingParams(max_tokens=10))
    with pytest.raises(ValueError, match="outside the vocabulary"):
        eng.add_request("b", [1, 10**6], SamplingParams())
    with pytest.raises(ValueError, match="empty"):
        eng.add_request("c", [], SamplingParams())
    eng.add_request("d", [1, 2], SamplingParams())
    with pytest.raises(ValueError, match="already in use"):
        eng.add_request("d", [1, 2], SamplingParams())
    with pytest.raises(ValueError, match="seed"):
        eng.add_request("e", [1, 2], SamplingParams(seed=2**64))
    assert eng.num_requests == 1  # the refused ones left nothing behind: the engine still steps
    while eng.has_unfinished_requests():
        eng.step()
    with pytest.raises(ValueError, match="max_model_len"):
        LLMEngine(exact, max_model_len=10**6)
    with pytest.raises(ValueError, match="kv_cache_bytes"):
        LLMEngine(exact, kv_cache_bytes=1000)


def test_kv_plan_capacity_scales_with_kv_bits(exact, caplog):
    arch = exact.arch
    kw = {"page_size": 16, "max_model_len": 256, "max_num_seqs": 4, "kv_cache_bytes": 4 << 20}
    plans = {kv: plan_kv_cache(arch, kv, **kw) for kv in ("float16", "int8", "int4")}
    assert plans["float16"].capacity_tokens < plans["int8"].capacity_tokens < plans["int4"].capacity_tokens
    ratio = plans["int4"].capacity_tokens / plans["float16"].capacity_tokens
    assert 3.0 < ratio <= 4.0  # 4 bits + fp16 scale/zero per token-head vector vs 16 bits
    for p in plans.values():
        assert p.bytes <= 4 << 20
    with caplog.at_level(logging.INFO, logger="lowbit.engine"):
        LLMEngine(exact, max_num_seqs=2)
    assert any("KV cache:" in r.message and "max concurrency" in r.message for r in caplog.records)


def test_greedy_tokens_equal_transformers_generate(exact, tmp_path):
    """The unquantized artifact's engine vs HF transformers greedy decoding on the same (synthetic) weights."""
    transformers = pytest.importorskip("transformers")
    import torch

    from lowbit.models.hf import save_hf_dir
    from lowbit.models.synthetic import synthetic_weights

    hf_dir = save_hf_dir(tmp_path / "hf", exact.arch, synthetic_weights(exact.arch, exact.cfg.model.seed),
                         dtype="float32")  # fmt: skip
    hf = transformers.AutoModelForCausalLM.from_pretrained(hf_dir, dtype=torch.float32).eval()
    want = []
    for p in PROMPTS:
        with torch.no_grad():
            out = hf.generate(torch.tensor([p]), max_new_tokens=12, do_sample=False, eos_token_id=None,
                              pad_token_id=0, attention_mask=torch.ones(1, len(p), dtype=torch.long))  # fmt: skip
        want.append(out[0, len(p) :].tolist())
    got = LLM(exact, max_num_seqs=4).generate(PROMPTS, SamplingParams(max_tokens=12, ignore_eos=True))
    assert [o.token_ids for o in got] == want


def test_the_artifact_carries_a_plan_and_the_schedule_switch_uses_it(exact):
    from lowbit.runtime.plan import PipelinePlan

    shipped = PipelinePlan.from_json((exact.path / "plan.json").read_text())
    assert not shipped.rules  # a CPU artifact ships the unsplit plan (splits measured slower on 2 cores)
    assert LLMEngine(exact).schedule_mode == "unsplit"
    nano = LLMEngine(exact, schedule="nano")
    assert nano.schedule_mode == "nano" and nano.plan.rules and nano.runner.schedule == "nano"
    with pytest.raises(ValueError, match="schedule"):
        LLMEngine(exact, schedule="fast")
