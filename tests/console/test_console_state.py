"""The console's state folding (pure): records of the derived topics in, the page's JSON out."""

from __future__ import annotations

from typing import Any

import orjson
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from stream.config import Settings
from stream.console.reader import Verifiers
from stream.console.state import ConsoleState, Truth, rates_between
from stream.ldp.aggregate import estimate_record, merge_records
from stream.ldp.policy import LdpPolicy
from stream.ops.metrics import WorkerMetrics
from stream.ops.worker import snapshot_record
from stream.retention.receipts import erasure_receipt, key_receipt, sign_receipt
from stream.schema import load_schema

T0 = 1_800_000_000.0


@pytest.fixture(scope="module")
def policy() -> LdpPolicy:
    s = Settings()
    return LdpPolicy.from_schema(load_schema(s.schema_name), s.ldp_epsilon)


def gateway_snap(ts: float, *, pid: int = 1, events: int, protected: int, dlq: dict[str, int],
                 ready: bool = True, reason: str | None = None) -> dict[str, Any]:
    m = WorkerMetrics("gateway")
    m.events_in(events)
    m.events_out("protected", protected)
    m.events_out("dlq", sum(dlq.values()))
    m.dead_lettered_many(dlq)
    m.set_lag(0, 7)
    snap = snapshot_record(m, "gateway")
    snap.update({"ts": ts, "pid": pid, "host": "h", "ready": ready, "reason": reason})
    return snap


def test_gateway_totals_rates_reasons_and_readiness(policy: LdpPolicy) -> None:
    st = ConsoleState(policy, live_seconds=60)
    st.add_metrics(gateway_snap(T0, events=100, protected=90, dlq={"not_json": 10}))
    st.add_metrics(gateway_snap(T0 + 10, events=1100, protected=1070, dlq={"not_json": 20, "empty": 10}))
    st.add_metrics(gateway_snap(T0 + 5, events=50, protected=50, dlq={}))  # older, re-delivered: ignored
    p = st.view(T0 + 12)["pipeline"]
    assert (p["events_in"], p["protected"], p["dead_lettered"]) == (1100, 1070, 30)
    assert p["dlq_by_reason"] == {"not_json": 20, "empty": 10}
    assert list(p["dlq_by_reason"]) == ["not_json", "empty"]  # most first
    assert p["rates"]["in"] == 100.0 and p["rates"]["protected"] == 98.0 and p["rates"]["dlq"] == 2.0
    (row,) = p["workers"]
    assert row["worker"] == "gateway" and row["lag"] == 7 and row["ready"] and row["age_s"] == 2.0


def test_instances_add_up_and_gone_ones_leave_the_rows_not_the_totals(policy: LdpPolicy) -> None:
    st = ConsoleState(policy, live_seconds=60)
    st.add_metrics(gateway_snap(T0, pid=1, events=10, protected=10, dlq={}))
    st.add_metrics(gateway_snap(T0 + 1000, pid=2, events=5, protected=4, dlq={"empty": 1},
                                ready=False, reason="no progress for 45 s with lag 3100"))
    st.add_metrics(gateway_snap(T0 + 1001, pid=3, events=7, protected=7, dlq={}))
    p = st.view(T0 + 1002)["pipeline"]
    assert p["events_in"] == 22 and [r["pid"] for r in p["workers"]] == [2, 3]  # pid 1 is long gone
    assert p["workers"][0]["reason"] == "no progress for 45 s with lag 3100"


def test_the_first_snapshot_of_an_instance_brings_its_own_rates(policy: LdpPolicy) -> None:
    st = ConsoleState(policy)
    snap = gateway_snap(T0, events=100, protected=90, dlq={"empty": 10})
    snap["rates"] = {"in": 10.0, "out": 10.0, "dlq": 1.0}
    st.add_metrics(snap)
    (point,) = st.view(T0)["pipeline"]["series"]
    assert (point["in"], point["protected"], point["dlq"]) == (10.0, 9.0, 1.0)


def test_rates_of_a_restarted_counter_are_zero() -> None:
    prev = {"ts": 10.0, "events_in": 500, "events_out": {"protected": 500}}
    cur = {"ts": 20.0, "events_in": 20, "events_out": {"protected": 20}}
    assert rates_between(prev, cur) == {"in": 0.0, "out": 0.0, "protected": 0.0, "dlq": 0.0, "features": 0.0}


