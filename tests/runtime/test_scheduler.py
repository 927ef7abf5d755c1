"""Scheduler rules by example, and random request traces driven by a fake model against oracles.

The fake model samples token f(seq_id, position) — a function of where the token lands, not of when it is
computed — so a sequence's outputs are known in advance and preemption must be invisible in them. A fake KV
cache (page slot -> (seq_id, position, token)) checks that every chunk's context is really in its pages.
"""

from __future__ import annotations

import subprocess
import sys
from dataclasses import dataclass

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from lowbit.runtime.block_manager import BlockManager
from lowbit.runtime.scheduler import Scheduler, SchedulerConfig, SchedulerOutput
from lowbit.runtime.sequence import SeqStatus, Sequence

STOP = 0  # the fake engine's stop token


def token(seq_id: int, position: int) -> int:
    return (seq_id * 1009 + position * 31) % 23


def expected_outputs(seq_id: int, prompt_len: int, max_tokens: int, stop: bool) -> list[int]:
    """What a never-preempted run emits: tokens up to max_tokens, or through the first stop token."""
    out = []
    for k in range(max_tokens):
        out.append(token(seq_id, prompt_len + k))
        if stop and out[-1] == STOP:
            break
    return out


def make(cfg: SchedulerConfig | None = None, num_pages: int = 64, page_size: int = 4) -> Scheduler:
    return Scheduler(cfg or SchedulerConfig(), BlockManager(num_pages, page_size))


def rows(out: SchedulerOutput) -> list[tuple[int, int, int]]:
    return [(c.seq.seq_id, c.num_cached, c.num_new) for c in out.chunks]


def step(s: Scheduler) -> SchedulerOutput:
    """schedule + update with the fake model's tokens."""
    out = s.schedule()
    s.update(out, {c.seq.seq_id: token(c.seq.seq_id, c.seq.num_tokens) for c in out.chunks if c.samples})
    return out


def run_all(s: Scheduler, limit: int = 1000) -> int:
    n = 0
    while s.has_unfinished():
        assert not step(s).is_empty
        n += 1
        assert n < limit
    return n


# ---- config and add() -------------------------------------------------------------------------------------


def test_config_is_validated():
    with pytest.raises(ValueError, match="max_num_seqs 0"):
        SchedulerConfig(max_num_seqs=0)
    with pytest.raises(ValueError, match="policy 'lifo'"):
        SchedulerConfig(policy="lifo")  # type: ignore[arg-type]


def test_add_rejects_what_can_never_run():
    s = make(SchedulerConfig(max_model_len=32, max_num_batched_tokens=16), num_pages=5, page_size=4)
    with pytest.raises(ValueError, match="empty prompt"):
        s.add(Sequence(0, [], 4))
    with pytest.raises(ValueError, match="max_tokens 0"):
        s.add(Sequence(0, [1], 0))
    with pytest.raises(ValueError, match=r"30 tokens \+ max_tokens 3 = 33 > max_model_len 32.*raise max_model_len"):
        s.add(Sequence(0, [1] * 30, 3))
    # 14 + 4 − 1 = 17 tokens in the cache at most: 5 pages of 4, the cache has 4
    with pytest.raises(ValueError, match=r"needs 5 KV pages .* has 4; raise the KV cache budget .*max_tokens"):
        s.add(Sequence(0, [1] * 14, 4))
    s.add(Sequence(0, [1] * 13, 4))  # 16 tokens: exactly the whole cache
    with pytest.raises(ValueError, match="already scheduled"):
        s.add(Sequence(0, [1], 1))
    used = Sequence(1, [1], 2, output_ids=[3])
    with pytest.raises(ValueError, match="not new"):
        s.add(used)
    u = make(SchedulerConfig(max_num_batched_tokens=8, chunked_prefill=False))
    with pytest.raises(ValueError, match="9 tokens > max_num_batched_tokens 8 with chunked_prefill off"):
        u.add(Sequence(0, [1] * 9, 1))
    assert s.num_waiting == 1 and u.num_waiting == 0


def test_scheduler_does_not_import_torch():
    code = "import sys, lowbit.runtime.scheduler; assert 'torch' not in sys.modules, 'torch was imported'"
    subprocess.run([sys.executable, "-c", code], check=True)


# ---- budget, chunking, ordering -----------------------------------------------------------------------------


