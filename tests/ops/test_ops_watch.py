"""``streamgate ops watch --once`` against a live stack (a real gateway worker, real broker and
Redis): it prints the worker's current rates and totals, the DLQ reasons and the audit receipts;
and the pure view (:class:`stream.ops.watch.WatchState`) never prints a record's content."""

from __future__ import annotations

import re
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass

import orjson
import pytest

from stream.apps.produce import publish
from stream.faults import make_invalid
from stream.ops.watch import INSTANCES_KEPT, NAMES_KEPT, WatchState
from stream.synth import ClickstreamGenerator
from tests.support.gateway_worker import GatewayWorker, gateway_worker, wait_fresh_snapshot

pytestmark = pytest.mark.slow

N_EVENTS = 600
_REASON_OF_FAULT = {"bad_email": "schema_violation", "bad_type": "schema_violation"}
WORKER_LINE = re.compile(
    r"^  gateway +in=(?P<in>[\d.]+)/s out=(?P<out>[\d.]+)/s dlq=(?P<dlq>[\d.]+)/s events_in=(?P<events_in>\d+)"
    r" events_out=(?P<events_out>\d+) lag=(?P<lag>\d+) redis_errors=(?P<redis>\d+) ready=(?P<ready>yes|no)",
    re.M)


@dataclass
class Live:
    w: GatewayWorker
    reasons: Counter[str]
    audit: Counter[tuple[str, str]]
    secret: str


@pytest.fixture(scope="module")
def live(kafka_bootstrap: str, redis_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Live]:
    import random

    state_dir = tmp_path_factory.mktemp("ops-watch")
    with gateway_worker(kafka_bootstrap, redis_url, state_dir) as w:
        rng = random.Random(5)
        reasons: Counter[str] = Counter()
        items: list[object] = []
        for ev in ClickstreamGenerator(seed=5).events(N_EVENTS):
            if rng.random() < 0.05:
                kind, bad = make_invalid(ev, rng)
                reasons[_REASON_OF_FAULT.get(kind, kind)] += 1
                items.append(bad)
            else:
                items.append(ev)
        assert publish(kafka_bootstrap, w.topics.raw, items) == N_EVENTS
        # audit receipts as the shredder writes them (the shape of stream/retention/receipts.py), plus
        # one hostile record whose content must never be printed
        secret = f"hostile.{uuid.uuid4().hex[:6]}@example.org"
        audit: Counter[tuple[str, str]] = Counter({("key_shredded", "retention"): 3, ("key_shredded", "erasure"): 2,
                                                   ("erasure", "erasure"): 1})
        receipts: list[object] = []
        for (kind, reason), n in audit.items():
            receipts += [{"kind": kind, "reason": reason, "subject": f"tk1_{uuid.uuid4().hex}", "ts": time.time()}] * n
        receipts.append({"kind": secret, "reason": "retention"})
        audit[("other", "retention")] += 1
        from stream.kafka import ensure_topics

        ensure_topics(kafka_bootstrap, [w.topics.audit], partitions=1)
        publish(kafka_bootstrap, w.topics.audit, receipts)
        wait_fresh_snapshot(w, N_EVENTS)
        yield Live(w, reasons, audit, secret)


@pytest.mark.integration
def test_ops_watch_once_prints_rates_dlq_reasons_and_audit(live: Live) -> None:
    r = live.w.run("ops", "watch", "--once", "--idle-timeout", "2")
    assert r.returncode == 0, r.stderr
    out = r.stdout
    m = WORKER_LINE.search(out)
    assert m, out
    assert int(m["events_in"]) == N_EVENTS
    assert int(m["events_out"]) == N_EVENTS  # protected + dead-lettered
    assert m["ready"] == "yes" and int(m["redis"]) == 0
    for rate in ("in", "out", "dlq"):
        float(m[rate])  # a number (its value depends on when the last snapshot was taken)
    # the worker's own DLQ counts, by reason
    line = re.search(r"^    dead letters: (.*)$", out, re.M)
    assert line, out
    assert dict(kv.split("=") for kv in line[1].split(", ")) == {k: str(v) for k, v in live.reasons.items()}
    # the dead-letter topic, by reason
    total = sum(live.reasons.values())
    assert f"dead-letter topic: {total} records" in out
    for reason, n in live.reasons.items():
        assert re.search(rf"^  {reason} +{n}$", out, re.M), (reason, out)
    # the audit topic, by kind and reason; the hostile record shows as "other", never its content
    assert f"audit topic: {sum(live.audit.values())} records (receipts and drift records)" in out
    for (kind, reason), n in live.audit.items():
        assert re.search(rf"^  {kind} +{reason} +{n}$", out, re.M), (kind, reason, out)
    assert live.secret not in out and "tk1_" not in out


