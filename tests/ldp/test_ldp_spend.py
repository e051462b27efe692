"""The privatizer's ε-per-person histogram: counts only, and the same as the ledgers it charged."""

from __future__ import annotations

from collections import Counter

from stream.crypto.keyring import Keyring
from stream.ldp.memo import MICRO, MemoryMemoStore
from stream.ldp.privatizer import SpendHistogram
from stream.synth import ClickstreamGenerator
from tests.support.ldp import make_privatizer, protected_records


def test_bins_move_with_each_charge_and_a_new_epoch_starts_over() -> None:
    h = SpendHistogram(12.0)
    h.charge(5, "a", 1 * MICRO)
    h.charge(5, "a", 2 * MICRO)
    h.charge(5, "b", 12 * MICRO)
    h.charge(4, "c", MICRO)  # an older epoch: ignored
    d = h.as_dict()
    assert d["epoch"] == 5 and d["cap"] == 12.0 and d["bin_width"] == 1.0 and d["people"] == 2
    assert d["counts"][3] == 1 and d["counts"][12] == 1 and sum(d["counts"]) == 2
    h.charge(6, "a", MICRO)
    assert h.as_dict()["counts"][1] == 1 and sum(h.as_dict()["counts"]) == 1


def test_people_beyond_the_bound_are_counted_as_untracked() -> None:
    h = SpendHistogram(12.0, max_people=2)
    for who in "abc":
        h.charge(1, who, MICRO)
    assert h.as_dict()["people"] == 2 and h.as_dict()["untracked"] == 1


def test_histogram_matches_the_ledgers_of_the_store() -> None:
    store = MemoryMemoStore()
    p = make_privatizer(store=store, budget=6.0, label_epsilon=1.0)
    events = list(ClickstreamGenerator(seed=3).events(600))
    p.process(protected_records(events, Keyring.generate()))
    expected = Counter(min(12, micro * 12 // (6 * MICRO)) for micro in store.ledgers.values())
    d = p.spend.as_dict()
    assert d["people"] == len(store.ledgers) > 10
    assert {i: c for i, c in enumerate(d["counts"]) if c} == dict(expected)
    assert d["counts"][12] > 0  # some people reached the cap of 6
    assert not any(isinstance(v, str) and len(v) > 8 for v in d.values())  # numbers, no ids
