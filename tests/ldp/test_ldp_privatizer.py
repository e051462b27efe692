"""The privatizer's pure core: memoization, budget, report contents (invariant 4, and 1 for features)."""

from __future__ import annotations

import re
import time

import numpy as np
import orjson
import pytest
from ldp_fixtures import make_privatizer, protect, protected_records

from stream.crypto.keyring import Keyring
from stream.errors import SchemaPolicyError
from stream.ldp.memo import MemoryMemoStore
from stream.ldp.policy import NONE_VALUE, LdpPolicy
from stream.ldp.privatizer import ProtectedRecord, hour_of_week
from stream.schema import EventSchema, load_schema, output_validator, schema_document
from stream.synth import ClickstreamGenerator


@pytest.fixture()
def keyring() -> Keyring:
    return Keyring.generate()


def _event(i: int = 0, **over: object) -> dict:
    ev = {
        "event_id": f"00000000-0000-4000-8000-{i:012d}",
        "event_type": "product_view",
        "ts": "2024-01-03T10:15:00Z",
        "user_id": "alice@example.com-id-1",
        "session_id": "sess-1",
        "page": "/p/1",
        "email": "alice@example.com",
        "category": "books",
        "device": "mobile",
        "country": "DE",
        "price": 19.5,
    }
    ev.update(over)
    return ev


def test_policy_from_the_shipped_schema() -> None:
    policy = LdpPolicy.from_schema(load_schema("clickstream-event.v1"), 1.0)
    names = [a.name for a in policy.attributes]
    assert names == ["event_type", "category", "price", "device", "country"]
    cat = policy.by_name["category"]
    assert cat.domain[-1] == NONE_VALUE and cat.optional and cat.k == 31
    # default oracle choice: GRR iff k < 3e^eps + 2 (= 10.15 at eps=1)
    assert policy.by_name["event_type"].mechanism == "GRR"  # k = 7, required: no _none
    assert policy.by_name["device"].mechanism == "GRR"  # k = 5
    assert cat.mechanism == "OLH"  # k = 31
    assert policy.by_name["country"].mechanism == "OLH"  # 33 codes incl. other, + _none
    assert policy.by_name["country"].index_of("ZZ") == policy.by_name["country"].index_of("other")
    price = policy.by_name["price"]
    assert (price.lo, price.hi, price.mechanism) == (0.0, 5000.0, "HM")
    assert price.clamp(9999) == 5000.0 and price.clamp(None) == 0.0 and price.clamp(-3) == 0.0
    # at a large epsilon GRR wins for the 31-value category domain too
    assert LdpPolicy.from_schema(load_schema("clickstream-event.v1"), 4.0).by_name["category"].mechanism == "GRR"


@pytest.mark.parametrize("patch", [
    {"epsilon": 0}, {"epsilon": "1"}, {"mechanism": "RAPPOR"}, {"out_of_domain": "nowhere"},
])
def test_bad_ldp_policies_are_refused(patch: dict) -> None:
    doc = schema_document("clickstream-event.v1")
    doc["properties"]["device"]["x-privacy"] = {"policy": "ldp", **patch}
    with pytest.raises(SchemaPolicyError):
        LdpPolicy.from_schema(EventSchema("patched", doc), 1.0)


def test_bad_numeric_bounds_are_refused() -> None:
    doc = schema_document("clickstream-event.v1")
    doc["properties"]["price"]["x-privacy"]["bounds"] = [10, 10]
    with pytest.raises(SchemaPolicyError, match="bounds"):
        LdpPolicy.from_schema(EventSchema("patched", doc), 1.0)


def test_hour_of_week() -> None:
    assert hour_of_week("2024-01-01T00:30:00Z") == 0  # a Monday
    assert hour_of_week("2024-01-07T23:59:59Z") == 167
    assert hour_of_week("2024-01-01T01:30:00+02:00") == 167  # Sunday 23:30 UTC
    assert hour_of_week("garbage") is None and hour_of_week(None) is None


