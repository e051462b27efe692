"""Tests for the synthetic clickstream generator (stream.synth)."""

from __future__ import annotations

import collections
import ipaddress
import itertools
import json
import math
import re
import statistics
import uuid
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import fastjsonschema
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from jsonschema import Draft202012Validator

from stream import synth
from stream.synth import (
    CATEGORIES,
    CATEGORY_EFFECT,
    COUNTRIES,
    COUNTRY_DOMAIN,
    COUNTRY_EFFECT,
    COUNTRY_OTHER,
    DEVICE_EFFECT,
    DEVICES,
    EVENT_TYPES,
    EXTRA_COUNTRIES,
    ClickstreamGenerator,
    GroundTruth,
    generate,
    purchase_logit,
)

SCHEMA_PATH = Path(__file__).resolve().parent.parent / "schemas" / "clickstream-event.v1.json"
SCHEMA: dict[str, Any] = json.loads(SCHEMA_PATH.read_text(encoding="utf-8"))
PROPS: dict[str, Any] = SCHEMA["properties"]
VALIDATOR = Draft202012Validator(SCHEMA, format_checker=Draft202012Validator.FORMAT_CHECKER)
# the gateway's engine; it checks date-time/email/ipv4/ipv6 itself, uuid needs a pattern
FAST = fastjsonschema.compile(
    SCHEMA,
    formats={"uuid": r"^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}\Z"},
)
# jsonschema only checks "date-time" when rfc3339-validator is installed: check it here ourselves
RFC3339_UTC = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d{1,9})?(Z|\+00:00)$")
PAGE = re.compile(PROPS["page"]["pattern"])

PRICED = {"product_view", "add_to_cart", "remove_from_cart", "purchase"}
WITH_QUANTITY = {"add_to_cart", "remove_from_cart", "purchase"}
AT_CHECKOUT = {"checkout", "purchase"}


@pytest.fixture(scope="module")
def sample() -> tuple[list[dict[str, Any]], GroundTruth]:
    return generate(20_000, seed=1234)


def parse_ts(ts: str) -> datetime:
    assert RFC3339_UTC.match(ts), ts
    dt = datetime.fromisoformat(ts.replace("Z", "+00:00"))
    assert dt.utcoffset() == timedelta(0)
    return dt


def recount(events: list[dict[str, Any]]) -> GroundTruth:
    t = GroundTruth()
    seen: set[str] = set()
    purchasing: set[str] = set()
    for e in events:
        t.n_events += 1
        t.event_type[e["event_type"]] += 1
        t.device[e["device"]] += 1
        t.country[e["country"]] += 1
        if "category" in e:
            t.category[e["category"]] += 1
        if "price" in e:
            t.price_count += 1
            t.price_cents += round(e["price"] * 100)
        seen.add(e["session_id"])
        if e["event_type"] == "purchase":
            purchasing.add(e["session_id"])
    t.sessions = len(seen)
    t.purchasing_sessions = len(purchasing)
    return t


def assert_truth_matches(truth: GroundTruth, events: list[dict[str, Any]]) -> None:
    r = recount(events)
    assert truth.n_events == r.n_events == len(events)
    assert truth.event_type == r.event_type
    assert truth.category == r.category
    assert truth.device == r.device
    assert truth.country == r.country
    assert truth.price_count == r.price_count
    assert truth.price_cents == r.price_cents
    assert truth.price_sum == pytest.approx(math.fsum(e["price"] for e in events if "price" in e), rel=1e-12)
    assert truth.sessions == r.sessions
    assert truth.purchasing_sessions == r.purchasing_sessions


# -- constants ---------------------------------------------------------------------------------------