def freq(policy: LdpPolicy, attr: str, start_s: float, support: list[int] | None = None, n: int = 0,
         total: float | None = None, source: str = "g/clicks.protected/0", worker: str = "h-1/p0") -> dict[str, Any]:
    a = policy.by_name[attr]
    start = int(start_s * 1000)
    return estimate_record(a, n=n, support=support, total=total, start_ms=start, end_ms=start + 60_000,
                           worker=worker, source=source)


def test_estimates_merge_windows_and_partitions_like_the_estimates_command(policy: LdpPolicy) -> None:
    st = ConsoleState(policy)
    k = policy.by_name["event_type"].k
    recs = [freq(policy, "event_type", T0, [40 + i for i in range(k)], n=200),
            freq(policy, "event_type", T0, [30] * k, n=150, source="g/clicks.protected/1", worker="h-1/p1"),
            freq(policy, "event_type", T0 + 60, [50] * k, n=210)]
    # the first window of partition 0 published again by the process restarted after a crash (it
    # replaces the one before: both counted would double that partition's reports)
    again = freq(policy, "event_type", T0, [20 + i for i in range(k)], n=100, worker="h-2/p0")
    for r in [*recs, again]:
        st.add_frequency(orjson.loads(orjson.dumps(r)))
    recs[0] = again
    st.set_truth(Truth(frequencies={"event_type": {"page_view": 0.5}}, means={"price": 99.0}, events=10))
    est = st.view(T0)["estimates"]
    (entry,) = est["attributes"]
    expected = merge_records(policy, recs)[0]
    merged = entry["merged"]
    assert merged["n"] == 460 and merged["windows"] == 2
    row = next(v for v in merged["values"] if v[0] == "page_view")
    want = next(v for v in expected["values"] if v["value"] == "page_view")
    assert row[1:5] == [want["projected"], want["estimate"], *want["ci95"]] and row[5] == 0.5
    assert [w["n"] for w in entry["windows"]] == [250, 210]  # per window: its partitions merged
    assert all(v[5] is None for w in entry["windows"] for v in w["values"])  # the truth is of the whole run
    assert est["truth"]["events"] == 10


def test_numeric_attribute_gives_a_mean_per_window(policy: LdpPolicy) -> None:
    st = ConsoleState(policy)
    st.add_frequency(freq(policy, "price", T0, n=100, total=12_000.0))
    st.add_frequency(freq(policy, "price", T0 + 60, n=100, total=8_000.0))
    st.set_truth(Truth(means={"price": 101.0}))
    (entry,) = st.view(T0)["estimates"]["attributes"]
    assert [w["mean"] for w in entry["series"]] == [120.0, 80.0]
    assert entry["merged"]["mean"] == 100.0 and entry["merged"]["truth"] == 101.0
    lo, hi = entry["merged"]["ci95"]
    assert lo < 100.0 < hi


def test_records_before_since_are_left_out(policy: LdpPolicy) -> None:
    st = ConsoleState(policy, since_ms=int((T0 + 100) * 1000))
    st.add_metrics(gateway_snap(T0, events=1, protected=1, dlq={}))
    st.add_frequency(freq(policy, "price", T0, n=10, total=1.0))
    st.add_audit(erasure_receipt(subject="tk1_x", request_id="r1", at=T0, worker="w", keys_shredded=1), None)
    view = st.view(T0 + 200)
    assert view["pipeline"]["workers"] == [] and view["estimates"]["attributes"] == []
    assert view["privacy"]["receipts"] == [] and st.records == {}