def test_feature_reports_hold_no_identifier_token_or_timestamp(keyring: Keyring) -> None:
    events = list(ClickstreamGenerator(seed=3).events(3000))
    protected = protect(events, keyring)
    priv = make_privatizer()
    res = priv.process([ProtectedRecord(v, int(time.time() * 1000)) for _k, v in protected])
    assert len(res.reports) == len(events)
    blob = b"\n".join(res.reports)
    # no token, no raw identifier, no email, no exact timestamp, no event id
    assert b"tk1_" not in blob
    for ev in events:
        for f in ("user_id", "session_id", "event_id", "email", "ip", "ts"):
            v = ev.get(f)
            if isinstance(v, str):
                assert v.encode() not in blob, f
    assert not re.search(rb"\d{4}-\d{2}-\d{2}T", blob)
    check = output_validator("private-feature.v1")
    for rep in res.reports[:500]:
        doc = orjson.loads(rep)
        assert check(doc) == []
        assert set(doc) <= {"schema", "source_schema", "hour_of_week", "features"}


def test_repeated_reports_of_one_value_are_one_permanent_response(keyring: Keyring) -> None:
    """1,000 reports of the same value by the same person reveal what one report does:
    every emitted value is the identical memoized response, and epsilon is spent once."""
    records = protected_records([_event(i) for i in range(1000)], keyring)
    store = MemoryMemoStore()
    priv = make_privatizer(store=store)
    res = priv.process(records[:400])
    res2 = priv.process(records[400:])  # later batches: served from the cache
    reports = [orjson.loads(r)["features"] for r in res.reports + res2.reports]
    assert len(reports) == 1000
    for attr in ("event_type", "category", "price", "device", "country"):
        distinct = {orjson.dumps(r[attr]) for r in reports}
        assert len(distinct) == 1, attr
    assert res.epsilon_spent == {a: 1.0 for a in ("event_type", "category", "price", "device", "country")}
    assert sum(res2.epsilon_spent.values()) == 0
    assert res2.memo_hits == 600 * 5


def test_a_fresh_process_resolves_the_same_memo_from_the_store(keyring: Keyring) -> None:
    records = protected_records([_event(0)], keyring)
    store, key = MemoryMemoStore(), b"k" * 32
    first = make_privatizer(store=store, memo_key=key, seed=1).process(records)
    second = make_privatizer(store=store, memo_key=key, seed=2).process(records)  # other randomness, same memo
    assert orjson.loads(first.reports[0])["features"] == orjson.loads(second.reports[0])["features"]
    assert sum(second.epsilon_spent.values()) == 0


def test_budget_exhaustion_suppresses_and_never_spends_more(keyring: Keyring) -> None:
    """Budget 3 epsilon per attribute at epsilon 1: three distinct categories are reported, the
    fourth and later are suppressed (counted), repeats of memoized ones still go out."""
    cats = ["books", "music", "toys", "shoes", "garden", "books"]
    records = protected_records([_event(i, category=c) for i, c in enumerate(cats)], keyring)
    store = MemoryMemoStore()
    priv = make_privatizer(store=store, budget=3.0)
    res = priv.process(records)
    assert res.suppressed["category"] == 2
    assert res.reported["category"] == 4  # books, music, toys, books again
    assert res.epsilon_spent["category"] == 3.0
    (budget,) = store.budgets.values()
    assert budget["category"] == 3_000_000  # micro-epsilon, never above the budget
    # other attributes are unaffected (one distinct value each)
    assert res.reported["device"] == 6
    # a later batch with yet another value is still suppressed
    res2 = priv.process(protected_records([_event(9, category="tools")], keyring))
    assert res2.suppressed["category"] == 1 and "category" not in orjson.loads(res2.reports[0])["features"]


