"""Every Redis test here runs on one server and on a Redis Cluster (``redis_backend``)."""

from __future__ import annotations

from tests.support.fixtures import redis_backend_both as redis_backend

__all__ = ["redis_backend"]
