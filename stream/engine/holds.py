"""Holds (pure, no Kafka): the one retry policy for a dependency that is down.

When a worker's ``process`` raises one of its ``hold_on`` exceptions (the key store is down:
:class:`~stream.errors.KeyUnavailableError`), the batch is *held*: not emitted, not committed,
and retried after a doubling backoff (:func:`~stream.engine.supervisor.backoff`), each retry
counted and logged. Meanwhile the engine keeps the group membership with the partitions paused;
records of partitions a rebalance takes are dropped from the hold, records polled meanwhile join
it (nothing polled is ever thrown away). A failing ``tick`` is retried the same way.
No retry loop sits beneath this one: the Redis clients retry nothing (:func:`stream.redisdb.client_for`).
"""

from __future__ import annotations

from collections.abc import Iterable

from stream.engine.contract import Record
from stream.engine.supervisor import backoff

__all__ = ["Hold", "Retry"]

TP = tuple[str, int]


class Retry:
    """Doubling backoff from ``first`` to at most ``most`` seconds: :meth:`failed` counts a failure
    and returns the wait before the next try, :meth:`passed` starts over."""

    def __init__(self, first: float, most: float) -> None:
        self.first = first
        self.most = most
        self.attempt = 0  # failures in a row
        self.retries = 0  # failures ever

    def failed(self) -> float:
        delay = backoff(self.attempt, self.first, self.most)
        self.attempt += 1
        self.retries += 1
        return delay

    def passed(self) -> None:
        self.attempt = 0


class Hold(Retry):
    """The batch in hand (``records``) and the retries of its ``process`` call."""

    def __init__(self, first: float, most: float) -> None:
        super().__init__(first, most)
        self.records: list[Record] = []

    def __len__(self) -> int:
        return len(self.records)

    def failed_with(self, exc: BaseException) -> tuple[float, str]:
        """``process`` raised ``exc`` (a dependency is down): the wait, and the problem to report."""
        return self.failed(), f"dependency unavailable ({type(exc).__name__}): {len(self.records)} records held"

    def add(self, records: list[Record]) -> None:
        """Records polled during the wait join the hold."""
        self.records.extend(records)

    def forget(self, gone: Iterable[TP]) -> None:
        """Partitions taken by a rebalance: their records leave the hold (the new owner reads them)."""
        lost = set(gone)
        if self.records and lost:
            self.records = [r for r in self.records if (r.topic, r.partition) not in lost]

    def clear(self) -> None:
        self.records = []

    @staticmethod
    def bounds(records: list[Record]) -> tuple[dict[TP, int], dict[TP, int]]:
        """Per partition of ``records``: the lowest offset (where a recovery that drops them seeks
        back to) and the offset to commit once they are done (last offset + 1). One pass: every batch."""
        first: dict[TP, int] = {}
        nxt: dict[TP, int] = {}
        for r in records:
            key = (r.topic, r.partition)
            o = r.offset
            if o >= nxt.get(key, -1):
                nxt[key] = o + 1
            if o < first.get(key, o + 1):
                first[key] = o
        return first, nxt

    @staticmethod
    def next_offsets(records: list[Record]) -> dict[TP, int]:
        """Offsets to commit once ``records`` are done: last offset + 1 per partition."""
        return Hold.bounds(records)[1]
