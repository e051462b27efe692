"""The broker comes back while a batch is held, and the rewind to the committed offsets fails (the
coordinator still loading, right after a broker restart). The recovery dropped the held batch:
its records must be read again (at-least-once), never skipped by a consumer that kept its group
membership and carried on from its position. Real broker and Redis; the comeback is the engine's
own (librdkafka's all-brokers-down callback, then a probe that answers); the one injected failure
is librdkafka's answer to ``committed()`` (and, in one case, to the fallback's ``seek()``). Last,
a pure unit: results whose outputs were in flight count among the dropped records too."""

from __future__ import annotations

import threading
from typing import Any

import orjson
import pytest
from confluent_kafka import Consumer, KafkaError, KafkaException, TopicPartition

import stream.engine.clients as clients_mod
from stream.apps.engine import GatewayEngine
from stream.apps.produce import publish
from stream.components import build_gateway
from stream.config import Settings
from stream.engine import StreamEngine
from stream.engine.clients import ClientFailed
from stream.engine.contract import Out, Record, Result
from stream.engine.produce import Sink
from stream.errors import KeyUnavailableError
from stream.kafka import ensure_topics
from stream.synth import ClickstreamGenerator
from tests.engine.fakes import FakeProducer
from tests.support.kafka import read_topic, running_in_thread, wait_for

pytestmark = [pytest.mark.integration]


class LoadingCoordinator(Consumer):
    """A consumer whose ``committed()`` fails once ``armed`` (COORDINATOR_LOAD_IN_PROGRESS, as after
    a broker restart), and whose next ``seek_failures`` seeks fail after that."""

    armed = False
    seek_failures = 0
    committed_failed = 0
    seeks_failed = 0
    reasons: list[str | None] = []  # the engine's not-ready reason at each failing seek
    engine: Any = None

    def committed(self, *a: Any, **kw: Any) -> Any:
        cls = LoadingCoordinator
        if cls.armed:
            cls.armed = False
            cls.committed_failed += 1
            raise KafkaException(KafkaError(KafkaError.COORDINATOR_LOAD_IN_PROGRESS, "coordinator loading"))
        return super().committed(*a, **kw)

    def seek(self, *a: Any, **kw: Any) -> Any:
        cls = LoadingCoordinator
        if cls.committed_failed and cls.seeks_failed < cls.seek_failures:
            cls.seeks_failed += 1
            cls.reasons.append(cls.engine.not_ready_reason)
            raise KafkaException(KafkaError(KafkaError._STATE, "partition not ready"))
        return super().seek(*a, **kw)


def _committed_and_end(bootstrap: str, group: str, topic: str) -> tuple[int, int]:
    """The group's committed offset and the log end (read, not asked: the embedded broker's high
    watermark is its last batch's, ``tests.support.kafka.read_topic``)."""
    c = Consumer({"bootstrap.servers": bootstrap, "group.id": group, "enable.auto.commit": False})
    try:
        committed = c.committed([TopicPartition(topic, 0)], timeout=10)[0].offset
    finally:
        c.close()
    return committed, max(r.offset for r in read_topic(bootstrap, topic, idle=0.5)) + 1