def test_receipts_are_verified_deduplicated_and_name_nobody(policy: LdpPolicy) -> None:
    key = Ed25519PrivateKey.generate()
    verify = Verifiers(receipt_key=key.public_key())
    st = ConsoleState(policy)
    good = sign_receipt(erasure_receipt(subject="tk1_person", request_id="req-1", at=T0, worker="w", keys_shredded=3), key)
    forged = dict(good, keys_shredded=0)
    shred = sign_receipt(key_receipt(reason="erasure", subject="tk1_person", epoch=1, key_id="k", request_id="req-1",
                                     at=T0, worker="w", deadline=None), key)
    for rec in (forged, good, good, shred):  # a forged copy first, then the real one twice
        st.add_audit(rec, verify.receipt(rec))
    p = st.view(T0)["privacy"]
    assert [(r["request_id"], r["keys_shredded"], r["verified"]) for r in p["receipts"]] == [
        ("req-1", 3, True), ("req-1", 0, False)]
    assert p["receipts"][0]["receipt_id"] == good["receipt_id"][:16]
    assert p["unverified"] == 1
    assert {(a["kind"], a["count"]) for a in p["audit"]} == {("erasure", 2), ("key_shredded", 1)}
    assert b"tk1_" not in orjson.dumps(st.view(T0))


def test_snapshots_and_drift_events_make_the_model_view(policy: LdpPolicy) -> None:
    st = ConsoleState(policy)

    def header(at: str, n: int, auc: float) -> dict[str, Any]:
        return {"format": "streamgate-model-snapshot.v2", "name": "m1", "created_at": at, "examples_seen": n,
                "metrics": {"roc_auc": auc, "log_loss": 0.6, "drifts": 1.0}, "key_id": "kabc"}

    st.add_snapshot(header("2027-01-15T08:00:10.000Z", 200, 0.61), True)
    st.add_snapshot(header("2027-01-15T08:00:00.000Z", 100, 0.55), False)
    st.add_snapshot(header("2027-01-15T08:00:10.000Z", 200, 0.61), True)  # re-delivered
    st.add_snapshot(b"not a header", None)
    st.add_audit({"kind": "drift", "reason": "drift", "model": "m1", "metric": "log_loss", "examples_seen": 150,
                  "at": "2027-01-15T08:00:05.000Z", "receipt_id": "d" * 64}, None)
    m = st.view(T0)["model"]
    (model,) = m["models"]
    assert [p["examples_seen"] for p in model["series"]] == [100, 200]  # in time order
    assert [(v["roc_auc"], v["verified"]) for v in model["versions"]] == [(0.61, True), (0.55, False)]
    assert m["drifts"][0]["examples_seen"] == 150 and st.malformed == 1


def test_hostile_names_and_reasons_are_never_shown(policy: LdpPolicy) -> None:
    st = ConsoleState(policy)
    snap = gateway_snap(T0, events=1, protected=1, dlq={}, ready=False, reason="stuck on tk1_abcdef person")
    snap["worker"] = "tk1_secret"
    snap["dlq"] = {"<script>": 3}
    st.add_metrics(snap)
    st.add_audit({"kind": "erasure", "status": "tk1_zzz", "request_id": "a b <c>", "at": "bad"}, None)
    text = orjson.dumps(st.view(T0)).decode()
    assert "tk1_" not in text and "<script>" not in text and "a b <c>" not in text
    (row,) = st.view(T0)["pipeline"]["workers"]
    assert row["worker"] == "other" and row["reason"] == "other"


def test_person_epsilon_histograms_of_privatizers_add_up(policy: LdpPolicy) -> None:
    st = ConsoleState(policy)
    for pid, epoch, counts in ((1, 7, [1, 2, 3]), (2, 7, [0, 1, 1]), (3, 6, [9, 9, 9])):
        m = WorkerMetrics("privatizer")
        m.set_person_epsilon({"epoch": epoch, "cap": 2.0, "bin_width": 1.0, "counts": counts, "people": sum(counts),
                              "untracked": 0})
        m.ldp_reports("event_type", "oue", 10, 2.0)
        m.ldp_suppressed("event_type", 3)
        m.ldp_over_budget(pid)
        snap = snapshot_record(m, "privatizer")
        snap.update({"ts": T0 + pid, "pid": pid})
        st.add_metrics(snap)
    p = st.view(T0)["privacy"]
    assert p["person_epsilon"]["counts"] == [1, 3, 4] and p["person_epsilon"]["people"] == 8  # epoch 6 is older
    assert p["ldp"]["event_type"] == {"reports": 30, "epsilon_spent": 6.0, "suppressed": 9} and p["suppressed"] == 9
    assert p["over_budget"] == 1 + 2 + 3 and p["privatizers"] == 3


