"""Labelled examples: the session-purchase label (delayed until the session ends), its randomized
response (memoized, budgeted, exact epsilon) and the private-example.v1 records the privatizer emits."""

from __future__ import annotations

import math
import os
import time
from collections import Counter
from datetime import datetime

import numpy as np
import orjson
import pytest

from stream.crypto.keyring import Keyring
from stream.ldp.labels import LABEL_NAME, ExampleStub, SessionLabeler
from stream.ldp.memo import MemoryMemoStore
from stream.ldp.privatizer import ProtectedRecord
from stream.schema import output_validator
from stream.synth import ClickstreamGenerator
from tests.support.ldp import make_privatizer, protected_records

EPOCH = int(time.time()) // 86400  # make_privatizer: one-day epochs, 30 days of retention


def stub(session: str, ts_ms: int, purchase: bool = False, subject: str = "tk1_person") -> ExampleStub:
    return ExampleStub(session, subject, 0, purchase, b'"features":{}', ts_ms)


# -- the labeler ------------------------------------------------------------------------------


def test_a_session_is_labelled_only_when_it_has_been_idle_for_the_gap() -> None:
    lab = SessionLabeler(gap_ms=1000)
    lab.add([stub("s1", 0), stub("s1", 400, purchase=True), stub("s1", 500)])
    lab.add([stub("s2", 500)])
    assert lab.release() == [] and lab.pending == 4
    lab.advance(1499)
    assert lab.release() == []  # a purchase does not release its session early
    lab.advance(1500)
    out = lab.release()
    assert sorted((s.session, s.ts_ms, label) for s, label in out) == [
        ("s1", 0, True), ("s1", 400, True), ("s1", 500, True), ("s2", 500, False)]
    assert lab.pending == 0 and lab.sessions == 0


def test_release_time_does_not_depend_on_the_label() -> None:
    """Sessions with the same last activity are released together, purchase or not."""
    lab = SessionLabeler(gap_ms=60_000)
    lab.add([stub("buy", 1000, purchase=True), stub("browse", 1000)])
    for wm in range(1000, 61_000, 5000):
        lab.advance(wm)
        assert lab.release() == []
    lab.advance(61_000)
    assert {(s.session, label) for s, label in lab.release()} == {("buy", True), ("browse", False)}


def test_later_activity_keeps_a_session_open_and_batches_may_be_out_of_order() -> None:
    lab = SessionLabeler(gap_ms=1000)
    lab.add([stub("s", 900), stub("s", 100)])
    lab.advance(1800)
    assert lab.release() == []
    lab.add([stub("s", 1700, purchase=True)])
    lab.advance(2699)
    assert lab.release() == []
    lab.advance(2700)
    assert [label for _s, label in lab.release()] == [True, True, True]


def test_capacity_drops_the_least_recently_active_sessions_unlabelled() -> None:
    lab = SessionLabeler(gap_ms=10_000, max_pending=5, max_per_session=3)
    lab.add([stub("old", 0), stub("old", 1)])
    lab.add([stub("mid", 2), stub("mid", 3)])
    lab.add([stub("new", 4), stub("new", 5)])  # 6 > 5: "old" goes
    assert lab.dropped == Counter({"capacity": 2}) and lab.pending == 4
    lab.add([stub("mid", 6)] * 3)  # per-session cap of 3
    assert lab.dropped["session_cap"] == 2
    lab.advance(10**9)
    assert {s.session for s, _l in lab.release()} == {"mid", "new"}
    lab.add([stub("x", 10**9)])
    assert lab.discard("shutdown") == 1 and lab.dropped["shutdown"] == 1 and lab.pending == 0


def _ts_ms(ts: str) -> int:
    return int(datetime.fromisoformat(ts.replace("Z", "+00:00")).timestamp() * 1000)


def test_the_label_is_the_generators_session_label() -> None:
    """On the synthetic clickstream the label is exactly ClickstreamGenerator.session_label."""
    gen = ClickstreamGenerator(seed=5, n_users=2000)
    lab = SessionLabeler(gap_ms=120_000, max_pending=10**6)
    events = list(gen.events(20_000))
    got: list[tuple[ExampleStub, bool]] = []
    for i in range(0, len(events), 500):
        chunk = events[i:i + 500]
        lab.add(stub(e["session_id"], _ts_ms(e["ts"]), e["event_type"] == "purchase") for e in chunk)
        got += lab.release()
    got += lab.release_all()
    assert len(got) == len(events)
    # sessions still open at the end of the stream have not made their purchases yet: leave them out
    still_open = {e["session_id"] for e in events[-3000:]}
    checked = [(s, label) for s, label in got if s.session not in still_open]
    assert len(checked) > 15_000
    mismatched = [s.session for s, label in checked if label != gen.session_label(s.session)]
    assert mismatched == []
    assert 0.05 < sum(label for _s, label in got) / len(got) < 0.6  # both classes present


