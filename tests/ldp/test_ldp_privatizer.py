"""The privatizer's pure core: fresh noise per report, the ledger and the cap, shuffling, report contents
(invariant 4, and 1 for features)."""

from __future__ import annotations

import re
import time

import numpy as np
import orjson
import pytest

from stream.crypto.keyring import Keyring
from stream.errors import SchemaPolicyError
from stream.ldp.ledger import MemoryLedgerStore
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
    # an open catalog: its 30 listed values, _other (values outside them) and _none (absent)
    assert cat.domain[-2:] == ("_other", NONE_VALUE) and cat.optional and cat.k == 32
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


def test_a_domain_narrower_than_the_schema_is_refused() -> None:
    """Values the schema admits but the domain does not list would go unreported and cost less, so "each
    person's first c events" would not be the population the estimates name: refused, unless they map."""
    doc = schema_document("clickstream-event.v1")
    doc["properties"]["device"]["x-privacy"] = {"policy": "ldp", "domain": ["desktop", "mobile"]}  # enum has 4
    with pytest.raises(SchemaPolicyError, match="admits values outside its domain"):
        LdpPolicy.from_schema(EventSchema("patched", doc), 1.0)
    del doc["properties"]["device"]["enum"]  # any string
    doc["properties"]["device"]["x-privacy"]["domain"] = ["desktop", "mobile", "tablet", "other"]
    with pytest.raises(SchemaPolicyError, match="admits values outside its domain"):
        LdpPolicy.from_schema(EventSchema("patched", doc), 1.0)
    doc["properties"]["device"]["x-privacy"]["out_of_domain"] = "other"
    device = LdpPolicy.from_schema(EventSchema("patched", doc), 1.0).by_name["device"]
    assert device.index_of("tv") == device.index_of("other")


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
    priv = make_privatizer(budget=10_000.0)
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


def test_every_report_draws_fresh_noise_and_is_charged(keyring: Keyring) -> None:
    """1,000 reports of the same values by one person: each is charged (2.5 = 5 x 0.5) to the person's one
    ledger, and each attribute's reports follow the one-round law at eps_1 independently - the share of
    truthful GRR reports is p, and the OUE bit of the true value is set half the time, another bit with
    probability q (a shared permanent response would pin them near 0 or 1 for this person)."""
    store = MemoryLedgerStore()
    priv = make_privatizer(store=store, budget=10_000.0, seed=4)
    res = priv.process(protected_records([_event(i) for i in range(1000)], keyring))
    assert len(res.reports) == 1000 and res.memo_hits == 0
    assert res.epsilon_spent == {a: 500.0 for a in ("event_type", "category", "price", "device", "country")}
    (spent,) = store.ledgers.values()
    assert spent == 2500 * 1_000_000
    policy = priv.policy
    feats = [orjson.loads(r)["features"] for r in res.reports]
    dev = policy.by_name["device"]
    truthful = np.mean([f["device"]["r"] == dev.index_of("mobile") for f in feats])
    assert abs(truthful - dev.oracle.p) < 4 * np.sqrt(dev.oracle.p * (1 - dev.oracle.p) / 1000)
    cat = policy.by_name["category"]
    bits = np.array([[(f["category"]["r"] >> j) & 1 for j in range(cat.k)] for f in feats])
    true_j = cat.index_of("books")
    assert abs(bits[:, true_j].mean() - 0.5) < 4 * np.sqrt(0.25 / 1000)
    other = np.delete(bits, true_j, axis=1).mean(axis=0)
    q = cat.oracle.q
    assert np.all(np.abs(other - q) < 4.5 * np.sqrt(q * (1 - q) / 1000)), other
    assert len({orjson.dumps(f) for f in feats}) > 990


def test_one_ledger_across_processes(keyring: Keyring) -> None:
    records = protected_records([_event(0)], keyring)
    store, key = MemoryLedgerStore(), b"k" * 32
    make_privatizer(store=store, memo_key=key, seed=1, budget=100.0).process(records)
    make_privatizer(store=store, memo_key=key, seed=2, budget=100.0).process(records)  # a replay elsewhere
    (spent,) = store.ledgers.values()
    assert spent == 5_000_000  # charged twice: a replay is a new release, never free


def test_the_person_cap_spans_attributes_and_past_it_nothing_is_released(keyring: Keyring) -> None:
    """Cap 7 at 2.5 per report: two reports fit (5); the third and later are not released - no stand-in -
    and the ledger never passes the cap; labelled examples charge the same ledger."""
    cats = ["books", "music", "toys", "shoes", "garden", "books"]
    records = protected_records([_event(i, category=c) for i, c in enumerate(cats)], keyring)
    store = MemoryLedgerStore()
    priv = make_privatizer(store=store, budget=7.0)
    res = priv.process(records)
    assert len(res.reports) == 2 and res.over_budget == 4 and not res.suppressed
    assert res.reported["category"] == 2 and res.epsilon_spent["category"] == 1.0
    (spent,) = store.ledgers.values()
    assert spent == 5_000_000
    feats = [orjson.loads(r)["features"] for r in res.reports]
    assert all(set(f) == {"event_type", "category", "price", "device", "country"} for f in feats)
    res2 = priv.process(protected_records([_event(9, category="tools", device="tablet")], keyring))
    assert res2.reports == [] and res2.over_budget == 1 and not res2.epsilon_spent
    assert store.ledgers == {next(iter(store.ledgers)): 5_000_000}


