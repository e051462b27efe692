"""The release buffer (stream.ldp.release): releases hold enough people, leave in an order that does not
depend on the input order, and never wait longer than the max delay."""

from __future__ import annotations

import random

import numpy as np
import pytest

from stream.ldp.release import ReleaseBuffer
from tests.support.clock import Clock


def test_a_release_waits_for_enough_people_or_the_delay() -> None:
    clock = Clock(100.0)
    buf = ReleaseBuffer(min_people=3, max_delay_seconds=2.0, shuffle=random.Random(1), clock=clock)
    buf.add(["a1", "a2", "a3"], [1, 1, 1])  # one person's three reports
    assert buf.due() == [] and len(buf) == 3
    buf.add(["b1"], [2])
    assert buf.due() == []
    buf.add(["c1"], [3])
    out = buf.due()
    assert sorted(out) == ["a1", "a2", "a3", "b1", "c1"] and len(buf) == 0 and buf.small_releases == 0
    buf.add(["d1"], [4])
    clock.advance(1.9)
    assert buf.due() == []
    clock.advance(0.2)
    assert buf.due() == ["d1"] and buf.small_releases == 1  # low traffic: released after the delay, counted
    buf.add(["e1"], [5])
    assert buf.due(force=True) == ["e1"] and buf.small_releases == 2  # a stop releases at once, counted too
    with pytest.raises(ValueError):
        ReleaseBuffer(min_people=0, max_delay_seconds=1.0)


def test_release_order_does_not_follow_the_input_order() -> None:
    """200 reports added in order 0..199 by 200 people: each release is a fresh permutation (no correlation
    with the input order; the first out is rarely the first in). A buffer that does not shuffle fails."""
    firsts, rhos = [], []
    for seed in range(30):
        buf = ReleaseBuffer(min_people=200, max_delay_seconds=60.0, shuffle=random.Random(seed))
        for i in range(200):
            buf.add([i], [i])
        out = buf.due()
        assert sorted(out) == list(range(200))
        firsts.append(out[0])
        rhos.append(float(np.corrcoef(out, np.arange(200))[0, 1]))
    assert max(abs(r) for r in rhos) < 0.3, rhos
    assert len(set(firsts)) > 15
