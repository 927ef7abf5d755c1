"""Sequence bookkeeping: token counts derived from prompt + outputs, identity equality, defensive copies."""

from __future__ import annotations

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
    a = Sequence(0, [1], 1)
    b = Sequence(1, [1], 1)
    assert a.arrival_time <= b.arrival_time
