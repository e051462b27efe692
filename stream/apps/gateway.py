"""The gateway worker: a Faust app hosting the gateway's batch engine.

The Kafka loop is :class:`stream.apps.engine.GatewayEngine` (why a batch loop rather
than a per-event Faust stream: see that module), hosted like every worker's
(:mod:`stream.apps.hosting`): ``/healthz``, ``/readyz`` (the engine runs, holds
partitions of the raw topic, and the broker, Redis and the KEK are reachable) and
``/metrics``. Its data-key cache listens on the shredder's channel (``listen=True``),
so a shredded key is dropped at once, not only after the staleness bound.
"""

from __future__ import annotations

import faust

from stream.apps.engine import GatewayEngine
from stream.apps.hosting import worker_app
from stream.components import build_gateway
from stream.config import Settings
from stream.ops.metrics import WorkerMetrics

__all__ = ["create_app"]


def create_app(settings: Settings) -> faust.App:
    """The gateway's Faust app. ``streamgate gateway`` runs it as a worker."""

    def build(metrics: WorkerMetrics) -> GatewayEngine:
        return GatewayEngine(settings, build_gateway(settings, listen=True), metrics=metrics)

    return worker_app(settings, "gateway", build, lambda engine: engine.stats.as_dict())
