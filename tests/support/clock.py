"""The one controllable clock the tests pass into the pure cores."""

from __future__ import annotations


class Clock:
    """Unix seconds that move only when told to."""

    def __init__(self, t: float = 1_800_000_000.0) -> None:
        self.t = float(t)

    def __call__(self) -> float:
        return self.t

    def advance(self, seconds: float) -> None:
        self.t += seconds
