"""Readiness tells the same truth everywhere: ``/readyz``, the ``ops.metrics`` snapshot (so
``streamgate ops watch``) and the ``streamgate_ready`` gauge all come from
:meth:`stream.ops.worker.OpsHandle.status`, with a reason when not ready.

The integration tests run a real ``streamgate gateway`` subprocess on the real broker and
Redis and never ask its ``/readyz`` (nor ``/metrics``) before reading what ``ops watch``
shows: the snapshot must carry readiness on its own (before, it only echoed the last
``/readyz`` answer, so a worker nobody probed showed ``ready=no``)."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson
import pytest

from stream.config import Settings
from stream.dev.stack import free_port
from stream.ops.metrics import WorkerMetrics
from stream.ops.watch import WatchState, feed, safe_reason, watch_reader
from stream.ops.worker import STOPPING_REASON, OpsHandle, Readiness, snapshot_record
from tests.support.gateway_worker import GatewayWorker, gateway_worker, http_get

pytestmark = pytest.mark.slow

Factory = Callable[..., Settings]


# --------------------------------------------------------------------------- OpsHandle.status (real deps)
def _handle(settings: Settings, *, alive: bool = True, ready: bool = True,
            reason: Callable[[], str | None] | None = None) -> OpsHandle:
    return OpsHandle(settings, "gateway", WorkerMetrics("gateway"), lambda: alive, lambda: ready, None, reason)


def test_status_ready_with_reachable_dependencies(settings_factory: Factory) -> None:
    h = _handle(settings_factory())
    st = h.status()
    assert st == Readiness(True, {"alive": True, "gateway": True, "broker": True, "kek": True, "redis": True})
    assert st.body() == {"ready": True}
    assert h.metrics.ready == 1 and h.metrics.snapshot()["ready"] is True


def test_status_not_ready_gives_the_workers_own_reason_then_each_dependency(settings_factory: Factory) -> None:
    s = settings_factory(redis_url=f"redis://127.0.0.1:{free_port()}/0")
    h = _handle(s, ready=False, reason=lambda: "no progress for 45 s with lag 3100")
    st = h.status()
    assert not st.ready
    assert st.checks == {"alive": True, "gateway": False, "broker": True, "kek": True, "redis": False}
    assert st.reason == "no progress for 45 s with lag 3100; redis unreachable (ConnectionError)"
    assert st.body() == {"ready": False, "checks": st.checks, "reason": st.reason}
    assert h.metrics.ready == 0 and h.metrics.deps == {"broker": 1, "kek": 1, "redis": 0}


def test_status_generic_reasons_and_a_broken_reason_callable(settings_factory: Factory) -> None:
    s = settings_factory()
    assert _handle(s, ready=False).status().reason == \
        "gateway is not ready yet (no partitions assigned, or still starting)"
    assert _handle(s, alive=False).status().reason == "gateway is not running"

    def broken() -> str:
        raise RuntimeError("boom")

    assert _handle(s, alive=False, reason=broken).status().reason == "gateway is not running"
    # the worker's reason is only asked when the worker itself is not ready
    assert _handle(s, reason=lambda: "fatal client error").status().reason is None


def test_status_names_an_unreachable_broker(settings_factory: Factory) -> None:
    address = f"127.0.0.1:{free_port()}"
    st = _handle(settings_factory(kafka_bootstrap=address)).status()
    assert not st.ready and st.checks["broker"] is False
    assert st.reason == f"broker unreachable at {address}"


def test_snapshot_record_carries_the_status(settings_factory: Factory) -> None:
    h = _handle(settings_factory(redis_url=f"redis://127.0.0.1:{free_port()}/0"))
    st = h.status()
    rec = snapshot_record(h.metrics, "gateway", st)
    assert rec["ready"] is False and rec["reason"] == st.reason and rec["checks"] == st.checks


# --------------------------------------------------------------------------- what ops watch prints
def test_watch_shows_the_reason_and_never_a_hostile_one() -> None:
    st = WatchState()
    st.add_metrics(orjson.dumps({"worker": "gateway", "ts": 1.0, "ready": False,
                                 "reason": "no progress for 45 s with lag 3100",
                                 "checks": {"alive": True, "gateway": False}}))
    st.add_metrics(orjson.dumps({"worker": "privatizer", "ts": 1.0, "ready": False,
                                 "reason": "user alice@example.org tk1_abcdef"}))
    st.add_metrics(orjson.dumps({"worker": "shredder", "ts": 1.0, "ready": False,
                                 "checks": {"alive": True, "redis": False, "carol@example.org": False}}))
    st.add_metrics(orjson.dumps({"worker": "learner", "ts": 1.0, "ready": True, "reason": None}))
    out = st.render_plain(now=2.0)
    assert "ready=no age=1.0s\n    not ready: no progress for 45 s with lag 3100\n" in out
    assert "    not ready: other\n" in out
    assert "    not ready: failed checks: other, redis\n" in out
    assert "alice" not in out and "tk1_" not in out and "carol" not in out
    assert out.count("not ready:") == 3
    from rich.console import Console

    console = Console(record=True, width=200)
    console.print(st.render_rich(now=2.0))
    assert "no (no progress for 45 s with lag 3100)" in console.export_text()


def test_safe_reason() -> None:
    assert safe_reason("fatal client error: Local: Broker transport failure") == \
        "fatal client error: Local: Broker transport failure"
    assert safe_reason("line one\nline 'two' {x}") == "line one line two x"
    assert safe_reason("token tk1_abc") == "other"
    assert safe_reason("") is None and safe_reason(None) is None
    assert len(safe_reason("x" * 500) or "") == 200


# --------------------------------------------------------------------------- live: /readyz == ops watch
def _watched(w: GatewayWorker, settings: Settings, until: Callable[[dict[str, Any]], bool],
             timeout: float = 90.0) -> dict[str, Any]:
    """The gateway's row as ``ops watch`` computes it (same code, in-process), once ``until(row)``."""
    reader, handlers = watch_reader(w.bootstrap, settings)  # assigns the metrics topic once the worker created it
    state = WatchState()
    deadline = time.monotonic() + timeout
    with reader:
        while time.monotonic() < deadline:
            if w.proc.poll() is not None:
                raise AssertionError(f"the gateway exited:\n{w.tail()}")
            feed(state, handlers, reader.poll())
            rows = [r for r in state.worker_rows() if r["worker"] == "gateway"]
            if rows and until(rows[0]):
                return rows[0]
    raise AssertionError(f"ops watch never showed the expected gateway row: {state.worker_rows()}\n{w.tail()}")


