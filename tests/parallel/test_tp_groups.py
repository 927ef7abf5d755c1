"""TPGroup in one process: two ranks on two threads over a TCPStore on loopback. Subgroups are separate
channels: collectives are matched by issue order within a group only, so two threads of each rank may issue
theirs in different interleavings (what the nano executor's network units do) and still sum the right
tensors."""

from __future__ import annotations

import threading

import torch

from lowbit.parallel.collectives import TPGroup, free_port


def on_two_ranks(fn, timeout=60.0):
    """fn(group) on ranks 0 and 1 (threads); their results, or the first error; fails instead of hanging."""
    port = free_port()
    out: list = [None, None]
    errors: list[BaseException] = []

    def body(rank: int) -> None:
        try:
            out[rank] = fn(TPGroup.connect(rank, 2, port))
        except BaseException as e:
            errors.append(e)

    threads = [threading.Thread(target=body, args=(r,), daemon=True) for r in (0, 1)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout)
    assert not any(t.is_alive() for t in threads), f"the ranks did not finish within {timeout} s (deadlock)"
    if errors:
        raise errors[0]
    return out


def test_subgroups_sum_independently_of_the_issue_interleaving():
    def fn(g: TPGroup):
        subs = [g.subgroup("u0"), g.subgroup("u1")]
        vals = {}
        # rank 0 issues u0 then u1, rank 1 issues u1 then u0 (from two threads each: both block until matched)
        order = (0, 1) if g.rank == 0 else (1, 0)

        def issue(i: int) -> None:
            t = torch.full((3,), float(10 * i + g.rank + 1))
            subs[i].all_reduce_(t)
            vals[i] = t

        ts = [threading.Thread(target=issue, args=(i,)) for i in order]
        for t in ts:
            t.start()
        for t in ts:
            t.join(30)
        return vals

    r0, r1 = on_two_ranks(fn)
    for vals in (r0, r1):
        assert torch.equal(vals[0], torch.full((3,), 1.0 + 2.0))
        assert torch.equal(vals[1], torch.full((3,), 11.0 + 12.0))


def test_one_group_pairs_collectives_by_issue_order():
    # the negative control: on one group, rank 0 issuing a then b and rank 1 b then a pairs a with b (crossed
    # sums), which is why two units that issue collectives independently each need their own group
    def fn(g: TPGroup):
        a, b = torch.full((3,), 1.0 + g.rank), torch.full((3,), 11.0 + g.rank)
        for t in (a, b) if g.rank == 0 else (b, a):
            g.all_reduce_(t)
        return a, b

    (a0, b0), (a1, b1) = on_two_ranks(fn)
    assert torch.equal(a0, torch.full((3,), 1.0 + 12.0)) and torch.equal(b1, torch.full((3,), 1.0 + 12.0))
    assert torch.equal(b0, torch.full((3,), 11.0 + 2.0)) and torch.equal(a1, torch.full((3,), 11.0 + 2.0))


def test_a_subgroup_tag_is_checked():
    import pytest

    with pytest.raises(ValueError, match="subgroup tag 'a/b'"):
        TPGroup(0, 1, None, None).subgroup("a/b")
