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
  ``{"ready": false, "checks": {...}, "reason": "..."}`` (503) naming what is missing
  and why (the worker's own ``reason()`` when given, e.g. "no progress for 45 s with
  lag 3100", then each unreachable dependency).

and a service that publishes ``metrics.snapshot()`` plus ``worker``, ``host``, ``pid``,
``ts`` (unix seconds), ``interval_s`` (the publishing interval), ``state`` (``running``) and the
readiness (``ready``, ``reason``, ``checks``) to ``settings.topics.metrics`` (key = worker name)
every ``settings.metrics_interval_seconds``. A graceful stop publishes a last snapshot with
``state`` ``stopping``, ``ready`` false and the reason ``stopping (graceful shutdown)``: when the
publisher stops, and again (:meth:`OpsService.publish_stopping`, called by the hosting once the
engine ended) with the counts of the engine's final flush. Once the worker's engine failed
(``failure()`` returns why), every snapshot, the last ones included, has ``state`` ``failed``,
``ready`` false and that reason (the error class and the engine's reason, no event values).
Consumers show an instance whose newest snapshot is a stopping or failed one, or is older than
3 intervals, as not ready with rates at 0 (:mod:`stream.ops.live`).

One function decides readiness: :meth:`OpsHandle.status`. ``/readyz``, the snapshot
(so ``streamgate ops watch``) and the ``streamgate_ready`` gauge all take its answer;
the publisher and ``/metrics`` refresh it, so none depends on someone polling ``/readyz``.
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
from redis.cluster import RedisCluster

from stream.apps.registry import WORKERS
from stream.config import Settings
from stream.crypto.keyring import Keyring
from stream.errors import ProduceTimeoutError
from stream.kafka import client_config, ensure_topics, produce
from stream.ops.live import safe_reason
from stream.ops.metrics import WorkerMetrics
from stream.redisdb import client_for

__all__ = ["STOPPING_REASON", "OpsHandle", "OpsService", "Readiness", "install_ops", "snapshot_record"]

log = logging.getLogger("streamgate.ops")

_CHECK_TIMEOUT = 2.0


@dataclass(frozen=True)
class Readiness:
    """One answer of :meth:`OpsHandle.status`: ready or not, each check, and why not (one line)."""

    ready: bool
    checks: dict[str, bool]
    reason: str | None = None

    def body(self) -> dict[str, Any]:
        """The ``/readyz`` JSON body."""
        if self.ready:
            return {"ready": True}
        return {"ready": False, "checks": dict(self.checks), "reason": self.reason}


STOPPING_REASON = "stopping (graceful shutdown)"


def snapshot_record(metrics: WorkerMetrics, worker: str, status: Readiness | None = None, *,
                    interval: float | None = None, stopping: bool = False, failure: str | None = None,
                    details: dict[str, Any] | None = None) -> dict[str, Any]:
    """The ``ops.metrics`` record: the snapshot plus who and when, ``status`` (readiness), the
    publishing ``interval`` and ``state``; ``stopping``: the last one of a graceful stop (not
    ready); ``failure``: why the worker's engine failed (``state`` ``failed``, not ready, whether
    stopping or not). ``details`` (the ``/healthz`` counters): a federated learner's instance name
    and whether it aggregates are kept (``instance``, ``aggregator``)."""
    snap = metrics.snapshot()
    state = "failed" if failure is not None else "stopping" if stopping else "running"
    snap.update({"worker": worker, "host": socket.gethostname(), "pid": os.getpid(), "ts": round(time.time(), 3),
                 "state": state})
    if interval is not None:
        snap["interval_s"] = float(interval)
    if status is not None:
        snap.update({"ready": status.ready, "reason": status.reason, "checks": dict(status.checks)})
    if failure is not None:
        snap.update({"ready": False, "reason": safe_reason(failure) or "other"})
    elif stopping:
        snap.update({"ready": False, "reason": STOPPING_REASON})
    snap.update(_roles(details))
    return snap


def _roles(details: dict[str, Any] | None) -> dict[str, Any]:
    """A federated learner's ``instance`` and ``aggregator`` (aggregating, version, pending)."""
    out: dict[str, Any] = {}
    if not isinstance(details, dict):
        return out
    instance = details.get("instance")
    if isinstance(instance, str):
        out["instance"] = instance[:64]
    agg = details.get("aggregator")
    if isinstance(agg, dict):
        out["aggregator"] = {"aggregating": bool(agg.get("aggregating")),
                             **{k: v for k in ("version", "pending")
                                if isinstance(v := agg.get(k), int) and not isinstance(v, bool)}}
    return out


@dataclass
class OpsHandle:
    """What :func:`install_ops` installed; ``check()`` runs (or returns the cached) readiness checks."""

    settings: Settings
    worker: str
    metrics: WorkerMetrics
    alive: Callable[[], bool]
    ready_fn: Callable[[], bool] | None = None
    details: Callable[[], dict[str, Any]] | None = None
    reason_fn: Callable[[], str | None] | None = None
    cache_seconds: float = 3.0
    service: OpsService | None = None
    failure_fn: Callable[[], str | None] | None = None
    _checked_at: float = field(default=float("-inf"), repr=False)
    _problems: dict[str, str | None] = field(default_factory=dict, repr=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def dependency_problems(self) -> dict[str, str | None]:
        """Broker, KEK and Redis (not for the learner): ``None`` when fine, else what is wrong
        (blocking; cached ``cache_seconds``)."""
        with self._lock:
            if time.monotonic() - self._checked_at < self.cache_seconds:
                return dict(self._problems)
            problems = {"broker": _broker_problem(self.settings), "kek": _kek_problem(self.settings)}
            if WORKERS[self.worker].uses_redis:
                problems["redis"] = _redis_problem(self.settings, self.worker)
            self._problems, self._checked_at = problems, time.monotonic()
            return dict(problems)

    def check_dependencies(self) -> dict[str, bool]:
        """Broker, Redis (not for the learner) and KEK reachability (blocking; cached ``cache_seconds``)."""
        return {name: problem is None for name, problem in self.dependency_problems().items()}

    def status(self) -> Readiness:
        """The readiness: alive, the worker's own condition, then the dependencies; with the
        reason when not ready. Updates the ``streamgate_ready`` / ``streamgate_dependency_up``
        gauges. ``/readyz``, the ``ops.metrics`` snapshot and ``/metrics`` all use this."""
        checks: dict[str, bool] = {"alive": bool(self.alive())}
        if self.ready_fn is not None:
            checks[self.worker] = bool(self.ready_fn())
        problems = self.dependency_problems()
        deps = {name: problem is None for name, problem in problems.items()}
        checks.update(deps)
        ready = all(checks.values())
        self.metrics.set_ready(ready, deps)
        if ready:
            return Readiness(True, checks)
        reasons: list[str] = []
        if not checks["alive"] or not checks.get(self.worker, True):
            own = self._own_reason()
            if own:
                reasons.append(own)
            elif not checks["alive"]:
                reasons.append(f"{self.worker} is not running")
            else:
                reasons.append(f"{self.worker} is not ready yet (no partitions assigned, or still starting)")
        reasons += [problem for problem in problems.values() if problem]
        return Readiness(False, checks, safe_reason("; ".join(reasons)))

    def readiness(self) -> tuple[bool, dict[str, bool]]:
        """(ready, checks) of :meth:`status`."""
        st = self.status()
        return st.ready, st.checks

    def failure(self) -> str | None:
        """Why the worker's engine failed (``failure()`` of :func:`install_ops`), or None."""
        if self.failure_fn is None:
            return None
        try:
            text = self.failure_fn()
        except Exception:  # a broken callable must not stop the snapshots
            log.warning("failure callable failed", exc_info=True)
            return None
        return text if isinstance(text, str) and text.strip() else None

    def _own_reason(self) -> str | None:
        if self.reason_fn is None:
            return None
        try:
            text = self.reason_fn()
        except Exception:  # a broken reason callable must not break /readyz
            log.warning("readiness reason callable failed", exc_info=True)
            return None
        return text if isinstance(text, str) and text.strip() else None


def _broker_problem(settings: Settings) -> str | None:
    try:
        bootstrap = settings.kafka_bootstrap_or_dev()
    except Exception as exc:
        return f"broker not configured ({type(exc).__name__})"
    try:
        p = Producer(client_config(bootstrap, **{"client.id": "streamgate-readyz",
                                                 "socket.timeout.ms": int(_CHECK_TIMEOUT * 1000)}))
        try:
            p.list_topics(timeout=_CHECK_TIMEOUT)
        finally:
            p.flush(0)
        return None
    except Exception:  # any failure means "not reachable"
        return f"broker unreachable at {bootstrap}"


def _redis_problem(settings: Settings, role: str) -> str | None:
    try:
        client = client_for(settings, role, socket_timeout=_CHECK_TIMEOUT, socket_connect_timeout=_CHECK_TIMEOUT)
        try:
            if isinstance(client, RedisCluster):  # every master must answer (each holds some people's keys)
                masters = [client.get_redis_connection(node) for node in client.get_primaries()]
                return None if all(m.ping() for m in masters) else "a redis cluster master did not answer PING"
            return None if client.ping() else "redis did not answer PING"
        finally:
            client.close()
    except Exception as exc:  # the URL may hold a password: name the error type only
        return f"redis unreachable ({type(exc).__name__})"


def _kek_problem(settings: Settings) -> str | None:
    try:
        Keyring.from_settings(settings)
        return None
    except Exception as exc:
        return f"master key does not load ({type(exc).__name__})"


class OpsService(Service):
    """Publishes metrics snapshots to ``ops.metrics`` from a thread, for the worker's lifetime."""

    def __init__(self, handle: OpsHandle, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.handle = handle
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._producer: Producer | None = None
        self._lock = threading.Lock()
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
            ensure_topics(bootstrap, [s.topics.metrics], partitions=1, timeout=10.0)
        producer = Producer(client_config(bootstrap, **{"client.id": f"streamgate-ops-{h.worker}",
                                                        "linger.ms": 50, "message.timeout.ms": 30000}))
        interval = s.metrics_interval_seconds
        self._producer = producer
        try:
            h.metrics.snapshot()  # starts the rate window
            while not self._stop.wait(interval):
                self._publish(producer)
            self._publish(producer, stopping=True)
        finally:
            producer.flush(5)

    def publish_stopping(self) -> None:
        """One more ``stopping`` snapshot (``failed`` once the engine failed; blocking, flushed):
        the hosting calls it once the engine ended, so the last snapshot has the counts of the
        engine's final flush."""
        producer = self._producer
        if producer is None or (self._thread is not None and self._thread.is_alive()):
            return  # not started, or the publisher still runs: its own last snapshot comes after this
        self._publish(producer, stopping=True)
        producer.flush(5)

    def _publish(self, producer: Producer, *, stopping: bool = False) -> None:
        h = self.handle
        status: Readiness | None = None
        failure = h.failure()
        try:
            if stopping or failure is not None:  # not ready, whatever the dependencies say: no checks to wait for
                h.metrics.set_ready(False)
            else:
                status = h.status()  # the same answer /readyz gives now
        except Exception:
            log.warning("readiness not computed for the metrics snapshot", exc_info=True)
        details: dict[str, Any] | None = None
        if h.details is not None:
            with contextlib.suppress(Exception):
                details = h.details()
        with self._lock:
            record = snapshot_record(h.metrics, h.worker, status, interval=h.settings.metrics_interval_seconds,
                                     stopping=stopping, failure=failure, details=details)
        try:
            produce(producer, h.settings.topics.metrics, orjson.dumps(record), h.worker.encode(),
                    on_delivery=self._delivered, timeout=min(5.0, h.settings.metrics_interval_seconds),
                    stop=self._stop.is_set)
            producer.poll(0)
        except (KafkaException, ProduceTimeoutError) as exc:
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
    reason: Callable[[], str | None] | None = None,
    failure: Callable[[], str | None] | None = None,
) -> OpsHandle:
    """Add ``/metrics``, ``/healthz``, ``/readyz`` and the snapshot publisher to ``app``
    (call before the worker starts). ``publish=False`` skips the publisher (tests).
    ``reason()``: asked when ``alive()`` or ``ready()`` is false, why (one short line,
    no event values), e.g. ``"fatal client error: ..."``; ``None`` = a generic reason.
    ``failure()``: why the worker's engine failed (one short line, no event values), None while
    it did not: the snapshots then say ``failed``, not ``running`` or ``stopping``."""
    if worker != metrics.worker:
        raise ValueError("install_ops: worker and metrics.worker differ")
    handle = OpsHandle(settings, worker, metrics, alive, ready, details, reason, failure_fn=failure)

    @app.page("/metrics")
    async def metrics_page(web: Any, request: Any) -> Any:
        # refresh streamgate_ready / streamgate_dependency_up (dependency checks are cached)
        await asyncio.get_running_loop().run_in_executor(None, handle.status)
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
        status = await asyncio.get_running_loop().run_in_executor(None, handle.status)
        return web.json(status.body(), status=200 if status.ready else 503)

    if publish:
        handle.service = OpsService(handle)
        app.service(handle.service)  # type: ignore[arg-type]
    return handle
