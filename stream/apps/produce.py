"""Publishing raw events to ``clicks.raw`` (``streamgate produce``, the demo, tests and benchmarks)."""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterable
from typing import Any

import orjson
from confluent_kafka import Message, Producer

from stream.gateway.core import is_envelope, why_not_json
from stream.kafka import produce, producer_config
from stream.schema import EventSchema, Reason

__all__ = ["LineCheck", "encode_raw", "publish"]


def encode_raw(item: bytes | str | dict[str, Any], key_field: str = "user_id") -> tuple[bytes | None, bytes]:
    """(key, value) for a raw record. The key is the event's ``user_id`` when it has one
    (``clicks.raw`` is keyed by user_id); records that aren't JSON objects go unkeyed and
    the gateway dead-letters them."""
    if isinstance(item, dict):
        value = orjson.dumps(item)
        event: Any = item
    else:
        value = item.encode("utf-8", "surrogatepass") if isinstance(item, str) else item
        try:
            event = orjson.loads(value)
        except orjson.JSONDecodeError:
            event = None
    key = event.get(key_field) if isinstance(event, dict) else None
    return (key.encode("utf-8", "surrogatepass") if isinstance(key, str) else None), value


class LineCheck:
    """Validates raw input lines the way the gateway will, before they are sent: counts what the
    gateway would dead-letter, by reason, and remembers where the first ones are."""

    def __init__(self, schema: EventSchema, *, max_event_bytes: int, keep_first: int = 5) -> None:
        self.schema = schema
        self.max_event_bytes = max_event_bytes
        self.keep_first = keep_first
        self.lines = 0
        self.invalid: Counter[str] = Counter()
        self.first_invalid: list[int] = []

    def reason(self, line: bytes) -> str | None:
        """Why the gateway would refuse ``line``, or None when it is a valid event."""
        if len(line) > self.max_event_bytes:
            return Reason.TOO_LARGE.value
        try:
            event = orjson.loads(line)
        except orjson.JSONDecodeError:
            return why_not_json(line).reason.value  # not_utf8, number_out_of_range or not_json
        if is_envelope(event):
            event = event["payload"]  # a Kafka Connect envelope: the gateway unwraps it
        rejection = self.schema.check(event)
        return None if rejection is None else rejection.reason.value

    def __call__(self, line: bytes) -> bool:
        """Count ``line``; True when it is valid."""
        self.lines += 1
        why = self.reason(line)
        if why is None:
            return True
        self.invalid[why] += 1
        if len(self.first_invalid) < self.keep_first:
            self.first_invalid.append(self.lines)
        return False

    def summary(self) -> str:
        reasons = ", ".join(f"{r} {n:,}" for r, n in self.invalid.most_common())
        where = ", ".join(str(i) for i in self.first_invalid)
        return (f"{sum(self.invalid.values()):,} of {self.lines:,} lines are not valid {self.schema.name} events "
                f"({reasons}; first at line {where})")


def publish(
    bootstrap: str,
    topic: str,
    items: Iterable[bytes | str | dict[str, Any]],
    *,
    on_progress: Callable[[int], None] | None = None,
    progress_every: int = 1000,
    on_delivered: Callable[[Message], None] | None = None,
) -> int:
    """Publish every item; returns the number delivered. Raises if any delivery failed.
    ``on_delivered`` sees each delivered message (with its partition and offset)."""
    producer = Producer(producer_config(bootstrap, **{"linger.ms": 20}))
    failed: list[str] = []

    def on_delivery(err: Any, msg: Message) -> None:
        if err is not None:
            failed.append(str(err))
        elif on_delivered is not None:
            on_delivered(msg)

    n = 0
    for item in items:
        key, value = encode_raw(item)
        produce(producer, topic, value, key, on_delivery=on_delivery, timeout=120.0)
        n += 1
        if n % progress_every == 0:
            producer.poll(0)
            if on_progress is not None:
                on_progress(n)
    remaining = producer.flush(60)
    if on_progress is not None:
        on_progress(n)
    if remaining or failed:
        raise RuntimeError(f"{remaining + len(failed)} of {n} records were not delivered to {topic}")
    return n
