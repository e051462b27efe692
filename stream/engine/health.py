"""Progress tracking: the truth behind ``/readyz`` (pure, the clock passed in)."""

from __future__ import annotations

import time
from collections.abc import Callable

__all__ = ["Progress"]


class Progress:
    """A worker is *stalled* when it had work (lag, held or unacknowledged records) and made no
    progress (a commit, a delivered result, or an idle poll with nothing to do) for
    ``stall_seconds``. ``reason`` says why it is not ready, or None.

    A retried operation that keeps failing (offset commits, a worker's periodic work) is not
    ready once it failed for longer than ``stall_seconds`` without a success in between
    (:meth:`failed` / :meth:`succeeded`), even while records keep moving."""

    def __init__(self, stall_seconds: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.stall_seconds = stall_seconds
        self.clock = clock
        self.at = clock()
        self.moved_at = self.at  # the last real progress (``moved``), idle time not included
        self.lag = 0
        self.held = 0
        self.inflight = 0
        self.stalls = 0
        self._stalled = False
        self.problem: str | None = None  # set by the engine: broker unreachable, recovering, ...
        self.failing: dict[str, tuple[float, str]] = {}  # what -> (failing since, last error)

    def moved(self) -> None:
        self.at = self.moved_at = self.clock()

    def observe(self, *, lag: int | None = None, held: int | None = None, inflight: int | None = None) -> bool:
        """Update what is waiting; returns True when this call turned the worker stalled."""
        if lag is not None:
            self.lag = lag
        if held is not None:
            self.held = held
        if inflight is not None:
            self.inflight = inflight
        if not (self.lag or self.held or self.inflight):
            self.at = self.clock()  # nothing to do is not a stall
        stalled = self.stalled
        turned = stalled and not self._stalled
        if turned:
            self.stalls += 1
        self._stalled = stalled
        return turned

    def failed(self, what: str, error: str) -> None:
        """``what`` (e.g. ``offset commits``) failed; it fails on until :meth:`succeeded`."""
        since = self.failing[what][0] if what in self.failing else self.clock()
        self.failing[what] = (since, error)

    def succeeded(self, what: str) -> None:
        self.failing.pop(what, None)

    @property
    def failing_reason(self) -> str | None:
        """The oldest failure streak longer than ``stall_seconds``, or None."""
        now = self.clock()
        for what, (since, error) in sorted(self.failing.items(), key=lambda kv: kv[1][0]):
            if now - since > self.stall_seconds:
                return f"{what} failing for {now - since:.0f} s: {error}"
        return None

    @property
    def idle_for(self) -> float:
        return max(0.0, self.clock() - self.at)

    @property
    def stalled(self) -> bool:
        return self.idle_for > self.stall_seconds and bool(self.lag or self.held or self.inflight)

    @property
    def reason(self) -> str | None:
        if self.problem:
            return self.problem
        failing = self.failing_reason
        if failing is not None:
            return failing
        if self.stalled:
            return (f"no progress for {self.idle_for:.0f} s with lag {self.lag}, "
                    f"{self.held} records held, {self.inflight} unacknowledged")
        return None
