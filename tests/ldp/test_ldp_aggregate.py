"""Windowed frequency estimation: unbiased, honest error bars, exact merges, window closing."""

from __future__ import annotations

import time
from collections import Counter

import numpy as np
import pytest

from stream.crypto.keyring import Keyring
from stream.ldp.aggregate import WindowAggregator, estimate_record, latest_per_source, merge_records
from stream.ldp.policy import NONE_VALUE, LdpPolicy
from stream.ldp.privatizer import AttributeReport, ProtectedRecord
from stream.schema import load_schema, output_validator
from stream.synth import ClickstreamGenerator
from tests.support.clock import Clock
from tests.support.ldp import make_privatizer, protect

POLICY = LdpPolicy.from_schema(load_schema("clickstream-event.v1"), 2.0)




@pytest.fixture(scope="module")
def run() -> tuple[list[dict], list[AttributeReport]]:
    """12,000 synthetic events privatized at eps=2, each by a different person: the closed-form
    variance is the one of independent reports (memoized repeats of one person are identical,
    not independent - see the README, "Error bars")."""
    events = list(ClickstreamGenerator(seed=11, n_users=5000).events(12_000))
    for i, ev in enumerate(events):
        ev["user_id"] = f"person-{i}"
    keyring = Keyring.generate()
    now_ms = int(time.time() * 1000)
    priv = make_privatizer(epsilon=2.0, budget=1000.0, seed=3)
    res = priv.process([ProtectedRecord(v, now_ms) for _k, v in protect(events, keyring)])
    return events, res.attribute_reports


def test_estimates_cover_the_truth_and_validate(run: tuple[list[dict], list[AttributeReport]]) -> None:
    events, reports = run
    clock = Clock(time.time())
    agg = WindowAggregator(POLICY, window_seconds=3600, clock=clock)
    agg.add(reports)
    recs = merge_records(POLICY, [r for w in agg.drain() for r in agg.records(w, worker="t")])
    check = output_validator("frequency-estimate.v1")
    by_attr = {r["attribute"]: r for r in recs}
    for attr in ("event_type", "device", "category", "country"):
        rec = by_attr[attr]
        assert check(rec) == [], check(rec)
        assert rec["n"] == len(events)
        a = POLICY.by_name[attr]
        truth = Counter(e.get(attr) if e.get(attr) is None or e.get(attr) in a.domain else a.out_of_domain
                        for e in events)
        z = []
        for v in rec["values"]:
            true_f = truth.get(None if v["value"] == NONE_VALUE else v["value"], 0) / len(events)
            z.append((v["estimate"] - true_f) / v["std_error"])
        z_arr = np.asarray(z)
        # honest error bars: standardized errors look standard normal
        assert np.mean(np.abs(z_arr) < 2.5) > 0.9, (attr, z_arr)
        assert np.all(np.abs(z_arr) < 5), (attr, z_arr)
        assert abs(sum(v["projected"] for v in rec["values"]) - 1) < 1e-5
    price = by_attr["price"]
    assert check(price) == []
    true_mean = sum(min(5000.0, e.get("price", 0.0)) for e in events) / len(events)
    assert abs(price["mean"] - true_mean) < 4 * price["std_error"]


def test_merging_windows_and_workers_is_exact(run: tuple[list[dict], list[AttributeReport]]) -> None:
    _events, reports = run
    half = len(reports) // 2
    clock = Clock(time.time())
    a, b, whole = (WindowAggregator(POLICY, window_seconds=3600, clock=clock) for _ in range(3))
    a.add(reports[:half])
    b.add(reports[half:])
    whole.add(reports)
    parts = [r for agg in (a, b) for w in agg.drain() for r in agg.records(w, worker=str(id(agg)))]
    merged = {r["attribute"]: r for r in merge_records(POLICY, parts)}
    single = {r["attribute"]: r for r in merge_records(POLICY, [r for w in whole.drain() for r in whole.records(w)])}
    for attr, rec in single.items():
        assert merged[attr]["n"] == rec["n"]
        if rec["kind"] == "categorical":
            assert merged[attr]["support"] == rec["support"]
            assert merged[attr]["values"] == rec["values"]
        else:
            assert merged[attr]["mean"] == pytest.approx(rec["mean"])


def test_windows_close_on_the_watermark_and_when_idle() -> None:
    clock = Clock(1_000_000.0)
    agg = WindowAggregator(POLICY, window_seconds=60, grace_seconds=5, idle_seconds=10, clock=clock)
    t0 = 1_000_000 * 1000 - (1_000_000 * 1000) % 60_000
    agg.add([AttributeReport(t0 + 1000, "device", 1, 1), AttributeReport(t0 + 2000, "device", 2, 2)])
    assert agg.due() == []
    agg.add([AttributeReport(t0 + 66_000, "device", 0, 3)])  # watermark past end + grace
    (closed,) = agg.due()
    assert closed.start_ms == t0 and closed.accs["device"].n == 2
    # a late record of the closed window is counted, not estimated
    agg.add([AttributeReport(t0 + 3000, "device", 1, 4)])
    assert agg.late == 1
    # idle: nothing new, clock past the second window's end + grace
    clock.t = (t0 + 130_000) / 1000
    agg.last_add = clock.t - 11
    (second,) = agg.due()
    assert second.start_ms == t0 + 60_000