def test_fully_suppressed_events_emit_nothing(keyring: Keyring) -> None:
    priv = make_privatizer(budget=1.0)
    a = protected_records([_event(0)], keyring)
    b = protected_records([_event(1, event_type="search", category="music", device="tablet", country="FR",
                                  price=3.0)], keyring)
    assert len(priv.process(a).reports) == 1
    res = priv.process(b)
    assert res.reports == [] and res.fully_suppressed == 1


def test_each_person_has_their_own_budget_and_memos(keyring: Keyring) -> None:
    priv = make_privatizer(budget=1.0)
    recs = protected_records([_event(0, user_id="u1", category="books"), _event(1, user_id="u2", category="music")],
                             keyring)
    res = priv.process(recs)
    assert res.reported["category"] == 2 and not res.suppressed


def test_expired_epochs_are_not_reported(keyring: Keyring) -> None:
    old = int((time.time() - 40 * 86400) * 1000)  # retention is 30 days after the epoch
    res = make_privatizer().process(protected_records([_event(0)], keyring, ts_ms=old))
    assert res.reports == [] and res.skipped["retention_ended"] == 1


def test_non_protected_records_are_skipped_not_crashed(keyring: Keyring) -> None:
    good = protected_records([_event(0)], keyring)
    junk = [ProtectedRecord(b"not json", 0), ProtectedRecord(None, 0), ProtectedRecord(b'{"a": 1}', 0)]
    res = make_privatizer().process(junk + good)
    assert len(res.reports) == 1 and res.skipped["not_protected_event"] == 3


def test_memo_fields_never_hold_true_values(keyring: Keyring) -> None:
    store = MemoryMemoStore()
    make_privatizer(store=store).process(protected_records([_event(0)], keyring))
    (memos,) = store.memos.values()
    text = orjson.dumps(list(memos)).decode()
    for value in ("books", "mobile", "DE", "product_view", "19.5"):
        assert value not in text
    assert all(re.fullmatch(r"[a-z_]+:[0-9a-f]{32}", f) for f in memos)


def test_perturbation_uses_the_configured_epsilon(keyring: Keyring) -> None:
    """Many people with the same true device: the share of truthful GRR reports is p = e^eps/(e^eps+k-1)."""
    eps, n = 1.0, 4000
    events = [_event(i, user_id=f"user-{i}", device="desktop") for i in range(n)]
    res = make_privatizer(epsilon=eps, seed=5).process(protected_records(events, keyring))
    policy = LdpPolicy.from_schema(load_schema("clickstream-event.v1"), eps)
    dev = policy.by_name["device"]
    truthful = sum(orjson.loads(r)["features"]["device"]["r"] == dev.index_of("desktop") for r in res.reports)
    p = np.exp(eps) / (np.exp(eps) + dev.k - 1)
    se = np.sqrt(p * (1 - p) / n)
    assert abs(truthful / n - p) < 5 * se


def test_epochs_the_shredder_may_already_have_shredded_are_not_reported(keyring: Keyring) -> None:
    """Within the shredder's lead time before the deadline no memo (nor deadline entry) is re-created."""
    now = time.time()
    epoch = int((now - 30 * 86400) // 86400)  # the oldest epoch still in retention
    deadline = (epoch + 1) * 86400 + 30 * 86400
    assert now < deadline <= now + 86400
    ts_ms = epoch * 86400 * 1000 + 500
    store = MemoryMemoStore()
    priv = make_privatizer(store=store)
    priv.retention_margin_seconds = deadline - now + 1.0  # the deadline falls within the margin
    res = priv.process(protected_records([_event(0)], keyring, ts_ms=ts_ms))
    assert res.reports == [] and res.skipped["retention_ended"] == 1 and not store.deadlines
    priv.retention_margin_seconds = 0.0  # outside the margin the same record is reported
    assert len(priv.process(protected_records([_event(0)], keyring, ts_ms=ts_ms)).reports) == 1
    assert store.deadlines
