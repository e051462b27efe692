"""The privatizer worker: ``clicks.protected`` -> ``features.private`` + ``analytics.frequencies``.

Like the gateway (see :mod:`stream.apps.engine` for why), the Kafka loop is a
confluent-kafka batch engine hosted in a Faust worker (:mod:`stream.apps.hosting`),
which provides the lifecycle, the web server (health, metrics) and signals.

Per batch: consume up to ``batch_max_events`` protected records, privatize
them with the pure core (:class:`stream.ldp.privatizer.Privatizer`, one Redis
round trip for the memos and budgets of the batch), produce the feature
reports (no key, no headers, Kafka timestamp floored to the hour), add the
attribute reports to the tumbling windows (:mod:`stream.ldp.aggregate`),
publish the windows that closed, and go on with the next batch while
librdkafka delivers; a batch's offsets are committed once its reports (and
every earlier batch's) are acknowledged.

Guarantees: at-least-once for ``features.private`` (a crash re-emits the
uncommitted batch; memoization makes the re-emitted reports identical and
spends no budget twice). Fail closed: if Redis is unreachable the batch is
held (partitions paused) and retried with backoff; nothing is emitted without
its memo and budget check. Windows live in memory: on a graceful stop or a
rebalance the open windows are published as they are (``n`` says how many
reports they hold); a hard crash loses the counts of the windows open at that
moment on that worker (the feature reports themselves are not lost).
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
from collections import Counter, deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import faust
import orjson
import redis
from confluent_kafka import Consumer, KafkaError, KafkaException, Producer, TopicPartition

from stream.apps.hosting import LagReporter, worker_app
from stream.apps.runtime import relaxed_gc
from stream.config import Settings
from stream.crypto.keyring import Keyring
from stream.errors import KeyUnavailableError, StreamgateError
from stream.kafka import consumer_config, producer_config, usable_messages
from stream.ldp.aggregate import WindowAggregator
from stream.ldp.labels import LABEL_NAME, ExampleStub, SessionLabeler
from stream.ldp.memo import MemoCache, RedisMemoStore
from stream.ldp.oracle import secure_rng
from stream.ldp.policy import LdpPolicy
from stream.ldp.privatizer import Privatizer, PrivatizeResult, ProtectedRecord
from stream.ops.metrics import WorkerMetrics
from stream.retention.invalidation import ShredListener
from stream.schema import load_schema

__all__ = [
    "PrivatizerEngine",
    "PrivatizerStats",
    "build_privatizer",
    "create_app",
    "start_memo_invalidation",
]

log = logging.getLogger("streamgate.privatizer")

_HOUR_MS = 3_600_000


def start_memo_invalidation(settings: Settings, privatizer: Privatizer,
                            on_erasure: Callable[[str], None] | None = None) -> ShredListener:
    """Drop cached memos when the shredder announces a shred (one epoch or every epoch of a person),
    and everything after a reconnect (messages may have been missed); the cache's staleness bound
    (``dek_cache_max_staleness_seconds``) remains the guarantee. ``on_erasure(subject)`` is called
    for a shred of every epoch of a person (an erasure): the engine drops their held examples."""
    from stream.components import redis_client

    cache = privatizer.cache

    def on_shred(subject: str, epoch: int | None) -> None:
        cache.invalidate(subject, epoch)
        if epoch is None and on_erasure is not None:
            on_erasure(subject)

    return ShredListener(
        lambda: redis_client(settings), settings.redis_key_prefix, on_shred,
        on_reset=cache.invalidate, name="streamgate-memo-shred-listener",
    ).start()


def build_privatizer(
    settings: Settings,
    *,
    keyring: Keyring | None = None,
    client: redis.Redis | None = None,
    clock: Callable[[], float] = time.time,
    allow_seed: bool | None = None,
) -> Privatizer:
    """Wire the pure core from settings (memo key: keyring purpose ``ldp-memo``; ledger ids: ``ldp-ledger``).

    Noise comes from a ChaCha20 keystream keyed from the OS CSPRNG. ``settings.ldp_seed`` keys it
    reproducibly instead, for tests and benchmarks only: refused (ConfigError) unless ``allow_seed``
    - by default, refused when it comes from the environment (``STREAMGATE_LDP_SEED``), i.e. for a worker.
    """
    from stream.components import redis_client
    from stream.errors import ConfigError
    from stream.ldp.csprng import ChaChaRandom

    if allow_seed is None:
        allow_seed = "STREAMGATE_LDP_SEED" not in os.environ
    if settings.ldp_seed is not None and not allow_seed:
        raise ConfigError("STREAMGATE_LDP_SEED is for tests and benchmarks only: a privatizer worker draws its "
                          "noise from a key out of the OS CSPRNG; unset it")
    keyring = keyring or Keyring.from_settings(settings)
    schema = load_schema(settings.schema_name)
    policy = LdpPolicy.from_schema(schema, settings.ldp_epsilon)
    prices = {a.name: a.epsilon for a in policy.attributes}
    if settings.learn_examples:
        prices[LABEL_NAME] = settings.learn_label_epsilon
    unpayable = sorted(n for n, e in prices.items() if e > settings.ldp_person_epsilon)
    if unpayable:
        raise ConfigError(f"STREAMGATE_LDP_PERSON_EPSILON ({settings.ldp_person_epsilon:g}) is below the price of one "
                          f"memo of {', '.join(unpayable)}: every report of it would be a stand-in")
    rng = secure_rng() if settings.ldp_seed is None else ChaChaRandom(settings.ldp_seed)
    return Privatizer(
        policy,
        RedisMemoStore(client or redis_client(settings), prefix=settings.redis_key_prefix),
        memo_key=keyring.derive("ldp-memo"),
        ledger_key=keyring.derive("ldp-ledger"),
        subject_field=schema.subject_field,
        budget_epsilon=settings.ldp_person_epsilon,
        epoch_seconds=settings.epoch_seconds,
        retention_seconds=settings.retention_seconds,
        retention_margin_seconds=settings.shredder_lead_seconds + 1.0,
        rng=rng,
        cache=MemoCache(max_entries=settings.dek_cache_max_entries,
                        max_staleness_seconds=settings.dek_cache_max_staleness_seconds),
        clock=clock,
        shuffle_seed=settings.ldp_seed,
        label_epsilon=settings.learn_label_epsilon if settings.learn_examples else None,
    )


class _Batch:
    """A produced batch of feature reports waiting for its delivery reports."""

    __slots__ = ("failed", "offsets", "pending")

    def __init__(self, offsets: dict[tuple[str, int], int], pending: int) -> None:
        self.offsets = offsets
        self.pending = pending
        self.failed = 0

    def on_delivery(self, err: KafkaError | None, _msg: Any) -> None:
        self.pending -= 1
        if err is not None:
            self.failed += 1


@dataclass
class PrivatizerStats:
    consumed: int = 0
    reports: int = 0
    fully_suppressed: int = 0
    windows_published: int = 0
    estimates_published: int = 0
    late: int = 0
    batches: int = 0
    fail_closed_retries: int = 0
    memo_hits: int = 0
    memo_resolved: int = 0
    suppressed: Counter[str] = field(default_factory=Counter)
    epsilon_spent: Counter[str] = field(default_factory=Counter)
    reported: Counter[str] = field(default_factory=Counter)
    skipped: Counter[str] = field(default_factory=Counter)
    examples: int = 0  # labelled examples emitted
    examples_pending: int = 0  # held, waiting for their session to end
    examples_dropped: Counter[str] = field(default_factory=Counter)  # reason -> dropped unlabelled
    examples_suppressed: int = 0  # not emitted: the person's label budget is spent
    first_event_at: float | None = None
    last_event_at: float | None = None

    def rate(self) -> float:
        if self.first_event_at is None or self.last_event_at is None or self.last_event_at <= self.first_event_at:
            return 0.0
        return self.consumed / (self.last_event_at - self.first_event_at)

    def add(self, res: PrivatizeResult) -> None:
        self.reports += len(res.reports)
        self.fully_suppressed += res.fully_suppressed
        self.memo_hits += res.memo_hits
        self.memo_resolved += res.memo_resolved
        self.suppressed.update(res.suppressed)
        self.epsilon_spent.update(res.epsilon_spent)
        self.reported.update(res.reported)
        self.skipped.update(res.skipped)

    def as_dict(self) -> dict[str, Any]:
        return {
            "consumed": self.consumed,
            "reports": self.reports,
            "fully_suppressed": self.fully_suppressed,
            "suppressed": dict(self.suppressed),
            "epsilon_spent": {k: round(v, 6) for k, v in self.epsilon_spent.items()},
            "reported": dict(self.reported),
            "skipped": dict(self.skipped),
            "examples": self.examples,
            "examples_pending": self.examples_pending,
            "examples_dropped": dict(self.examples_dropped),
            "examples_suppressed": self.examples_suppressed,
            "memo_hits": self.memo_hits,
            "memo_resolved": self.memo_resolved,
            "windows_published": self.windows_published,
            "estimates_published": self.estimates_published,
            "late": self.late,
            "batches": self.batches,
            "fail_closed_retries": self.fail_closed_retries,
            "rate": round(self.rate(), 1),
        }


class PrivatizerEngine:
    """Runs the privatizer on Kafka until ``stop`` is set (or ``max_events`` were consumed)."""

    def __init__(
        self,
        settings: Settings,
        privatizer: Privatizer,
        *,
        bootstrap: str | None = None,
        clock: Callable[[], float] = time.time,
        on_batch: Callable[[PrivatizerStats, PrivatizeResult, float], None] | None = None,
        grace_seconds: float = 5.0,
        idle_seconds: float = 5.0,
        metrics: WorkerMetrics | None = None,
    ) -> None:
        self.settings = settings
        self.metrics = metrics
        self.privatizer = privatizer
        self.bootstrap = bootstrap or settings.kafka_bootstrap_or_dev()
        self.stats = PrivatizerStats()
        self.aggregator = WindowAggregator(privatizer.policy, window_seconds=settings.ldp_window_seconds,
                                           grace_seconds=grace_seconds, idle_seconds=idle_seconds, clock=clock)
        self.worker_id = f"{socket.gethostname()}-{os.getpid()}"
        self.assigned: set[tuple[str, int]] = set()
        self.on_batch = on_batch
        self._consumer: Consumer | None = None
        self._producer: Producer | None = None
        self._failed_deliveries = 0
        self._inflight: deque[_Batch] = deque()
        self._report_lag = LagReporter()
        self.listener: ShredListener | None = None
        # labelled examples: held per session until it ends (stream.learn.labels)
        self.labeler: SessionLabeler | None = None
        if privatizer.examples_enabled:
            self.labeler = SessionLabeler(round(settings.learn_session_gap_seconds * 1000),
                                          max_pending=settings.learn_max_pending)
        self._released: list[tuple[ExampleStub, bool]] = []  # ended sessions waiting for their labels
        self._idle_since = time.time()
        self._idle_watermark = 0
        self._example_failures = 0
        self._erased: deque[str] = deque()  # subjects erased (shred channel thread -> engine loop)

    def close(self) -> None:
        """Stop the shred listener (called by the hosting service after the loop ended)."""
        if self.listener is not None:
            self.listener.stop()
            self.listener = None

    @property
    def ready(self) -> bool:
        return bool(self.assigned)

    # -- callbacks -------------------------------------------------------------------
    def _on_assign(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        self.assigned.update((tp.topic, tp.partition) for tp in partitions)

    def _on_revoke(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        # Publish the open windows as they are (their remaining records go to the new owner),
        # deliver and commit what was produced, before the partitions go.
        if self._producer is not None:
            self._publish(self.aggregator.drain(), self._producer)
            self._emit_examples(self._producer, final="rebalance")
            self._producer.flush(30)
            self._commit_delivered(consumer, sync=True)
        self.assigned.difference_update((tp.topic, tp.partition) for tp in partitions)

    def _on_delivery(self, err: KafkaError | None, _msg: Any) -> None:
        if err is not None:
            self._failed_deliveries += 1

    # -- the loop --------------------------------------------------------------------
    def run(self, stop: threading.Event, *, max_events: int | None = None) -> PrivatizerStats:
        with relaxed_gc():
            return self._run(stop, max_events)

    def _run(self, stop: threading.Event, max_events: int | None) -> PrivatizerStats:
        s = self.settings
        consumer = Consumer(consumer_config(self.bootstrap, s.privatizer_consumer_group,
                                            session_timeout_ms=s.session_timeout_ms))
        producer = Producer(producer_config(self.bootstrap))
        self._consumer, self._producer = consumer, producer
        consumer.subscribe([s.topics.protected], on_assign=self._on_assign, on_revoke=self._on_revoke,
                           on_lost=self._on_revoke)
        log.info("privatizer started", extra={"topic": s.topics.protected})
        try:
            while not stop.is_set():
                if max_events is not None and self.stats.consumed >= max_events:
                    break
                records, offsets = self._consume(consumer)
                if records and not self._process(consumer, producer, records, offsets, stop):
                    break
                if not records:
                    self._idle_tick()
                self._emit_examples(producer)
                self._publish(self.aggregator.due(), producer)
                producer.poll(0)
                self._commit_delivered(consumer, sync=False)
                self._report_lag(consumer, self.metrics)
        finally:
            try:
                self._publish(self.aggregator.drain(), producer)
                self._emit_examples(producer, final="shutdown")
                producer.flush(30)
                self._commit_delivered(consumer, sync=True)
            finally:
                consumer.close()
                self._consumer = self._producer = None
            log.info("privatizer stopped", extra=self.stats.as_dict())
        return self.stats

    def _consume(self, consumer: Consumer) -> tuple[list[ProtectedRecord], dict[tuple[str, int], int]]:
        s = self.settings
        msgs = consumer.consume(num_messages=s.batch_max_events, timeout=s.batch_max_wait_seconds)
        records: list[ProtectedRecord] = []
        offsets: dict[tuple[str, int], int] = {}
        for m in usable_messages(msgs, log):
            _ts_type, ts = m.timestamp()
            records.append(ProtectedRecord(m.value(), ts))
            offsets[(m.topic(), m.partition())] = m.offset() + 1  # type: ignore[index,operator]
        if records:
            now = time.monotonic()
            if self.stats.first_event_at is None:
                self.stats.first_event_at = now
            self.stats.consumed += len(records)
        return records, offsets

    def _process(self, consumer: Consumer, producer: Producer, records: list[ProtectedRecord],
                 offsets: dict[tuple[str, int], int], stop: threading.Event) -> bool:
        attempt = 0
        while True:
            try:
                t0 = time.perf_counter()
                res = self.privatizer.process(records)
                break
            except KeyUnavailableError:
                self.stats.fail_closed_retries += 1
                if self.metrics is not None:
                    self.metrics.redis_error()
                s = self.settings
                delay = min(s.retry_backoff_max_seconds, s.retry_backoff_seconds * 2 ** min(attempt, 16))
                attempt += 1
                log.warning("memo store unavailable: batch held (not emitted, not committed), retrying",
                            extra={"held": len(records), "retry_in_s": round(delay, 2)})
                if not self._wait_paused(consumer, delay, stop):
                    return False
        topic = self.settings.topics.features
        hour_ms = (int(time.time() * 1000) // _HOUR_MS) * _HOUR_MS
        batch = _Batch(offsets, len(res.reports))
        produce, cb = producer.produce, batch.on_delivery
        for value in res.reports:  # (produce_batch cannot set timestamps)
            while True:
                try:
                    produce(topic, value, timestamp=hour_ms, on_delivery=cb)
                    break
                except BufferError:
                    producer.poll(0.05)
        self._inflight.append(batch)
        if self.labeler is not None:
            self.labeler.add(res.examples)
            self._idle_since, self._idle_watermark = time.time(), self.labeler.watermark_ms
        self.aggregator.add(res.attribute_reports)
        self.stats.late = self.aggregator.late
        self._publish(self.aggregator.due(), producer)
        # at-least-once: offsets are committed once the batch (and every earlier one) is delivered
        producer.poll(0)
        self._commit_delivered(consumer, sync=False)
        self.stats.add(res)
        self.stats.batches += 1
        self.stats.last_event_at = time.monotonic()
        m = self.metrics
        if m is not None:
            m.events_in(len(records))
            m.events_out("features", len(res.reports))
            m.observe_batch(time.perf_counter() - t0, len(records))
            for name, n in res.reported.items():
                m.ldp_reports(name, self.privatizer.policy.by_name[name].mechanism, n, res.epsilon_spent.get(name, 0.0))
            for name, n in res.suppressed.items():
                m.ldp_suppressed(name, n)
        if self.on_batch is not None:
            self.on_batch(self.stats, res, time.perf_counter() - t0)
        return True

    def _commit_delivered(self, consumer: Consumer, *, sync: bool) -> None:
        """Commit the offsets of the leading batches whose every report was delivered."""
        if self._failed_deliveries:
            raise StreamgateError(f"{self._failed_deliveries} estimate records could not be delivered; "
                                  "stopping without committing (a restart resumes from the last commit)")
        offsets: dict[tuple[str, int], int] = {}
        inflight = self._inflight
        while inflight and inflight[0].pending <= 0:
            done = inflight.popleft()
            if done.failed:
                raise StreamgateError(f"{done.failed} feature reports could not be delivered; stopping "
                                      "without committing (a restart resumes from the last commit)")
            offsets.update(done.offsets)
        tps = [TopicPartition(t, p, o) for (t, p), o in offsets.items() if (t, p) in self.assigned]
        if not tps:
            return
        try:
            if sync:
                consumer.commit(offsets=tps, asynchronous=False)
            else:
                consumer.commit(offsets=tps, asynchronous=True)
        except KafkaException as exc:  # e.g. taken by a rebalance: the new owner re-processes (same memos)
            log.warning("offset commit failed", extra={"error": str(exc)})

    def _wait_paused(self, consumer: Consumer, seconds: float, stop: threading.Event) -> bool:
        assignment = consumer.assignment()
        if assignment:
            consumer.pause(assignment)
        deadline = time.monotonic() + seconds
        try:
            while not stop.is_set() and time.monotonic() < deadline:
                consumer.poll(min(0.2, max(0.0, deadline - time.monotonic())))
        finally:
            assignment = consumer.assignment()
            if assignment:
                consumer.resume(assignment)
        return not stop.is_set()

    # -- labelled examples --------------------------------------------------------------
    def forget_subject(self, subject: str) -> None:
        """An erasure of ``subject`` (any thread): their held examples are dropped before the next
        labelling (they are never emitted, and no label memo is created for them)."""
        self._erased.append(subject)

    def _drop_erased(self) -> None:
        if not self._erased:
            return
        subjects = set()
        while self._erased:
            subjects.add(self._erased.popleft())
        if self.labeler is not None:
            for subject in subjects:
                self.labeler.forget(subject)
        kept = [item for item in self._released if item[0].subject not in subjects]
        if len(kept) != len(self._released):
            self.stats.examples_dropped["erased"] += len(self._released) - len(kept)
            self._released[:] = kept

    def _idle_tick(self) -> None:
        """No records: the stream's time moves on with the wall clock, so idle sessions end."""
        if self.labeler is not None and self._idle_watermark:
            self.labeler.advance(self._idle_watermark + int((time.time() - self._idle_since) * 1000))

    def _on_example_delivery(self, err: KafkaError | None, _msg: Any) -> None:
        # An example is derived data whose source offsets were committed long ago: a failed
        # delivery loses that example (counted, logged), it does not stop the worker.
        if err is not None:
            self._example_failures += 1
            self.stats.examples_dropped["delivery_failed"] += 1

    def _emit_examples(self, producer: Producer, *, final: str | None = None) -> None:
        """Label and produce the examples of the sessions that ended. ``final`` (a stop or a
        rebalance): the sessions still open are dropped unlabelled (counted with that reason)."""
        labeler = self.labeler
        if labeler is None:
            return
        self._drop_erased()
        items = self._released
        items.extend(labeler.release())
        if final is not None:
            labeler.discard(final)
        if items:
            try:
                res = self.privatizer.label_examples(items)
            except KeyUnavailableError:
                if self.metrics is not None:
                    self.metrics.redis_error()
                if final is not None:
                    self.stats.examples_dropped[final] += len(items)
                    items.clear()
                else:
                    log.warning("memo store unavailable: labelled examples held, retrying",
                                extra={"held": len(items)})
            else:
                items.clear()
                topic = self.settings.topics.features
                hour_ms = (int(time.time() * 1000) // _HOUR_MS) * _HOUR_MS
                for value in res.examples:
                    while True:
                        try:
                            producer.produce(topic, value, timestamp=hour_ms, on_delivery=self._on_example_delivery)
                            break
                        except BufferError:
                            producer.poll(0.05)
                self.stats.examples += len(res.examples)
                self.stats.examples_suppressed += res.suppressed
                self.stats.skipped.update({f"example_{k}": v for k, v in res.skipped.items()})
                if res.epsilon_spent:
                    self.stats.epsilon_spent.update({LABEL_NAME: res.epsilon_spent})
                m = self.metrics
                if m is not None:
                    m.events_out("features", len(res.examples))
                    if res.examples:
                        m.ldp_reports(LABEL_NAME, "grr", len(res.examples), res.epsilon_spent)
                    if res.suppressed:
                        m.ldp_suppressed(LABEL_NAME, res.suppressed)
        self.stats.examples_pending = labeler.pending
        self.stats.examples_dropped.update(labeler.dropped)
        labeler.dropped.clear()

    def _publish(self, windows: list[Any], producer: Producer) -> None:
        topic = self.settings.topics.frequencies
        for win in windows:
            for rec in self.aggregator.records(win, worker=self.worker_id):
                producer.produce(topic, key=rec["attribute"].encode(), value=orjson.dumps(rec),
                                 on_delivery=self._on_delivery)
                self.stats.estimates_published += 1
                if self.metrics is not None:
                    self.metrics.events_out("frequencies", 1)
            self.stats.windows_published += 1


def create_app(settings: Settings) -> faust.App:
    """The privatizer's Faust app. ``streamgate privatizer`` runs it as a worker (hosted like every
    worker: :mod:`stream.apps.hosting`); its memo cache listens on the shredder's channel."""

    def build(metrics: WorkerMetrics) -> PrivatizerEngine:
        privatizer = build_privatizer(settings)
        engine = PrivatizerEngine(settings, privatizer, metrics=metrics)
        engine.listener = start_memo_invalidation(settings, privatizer, on_erasure=engine.forget_subject)
        return engine

    return worker_app(settings, "privatizer", build, lambda engine: engine.stats.as_dict())
