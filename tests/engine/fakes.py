"""A fake producer for the engine's pure units (no broker): it queues records, raises what a test
scripts, and reports deliveries on ``poll``/``flush`` like librdkafka."""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from typing import Any

from confluent_kafka import KafkaError, KafkaException


class FakeMessage:
    def __init__(self, topic: str, value: bytes | None, key: bytes | None, timestamp: int | None,
                 headers: Any = None) -> None:
        self._topic, self._value, self._key, self._ts = topic, value, key, timestamp
        self._headers = headers

    def topic(self) -> str:
        return self._topic

    def value(self) -> bytes | None:
        return self._value

    def key(self) -> bytes | None:
        return self._key

    def headers(self) -> Any:
        return self._headers

    def timestamp(self) -> tuple[int, int]:
        return (1, self._ts) if self._ts is not None else (0, -1)


class FakeProducer:
    """``buffer_errors``: how many queueing calls raise BufferError (the queue is full) before room
    appears (``None``: always full). ``raise_on_produce``: a KafkaError raised by the next queueing
    call. ``delivery_errors``: errors reported, in order, for the next deliveries."""

    def __init__(self, *, buffer_errors: int | None = 0, raise_on_produce: KafkaError | None = None,
                 delivery_errors: list[KafkaError] | None = None) -> None:
        self.buffer_errors = buffer_errors
        self.raise_on_produce = raise_on_produce
        self.delivery_errors = deque(delivery_errors or [])
        self.queue: deque[tuple[FakeMessage, Callable[[Any, Any], None]]] = deque()
        self.delivered: list[FakeMessage] = []
        self.calls = 0
        self.polls = 0

    def _admit(self) -> None:
        self.calls += 1
        if self.raise_on_produce is not None:
            err, self.raise_on_produce = self.raise_on_produce, None
            raise KafkaException(err)
        if self.buffer_errors is None:
            raise BufferError("Local: Queue full")
        if self.buffer_errors > 0:
            self.buffer_errors -= 1
            raise BufferError("Local: Queue full")

    def produce(self, topic: str, value: bytes | None = None, key: bytes | None = None, *,
                on_delivery: Callable[[Any, Any], None], timestamp: int | None = None, headers: Any = None) -> None:
        self._admit()
        self.queue.append((FakeMessage(topic, value, key, timestamp or None, headers), on_delivery))

    def produce_batch(self, topic: str, msgs: list[dict[str, Any]], *, on_delivery: Callable[[Any, Any], None]) -> int:
        self._admit()
        for m in msgs:
            assert "headers" not in m, "confluent-kafka's produce_batch cannot carry headers"
            self.queue.append((FakeMessage(topic, m["value"], m.get("key"), m.get("timestamp")), on_delivery))
        return len(msgs)

    def poll(self, timeout: float = 0.0) -> int:
        self.polls += 1
        n = 0
        while self.queue:
            msg, cb = self.queue.popleft()
            err = self.delivery_errors.popleft() if self.delivery_errors else None
            if err is None:
                self.delivered.append(msg)
            cb(err, msg)
            n += 1
        return n

    def flush(self, timeout: float = 0.0) -> int:
        self.poll(timeout)
        return len(self.queue)
