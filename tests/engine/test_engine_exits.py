"""The engine's exits, on a real broker: the watchdog (not ready, no progress for
``watchdog_seconds``) and more than ``max_client_recoveries`` fatal client errors in 120 s."""

from __future__ import annotations

import logging
import time

import pytest
from confluent_kafka import Producer

from stream.apps.engine import GatewayEngine
from stream.apps.produce import publish
from stream.components import build_gateway
from stream.engine import EngineFatalError
from stream.engine.core import instance_id
from stream.kafka import ensure_topics, producer_config
from stream.synth import ClickstreamGenerator
from tests.support.kafka import running_in_thread, wait_for

pytestmark = [pytest.mark.integration]


def test_the_watchdog_ends_a_worker_that_stays_not_ready(settings_factory, own_broker, caplog):
    """The broker goes away for good: the worker is not ready ("broker unreachable") and makes no
    progress; after watchdog_seconds it exits with one line naming the watchdog and the reason."""
    s = settings_factory(kafka_bootstrap=own_broker.bootstrap, watchdog_seconds=4.0)
    ensure_topics(own_broker.bootstrap, [s.topics.raw, s.topics.protected, s.topics.dlq], partitions=1)
    engine = GatewayEngine(s, build_gateway(s))
    caplog.set_level(logging.INFO, logger="streamgate")
    with pytest.raises(AssertionError, match="crashed"), running_in_thread(engine, "gateway"):
        wait_for(lambda: engine.ready, what="ready")
        own_broker.kill()
        wait_for(lambda: not engine.thread.is_alive(), timeout=120, what="the watchdog's exit")  # type: ignore[attr-defined]
    (error,) = engine.errors  # type: ignore[attr-defined]
    assert isinstance(error, EngineFatalError)
    assert "watchdog" in str(error) and "not ready and no progress" in str(error)
    assert "broker unreachable" in str(error) or "waiting for the consumer group" in str(error)
    assert engine.fatal_error == str(error) and not engine.healthy and not engine.ready


def test_a_worker_that_is_ready_or_progressing_outlives_the_watchdog(settings_factory):
    """The converse: a ready worker with nothing to do lives past two watchdog bounds (the bound
    must exceed a group join: a worker joining is not ready)."""
    s = settings_factory(watchdog_seconds=5.0)
    ensure_topics(s.kafka_bootstrap_or_dev(), [s.topics.raw, s.topics.protected, s.topics.dlq], partitions=1)
    engine = GatewayEngine(s, build_gateway(s))
    with running_in_thread(engine, "gateway"):
        wait_for(lambda: engine.ready, what="ready")
        publish(s.kafka_bootstrap_or_dev(), s.topics.raw, list(ClickstreamGenerator(seed=1).events(50)))
        wait_for(lambda: engine.stats.emitted >= 50, what="the events")
        ok = engine.thread  # type: ignore[attr-defined]
        wait_for(lambda: engine.progress.moved_at + 12.0 < time.monotonic() or not ok.is_alive(), what="12 s idle")
        assert ok.is_alive() and engine.fatal_error is None


def test_more_fatal_client_errors_than_max_client_recoveries_in_120_s_exit(settings_factory):
    """A fence of the transactional producer is a fatal client error. With max_client_recoveries=0
    the first one is already one too many: the worker exits with one line saying so."""
    s = settings_factory(processing_guarantee="exactly_once", max_client_recoveries=0, batch_max_events=50)
    b = s.kafka_bootstrap_or_dev()
    ensure_topics(b, [s.topics.raw, s.topics.protected, s.topics.dlq], partitions=1)
    engine = GatewayEngine(s, build_gateway(s))
    events = iter(ClickstreamGenerator(seed=2).events(100))
    with pytest.raises(AssertionError, match="crashed"), running_in_thread(engine, "gateway"):
        publish(b, s.topics.raw, [next(events) for _ in range(20)])
        wait_for(lambda: engine.stats.emitted >= 20, what="the first events")
        assert engine.fatal_error is None and engine.thread.is_alive()  # type: ignore[attr-defined]
        fencer = Producer(producer_config(b, **{"transactional.id": f"{s.consumer_group}-{instance_id()}"}))
        fencer.init_transactions(30)  # the broker bumps the epoch: the engine's producer is fenced
        publish(b, s.topics.raw, [next(events) for _ in range(20)])  # its next transaction finds out
        wait_for(lambda: not engine.thread.is_alive(), what="the exit")  # type: ignore[attr-defined]
    (error,) = engine.errors  # type: ignore[attr-defined]
    assert isinstance(error, EngineFatalError) and "Kafka client failed 1 times in 120 s" in str(error)
    assert engine.fatal_error == str(error) and not engine.healthy
    assert engine.metrics.retries["recovery"] == 1  # streamgate_engine_retries_total{cause="recovery"}