def test_no_histogram_before_a_finished_epoch(policy: LdpPolicy) -> None:
    st = ConsoleState(policy)
    assert st.view(T0)["privacy"]["privatizers"] == 0  # the page says: no privatizer snapshot yet
    m = WorkerMetrics("privatizer")
    m.ldp_over_budget(5)
    snap = snapshot_record(m, "privatizer")
    snap.update({"ts": T0, "pid": 1})
    st.add_metrics(snap)
    p = st.view(T0)["privacy"]
    assert p["person_epsilon"] is None and p["privatizers"] == 1 and p["over_budget"] == 5  # no finished epoch yet


def test_a_window_view_follows_a_late_partition(policy: LdpPolicy) -> None:
    st = ConsoleState(policy)
    st.add_frequency(freq(policy, "price", T0, n=100, total=10_000.0))
    assert st.view(T0)["estimates"]["attributes"][0]["series"][0]["n"] == 100
    st.add_frequency(freq(policy, "price", T0, n=50, total=2_000.0, source="g/clicks.protected/1"))  # another partition
    (window,) = st.view(T0)["estimates"]["attributes"][0]["series"]
    assert window["n"] == 150 and window["mean"] == 80.0
    st.add_frequency(freq(policy, "price", T0, n=40, total=2_000.0, worker="h-2/p0"))  # partition 0 again
    (window,) = st.view(T0)["estimates"]["attributes"][0]["series"]
    assert window["n"] == 90 and window["mean"] == pytest.approx(4_000.0 / 90, abs=1e-6)


def test_instances_of_restarted_workers_are_forgotten(policy: LdpPolicy) -> None:
    st = ConsoleState(policy, live_seconds=60)
    for pid in range(200):  # a worker restarted 200 times, an hour apart
        st.add_metrics(gateway_snap(T0 + 3600 * pid, pid=pid, events=pid, protected=pid, dlq={}))
    assert len(st._instances) <= 65 and len(st._retired_keys) <= st.instances_kept
    assert st.view(T0 + 3600 * 199)["pipeline"]["events_in"] == sum(range(200))  # their counts stay


# --------------------------------------------------------------------------- what ops sees is current
def worker_snap(worker: str, ts: float, *, events_in: int, out: dict[str, int], pid: int = 5,
                ldp: dict[str, dict[str, Any]] | None = None, models: dict[str, dict[str, float]] | None = None,
                stopping: bool = False) -> dict[str, Any]:
    """A snapshot as the publisher makes it (interval 10 s), at the injected time ``ts``."""
    m = WorkerMetrics(worker)
    m.events_in(events_in)
    for topic, n in out.items():
        m.events_out(topic, n)
    for attr, row in (ldp or {}).items():
        m.ldp_reports(attr, "grr", row["reports"], 0.0)
    for model, metrics in (models or {}).items():
        for k, v in metrics.items():
            m.set_model_metric(model, k, v)
    snap = snapshot_record(m, worker, interval=10.0, stopping=stopping)
    snap.update({"ts": ts, "pid": pid, "host": "h"})
    if not stopping:
        snap.update({"ready": True, "reason": None})
    return snap