def test_chunked_prefill_then_decode():
    s = make(SchedulerConfig(max_num_batched_tokens=4))
    a = Sequence(0, list(range(10)), 2)
    s.add(a)
    outs = [step(s) for _ in range(4)]
    assert [rows(o) for o in outs] == [[(0, 0, 4)], [(0, 4, 4)], [(0, 8, 2)], [(0, 10, 1)]]
    assert [o.chunks[0].samples for o in outs] == [False, False, True, True]
    assert outs[1].chunks[0].token_ids == (4, 5, 6, 7)  # the uncomputed slice of the prompt
    assert a.is_finished and a.finish_reason == "length" and a.output_ids == [token(0, 10), token(0, 11)]
    assert s.blocks.num_free == s.blocks.num_usable and not s.has_unfinished()


def test_decodes_first_then_continuing_prefill_then_admission():
    s = make(SchedulerConfig(max_num_batched_tokens=6))
    s.add(Sequence(0, [1, 2], 5, arrival_time=0))
    step(s)  # 0 prefilled; now decoding
    s.add(Sequence(1, list(range(9)), 5, arrival_time=1))
    s.add(Sequence(2, [7, 7], 5, arrival_time=2))
    out = step(s)
    assert rows(out) == [(0, 2, 1), (1, 0, 5)]  # decode row first; 1's prefill gets the rest; 2 waits
    out = step(s)
    assert rows(out) == [(0, 3, 1), (1, 5, 4), (2, 0, 1)]
    assert out.num_batched_tokens == 6 and out.num_decodes == 1
    out = step(s)
    assert rows(out) == [(0, 4, 1), (1, 9, 1), (2, 1, 1)]  # 2's last prompt token is a single cached-context row


def test_seat_limit():
    s = make(SchedulerConfig(max_num_seqs=2))
    for i in range(3):
        s.add(Sequence(i, [1, 2], 3, arrival_time=i))
    assert [r[0] for r in rows(step(s))] == [0, 1]
    assert s.num_running == 2 and s.num_waiting == 1


def test_unchunked_prompt_waits_for_a_whole_budget():
    s = make(SchedulerConfig(max_num_batched_tokens=8, chunked_prefill=False))
    s.add(Sequence(0, [1] * 3, 4, arrival_time=0))
    s.add(Sequence(1, [1] * 6, 4, arrival_time=1))
    assert rows(step(s)) == [(0, 0, 3)]  # 1 does not fit the 5 left: not split
    assert rows(step(s)) == [(0, 3, 1), (1, 0, 6)]


def test_head_of_line_blocks_a_smaller_later_request():
    s = make(num_pages=5, page_size=4)  # 4 usable pages
    s.add(Sequence(0, [1] * 8, 4, arrival_time=0))  # 2 pages now
    step(s)
    s.add(Sequence(1, [1] * 10, 2, arrival_time=1))  # needs 3 pages: does not fit
    s.add(Sequence(2, [1] * 2, 2, arrival_time=2))  # would fit, but must not overtake 1
    assert rows(step(s)) == [(0, 8, 1)]
    run_all(s)


def test_priority_admission_order():
    s = make(SchedulerConfig(max_num_seqs=1, policy="priority"))
    s.add(Sequence(0, [1], 1, priority=2, arrival_time=0))
    s.add(Sequence(1, [1], 1, priority=0, arrival_time=1))
    s.add(Sequence(2, [1], 1, priority=0, arrival_time=2))
    s.add(Sequence(3, [1], 1, priority=1, arrival_time=3))
    order = [step(s).chunks[0].seq.seq_id for _ in range(4)]
    assert order == [1, 2, 3, 0]


def test_fcfs_ties_break_by_add_order():
    s = make(SchedulerConfig(max_num_seqs=1))
    for i in (5, 3, 4):
        s.add(Sequence(i, [1], 1, arrival_time=1.0))
    assert [step(s).chunks[0].seq.seq_id for _ in range(3)] == [5, 3, 4]


# ---- preemption ---------------------------------------------------------------------------------------------


