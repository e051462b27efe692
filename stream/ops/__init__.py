"""Operations: Prometheus metrics (:mod:`stream.ops.metrics`), the worker's ops endpoints and
snapshot publisher (:mod:`stream.ops.worker`), allow-listed structured logging
(:mod:`stream.ops.logging`) and the ``streamgate ops watch`` view (:mod:`stream.ops.watch`)."""

from __future__ import annotations

__all__: list[str] = []