def test_domains_are_read_from_the_schema() -> None:
    assert tuple(PROPS["event_type"]["enum"]) == EVENT_TYPES
    assert tuple(PROPS["category"]["x-privacy"]["domain"]) == CATEGORIES and "enum" not in PROPS["category"]
    assert tuple(PROPS["device"]["enum"]) == DEVICES
    domain = PROPS["country"]["x-privacy"]["domain"]
    assert COUNTRY_OTHER == "other" and COUNTRY_OTHER not in COUNTRIES
    assert tuple(c for c in domain if c != "other") == COUNTRIES
    assert tuple(domain) == COUNTRY_DOMAIN
    assert not set(EXTRA_COUNTRIES) & set(domain)
    assert all(re.fullmatch(PROPS["country"]["pattern"], c) for c in EXTRA_COUNTRIES)


def test_propensity_tables_cover_exactly_the_schema_domains() -> None:
    assert set(DEVICE_EFFECT) == set(DEVICES)
    assert set(CATEGORY_EFFECT) == set(CATEGORIES)
    assert set(COUNTRY_EFFECT) == set(COUNTRY_DOMAIN)
    # out-of-domain countries get the "other" effect
    assert purchase_logit("desktop", "LU", "books", 14.0) == purchase_logit("desktop", "other", "books", 14.0)
    # pricier than usual for the category -> lower propensity
    assert purchase_logit("mobile", "US", "phones", 900.0) < purchase_logit("mobile", "US", "phones", 300.0)


# -- schema validity ---------------------------------------------------------------------------------


def test_validator_checks_formats_and_unknown_properties(
    sample: tuple[list[dict[str, Any]], GroundTruth],
) -> None:
    """Guard against a vacuous validity test: the validator used below does reject bad events."""
    good = dict(sample[0][0])
    assert VALIDATOR.is_valid(good)
    for key, bad in [
        ("event_id", "not-a-uuid"),
        ("ip", "999.1.1.1"),
        ("email", "no-at-sign"),
        ("page", "/with space"),
        ("unknown_field", 1),
        ("device", "fridge"),
    ]:
        assert not VALIDATOR.is_valid({**good, key: bad}), key


def test_every_event_validates_against_the_schema(sample: tuple[list[dict[str, Any]], GroundTruth]) -> None:
    events = sample[0][:5_000]
    allowed = set(PROPS)
    required = set(SCHEMA["required"])
    for e in events:
        errors = [err.message for err in VALIDATOR.iter_errors(e)]
        assert not errors, (e, errors)
        FAST(e)  # the gateway's engine agrees
        assert set(e) <= allowed, set(e) - allowed
        assert required <= set(e)
        parse_ts(e["ts"])
        json.dumps(e, allow_nan=False)  # plain JSON values only


def test_field_shapes(sample: tuple[list[dict[str, Any]], GroundTruth]) -> None:
    events = sample[0]
    ip_kinds: collections.Counter[str] = collections.Counter()
    emails_null = emails_absent = referrers = 0
    for e in events:
        et = e["event_type"]
        assert PAGE.match(e["page"]) and "?" not in e["page"] and "#" not in e["page"]
        assert ("price" in e) == ("currency" in e) == ("product_id" in e) == (et in PRICED)
        assert ("quantity" in e) == (et in WITH_QUANTITY)
        if "quantity" in e:
            assert 1 <= e["quantity"] <= 5
        if "price" in e:
            assert 0 < e["price"] <= 100_000
            assert round(e["price"] * 100) / 100 == e["price"]  # cents
            assert e["product_id"].startswith(f"P-{e['category']}-")
        if et in {"product_view", "add_to_cart"}:
            assert e["page"] == f"/p/{e['product_id']}"
        if "shipping_address" in e or "phone" in e:
            assert et in AT_CHECKOUT
        if et in AT_CHECKOUT:
            assert "shipping_address" in e
        if e.get("email") is not None:
            assert re.fullmatch(r"[a-z]+\.[a-z]+\d+@example\.com", e["email"]), e["email"]
        emails_null += "email" in e and e["email"] is None
        emails_absent += "email" not in e
        if e.get("ip") is None:
            ip_kinds["none"] += 1
        else:
            ip_kinds[f"v{ipaddress.ip_address(e['ip']).version}"] += 1
        if "referrer" in e:
            referrers += 1
            assert re.match(r"^https?://[^\s/]+/", e["referrer"]), e["referrer"]
    assert ip_kinds["v4"] > ip_kinds["v6"] > ip_kinds["none"] > 0
    assert emails_null > 0 and emails_absent > 0
    assert 0 < referrers < len(events) / 2
    countries = {e["country"] for e in events}
    assert countries & set(EXTRA_COUNTRIES), "some users come from outside the LDP country domain"
    assert collections.Counter(e["country"] for e in events).most_common(1)[0][0] == "US"


