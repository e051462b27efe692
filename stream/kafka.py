"""Thin confluent-kafka helpers: client configs from Settings, topic creation.

Only adapters (``stream/apps``, ``stream/dev``, the CLI and benchmarks) import this module;
the pure core never touches Kafka.
"""

from __future__ import annotations

import logging
import os
import re
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from typing import Any

from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaError, KafkaException, Message, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic

from stream.config import Settings
from stream.errors import BrokerUnreachableError, StreamgateError, TopicMissingError

__all__ = [
    "BOOTSTRAP_SETTING",
    "LIBRDKAFKA_LOGGER",
    "PROBE_TIMEOUT",
    "RateLimitFilter",
    "admin_client",
    "admin_config",
    "all_topics",
    "client_config",
    "consumer_config",
    "ensure_topics",
    "group_active",
    "probe_broker",
    "producer_config",
    "reachable_bootstrap",
    "reader_from_beginning",
    "usable_messages",
]

log = logging.getLogger("streamgate.kafka")

#: The environment variable that names the broker (quoted in connection errors).
BOOTSTRAP_SETTING = "STREAMGATE_KAFKA_BOOTSTRAP"
#: Seconds :func:`probe_broker` waits for a metadata answer before it gives up.
PROBE_TIMEOUT = 5.0
#: The logger every librdkafka client logs to (warning and above, rate-limited).
LIBRDKAFKA_LOGGER = "streamgate.kafka.librdkafka"
_LIBRDKAFKA_LOG_LEVEL = 4  # syslog "warning": librdkafka does not even queue info/debug lines
_UNSAFE_CHARS = re.compile(r"[\'\"{}@\\\x00-\x1f]")
# counters inside a message ("after 0ms", "3 identical error(s)", "producer-1"), not address parts
_COUNTERS = re.compile(r"(?<![.:#\d])\d+(?![.:\d])")


class RateLimitFilter(logging.Filter):
    """Drops records below WARNING; passes each distinct message (numbers that are counters, not
    address parts, ignored) the first time, then at most once every ``every`` seconds, with how
    many were suppressed in between. Also strips quotes/braces/``@`` so the safe-logging filter
    (:mod:`stream.ops.logging`) keeps the text instead of redacting it."""

    def __init__(self, every: float = 30.0, *, max_keys: int = 1024,
                 clock: Callable[[], float] = time.monotonic) -> None:
        super().__init__()
        self.every = every
        self.max_keys = max_keys
        self._clock = clock
        self._seen: dict[tuple[int, str], list[float]] = {}  # key -> [last emitted at, suppressed since]
        self._lock = threading.Lock()

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno < logging.WARNING:
            return False
        text = _UNSAFE_CHARS.sub("", record.getMessage())[:200]
        key = (record.levelno, _COUNTERS.sub("N", text))
        now = self._clock()
        with self._lock:
            seen = self._seen.get(key)
            if seen is not None and now - seen[0] < self.every:
                seen[1] += 1
                return False
            suppressed = int(seen[1]) if seen is not None else 0
            if seen is None and len(self._seen) >= self.max_keys:
                self._seen.pop(next(iter(self._seen)))
            self._seen[key] = [now, 0]
        if suppressed:
            record.msg, record.args = "%s (%d similar suppressed in %d s)", (text, suppressed, round(self.every))
        else:
            record.msg, record.args = "%s", (text,)
        return True


def _librdkafka_logger() -> logging.Logger:
    logger = logging.getLogger(LIBRDKAFKA_LOGGER)
    if not any(isinstance(f, RateLimitFilter) for f in logger.filters):
        logger.addFilter(RateLimitFilter())
    return logger


def client_config(bootstrap: str, **extra: Any) -> dict[str, Any]:
    """The settings every client gets: the bootstrap and librdkafka's log lines routed to
    :data:`LIBRDKAFKA_LOGGER` (warning and above, rate-limited) instead of raw stderr. Those
    lines are emitted when the client is polled (``poll``/``consume``/``flush``)."""
    conf: dict[str, Any] = {
        "bootstrap.servers": bootstrap,
        "logger": _librdkafka_logger(),
        "log_level": _LIBRDKAFKA_LOG_LEVEL,
        **kafka_security(),
    }
    conf.update(extra)
    return conf


def kafka_security() -> dict[str, str]:
    """The process's SASL principal (``STREAMGATE_KAFKA_SASL_USERNAME`` / ``_PASSWORD_FILE``),
    ``{}`` without one: every client of a process authenticates as the same principal."""
    if not os.environ.get("STREAMGATE_KAFKA_SASL_USERNAME"):
        return {}
    return Settings().kafka_security()


def admin_config(bootstrap: str, **extra: Any) -> dict[str, Any]:
    return client_config(bootstrap, **extra)


def admin_client(bootstrap: str, **extra: Any) -> AdminClient:
    return AdminClient(admin_config(bootstrap, **extra))


def _probe_detail(err: KafkaError) -> str:
    """The useful part of a librdkafka connection error: no ``host/bootstrap:`` prefix, no timing."""
    text = err.str()
    text = re.sub(r"^\S+/bootstrap: ", "", text)
    text = re.sub(r" \(after \d+ms in state \w+.*\)$", "", text)
    return _UNSAFE_CHARS.sub("", text)


