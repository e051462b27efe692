"""The privatizer's pure core: memoization, budget, report contents (invariant 4, and 1 for features)."""

from __future__ import annotations

import re
import time

import numpy as np
import orjson
import pytest

from stream.crypto.keyring import Keyring
from stream.errors import SchemaPolicyError
from stream.ldp.memo import MemoryMemoStore
from stream.ldp.policy import NONE_VALUE, LdpPolicy
from stream.ldp.privatizer import ProtectedRecord, hour_of_week
from stream.schema import EventSchema, load_schema, output_validator, schema_document
from stream.synth import ClickstreamGenerator
from tests.support.ldp import make_privatizer, protect, protected_records


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
    # two rounds everywhere: eps_inf = 1 (the memo's price), eps_1 = 0.5 per report;
    # L-GRR iff k < 3 e^eps_1 + 2 (= 6.95), else L-OSUE; numbers: L-Duchi
    for a in policy.attributes:
        assert (a.epsilon, a.epsilon_1) == (1.0, 0.5)
    mechs = {a.name: a.longitudinal.name for a in policy.attributes if a.longitudinal is not None}
    assert mechs == {"event_type": "L-OSUE", "category": "L-OSUE", "price": "L-Duchi", "device": "L-GRR",
                     "country": "L-OSUE"}
    # a report is marginally the one-round oracle at eps_1, and says so
    assert policy.by_name["device"].params() == {"m": "GRR", "eps": 0.5, "k": 5}
    assert policy.by_name["country"].index_of("ZZ") == policy.by_name["country"].index_of("other")
    price = policy.by_name["price"]
    assert (price.lo, price.hi, price.mechanism) == (0.0, 5000.0, "Duchi")
    assert price.clamp(9999) == 5000.0 and price.clamp(None) == 0.0 and price.clamp(-3) == 0.0


@pytest.mark.parametrize("patch", [
    {"epsilon": 0}, {"epsilon": "1"}, {"mechanism": "RAPPOR"}, {"out_of_domain": "nowhere"},
    {"mechanism": "OLH"}, {"mechanism": "HM"}, {"epsilon": 1.0, "epsilon_1": 1.0}, {"epsilon_1": 0},
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


def test_repeated_reports_of_one_value_share_one_memo_but_not_their_contents(keyring: Keyring) -> None:
    """1,000 reports of the same values by the same person: one memo per value (eps_inf spent once,
    later batches served from the cache), yet the reports differ - fresh instantaneous noise."""
    records = protected_records([_event(i) for i in range(1000)], keyring)
    store = MemoryMemoStore()
    priv = make_privatizer(store=store)
    res = priv.process(records[:400])
    res2 = priv.process(records[400:])
    reports = [orjson.loads(r)["features"] for r in res.reports + res2.reports]
    assert len(reports) == 1000
    assert res.epsilon_spent == {a: 1.0 for a in ("event_type", "category", "price", "device", "country")}
    assert sum(res2.epsilon_spent.values()) == 0 and res2.memo_hits == 600 * 5
    (memos,) = store.memos.values()
    assert len(memos) == 5
    for attr in ("event_type", "category", "price", "device", "country"):
        assert len({orjson.dumps(r[attr]["r"]) for r in reports}) > 1, attr
    assert len({orjson.dumps(r) for r in reports}) > 900  # whole reports almost never repeat


def test_a_fresh_process_resolves_the_same_memo_from_the_store(keyring: Keyring) -> None:
    records = protected_records([_event(0)], keyring)
    store, key = MemoryMemoStore(), b"k" * 32
    first = make_privatizer(store=store, memo_key=key, seed=1)
    first.process(records)
    second = make_privatizer(store=store, memo_key=key, seed=2)  # other randomness, same memos
    res = second.process(records)
    assert sum(res.epsilon_spent.values()) == 0 and res.memo_resolved == 5
    (memos,) = store.memos.values()
    assert len(memos) == 5


def test_the_person_cap_spans_attributes_and_beyond_it_stand_ins_are_reported(keyring: Keyring) -> None:
    """Cap 7 at eps_inf 1: the first event spends 5 (one memo per attribute), two more new values fit,
    later new values get stand-ins - the attribute is still present - and the ledger never passes 7."""
    cats = ["books", "music", "toys", "shoes", "garden", "books"]
    records = protected_records([_event(i, category=c) for i, c in enumerate(cats)], keyring)
    store = MemoryMemoStore()
    priv = make_privatizer(store=store, budget=7.0)
    res = priv.process(records)
    assert res.suppressed["category"] == 2  # shoes, garden
    assert res.reported["category"] == 6  # every event reports every attribute
    assert res.epsilon_spent["category"] == 3.0
    (spent,) = store.ledgers.values()
    assert spent == 7_000_000  # micro-epsilon: one ledger for the person, at the cap
    feats = [orjson.loads(r)["features"] for r in res.reports]
    assert all(set(f) == {"event_type", "category", "price", "device", "country"} for f in feats)
    res2 = priv.process(protected_records([_event(9, category="tools", device="tablet")], keyring))
    assert res2.suppressed == {"category": 1, "device": 1} and not res2.epsilon_spent
    assert set(orjson.loads(res2.reports[0])["features"]) == {"event_type", "category", "price", "device", "country"}


def test_stand_ins_carry_no_information_about_the_value(keyring: Keyring) -> None:
    """Over the cap, the report of a person's device is the same law whatever the device is."""
    n = 3000
    dist = {}
    for device in ("desktop", "tablet"):
        priv = make_privatizer(budget=0.5, seed=7)  # below any memo's price: every report is a stand-in
        events = [_event(i, user_id=f"u{i}", device=device) for i in range(n)]
        res = priv.process(protected_records(events, keyring))
        assert res.suppressed["device"] == n and not res.epsilon_spent
        dist[device] = np.bincount([orjson.loads(r)["features"]["device"]["r"] for r in res.reports], minlength=5) / n
    assert np.allclose(dist["desktop"], 0.2, atol=0.035) and np.allclose(dist["tablet"], 0.2, atol=0.035)


def test_each_person_has_their_own_ledger_and_memos(keyring: Keyring) -> None:
    store = MemoryMemoStore()
    priv = make_privatizer(budget=5.0, store=store)
    recs = protected_records([_event(0, user_id="u1", category="books"), _event(1, user_id="u2", category="music")],
                             keyring)
    res = priv.process(recs)
    assert res.reported["category"] == 2 and not res.suppressed
    assert sorted(store.ledgers.values()) == [5_000_000, 5_000_000]
    assert all(re.fullmatch(r"[0-9a-f]{32}", lid) for lid in store.ledgers)  # ids hold no token


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


def test_perturbation_uses_the_configured_epsilons(keyring: Keyring) -> None:
    """Many people with the same true device: the share of truthful reports is GRR's p at eps_1."""
    eps, n = 1.0, 4000
    events = [_event(i, user_id=f"user-{i}", device="desktop") for i in range(n)]
    res = make_privatizer(epsilon=eps, seed=5).process(protected_records(events, keyring))
    policy = LdpPolicy.from_schema(load_schema("clickstream-event.v1"), eps)
    dev = policy.by_name["device"]
    truthful = sum(orjson.loads(r)["features"]["device"]["r"] == dev.index_of("desktop") for r in res.reports)
    e1 = np.exp(dev.epsilon_1)
    p = e1 / (e1 + dev.k - 1)
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
