"""The gateway engine's metrics in process, on the real broker: Redis down → every batch held is a
Redis error and nothing goes out (fail closed); Redis back → the same events out, exactly once;
the lag gauge shows the backlog while held."""

from __future__ import annotations

from collections.abc import Callable

import pytest
from prometheus_client import generate_latest

from stream.apps.engine import GatewayEngine
from stream.apps.produce import publish
from stream.components import build_gateway
from stream.config import Settings
from stream.kafka import ensure_topics
from stream.ops.metrics import WorkerMetrics
from stream.synth import ClickstreamGenerator
from tests.support.fixtures import OwnRedis
from tests.support.kafka import running_in_thread, wait_for

pytestmark = [pytest.mark.integration, pytest.mark.slow]
N = 120
M = 50


def test_fail_closed_counts_redis_errors_and_lag(settings_factory: Callable[..., Settings], own_redis: OwnRedis) -> None:
    own = own_redis
    settings = settings_factory(redis_url=own.url, retry_backoff_seconds=0.05,
                                topic_partitions=1)
    t = settings.topics
    ensure_topics(settings.kafka_bootstrap_or_dev(), [t.raw, t.protected, t.dlq], partitions=1)
    metrics = WorkerMetrics("gateway")
    engine = GatewayEngine(settings, build_gateway(settings), metrics=metrics)
    own.stop()  # Redis down before the first event: nothing can be protected
    with running_in_thread(engine, "gateway engine"):
        publish(settings.kafka_bootstrap_or_dev(), t.raw, ClickstreamGenerator(seed=3).events(N))
        wait_for(lambda: metrics.redis_errors >= 3, timeout=90, what="redis errors counted")
        snap = metrics.snapshot()
        assert snap["events_in"] == N and snap["events_out"] == {} and snap["redis_errors"] >= 3
        assert snap["engine_retries"]["hold"] >= 3  # every held batch is a retry
        assert metrics.batch_hist.total == 0  # no batch completed
        text = generate_latest(metrics.registry).decode()
        assert 'streamgate_redis_errors_total{worker="gateway"}' in text
        # more events while held: the partitions are paused, so they show as lag
        # (two publishes: the embedded broker's high watermark is the start of the last batch written)
        more = list(ClickstreamGenerator(seed=4).events(M))
        publish(settings.kafka_bootstrap_or_dev(), t.raw, more[:-1])
        publish(settings.kafka_bootstrap_or_dev(), t.raw, more[-1:])
        wait_for(lambda: metrics.lag.get(0, 0) >= M - 1, timeout=60, what="the backlog as lag")
        own.start()  # Redis back: the held batch goes out once
        wait_for(lambda: metrics.out.get("protected", 0) >= N + M, timeout=90, what="everything emitted")
        wait_for(lambda: metrics.lag.get(0) == 0, timeout=30, what="lag 0 after the batch")
        snap = metrics.snapshot()
        assert snap["events_out"] == {"protected": N + M} and snap["events_in"] == N + M
        assert snap["dek_cache"]["created"] > 0 and metrics.batch_hist.total >= 1
