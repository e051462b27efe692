"""Thin confluent-kafka helpers: client configs from Settings, topic creation.

Only adapters (``stream/apps``, ``stream/dev``, the CLI and benchmarks) import this module;
the pure core never touches Kafka.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any, Literal

from confluent_kafka import (
    OFFSET_BEGINNING,
    Consumer,
    KafkaError,
    KafkaException,
    Message,
    Producer,
    TopicPartition,
)
from confluent_kafka.admin import AdminClient, NewTopic

from stream.config import Settings
from stream.errors import (
    BrokerUnreachableError,
    ProduceTimeoutError,
    StreamgateError,
    TopicMissingError,
    TopicReadError,
)
from stream.topicsconfig import DEFAULT_PARTITIONS, load_topics_config

__all__ = [
    "BOOTSTRAP_SETTING",
    "COUNTERS",
    "KAFKA_EVENTS",
    "LIBRDKAFKA_LOGGER",
    "PROBE_TIMEOUT",
    "RateLimitFilter",
    "TopicReader",
    "admin_client",
    "admin_config",
    "all_topics",
    "client_config",
    "consumer_config",
    "ensure_topics",
    "group_active",
    "probe_broker",
    "produce",
    "producer_config",
    "reachable_bootstrap",
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


def ensure_topics(bootstrap: str, names: Iterable[str], *, partitions: int | None = None, timeout: float = 30.0,
                  settings: Settings | None = None) -> list[str]:
    """Create the topics that don't exist yet; returns the names created. A topic the topics config
    lists (``settings.topics_config``, default the packaged ``ops/topics.yaml``; names resolved
    through ``settings``, default ``Settings()``) gets its configs and, unless ``partitions`` is
    given, its partition count; any other topic ``partitions`` (default 4) and the broker's defaults."""
    admin = admin_client(bootstrap)
    try:
        existing = set(admin.list_topics(timeout=timeout).topics)
    except KafkaException as exc:
        raise BrokerUnreachableError(f"cannot reach Kafka at {bootstrap} within {timeout:g} s; check {BOOTSTRAP_SETTING}",
                                     bootstrap=bootstrap) from exc
    wanted = [n for n in dict.fromkeys(names) if n not in existing]
    if not wanted:
        return []
    s = settings or Settings()
    specs = {spec.name: spec for spec in load_topics_config(s, s.topics_config)}
    new = []
    for n in wanted:
        spec = specs.get(n)
        count = partitions or (spec.partitions if spec else DEFAULT_PARTITIONS)
        new.append(NewTopic(n, num_partitions=count, replication_factor=spec.replication_factor if spec else 1,
                            config=dict(spec.config) if spec else {}))
    futures = admin.create_topics(new)
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


#: Process-wide counters of the failure paths handled here (also logged): consumer errors the
#: readers skipped, records that met a full producer queue, and produce calls that gave up.
COUNTERS: Counter[str] = Counter()
#: The keys of :data:`COUNTERS` (``streamgate_kafka_client_events_total{event=...}``).
KAFKA_EVENTS = ("read_errors", "produce_queue_full", "produce_gave_up")

ReadMode = Literal["end", "tail"]