# -- the privatizer: examples -------------------------------------------------------------------


@pytest.fixture()
def keyring() -> Keyring:
    return Keyring.generate()


def _examples(priv, records: list[ProtectedRecord], gap_ms: int = 1) -> tuple[list[bytes], object]:
    res = priv.process(records)
    lab = SessionLabeler(gap_ms=gap_ms, max_pending=10**6)
    lab.add(res.examples)
    return res, priv.label_examples(lab.release_all())


def test_examples_are_private_example_records_with_the_feature_reports_features(keyring: Keyring) -> None:
    priv = make_privatizer(epsilon=1.0, budget=1000.0, label_epsilon=1.0, seed=3)
    gen = ClickstreamGenerator(seed=9, n_users=300)
    events = list(gen.events(3000))
    records = protected_records(events, keyring)
    res, lres = _examples(priv, records)
    assert len(res.examples) == len(res.reports) == len(lres.examples) == len(lres.stubs)
    check = output_validator("private-example.v1")
    feats = Counter(orjson.loads(r)["features"].__repr__() for r in res.reports)
    ex_feats: Counter[str] = Counter()
    for raw in lres.examples:
        doc = orjson.loads(raw)
        assert check(doc) == []
        assert doc["label"]["name"] == LABEL_NAME and doc["label"]["eps"] == 0.5  # per report: eps_1
        ex_feats[doc["features"].__repr__()] += 1
    assert ex_feats == feats  # the same randomized features, one example per reported event
    blob = b"\n".join(lres.examples)
    assert b"tk1_" not in blob  # no person or session token
    for e in events[:500]:
        for f in ("user_id", "session_id", "event_id", "ts"):
            assert e[f].encode() not in blob


def test_labels_are_prepaid_and_fresh_per_example_no_memo(keyring: Keyring) -> None:
    """The label's epsilon is prepaid with the event's feature report: labelling charges nothing and
    touches no store; one person's examples with one true label get independent answers (no memo)."""
    store = MemoryMemoStore()
    priv = make_privatizer(budget=1000.0, label_epsilon=2.0, store=store, seed=4)
    n = 4000
    items = [(ExampleStub(f"s{i % 7}", "tk1_one", EPOCH, False, b'"features":{}', 0), True) for i in range(n)]
    res = priv.label_examples(items)
    assert res.epsilon_spent == 0.0 and store.ledgers == {} and len(res.examples) == n
    p = math.exp(1.0) / (1 + math.exp(1.0))  # GRR at eps / 2
    same = sum(orjson.loads(raw)["label"]["r"] == 1 for raw in res.examples) / n
    assert abs(same - p) < 4 * math.sqrt(p * (1 - p) / n), same  # a memo would make it 0 or 1


def test_the_label_is_binary_randomized_response_at_its_per_report_epsilon() -> None:
    eps = 1.0  # eps_inf; one label report is marginally binary randomized response at eps_1 = eps / 2
    priv = make_privatizer(budget=1000.0, label_epsilon=eps, seed=11)
    n = 20_000
    items = [(ExampleStub("s", f"tk1_{i}", EPOCH, False, b'"features":{}', 0), i % 2 == 0) for i in range(n)]
    res = priv.label_examples(items)
    assert len(res.examples) == n
    truth = {s.subject: i % 2 == 0 for i, (s, _l) in enumerate(items)}
    kept = Counter((truth[s.subject], orjson.loads(raw)["label"]["r"]) for s, raw in
                   zip(res.stubs, res.examples, strict=True))
    p = math.exp(eps / 2) / (1 + math.exp(eps / 2))
    se = math.sqrt(p * (1 - p) / (n / 2))
    assert abs(kept[(True, 1)] / (n / 2) - p) < 5 * se
    assert abs(kept[(False, 0)] / (n / 2) - p) < 5 * se


