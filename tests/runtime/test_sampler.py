"""Sampler: greedy is argmax; top-k / top-p keep exactly the documented sets; seeds reproduce; bad params."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from lowbit.runtime.sampler import SamplingParams, filtered_logprobs, make_generator, sample


@settings(max_examples=25)
@given(st.lists(st.integers(-200, 200), min_size=2, max_size=40, unique=True), st.integers(1, 10), st.floats(0.05, 1.0))
def test_filters_keep_the_documented_sets(values, k, p):
    logits = torch.tensor(values, dtype=torch.float64) / 10  # distinct values: no ties at the top-k edge
    params = SamplingParams(temperature=0.7, top_k=k, top_p=p)
    lp = filtered_logprobs(logits, params)
    kept = torch.isfinite(lp)
    # independent oracle: scaled probs, top-k by value (ties kept), then the nucleus on the survivors
    x = logits / 0.7
    kk = min(k, x.numel())
    thr = torch.sort(x, descending=True).values[kk - 1]
    after_k = torch.where(x < thr, torch.tensor(-torch.inf, dtype=x.dtype), x)
    probs = torch.softmax(after_k, -1)
    order = torch.argsort(probs, descending=True, stable=True)
    mass = 0.0
    for i in order.tolist():  # a token is kept iff the mass of the more likely ones is below p
        if probs[i] == 0:
            assert not kept[i]
            continue
        if mass < p - 1e-9:
            assert kept[i], (i, mass, p)
        elif mass > p + 1e-9:
            assert not kept[i], (i, mass, p)
        # within 1e-9 of p: rounding of the cumulative sum decides; either answer is right
        mass += float(probs[i])
    assert kept.sum() >= 1
    assert torch.isclose(lp[kept].exp().sum(), torch.tensor(1.0, dtype=lp.dtype))


def test_greedy_is_argmax_and_seeded_sampling_reproduces():
    logits = torch.randn(100, generator=torch.Generator().manual_seed(0))
    assert sample(logits, SamplingParams()) == int(logits.argmax())
    params = SamplingParams(temperature=1.0, top_p=0.9, seed=3)
    a = [sample(logits, params, g) for g in [make_generator(3)] for _ in range(20)]
    b = [sample(logits, params, g) for g in [make_generator(3)] for _ in range(20)]
    assert a == b and len(set(a)) > 1


def test_sampling_follows_the_distribution():
    logits = torch.log(torch.tensor([0.5, 0.3, 0.2]))
    g = make_generator(0)
    draws = torch.tensor([sample(logits, SamplingParams(temperature=1.0), g) for _ in range(3000)])
    freq = torch.bincount(draws, minlength=3).double() / 3000
    assert torch.allclose(freq, torch.tensor([0.5, 0.3, 0.2], dtype=torch.float64), atol=0.04)


@pytest.mark.parametrize(
    "kw, field",
    [({"max_tokens": 0}, "max_tokens"), ({"temperature": -1.0}, "temperature"), ({"top_p": 0.0}, "top_p"),
     ({"top_k": -5}, "top_k"), ({"temperature": float("nan")}, "temperature")],
)  # fmt: skip
def test_bad_params_name_the_field(kw, field):
    with pytest.raises(ValueError, match=field):
        SamplingParams(**kw)


def test_nan_logits_are_refused():
    with pytest.raises(FloatingPointError):
        sample(torch.full((5,), float("nan")), SamplingParams())


def test_stop_ids_add_the_eos_unless_ignored():
    assert SamplingParams(stop_token_ids=(5,)).stop_ids((2, 3)) == {2, 3, 5}
    assert SamplingParams(stop_token_ids=(5,), ignore_eos=True).stop_ids((2, 3)) == {5}
    assert SamplingParams().stop_ids(()) == frozenset()
