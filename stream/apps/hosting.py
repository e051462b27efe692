"""Hosting a batch engine inside a Faust worker: the one pattern every streamgate worker uses.

Faust provides the worker lifecycle (signals, graceful shutdown), the web server and
logging; the Kafka loop of each worker is a confluent-kafka batch engine (why: see
:mod:`stream.apps.engine`) running in a dedicated thread, so per-batch blocking I/O
never stalls the event loop. :func:`worker_app` builds the Faust app of one worker:
Faust's own Kafka consumer and producer are disabled (the engine has its clients;
Faust refuses a consumer with no topics), the engine runs as an :class:`EngineService`,
and :func:`stream.ops.worker.install_ops` adds ``/metrics``, ``/healthz``, ``/readyz``
and the ``ops.metrics`` snapshots.

An engine that dies takes the worker down (non-zero exit) so a supervisor restarts it;
every engine resumes from its last committed offsets (nothing lost).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
from collections.abc import Callable
from typing import Any, Protocol

import faust
from faust.app.base import BootStrategy
from mode import Service

from stream.apps.registry import web_listen
from stream.config import Settings
from stream.errors import StreamgateError
from stream.ops.metrics import WorkerMetrics
from stream.ops.worker import install_ops

__all__ = ["Engine", "EngineService", "worker_app"]


class Engine(Protocol):
    """What a hosted engine offers: a blocking ``run(stop)`` and a ``ready`` flag (e.g. holds partitions)."""

    @property
    def ready(self) -> bool: ...

    def run(self, stop: threading.Event) -> Any: ...


class EngineService(Service):
    """Runs an engine in a thread for the lifetime of the Faust worker. ``build`` creates the
    engine at start (it fails fast, before anything runs, on e.g. a missing KEK); an engine
    with a ``close()`` method has it called after its loop ended."""

    def __init__(self, name: str, build: Callable[[], Engine], **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.name = name
        self.build = build
        self.stop_event = threading.Event()
        self.engine: Engine | None = None
        self._thread_done: asyncio.Future[Any] | None = None
        self.failed: BaseException | None = None
        self.after_stop: Callable[[], None] | None = None  # e.g. the last "stopping" ops.metrics snapshot
        self._log = logging.getLogger(f"streamgate.{name}")

    async def on_start(self) -> None:
        self.engine = self.build()
        self._thread_done = asyncio.get_running_loop().run_in_executor(None, self._run)
        self.add_future(self._watch())

    async def _watch(self) -> None:
        assert self._thread_done is not None
        try:
            await self._thread_done
        except Exception as exc:
            await self.crash(exc)

    def _run(self) -> Any:
        assert self.engine is not None
        try:
            return self.engine.run(self.stop_event)
        except StreamgateError as exc:  # a typed, explained failure: one line
            self.failed = exc
            self._log.critical("%s stopped: %s", self.name, exc)
            raise
        except BaseException as exc:  # surfaced by /healthz and the worker's exit code
            self.failed = exc
            self._log.exception("%s engine crashed", self.name)
            raise

    async def on_stop(self) -> None:
        self.stop_event.set()
        if self._thread_done is not None:
            with contextlib.suppress(Exception):
                await self._thread_done
        close = getattr(self.engine, "close", None)
        if callable(close):
            close()
        if self.after_stop is not None:
            with contextlib.suppress(Exception):
                await asyncio.get_running_loop().run_in_executor(None, self.after_stop)

    @property
    def healthy(self) -> bool:
        engine_ok = getattr(self.engine, "healthy", True)
        return self.failed is None and self._thread_done is not None and not self._thread_done.done() and engine_ok

    @property
    def ready(self) -> bool:
        return self.healthy and self.engine is not None and self.engine.ready

    def failure(self) -> str | None:
        """Why the engine failed, fit to publish (None while it did not): the error's class and
        its message for a streamgate error (values never in it: an engine's fatal error is its
        not-ready reason), else the engine's not-ready reason (another error's message is
        withheld, as in the logs: :mod:`stream.ops.logging`)."""
        exc = self.failed
        if exc is None:
            return None
        if isinstance(exc, StreamgateError):
            return f"{type(exc).__name__}: {exc}"
        why = getattr(self.engine, "not_ready_reason", None)
        return f"{type(exc).__name__} (message withheld)" + (f"; {why}" if isinstance(why, str) and why else "")

    def reason(self) -> str | None:
        """Why the worker is not alive or not ready (the engine's own words), or None."""
        if self.failed is not None:
            return f"{self.name} stopped: {self.failure()}"
        engine = self.engine
        if engine is None:
            return f"{self.name} is starting"
        return getattr(engine, "not_ready_reason", None)


def worker_app(
    settings: Settings,
    worker: str,
    build: Callable[[WorkerMetrics], Engine],
    details: Callable[[Any], dict[str, Any]],
) -> faust.App:
    """The Faust app of ``worker`` (``gateway``, ``privatizer``, ``shredder``) hosting the engine
    ``build(metrics)`` returns; ``details(engine)`` is the ``/healthz`` body's counters."""
    bootstrap = settings.kafka_bootstrap_or_dev()
    datadir = settings.state_dir / ("faust" if worker == "gateway" else f"faust-{worker}")
    datadir.mkdir(parents=True, exist_ok=True)  # Faust creates only the last level
    bind, port = web_listen(settings, worker)
    app = faust.App(
        f"streamgate-{worker}",
        broker=f"kafka://{bootstrap}",
        web_enabled=port > 0,
        web_port=port or 6066,  # (unused when disabled)
        web_bind=bind,
        topic_disable_leader=True,
        broker_session_timeout=settings.session_timeout_ms / 1000,
        datadir=str(datadir),
    )
    app.boot_strategy = BootStrategy(app, enable_kafka_consumer=False, enable_kafka_producer=False)
    metrics = WorkerMetrics(worker)
    service = EngineService(worker, lambda: build(metrics))
    app.service(service)  # type: ignore[arg-type]
    ops = install_ops(
        app, settings, worker=worker, metrics=metrics,
        alive=lambda: service.healthy,
        details=lambda: details(service.engine) if service.engine is not None else {},
        ready=lambda: service.engine is not None and service.engine.ready,
        reason=service.reason,
        failure=service.failure,
    )
    if ops.service is not None:
        service.after_stop = ops.service.publish_stopping
    app.streamgate_service = service  # type: ignore[attr-defined]
    app.streamgate_ops = ops  # type: ignore[attr-defined]
    return app
