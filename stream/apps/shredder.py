"""The shredder worker: a Faust app hosting the retention/erasure loop as a service.

Like the gateway (:mod:`stream.apps.gateway`), Faust provides lifecycle, signals, logging
and the web server (``/healthz``, ``/readyz``, ``/metrics`` via :func:`stream.ops.worker.install_ops`);
the work runs in :class:`ShredderEngine` on a dedicated thread:

* every ``STREAMGATE_SHREDDER_INTERVAL_SECONDS`` it finishes the receipt outbox and
  shreds every key whose deadline passed (:class:`stream.retention.core.Shredder`);
* in between it consumes ``privacy.erasure`` with the consumer group
  ``STREAMGATE_SHREDDER_CONSUMER_GROUP`` and commits a request's offset only after its
  receipts (and tombstones) were acknowledged by the broker. A request that fails
  (Redis or Kafka down) is retried from the same offset with backoff; a malformed one
  gets a ``rejected`` receipt and is committed.

Receipts go to ``ops.audit`` through :class:`KafkaReceiptSink` (idempotent producer,
flush and check every delivery report). Time is injected (``clock=``).
"""

from __future__ import annotations

import contextlib
import logging
import socket
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any

import faust
import orjson
import redis
from confluent_kafka import Consumer, KafkaError, KafkaException, Message, Producer, TopicPartition

from stream.apps.hosting import LagReporter, worker_app
from stream.components import redis_client
from stream.config import Settings
from stream.crypto.keyring import Keyring
from stream.crypto.signing import signing_key, verify_key
from stream.crypto.tokens import Tokenizer
from stream.errors import KeyUnavailableError
from stream.kafka import consumer_config, producer_config, usable_messages
from stream.retention.core import (
    ErasureConflictError,
    ErasureRejectedError,
    Shredder,
    ShredderError,
    ShredStats,
    parse_erasure_request,
)
from stream.retention.redis_store import RedisShredStore
from stream.retention.topics import load_topics_config, tombstone_topics
from stream.schema import load_schema

__all__ = ["KafkaReceiptSink", "ShredderEngine", "create_app", "worker_id"]

log = logging.getLogger("streamgate.shredder")


def worker_id(settings: Settings) -> str:
    """This instance's stable id: ``STREAMGATE_SHREDDER_INSTANCE_ID`` or the host name."""
    return settings.shredder_instance_id or f"shredder@{socket.gethostname()}"


class KafkaReceiptSink:
    """Writes receipts to the audit topic (and tombstones to compacted topics); returns only when
    every record was acknowledged, else raises :class:`ShredderError`."""

    def __init__(self, producer: Producer, topic: str, *, timeout: float = 30.0) -> None:
        self.producer = producer
        self.topic = topic
        self.timeout = timeout
        self.delivered = 0

    def _produce(self, topic: str, key: bytes | None, value: bytes | None, cb: Callable[[Any, Any], None]) -> None:
        while True:
            try:
                self.producer.produce(topic, key=key, value=value, on_delivery=cb)
                return
            except BufferError:
                self.producer.poll(0.1)

    def deliver(self, receipts: Sequence[dict[str, Any]], tombstones: Sequence[tuple[str, bytes]] = ()) -> None:
        failed: list[str] = []

        def cb(err: KafkaError | None, _msg: Any) -> None:
            if err is not None:
                failed.append(err.str())

        try:
            for r in receipts:
                self._produce(self.topic, None, orjson.dumps(r), cb)
            for topic, key in tombstones:
                self._produce(topic, key, None, cb)
        except KafkaException as exc:
            raise ShredderError(f"audit records not queued: {exc}") from None
        left = self.producer.flush(self.timeout)
        if left or failed:
            raise ShredderError(f"{left + len(failed)} audit records not delivered"
                                + (f" ({failed[0]})" if failed else ""))
        self.delivered += len(receipts)