class TopicReader:
    """Every partition of ``topics`` read from its beginning (or ``start``), without a consumer group
    (no join, nothing committed). The one reading loop of the tools, the demo and the workers' side reads.

    * ``mode="end"``: :meth:`batches` stops once every partition reached its end: the end offsets
      captured at assignment *and* an end-of-partition event from a fetch (the embedded broker's
      ListOffsets answer can lag the last batch, so the offsets alone would stop early). Empty polls
      never end the read: only the end does, or ``stall_timeout`` seconds without a record or an
      end-of-partition event, which raises :class:`TopicReadError`. ``linger`` > 0 keeps reading
      for that many seconds after the end (bounded even on a topic that never goes quiet).
    * ``mode="tail"``: :meth:`batches` yields every poll's records (possibly none) until ``stop()``.

    Errors are handled here once: end-of-partition events are consumed, other errors logged and
    counted (``errors``, ``COUNTERS["read_errors"]``; the client retries them), a fatal one raises
    :class:`TopicReadError`. No answer from the broker at the start raises :class:`BrokerUnreachableError`;
    a missing topic raises :class:`TopicMissingError` (``missing="raise"``), or is assigned once it
    exists (``missing="wait"``; ``mode="end"`` reads it as empty).
    """

    def __init__(self, bootstrap: str, topics: str | Sequence[str], *, mode: ReadMode = "end",
                 linger: float = 0.0, stall_timeout: float = 30.0, missing: Literal["raise", "wait"] = "raise",
                 start: int = OFFSET_BEGINNING, batch: int = 500, poll_timeout: float = 0.5,
                 client_id: str = "streamgate-reader", stop: Callable[[], bool] | None = None,
                 logger: logging.Logger = log, config: dict[str, Any] | None = None) -> None:
        self.bootstrap = bootstrap
        self.topics = [topics] if isinstance(topics, str) else list(topics)
        self.mode, self.linger, self.stall_timeout = mode, linger, stall_timeout
        self.batch, self.poll_timeout, self.start = batch, poll_timeout, start
        self.stop = stop or (lambda: False)
        self.logger = logger
        self.errors = 0  # consumer errors logged and skipped
        self.last_error: str | None = None
        self.empty_polls = 0
        self._ends: dict[tuple[str, int], int] = {}  # end offset captured at assignment
        self._next: dict[tuple[str, int], int] = {}  # next offset to read, as far as known
        self._eof: set[tuple[str, int]] = set()
        self._checked_at = float("-inf")
        self.consumer = Consumer(client_config(bootstrap, **{
            "group.id": client_id, "enable.auto.commit": False, "enable.partition.eof": True,
            "client.id": client_id, **(config or {})}))
        try:
            self.missing = self._assign(self.topics)
        except BaseException:
            self.consumer.close()
            raise
        if self.missing and missing == "raise":
            self.consumer.close()
            raise TopicMissingError(f"topic {self.missing[0]!r} does not exist at {bootstrap}", topic=self.missing[0])

    def __enter__(self) -> TopicReader:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()

    def close(self) -> None:
        with contextlib.suppress(KafkaException, RuntimeError):
            self.consumer.close()

    def _assign(self, topics: list[str]) -> list[str]:
        """Assign every partition of those of ``topics`` that exist; returns the missing ones."""
        try:
            md = self.consumer.list_topics(timeout=10)
        except KafkaException as exc:
            raise BrokerUnreachableError(f"cannot reach Kafka at {self.bootstrap}; check {BOOTSTRAP_SETTING}",
                                         bootstrap=self.bootstrap) from exc
        parts, missing = [], []
        for topic in topics:
            tmd = md.topics.get(topic)
            if tmd is None or tmd.error is not None:
                missing.append(topic)
                continue
            for p in tmd.partitions:
                tp = TopicPartition(topic, p, self.start)
                try:
                    low, high = self.consumer.get_watermark_offsets(tp, timeout=5)
                except KafkaException:
                    low, high = 0, 0  # unknown: the end-of-partition event decides alone
                self._ends[(topic, p)] = max(0, high)
                self._next[(topic, p)] = max(0, low)
                parts.append(tp)
        if parts:
            self.consumer.incremental_assign(parts)
        return missing

    def at_end(self) -> bool:
        """Every assigned partition was read to its end (``mode="end"``); missing topics count as empty."""
        return all(k in self._eof and self._next[k] >= end for k, end in self._ends.items())

    def _usable(self, msgs: Sequence[Message]) -> list[Message]:
        out: list[Message] = []
        for m in msgs:
            err = m.error()
            key = (m.topic() or "", m.partition() or 0)
            if err is None:
                out.append(m)
                self._next[key] = max(self._next.get(key, 0), (m.offset() or 0) + 1)
            elif err.code() == KafkaError._PARTITION_EOF:
                self._eof.add(key)
                self._next[key] = max(self._next.get(key, 0), m.offset() or 0)
            elif err.fatal():
                raise TopicReadError(f"fatal Kafka consumer error reading {key[0]!r}: {err.str()}", topic=key[0])
            else:
                self.errors += 1
                COUNTERS["read_errors"] += 1
                self.last_error = err.name()
                self.logger.warning("consumer error skipped", extra={"topic": key[0], "error": err.str()})
        return out

    def poll(self, timeout: float | None = None) -> list[Message]:
        """One fetch's records (errors handled as above); assigns missing topics that appeared."""
        if self.missing and time.monotonic() - self._checked_at >= 2.0:
            self._checked_at = time.monotonic()
            with contextlib.suppress(BrokerUnreachableError):
                self.missing = self._assign(self.missing)
        wait = self.poll_timeout if timeout is None else timeout
        if not self._ends:  # nothing assigned yet: consume() would raise
            if wait > 0:
                time.sleep(wait)
            return []
        try:
            msgs = self.consumer.consume(num_messages=self.batch, timeout=wait)
        except KafkaException as exc:
            err = exc.args[0] if exc.args else None
            if isinstance(err, KafkaError) and err.fatal():
                raise TopicReadError(f"fatal Kafka consumer error: {err.str()}", topic=",".join(self.topics)) from exc
            self.errors += 1
            COUNTERS["read_errors"] += 1
            self.last_error = type(exc).__name__
            self.logger.warning("consumer error skipped", extra={"error": str(exc)[:200]})
            return []
        if not msgs:
            self.empty_polls += 1
        return self._usable(msgs)

    def batches(self) -> Iterator[list[Message]]:
        """Batches of records, until the end (``mode="end"``) or ``stop()``."""
        if self.mode == "tail":
            while not self.stop():
                yield self.poll()
            return
        progress = time.monotonic()
        ended_at: float | None = None
        while not self.stop():
            if ended_at is None and self.at_end():
                ended_at = time.monotonic()
            if ended_at is not None and time.monotonic() - ended_at >= self.linger:
                return
            eofs = len(self._eof)
            msgs = self.poll()
            now = time.monotonic()
            if msgs or len(self._eof) != eofs:
                progress = now
            elif ended_at is None and now - progress > self.stall_timeout:
                raise TopicReadError(f"could not read {', '.join(self.topics)} to the end: no record and no "
                                     f"end of partition for {self.stall_timeout:g} s", topic=self.topics[0])
            if msgs:
                yield msgs

    def __iter__(self) -> Iterator[Message]:
        for msgs in self.batches():
            yield from msgs