@pytest.mark.parametrize("seek_failures", [0, 2])
def test_records_a_comeback_dropped_are_read_again_when_the_rewind_fails(settings_factory, monkeypatch,
                                                                          seek_failures):
    s = settings_factory(retry_backoff_seconds=0.2, commit_interval_seconds=0.2)
    b = s.kafka_bootstrap_or_dev()
    ensure_topics(b, [s.topics.raw, s.topics.protected, s.topics.dlq], partitions=1)
    for name, value in (("armed", False), ("seek_failures", seek_failures), ("committed_failed", 0),
                        ("seeks_failed", 0), ("reasons", [])):
        monkeypatch.setattr(LoadingCoordinator, name, value)
    monkeypatch.setattr(clients_mod, "Consumer", LoadingCoordinator)
    engine = GatewayEngine(s, build_gateway(s))
    monkeypatch.setattr(LoadingCoordinator, "engine", engine)
    core = engine.gateway
    real = core.process
    calls = 0

    def process(records: Any) -> Any:
        nonlocal calls
        calls += 1
        if calls == 1:  # every broker looked away (librdkafka's error callback) and Redis blipped: held
            engine.clients.on_consumer_error(KafkaError(KafkaError._ALL_BROKERS_DOWN))
            LoadingCoordinator.armed = True
            raise KeyUnavailableError("redis blip")
        return real(records)

    core.process = process  # type: ignore[method-assign]
    first, later = list(ClickstreamGenerator(seed=4).events(300)), list(ClickstreamGenerator(seed=5).events(50))
    with running_in_thread(engine, "gateway"):
        wait_for(lambda: engine.ready, what="ready")
        publish(b, s.topics.raw, first)
        wait_for(lambda: engine.clients.recoveries >= 1 and LoadingCoordinator.committed_failed == 1,
                 what="the comeback and its failed rewind")
        publish(b, s.topics.raw, later)
        want = {e["event_id"] for e in first + later}
        got: set[str] = set()

        def delivered() -> bool:
            got.update(orjson.loads(r.value or b"")["event_id"] for r in read_topic(b, s.topics.protected, idle=0.5))
            return want <= got

        try:
            wait_for(delivered, what="every event delivered", timeout=30)
        finally:
            print(f"\nREWIND-FAIL seek_failures={seek_failures}: delivered {len(want & got)} of {len(want)}; "
                  f"recoveries={engine.clients.recoveries} seek retries={LoadingCoordinator.seeks_failed} "
                  f"ready={engine.ready}")
        wait_for(lambda: engine.ready, what="ready again")
        assert LoadingCoordinator.seeks_failed == seek_failures == engine.clients.seek_retry.retries
        assert engine.retries["recovery"] == engine.clients.recoveries + seek_failures  # each one counted
        # between failed seeks the worker says why it is not ready (the first one: still recovering)
        assert all("paused at records a recovery dropped" in (r or "") for r in LoadingCoordinator.reasons[1:])
    committed, end = _committed_and_end(b, s.consumer_group, s.topics.raw)
    print(f"REWIND-FAIL committed offset {committed}, log end {end}")
    assert end == 350 and committed == end


def test_a_recovery_seeks_back_to_the_lowest_record_held_or_in_flight(monkeypatch):
    """Pure unit (no broker): the offsets ``_recover`` hands the rewind's fallback are the lowest
    dropped per partition, of the held batch and of results whose outputs are still in flight."""
    class Echo(StreamEngine):
        name = "tester"

        def topics(self) -> list[str]:
            return ["in"]

        def process(self, records: list[Record]) -> Result:
            return Result([Out("out", r.value) for r in records])

    e = Echo(Settings(kafka_bootstrap="127.0.0.1:1"))
    e.clients.sink = Sink(FakeProducer(), undeliverable=lambda o, err: None, on_retry=lambda n: None,  # type: ignore[arg-type]
                          on_fatal=lambda why: None, on_replaced=lambda o, err: None)
    e.hold.records = [Record("in", 0, o, b"a") for o in (10, 11, 12)] + [Record("in", 1, 5, b"b")]
    e._process_held(threading.Event())  # in flight: no delivery report served yet
    assert e._queue.inflight == 4
    e.hold.records = [Record("in", 0, 13, b"a"), Record("in", 2, 7, b"c")]  # held
    # results delivered before, not committed: partition 0 up to 10 (sent, unanswered), 3 up to 40
    e._queue.sending({("in", 0): 10})
    e._queue.pending.update({("in", 3): 40})
    seen: dict[Any, int] = {}
    calls: list[Any] = []

    def recreate(failed: Any, *, rewound: Any, dropped: Any, sought: Any) -> None:
        seen.update(dropped)
        calls.append((rewound, sought))

    monkeypatch.setattr(e.clients, "recreate", recreate)
    e._recover(ClientFailed("the broker is back", keep_consumer=True))
    assert seen == {("in", 0): 10, ("in", 1): 5, ("in", 2): 7}
    assert not e.hold.records and not e._queue.tickets and not e._queue.pending
    (rewound, sought), = calls
    rewound()  # rewound to the committed offsets: everything after them is read again, nothing owed
    assert not e._queue.pending
    sought()  # sought to the dropped records: what was delivered below them is still owed its commit
    assert e._queue.pending == {("in", 0): 10, ("in", 3): 40}