def test_preemption_takes_the_latest_arrival_and_recomputes_its_outputs():
    s = make(num_pages=4, page_size=2)  # 3 usable pages = 6 tokens
    a = Sequence(0, [1, 2], 4, arrival_time=0)
    b = Sequence(1, [3, 4], 4, arrival_time=1)
    s.add(a)
    s.add(b)
    assert rows(step(s)) == [(0, 0, 2), (1, 0, 2)]  # 2 pages used
    assert rows(step(s)) == [(0, 2, 1)]  # a takes page 3; b needs a page, none free -> b preempts itself
    assert s.waiting == [b] and b.num_computed == 0 and b.block_table == [] and b.num_preemptions == 1
    out = s.schedule()
    assert rows(out) == [(0, 3, 1)] and out.preempted == ()  # a fits in its page
    s.update(out, {0: token(0, 4)})
    out = s.schedule()  # a needs a page while b is waiting: nobody else to preempt
    assert rows(out) == [(0, 4, 1)]
    s.update(out, {0: token(0, 5)})
    assert a.is_finished  # max_tokens 4
    out = s.schedule()
    assert rows(out) == [(1, 0, 3)] and out.chunks[0].samples  # prompt + its first output, then samples
    assert out.chunks[0].token_ids == (3, 4, token(1, 2))
    run_all(s)
    assert b.output_ids == expected_outputs(1, 2, 4, stop=False) and s.num_preemptions == 1


def test_preemption_victims_are_the_worst_running_and_go_to_the_front():
    s = make(num_pages=5, page_size=2)  # 4 usable pages
    seqs = [Sequence(i, [1, 2], 6, arrival_time=i) for i in range(4)]
    for q in seqs:
        s.add(q)
    s.add(Sequence(9, [1], 1, arrival_time=9))  # no seat... no page: waits behind them
    step(s)  # 4 prefills: every page taken
    assert s.blocks.num_free == 0
    out = step(s)  # every decode needs a new page: 0 preempts 3, 1 preempts 2
    assert rows(out) == [(0, 2, 1), (1, 2, 1)] and out.preempted == (seqs[3], seqs[2])
    assert [q.seq_id for q in s.waiting] == [2, 3, 9]  # back in front of later arrivals, in arrival order
    assert all(q.status is SeqStatus.WAITING and q.num_computed == 0 for q in seqs[2:])
    run_all(s)
    for q in seqs:
        assert q.output_ids == expected_outputs(q.seq_id, 2, 6, stop=False)


def test_priority_preemption_spares_the_better_priority():
    s = make(SchedulerConfig(policy="priority"), num_pages=4, page_size=2)
    low = Sequence(0, [1, 2], 4, priority=5, arrival_time=0)  # arrived first, worse priority
    high = Sequence(1, [3, 4], 4, priority=1, arrival_time=1)
    s.add(low)
    s.add(high)
    step(s)
    out = step(s)
    assert out.preempted == (low,) and rows(out) == [(1, 2, 1)]
    run_all(s)
    assert low.output_ids == expected_outputs(0, 2, 4, stop=False)


def test_a_scheduled_decode_is_dropped_when_a_better_prefill_preempts_it():
    s = make(SchedulerConfig(max_num_batched_tokens=4, policy="priority"), num_pages=5, page_size=2)
    b = Sequence(1, [1], 8, priority=5, arrival_time=0)  # worse priority, decoding
    a = Sequence(0, list(range(8)), 1, priority=0, arrival_time=1)  # better priority, chunked prefill
    s.add(b)
    assert rows(step(s)) == [(1, 0, 1)]
    s.add(a)
    assert rows(step(s)) == [(1, 1, 1), (0, 0, 3)]
    assert rows(step(s)) == [(1, 2, 1), (0, 3, 1)]  # b took the last page; a's chunk shrinks to its free slot
    out = step(s)  # b's decode fits, then a needs a page: b (the worst) is preempted, its row dropped and refunded
    assert rows(out) == [(0, 4, 4)] and out.preempted == (b,) and out.num_batched_tokens == 4
    assert a.is_finished
    run_all(s)
    assert b.output_ids == expected_outputs(1, 1, 8, stop=False) and b.num_preemptions == 1


