"""Sequence bookkeeping: token counts derived from prompt + outputs, identity equality, defensive copies."""

from __future__ import annotations

import time

from hypothesis import given, settings
from hypothesis import strategies as st

from lowbit.runtime.sequence import SeqStatus, Sequence


def test_counts_follow_the_tokens():
    s = Sequence(7, [1, 2, 3], max_tokens=4)
    assert s.status is SeqStatus.WAITING and not s.is_finished
    assert (s.num_prompt_tokens, s.num_output_tokens, s.num_tokens, s.num_remaining) == (3, 0, 3, 3)
    s.num_computed = 3
    s.append_token(9)
    assert s.all_ids == [1, 2, 3, 9] and s.output_ids == [9]
    assert (s.num_tokens, s.num_remaining) == (4, 1)  # decode phase: only the newest token is uncomputed
    s.status = SeqStatus.FINISHED
    assert s.is_finished


def test_prompt_is_copied_and_equality_is_identity():
    prompt = (5, 6)
    a, b = Sequence(0, prompt, 1), Sequence(0, prompt, 1)  # type: ignore[arg-type]
    assert a.prompt_ids == [5, 6] and isinstance(a.prompt_ids, list)
    a.all_ids.append(1)  # all_ids is a fresh list, not a view
    assert a.num_tokens == 2
    assert a != b and a == a and len({a, b}) == 2


def test_arrival_time_defaults_to_now():
    t0 = time.monotonic()
    a = Sequence(0, [1], 1)
    b = Sequence(1, [1], 1)
    assert t0 <= a.arrival_time <= b.arrival_time <= time.monotonic()  # taken per sequence, not once at import


@settings(max_examples=60)
@given(st.integers(1, 6), st.integers(0, 6), st.integers(0, 14), st.integers(0, 14))
def test_token_slice_is_the_slice_of_all_ids(p, o, start, stop):
    s = Sequence(0, list(range(p)), 8, output_ids=list(range(100, 100 + o)))
    start, stop = sorted((min(start, s.num_tokens), min(stop, s.num_tokens)))
    assert s.token_slice(start, stop) == s.all_ids[start:stop]
