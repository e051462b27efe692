"""The privatizer's ε-per-person histogram: counts only, the same as the ledgers it charged, and published
only noised, once per finished epoch."""

from __future__ import annotations

from collections import Counter

from stream.crypto.keyring import Keyring
from stream.ldp.ledger import MICRO, MemoryLedgerStore
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
    store = MemoryLedgerStore()
    p = make_privatizer(store=store, budget=6.0, label_epsilon=1.0)
    events = list(ClickstreamGenerator(seed=3).events(600))
    p.process(protected_records(events, Keyring.generate()))
    expected = Counter(min(12, micro * 12 // (6 * MICRO)) for micro in store.ledgers.values())
    d = p.spend.as_dict()
    assert d["people"] == len(store.ledgers) > 10
    assert {i: c for i, c in enumerate(d["counts"]) if c} == dict(expected)
    assert d["counts"][12] > 0  # some people reached the cap of 6 (2 reports x (2.5 + 0.5 for the label))
    assert not any(isinstance(v, str) and len(v) > 8 for v in d.values())  # numbers, no ids


def test_only_a_noised_histogram_of_a_finished_epoch_is_published() -> None:
    """The issue's one-person example: one person's 6 reports against 12 move them from bin 5 to bin 10 of
    the exact histogram; nothing is published for the epoch in progress, and the published histogram of a
    finished epoch carries geometric noise (its bins differ from the exact ones over many draws)."""
    import random

    def run(reports: int, seed: int) -> tuple[dict, dict | None]:
        h = SpendHistogram(12.0, noise=random.Random(seed))
        for i in range(40):
            h.charge(1, f"p{i}", MICRO)
        for _ in range(reports):
            h.charge(1, "alice", MICRO)
        exact = h.as_dict()
        assert h.published() is None  # the epoch is in progress: nothing to publish
        h.charge(2, "bob", MICRO)  # the epoch ended
        return exact, h.published()

    (e6, _), (e12, _) = run(5, 0), run(10, 0)
    assert e6["counts"][5] == 1 and e12["counts"][10] == 1  # exact: one person's count, in process only
    diffs = 0
    for seed in range(200):
        exact, pub = run(5, seed)
        assert pub is not None and pub["epoch"] == 1 and all(type(c) is int and c >= 0 for c in pub["counts"])
        diffs += pub["counts"] != exact["counts"]
    assert diffs > 150  # the published counts are noised (a noise-free mutant publishes the exact bins)