def test_unchunked_recompute_longer_than_a_step_is_chunked():
    # chunked_prefill off: b's prompt fits a step, but after preemption prompt + outputs (6) exceed the budget
    # (4); the recompute is the one prefill allowed to split, or b could never run again
    s = make(SchedulerConfig(max_num_batched_tokens=4, chunked_prefill=False), num_pages=9, page_size=1)
    a = Sequence(0, [1], 6, arrival_time=0)
    b = Sequence(1, [1, 2, 3], 4, arrival_time=1)
    s.add(a)
    s.add(b)
    for _ in range(3):
        step(s)
    out = step(s)
    assert out.preempted == (b,) and b.num_tokens == 6
    run_all(s)
    assert b.output_ids == expected_outputs(1, 3, 4, stop=False) and a.output_ids == expected_outputs(0, 1, 6, False)


def test_priority_head_displaces_worse_running_sequences():
    s = make(SchedulerConfig(policy="priority", max_num_batched_tokens=16), num_pages=5, page_size=2)
    low = Sequence(0, [1], 3, priority=3, arrival_time=0)  # 1 of the 4 pages
    mid = Sequence(1, [1] * 5, 3, priority=2, arrival_time=1)  # the other 3
    s.add(low)
    s.add(mid)
    step(s)
    assert s.blocks.num_free == 0
    high = Sequence(2, [1] * 4, 2, priority=0, arrival_time=2)  # needs 2 pages
    s.add(high)
    out = step(s)
    assert out.preempted == (low, mid)  # worst first; low's page alone is not enough
    assert rows(out) == [(2, 0, 4)]  # their decode rows were dropped; neither is readmitted in this step
    assert [q.seq_id for q in s.waiting] == [1, 0]
    run_all(s)
    assert low.output_ids == expected_outputs(0, 1, 3, stop=False)
    assert mid.output_ids == expected_outputs(1, 5, 3, stop=False)


def test_priority_head_displaces_for_a_seat():
    s = make(SchedulerConfig(policy="priority", max_num_seqs=1))
    low = Sequence(0, [1, 2], 4, priority=1, arrival_time=0)
    s.add(low)
    step(s)
    s.add(Sequence(1, [3], 2, priority=0, arrival_time=1))
    out = step(s)
    assert out.preempted == (low,) and rows(out) == [(1, 0, 1)]


def test_no_displacement_when_it_would_not_help_or_under_fcfs():
    # the better-priority sequence holds the pages: displacing the worse one would not make room
    s = make(SchedulerConfig(policy="priority"), num_pages=5, page_size=2)
    s.add(Sequence(0, [1] * 5, 3, priority=0, arrival_time=0))  # 3 pages
    s.add(Sequence(1, [1], 2, priority=5, arrival_time=1))  # 1 page
    step(s)
    s.add(Sequence(2, [1] * 5, 2, priority=1, arrival_time=2))  # needs 3 pages
    out = step(s)
    assert out.preempted == () and [r[0] for r in rows(out)] == [0, 1]
    # fcfs never displaces: the late request waits
    f = make(SchedulerConfig(max_num_seqs=1))
    f.add(Sequence(0, [1, 2], 4, priority=9, arrival_time=0))
    step(f)
    f.add(Sequence(1, [3], 2, priority=0, arrival_time=-1))  # even one stamped as arriving earlier
    assert step(f).preempted == () and f.num_waiting == 1


def test_a_displaced_sequence_is_not_readmitted_in_the_same_step():
    s = make(SchedulerConfig(policy="priority", max_num_batched_tokens=3), num_pages=6, page_size=1)
    low = Sequence(0, [1] * 4, 2, priority=3, arrival_time=0)
    s.add(low)
    step(s)
    step(s)
    s.add(Sequence(1, [1, 2], 1, priority=0, arrival_time=1))
    out = step(s)  # low's decode takes the last page; the head displaces low; 1 token of budget and 3 pages are
    assert rows(out) == [(1, 0, 2)] and out.preempted == (low,)  # left, but low waits for the next step
    assert s.waiting == [low]


def test_no_admission_after_a_preemption_to_grow():
    s = make(SchedulerConfig(policy="priority"), num_pages=4, page_size=2)
    a = Sequence(0, [1, 2], 4, priority=0, arrival_time=0)
    b = Sequence(1, [3, 4], 4, priority=5, arrival_time=1)
    s.add(a)
    s.add(b)
    step(s)
    s.add(Sequence(2, [5], 1, priority=1, arrival_time=2))  # would fit in the page b leaves
    out = step(s)
    assert rows(out) == [(0, 2, 1)] and out.preempted == (b,) and s.num_waiting == 2


