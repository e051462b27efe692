"""The commit queue (with its throttle) and the supervisor's rules: pure units (no broker)."""

from __future__ import annotations

from typing import Any

from stream.engine.commits import CommitQueue
from stream.engine.produce import Ticket
from stream.engine.supervisor import Outage, RecoveryBudget, Resubscriber, Watchdog, backoff


def ticket(offsets: dict[tuple[str, int], int], pending: int = 0, **kw: Any) -> Ticket:
    t = Ticket(None, offsets, [], **kw)  # type: ignore[arg-type]
    t.pending = pending
    return t


def test_offsets_are_released_in_order_once_every_earlier_result_is_delivered():
    q = CommitQueue()
    first, second = ticket({("in", 0): 10}, pending=2), ticket({("in", 0): 20, ("in", 1): 5})
    q.add(first)
    q.add(second)
    assert q.inflight == 2 and q.release() is None  # the second is done, the first is not: nothing
    first.pending = 0
    assert q.release() == {("in", 0): 20, ("in", 1): 5} and len(q) == 0


def test_a_position_past_a_marker_is_committed_only_once_nothing_of_its_partition_is_in_flight():
    """Past a transaction marker: the consumer's position is worth a commit only when every
    record read before it was released (not held, not in flight, not deferred)."""
    q = CommitQueue()
    q.add(ticket({("in", 0): 10}, pending=1))
    q.committed.update({("in", 1): 6, ("in", 2): 4})
    q.reached(("in", 0), 11)  # offset 10 is the marker after record 9
    q.reached(("in", 1), 7)
    q.reached(("in", 2), 4)
    q.reached(("in", 3), 9)  # nothing freed here yet: left alone
    # partition 0 in flight, partition 1 held: neither; partition 2 was committed up to 4 already
    q.free_positions([("in", 1)])
    assert q.pending == {} and set(q.positions) == {("in", 0), ("in", 1)}  # kept until they are free
    q.tickets[0].pending = 0
    assert q.free() and q.pending == {("in", 0): 10}
    q.free_positions([])
    assert q.pending == {("in", 0): 11, ("in", 1): 7} and not q.positions
    q.reached(("in", 0), 12)
    q.drop_inflight()  # the clients failed: what was read is read again, no position stands
    q.free_positions([])
    assert q.pending == {} and not q.positions


def test_deferred_results_wait_for_a_delivered_checkpoint():
    q = CommitQueue()
    calls: list[str] = []
    q.add(ticket({("in", 0): 10}, defer=True, on_delivered=lambda: calls.append("a")))
    q.add(ticket({("in", 0): 20}, defer=True))
    assert q.release() == {}  # done but deferred: nothing freed yet
    assert len(q) == 2
    cp = ticket({}, pending=1, checkpoint=True)
    q.add(cp)
    assert q.release() == {}
    cp.pending = 0
    assert q.release() == {("in", 0): 20} and len(q) == 0 and calls == ["a"]
    assert q.released_checkpoint  # the engine commits a freed checkpoint at once


def test_only_assigned_and_changed_offsets_are_worth_a_commit():
    q = CommitQueue()
    q.done({("in", 0): 10})
    want = q.to_commit({("in", 0): 10, ("in", 1): 3, ("in", 2): 7}, assigned=[("in", 0), ("in", 1)])
    assert want == {("in", 1): 3}
    q.forget([("in", 0)])
    assert q.to_commit({("in", 0): 10}, assigned=[("in", 0)]) == {("in", 0): 10}


def test_the_recovery_budget_counts_within_its_window():
    b = RecoveryBudget(2, window=120.0)
    assert b.spend(0.0) == (1, False)
    assert b.spend(10.0) == (2, False)
    assert b.spend(20.0) == (3, True)  # a third within 120 s: one too many
    b = RecoveryBudget(2, window=120.0)
    b.spend(0.0)
    b.spend(10.0)
    assert b.spend(200.0) == (1, False)  # the old ones left the window


def test_the_watchdog_fires_after_the_bound_of_unready_idleness_only():
    w = Watchdog(60.0, now=0.0)
    assert w.check(30.0, "waiting for the consumer group", standby=False, moved_at=0.0) is None
    why = w.check(61.0, "waiting for the consumer group", standby=False, moved_at=0.0)
    assert why is not None and "watchdog" in why and "waiting for the consumer group" in why


def test_progress_ready_or_standby_resets_the_watchdog():
    w = Watchdog(60.0, now=0.0)
    assert w.check(50.0, "held", standby=False, moved_at=40.0) is None  # progress at 40
    assert w.check(99.0, "held", standby=False, moved_at=40.0) is None  # 59 s since
    assert w.check(101.0, "held", standby=False, moved_at=40.0) is not None
    w = Watchdog(60.0, now=0.0)
    assert w.check(100.0, None, standby=False, moved_at=0.0) is None  # ready
    assert w.check(150.0, "stalled", standby=False, moved_at=0.0) is None
    assert w.check(300.0, "no partitions assigned", standby=True, moved_at=0.0) is None  # a standby
    assert w.check(361.0, "stalled", standby=False, moved_at=0.0) is not None