def test_user_attributes_are_stable_and_sessions_interleave(
    sample: tuple[list[dict[str, Any]], GroundTruth],
) -> None:
    events = sample[0]
    per_user: dict[str, dict[str, Any]] = {}
    per_session: dict[str, tuple[str, str]] = {}
    for e in events:
        attrs: dict[str, Any] = {k: e[k] for k in ("country", "ip") if k in e}
        assert per_user.setdefault(e["user_id"], attrs) == attrs
        key = (e["user_id"], e["device"])
        assert per_session.setdefault(e["session_id"], key) == key
    assert len(per_user) > 500
    head = events[:300]
    switches = sum(a["session_id"] != b["session_id"] for a, b in itertools.pairwise(head))
    assert switches > 0.8 * len(head)
    assert len({e["session_id"] for e in head}) > 30
    # one open session per user at a time: a user's sessions do not overlap
    spans: dict[str, list[int]] = {}
    for i, e in enumerate(events):
        spans.setdefault(e["session_id"], [i, i])[1] = i
    by_user: dict[str, list[tuple[int, int]]] = collections.defaultdict(list)
    for sid, (a, b) in spans.items():
        by_user[per_session[sid][0]].append((a, b))
    for intervals in by_user.values():
        intervals.sort()
        assert all(prev[1] < nxt[0] for prev, nxt in itertools.pairwise(intervals))


def test_event_ids_are_unique_uuid4(sample: tuple[list[dict[str, Any]], GroundTruth]) -> None:
    ids = [e["event_id"] for e in sample[0]]
    assert len(set(ids)) == len(ids)
    for s in ids[:2000]:
        u = uuid.UUID(s)
        assert str(u) == s and u.version == 4 and u.variant == uuid.RFC_4122


def test_event_id_is_uuid4_of_the_rng_bits() -> None:
    """event_id == str(uuid.UUID(int=bits, version=4)) for the generator's random bits."""
    for bits in (0, (1 << 128) - 1, 0x0123456789ABCDEF0123456789ABCDEF, 12345):
        b = bits & synth._UUID_MASK | synth._UUID_V4
        h = f"{b:032x}"
        assert f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}" == str(uuid.UUID(int=bits, version=4))


# -- time ---------------------------------------------------------------------------------------------


def test_ts_monotonic_at_about_the_configured_rate(sample: tuple[list[dict[str, Any]], GroundTruth]) -> None:
    events = sample[0]
    times = [parse_ts(e["ts"]) for e in events]
    assert all(a <= b for a, b in itertools.pairwise(times))
    assert times[0] >= synth.DEFAULT_START and times[0] - synth.DEFAULT_START < timedelta(seconds=1)
    span = (times[-1] - times[0]).total_seconds()
    assert span == pytest.approx(len(events) / 50.0, rel=0.05)


def test_start_and_rate_parameters() -> None:
    start = datetime(2025, 3, 30, 0, 59, 59, tzinfo=timezone(timedelta(hours=2)))
    events = list(ClickstreamGenerator(3, start=start, events_per_second=1000.0).events(5000))
    times = [parse_ts(e["ts"]) for e in events]
    assert all(a <= b for a, b in itertools.pairwise(times))
    assert times[0] >= start
    assert (times[-1] - times[0]).total_seconds() == pytest.approx(5.0, rel=0.1)
    with pytest.raises(ValueError):
        ClickstreamGenerator(start=datetime(2024, 1, 1))  # naive
    with pytest.raises(ValueError):
        ClickstreamGenerator(events_per_second=0)
    with pytest.raises(ValueError):
        ClickstreamGenerator(n_users=0)
    with pytest.raises(ValueError):
        list(ClickstreamGenerator().events(-1))