# ---- update / finish / abort --------------------------------------------------------------------------------


def test_update_needs_the_sampled_token():
    s = make()
    s.add(Sequence(0, [1], 2))
    out = s.schedule()
    with pytest.raises(KeyError, match="no sampled token for sequence 0"):
        s.update(out, {})


def test_abort_and_stop_free_pages():
    s = make()
    a, b, c = (Sequence(i, [1] * 5, 8, arrival_time=i) for i in range(3))
    for q in (a, b, c):
        s.add(q)
    out = s.schedule()
    assert s.blocks.num_free < s.blocks.num_usable
    assert s.abort(1) is b and b.finish_reason == "abort" and s.abort(1) is None and s.abort(77) is None
    grew = s.update(out, {0: 4, 1: 4, 2: 4})
    assert grew == [a, c] and b.output_ids == []  # the aborted sequence's result is void
    s.finish(a, "stop")
    s.finish(a, "stop")  # idempotent
    assert a.finish_reason == "stop" and s.num_running == 1
    s.abort(2)
    assert not s.has_unfinished() and s.blocks.num_free == s.blocks.num_usable


def test_update_twice_is_a_no_op():
    s = make()
    a = Sequence(0, [1, 2], 3)
    s.add(a)
    out = s.schedule()
    assert s.update(out, {0: 5}) == [a]
    assert s.update(out, {0: 6}) == [] and a.output_ids == [5] and a.num_computed == 2


def test_abort_a_waiting_sequence():
    s = make(SchedulerConfig(max_num_seqs=1))
    s.add(Sequence(0, [1], 3))
    s.add(Sequence(1, [1], 3))
    step(s)
    assert s.abort(1) is not None and s.num_waiting == 0


def test_max_model_len_finishes_with_length():
    s = make(SchedulerConfig(max_model_len=6))
    a = Sequence(0, [1, 2, 3], 3)
    s.add(a)
    run_all(s)
    assert a.finish_reason == "length" and a.num_tokens == 6


def test_to_seq_chunk_builds_a_valid_batch():
    from lowbit.runtime.batch import Batch

    s = make(SchedulerConfig(max_num_batched_tokens=5), page_size=16)
    s.add(Sequence(0, list(range(3)), 4))
    step(s)
    s.add(Sequence(1, list(range(10, 17)), 4))
    out = s.schedule()
    chunks = [c.to_seq_chunk() for c in out.chunks]
    assert [(c.seq_id, c.token_ids, c.num_cached) for c in chunks] == [
        (0, (token(0, 3),), 3),
        (1, (10, 11, 12, 13), 0),
    ]
    assert Batch(chunks, 16).num_tokens == 5


# ---- random traces ------------------------------------------------------------------------------------------


@dataclass
class Req:
    arrive: int  # step at which it is added
    prompt_len: int
    max_tokens: int
    priority: int
    abort_at: int | None  # step at which it is aborted (if still unfinished)