class ShredderEngine:
    """The shredder's loop (module docstring). ``run(stop)`` until ``stop`` is set."""

    def __init__(
        self,
        settings: Settings,
        *,
        bootstrap: str | None = None,
        keyring: Keyring | None = None,
        client: redis.Redis | None = None,
        clock: Callable[[], float] = time.time,
        metrics: Any = None,
        consumer_overrides: dict[str, Any] | None = None,
    ) -> None:
        self.settings = settings
        self.bootstrap = bootstrap or settings.kafka_bootstrap_or_dev()
        self.keyring = keyring or Keyring.from_settings(settings)  # master keyring, or the shredder credential
        self.tokenizer = Tokenizer(self.keyring)
        self.erasure_key = verify_key(self.keyring, "erasure")  # only requests signed by the eraser run
        self.receipt_key = signing_key(self.keyring, "receipt")  # signs every receipt on ops.audit
        schema = load_schema(settings.schema_name)
        self.token_domain = schema.fields[schema.subject_field].token_domain or schema.subject_field
        self.store = RedisShredStore(client or redis_client(settings), settings.redis_key_prefix)
        self.clock = clock
        self.worker = worker_id(settings)
        self.tombstone_topics = tombstone_topics(load_topics_config(settings, settings.topics_config))
        self.metrics = metrics
        self.consumer_overrides = consumer_overrides or {}
        self.shredder: Shredder | None = None
        self.assigned: set[tuple[str, int]] = set()
        self.joined = False  # the consumer group answered (possibly with no partitions: another instance has them)
        self.ticks = 0
        self.erasures_committed = 0
        self._reported: dict[str, int] = {"retention": 0, "erasure": 0}
        self._receipts_reported = 0
        self._report_lag = LagReporter()

    # -- state -------------------------------------------------------------------------
    @property
    def stats(self) -> ShredStats:
        return self.shredder.stats if self.shredder is not None else ShredStats()

    @property
    def ready(self) -> bool:
        """Ready once the first scan is done and the consumer group has answered (with this
        instance's share of the erasure partitions, which may be none when others hold them)."""
        return self.ticks > 0 and self.joined

    def as_dict(self) -> dict[str, Any]:
        d = self.stats.as_dict()
        d.update({"ticks": self.ticks, "erasures_committed": self.erasures_committed,
                  "assigned": len(self.assigned), "tombstone_topics": len(self.tombstone_topics)})
        return d

    def _report(self) -> None:
        st = self.stats
        for reason, total in (("retention", st.retention_shredded), ("erasure", st.erasure_shredded)):
            delta = total - self._reported[reason]
            if delta > 0 and self.metrics is not None:
                self.metrics.keys_shredded(reason, delta)
            self._reported[reason] = total
        if self.metrics is not None and st.receipts > self._receipts_reported:
            self.metrics.events_out("audit", st.receipts - self._receipts_reported)
        self._receipts_reported = st.receipts

    def _backlog(self) -> None:
        if self.metrics is None:
            return
        now = self.clock()
        with contextlib.suppress(KeyUnavailableError):
            due = self.store.due_count(now)
            oldest = self.store.oldest_deadline()
            self.metrics.set_shred_backlog(due, max(0.0, now - oldest) if due and oldest is not None else 0.0)

    def _backoff(self, attempt: int) -> float:
        s = self.settings
        return min(s.retry_backoff_max_seconds, s.retry_backoff_seconds * (2 ** min(attempt, 16)))

    # -- the loop ----------------------------------------------------------------------
    def run(self, stop: threading.Event) -> ShredStats:
        s = self.settings
        producer = Producer(producer_config(self.bootstrap, **{"client.id": "streamgate-shredder"}))
        consumer = Consumer(consumer_config(self.bootstrap, s.shredder_consumer_group,
                                            session_timeout_ms=s.session_timeout_ms,
                                            **{"client.id": "streamgate-shredder"}, **self.consumer_overrides))
        consumer.subscribe([s.topics.erasure], on_assign=self._on_assign, on_revoke=self._on_revoke,
                           on_lost=self._on_revoke)
        self.shredder = Shredder(
            self.store, KafkaReceiptSink(producer, s.topics.audit), worker=self.worker,
            epoch_seconds=s.epoch_seconds, retention_seconds=s.retention_seconds, clock=self.clock,
            batch_size=s.shredder_batch_size, lease_seconds=s.shredder_lease_seconds,
            lead_seconds=s.shredder_lead_seconds, tombstone_topics=self.tombstone_topics,
            receipt_key=self.receipt_key)
        log.info("shredder started", extra={"worker": self.worker, "interval_s": s.shredder_interval_seconds})
        next_tick, attempt = 0.0, 0
        try:
            while not stop.is_set():
                if time.monotonic() >= next_tick:
                    try:
                        n = self.shredder.tick()
                    except (KeyUnavailableError, ShredderError) as exc:
                        if self.metrics is not None and isinstance(exc, KeyUnavailableError):
                            self.metrics.redis_error()
                        delay = self._backoff(attempt)
                        attempt += 1
                        log.warning("shred pass failed, retrying", extra={"error": str(exc), "retry_in_s": delay})
                        next_tick = time.monotonic() + delay
                    else:
                        attempt = 0
                        self.ticks += 1
                        if n:
                            log.info("shred pass", extra={"keys": n})
                        next_tick = time.monotonic() + s.shredder_interval_seconds
                    self._report()
                    self._backlog()
                wait = max(0.05, min(0.5, next_tick - time.monotonic()))
                msgs = consumer.consume(num_messages=50, timeout=wait)
                if msgs:
                    if self.metrics is not None:
                        self.metrics.events_in(sum(1 for m in msgs if m.error() is None))
                    self._handle(consumer, msgs, stop)
                    self._report()
                self._report_lag(consumer, self.metrics)  # erasure lag feeds the erasure-backlog alert
        finally:
            try:
                producer.flush(10)
            finally:
                consumer.close()
            log.info("shredder stopped", extra=self.as_dict())
        return self.stats

    def _on_assign(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        self.joined = True
        self.assigned.update((tp.topic, tp.partition) for tp in partitions)

    def _on_revoke(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        self.assigned.difference_update((tp.topic, tp.partition) for tp in partitions)

    def _handle(self, consumer: Consumer, msgs: list[Message], stop: threading.Event) -> None:
        blocked: set[tuple[str, int]] = set()
        attempt = 0
        for m in usable_messages(msgs, log):
            topic, partition, offset = m.topic(), m.partition(), m.offset()
            assert topic is not None and partition is not None and offset is not None
            if (topic, partition) in blocked:
                continue
            try:
                self._erase_one(m.value(), f"{topic}/{partition}/{offset}")
            except (KeyUnavailableError, ShredderError) as exc:
                # not done: rewind to this request and retry it after a backoff (nothing committed)
                if self.metrics is not None and isinstance(exc, KeyUnavailableError):
                    self.metrics.redis_error()
                blocked.add((topic, partition))
                delay = self._backoff(attempt)
                attempt += 1
                log.warning("erasure request failed, retrying", extra={"error": str(exc), "retry_in_s": delay,
                                                                       "offset": offset})
                with contextlib.suppress(KafkaException):
                    consumer.seek(TopicPartition(topic, partition, offset))
                stop.wait(delay)
                continue
            try:
                consumer.commit(offsets=[TopicPartition(topic, partition, offset + 1)], asynchronous=False)
                self.erasures_committed += 1
            except KafkaException as exc:  # redelivered later: requests are idempotent
                log.warning("offset commit failed", extra={"error": str(exc)})

    def _erase_one(self, value: bytes | None, where: str) -> None:
        assert self.shredder is not None
        try:
            # verified (and fresh: younger than the erasure record's TTL) before anything is tokenized
            req = parse_erasure_request(value, self.erasure_key, now=self.clock(),
                                        max_age_seconds=self.settings.retention_seconds + self.settings.epoch_seconds)
        except ErasureRejectedError as exc:
            # unauthenticated or malformed: an erasure_rejected record naming nobody (no user_id, no token)
            log.warning("erasure request rejected", extra={"error": exc.code, "at": where})
            self.shredder.reject(request_id=None, error=exc.code, discriminator=where)
            return
        subject = req.subject or self.tokenizer.token(self.token_domain, req.user_id or "")
        try:
            outcome = self.shredder.erase(subject, req.request_id, requested_at=req.requested_at, digest=req.digest)
        except ErasureConflictError:
            log.warning("erasure request rejected: request_id reused", extra={"at": where})
            self.shredder.reject(request_id=req.request_id, error="request_id_conflict", discriminator=where)
            return
        log.info("erasure done", extra={"request_id": outcome.request_id, "keys": outcome.keys_shredded,
                                        "repeated": outcome.repeated})


def create_app(settings: Settings) -> faust.App:
    """The shredder's Faust app. ``streamgate shredder`` runs it as a worker (hosted like every
    worker: :mod:`stream.apps.hosting`)."""
    from stream.ops.metrics import WorkerMetrics

    def build(metrics: WorkerMetrics) -> ShredderEngine:
        return ShredderEngine(settings, metrics=metrics)

    return worker_app(settings, "shredder", build, lambda engine: engine.as_dict())
