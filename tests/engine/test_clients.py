"""The client supervisor (stream.engine.clients): librdkafka's error callbacks, the failures the loop
sees, the recovery budget, and the broker's comeback. The callbacks and the budget are pure units
(no client created); the comeback probes a real broker."""

from __future__ import annotations

import logging
from typing import Any

import pytest
from confluent_kafka import KafkaError

from stream.config import Settings
from stream.engine.clients import ClientFailed, Clients
from stream.engine.contract import EngineFatalError, Out
from stream.engine.health import Progress
from stream.engine.produce import Sink
from tests.engine.fakes import FakeProducer


class Worker:
    name = "tester"
    transactional = False
    consumer_overrides: dict[str, Any] = {}
    resets = 0

    def topics(self) -> list[str]:
        return ["in"]

    def output_topics(self) -> list[str]:
        return ["out"]

    def group(self) -> str:
        return "g"

    def client_id(self) -> str:
        return "streamgate-tester"

    def extra_consumer_config(self) -> dict[str, Any]:
        return {}

    def extra_producer_config(self) -> dict[str, Any]:
        return {}

    def undeliverable(self, out: Out, error: str) -> Out | None:
        return None

    def reset(self) -> None:
        self.resets += 1


def clients(bootstrap: str = "127.0.0.1:1", **settings: Any) -> Clients:
    s = Settings(kafka_bootstrap=bootstrap, **settings)
    return Clients(Worker(), s, bootstrap, log=logging.getLogger("test.clients"), progress=Progress(60.0),
                   rebalance=(lambda *a: None, lambda *a: None, lambda *a: None), on_retry=lambda n: None,
                   on_replaced=lambda o, e: None, on_closed=lambda: None, stopping=lambda: False)


FENCED = KafkaError(KafkaError._FENCED, "fenced", fatal=True)


def test_a_fatal_consumer_error_recreates_both_clients_once():
    c = clients()
    c.on_consumer_error(FENCED)
    assert c.failure == "_FENCED: fenced" and not c.can_deliver
    with pytest.raises(ClientFailed) as raised:
        c.check()
    assert str(raised.value) == "_FENCED: fenced" and not raised.value.producer_only
    c.check()  # reported once: the flags are cleared
    assert c.failure is None


def test_a_fatal_producer_error_replaces_the_producer_alone_and_marks_its_sink():
    c = clients()
    c.on_producer_error(FENCED)  # no sink yet
    with pytest.raises(ClientFailed) as raised:
        c.check()
    assert raised.value.producer_only and not raised.value.keep_consumer
    producer = FakeProducer()
    c.producer = producer  # type: ignore[assignment]
    c.sink = Sink(producer, undeliverable=lambda o, e: None, on_retry=lambda n: None,  # type: ignore[arg-type]
                  on_fatal=c.set_producer_fatal, on_replaced=lambda o, e: None)
    assert c.can_deliver
    c.on_producer_error(FENCED)
    assert c.sink.fatal and not c.can_deliver  # the sink retries nothing more; revoke and shutdown send nothing
    with pytest.raises(ClientFailed) as raised:
        c.check()
    assert raised.value.producer_only


def test_a_consumer_failure_wins_over_a_producer_failure():
    c = clients()
    c.on_producer_error(FENCED)
    c.on_consumer_error(KafkaError(KafkaError.UNKNOWN_MEMBER_ID, "gone", fatal=True))
    with pytest.raises(ClientFailed) as raised:
        c.check()
    assert not raised.value.producer_only
    c.check()  # both flags were cleared


def test_every_broker_down_starts_an_outage_and_other_errors_are_only_logged(caplog):
    c = clients()
    with caplog.at_level(logging.WARNING, "test.clients"):
        c.on_consumer_error(KafkaError(KafkaError._TRANSPORT, "reset"))
    assert c.outage.since is None and c.failure is None and "kafka client error" in caplog.text
    c.on_producer_error(KafkaError(KafkaError._ALL_BROKERS_DOWN, "down"))
    since = c.outage.since
    assert since is not None and c.failure is None
    c.on_consumer_error(KafkaError(KafkaError._ALL_BROKERS_DOWN, "down"))
    assert c.outage.since == since  # the outage keeps its start


class Broken:
    def fatal(self) -> bool:
        raise RuntimeError("boom")


def test_an_exception_in_an_error_callback_never_escapes_into_librdkafka_and_counts_as_fatal():
    c = clients()
    c.on_consumer_error(Broken())  # type: ignore[arg-type]
    assert c.fatal is not None and "could not be handled: RuntimeError: boom" in c.fatal
    c.fatal = None
    c.on_producer_error(Broken())  # type: ignore[arg-type]
    with pytest.raises(ClientFailed) as raised:
        c.check()
    assert raised.value.producer_only


def test_more_recoveries_than_the_budget_exit_with_one_line():
    c = clients(max_client_recoveries=2)
    c.spend("first")
    c.spend("second")
    with pytest.raises(EngineFatalError, match=r"^tester: Kafka client failed 3 times in 120 s, last: third$"):
        c.spend("third")
    assert c.recoveries == 3


def test_a_comeback_keeps_the_consumer():
    failed = ClientFailed("back", keep_consumer=True)
    assert failed.producer_only and failed.keep_consumer


def test_an_unreachable_broker_is_probed_and_reported_not_resynchronised():
    c = clients("127.0.0.1:1")
    c.outage.down(0.0)
    c.broker_back()  # the probe fails: no exception, the outage goes on
    assert c.outage.since == 0.0 and c.progress.problem is not None
    assert c.progress.problem.startswith("broker unreachable for ")
    c.broker_back()  # within a second: not probed again
    assert not c.resubscriber.resync


@pytest.mark.integration
def test_a_broker_that_answers_again_resynchronises_keeping_the_consumer(kafka_bootstrap: str):
    c = clients(kafka_bootstrap)
    c.broker_back()  # no outage: nothing to do
    c.outage.down(0.0)
    c.progress.problem = "broker unreachable for 9 s"
    with pytest.raises(ClientFailed) as raised:
        c.broker_back()
    assert raised.value.keep_consumer and "resynchronising" in str(raised.value)
    assert c.outage.since is None and c.progress.problem is None and c.resubscriber.resync