def _settings_of(w: GatewayWorker) -> Settings:
    return Settings(kafka_bootstrap=w.bootstrap, topics=w.topics)


@pytest.mark.integration
def test_ops_watch_agrees_with_readyz_when_ready(kafka_bootstrap: str, redis_url: str, tmp_path: Path) -> None:
    with gateway_worker(kafka_bootstrap, redis_url, tmp_path, wait_ready=False) as w:  # /readyz never asked
        row = _watched(w, _settings_of(w), lambda r: r["ready"])
        assert row["reason"] is None
        status, body, _ = http_get(w.url("/readyz"), timeout=10)
        assert (status, json.loads(body)) == (200, {"ready": True})
        r = w.run("ops", "watch", "--once", "--idle-timeout", "2")
        assert r.returncode == 0, r.stderr
        line = next(ln for ln in r.stdout.splitlines() if ln.startswith("  gateway "))
        assert " ready=yes" in line and "not ready:" not in r.stdout


@pytest.mark.integration
def test_ops_watch_shows_the_readyz_reason_when_not_ready(kafka_bootstrap: str, tmp_path: Path) -> None:
    dead_redis = f"redis://127.0.0.1:{free_port()}/0"
    with gateway_worker(kafka_bootstrap, dead_redis, tmp_path, wait_ready=False) as w:
        # once the engine has joined its group (it holds nothing: no records), Redis is the only reason
        holds = _watched(w, _settings_of(w), lambda r: r["reason"] == "redis unreachable (ConnectionError)")
        assert not holds["ready"]
        status, body, _ = http_get(w.url("/readyz"), timeout=10)
        readyz = json.loads(body)
        assert status == 503 and readyz["reason"] == holds["reason"]
        assert readyz["checks"] == {"alive": True, "gateway": True, "broker": True, "redis": False, "kek": True}
        r = w.run("ops", "watch", "--once", "--idle-timeout", "2")
        assert r.returncode == 0, r.stderr
        assert " ready=no" in r.stdout
        assert f"    not ready: {readyz['reason']}\n" in r.stdout


