"""Release across people: reports leave in shuffled batches of at least ``min_people`` distinct people.

The privatizer's worker puts every report it produced (with an in-process number of its person's
ledger, never published) into a :class:`ReleaseBuffer`; the buffer releases everything it holds, in
an order drawn from the CSPRNG, as soon as the held reports come from ``min_people`` distinct
people - at high rates that is the batch that produced them, so no delay is added - or when the
oldest has waited ``max_delay_seconds`` (low traffic: such a release may hold fewer people; it is
counted in ``small_releases``). The order of a release never depends on the input order.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable, Sequence
from typing import Any

__all__ = ["ReleaseBuffer"]


class ReleaseBuffer:
    """Holds reports until they can leave among enough people (module docstring)."""

    def __init__(self, *, min_people: int, max_delay_seconds: float, shuffle: Any = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        if min_people < 1 or max_delay_seconds <= 0:
            raise ValueError("min_people must be >= 1 and max_delay_seconds > 0")
        self.min_people = min_people
        self.max_delay_seconds = max_delay_seconds
        self._shuffle = shuffle if shuffle is not None else random.SystemRandom()
        self._clock = clock
        self._held: list[tuple[Any, int]] = []
        self._people: set[int] = set()
        self._since: float | None = None
        self.releases = 0
        self.small_releases = 0  # released after the delay with fewer than min_people people

    def __len__(self) -> int:
        return len(self._held)

    @property
    def people(self) -> int:
        return len(self._people)

    def add(self, items: Sequence[Any], people: Sequence[int]) -> None:
        """Hold ``items`` (reports, or anything), ``people[i]`` the in-process person number of ``items[i]``."""
        if not items:
            return
        if self._since is None:
            self._since = self._clock()
        self._held.extend(zip(items, people, strict=True))
        self._people.update(people)

    def due(self, *, force: bool = False) -> list[Any]:
        """Everything held, shuffled, if it may leave now (enough people, the delay, or ``force``); else []."""
        if not self._held:
            return []
        enough = len(self._people) >= self.min_people
        late = self._since is not None and self._clock() - self._since >= self.max_delay_seconds
        if not (enough or late or force):
            return []
        out = [item for item, _p in self._held]
        self._shuffle.shuffle(out)
        if not enough:
            self.small_releases += 1
        self.releases += 1
        self._held, self._people, self._since = [], set(), None
        return out