def test_each_person_has_their_own_ledger(keyring: Keyring) -> None:
    store = MemoryLedgerStore()
    priv = make_privatizer(budget=5.0, store=store)
    recs = protected_records([_event(0, user_id="u1", category="books"), _event(1, user_id="u2", category="music")],
                             keyring)
    res = priv.process(recs)
    assert res.reported["category"] == 2 and not res.over_budget
    assert sorted(store.ledgers.values()) == [2_500_000, 2_500_000]
    assert all(re.fullmatch(r"[0-9a-f]{32}", lid) for lid in store.ledgers)  # ids hold no token


def test_report_order_does_not_follow_the_input_order(keyring: Keyring) -> None:
    """168 people, one event each, tagged by their hour of week (0..167) in input order: the output order
    is a fresh permutation per batch - no correlation with the input, and the first output is not the first
    input (a privatizer that does not shuffle returns hours 0, 1, 2, ...)."""
    events = [_event(i, user_id=f"u{i}", ts=f"2024-01-{1 + i // 24:02d}T{i % 24:02d}:10:00Z") for i in range(168)]
    records = protected_records(events, keyring)
    firsts, rhos = [], []
    for seed in range(20):
        res = make_privatizer(budget=100.0, seed=seed).process(records)
        hours = [orjson.loads(r)["hour_of_week"] for r in res.reports]
        assert sorted(hours) == list(range(168))
        firsts.append(hours[0])
        rhos.append(float(np.corrcoef(hours, np.arange(168))[0, 1]))
    assert max(abs(r) for r in rhos) < 0.3, rhos
    assert len(set(firsts)) > 10


def test_expired_epochs_are_not_reported(keyring: Keyring) -> None:
    old = int((time.time() - 40 * 86400) * 1000)  # retention is 30 days after the epoch
    res = make_privatizer().process(protected_records([_event(0)], keyring, ts_ms=old))
    assert res.reports == [] and res.skipped["retention_ended"] == 1


def test_non_protected_records_are_skipped_not_crashed(keyring: Keyring) -> None:
    good = protected_records([_event(0)], keyring)
    junk = [ProtectedRecord(b"not json", 0), ProtectedRecord(None, 0), ProtectedRecord(b'{"a": 1}', 0)]
    res = make_privatizer().process(junk + good)
    assert len(res.reports) == 1 and res.skipped["not_protected_event"] == 3


def test_perturbation_uses_the_configured_epsilons(keyring: Keyring) -> None:
    """Many people with the same true device: the share of truthful reports is GRR's p at eps_1."""
    eps, n = 1.0, 4000
    events = [_event(i, user_id=f"user-{i}", device="desktop") for i in range(n)]
    res = make_privatizer(epsilon=eps, seed=5, budget=10.0).process(protected_records(events, keyring))
    policy = LdpPolicy.from_schema(load_schema("clickstream-event.v1"), eps)
    dev = policy.by_name["device"]
    truthful = sum(orjson.loads(r)["features"]["device"]["r"] == dev.index_of("desktop") for r in res.reports)
    e1 = np.exp(dev.epsilon_1)
    p = e1 / (e1 + dev.k - 1)
    se = np.sqrt(p * (1 - p) / n)
    assert abs(truthful / n - p) < 5 * se


def test_epochs_the_shredder_may_already_have_shredded_are_not_reported(keyring: Keyring) -> None:
    """Within the shredder's lead time before the deadline nothing is reported (nor charged)."""
    now = time.time()
    epoch = int((now - 30 * 86400) // 86400)  # the oldest epoch still in retention
    deadline = (epoch + 1) * 86400 + 30 * 86400
    assert now < deadline <= now + 86400
    ts_ms = epoch * 86400 * 1000 + 500
    store = MemoryLedgerStore()
    priv = make_privatizer(store=store)
    priv.retention_margin_seconds = deadline - now + 1.0  # the deadline falls within the margin
    res = priv.process(protected_records([_event(0)], keyring, ts_ms=ts_ms))
    assert res.reports == [] and res.skipped["retention_ended"] == 1 and not store.ledgers
    priv.retention_margin_seconds = 0.0  # outside the margin the same record is reported
    assert len(priv.process(protected_records([_event(0)], keyring, ts_ms=ts_ms)).reports) == 1
    assert store.ledgers
