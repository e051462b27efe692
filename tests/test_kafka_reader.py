"""``stream.kafka.TopicReader`` and ``stream.kafka.produce`` against the real embedded broker."""

from __future__ import annotations

import threading
import time
from typing import Any

import pytest
from confluent_kafka import KafkaError, Producer

from stream.errors import ProduceTimeoutError, TopicMissingError, TopicReadError
from stream.kafka import COUNTERS, TopicReader, ensure_topics, produce, producer_config

pytestmark = pytest.mark.integration


def _publish(bootstrap: str, topic: str, n: int, *, partition: int | None = None, prefix: str = "r") -> None:
    p = Producer(producer_config(bootstrap))
    for i in range(n):
        produce(p, topic, f"{prefix}{i}".encode(), f"k{i}".encode(), partition=partition)
    assert p.flush(30) == 0


def test_end_mode_reads_every_record_of_every_partition(kafka_bootstrap: str, unique_id: str) -> None:
    topic = f"sg-reader-end-{unique_id}"
    ensure_topics(kafka_bootstrap, [topic], partitions=3)
    _publish(kafka_bootstrap, topic, 300)
    with TopicReader(kafka_bootstrap, topic) as reader:
        values = [m.value() for m in reader]
        assert reader.at_end()
    assert sorted(values) == sorted(f"r{i}".encode() for i in range(300))


def test_end_mode_survives_a_slow_broker(kafka_bootstrap: str, unique_id: str) -> None:
    """The end arrives only after several empty polls: records sit in one partition, the other
    three are empty and the broker holds each empty fetch for a second before it answers (their
    end of partition comes late). A loop that stopped at its first empty poll would read nothing."""
    topic = f"sg-reader-slow-{unique_id}"
    ensure_topics(kafka_bootstrap, [topic], partitions=4)
    _publish(kafka_bootstrap, topic, 50, partition=2)
    with TopicReader(kafka_bootstrap, topic, poll_timeout=0.02, config={"fetch.wait.max.ms": 1000}) as reader:
        got = [m.value() for m in reader]
        empty = reader.empty_polls
    assert empty >= 3, "the case did not exercise empty polls"
    assert len(got) == 50


def test_end_mode_raises_a_typed_error_when_the_end_never_comes(kafka_bootstrap: str, unique_id: str) -> None:
    topic = f"sg-reader-stall-{unique_id}"
    ensure_topics(kafka_bootstrap, [topic], partitions=1)
    # the broker holds an empty fetch for 10 s: no end of partition within the 0.5 s bound
    with TopicReader(kafka_bootstrap, topic, stall_timeout=0.5, poll_timeout=0.05,
                     config={"fetch.wait.max.ms": 10_000}) as reader, pytest.raises(TopicReadError, match="to the end"):
        list(reader)


def test_linger_reads_what_arrives_after_the_end(kafka_bootstrap: str, unique_id: str) -> None:
    topic = f"sg-reader-linger-{unique_id}"
    ensure_topics(kafka_bootstrap, [topic], partitions=1)
    _publish(kafka_bootstrap, topic, 5)
    got: list[bytes | None] = []
    with TopicReader(kafka_bootstrap, topic, linger=3.0) as reader:
        for m in reader:
            got.append(m.value())
            if len(got) == 5:
                _publish(kafka_bootstrap, topic, 5, prefix="late")
    assert len(got) == 10 and got[-1] == b"late4"


def test_tail_mode_waits_for_a_missing_topic(kafka_bootstrap: str, unique_id: str) -> None:
    topic = f"sg-reader-tail-{unique_id}"
    with pytest.raises(TopicMissingError):
        TopicReader(kafka_bootstrap, topic)
    stop = threading.Event()
    with TopicReader(kafka_bootstrap, topic, mode="tail", missing="wait", stop=stop.is_set, poll_timeout=0.1) as reader:
        assert reader.missing == [topic]
        ensure_topics(kafka_bootstrap, [topic], partitions=2)
        _publish(kafka_bootstrap, topic, 20)
        got: list[Any] = []
        deadline = time.monotonic() + 60
        for msgs in reader.batches():
            got += msgs
            assert time.monotonic() < deadline, f"tail read {len(got)} of 20"
            if len(got) >= 20:
                stop.set()
    assert reader.missing == [] and len(got) == 20


class _Msg:
    """A consume() result carrying an error (confluent-kafka cannot build one by hand)."""

    def __init__(self, topic: str, err: KafkaError | None, offset: int = 0, value: bytes = b"v") -> None:
        self._t, self._err, self._off, self._v = topic, err, offset, value

    def error(self) -> KafkaError | None:
        return self._err

    def topic(self) -> str:
        return self._t

    def partition(self) -> int:
        return 0

    def offset(self) -> int:
        return self._off

    def value(self) -> bytes:
        return self._v


def test_errors_are_handled_once_counted_and_fatal_ones_raise(kafka_bootstrap: str, unique_id: str) -> None:
    topic = f"sg-reader-err-{unique_id}"
    ensure_topics(kafka_bootstrap, [topic], partitions=1)
    with TopicReader(kafka_bootstrap, topic) as reader:
        before = COUNTERS["read_errors"]
        batch: list[Any] = [_Msg(topic, None, 0), _Msg(topic, KafkaError(KafkaError._TRANSPORT, "down")),
                            _Msg(topic, KafkaError(KafkaError._PARTITION_EOF, "eof"), offset=1)]
        usable = reader._usable(batch)
        assert [m.offset() for m in usable] == [0]
        assert reader.errors == 1 and COUNTERS["read_errors"] == before + 1 and reader.last_error == "_TRANSPORT"
        assert (topic, 0) in reader._eof
        with pytest.raises(TopicReadError, match="fatal"):
            reader._usable([_Msg(topic, KafkaError(KafkaError._FENCED, "fenced", fatal=True))])


def test_produce_retries_a_full_queue_then_gives_up_by_deadline_or_stop(kafka_bootstrap: str, unique_id: str) -> None:
    topic = f"sg-produce-{unique_id}"
    ensure_topics(kafka_bootstrap, [topic], partitions=1)
    p = Producer(producer_config(kafka_bootstrap, **{"queue.buffering.max.messages": 2, "linger.ms": 50}))
    full = COUNTERS["produce_queue_full"]
    for i in range(30):
        produce(p, topic, b"x%d" % i)
    assert p.flush(30) == 0
    assert COUNTERS["produce_queue_full"] > full, "the queue never filled: the retry path was not exercised"
    # nothing drains a queue aimed at a closed port: the deadline, then the stop check, end the wait
    dead = Producer(producer_config("127.0.0.1:1", **{"queue.buffering.max.messages": 1,
                                                     "message.timeout.ms": 60_000}))
    produce(dead, topic, b"first")
    with pytest.raises(ProduceTimeoutError) as exc:
        produce(dead, topic, b"second", timeout=0.3)
    assert not exc.value.stopped
    with pytest.raises(ProduceTimeoutError) as exc:
        produce(dead, topic, b"second", timeout=600, stop=lambda: True)
    assert exc.value.stopped and COUNTERS["produce_gave_up"] >= 2
    dead.purge()
