"""A refused offset commit with nothing left to retry leaves no failure behind (pure: the engine's
commit-answer handling, no broker; the clock of its progress tracker passed in).

A refusal can come for a partition this member no longer holds (an answer that arrives after a
revoke or a lost assignment: ``ILLEGAL_GENERATION``), or after a newer commit of the partition; and
a revoke can drop offsets that were put back for a retry. None of these may leave "offset commits
failing" standing: on an idle partition no later commit would clear it, the worker would read not
ready, and its watchdog would end it. Failing commits that are retried: ``test_commit_failures.py``.
"""

from __future__ import annotations

from typing import Any

from confluent_kafka import KafkaError, TopicPartition

from stream.config import Settings
from stream.engine import StreamEngine
from stream.engine.contract import Record, Result
from stream.engine.core import COMMITS

TOPIC = "clicks.raw"


class Idle(StreamEngine):
    name = "gateway"

    def topics(self) -> list[str]:
        return [TOPIC]

    def group(self) -> str:
        return "refusals"

    def process(self, records: list[Record]) -> Result:
        return Result()


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def _engine() -> tuple[Idle, Clock]:
    settings = Settings(kafka_bootstrap="127.0.0.1:9", stall_seconds=30.0)
    engine = Idle(settings, bootstrap="127.0.0.1:9")
    clock = Clock()
    engine.progress.clock = clock
    engine.started = engine.joined = True
    engine.assigned = {(TOPIC, 1)}
    return engine, clock


def _refuse(engine: Idle, partition: int, offset: int) -> None:
    """The broker's answer to an asynchronous commit: refused (as librdkafka serves it to ``on_commit``)."""
    engine._on_commit(KafkaError(KafkaError.ILLEGAL_GENERATION), [TopicPartition(TOPIC, partition, offset)])


def test_a_refusal_for_a_partition_no_longer_held_is_not_a_failure() -> None:
    engine, clock = _engine()
    _refuse(engine, 0, 50)  # partition 0 was revoked before the answer came
    assert COMMITS not in engine.progress.failing and engine.retries["commit"] == 0
    assert engine._queue.pending == {}
    clock.now += 65
    assert engine.not_ready_reason is None


def test_a_refusal_superseded_by_a_newer_commit_is_not_a_failure() -> None:
    engine, clock = _engine()
    engine._queue.sending({(TOPIC, 1): 80})
    engine._queue.done({(TOPIC, 1): 80})  # a newer commit was confirmed
    _refuse(engine, 1, 50)  # then the answer to an older one
    assert COMMITS not in engine.progress.failing and engine._queue.pending == {}
    clock.now += 65
    assert engine.not_ready_reason is None


def test_a_revoke_drops_the_offsets_to_retry_and_the_failure_with_them() -> None:
    engine, clock = _engine()
    _refuse(engine, 1, 50)
    assert engine._queue.pending == {(TOPIC, 1): 50} and COMMITS in engine.progress.failing  # retried
    assert engine.retries["commit"] == 1
    clock.now += 31
    assert engine.not_ready_reason is not None and engine.not_ready_reason.startswith("offset commits failing")
    engine._forget([(TOPIC, 1)])  # revoked: the next owner starts from the committed offset
    engine.assigned = {(TOPIC, 2)}
    assert COMMITS not in engine.progress.failing
    clock.now += 65
    assert engine.not_ready_reason is None


def test_a_refusal_with_offsets_to_retry_stays_a_failure_until_a_commit_succeeds() -> None:
    engine, clock = _engine()
    _refuse(engine, 1, 50)
    engine._forget([(TOPIC, 7)])  # another partition goes: the retry of partition 1 still stands
    assert COMMITS in engine.progress.failing
    clock.now += 31
    assert engine.not_ready_reason is not None
    engine._on_commit(None, [TopicPartition(TOPIC, 1, 50)])
    assert COMMITS not in engine.progress.failing and engine.not_ready_reason is None


def test_refusals_are_logged_in_any_case(caplog: Any) -> None:
    engine, _clock = _engine()
    with caplog.at_level("INFO", logger="streamgate.gateway"):
        _refuse(engine, 0, 50)
    assert any("nothing to retry" in r.getMessage() for r in caplog.records)
