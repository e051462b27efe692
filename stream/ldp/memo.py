"""Superseded: the privatizer keeps no memo (no permanent response is shared between reports).

Memoized permanent responses made a person's reports groupable (reports of one value shared its
permanent bits), so they are gone: every report carries fresh independent noise and is charged to
the person's ledger (:mod:`stream.ldp.ledger`). These names stay for callers not yet moved.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from stream.ldp.ledger import LedgerStore as MemoStore
from stream.ldp.ledger import MemoryLedgerStore as MemoryMemoStore

__all__ = ["MemoCache", "MemoStore", "MemoryMemoStore"]


class MemoCache:
    """Accepted and ignored by :class:`stream.ldp.privatizer.Privatizer` (``cache=``): nothing to cache."""

    def __init__(self, *, max_entries: int = 0, max_staleness_seconds: float = 0.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.max_entries = max_entries
        self.max_staleness_seconds = max_staleness_seconds
        self._clock = clock

    def invalidate(self, subject: str | None = None, epoch: int | None = None) -> None:
        """Nothing is cached."""

    def now(self) -> float:
        return self._clock()

    def __len__(self) -> int:
        return 0