def test_unbiased_record_for_an_empty_window_has_no_values() -> None:
    attr = POLICY.by_name["device"]
    rec = estimate_record(attr, n=0, support=None, total=None, start_ms=0, end_ms=60_000)
    assert rec["values"] == [] and output_validator("frequency-estimate.v1")(rec) == []


def test_a_window_of_too_few_people_is_withheld() -> None:
    """Nothing is published about one or two people's events: a window needs min_people distinct people."""
    agg = WindowAggregator(POLICY, window_seconds=60, clock=Clock(0.0), min_people=3, estimand="e")
    t0 = 60_000 * 100
    agg.add([AttributeReport(t0 + i, "device", 1, person) for i, person in enumerate([7, 7, 7, 8])])
    (win,) = agg.drain()
    assert win.n_people == 2 and agg.records(win) == [] and agg.withheld == 1
    agg.add([AttributeReport(t0 + 60_000 + i, "device", 1, person) for i, person in enumerate([7, 8, 9])])
    (win,) = agg.drain()
    (rec,) = agg.records(win)
    assert rec["n"] == 3 and rec["estimand"] == "e"
    restored = WindowAggregator(POLICY, window_seconds=60, clock=Clock(0.0), min_people=3)
    agg.add([AttributeReport(t0 + 120_000, "device", 1, p) for p in (4, 5, 6)])
    restored.restore(agg.state())
    restored.add([AttributeReport(t0 + 120_002, "device", 1, 9)])
    (win,) = restored.drain()
    assert win.n_people == 3 and len(restored.records(win)) == 1  # the count of people survives a restore


def test_people_who_report_again_after_a_restore_are_not_counted_twice() -> None:
    """Who reported before a restore is not persisted (only how many), and whoever reports after it may be
    one of them: five people before and the same five after are five, not ten - the window is withheld."""
    t0 = 60_000 * 100
    before = WindowAggregator(POLICY, window_seconds=60, clock=Clock(0.0), min_people=10)
    before.add([AttributeReport(t0 + i, "device", 1, p) for i, p in enumerate(range(5))])
    after = WindowAggregator(POLICY, window_seconds=60, clock=Clock(0.0), min_people=10)
    after.restore(before.state())
    after.add([AttributeReport(t0 + 10 + i, "device", 1, p) for i, p in enumerate(range(5))])
    (win,) = after.drain()
    assert win.n_people == 5 and after.records(win) == [] and after.withheld == 1
    # ten people after the restore are enough on their own
    again = WindowAggregator(POLICY, window_seconds=60, clock=Clock(0.0), min_people=10)
    again.restore(before.state())
    again.add([AttributeReport(t0 + 10 + i, "device", 1, p) for i, p in enumerate(range(10))])
    (win,) = again.drain()
    assert win.n_people == 10 and len(again.records(win)) == 1


def test_a_noise_free_support_gives_back_the_truth_exactly() -> None:
    """Known answer: with each value's support at its expectation under the mechanism's law,
    E[c_v] = n (q + (p - q) f_v) (the samplers are held to that law in test_ldp_mechanisms), the
    published estimate is f itself - any relative bias (frequencies a few % high) shows at once."""
    n = 10**9
    for attr in POLICY.attributes:
        if attr.oracle is None:
            continue
        rng = np.random.default_rng(len(attr.name))
        f = rng.dirichlet(np.ones(attr.k))
        o = attr.oracle
        support = np.rint(n * (o.q + (o.p - o.q) * f)).astype(np.int64)
        rec = estimate_record(attr, n=n, support=support, total=None, start_ms=0, end_ms=3_600_000)
        est = np.array([v["estimate"] for v in rec["values"]])
        assert np.allclose(est, f, atol=2e-6), (attr.name, est - f)


def test_latest_per_source_replaces_a_republished_window_and_keeps_other_sources() -> None:
    """What `streamgate estimates` adds up: a window published again for the same input partition
    replaces the earlier record, whichever process wrote it; the same window from another partition is
    another source. Records without ``source`` (older privatizers) are told apart by ``worker``."""
    def rec(worker: str, n: int, start: int = 0, source: str | None = None) -> dict:
        r = {"worker": worker, "attribute": "device", "window": {"start_ms": start}, "n": n}
        return r if source is None else {**r, "source": source}

    got = latest_per_source([rec("h-1/p0", 5), rec("h-1/p1", 7), rec("h-1/p0", 6), rec("h-2/p0", 3),
                             rec("h-1/p0", 4, start=60_000), {"worker": "h-1/p0", "attribute": "device"}])
    assert [(r["worker"], r["n"]) for r in got] == [("h-1/p0", 6), ("h-1/p1", 7), ("h-2/p0", 3), ("h-1/p0", 4)]
    got = latest_per_source([rec("h-1/p0", 5, source="g/t/0"), rec("h-1/p1", 7, source="g/t/1"),
                             rec("h-2/p0", 6, source="g/t/0")])  # h-1 crashed, h-2 published p0's window again
    assert [(r["worker"], r["n"]) for r in got] == [("h-2/p0", 6), ("h-1/p1", 7)]
