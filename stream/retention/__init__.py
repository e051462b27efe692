"""Retention: the shredder's pure core (:mod:`.core`) and receipts (:mod:`.receipts`). Its I/O is in
:mod:`stream.storage`: the Redis adapter (:mod:`stream.storage.retention`), cache invalidation
(:mod:`stream.storage.invalidation`) and the Kafka-side topics config (:mod:`stream.storage.topics`)."""

from __future__ import annotations

__all__: list[str] = []