def test_the_label_is_charged_with_its_feature_report_within_the_cap() -> None:
    """With labelled examples on, each feature report also pays its example's label (prepaid): a person
    releases floor(cap / (report + label)) reports, and the ledger never passes the cap."""
    store = MemoryMemoStore()
    priv = make_privatizer(budget=6.0, label_epsilon=1.0, store=store, seed=2)
    cost = priv.report_cost_micro
    keyring = Keyring.generate()
    events = [{**e, "user_id": "one-person"} for e in ClickstreamGenerator(seed=5, n_users=50).events(40)]
    res = priv.process(protected_records(events, keyring))
    held = [st for st in res.examples if st.body]
    assert len(res.reports) == len(held) == priv.per_person == 6_000_000 // cost < 40
    assert len(res.examples) == 40  # the events past the cap: body-less stubs, label input only
    assert res.epsilon_spent[LABEL_NAME] == pytest.approx(priv.per_person * 0.5)
    (spent,) = store.ledgers.values()
    assert spent == priv.per_person * cost <= 6_000_000


def test_examples_off_by_default_and_the_label_name_is_reserved(keyring: Keyring) -> None:
    priv = make_privatizer(seed=1)
    res = priv.process(protected_records(list(ClickstreamGenerator(seed=1).events(50)), keyring))
    assert res.examples == [] and not priv.examples_enabled
    with pytest.raises(RuntimeError):
        priv.label_examples([])


def test_noise_is_fresh_per_person(keyring: Keyring) -> None:
    """Different people with the same true label do not share one answer (no global memo)."""
    priv = make_privatizer(budget=1000.0, label_epsilon=0.1, seed=None or int.from_bytes(os.urandom(4), "big"))
    items = [(ExampleStub("s", f"tk1_{i}", EPOCH, False, b'"features":{}', 0), True) for i in range(400)]
    rs = Counter(orjson.loads(r)["label"]["r"] for r in priv.label_examples(items).examples)
    assert rs[0] > 50 and rs[1] > 50  # eps = 0.1: close to a coin flip per person
    assert np.isclose(sum(rs.values()), 400)


def test_forget_drops_one_persons_held_examples() -> None:
    lab = SessionLabeler(gap_ms=1000)
    lab.add([stub("s1", 0, subject="tk1_a"), stub("s1", 1, subject="tk1_a"), stub("s2", 2, subject="tk1_b")])
    assert lab.forget("tk1_a") == 2 and lab.forget("tk1_nobody") == 0
    assert lab.pending == 1 and lab.sessions == 1 and lab.dropped == Counter({"erased": 2})
    lab.advance(10_000)
    assert [(s.subject, label) for s, label in lab.release()] == [("tk1_b", False)]


def test_a_purchase_past_the_cap_still_labels_the_sessions_released_examples(keyring: Keyring) -> None:
    """The cap binds (6 events, 4 reports a day): the session's purchase is not released, yet it is the
    session's label - every released example of it is positive before the randomization. Nothing more is
    charged or reported: the unreleased events give body-less stubs the labeler never emits."""
    store = MemoryMemoStore()
    priv = make_privatizer(budget=12.0, label_epsilon=1.0, store=store, seed=4)
    assert priv.per_person == 4
    types = ["page_view", "search", "product_view", "add_to_cart", "checkout", "purchase"]
    base = next(iter(ClickstreamGenerator(seed=2, n_users=5).events(1)))
    events = [{**base, "user_id": "u1", "session_id": "s1", "event_type": t} for t in types]
    t0 = EPOCH * 86_400_000 + 43_200_000  # mid-epoch: the 6 events fall in one epoch
    records = [ProtectedRecord(r.value, t0 + 1000 * i) for i, r in enumerate(protected_records(events, keyring))]
    res = priv.process(records)
    assert len(res.reports) == 4 and res.over_budget == 2
    lab = SessionLabeler(gap_ms=60_000)
    lab.add(res.examples)
    assert lab.pending == 4
    items = lab.release_all()
    assert len(items) == 4 and [label for _s, label in items] == [True] * 4
    (spent,) = store.ledgers.values()
    assert spent == 4 * priv.report_cost_micro
    out = priv.label_examples(items)
    assert len(out.examples) == 4 and out.epsilon_spent == 0.0 and store.ledgers == {next(iter(store.ledgers)): spent}


def test_body_less_stubs_feed_held_sessions_only_and_are_never_released() -> None:
    lab = SessionLabeler(gap_ms=1000)
    past_cap = ExampleStub("s1", "tk1_person", 0, True, b"", 900)  # a purchase past the cap, first in the batch
    lab.add([past_cap, stub("s1", 0), ExampleStub("s2", "tk1_person", 0, True, b"", 950)])
    assert lab.pending == 1 and lab.sessions == 1 and lab.watermark_ms == 950  # s2: nothing held, nothing kept
    lab.advance(1899)
    assert lab.release() == []  # the unreleased event keeps s1 open
    lab.advance(1900)
    assert [(s.ts_ms, label) for s, label in lab.release()] == [(0, True)]