# -- determinism ------------------------------------------------------------------------------------


def test_same_seed_same_events_different_seed_different_events() -> None:
    a, ta = generate(3000, seed=42)
    b, tb = generate(3000, seed=42)
    c, _ = generate(3000, seed=43)
    assert a == b
    assert json.dumps(a) == json.dumps(b)  # same key order too
    assert ta == tb
    assert a != c
    assert not {e["event_id"] for e in a} & {e["event_id"] for e in c}
    assert [e["user_id"] for e in a[:50]] != [e["user_id"] for e in c[:50]]


def test_default_start_is_fixed() -> None:
    a = next(iter(ClickstreamGenerator(9).events(1)))
    b = next(iter(ClickstreamGenerator(9).events(1)))
    assert a["ts"] == b["ts"] and a["ts"].startswith("2024-01-01T00:00:")


def test_stream_continues_across_calls() -> None:
    whole, truth = generate(5000, seed=8)
    g = ClickstreamGenerator(8)
    parts = list(g.events(1234)) + list(g.events(0)) + list(g.events(3766))
    assert parts == whole
    assert g.truth == truth


# -- ground truth -----------------------------------------------------------------------------------


def test_truth_equals_recount(sample: tuple[list[dict[str, Any]], GroundTruth]) -> None:
    events, truth = sample
    assert_truth_matches(truth, events)
    assert truth.price_mean == pytest.approx(statistics.fmean(e["price"] for e in events if "price" in e))
    assert 0 < truth.purchasing_sessions < truth.sessions


def test_truth_covers_exactly_the_yielded_events() -> None:
    g = ClickstreamGenerator(5)
    got: list[dict[str, Any]] = []
    for e in g.events(2000):
        got.append(e)
        if len(got) in (1, 7, 500, 1999):
            assert_truth_matches(g.truth, got)
    assert_truth_matches(g.truth, got)
    # an abandoned iterator leaves the truth at what was yielded
    it = g.events(1000)
    got += [next(it) for _ in range(10)]
    del it
    assert_truth_matches(g.truth, got)


def test_frequencies_over_the_domain(sample: tuple[list[dict[str, Any]], GroundTruth]) -> None:
    events, truth = sample
    for attr in GroundTruth.ATTRIBUTES:
        f = truth.frequencies(attr)
        assert tuple(f) == GroundTruth.domain(attr)
        assert math.fsum(f.values()) == pytest.approx(1.0, abs=1e-12)
        assert all(v >= 0 for v in f.values())
        counts = truth.domain_counts(attr)
        assert sum(counts.values()) == sum(getattr(truth, attr).values())
    carrying = [e for e in events if "category" in e]
    assert truth.frequencies("category")["books"] == sum(e["category"] == "books" for e in carrying) / len(
        carrying
    )
    outside = sum(e["country"] not in COUNTRIES for e in events)
    assert 0 < outside < 0.1 * len(events)
    assert truth.frequencies("country")["other"] == outside / len(events)
    assert truth.frequencies("device")["desktop"] == sum(e["device"] == "desktop" for e in events) / len(
        events
    )
    # unseen values are present with 0.0
    few = generate(3, seed=1)[1]
    fc = few.frequencies("category")
    assert set(fc) == set(CATEGORIES) and list(fc.values()).count(0.0) >= len(CATEGORIES) - 3
    assert GroundTruth().frequencies("device") == dict.fromkeys(DEVICES, 0.0)
    assert math.isnan(GroundTruth().price_mean)
    with pytest.raises(ValueError):
        truth.frequencies("price")


def test_snapshot_is_independent() -> None:
    g = ClickstreamGenerator(2)
    list(g.events(100))
    snap = g.truth.snapshot()
    assert snap == g.truth
    list(g.events(100))
    assert snap.n_events == 100 and g.truth.n_events == 200
    assert sum(snap.event_type.values()) == 100


# -- shape of the stream ----------------------------------------------------------------------------


