"""The client supervisor's rules (pure, the clock passed in): how many client recoveries a worker
survives, when the watchdog ends a worker, and the backoff of a hold."""

from __future__ import annotations

from collections import deque

__all__ = ["RecoveryBudget", "Watchdog", "backoff"]


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