def produce(producer: Producer, topic: str, value: bytes | None, key: bytes | None = None, *,
            partition: int | None = None, headers: Any = None, on_delivery: Callable[..., None] | None = None,
            timeout: float = 30.0, stop: Callable[[], bool] | None = None, logger: logging.Logger = log) -> None:
    """``producer.produce`` with a bounded wait for a full local queue (``BufferError``): poll the
    producer (serving deliveries) and retry until ``timeout`` seconds passed or ``stop()`` is true,
    then raise :class:`ProduceTimeoutError`. Counted (``COUNTERS``) and logged when it gives up."""
    try:
        if partition is None and headers is None and on_delivery is None:  # the hot path of the benchmarks
            producer.produce(topic, value, key)
            return
        kw: dict[str, Any] = {"on_delivery": on_delivery} if on_delivery is not None else {}
        if partition is not None:
            kw["partition"] = partition
        if headers is not None:
            kw["headers"] = headers
        producer.produce(topic, value, key, **kw)
        return
    except BufferError:
        COUNTERS["produce_queue_full"] += 1
    kw = {"on_delivery": on_delivery} if on_delivery is not None else {}
    if partition is not None:
        kw["partition"] = partition
    if headers is not None:
        kw["headers"] = headers
    deadline = time.monotonic() + timeout
    while True:
        producer.poll(0.05)
        try:
            producer.produce(topic, value, key, **kw)
            return
        except BufferError:
            stopped = stop is not None and stop()
            if stopped or time.monotonic() >= deadline:
                COUNTERS["produce_gave_up"] += 1
                why = "stop requested" if stopped else f"still full after {timeout:g} s"
                logger.warning("record not queued: the producer queue is full", extra={"topic": topic, "why": why})
                raise ProduceTimeoutError(f"record not queued for {topic!r}: producer queue {why}",
                                          topic=topic, stopped=stopped) from None