def test_funnel_shape(sample: tuple[list[dict[str, Any]], GroundTruth]) -> None:
    c = collections.Counter(e["event_type"] for e in sample[0])
    assert c["page_view"] > c["product_view"] > c["add_to_cart"] > c["checkout"] > c["purchase"] > 0
    assert c["search"] > 0 and 0 < c["remove_from_cart"] < c["add_to_cart"]
    # stage conversion at the session level is in the intended ranges
    by_session: dict[str, set[str]] = collections.defaultdict(set)
    for e in sample[0]:
        by_session[e["session_id"]].add(e["event_type"])
    viewers = sum("product_view" in s for s in by_session.values())
    carts = sum("add_to_cart" in s for s in by_session.values())
    checkouts = sum("checkout" in s for s in by_session.values())
    buyers = sum("purchase" in s for s in by_session.values())
    assert 0.25 < carts / viewers < 0.5
    assert 0.3 < checkouts / carts < 0.6
    assert 0.55 < buyers / checkouts < 0.85


def test_categories_and_products_are_zipf_like(sample: tuple[list[dict[str, Any]], GroundTruth]) -> None:
    counts = collections.Counter(e["category"] for e in sample[0] if "category" in e)
    assert set(counts) == set(CATEGORIES)  # every schema category occurs
    ranked = [n for _, n in counts.most_common()]
    assert ranked[0] > 8 * statistics.median(ranked)
    assert counts.most_common(1)[0][0] == CATEGORIES[0]
    # heavy head: the top 3 categories carry more than the bottom 20
    assert sum(ranked[:3]) > sum(ranked[-20:])
    top_cat = CATEGORIES[0]
    products = collections.Counter(
        e["product_id"] for e in sample[0] if e["event_type"] == "product_view" and e["category"] == top_cat
    )
    pr = [n for _, n in products.most_common()]
    assert pr[0] > 5 * statistics.median(pr)
    assert products.most_common(1)[0][0] == f"P-{top_cat}-0000"


def test_prices_are_stable_per_product_and_lognormal_per_category(
    sample: tuple[list[dict[str, Any]], GroundTruth],
) -> None:
    price_of: dict[str, float] = {}
    for e in sample[0]:
        if "price" in e:
            assert price_of.setdefault(e["product_id"], e["price"]) == e["price"]
    by_cat: dict[str, list[float]] = collections.defaultdict(list)
    for pid, price in price_of.items():
        by_cat[pid.rsplit("-", 1)[0][2:]].append(math.log(price))
    # computers are far pricier than books; log-prices spread like a log-normal (sd ~0.75)
    assert statistics.median(by_cat["computers"]) > statistics.median(by_cat["books"]) + 3
    assert 0.5 < statistics.stdev(by_cat["electronics"]) < 1.0


def test_currency_mostly_follows_the_country(sample: tuple[list[dict[str, Any]], GroundTruth]) -> None:
    priced = [e for e in sample[0] if "currency" in e and e["country"] in {"GB", "JP", "US"}]
    local = {"GB": "GBP", "JP": "JPY", "US": "USD"}
    share = sum(e["currency"] == local[e["country"]] for e in priced) / len(priced)
    assert 0.8 < share < 1.0


# -- labels and learnability ------------------------------------------------------------------------


def test_session_label_agrees_with_purchase_events() -> None:
    g = ClickstreamGenerator(77)
    events = list(g.events(30_000))
    by_session: dict[str, list[dict[str, Any]]] = collections.defaultdict(list)
    for e in events:
        by_session[e["session_id"]].append(e)
    # sessions that start in the first half are closed long before the end (64 open sessions of ~8 events)
    first_half = {e["session_id"] for e in events[:15_000]}
    labels: collections.Counter[bool] = collections.Counter()
    for sid, evs in by_session.items():
        has_purchase = any(e["event_type"] == "purchase" for e in evs)
        label = g.session_label(sid)
        if has_purchase:
            assert label is True
        if sid in first_half:
            assert label is has_purchase, sid
            labels[label] += 1
            if label:  # the session ended in its purchase events
                assert evs[-1]["event_type"] == "purchase"
                first = next(i for i, e in enumerate(evs) if e["event_type"] == "purchase")
                assert all(e["event_type"] == "purchase" for e in evs[first:])
    assert labels[True] > 100 and labels[False] > 5 * labels[True] / 2
    with pytest.raises(KeyError):
        g.session_label("no-such-session")


