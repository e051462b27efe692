"""Stall detection (invariant 6) on a real broker: a worker with lag whose processing blocks turns
not ready with the stall reason, /readyz's answer and the streamgate_ready gauge agree, the
detector counts the stall once, and the worker is ready again once it moves."""

from __future__ import annotations

import threading
from typing import Any

import pytest
from confluent_kafka import Consumer, TopicPartition

from stream.apps.engine import GatewayEngine
from stream.apps.produce import publish
from stream.components import build_gateway
from stream.kafka import ensure_topics
from stream.ops.worker import OpsHandle
from stream.synth import ClickstreamGenerator
from tests.support.kafka import running_in_thread, wait_for

pytestmark = [pytest.mark.integration]


def _group_lag(bootstrap: str, group: str, topic: str) -> int:
    """Records of ``topic`` past the group's committed offsets, asked of the broker (not the worker)."""
    c = Consumer({"bootstrap.servers": bootstrap, "group.id": group, "enable.auto.commit": False})
    try:
        parts = c.list_topics(topic, timeout=10).topics[topic].partitions
        lag = 0
        for tp in c.committed([TopicPartition(topic, p) for p in parts], timeout=10):
            low, high = c.get_watermark_offsets(tp, timeout=10)
            lag += high - (tp.offset if tp.offset >= 0 else low)
        return lag
    finally:
        c.close()


def test_a_blocked_worker_with_lag_turns_not_ready_with_the_stall_reason(settings_factory):
    s = settings_factory(stall_seconds=2.0, batch_max_events=50)
    b = s.kafka_bootstrap_or_dev()
    ensure_topics(b, [s.topics.raw, s.topics.protected, s.topics.dlq], partitions=1)
    engine = GatewayEngine(s, build_gateway(s))
    core = engine.gateway
    real = core.process
    calls = 0
    blocked, release = threading.Event(), threading.Event()

    def process(records: Any) -> Any:  # the pure core blocks on its second batch: a stuck worker
        nonlocal calls
        calls += 1
        if calls == 2:
            blocked.set()
            release.wait(60)
        return real(records)

    core.process = process  # type: ignore[method-assign]
    handle = OpsHandle(s, "gateway", engine.metrics, alive=lambda: engine.thread.is_alive(),  # type: ignore[attr-defined]
                       ready_fn=lambda: engine.ready, reason_fn=lambda: engine.not_ready_reason, cache_seconds=0.0)
    with running_in_thread(engine, "gateway"):
        wait_for(lambda: engine.ready, what="ready")
        assert engine.progress.stalls == 0
        publish(b, s.topics.raw, list(ClickstreamGenerator(seed=4).events(500)))
        wait_for(blocked.is_set, what="the blocked batch")
        wait_for(lambda: not engine.ready, what="not ready while blocked with lag")
        status = handle.status()
        assert not status.ready and status.reason is not None
        assert "no progress for" in status.reason and "with lag" in status.reason
        assert engine.metrics.ready == 0  # the streamgate_ready gauge says the same
        assert _group_lag(b, s.consumer_group, s.topics.raw) > 0  # it really had work (the broker's view)
        release.set()
        wait_for(lambda: engine.stats.emitted >= 500, what="every event once unblocked")
        assert engine.progress.stalls == 1  # the detector fired, once
        wait_for(lambda: handle.status().ready, what="ready again")
        assert engine.metrics.ready == 1