@pytest.mark.integration
def test_ops_watch_once_on_topics_that_do_not_exist(live: Live) -> None:
    nothing = {t: f"nothing.{uuid.uuid4().hex[:6]}" for t in ("metrics", "audit", "dlq")}
    env = dict(live.w.env, STREAMGATE_TOPICS=orjson.dumps({**orjson.loads(live.w.env["STREAMGATE_TOPICS"]),
                                                           **nothing}).decode())
    import subprocess

    from tests.support.gateway_worker import cli

    r = subprocess.run(cli("ops", "watch", "--once", "--idle-timeout", "0.5"), env=env, capture_output=True,
                       text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    assert "(no snapshot on the metrics topic yet)" in r.stdout
    assert "dead-letter topic: 0 records" in r.stdout and "topics not found:" in r.stdout


def test_watch_state_never_prints_record_content() -> None:
    st = WatchState()
    st.add_dlq(b'{"reason": "not_json"}')
    st.add_dlq(b'{"reason": "alice@example.org"}')
    st.add_dlq(b"not json at all: bob@example.org")
    st.add_audit(orjson.dumps({"kind": "key_shredded", "reason": "tk1_secret_token"}))
    st.add_metrics(orjson.dumps({"worker": "gateway", "ts": 1.0, "events_in": 5, "dlq": {"carol@example.org": 1},
                                 "ldp": {"device": {"reports": 4, "epsilon_spent": 2.0, "suppressed": 1}},
                                 "models": {"ctr": {"auc": 0.75}}, "rates": {"in": 2.5}}))
    out = st.render_plain(now=2.0)
    for secret in ("alice", "bob", "carol", "tk1_secret_token"):
        assert secret not in out
    assert st.dlq == Counter({"not_json": 1, "other": 1}) and st.malformed == 1
    assert ("key_shredded", "other") in st.audit
    assert "in=2.5/s" in out and "events_in=5" in out
    assert "device            reports=4 epsilon_spent=2.000 suppressed=1" in out
    assert "ctr               gateway pid 0: auc=0.7500" in out


def test_watch_state_keeps_the_latest_snapshot_per_worker() -> None:
    st = WatchState()
    st.add_metrics(orjson.dumps({"worker": "gateway", "ts": 10.0, "events_in": 7}))
    st.add_metrics(orjson.dumps({"worker": "gateway", "ts": 5.0, "events_in": 3}))  # older, read later
    st.add_metrics(orjson.dumps({"worker": "shredder", "ts": 9.0, "keys_shredded": {"retention": 2},
                                 "shred_due": 1}))
    rows = st.worker_rows(now=12.0)
    assert [r["worker"] for r in rows] == ["gateway", "shredder"]
    assert rows[0]["events_in"] == 7 and rows[0]["age_s"] == 2.0
    assert rows[1]["keys_shredded"] == {"retention": 2}
    out = st.render_plain(now=12.0)
    assert "keys shredded: retention=2 (due, not yet shredded: 1)" in out
    # the rich view renders the same state
    from rich.console import Console

    console = Console(record=True, width=160)
    console.print(st.render_rich(now=12.0))
    text = console.export_text()
    assert "gateway" in text and "shredder" in text


@pytest.mark.integration
def test_ops_watch_live_view_renders_and_stops_on_interrupt(live: Live) -> None:
    import signal
    import subprocess

    from tests.support.gateway_worker import cli

    # as typed in a terminal, where Ctrl-C interrupts: the tests may run with SIGINT ignored (started in the
    # background or by nohup), and an ignored SIGINT is inherited across exec (a handler is not)
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        proc = subprocess.Popen(cli("ops", "watch", "--interval", "0.5"), env=dict(live.w.env, COLUMNS="160"),
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    finally:
        signal.signal(signal.SIGINT, previous)
    try:
        time.sleep(4)  # let it read and refresh a few times (nothing is asserted about timing)
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
    assert proc.returncode == 0, err
    assert "workers" in out and "gateway" in out and "dead letters" in out and "audit" in out, out
    assert live.secret not in out and "tk1_" not in out


def _snap(worker: str, ts: float, *, pid: int, events_in: int, **extra: object) -> bytes:
    return orjson.dumps({"worker": worker, "host": "h", "pid": pid, "ts": ts, "interval_s": 10.0, "state": "running",
                         "ready": True, "events_in": events_in, **extra})


def test_watch_shows_stopped_and_silent_instances_not_ready_with_rates_at_0() -> None:
    st = WatchState()
    for i in range(9):  # 100 events/s for 20 s, then idle, publishing every 10 s
        st.add_metrics(_snap("gateway", 10.0 * i, pid=1, events_in=1000 * min(i, 2), events_out={"protected": 1000 * min(i, 2)}))
    st.add_metrics(_snap("privatizer", 0.0, pid=2, events_in=0))
    st.add_metrics(_snap("privatizer", 10.0, pid=2, events_in=1000))
    st.add_metrics(_snap("privatizer", 12.0, pid=2, events_in=1200, state="stopping", ready=False,
                         reason="stopping (graceful shutdown)"))
    st.add_metrics(_snap("learner", 0.0, pid=3, events_in=0))
    st.add_metrics(_snap("learner", 10.0, pid=3, events_in=2000))
    busy = {r["worker"]: r for r in st.worker_rows(now=11.0)}
    assert busy["learner"]["in_rate"] == 200.0 and busy["learner"]["ready"]
    rows = {r["worker"]: r for r in st.worker_rows(now=81.0)}
    gw, pv, ln = rows["gateway"], rows["privatizer"], rows["learner"]
    assert gw["ready"] and gw["status"] == "live" and (gw["in_rate"], gw["out_rate"]) == (0.0, 0.0)
    assert (pv["status"], pv["ready"], pv["in_rate"], pv["reason"]) == ("stopped", False, 0.0, "stopped (graceful shutdown)")
    assert (ln["status"], ln["ready"], ln["in_rate"]) == ("stale", False, 0.0) and "no snapshot for 71 s" in ln["reason"]
    out = st.render_plain(now=81.0)
    assert re.search(r"^  learner +in=0\.0/s .* records_in=2000 .* ready=no age=71\.0s status=stale$", out, re.M), out
    assert "    not ready: stopped (graceful shutdown)\n" in out


def test_a_restart_with_the_same_host_and_pid_shows_its_own_rates_not_0() -> None:
    """A container restarted keeps its hostname and pid 1: its counters go back. The rate window
    starts again, so the restarted process shows its snapshot's own rates, then its window's."""
    st = WatchState()
    for i in range(4):  # 100 events/s
        st.add_metrics(_snap("gateway", 10.0 * i, pid=1, events_in=1000 * i, rates={"in": 100.0}))
    st.add_metrics(_snap("gateway", 35.0, pid=1, events_in=40, rates={"in": 8.0, "out": 8.0, "dlq": 0.0}))
    (gw,) = st.worker_rows(now=36.0)
    assert (gw["in_rate"], gw["out_rate"], gw["events_in"]) == (8.0, 8.0, 40)
    st.add_metrics(_snap("gateway", 45.0, pid=1, events_in=240))
    assert st.worker_rows(now=46.0)[0]["in_rate"] == 20.0


def test_watch_shows_a_failed_instance_as_failed_not_as_a_graceful_stop() -> None:
    why = "EngineFatalError: gateway: watchdog: not ready and no progress for 61 s: batch held"
    st = WatchState()
    st.add_metrics(_snap("gateway", 0.0, pid=1, events_in=0))
    st.add_metrics(_snap("gateway", 10.0, pid=1, events_in=1000))
    st.add_metrics(_snap("gateway", 11.0, pid=1, events_in=1000, state="failed", ready=False, reason=why))
    (gw,) = st.worker_rows(now=12.0)
    assert (gw["status"], gw["ready"], gw["in_rate"], gw["reason"]) == ("failed", False, 0.0, f"failed: {why}")
    out = st.render_plain(now=12.0)
    assert f"    not ready: failed: {why}\n" in out and "status=failed" in out and "graceful" not in out
    st.add_metrics(_snap("shredder", 11.0, pid=2, events_in=0, state="failed", ready=False, reason="x tk1_abc"))
    assert st.worker_rows(now=12.0)[1]["reason"] == "failed: other"


def test_the_privacy_and_model_sections_add_up_instances_and_print_counts_as_integers() -> None:
    """Two privatizers: one row per attribute, added up (as the console adds them), with the events
    not reported at the person's cap; two learners: a labelled row each, counts as integers."""
    st = WatchState()
    for pid, (n, eps, sup, over) in ((1, (100, 1.5, 2, 4)), (2, (50, 0.5, 3, 8))):
        st.add_metrics(_snap("privatizer", 100.0, pid=pid, events_in=n, ldp_over_budget=over,
                             ldp={"device": {"reports": n, "epsilon_spent": eps, "suppressed": sup}}))
    for pid, instance in ((3, "a1"), (4, "b2")):
        st.add_metrics(_snap("learner", 100.0, pid=pid, events_in=425, instance=instance,
                             models={"m1": {"examples_seen": 425.0, "roc_auc": 0.8123, "drifts": 0.0}}))
    out = st.render_plain(now=101.0)
    assert "  device            reports=150 epsilon_spent=2.000 suppressed=5\n" in out
    assert "  not reported: over_budget=12 (events of people whose ledger was at its cap)\n" in out
    assert "  m1                learner a1: drifts=0 examples_seen=425 roc_auc=0.8123\n" in out
    assert "  m1                learner b2: drifts=0 examples_seen=425 roc_auc=0.8123\n" in out
    assert "425.0000" not in out and out.count("reports=") == 1
    from rich.console import Console

    console = Console(record=True, width=200)
    console.print(st.render_rich(now=101.0))
    text = console.export_text()
    assert "not reported, ledger at its cap: 12" in text and "learner a1" in text and "425.0000" not in text


def test_watch_has_a_row_per_federated_learner_and_names_the_aggregator() -> None:
    st = WatchState()
    models = {"m1": {"examples_seen": 5000.0, "global_version": 7.0}}
    st.add_metrics(_snap("learner", 100.0, pid=10, events_in=4000, instance="a1", models=models,
                         aggregator={"aggregating": True, "version": 7}, events_out={"snapshots": 7}))
    st.add_metrics(_snap("learner", 101.0, pid=11, events_in=3000, instance="b2", models=models,
                         aggregator={"aggregating": False}))
    st.add_metrics(_snap("privatizer", 100.0, pid=12, events_in=3500,
                         events_out={"features": 7000, "frequencies": 12}, ldp={"session_purchase": {"reports": 3500}}))
    rows = st.worker_rows(now=102.0)
    assert [(r["worker"], r["instance"], r["aggregating"]) for r in rows] == [
        ("privatizer", None, None), ("learner", "a1", True), ("learner", "b2", False)]
    assert rows[0]["out"] == {"estimates": 12, "examples": 3500, "feature reports": 3500}
    out = st.render_plain(now=102.0)
    assert "events_in=3500 feature_reports_out=3500 examples_out=3500 estimates_out=12 " in out
    assert "    instance: a1, aggregator: yes (merges the updates)\n" in out
    assert "    instance: b2, aggregator: standby\n" in out
    assert "    records_in are feature reports and examples; examples in the model: 5000\n" in out
    from rich.console import Console

    console = Console(record=True, width=220)
    console.print(st.render_rich(now=102.0))
    text = console.export_text()
    assert "learner a1 (aggregator)" in text and "learner b2" in text and "3,500 feature reports" in text


def test_watch_state_stays_bounded_whatever_names_the_records_carry() -> None:
    st = WatchState()
    st.add_metrics(_snap("gateway", 0.0, pid=1, events_in=0))
    st.add_audit(orjson.dumps({"kind": "erasure", "reason": "erasure"}))
    for i in range(5000):  # 5,000 distinct worker names, dead-letter reasons and audit rows
        st.add_metrics(_snap(f"w{i}", 1.0 + i, pid=i, events_in=i))
        st.add_dlq(orjson.dumps({"reason": f"r{i}"}))
        st.add_audit(orjson.dumps({"kind": f"k{i}", "reason": f"r{i}"}))
    st.add_audit(orjson.dumps({"kind": "erasure_rejected", "reason": "late"}))
    assert len(st.instances) == INSTANCES_KEPT and ("w4999", "h", 4999) in st.instances
    assert len(st.dlq) == NAMES_KEPT + 1 and sum(st.dlq.values()) == 5000 and st.dlq["other"] == 5000 - NAMES_KEPT
    assert len(st.audit) == NAMES_KEPT + 2 and sum(st.audit.values()) == 5002  # folded, not lost
    assert st.audit[("erasure", "erasure")] == 1 and st.audit[("erasure_rejected", "other")] == 1
    assert len(st.worker_rows(now=5001.0)) == INSTANCES_KEPT
    out = st.render_plain(now=5001.0)
    assert f"  other             {5000 - NAMES_KEPT}\n" in out and f"workers ({INSTANCES_KEPT})" in out
