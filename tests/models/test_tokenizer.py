"""Tokenizer wrapper: round trip of any text, incremental decoding concatenates to the full decode (for text
and for arbitrary token sequences, which split UTF-8 characters), bos/eos from the model files."""

from __future__ import annotations

import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from lowbit.models import IncrementalDecoder, load_tokenizer, synthetic_tokenizer
from lowbit.models.tokenizer import REPLACEMENT_CHAR

VOCAB = 600
TOK = synthetic_tokenizer(VOCAB)


def stream(decoder: IncrementalDecoder, ids: list[int], chunk: int) -> list[str]:
    deltas = [decoder.push(ids[i : i + chunk]) for i in range(0, len(ids), chunk)]
    return [*deltas, decoder.flush()]


@settings(max_examples=60)
@given(st.text(max_size=80))
def test_round_trip_any_text(text):
    ids = TOK.encode(text, add_special_tokens=False).ids
    assert all(0 <= i < VOCAB for i in ids)
    assert TOK.decode(ids, skip_special_tokens=False) == text


@settings(max_examples=60)
@given(st.text(max_size=60), st.integers(1, 3))
def test_incremental_decode_of_text(text, chunk):
    ids = TOK.encode(text).ids
    deltas = stream(IncrementalDecoder(TOK), ids, chunk)
    assert "".join(deltas) == text
    assert not any(d.endswith(REPLACEMENT_CHAR) for d in deltas if REPLACEMENT_CHAR not in text)


@settings(max_examples=60)
@given(st.lists(st.integers(0, VOCAB - 1), max_size=40), st.booleans())
def test_incremental_decode_of_any_tokens(ids, skip_special):
    """Random tokens cut UTF-8 characters anywhere; the deltas still concatenate to decode(ids)."""
    deltas = stream(IncrementalDecoder(TOK, skip_special_tokens=skip_special), ids, 1)
    assert "".join(deltas) == TOK.decode(ids, skip_special_tokens=skip_special)


def byte_token(b: int) -> str:
    """GPT-2's byte -> printable character map (what the ByteLevel pre-tokenizer names byte tokens)."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    if b in printable:
        return chr(b)
    return chr(256 + [x for x in range(256) if x not in printable].index(b))


def test_multibyte_character_is_held_until_complete():
    byte_ids = [TOK.token_to_id(byte_token(b)) for b in "🙂".encode()]  # 4 single-byte tokens
    decoder = IncrementalDecoder(TOK)
    assert [decoder.push(i) for i in byte_ids] == ["", "", "", "🙂"]
    assert decoder.push(TOK.token_to_id(byte_token(0xE2))) == "" and decoder.flush() == REPLACEMENT_CHAR


def test_load_tokenizer_bos_eos(tmp_path):
    TOK.save(str(tmp_path / "tokenizer.json"))
    (tmp_path / "config.json").write_text(json.dumps({"bos_token_id": 1, "eos_token_id": 2}))
    tok = load_tokenizer(tmp_path)
    assert (tok.bos_token_id, tok.eos_token_ids, tok.vocab_size) == (1, (2,), VOCAB)
    (tmp_path / "generation_config.json").write_text(json.dumps({"eos_token_id": [2, 5]}))
    assert load_tokenizer(tmp_path / "tokenizer.json").eos_token_ids == (2, 5)
    assert load_tokenizer(tmp_path, eos_token_ids=7).eos_token_ids == (7,)
    text = "héllo wörld"
    assert tok.encode(text)[0] == 1 and tok.decode(tok.encode(text)) == text
    decoder = tok.incremental_decoder()
    assert "".join(decoder.push(i) for i in tok.encode(text)) + decoder.flush() == text


def test_load_tokenizer_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"tokenizer\.json.*tokenizer\.model"):
        load_tokenizer(tmp_path)
    (tmp_path / "tokenizer.json").write_text("{}")
    with pytest.raises(ValueError, match=r"not a valid tokenizer\.json"):
        load_tokenizer(tmp_path)
