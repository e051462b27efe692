"""Ops endpoints and the metrics publisher, added to any streamgate Faust worker.

``install_ops(app, settings, worker=..., metrics=..., alive=..., details=..., ready=...)``
adds to the app's web server:

* ``GET /metrics`` - Prometheus text exposition of ``metrics.registry``;
* ``GET /healthz`` - alive: ``{"ok": bool, "<worker>": details()}``, 200 or 503;
* ``GET /readyz`` - ready: alive, the worker's own condition (``ready()``, e.g. the
  gateway holds partitions) and every dependency reachable: the Kafka broker
  (metadata request), Redis (PING) and the KEK (keyring loads from the settings).
  The dependency checks run in a thread, each with a short timeout, and are cached
  for :attr:`OpsHandle.cache_seconds`. Body ``{"ready": true}`` (200), or
  ``{"ready": false, "checks": {...}}`` (503) naming what is missing.

and a service that publishes ``metrics.snapshot()`` plus ``worker``, ``host``, ``pid``
and ``ts`` (unix seconds) to ``settings.topics.metrics`` (key = worker name) every
``settings.metrics_interval_seconds``, and one last time at stop.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import faust
import orjson
from confluent_kafka import KafkaException, Producer
from mode import Service
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from stream.config import Settings
from stream.ops.metrics import WorkerMetrics

__all__ = ["OpsHandle", "OpsService", "install_ops", "snapshot_record"]

log = logging.getLogger("streamgate.ops")

_CHECK_TIMEOUT = 2.0


def snapshot_record(metrics: WorkerMetrics, worker: str) -> dict[str, Any]:
    """The ``ops.metrics`` record: the snapshot plus who and when."""
    snap = metrics.snapshot()
    snap.update({"worker": worker, "host": socket.gethostname(), "pid": os.getpid(), "ts": round(time.time(), 3)})
    return snap


@dataclass
class OpsHandle:
    """What :func:`install_ops` installed; ``check()`` runs (or returns the cached) readiness checks."""

    settings: Settings
    worker: str
    metrics: WorkerMetrics
    alive: Callable[[], bool]
    ready_fn: Callable[[], bool] | None = None
    details: Callable[[], dict[str, Any]] | None = None
    cache_seconds: float = 3.0
    service: OpsService | None = None
    _checked_at: float = field(default=float("-inf"), repr=False)
    _checks: dict[str, bool] = field(default_factory=dict, repr=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def check_dependencies(self) -> dict[str, bool]:
        """Broker, Redis (not for the learner) and KEK reachability (blocking; cached ``cache_seconds``)."""
        with self._lock:
            if time.monotonic() - self._checked_at < self.cache_seconds:
                return dict(self._checks)
            checks = {"broker": _broker_ok(self.settings), "kek": _kek_ok(self.settings)}
            if self.worker != "learner":  # the learner reads Kafka and signs with the KEK; no Redis
                checks["redis"] = _redis_ok(self.settings)
            self._checks, self._checked_at = checks, time.monotonic()
            return dict(checks)

    def readiness(self) -> tuple[bool, dict[str, bool]]:
        """(ready, checks): alive, the worker's own condition, then the dependencies."""
        checks: dict[str, bool] = {"alive": bool(self.alive())}
        if self.ready_fn is not None:
            checks[self.worker] = bool(self.ready_fn())
        deps = self.check_dependencies()
        checks.update(deps)
        ready = all(checks.values())
        self.metrics.set_ready(ready, deps)
        return ready, checks


def _broker_ok(settings: Settings) -> bool:
    try:
        bootstrap = settings.kafka_bootstrap_or_dev()
        p = Producer({"bootstrap.servers": bootstrap, "client.id": "streamgate-readyz",
                      "socket.timeout.ms": int(_CHECK_TIMEOUT * 1000)})
        try:
            p.list_topics(timeout=_CHECK_TIMEOUT)
        finally:
            p.flush(0)
        return True
    except Exception:  # any failure means "not reachable"; the detail is not needed on /readyz
        return False