def test_an_idle_period_and_a_stopped_instance_show_rates_at_0_and_not_ready(policy: LdpPolicy) -> None:
    st = ConsoleState(policy)
    # the gateway: 100 events/s for 20 s, then idle (it goes on publishing every 10 s, same counters)
    for i in range(3):
        st.add_metrics(gateway_snap(T0 + 10 * i, events=1000 * i, protected=1000 * i, dlq={}))
    busy = st.view(T0 + 21)["pipeline"]
    assert busy["rates"]["in"] == 100.0 and busy["workers"][0]["rates"]["in"] == 100.0
    for i in range(3, 9):
        st.add_metrics(gateway_snap(T0 + 10 * i, events=2000, protected=2000, dlq={}))
    # the privatizer: busy, then a graceful stop (its last snapshot says "stopping")
    st.add_metrics(worker_snap("privatizer", T0, events_in=0, out={}))
    st.add_metrics(worker_snap("privatizer", T0 + 10, events_in=1000, out={"features": 1000}))
    assert st.view(T0 + 11)["pipeline"]["workers"][1]["rates"]["in"] == 100.0  # the privatizer, busy
    st.add_metrics(worker_snap("privatizer", T0 + 12, events_in=2000, out={"features": 2000}, stopping=True))
    # the learner: busy, then nothing at all (killed): its last snapshot says ready
    st.add_metrics(worker_snap("learner", T0, events_in=0, out={}))
    st.add_metrics(worker_snap("learner", T0 + 10, events_in=2000, out={"snapshots": 3}))

    p = st.view(T0 + 81)["pipeline"]  # a minute after the last event
    rows = {r["worker"]: r for r in p["workers"]}
    gw, pv, ln = rows["gateway"], rows["privatizer"], rows["learner"]
    assert gw["status"] == "live" and gw["ready"] and gw["rates"] == dict.fromkeys(gw["rates"], 0.0)
    assert p["rates"] is not None and {k: v for k, v in p["rates"].items() if k != "ts"} == dict.fromkeys(
        ("in", "out", "protected", "dlq", "features"), 0.0)
    assert p["series"][-1]["in"] == 0.0 and p["events_in"] == 2000  # the totals stay
    assert pv["status"] == "stopped" and not pv["ready"] and pv["reason"] == "stopped (graceful shutdown)"
    assert ln["status"] == "stale" and not ln["ready"] and "no snapshot for 71 s" in ln["reason"]
    for row in (pv, ln):
        assert row["rates"] == dict.fromkeys(row["rates"], 0.0), row
    # within 3 intervals the learner was still live, with its rates
    ln_then = {r["worker"]: r for r in st.view(T0 + 39)["pipeline"]["workers"]}["learner"]
    assert ln_then["status"] == "live" and ln_then["ready"] and ln_then["rates"]["in"] == 200.0


def test_a_stopped_gateway_takes_the_rates_chart_to_0(policy: LdpPolicy) -> None:
    st = ConsoleState(policy)
    st.add_metrics(gateway_snap(T0, events=0, protected=0, dlq={}))
    st.add_metrics(gateway_snap(T0 + 10, events=500, protected=500, dlq={}))
    stop = gateway_snap(T0 + 11, events=600, protected=600, dlq={})
    stop["state"] = "stopping"
    st.add_metrics(stop)
    p = st.view(T0 + 12)["pipeline"]
    assert p["series"][-2]["in"] == 0.0  # the stopping snapshot's point
    assert p["series"][-1]["ts"] == T0 + 12 and p["series"][-1]["in"] == 0.0 and p["rates"]["in"] == 0.0
    assert p["workers"][0]["status"] == "stopped" and not p["workers"][0]["ready"]


def test_the_pipeline_totals_add_up_across_gateway_restarts(policy: LdpPolicy) -> None:
    """A gateway that stopped (or went silent) and is gone from the live window keeps its final counts
    in the totals; the same host and pid counting from 0 again is a new process; a live instance, or
    one back after a silence, is counted once."""
    st = ConsoleState(policy, live_seconds=60.0)

    def totals(now: float) -> tuple[int, int, int, dict[str, int]]:
        p = st.view(now)["pipeline"]
        return p["events_in"], p["protected"], p["dead_lettered"], p["dlq_by_reason"]

    st.add_metrics(gateway_snap(T0, pid=1, events=0, protected=0, dlq={}))
    st.add_metrics(gateway_snap(T0 + 10, pid=1, events=1000, protected=995, dlq={"schema_violation": 5}))
    stop = gateway_snap(T0 + 11, pid=1, events=1000, protected=995, dlq={"schema_violation": 5})
    stop["state"] = "stopping"
    st.add_metrics(stop)
    st.add_metrics(gateway_snap(T0 + 130, pid=2, events=5, protected=5, dlq={}))  # restarted, 2 min later
    assert totals(T0 + 131) == (1005, 1000, 5, {"schema_violation": 5})
    st.add_metrics(gateway_snap(T0 + 140, pid=2, events=10, protected=9, dlq={"not_json": 1}))  # live: once
    assert totals(T0 + 141) == (1010, 1004, 6, {"not_json": 1, "schema_violation": 5})
    # the same host and pid (a container's pid 1) from 0 again: a new process, the old counts kept
    st.add_metrics(gateway_snap(T0 + 150, pid=2, events=3, protected=3, dlq={}))
    assert totals(T0 + 151) == (1013, 1007, 6, {"not_json": 1, "schema_violation": 5})
    # a second gateway, silent for longer than the live window, then back (the same process): once
    st.add_metrics(gateway_snap(T0 + 150, pid=3, events=100, protected=100, dlq={}))
    st.add_metrics(gateway_snap(T0 + 220, pid=2, events=20, protected=20, dlq={}))
    assert totals(T0 + 221) == (1010 + 100 + 20, 1004 + 100 + 20, 6, {"not_json": 1, "schema_violation": 5})
    st.add_metrics(gateway_snap(T0 + 150, pid=3, events=100, protected=100, dlq={}))  # re-delivered: ignored
    st.add_metrics(gateway_snap(T0 + 225, pid=3, events=150, protected=150, dlq={}))
    assert totals(T0 + 226) == (1010 + 150 + 20, 1004 + 150 + 20, 6, {"not_json": 1, "schema_violation": 5})


