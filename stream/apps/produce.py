"""Publishing raw events to ``clicks.raw`` (``streamgate produce``, the demo, tests and benchmarks)."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import orjson
from confluent_kafka import Message, Producer

from stream.kafka import producer_config

__all__ = ["encode_raw", "publish"]


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
        while True:
            try:
                producer.produce(topic, value, key, on_delivery=on_delivery)
                break
            except BufferError:
                producer.poll(0.05)
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