def _redis_ok(settings: Settings) -> bool:
    import redis

    try:
        client = redis.Redis.from_url(settings.redis_url_or_dev(), socket_timeout=_CHECK_TIMEOUT,
                                      socket_connect_timeout=_CHECK_TIMEOUT)
        try:
            return bool(client.ping())
        finally:
            client.close()
    except Exception:
        return False


def _kek_ok(settings: Settings) -> bool:
    from stream.crypto.keyring import Keyring

    try:
        Keyring.from_settings(settings)
        return True
    except Exception:
        return False


class OpsService(Service):
    """Publishes metrics snapshots to ``ops.metrics`` from a thread, for the worker's lifetime."""

    def __init__(self, handle: OpsHandle, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.handle = handle
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.published = 0

    async def on_start(self) -> None:
        self._thread = threading.Thread(target=self._run, name=f"streamgate-ops-{self.handle.worker}", daemon=True)
        self._thread.start()

    async def on_stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            await asyncio.get_running_loop().run_in_executor(None, self._thread.join, 15.0)

    def _run(self) -> None:
        h = self.handle
        s = h.settings
        try:
            bootstrap = s.kafka_bootstrap_or_dev()
        except Exception:
            log.warning("metrics publisher: no broker configured; snapshots are not published")
            return
        with contextlib.suppress(Exception):
            from stream.kafka import ensure_topics

            ensure_topics(bootstrap, [s.topics.metrics], partitions=1, timeout=10.0)
        producer = Producer({"bootstrap.servers": bootstrap, "client.id": f"streamgate-ops-{h.worker}",
                             "linger.ms": 50, "message.timeout.ms": 30000})
        interval = s.metrics_interval_seconds
        try:
            h.metrics.snapshot()  # starts the rate window
            while not self._stop.wait(interval):
                self._publish(producer)
            self._publish(producer)
        finally:
            producer.flush(5)

    def _publish(self, producer: Producer) -> None:
        h = self.handle
        record = snapshot_record(h.metrics, h.worker)
        try:
            producer.produce(h.settings.topics.metrics, key=h.worker.encode(), value=orjson.dumps(record),
                             on_delivery=self._delivered)
            producer.poll(0)
        except (KafkaException, BufferError) as exc:
            log.warning("metrics snapshot not published", extra={"error": type(exc).__name__})

    def _delivered(self, err: Any, _msg: Any) -> None:
        if err is None:
            self.published += 1
            self.handle.metrics.snapshot_published()


def install_ops(
    app: faust.App,
    settings: Settings,
    *,
    worker: str,
    metrics: WorkerMetrics,
    alive: Callable[[], bool],
    details: Callable[[], dict[str, Any]] | None = None,
    ready: Callable[[], bool] | None = None,
    publish: bool = True,
) -> OpsHandle:
    """Add ``/metrics``, ``/healthz``, ``/readyz`` and the snapshot publisher to ``app``
    (call before the worker starts). ``publish=False`` skips the publisher (tests)."""
    if worker != metrics.worker:
        raise ValueError("install_ops: worker and metrics.worker differ")
    handle = OpsHandle(settings, worker, metrics, alive, ready, details)

    @app.page("/metrics")
    async def metrics_page(web: Any, request: Any) -> Any:
        body = generate_latest(metrics.registry)
        return web.bytes(body, headers={"Content-Type": CONTENT_TYPE_LATEST})

    @app.page("/healthz")
    async def healthz(web: Any, request: Any) -> Any:
        ok = bool(alive())
        body: dict[str, Any] = {"ok": ok}
        if details is not None:
            body[worker] = details()
        return web.json(body, status=200 if ok else 503)

    @app.page("/readyz")
    async def readyz(web: Any, request: Any) -> Any:
        ok, checks = await asyncio.get_running_loop().run_in_executor(None, handle.readiness)
        if ok:
            return web.json({"ready": True}, status=200)
        return web.json({"ready": False, "checks": checks}, status=503)

    if publish:
        handle.service = OpsService(handle)
        app.service(handle.service)  # type: ignore[arg-type]
    return handle
