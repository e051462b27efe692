"""The gateway engine's metrics in process, on the real broker: Redis down → every batch held is a
Redis error and nothing goes out (fail closed); Redis back → the same events out, exactly once;
the lag gauge shows the backlog while held."""

from __future__ import annotations

import subprocess
import sys
import threading
from collections.abc import Callable
from pathlib import Path

import pytest
import redis
from prometheus_client import generate_latest

from stream.apps.engine import GatewayEngine
from stream.apps.produce import publish
from stream.components import build_gateway
from stream.config import Settings
from stream.dev.stack import find_redis_binary, free_port
from stream.kafka import ensure_topics
from stream.ops.metrics import WorkerMetrics
from stream.synth import ClickstreamGenerator

_APPS_TESTS = str(Path(__file__).resolve().parents[1] / "apps")
if _APPS_TESTS not in sys.path:
    sys.path.insert(0, _APPS_TESTS)
from kafka_helpers import wait_for  # noqa: E402

pytestmark = pytest.mark.integration
N = 120
M = 50


class OwnRedis:
    """A Redis server of this test alone (append-only, so keys survive a restart)."""

    def __init__(self, workdir: Path) -> None:
        self.port = free_port()
        self.dir = workdir
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        self.proc = subprocess.Popen(
            [find_redis_binary(), "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
             "--appendonly", "yes", "--appendfsync", "always", "--dir", str(self.dir)],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        client = redis.Redis(port=self.port, socket_connect_timeout=0.5)
        try:
            wait_for(lambda: _ping(client), timeout=20, what="redis to start")
        finally:
            client.close()

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.terminate()
            self.proc.wait(20)
            self.proc = None


def _ping(client: redis.Redis) -> bool:
    try:
        return bool(client.ping())
    except (redis.RedisError, OSError):
        return False


def test_fail_closed_counts_redis_errors_and_lag(settings_factory: Callable[..., Settings], tmp_path: Path) -> None:
    own = OwnRedis(tmp_path)
    own.start()
    settings = settings_factory(redis_url=own.url, retry_backoff_seconds=0.1, retry_backoff_max_seconds=0.3,
                                topic_partitions=1)
    t = settings.topics
    ensure_topics(settings.kafka_bootstrap_or_dev(), [t.raw, t.protected, t.dlq], partitions=1)
    metrics = WorkerMetrics("gateway")
    engine = GatewayEngine(settings, build_gateway(settings), metrics=metrics)
    own.stop()  # Redis down before the first event: nothing can be protected
    stop = threading.Event()
    errors: list[BaseException] = []

    def run() -> None:
        try:
            engine.run(stop)
        except BaseException as exc:
            errors.append(exc)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    try:
        publish(settings.kafka_bootstrap_or_dev(), t.raw, ClickstreamGenerator(seed=3).events(N))
        wait_for(lambda: metrics.redis_errors >= 3, timeout=90, what="redis errors counted")
        snap = metrics.snapshot()
        assert snap["events_in"] == N and snap["events_out"] == {} and snap["redis_errors"] >= 3
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
    finally:
        stop.set()
        thread.join(60)
        own.stop()
    assert not errors, errors