def test_purchase_propensity_depends_on_features_learnably() -> None:
    g = ClickstreamGenerator(11)
    events = list(g.events(100_000))
    views: dict[str, list[float]] = collections.defaultdict(list)
    for e in events[:80_000]:
        if e["event_type"] == "product_view":
            views[e["session_id"]].append(
                purchase_logit(e["device"], e["country"], e["category"], e["price"])
            )
    scored = sorted((statistics.fmean(xs), g.session_label(sid)) for sid, xs in views.items())
    q = len(scored) // 4
    low = statistics.fmean(lbl for _, lbl in scored[:q])
    high = statistics.fmean(lbl for _, lbl in scored[-q:])
    assert high > 2.5 * low  # clearly learnable ...
    assert high < 0.6  # ... but far from deterministic
    # each feature matters on its own
    rate = collections.defaultdict(list)
    for e in events[:80_000]:
        if e["event_type"] == "page_view" and e["session_id"] in views:
            rate[e["device"]].append(g.session_label(e["session_id"]))
    assert statistics.fmean(rate["desktop"]) > statistics.fmean(rate["mobile"])
    # add-to-cart right after a product view: cheaper-than-usual products (for their category)
    # and high-propensity categories convert more
    by_session: dict[str, list[dict[str, Any]]] = collections.defaultdict(list)
    for e in events:
        by_session[e["session_id"]].append(e)
    carted: dict[str, list[tuple[float, bool]]] = collections.defaultdict(list)
    for evs in by_session.values():
        for cur, nxt in itertools.pairwise(evs):
            if cur["event_type"] == "product_view":
                added = nxt["event_type"] == "add_to_cart" and nxt["product_id"] == cur["product_id"]
                carted[cur["category"]].append((cur["price"], added))
    cheap, dear = [], []
    for rows in carted.values():
        if len(rows) < 50:
            continue
        median = statistics.median(p for p, _ in rows)
        cheap += [a for p, a in rows if p < median]
        dear += [a for p, a in rows if p > median]
    assert statistics.fmean(cheap) > 1.2 * statistics.fmean(dear)
    top = sorted(CATEGORIES, key=CATEGORY_EFFECT.__getitem__)
    good = [a for c in top[-8:] for _, a in carted[c]]
    bad = [a for c in top[:8] for _, a in carted[c]]
    assert statistics.fmean(good) > 1.2 * statistics.fmean(bad)


# -- robustness --------------------------------------------------------------------------------------


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    seed=st.integers(min_value=-(2**63), max_value=2**63),
    n=st.integers(min_value=0, max_value=400),
    n_users=st.integers(min_value=1, max_value=80),
    concurrent=st.integers(min_value=1, max_value=100),
    rate=st.floats(min_value=0.01, max_value=1e6),
)
def test_any_parameters_give_valid_events_and_exact_truth(
    seed: int, n: int, n_users: int, concurrent: int, rate: float
) -> None:
    g = ClickstreamGenerator(seed, n_users=n_users, events_per_second=rate, concurrent_sessions=concurrent)
    events = list(g.events(n))
    assert len(events) == n
    for e in events:
        FAST(e)
        parse_ts(e["ts"])
    assert [e["ts"] for e in events] == sorted(e["ts"] for e in events)
    assert len({e["user_id"] for e in events}) <= n_users
    assert_truth_matches(g.truth, events)


def test_generate_returns_list_and_truth() -> None:
    events, truth = generate(0)
    assert events == [] and truth == GroundTruth()
    events, truth = generate(10, seed=3, n_users=2)
    assert len(events) == 10 and truth.n_events == 10
    assert len({e["user_id"] for e in events}) <= 2


def test_schema_loaded_from_package_data() -> None:
    assert synth.SCHEMA == SCHEMA
