"""``Progress``: the stall detector behind /readyz (pure, a fake clock)."""

from __future__ import annotations

from stream.engine.health import Progress


class Clock:
    def __init__(self) -> None:
        self.t = 100.0

    def __call__(self) -> float:
        return self.t


def test_work_without_progress_turns_stalled_once_then_recovers():
    c = Clock()
    p = Progress(5.0, clock=c)
    assert p.observe(lag=10) is False and p.reason is None
    c.t += 5.0
    assert p.observe(lag=10) is False  # at the bound: not yet
    c.t += 0.1
    assert p.observe(lag=10) is True and p.stalled and p.stalls == 1
    assert p.reason is not None and "no progress for 5 s with lag 10" in p.reason
    c.t += 3
    assert p.observe(lag=10) is False and p.stalls == 1  # counted once per stall
    p.moved()
    assert not p.stalled and p.reason is None and p.moved_at == c.t


def test_nothing_to_do_is_not_a_stall():
    c = Clock()
    p = Progress(5.0, clock=c)
    for _ in range(10):
        c.t += 10
        assert p.observe(lag=0, held=0, inflight=0) is False
    assert p.stalls == 0 and p.reason is None
    assert p.moved_at == 100.0  # idle time is not progress (the watchdog reads moved_at)


def test_held_or_unacknowledged_records_count_as_work():
    for kw in ({"held": 3}, {"inflight": 2}):
        c = Clock()
        p = Progress(1.0, clock=c)
        p.observe(lag=0, held=0, inflight=0)
        c.t += 2
        assert p.observe(**kw) is True and p.stalled


def test_a_problem_is_the_reason_before_a_stall():
    c = Clock()
    p = Progress(1.0, clock=c)
    p.problem = "broker unreachable for 3 s"
    assert p.reason == "broker unreachable for 3 s"
    p.problem = None
    assert p.reason is None


def test_an_operation_failing_longer_than_the_stall_bound_is_the_reason_until_it_succeeds():
    c = Clock()
    p = Progress(5.0, clock=c)
    p.failed("offset commits", "REBALANCE_IN_PROGRESS")
    p.moved()  # records keep moving: still counts as failing
    c.t += 5.0
    p.failed("offset commits", "COORDINATOR_NOT_AVAILABLE")
    assert p.reason is None  # at the bound: not yet
    c.t += 0.5
    assert p.reason == "offset commits failing for 6 s: COORDINATOR_NOT_AVAILABLE"
    p.problem = "broker unreachable for 3 s"
    assert p.reason == "broker unreachable for 3 s"  # a problem the engine set comes first
    p.problem = None
    p.succeeded("offset commits")
    assert p.reason is None
