"""The gateway's Kafka loop: consume a batch from ``clicks.raw``, protect it with the pure
core, produce to ``clicks.protected`` / ``clicks.dlq``, then commit.

Why a batch loop and not one Faust stream event per record: on the reference
machine Faust's per-event stream machinery tops out at about 17k events/s
even when the agent only counts (0.17 of a plain confluent-kafka passthrough),
below the gateway's 0.30 target before any work is done. The loop below does
per-batch I/O (one consume, one key-store round trip, one flush, one commit per
batch) and runs inside the Faust worker as a service (see
:mod:`stream.apps.gateway`); the README gives the measured figures.

Delivery guarantee
------------------
``at_least_once`` (default): the idempotent producer writes the batch and the
loop moves on to the next one while librdkafka delivers in the background;
a batch's offsets are committed only once every one of its records (and of
every earlier batch) has a successful delivery report. A crash before that
commit re-emits the batch: downstream dedupes by ``event_id``. A record that
librdkafka could not deliver even after its retries stops the worker without
committing (the restart resumes from the last commit). On a rebalance the
revoke callback flushes and commits what was delivered before the partitions
go. ``exactly_once``: the batch's outputs and
offsets go in one Kafka transaction (needs a broker that hides aborted
records from ``read_committed`` consumers, e.g. Apache Kafka).

Metrics
-------
Into its :class:`stream.ops.metrics.WorkerMetrics` (given, or its own) the loop reports, once per batch
(never per event): events in, events out by topic and dead letters by reason
(when the batch's outputs are accounted), the batch's processing time (protect +
produce), the DEK cache totals, and Redis errors (each fail-closed retry). The
consumer lag per assigned partition (log end from the cached high watermark minus
the consumer's position; while paused, the watermark asked from the broker) is
refreshed at most every ``LAG_INTERVAL_SECONDS``.

Fail closed
-----------
If the key store (Redis) or the KEK is unavailable the core raises before
returning anything: nothing of the batch is produced or committed. The loop
pauses its partitions (keeping group membership alive), holds the batch and
retries with exponential backoff until the dependency is back. Records of
partitions revoked meanwhile are dropped from the held batch: they were never
committed, so their new owner processes them. Nothing is lost, nothing passes
in clear.
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import threading
import time
from collections import Counter, deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from confluent_kafka import Consumer, KafkaError, KafkaException, Producer, TopicPartition

from stream.apps.hosting import LagReporter
from stream.apps.runtime import relaxed_gc
from stream.config import Settings
from stream.errors import KeyUnavailableError, StreamgateError
from stream.gateway.core import BatchResult, Gateway, RawRecord
from stream.kafka import consumer_config, producer_config, usable_messages
from stream.ops.metrics import WorkerMetrics

__all__ = ["LAG_INTERVAL_SECONDS", "EngineStats", "GatewayEngine"]

log = logging.getLogger("streamgate.gateway")

#: How often the engine refreshes its consumer-lag gauges (cheap, but not per batch).
LAG_INTERVAL_SECONDS = 1.0


@dataclass
class EngineStats:
    consumed: int = 0
    protected: int = 0
    dead_lettered: int = 0
    batches: int = 0
    fail_closed_retries: int = 0
    produce_retries: int = 0
    reasons: Counter[str] = field(default_factory=Counter)
    started_at: float = field(default_factory=time.monotonic)
    first_event_at: float | None = None
    last_event_at: float | None = None

    @property
    def emitted(self) -> int:
        return self.protected + self.dead_lettered

    def rate(self) -> float:
        """Events/s from the first to the last consumed event."""
        if self.first_event_at is None or self.last_event_at is None or self.last_event_at <= self.first_event_at:
            return 0.0
        return self.consumed / (self.last_event_at - self.first_event_at)

    def as_dict(self) -> dict[str, Any]:
        return {
            "consumed": self.consumed,
            "protected": self.protected,
            "dead_lettered": self.dead_lettered,
            "batches": self.batches,
            "fail_closed_retries": self.fail_closed_retries,
            "produce_retries": self.produce_retries,
            "reasons": dict(self.reasons),
            "rate": round(self.rate(), 1),
        }


def _kafka_error(exc: KafkaException) -> str:
    """``NAME: description`` of a Kafka error (log-safe: librdkafka's text, no record content)."""
    err = exc.args[0] if exc.args else None
    if isinstance(err, KafkaError):
        return f"{err.name()}: {err.str()}"
    return type(exc).__name__


class _InFlight:
    """A produced batch waiting for its delivery reports."""

    __slots__ = ("failed", "offsets", "pending", "result")

    def __init__(self, offsets: dict[tuple[str, int], int], result: BatchResult) -> None:
        self.offsets = offsets
        self.result = result
        self.pending = result.total
        self.failed = 0

    def on_delivery(self, err: KafkaError | None, _msg: Any) -> None:
        self.pending -= 1
        if err is not None:
            self.failed += 1


class GatewayEngine:
    """Runs the gateway on Kafka until ``stop`` is set (or ``max_events`` were emitted)."""

    def __init__(
        self,
        settings: Settings,
        gateway: Gateway,
        *,
        bootstrap: str | None = None,
        on_batch: Callable[[EngineStats], None] | None = None,
        consumer_overrides: dict[str, Any] | None = None,
        metrics: WorkerMetrics | None = None,
    ) -> None:
        self.settings = settings
        self.gateway = gateway
        self.bootstrap = bootstrap or settings.kafka_bootstrap_or_dev()
        self.on_batch = on_batch
        self.stats = EngineStats()
        self._exactly_once = settings.processing_guarantee == "exactly_once"
        self._held: list[RawRecord] = []
        self._revoked: set[tuple[str, int]] = set()
        self._inflight: deque[_InFlight] = deque()
        self._consumer: Consumer | None = None
        self._producer: Producer | None = None
        self.assigned: set[tuple[str, int]] = set()
        self._consumer_overrides = consumer_overrides or {}
        self.metrics = metrics if metrics is not None else WorkerMetrics("gateway")
        self._report_lag = LagReporter(LAG_INTERVAL_SECONDS)

    # -- clients --------------------------------------------------------------------
    def _make_clients(self) -> tuple[Consumer, Producer]:
        s = self.settings
        cconf = consumer_config(
            self.bootstrap,
            s.consumer_group,
            session_timeout_ms=s.session_timeout_ms,
            **({"isolation.level": "read_committed"} if self._exactly_once else {}),
            **self._consumer_overrides,
        )
        pconf = producer_config(self.bootstrap)
        if self._exactly_once:
            pconf["transactional.id"] = f"{s.consumer_group}-{socket.gethostname()}-{os.getpid()}"
        consumer = Consumer(cconf)
        producer = Producer(pconf)
        if self._exactly_once:
            producer.init_transactions(30)
        consumer.subscribe(
            [s.topics.raw], on_assign=self._on_assign, on_revoke=self._on_revoke, on_lost=self._on_revoke
        )
        return consumer, producer

    def _on_assign(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        self.assigned.update((tp.topic, tp.partition) for tp in partitions)
        log.info("partitions assigned", extra={"partitions": sorted(p for _, p in self.assigned)})

    @property
    def ready(self) -> bool:
        """True once the consumer group gave this worker its partitions."""
        return bool(self.assigned)

    def _on_revoke(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        """Before partitions go: deliver and commit what was produced, so their next owner
        doesn't redo it; forget held records of those partitions (never committed: the new
        owner processes them)."""
        self._revoked.update((tp.topic, tp.partition) for tp in partitions)
        self.assigned.difference_update((tp.topic, tp.partition) for tp in partitions)
        if self._producer is not None and self._inflight:
            self._producer.flush(30)
            self._commit_delivered(sync=True)

    # -- the loop -------------------------------------------------------------------
    def run(self, stop: threading.Event, *, max_events: int | None = None) -> EngineStats:
        with relaxed_gc():  # see stream.apps.runtime
            return self._run(stop, max_events)

    def _run(self, stop: threading.Event, max_events: int | None) -> EngineStats:
        consumer, producer = self._make_clients()
        self._consumer, self._producer = consumer, producer
        s = self.settings
        log.info("gateway started", extra={"raw": s.topics.raw, "guarantee": s.processing_guarantee})
        try:
            while not stop.is_set():
                if max_events is not None and self.stats.emitted >= max_events:
                    break
                if not self._held:
                    self._revoked.clear()
                    self._held = self._consume(consumer)
                    if not self._held:
                        self._service(producer)
                        continue
                self._revoked.clear()
                self._process_held(consumer, producer, stop)
                self._service(producer)
        finally:
            try:
                producer.flush(30)
                self._commit_delivered(sync=True)
            finally:
                consumer.close()
                self._consumer = self._producer = None
            log.info("gateway stopped", extra=self.stats.as_dict())
        return self.stats

    def _service(self, producer: Producer) -> None:
        producer.poll(0)  # serve delivery reports
        self._commit_delivered(sync=False)
        if self._consumer is not None:
            self._report_lag(self._consumer, self.metrics, cached=True)

    def _commit_delivered(self, *, sync: bool) -> None:
        """Commit the offsets of the leading batches whose every record was delivered."""
        offsets: dict[tuple[str, int], int] = {}
        inflight = self._inflight
        while inflight and inflight[0].pending <= 0:
            done = inflight.popleft()
            if done.failed:
                inflight.appendleft(done)
                raise StreamgateError(
                    f"{done.failed} records could not be delivered after the producer's retries; "
                    "stopping without committing (a restart resumes from the last commit)"
                )
            offsets.update(done.offsets)
            self._account(done.result)
        if not offsets or self._consumer is None:
            return
        tps = [TopicPartition(t, p, o) for (t, p), o in offsets.items()]
        try:
            if sync:
                self._consumer.commit(offsets=tps, asynchronous=False)
            else:
                self._consumer.commit(offsets=tps, asynchronous=True)
        except KafkaException as exc:
            # e.g. the partitions were taken by a rebalance: their new owner re-processes from the
            # last commit (at-least-once; downstream dedupes by event_id).
            log.warning("offset commit failed", extra={"error": _kafka_error(exc)})

    def _consume(self, consumer: Consumer) -> list[RawRecord]:
        msgs = consumer.consume(num_messages=self.settings.batch_max_events, timeout=self.settings.batch_max_wait_seconds)
        records: list[RawRecord] = []
        for m in usable_messages(msgs, log):
            ts_type, ts = m.timestamp()
            # a consumed message without error always has topic, partition and offset
            records.append(
                RawRecord(m.topic(), m.partition(), m.offset(), m.value(), ts if ts_type else None)  # type: ignore[arg-type]
            )
        if records:
            now = time.monotonic()
            if self.stats.first_event_at is None:
                self.stats.first_event_at = now
            self.stats.consumed += len(records)
            self.metrics.events_in(len(records))
        return records

    def _backoff(self, attempt: int) -> float:
        s = self.settings
        return min(s.retry_backoff_max_seconds, s.retry_backoff_seconds * (2 ** min(attempt, 16)))

    def _wait_paused(self, consumer: Consumer, seconds: float, stop: threading.Event) -> None:
        """Wait while keeping the consumer in its group (paused partitions deliver nothing)."""
        assignment = consumer.assignment()
        if assignment:
            consumer.pause(assignment)
        deadline = time.monotonic() + seconds
        try:
            while not stop.is_set() and time.monotonic() < deadline:
                self._report_lag(consumer, self.metrics, cached=False)  # paused partitions fetch nothing: ask the broker
                msgs = consumer.consume(num_messages=1, timeout=min(0.2, max(0.0, deadline - time.monotonic())))
                if msgs:  # only possible after a rebalance assigned new, unpaused partitions: rewind them
                    for m in msgs:
                        topic, partition, offset = m.topic(), m.partition(), m.offset()
                        if m.error() is None and topic is not None and partition is not None and offset is not None:
                            consumer.seek(TopicPartition(topic, partition, offset))
                            consumer.pause([TopicPartition(topic, partition)])
        finally:
            assignment = consumer.assignment()
            if assignment:
                consumer.resume(assignment)

    def _drop_revoked(self) -> None:
        if self._revoked and self._held:
            self._held = [r for r in self._held if (r.topic, r.partition) not in self._revoked]
            self._revoked.clear()

    def _process_held(self, consumer: Consumer, producer: Producer, stop: threading.Event) -> bool:
        """Protect, produce and commit the held batch. Returns True when it is done."""
        attempt = 0
        while not stop.is_set():
            self._drop_revoked()
            if not self._held:
                return True
            started = time.perf_counter()
            try:
                result = self.gateway.process(self._held)
            except KeyUnavailableError:
                self.stats.fail_closed_retries += 1
                self.metrics.redis_error()
                delay = self._backoff(attempt)
                attempt += 1
                log.warning(
                    "key store unavailable: batch held (not emitted, not committed), retrying",
                    extra={"held": len(self._held), "retry_in_s": round(delay, 2)},
                )
                self._wait_paused(consumer, delay, stop)
                continue
            self._drop_revoked()
            if not self._held:
                return True
            if self._deliver(consumer, producer, result):
                self.metrics.observe_batch(time.perf_counter() - started, len(self._held))
                self._held = []
                return True
            self.stats.produce_retries += 1
            self.metrics.produce_retry()
            delay = self._backoff(attempt)
            attempt += 1
            log.warning("produce failed: batch will be re-protected and re-sent", extra={"retry_in_s": delay})
            self._wait_paused(consumer, delay, stop)
        return False

    def _next_offsets(self) -> dict[tuple[str, int], int]:
        """Offsets to commit once the held batch is delivered: last offset + 1 per partition."""
        nxt: dict[tuple[str, int], int] = {}
        for r in self._held:
            key = (r.topic, r.partition)
            if r.offset >= nxt.get(key, 0):
                nxt[key] = r.offset + 1
        return nxt

    def _deliver(self, consumer: Consumer, producer: Producer, result: BatchResult) -> bool:
        """Produce the batch's outputs. at_least_once: hand them to librdkafka and track the
        batch until its delivery reports are in; exactly_once: one transaction with the offsets."""
        s = self.settings
        batch = _InFlight(self._next_offsets(), result)
        if self._exactly_once:
            producer.begin_transaction()
        try:
            cb = batch.on_delivery
            self._produce_all(producer, s.topics.protected, [{"key": k, "value": v} for k, v in result.protected], cb)
            self._produce_all(producer, s.topics.dlq, [{"value": v} for v in result.dead_letters], cb)
            if self._exactly_once:
                offsets = [TopicPartition(t, p, o) for (t, p), o in batch.offsets.items()]
                producer.send_offsets_to_transaction(offsets, consumer.consumer_group_metadata(), 30)
                producer.commit_transaction(60)
                self._account(result)
                return True
        except KafkaException as exc:
            log.warning("produce error", extra={"error": _kafka_error(exc)})
            if self._exactly_once:
                with contextlib.suppress(KafkaException):
                    producer.abort_transaction(30)
            return False
        self._inflight.append(batch)
        return True

    @staticmethod
    def _produce_all(
        producer: Producer, topic: str, messages: list[dict[str, Any]], cb: Callable[[Any, Any], None]
    ) -> None:
        """Queue every message (one produce_batch call; same partitioner as produce()); on a
        full local queue, serve delivery reports and queue the rest."""
        while messages:
            queued = producer.produce_batch(topic, messages, on_delivery=cb)
            if queued == len(messages):
                return
            messages = [{k: v for k, v in m.items() if k != "_error"} for m in messages if "_error" in m]
            producer.poll(0.05)

    def _account(self, result: BatchResult) -> None:
        st = self.stats
        st.protected += len(result.protected)
        st.dead_lettered += len(result.dead_letters)
        st.reasons.update(result.reasons)
        st.batches += 1
        st.last_event_at = time.monotonic()
        m = self.metrics
        if result.protected:
            m.events_out("protected", len(result.protected))
        if result.dead_letters:
            m.events_out("dlq", len(result.dead_letters))
            m.dead_lettered_many(result.reasons)
        ds = self.gateway.deks.stats
        m.set_dek_cache(ds.hits, ds.misses, ds.created)
        if self.on_batch is not None:
            self.on_batch(st)