def test_a_stopping_snapshot_is_not_ready_and_says_why() -> None:
    m = WorkerMetrics("learner")
    rec = snapshot_record(m, "learner", Readiness(True, {"alive": True}), interval=10.0, stopping=True,
                          details={"instance": "a1", "aggregator": {"aggregating": True, "version": 3, "pending": 1,
                                                                    "secret": "x"}, "model": "m"})
    assert (rec["state"], rec["ready"], rec["reason"], rec["interval_s"]) == ("stopping", False, STOPPING_REASON, 10.0)
    assert rec["instance"] == "a1" and rec["aggregator"] == {"aggregating": True, "version": 3, "pending": 1}
    running = snapshot_record(m, "learner", Readiness(True, {"alive": True}), interval=10.0)
    assert (running["state"], running["ready"]) == ("running", True) and "instance" not in running


WATCHDOG_WHY = ("EngineFatalError: gateway: watchdog: not ready and no progress for 61 s "
                "(bound STREAMGATE_WATCHDOG_SECONDS=60): batch held")


def test_a_failed_workers_snapshots_say_failed_with_a_safe_reason() -> None:
    """A worker whose engine failed is not shown as a graceful stop: its snapshots (the last ones of
    its shutdown too) say ``failed`` with why; a reason naming a token is not published."""
    m = WorkerMetrics("gateway")
    for stopping in (False, True):
        rec = snapshot_record(m, "gateway", Readiness(True, {"alive": True}), interval=10.0, stopping=stopping,
                              failure=WATCHDOG_WHY)
        assert (rec["state"], rec["ready"], rec["reason"]) == ("failed", False, WATCHDOG_WHY)
    assert snapshot_record(m, "gateway", stopping=True, failure="ValueError: tk1_abc")["reason"] == "other"
    assert snapshot_record(m, "gateway", stopping=True)["state"] == "stopping"


def test_the_hosting_hands_the_engines_failure_to_the_publisher(settings_factory: Factory) -> None:
    """``worker_app`` wires :meth:`EngineService.failure` into the ops handle: the error's class and
    a streamgate error's message (the engine's fatal reason); another error's message is withheld."""
    from types import SimpleNamespace

    from stream.apps.hosting import worker_app
    from stream.engine.contract import EngineFatalError

    app = worker_app(settings_factory(), "gateway", lambda m: SimpleNamespace(ready=True), lambda e: {})
    svc, ops = app.streamgate_service, app.streamgate_ops
    assert ops.failure() is None
    svc.engine = SimpleNamespace(ready=False, not_ready_reason="waiting for the consumer group")
    svc.failed = EngineFatalError(WATCHDOG_WHY.removeprefix("EngineFatalError: "))
    assert ops.failure() == WATCHDOG_WHY
    svc.failed = ValueError("not JSON: {'email': 'someone@example.org'}")
    assert ops.failure() == "ValueError (message withheld); waiting for the consumer group"
    assert "example.org" not in (svc.reason() or "")


