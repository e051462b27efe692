"""Thin confluent-kafka helpers: client configs from Settings, topic creation.

Only adapters (``stream/apps``, ``stream/dev``, the CLI and benchmarks) import this module;
the pure core never touches Kafka.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence
from typing import Any

from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaError, KafkaException, Message, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic

from stream.config import Settings
from stream.errors import StreamgateError

__all__ = [
    "all_topics",
    "consumer_config",
    "ensure_topics",
    "producer_config",
    "reader_from_beginning",
    "usable_messages",
]

log = logging.getLogger("streamgate.kafka")


def producer_config(bootstrap: str, **extra: Any) -> dict[str, Any]:
    conf: dict[str, Any] = {
        "bootstrap.servers": bootstrap,
        "enable.idempotence": True,  # no duplicates from producer retries; acks=all
        "linger.ms": 5,
        "batch.num.messages": 10000,
        "queue.buffering.max.messages": 500000,
        "client.id": "streamgate",
    }
    conf.update(extra)
    return conf


def consumer_config(bootstrap: str, group: str, *, session_timeout_ms: int = 6000, **extra: Any) -> dict[str, Any]:
    conf: dict[str, Any] = {
        "bootstrap.servers": bootstrap,
        "group.id": group,
        "enable.auto.commit": False,  # we commit after the outputs of a batch are delivered
        "enable.auto.offset.store": False,
        "auto.offset.reset": "earliest",
        "session.timeout.ms": session_timeout_ms,
        "heartbeat.interval.ms": max(500, session_timeout_ms // 5),
        "queued.min.messages": 20000,
        # librdkafka backs its fetcher off for 1 s (default) once the local queue holds
        # queued.min.messages; with batch consumption that starves the loop (measured: 12 µs of
        # waiting per event). Re-check the queue after 5 ms instead.
        "fetch.queue.backoff.ms": 5,
        "client.id": "streamgate",
    }
    conf.update(extra)
    return conf


def all_topics(settings: Settings) -> list[str]:
    t = settings.topics
    return [t.raw, t.protected, t.dlq, t.features, t.frequencies, t.partials, t.snapshots, t.erasure, t.audit,
            t.metrics]


def ensure_topics(bootstrap: str, names: Iterable[str], *, partitions: int = 4, timeout: float = 30.0) -> list[str]:
    """Create the topics that don't exist yet; returns the names created."""
    admin = AdminClient({"bootstrap.servers": bootstrap})
    try:
        existing = set(admin.list_topics(timeout=timeout).topics)
    except KafkaException as exc:
        raise StreamgateError(f"cannot reach Kafka at {bootstrap}: {exc}") from exc
    wanted = [n for n in dict.fromkeys(names) if n not in existing]
    if not wanted:
        return []
    futures = admin.create_topics([NewTopic(n, num_partitions=partitions, replication_factor=1) for n in wanted])
    created = []
    for name, fut in futures.items():
        try:
            fut.result(timeout=timeout)
            created.append(name)
        except KafkaException as exc:
            err = exc.args[0] if exc.args else None
            if isinstance(err, KafkaError) and err.code() == KafkaError.TOPIC_ALREADY_EXISTS:
                continue
            raise StreamgateError(f"cannot create topic {name!r}: {exc}") from exc
    log.info("created topics", extra={"topics": created})
    return created


def reader_from_beginning(bootstrap: str, topic: str) -> Consumer:
    """A consumer assigned every partition of ``topic`` from its beginning: no consumer group
    join (which takes about half the session timeout), nothing committed. For reading tools."""
    consumer = Consumer(
        {"bootstrap.servers": bootstrap, "group.id": "streamgate-reader", "enable.auto.commit": False,
         "client.id": "streamgate-reader"}
    )
    md = consumer.list_topics(topic, timeout=10).topics.get(topic)
    if md is None or md.error is not None:
        consumer.close()
        raise StreamgateError(f"topic {topic!r} does not exist at {bootstrap}")
    consumer.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in md.partitions])
    return consumer


def usable_messages(msgs: Sequence[Message], logger: logging.Logger = log) -> list[Message]:
    """The records of a ``consume()`` batch: partition-EOF events dropped, other errors logged
    (the client retries them), a fatal error raised as :class:`StreamgateError`."""
    out: list[Message] = []
    for m in msgs:
        err = m.error()
        if err is None:
            out.append(m)
        elif err.code() == KafkaError._PARTITION_EOF:
            continue
        elif err.fatal():
            raise StreamgateError(f"fatal Kafka consumer error: {err.str()}")
        else:
            logger.warning("consumer error", extra={"error": err.str()})
    return out
