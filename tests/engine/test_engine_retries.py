"""``streamgate_engine_retries_total{cause}``: every failure the engine retries is counted, and
periodic work that keeps failing turns the worker not ready (real broker; the failures are a
worker's hook failing, or injected at the confluent-kafka boundary; commits:
``test_commit_failures.py``; recoveries: ``test_engine_exits.py``; holds:
``tests/ops/test_ops_engine_metrics.py``; produce re-queues: ``test_produce.py``)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from stream.engine import StreamEngine
from stream.engine.contract import Record, Result
from stream.errors import KeyUnavailableError
from stream.kafka import ensure_topics
from stream.ops.metrics import WorkerMetrics
from tests.support.kafka import running_in_thread, wait_for

pytestmark = [pytest.mark.integration]


class FailingTicks(StreamEngine):
    """A worker whose periodic work fails while ``broken`` (its key store is down)."""

    name = "shredder"
    tick_interval = 0.1
    needs_partitions = False

    def __init__(self, settings: Any, topic: str, **kw: Any) -> None:
        super().__init__(settings, **kw)
        self.topic = topic
        self.broken = True
        self.ticks = 0

    def topics(self) -> list[str]:
        return [self.topic]

    def group(self) -> str:
        return f"{self.settings.consumer_group}-ticks"

    def process(self, records: list[Record]) -> Result:
        return Result()

    def tick(self) -> Result | None:
        self.ticks += 1
        if self.broken:
            raise KeyUnavailableError("key store unreachable (injected)")
        return None


def test_periodic_work_failing_longer_than_the_stall_bound_is_counted_and_not_ready(
        settings_factory: Callable[..., Any]) -> None:
    s = settings_factory(stall_seconds=2.0, watchdog_seconds=300.0, retry_backoff_seconds=0.01)
    ensure_topics(s.kafka_bootstrap_or_dev(), [s.topics.erasure], partitions=1)
    metrics = WorkerMetrics("shredder")
    engine = FailingTicks(s, s.topics.erasure, metrics=metrics)
    with running_in_thread(engine, "ticks"):
        wait_for(lambda: metrics.retries["tick"] >= 3, timeout=60, what="tick failures counted")
        wait_for(lambda: not engine.ready and engine.joined, timeout=30, what="not ready: the ticks fail")
        reason = engine.not_ready_reason
        assert reason is not None and reason.startswith("periodic work failing for "), reason
        assert "key store unreachable" in reason
        assert engine.retries["tick"] == metrics.retries["tick"]
        engine.broken = False  # the dependency is back: the next tick clears it
        wait_for(lambda: engine.ready, timeout=30, what="ready again")
        assert metrics.snapshot()["engine_retries"]["tick"] >= 3
