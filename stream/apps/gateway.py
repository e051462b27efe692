"""The gateway worker: a Faust app hosting the batch engine as a service.

Faust provides the worker lifecycle (signals, graceful shutdown), sensors and the
web server: ``/healthz``, ``/readyz`` and ``/metrics`` come from
:func:`stream.ops.worker.install_ops` (ready = the engine runs, holds partitions of
the raw topic, and the broker, Redis and the KEK are reachable).
The Kafka loop itself is :class:`stream.apps.engine.GatewayEngine` (why a batch
loop rather than a per-event Faust stream: see that module), which runs in a
dedicated thread so that per-batch blocking I/O never stalls the event loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
from typing import Any

import faust
from faust.app.base import BootStrategy
from mode import Service

from stream.apps.engine import EngineStats, GatewayEngine
from stream.components import build_gateway
from stream.config import Settings
from stream.ops.metrics import WorkerMetrics
from stream.ops.worker import install_ops

__all__ = ["GatewayService", "create_app"]

log = logging.getLogger("streamgate.gateway")


class GatewayService(Service):
    """Runs the engine in a thread for the lifetime of the Faust worker."""

    def __init__(self, settings: Settings, bootstrap: str, metrics: WorkerMetrics | None = None, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.settings = settings
        self.bootstrap = bootstrap
        self.metrics = metrics
        self.stop_event = threading.Event()
        self.engine: GatewayEngine | None = None
        self._thread_done: asyncio.Future[EngineStats] | None = None
        self.failed: BaseException | None = None

    async def on_start(self) -> None:
        # Build in the worker thread's caller: fails fast (and loudly) on a missing KEK.
        # listen=True: drop cached data keys as soon as the shredder announces them (pub/sub)
        gateway = build_gateway(self.settings, listen=True)
        self.engine = GatewayEngine(self.settings, gateway, bootstrap=self.bootstrap, metrics=self.metrics)
        loop = asyncio.get_running_loop()
        self._thread_done = loop.run_in_executor(None, self._run)
        self.add_future(self._watch())

    async def _watch(self) -> None:
        """An engine that dies takes the worker down (non-zero exit), so a supervisor restarts
        it; it resumes from the last committed offsets (nothing lost)."""
        assert self._thread_done is not None
        try:
            await self._thread_done
        except Exception as exc:
            await self.crash(exc)

    def _run(self) -> EngineStats:
        assert self.engine is not None
        try:
            return self.engine.run(self.stop_event)
        except BaseException as exc:  # surfaced by on_stop / healthz
            self.failed = exc
            log.exception("gateway engine crashed")
            raise

    async def on_stop(self) -> None:
        self.stop_event.set()
        if self._thread_done is not None:
            with contextlib.suppress(Exception):
                await self._thread_done

    @property
    def healthy(self) -> bool:
        return self.failed is None and self._thread_done is not None and not self._thread_done.done()


def create_app(settings: Settings) -> faust.App:
    """The gateway's Faust app. ``streamgate gateway`` runs it as a worker."""
    bootstrap = settings.kafka_bootstrap_or_dev()
    datadir = settings.state_dir / "faust"
    datadir.mkdir(parents=True, exist_ok=True)  # Faust creates only the last level
    app = faust.App(
        "streamgate-gateway",
        broker=f"kafka://{bootstrap}",
        web_enabled=settings.web_port_for("gateway") > 0,
        web_port=settings.web_port_for("gateway") or 6066,
        web_bind=settings.web_bind,
        topic_disable_leader=True,
        broker_session_timeout=settings.session_timeout_ms / 1000,
        datadir=str(datadir),
    )
    # The gateway's records flow through the engine's own confluent-kafka clients; Faust's
    # consumer and producer would only idle (and Faust refuses a consumer with no topics).
    app.boot_strategy = BootStrategy(app, enable_kafka_consumer=False, enable_kafka_producer=False)
    metrics = WorkerMetrics("gateway")
    service = GatewayService(settings, bootstrap, metrics)
    app.service(service)  # type: ignore[arg-type]
    ops = install_ops(
        app, settings, worker="gateway", metrics=metrics,
        alive=lambda: service.healthy,
        details=lambda: service.engine.stats.as_dict() if service.engine else {},
        ready=lambda: service.engine is not None and service.engine.ready,
    )
    app.streamgate_service = service  # type: ignore[attr-defined]
    app.streamgate_ops = ops  # type: ignore[attr-defined]
    return app