class FakeEngine:
    """Drives a Scheduler with a fake model and checks the invariants at every step."""

    def __init__(self, cfg: SchedulerConfig, num_pages: int, page_size: int, stop: bool) -> None:
        self.s = Scheduler(cfg, BlockManager(num_pages, page_size))
        self.cfg, self.ps, self.stop = cfg, page_size, stop
        self.kv: dict[tuple[int, int], tuple[int, int, int]] = {}  # (page, offset) -> (seq, position, token)
        self.first_scheduled: dict[int, int] = {}
        self.finished_order: list[int] = []
        self.order: dict[int, int] = {}

    def key(self, q: Sequence) -> tuple:
        if self.cfg.policy == "priority":
            return (q.priority, q.arrival_time, self.order[q.seq_id])
        return (q.arrival_time, self.order[q.seq_id])

    def add(self, q: Sequence) -> bool:
        p, m, bm = q.num_prompt_tokens, q.max_tokens, self.s.blocks
        never = (
            p + m > self.cfg.max_model_len
            or bm.pages_for(p + m - 1) > bm.num_usable
            or (not self.cfg.chunked_prefill and p > self.cfg.max_num_batched_tokens)
        )
        try:
            self.s.add(q)
        except ValueError:
            assert never, "add() refused a sequence that can run"
            return False
        assert not never, "add() accepted a sequence that can never run"
        self.order[q.seq_id] = len(self.order)
        return True

    def step(self, t: int) -> None:
        s, bm = self.s, self.s.blocks
        waiting_before = sorted(s.waiting, key=self.key)
        assert s.waiting == waiting_before  # the queue is kept in policy order
        out = s.schedule()
        assert not out.is_empty  # progress: something runs while anything is unfinished
        # budget, seats, pages
        assert out.num_batched_tokens == sum(c.num_new for c in out.chunks) <= self.cfg.max_num_batched_tokens
        assert s.num_running <= self.cfg.max_num_seqs and len(out.chunks) <= self.cfg.max_num_seqs
        live = s.running + s.waiting
        owned = [p for q in live for p in q.block_table]
        assert len(owned) == len(set(owned)) and 0 not in owned
        assert len(owned) + bm.num_free == bm.num_usable
        for q in s.waiting:
            assert q.block_table == [] and q.num_computed == 0 and q.status is SeqStatus.WAITING
        # one chunk per sequence; decode rows first; rows are the uncomputed slice
        ids = [c.seq.seq_id for c in out.chunks]
        assert len(ids) == len(set(ids))
        kinds = [c.is_decode for c in out.chunks]
        assert kinds == sorted(kinds, reverse=True)
        for c in out.chunks:
            q = c.seq
            assert q.status is SeqStatus.RUNNING and c.num_cached == q.num_computed and c.num_new >= 1
            assert c.num_cached + c.num_new <= q.num_tokens and c.samples == (c.num_cached + c.num_new == q.num_tokens)
            assert c.is_decode == (q.num_remaining == 1 and c.num_cached > 0)
            assert list(c.token_ids) == q.all_ids[c.num_cached : c.num_cached + c.num_new]
            assert len(q.block_table) * self.ps >= c.num_cached + c.num_new
        # victims: every preempted sequence ranks after every sequence still running
        for v in out.preempted:
            assert v.status is SeqStatus.WAITING and v not in [c.seq for c in out.chunks]
            assert all(self.key(r) < self.key(v) for r in s.running)
        # admission is head of line: the newly admitted are a prefix of the waiting queue
        admitted = [c.seq for c in out.chunks if c.seq in waiting_before]
        assert admitted == waiting_before[: len(admitted)]
        if out.preempted and admitted:  # only the priority policy displaces running sequences to admit
            assert self.cfg.policy == "priority" and not set(out.preempted) & set(admitted)
            assert all(self.key(a) < self.key(v) for a in admitted for v in out.preempted)
        # the fake model: every context token is in the cache, then the new ones are written
        for c in out.chunks:
            q = c.seq
            self.first_scheduled.setdefault(q.seq_id, t)
            for pos in range(c.num_cached + c.num_new):
                slot = (q.block_table[pos // self.ps], pos % self.ps)
                if pos < c.num_cached:
                    assert self.kv[slot] == (q.seq_id, pos, q.all_ids[pos]), "context missing from the cache"
                else:
                    self.kv[slot] = (q.seq_id, pos, q.all_ids[pos])
        sampled = {c.seq.seq_id: token(c.seq.seq_id, c.seq.num_tokens) for c in out.chunks if c.samples}
        for q in s.update(out, sampled):
            if self.stop and q.output_ids[-1] == STOP:
                s.finish(q, "stop")  # also relabels a "length" finish of this same token
            if q.is_finished:
                self.finished_order.append(q.seq_id)


def run_trace(reqs, cfg, num_pages, ps, stop=True):
    eng = FakeEngine(cfg, num_pages, ps, stop)
    seqs: dict[int, Sequence] = {}
    t = 0
    last_arrival = max((r.arrive for r in reqs), default=0)
    while t <= last_arrival or eng.s.has_unfinished():
        for i, r in enumerate(reqs):
            if r.arrive == t:
                q = Sequence(i, [(i + j) % 50 + 1 for j in range(r.prompt_len)], r.max_tokens, r.priority, float(t))
                if eng.add(q):
                    seqs[i] = q
            if r.abort_at == t and i in seqs:
                eng.s.abort(i)
        if eng.s.has_unfinished():
            eng.step(t)
        t += 1
        assert t < 5000, "trace did not terminate"
    bm = eng.s.blocks
    assert bm.num_free == bm.num_usable and eng.s.num_running == eng.s.num_waiting == 0
    for i, q in seqs.items():
        assert q.is_finished
        want = expected_outputs(i, q.num_prompt_tokens, q.max_tokens, stop)
        if q.finish_reason == "abort":
            assert q.output_ids == want[: q.num_output_tokens]  # a prefix of the unpreempted run
        else:
            assert q.output_ids == want  # preemption is invisible in the outputs
            assert q.finish_reason == ("stop" if want[-1] == STOP and stop else "length")
    return eng, seqs


@st.composite
def traces(draw):
    """A config, a cache a few requests fit in one at a time but not all at once, and requests sized to it
    (a few too large for add())."""
    ps = draw(st.sampled_from([1, 2, 4, 8]))
    capacity = draw(st.integers(6, 40))  # tokens in the cache
    num_pages = -(-capacity // ps) + 1
    cfg = SchedulerConfig(
        max_num_seqs=draw(st.integers(1, 4)),
        max_num_batched_tokens=draw(st.integers(1, 24)),
        max_model_len=draw(st.integers(8, 48)),
        chunked_prefill=draw(st.booleans()),
        policy=draw(st.sampled_from(["fcfs", "priority"])),
    )
    fit = min(capacity, cfg.max_model_len)
    reqs = []
    for _ in range(draw(st.integers(2, 8))):
        p = draw(st.integers(1, fit + 4)) if draw(st.integers(0, 9)) == 0 else draw(st.integers(1, fit * 2 // 3))
        hi = max(1, fit - p + 1)  # the longest max_tokens that fits; rarely anything up to 12
        m = draw(st.integers(1, 12)) if draw(st.integers(0, 9)) == 0 else draw(st.integers(min(hi, 1 + hi // 2), hi))
        abort_at = draw(st.integers(0, 30)) if draw(st.integers(0, 4)) == 0 else None
        reqs.append(Req(draw(st.integers(0, 4)), p, m, draw(st.integers(0, 2)), abort_at))
    return reqs, cfg, num_pages, ps


@settings(max_examples=150)
@given(traces())
def test_random_traces_keep_every_invariant(trace):
    run_trace(*trace)


@settings(max_examples=40)
@given(st.integers(1, 8), st.integers(1, 12), st.integers(1, 6), st.integers(1, 4), st.integers(1, 32))
def test_fcfs_completion_order_without_preemption(n, prompt_len, max_tokens, seats, budget):
    # identical requests and a cache big enough for all: they finish in arrival order, never preempted
    reqs = [Req(0, prompt_len, max_tokens, 0, None) for _ in range(n)]
    cfg = SchedulerConfig(max_num_seqs=seats, max_num_batched_tokens=budget, max_model_len=64)
    eng, _ = run_trace(reqs, cfg, num_pages=n * 18 + 1, ps=1, stop=False)
    assert eng.s.num_preemptions == 0
    assert eng.finished_order == sorted(eng.finished_order) == list(range(n))


@settings(max_examples=40)
@given(st.lists(st.integers(0, 3), min_size=1, max_size=8), st.integers(1, 3))
def test_priority_first_service_order(priorities, seats):
    # all arrive together: first service follows (priority, arrival)
    reqs = [Req(0, 3, 2, p, None) for p in priorities]
    cfg = SchedulerConfig(max_num_seqs=seats, max_num_batched_tokens=64, policy="priority")
    eng, _ = run_trace(reqs, cfg, num_pages=64, ps=4, stop=False)
    served = sorted(eng.first_scheduled, key=lambda i: eng.first_scheduled[i])
    by_rank = sorted(range(len(priorities)), key=lambda i: (priorities[i], i))
    assert [eng.first_scheduled[i] for i in by_rank] == sorted(eng.first_scheduled[i] for i in by_rank)
    assert len(served) == len(priorities)


def test_a_tight_cache_preempts_and_still_matches():
    reqs = [Req(0, 6, 8, 0, None) for _ in range(4)]
    eng, seqs = run_trace(reqs, SchedulerConfig(max_num_seqs=4), num_pages=5, ps=4, stop=False)
    assert eng.s.num_preemptions > 0 and sum(q.num_preemptions for q in seqs.values()) == eng.s.num_preemptions