def test_a_restart_with_the_same_host_and_pid_shows_its_own_rates(policy: LdpPolicy) -> None:
    st = ConsoleState(policy)
    for i in range(4):  # 100 events/s
        st.add_metrics(gateway_snap(T0 + 10 * i, events=1000 * i, protected=1000 * i, dlq={}))
    again = gateway_snap(T0 + 35, events=40, protected=40, dlq={})
    again["rates"] = {"in": 8.0, "out": 8.0, "dlq": 0.0}
    st.add_metrics(again)
    p = st.view(T0 + 36)["pipeline"]
    assert p["workers"][0]["rates"]["in"] == 8.0 and p["rates"]["in"] == 8.0 and p["events_in"] == 3040
    st.add_metrics(gateway_snap(T0 + 45, events=240, protected=240, dlq={}))
    assert st.view(T0 + 46)["pipeline"]["workers"][0]["rates"]["in"] == 20.0


@pytest.mark.parametrize(("interval", "gap", "shown"), [(1.0, 40.0, [2]), (20.0, 100.0, [1, 2]), (10.0, 59.0, [1, 2])])
def test_ops_watch_and_the_console_show_the_same_instances(policy: LdpPolicy, interval: float, gap: float,
                                                           shown: list[int]) -> None:
    """An instance older than max(30 s, 6 intervals) than its worker's newest is gone, in both views
    (the interval: the snapshots' own)."""
    from stream.ops.watch import WatchState

    console, watch = ConsoleState(policy), WatchState()
    for ts, pid in ((T0, 1), (T0 + gap, 2)):
        snap = gateway_snap(ts, pid=pid, events=10, protected=10, dlq={})
        snap["interval_s"] = interval
        console.add_metrics(snap)
        watch.add_metrics(orjson.dumps(snap))
    now = T0 + gap + 0.5
    assert [r["pid"] for r in console.view(now)["pipeline"]["workers"]] == shown
    assert [i.snap["pid"] for _w, i in watch._live()] == shown


def test_a_failed_instance_shows_failed_with_its_reason_not_a_graceful_stop(policy: LdpPolicy) -> None:
    why = "EngineFatalError: gateway: watchdog: not ready and no progress for 61 s: batch held"
    st = ConsoleState(policy)
    st.add_metrics(gateway_snap(T0, events=0, protected=0, dlq={}))
    st.add_metrics(gateway_snap(T0 + 10, events=500, protected=500, dlq={}))
    m = WorkerMetrics("gateway")
    m.events_in(500)
    last = snapshot_record(m, "gateway", interval=10.0, stopping=True, failure=why)
    last.update({"ts": T0 + 11, "pid": 1, "host": "h"})
    st.add_metrics(last)
    (gw,) = st.view(T0 + 12)["pipeline"]["workers"]
    assert (gw["status"], gw["ready"], gw["reason"]) == ("failed", False, f"failed: {why}")
    assert gw["rates"] == dict.fromkeys(gw["rates"], 0.0)