def probe_broker(bootstrap: str, *, timeout: float = PROBE_TIMEOUT, setting: str | None = BOOTSTRAP_SETTING) -> None:
    """Ask ``bootstrap`` for cluster metadata; raise :class:`BrokerUnreachableError` (one line
    naming the address, the cause and ``setting``) if no answer came within ``timeout`` seconds.
    Logs nothing: librdkafka's connection errors only feed the exception's message."""
    errors: list[KafkaError] = []
    quiet = logging.Logger("streamgate.kafka.probe", logging.CRITICAL + 1)  # not in the hierarchy: silent
    conf: dict[str, Any] = {"bootstrap.servers": bootstrap, "logger": quiet, "log_level": 0, "error_cb": errors.append,
                            "socket.connection.setup.timeout.ms": max(1000, int(timeout * 1000)), **kafka_security()}
    try:
        admin = AdminClient(conf)
    except KafkaException as exc:  # e.g. a malformed address list
        raise BrokerUnreachableError(f"invalid Kafka address {bootstrap}: {_UNSAFE_CHARS.sub('', str(exc))}"
                                     + (f"; check {setting}" if setting else ""), bootstrap=bootstrap) from None
    deadline = time.monotonic() + timeout
    while True:
        left = deadline - time.monotonic()
        started = time.monotonic()
        try:
            admin.list_topics(timeout=max(0.1, min(1.0, left)))
            return
        except KafkaException:
            admin.poll(0)  # serves error_cb
        if left <= 1.0:
            break
        time.sleep(max(0.0, 0.1 - (time.monotonic() - started)))  # no busy loop if the call fails at once
    transport = [e for e in errors if e.code() != KafkaError._ALL_BROKERS_DOWN]
    cause = _probe_detail((transport or errors)[-1]) if errors else "no answer"
    where = f"; check {setting}" if setting else ""
    raise BrokerUnreachableError(f"cannot reach Kafka at {bootstrap} within {timeout:g} s: {cause}{where}",
                                 bootstrap=bootstrap)


def reachable_bootstrap(settings: Settings, *, timeout: float = PROBE_TIMEOUT) -> str:
    """The configured bootstrap (else the running dev stack's), checked with :func:`probe_broker`."""
    bootstrap = settings.kafka_bootstrap_or_dev()
    setting = BOOTSTRAP_SETTING if settings.kafka_bootstrap else \
        "the embedded dev stack (streamgate dev status) or set " + BOOTSTRAP_SETTING
    probe_broker(bootstrap, timeout=timeout, setting=setting)
    return bootstrap


def producer_config(bootstrap: str, **extra: Any) -> dict[str, Any]:
    conf: dict[str, Any] = {
        **client_config(bootstrap),
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
        **client_config(bootstrap),
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
        # How long the broker may hold a fetch that has no new data (librdkafka: 500). Kafka answers
        # as soon as fetch.min.bytes arrived, but the embedded broker (Tansu) holds an empty fetch
        # for the whole wait: each hop then costs up to this long (streamgate bench latency:
        # produce -> clicks.protected p99 797 ms at 5k events/s with 500). Costs idle fetch requests.
        "fetch.wait.max.ms": 10,
        "client.id": "streamgate",
    }
    conf.update(extra)
    return conf


def all_topics(settings: Settings) -> list[str]:
    t = settings.topics
    return [t.raw, t.protected, t.dlq, t.features, t.frequencies, t.partials, t.snapshots, t.updates, t.erasure,
            t.audit, t.metrics]


def ensure_topics(bootstrap: str, names: Iterable[str], *, partitions: int = 4, timeout: float = 30.0) -> list[str]:
    """Create the topics that don't exist yet; returns the names created."""
    admin = admin_client(bootstrap)
    try:
        existing = set(admin.list_topics(timeout=timeout).topics)
    except KafkaException as exc:
        raise BrokerUnreachableError(f"cannot reach Kafka at {bootstrap} within {timeout:g} s; check {BOOTSTRAP_SETTING}",
                                     bootstrap=bootstrap) from exc
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


def group_active(bootstrap: str, group: str, *, timeout: float = 5.0) -> bool | None:
    """Whether consumer group ``group`` has live members now (by its state: some brokers do not list
    the members), or None when the broker would not say."""
    from confluent_kafka import ConsumerGroupState

    admin = admin_client(bootstrap)  # kept referenced until the future resolves
    try:
        state = admin.describe_consumer_groups([group], request_timeout=timeout)[group].result(timeout=timeout).state
    except Exception as exc:  # unsupported or unreachable: say nothing rather than guess
        log.info("cannot describe consumer group", extra={"group": group, "error": str(exc)[:200]})
        return None
    if state in (ConsumerGroupState.EMPTY, ConsumerGroupState.DEAD):
        return False
    if state in (ConsumerGroupState.STABLE, ConsumerGroupState.PREPARING_REBALANCING,
                 ConsumerGroupState.COMPLETING_REBALANCING):
        return True
    return None


def reader_from_beginning(bootstrap: str, topic: str) -> Consumer:
    """A consumer assigned every partition of ``topic`` from its beginning: no consumer group
    join (which takes about half the session timeout), nothing committed. For reading tools."""
    consumer = Consumer(client_config(bootstrap, **{"group.id": "streamgate-reader", "enable.auto.commit": False,
                                                     "client.id": "streamgate-reader"}))
    try:
        md = consumer.list_topics(topic, timeout=10).topics.get(topic)
    except KafkaException as exc:
        consumer.close()
        raise BrokerUnreachableError(f"cannot reach Kafka at {bootstrap}; check {BOOTSTRAP_SETTING}",
                                     bootstrap=bootstrap) from exc
    if md is None or md.error is not None:
        consumer.close()
        raise TopicMissingError(f"topic {topic!r} does not exist at {bootstrap}", topic=topic)
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
