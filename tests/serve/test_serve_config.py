"""`lowbit serve` settings (command line > config file > defaults, errors that name the key) and chat templates
(the artifact's tokenizer_config.json, rendered in a sandbox; the plain fallback)."""

from __future__ import annotations

import argparse
import json
import logging

import pytest

from lowbit.serve.chat import PLAIN_TEMPLATE, load_chat_template
from lowbit.serve.cli import add_arguments, main
from lowbit.serve.config import ServeConfig, resolve
from lowbit.serve.errors import APIError


def parse(*argv: str) -> argparse.Namespace:
    p = argparse.ArgumentParser()
    add_arguments(p)
    return p.parse_args(list(argv))


def test_command_line_beats_config_file_beats_defaults(tmp_path):
    cfg_file = tmp_path / "serve.yaml"
    cfg_file.write_text("artifact: from-file\nport: 9000\nmax-num-seqs: 32\nschedule: nano\nshutdown_timeout: 3\n")
    cfg = resolve(parse("--config", str(cfg_file), "--port", "9100", "--api-key", "k"))
    assert cfg == ServeConfig(artifact="from-file", port=9100, max_num_seqs=32, schedule="nano", api_key="k",
                              shutdown_timeout=3.0)  # fmt: skip
    assert resolve(parse("art")) == ServeConfig(artifact="art")
    assert resolve(parse("art", "--schedule", "unsplit")).engine_kwargs()["schedule"] == "unsplit"


@pytest.mark.parametrize(
    "text,needle",
    [
        ("artifact: a\nmax_num_seq: 4\n", "unknown key 'max_num_seq'"),
        ("artifact: a\nport: eighty\n", "port = 'eighty' is not an integer"),
        ("artifact: a\nschedule: on\n", "YAML boolean"),
        ("artifact: a\npolicy: lifo\n", "use one of fcfs, priority"),
        ("- a\n- b\n", "YAML mapping"),
        ("port: 1\n", "give the artifact"),
        ("artifact: a\nmax_waiting: 0\n", "max_waiting = 0"),
        ("artifact: a\nresearch_every: -1\n", "research_every = -1"),
        ("artifact: a\nplan: /no/such/plan.json\n", "plan = '/no/such/plan.json': cannot read it"),
    ],
)
def test_config_errors_name_the_key(tmp_path, text, needle):
    f = tmp_path / "serve.yaml"
    f.write_text(text)
    with pytest.raises(ValueError, match=needle.replace("(", r"\(")):
        resolve(parse("--config", str(f)))


def test_plan_file_reaches_the_engine_and_a_bad_one_is_refused_before_loading(tmp_path, capsys):
    from lowbit.runtime.plan import default_plan

    plan = default_plan(num_nano=3)
    f = tmp_path / "plan.json"
    f.write_text(plan.to_json())
    cfg = resolve(parse("art", "--plan", str(f), "--research-every", "0"))
    kw = cfg.engine_kwargs()
    assert kw["plan"] == plan and kw["research_every"] == 0 and kw["schedule"] == "artifact"
    assert "plan" not in resolve(parse("art")).engine_kwargs()
    bad = tmp_path / "bad.json"
    bad.write_text('{"version": 1, "units": 3}')
    assert main(parse(str(tmp_path / "no-such-artifact"), "--plan", str(bad))) == 2
    err = capsys.readouterr().err
    assert "is not a pipeline plan" in err and "no-such-artifact" not in err  # refused before the artifact


def test_cli_refuses_a_bad_config_without_a_traceback(tmp_path, capsys):
    assert main(parse("--config", str(tmp_path / "missing.yaml"))) == 2
    assert main(parse()) == 2
    assert "give the artifact" in capsys.readouterr().err
    assert main(parse(str(tmp_path / "no-such-artifact"))) == 2
    assert "no-such-artifact" in capsys.readouterr().err


LLAMA2ISH = (
    "{{ bos_token }}{% for m in messages %}"
    "{% if (m['role'] == 'user') != (loop.index0 % 2 == 0) %}"
    "{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}{% endif %}"
    "{% if m['role'] == 'user' %}[INST] {{ m['content'] | trim }} [/INST]{% else %} {{ m['content'] | trim }} "
    "{{ eos_token }}{% endif %}{% endfor %}"
)


def test_artifact_template_from_tokenizer_config(tmp_path):
    (tmp_path / "tokenizer_config.json").write_text(
        json.dumps({"chat_template": LLAMA2ISH, "bos_token": {"content": "<s>"}, "eos_token": "</s>"})
    )
    t = load_chat_template(tmp_path)
    assert not t.add_special_tokens  # the template writes <s> itself
    msgs = [{"role": r, "content": c} for r, c in [("user", " hi "), ("assistant", "yo"), ("user", "x")]]
    assert t.render(msgs) == "<s>[INST] hi [/INST] yo </s>[INST] x [/INST]"
    with pytest.raises(APIError, match="roles must alternate") as e:
        t.render(msgs[1:])
    assert e.value.status == 400 and e.value.param == "messages"
    cont = t.render(msgs[:2], add_generation_prompt=False, continue_final_message=True)
    assert cont == "<s>[INST] hi [/INST] yo"


def test_named_templates_and_override(tmp_path):
    (tmp_path / "tokenizer_config.json").write_text(
        json.dumps({"chat_template": [{"name": "tool_use", "template": "T"}, {"name": "default", "template": "D"}]})
    )
    assert load_chat_template(tmp_path).render([]) == "D"
    (tmp_path / "mine.jinja").write_text("M{{ messages | length }}")
    assert load_chat_template(tmp_path, tmp_path / "mine.jinja").render([{"role": "user", "content": "a"}]) == "M1"


@pytest.mark.parametrize(
    "source",
    [
        "{{ ''.__class__.__mro__[1].__subclasses__() }}",
        "{% set x = messages.append(1) %}",  # immutable sandbox: no mutation of the request
        "{{ cycler.__init__.__globals__ }}",
    ],
)
def test_templates_run_in_a_sandbox(tmp_path, source):
    (tmp_path / "tokenizer_config.json").write_text(json.dumps({"chat_template": source}))
    with pytest.raises(APIError) as e:
        load_chat_template(tmp_path).render([{"role": "user", "content": "a"}])
    assert e.value.status == 400


def test_unsafe_attributes_render_as_nothing(tmp_path):
    (tmp_path / "tokenizer_config.json").write_text(json.dumps({"chat_template": "[{{ messages.__class__ }}]"}))
    assert load_chat_template(tmp_path).render([{"role": "user", "content": "a"}]) == "[]"


def test_plain_fallback_warns_once(tmp_path, caplog):
    with caplog.at_level(logging.WARNING, logger="lowbit.serve"):
        t = load_chat_template(tmp_path)
        t.render([{"role": "user", "content": "a"}])
        t.render([{"role": "user", "content": "b"}])
    assert t.source == PLAIN_TEMPLATE and t.add_special_tokens
    assert sum("no chat_template" in r.message for r in caplog.records) == 1
