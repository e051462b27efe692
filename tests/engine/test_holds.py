"""Holds: the one retry policy for a dependency that is down (pure units, no broker)."""

from __future__ import annotations

from stream.engine.contract import Record
from stream.engine.holds import Hold, Retry
from stream.errors import KeyUnavailableError


def rec(partition: int, offset: int, topic: str = "in") -> Record:
    return Record(topic, partition, offset, b"v")


def test_a_failing_batch_waits_doubling_up_to_the_cap_and_every_retry_is_counted():
    h = Hold(0.5, 4.0)
    h.records = [rec(0, 1), rec(1, 7)]
    waits = [h.failed_with(KeyUnavailableError("down"))[0] for _ in range(6)]
    assert waits == [0.5, 1.0, 2.0, 4.0, 4.0, 4.0]
    assert h.retries == 6 and h.attempt == 6
    _, problem = h.failed_with(KeyUnavailableError("down"))
    assert problem == "dependency unavailable (KeyUnavailableError): 2 records held"


def test_a_batch_that_passes_starts_the_backoff_over_but_keeps_the_count():
    r = Retry(1.0, 8.0)
    assert [r.failed(), r.failed(), r.failed()] == [1.0, 2.0, 4.0]
    r.passed()
    assert r.failed() == 1.0 and r.retries == 4


def test_records_of_partitions_a_rebalance_takes_leave_the_hold_and_the_rest_keep_their_order():
    h = Hold(0.5, 4.0)
    h.records = [rec(0, 1), rec(1, 1), rec(0, 2), rec(2, 5), rec(1, 2)]
    h.forget([("in", 1)])
    assert h.records == [rec(0, 1), rec(0, 2), rec(2, 5)]
    h.forget([("other", 0)])  # another topic's partition 0: not ours
    assert len(h) == 3


def test_records_polled_during_the_wait_join_the_hold_and_are_committed_with_it():
    h = Hold(0.5, 4.0)
    h.records = [rec(0, 3), rec(0, 4)]
    h.add([rec(1, 9), rec(0, 5)])  # a partition assigned during the wait, and more of partition 0
    assert len(h) == 4
    assert h.next_offsets(h.records) == {("in", 0): 6, ("in", 1): 10}
    h.clear()
    assert not h.records


def test_next_offsets_take_the_highest_offset_per_partition_whatever_the_order():
    assert Hold.next_offsets([rec(0, 9), rec(0, 4), rec(3, 0, "b")]) == {("in", 0): 10, ("b", 3): 1}
    assert Hold.next_offsets([]) == {}
