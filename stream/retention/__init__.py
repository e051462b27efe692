"""Retention: the shredder's pure core (:mod:`.core`), receipts (:mod:`.receipts`), the Redis
adapter (:mod:`.redis_store`), cache invalidation (:mod:`.invalidation`) and the Kafka-side
topics config (:mod:`.topics`)."""

from __future__ import annotations

__all__: list[str] = []
