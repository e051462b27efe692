"""The client supervisor's rules (pure, the clock passed in): how many client recoveries a worker
survives, when the watchdog ends a worker, the backoff of a hold, when an unreachable broker is
probed again, and when a member without partitions re-subscribes. The I/O that follows them is
:mod:`stream.engine.clients`'."""

from __future__ import annotations

from collections import deque

__all__ = ["Outage", "RecoveryBudget", "Resubscriber", "Watchdog", "backoff"]


def backoff(attempt: int, first: float, most: float) -> float:
    """Seconds to wait before retry ``attempt`` (0-based): doubling from ``first``, at most ``most``."""
    return min(most, first * (2 ** min(attempt, 16)))


class RecoveryBudget:
    """At most ``most`` recoveries within ``window`` seconds: :meth:`spend` returns how many there
    were (this one included) and whether that is one too many."""

    def __init__(self, most: int, window: float = 120.0) -> None:
        self.most = most
        self.window = window
        self.recent: deque[float] = deque()

    def spend(self, now: float) -> tuple[int, bool]:
        recent = self.recent
        recent.append(now)
        while recent and now - recent[0] > self.window:
            recent.popleft()
        return len(recent), len(recent) > self.most


class Watchdog:
    """Not ready and no progress for longer than ``bound`` seconds: :meth:`check` says so (the
    engine exits). Ready, progress, or a standby (joined with no partitions) resets it."""

    def __init__(self, bound: float, now: float) -> None:
        self.bound = bound
        self.fine_at = now

    def reset(self, now: float) -> None:
        self.fine_at = now

    def check(self, now: float, reason: str | None, *, standby: bool, moved_at: float) -> str | None:
        """None while fine, else the one line to exit with."""
        if reason is None or standby:
            self.fine_at = now
            return None
        self.fine_at = max(self.fine_at, moved_at)
        if now - self.fine_at > self.bound:
            return f"watchdog: not ready and no progress for {now - self.fine_at:.0f} s " \
                   f"(bound STREAMGATE_WATCHDOG_SECONDS={self.bound:g}): {reason}"
        return None


class Outage:
    """Every broker unreachable since ``since`` (None: reachable). While it lasts, :meth:`probe_due`
    allows one probe a second."""

    def __init__(self, probe_every: float = 1.0) -> None:
        self.probe_every = probe_every
        self.since: float | None = None
        self.probed_at = float("-inf")

    def down(self, now: float) -> None:
        if self.since is None:
            self.since = now

    def probe_due(self, now: float) -> bool:
        if self.since is None or now - self.probed_at < self.probe_every:
            return False
        self.probed_at = now
        return True

    def up(self, now: float) -> float:
        """The broker answered: seconds it was unreachable (the outage ends)."""
        since, self.since = self.since, None
        return 0.0 if since is None else now - since


class Resubscriber:
    """When a member holding no partitions looks again at its subscription: after ``max(5 s, the
    session timeout)`` without partitions; a joined member (a standby, or after the broker came
    back: ``resync``) waits twice as long after each look, up to 16 times. Partitions reset it."""

    def __init__(self, session_seconds: float) -> None:
        self.session_seconds = session_seconds
        self.since: float | None = None  # without partitions since
        self.count = 0  # looks since the member last held partitions
        self.resync = False  # the broker came back: a joined member without partitions re-subscribes

    def start(self, now: float) -> None:
        self.since = now

    def due(self, now: float, *, assigned: bool, joined: bool) -> bool:
        if assigned:
            self.since, self.count, self.resync = None, 0, False
            return False
        if self.since is None:
            self.since = now
            return False
        wait = max(5.0, self.session_seconds)
        if joined:
            wait *= 2 ** min(self.count, 4)
        if now - self.since < wait:
            return False
        self.since = now
        return True