def test_backoff_doubles_up_to_its_cap():
    assert [backoff(a, 0.5, 10.0) for a in range(7)] == [0.5, 1.0, 2.0, 4.0, 8.0, 10.0, 10.0]
    assert backoff(10_000, 0.5, 10.0) == 10.0


def test_freed_offsets_are_committed_once_the_interval_passed():
    q = CommitQueue(now=0.0)
    q.add(ticket({("in", 0): 10}, records=5))
    assert q.free() and q.pending == {("in", 0): 10}
    assert q.due(0.5, sync=False, interval=1.0, max_records=100) is None  # too soon: kept pending
    q.add(ticket({("in", 0): 20}, records=5))
    assert q.free()
    assert q.due(1.0, sync=False, interval=1.0, max_records=100) == {("in", 0): 20}
    assert q.pending == {} and q.commit_at == 1.0
    assert q.due(9.0, sync=False, interval=1.0, max_records=100) is None  # nothing pending
    assert not q.free()  # nothing finished: no progress


def test_freed_offsets_are_committed_at_once_after_max_records_a_checkpoint_or_a_sync():
    q = CommitQueue(now=0.0)
    q.add(ticket({("in", 0): 10}, records=100))
    q.free()
    assert q.due(0.1, sync=False, interval=60.0, max_records=100) == {("in", 0): 10}  # max_records freed
    q.add(ticket({("in", 0): 11}, records=1))
    q.free()
    assert q.due(0.2, sync=False, interval=60.0, max_records=100) is None
    assert q.due(0.2, sync=True, interval=60.0, max_records=100) == {("in", 0): 11}  # a rebalance, shutdown
    q.add(ticket({("in", 0): 12}, checkpoint=True))
    q.free()
    assert q.due(0.3, sync=False, interval=60.0, max_records=100) == {("in", 0): 12}  # a checkpoint


def test_a_revoked_partition_leaves_nothing_pending():
    q = CommitQueue(now=0.0)
    q.add(ticket({("in", 0): 10, ("in", 1): 4}))
    q.free()
    q.forget([("in", 1)])
    assert q.due(5.0, sync=False, interval=1.0, max_records=100) == {("in", 0): 10}


def test_an_outage_allows_one_probe_a_second_and_says_how_long_it_lasted():
    o = Outage()
    assert not o.probe_due(0.0)  # no outage: nothing to probe
    o.down(10.0)
    o.down(11.0)  # already down: the start stays
    assert o.probe_due(11.0) and not o.probe_due(11.5) and o.probe_due(12.0)
    assert o.up(18.0) == 8.0 and o.since is None and not o.probe_due(20.0)


def test_a_member_without_partitions_looks_again_after_the_session_then_less_and_less_often():
    r = Resubscriber(session_seconds=6.0)
    r.start(0.0)
    assert not r.due(5.9, assigned=False, joined=False)
    assert r.due(6.0, assigned=False, joined=False)  # not joined: every 6 s
    assert not r.due(11.9, assigned=False, joined=False) and r.due(12.0, assigned=False, joined=False)
    r.count = 2  # joined, after two re-subscriptions: 4 x 6 s
    assert not r.due(35.9, assigned=False, joined=True) and r.due(36.0, assigned=False, joined=True)
    r.count = 10  # at most 16 x
    assert not r.due(131.9, assigned=False, joined=True) and r.due(132.0, assigned=False, joined=True)
    r.resync = True
    assert not r.due(500.0, assigned=True, joined=True)  # partitions: everything resets
    assert (r.since, r.count, r.resync) == (None, 0, False)
    assert not r.due(501.0, assigned=False, joined=True)  # the clock starts again
    assert r.due(507.0, assigned=False, joined=True)


def test_a_short_session_still_waits_five_seconds():
    r = Resubscriber(session_seconds=1.0)
    r.start(0.0)
    assert not r.due(4.9, assigned=False, joined=False) and r.due(5.0, assigned=False, joined=False)


def test_a_commit_is_done_only_once_confirmed_and_a_refused_one_is_pending_again_unless_superseded():
    q = CommitQueue(now=0.0)
    a, b = ("in", 0), ("in", 1)
    q.add(ticket({a: 10, b: 5}))
    q.free()
    todo = q.due(1.0, sync=False, interval=1.0, max_records=100)
    assert todo == {a: 10, b: 5}
    q.sending(todo)
    assert q.committed == {} and q.to_commit(todo, [a, b]) == {}  # sent: not sent again while awaited
    q.add(ticket({a: 20}))
    q.free()  # a newer offset of a is pending
    assert q.refused(todo) == {b: 5}  # a's 10 is superseded by the pending 20; b's 5 is back
    assert q.pending == {a: 20, b: 5} and q.sent == {}
    todo = q.due(2.0, sync=False, interval=1.0, max_records=100)
    q.sending(todo)
    q.done({a: 20})  # confirmed per partition
    assert q.committed == {a: 20} and q.sent == {b: 5}
    assert q.refused({a: 10}) == {}  # an older refusal never undoes a confirmed commit
    # the shutdown's synchronous commit re-commits what was sent and not confirmed
    assert q.due(2.1, sync=True, interval=60.0, max_records=100) == {b: 5}
    assert q.to_commit({b: 5}, [a, b], sync=True) == {b: 5}