@pytest.mark.integration
def test_a_graceful_stop_publishes_a_last_stopping_snapshot(kafka_bootstrap: str, redis_url: str,
                                                            tmp_path: Path) -> None:
    """SIGTERM to a real gateway worker: its last ops.metrics record says it is stopping (not ready),
    with its final counts, and ops watch then shows it stopped with rates at 0."""
    from stream.apps.produce import publish
    from stream.synth import ClickstreamGenerator
    from tests.support.gateway_worker import wait_fresh_snapshot
    from tests.support.kafka import read_topic
    from tests.support.workers import stop_process

    with gateway_worker(kafka_bootstrap, redis_url, tmp_path) as w:
        assert publish(w.bootstrap, w.topics.raw, list(ClickstreamGenerator(seed=3).events(80))) == 80
        wait_fresh_snapshot(w, 80)
        stop_process(w.proc)
        assert w.proc.returncode == 0, w.tail()
    records = read_topic(kafka_bootstrap, w.topics.metrics, idle=2.0)
    snaps = sorted((orjson.loads(r.value) for r in records), key=lambda s: s["ts"])
    last = snaps[-1]
    assert (last["state"], last["ready"], last["reason"]) == ("stopping", False, STOPPING_REASON)
    assert last["events_in"] == 80 and last["interval_s"] == 1.0
    assert all(s["state"] == "running" for s in snaps if s["state"] != "stopping")
    assert snaps[0]["state"] == "running"
    st = WatchState()
    for r in records:
        st.add_metrics(r.value)
    (row,) = st.worker_rows(now=last["ts"] + 0.5)
    assert (row["status"], row["ready"], row["in_rate"], row["out_rate"]) == ("stopped", False, 0.0, 0.0)


@pytest.mark.integration
def test_a_gateway_that_hits_its_watchdog_publishes_failed_not_a_graceful_stop(kafka_bootstrap: str,
                                                                                tmp_path: Path) -> None:
    """Redis unreachable with events to protect: the batch is held, the watchdog ends the worker
    (exit 1), and its snapshots say ``failed`` with the watchdog's line, never ``stopping``."""
    from stream.apps.produce import publish
    from stream.synth import ClickstreamGenerator
    from tests.support.kafka import read_topic

    dead_redis = f"redis://127.0.0.1:{free_port()}/0"
    with gateway_worker(kafka_bootstrap, dead_redis, tmp_path, wait_ready=False,
                        STREAMGATE_WATCHDOG_SECONDS="8") as w:
        assert publish(w.bootstrap, w.topics.raw, list(ClickstreamGenerator(seed=4).events(20))) == 20
        w.proc.wait(120)
        assert w.proc.returncode == 1, w.tail()
    records = read_topic(kafka_bootstrap, w.topics.metrics, idle=2.0)
    snaps = sorted((orjson.loads(r.value) for r in records), key=lambda s: s["ts"])
    last = snaps[-1]
    assert (last["state"], last["ready"]) == ("failed", False), last
    assert last["reason"].startswith("EngineFatalError: gateway: watchdog: not ready and no progress"), last
    assert all(s["state"] != "stopping" for s in snaps)
    st = WatchState()
    for r in records:
        st.add_metrics(r.value)
    (row,) = st.worker_rows(now=last["ts"] + 0.5)
    assert (row["status"], row["ready"], row["reason"]) == ("failed", False, f"failed: {last['reason']}")


def test_a_federated_learners_snapshot_names_its_instance_and_whether_it_aggregates() -> None:
    """From the real engine's /healthz counters (no broker needed to build it) to the ops watch row."""
    import base64
    import os

    from stream.apps.federated import FederatedLearnerEngine

    s = Settings(kafka_bootstrap="127.0.0.1:1", master_key=base64.b64encode(os.urandom(32)).decode(),
                 learn_federated=True)
    st = WatchState()
    for i, aggregate in enumerate((True, False)):
        m = WorkerMetrics("learner")
        engine = FederatedLearnerEngine(s, metrics=m, aggregate=aggregate)
        rec = snapshot_record(m, "learner", Readiness(True, {"alive": True}), interval=10.0, details=engine.as_dict())
        assert rec["instance"] == engine.instance
        assert rec.get("aggregator") == ({"aggregating": False, "version": 0, "pending": 0} if aggregate else None)
        if aggregate:
            rec["aggregator"]["aggregating"] = True  # as once it holds the updates partition
        rec.update({"pid": 100 + i, "ts": 50.0})
        st.add_metrics(orjson.dumps(rec))
    rows = st.worker_rows(now=51.0)
    assert sorted((r["worker"], str(r["aggregating"])) for r in rows) == [("learner", "None"), ("learner", "True")]
    assert "aggregator: yes (merges the updates)" in st.render_plain(now=51.0)