def test_counts_say_what_they_count_and_add_up_across_the_pipeline(policy: LdpPolicy) -> None:
    """The learner reads feature reports and examples; the privatizer's writes to the features topic
    split into the two, so the learner's records in are the privatizer's two kinds added up."""
    st = ConsoleState(policy)
    reports, examples = 19_617, 19_617
    st.add_metrics(worker_snap("privatizer", T0, events_in=reports, out={"features": reports + examples,
                                                                          "frequencies": 84},
                               ldp={"event_type": {"reports": reports}, "session_purchase": {"reports": examples}}))
    st.add_metrics(worker_snap("learner", T0, events_in=reports + examples, out={"snapshots": 4, "audit": 1},
                               models={"m1": {"examples_seen": examples}}))
    rows = {r["worker"]: r for r in st.view(T0 + 1)["pipeline"]["workers"]}
    pv, ln = rows["privatizer"], rows["learner"]
    assert (pv["in_unit"], pv["out"]) == ("events", {"estimates": 84, "examples": examples, "feature reports": reports})
    assert ln["in_unit"] == "records" and ln["events_in"] == sum(v for k, v in pv["out"].items() if k != "estimates")
    assert ln["examples_in_model"] == examples and ln["out"] == {"audit records": 1, "model snapshots": 4}


def test_drift_records_verify_with_the_learners_key_and_unsigned_ones_are_not_unverified(policy: LdpPolicy) -> None:
    from stream.apps.learner import drift_record

    shredder, learner = Ed25519PrivateKey.generate(), Ed25519PrivateKey.generate()
    verify = Verifiers(receipt_key=shredder.public_key(), snapshot_key=learner.public_key())
    drift = drift_record("m1", 150, {"name": "ADWIN"}, at=T0, worker="learner-h")
    signed = sign_receipt(drift, learner)
    by_shredder_key = sign_receipt(drift, shredder)  # a drift record is no receipt: the shredder key is not its key
    assert verify.audit(signed) is True and verify.audit(by_shredder_key) is False
    assert verify.audit(dict(signed, examples_seen=151)) is False
    assert verify.audit(drift) is None  # unsigned (an older learner): not a receipt, so not UNVERIFIED
    receipt = erasure_receipt(subject="tk1_p", request_id="r1", at=T0, worker="w", keys_shredded=1)
    assert verify.audit(receipt) is False  # a receipt must be signed: strict as `streamgate audit`
    assert verify.audit(sign_receipt(receipt, learner)) is False and verify.audit(sign_receipt(receipt, shredder))
    later = sign_receipt(drift_record("m1", 300, {"name": "ADWIN"}, at=T0 + 5, worker="learner-h"), learner)
    st = ConsoleState(policy)
    st.add_audit(drift, verify.audit(drift))
    st.add_audit(later, verify.audit(later))
    p = st.view(T0)
    assert p["privacy"]["unverified"] == 0 and p["privacy"]["unsigned"] == {"drift": 1}
    assert [(d["verified"], d["signed"]) for d in p["model"]["drifts"]] == [(True, True), (None, False)]


def test_estimates_written_under_other_parameters_are_counted_and_said_not_dropped(policy: LdpPolicy) -> None:
    """A record of another epsilon (the demo's 4 read at the default) cannot be merged with this policy's:
    the view says how many and why, instead of showing nothing (or an empty attribute) in silence."""
    from stream.ldp.policy import LdpPolicy as Policy

    other = Policy.from_schema(load_schema("clickstream-event.v1"), policy.by_name["event_type"].epsilon_1 * 4)
    k = other.by_name["event_type"].k
    rec = estimate_record(other.by_name["event_type"], n=100, support=[10] * k, total=None,
                          start_ms=int(T0 * 1000), end_ms=int(T0 * 1000) + 60_000, worker="h-1/p0")
    st = ConsoleState(policy)
    st.add_frequency(orjson.loads(orjson.dumps(rec)))
    st.add_frequency(orjson.loads(orjson.dumps(rec)))
    est = st.view(T0)["estimates"]
    assert est["attributes"] == []
    (skipped,) = est["skipped"]
    assert skipped["attribute"] == "event_type" and skipped["records"] == 2
    assert "this policy's" in skipped["why"] and "eps=" in skipped["why"]
