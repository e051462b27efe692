"""The one Kafka loop every streamgate worker runs (design: ``docs/architecture.md``).

A worker subclasses :class:`StreamEngine` and supplies what is its own: ``process`` (a batch
of records in, a :class:`~stream.engine.contract.Result` out), and where it needs them
``tick`` (periodic work), ``assigned`` / ``revoked`` / ``reset`` (state per partition) and
``undeliverable`` (a replacement that fits for a record Kafka refuses). The engine owns
everything else, once:

* client setup with a start-up probe (a wrong address fails within 10 s, one line),
  subscription, and assignment;
* **hold**: an exception in ``hold_on`` (the key store is down) keeps the batch, pauses the
  partitions (membership kept), backs off, and retries; records of partitions taken by a
  rebalance meanwhile are dropped from the hold, and records of newly assigned partitions
  polled during the wait are rewound, never thrown away;
* pipelined produce with one classified error path (:mod:`stream.engine.produce`);
* **commit after delivery, in order**: a batch's offsets are committed once its outputs and
  every earlier batch's were acknowledged (and, for deferred batches, a later checkpoint);
* recovery: a fatal client error recreates the clients and resumes from the committed
  offsets (the broker coming back: the producer only, the consumer rewound and kept, see
  :meth:`StreamEngine._broker_back`); an input topic that vanished (a broker that lost its data)
  is re-created and re-subscribed. Repeated failure exits non-zero with one line
  (:class:`EngineFatalError`), and so does the watchdog: not ready with no progress for
  ``watchdog_seconds``;
* health: lag, stalls ("no progress for N s while there is work"), and readiness with a reason.

Out-of-range offsets follow ``auto.offset.reset=earliest``: re-read rather than skip
(at-least-once; downstream dedupes by ``event_id``).
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import threading
import time
from collections.abc import Callable
from typing import Any, ClassVar

from confluent_kafka import Consumer, KafkaError, KafkaException, Message, Producer, TopicPartition

from stream.config import Settings
from stream.engine.commits import TP, CommitQueue
from stream.engine.contract import Out, Record, Result
from stream.engine.gc import relaxed_gc
from stream.engine.health import Progress
from stream.engine.produce import RateLimitedLog, Sink, Ticket, error_name
from stream.engine.supervisor import RecoveryBudget, Watchdog, backoff
from stream.errors import KeyUnavailableError, StreamgateError
from stream.kafka import consumer_config, ensure_topics, probe_broker, producer_config

__all__ = ["EngineFatalError", "NotDeliveredError", "StreamEngine"]

#: Seconds the start-up probe waits for the broker.
PROBE_SECONDS = 10.0
#: How often lag is refreshed (cheap, but not per batch).
LAG_INTERVAL_SECONDS = 1.0


class EngineFatalError(StreamgateError):
    """The worker cannot go on (its message is the one line a supervisor's log shows)."""


class NotDeliveredError(StreamgateError):
    """:meth:`StreamEngine.deliver_now` could not deliver every record in time."""


class _Fatal(Exception):
    """Internal: a client went fatal; the loop recreates the clients (only the producer when
    only the producer failed: the consumer keeps its group membership and rewinds)."""

    def __init__(self, why: str, *, producer_only: bool = False, keep_consumer: bool = False) -> None:
        super().__init__(why)
        self.producer_only = producer_only or keep_consumer
        self.keep_consumer = keep_consumer


class StreamEngine:
    """The loop (module docstring). Subclasses set ``name`` and override the hooks."""

    name: ClassVar[str] = "worker"
    #: Exceptions that mean "a dependency is down: hold the batch and retry".
    hold_on: ClassVar[tuple[type[BaseException], ...]] = (KeyUnavailableError,)
    #: Seconds between ``tick`` calls (None: no ticks).
    tick_interval: float | None = None
    #: Ready only while it holds partitions (False: a joined member with none is ready too).
    needs_partitions: ClassVar[bool] = True
    #: Outputs and offsets of a batch in one Kafka transaction (a worker sets it in __init__).
    transactional: bool = False

    def __init__(self, settings: Settings, *, bootstrap: str | None = None, metrics: Any = None,
                 consumer_overrides: dict[str, Any] | None = None,
                 clock: Callable[[], float] = time.time) -> None:
        self.settings = settings
        self.bootstrap = bootstrap or settings.kafka_bootstrap_or_dev()
        self.metrics = metrics
        self.clock = clock
        self.consumer_overrides = consumer_overrides or {}
        self.log = logging.getLogger(f"streamgate.{self.name}")
        self._rlog = RateLimitedLog(self.log)
        self.assigned: set[TP] = set()
        self.joined = False
        self.started = False
        self.progress = Progress(settings.stall_seconds)
        self.recoveries = 0
        self.fatal_error: str | None = None
        self.held_retries = 0
        self.consumed = 0
        self.replaced = 0
        self._consumer: Consumer | None = None
        self._producer: Producer | None = None
        self._sink: Sink | None = None
        self._held: list[Record] = []
        self._queue = CommitQueue()
        self._to_commit: dict[TP, int] = {}  # freed, not committed yet (commit throttling)
        self._commit_at = time.monotonic()
        self._committed_records = 0
        self._fatal: str | None = None
        self._producer_fatal: str | None = None
        self._attempt = 0
        self._next_tick = 0.0
        self._tick_attempt = 0
        self._lag_at = float("-inf")
        self._unassigned_since: float | None = None
        self._resubscribes = 0
        self._resync = False  # the broker came back: a member left without partitions re-subscribes
        self._broker_down_since: float | None = None
        self._probe_at = float("-inf")
        self._waiting = False
        self._budget = RecoveryBudget(settings.max_client_recoveries)
        self._closing = False
        self._stop: threading.Event | None = None
        self._watchdog_state = Watchdog(settings.watchdog_seconds, time.monotonic())

    # == hooks (override) ======================================================================
    def topics(self) -> list[str]:
        raise NotImplementedError

    def group(self) -> str:
        raise NotImplementedError

    def output_topics(self) -> list[str]:
        """Topics this worker writes (re-created with the input after a broker lost them)."""
        return []

    def process(self, records: list[Record]) -> Result:
        raise NotImplementedError

    def tick(self) -> Result | None:
        return None

    def start(self) -> None:
        """Once, before the clients exist (load state, check limits)."""

    def assigned_partitions(self, partitions: list[TP]) -> None:
        """Partitions were assigned (restore their state)."""

    def revoked(self, partitions: list[TP]) -> Result | None:
        """Partitions go to another member: outputs returned here are delivered and committed
        before they go."""
        return None

    def lost(self, partitions: list[TP]) -> None:
        """Partitions were lost without a chance to commit (forget their state)."""

    def reset(self) -> None:
        """The clients were recreated: forget every state derived from uncommitted input."""

    def finish(self) -> Result | None:
        """At shutdown: last outputs (delivered and committed before the clients close)."""
        return None

    def undeliverable(self, out: Out, error: str) -> Out | None:
        """A replacement that fits for ``out``, which Kafka refuses for good (None: stop)."""
        return None

    def batch_limit(self) -> int:
        """How many records the next batch may hold."""
        return self.settings.batch_max_events

    def client_id(self) -> str:
        return f"streamgate-{self.name}"

    def extra_consumer_config(self) -> dict[str, Any]:
        return {}

    def extra_producer_config(self) -> dict[str, Any]:
        return {}

    # == state ================================================================================
    @property
    def ready(self) -> bool:
        return self.not_ready_reason is None

    @property
    def not_ready_reason(self) -> str | None:
        if self.fatal_error:
            return f"fatal: {self.fatal_error}"
        if not self.started:
            return "starting"
        if self._broker_down_since is not None:
            return f"broker unreachable for {time.monotonic() - self._broker_down_since:.0f} s"
        if not self.joined:
            return "waiting for the consumer group"
        if self.needs_partitions and not self.assigned:
            return "no partitions assigned"
        return self.progress.reason

    @property
    def healthy(self) -> bool:
        return self.fatal_error is None

    @property
    def produce_retries(self) -> int:
        return self._sink.retries if self._sink is not None else 0

    # == the loop =============================================================================
    def run(self, stop: threading.Event, *, until: Callable[[], bool] | None = None,
            max_events: int | None = None) -> Any:
        """Run until ``stop`` is set, ``until()`` holds, or ``events_done()`` reached ``max_events``;
        returns :meth:`result`."""
        if max_events is not None:
            until = lambda: self.events_done() >= max_events  # noqa: E731
        self._stop = stop
        with relaxed_gc():
            self.start()
            self._connect()
            self._watchdog_state.reset(time.monotonic())
            self.started = True
            self.log.info(f"{self.name} started", extra={"topics": self.topics()})
            try:
                while not stop.is_set():
                    if until is not None and until() and not self._held:
                        break
                    try:
                        self._step(stop)
                    except _Fatal as exc:
                        self._recover(str(exc), producer_only=exc.producer_only, keep_consumer=exc.keep_consumer)
            except EngineFatalError as exc:
                self.fatal_error = str(exc)
                raise
            finally:
                try:
                    self._shutdown()
                finally:
                    self.stopped()
        return self.result()

    def result(self) -> Any:
        return None

    def events_done(self) -> int:
        """What ``run(max_events=...)`` counts (default: records consumed)."""
        return self.consumed

    def stopped(self) -> None:
        """After the loop ended and the clients closed (stop threads of the worker's own)."""

    def _step(self, stop: threading.Event) -> None:
        if not self._held:
            self._held = self._consume()
        if self._held:
            self._process_held(stop)
        if self.tick_interval is not None and time.monotonic() >= self._next_tick:
            self._tick()
        self._service()

    def _check_fatal(self) -> None:
        if self._fatal is not None:
            why, self._fatal, self._producer_fatal = self._fatal, None, None
            raise _Fatal(why)
        if self._producer_fatal is not None:
            why, self._producer_fatal = self._producer_fatal, None
            raise _Fatal(why, producer_only=True)

    # -- consume ---------------------------------------------------------------------------
    def _consume(self) -> list[Record]:
        assert self._consumer is not None
        s = self.settings
        msgs = self._consumer.consume(num_messages=self.batch_limit(), timeout=s.batch_max_wait_seconds)
        self._check_fatal()
        return self._records(msgs)

    def _records(self, msgs: list[Message]) -> list[Record]:
        out: list[Record] = []
        for m in msgs:
            err = m.error()
            if err is None:
                ts_type, ts = m.timestamp()
                out.append(Record(m.topic(), m.partition(), m.offset(), m.value(),  # type: ignore[arg-type]
                                  ts if ts_type else None, m.key(),
                                  m.headers()))  # type: ignore[arg-type]
            elif err.code() == KafkaError._PARTITION_EOF:
                continue
            elif err.fatal():
                raise _Fatal(error_name(err))
            else:
                self._client_problem(err)
        self.consumed += len(out)
        if out and self.metrics is not None:
            self.metrics.events_in(len(out))
        return out

    # -- process and hold --------------------------------------------------------------------
    def _process_held(self, stop: threading.Event) -> None:
        started = time.perf_counter()
        try:
            result = self.process(self._held)
        except self.hold_on as exc:
            self.held_retries += 1
            if self.metrics is not None and isinstance(exc, KeyUnavailableError):
                self.metrics.redis_error()
            delay = backoff(self._attempt, self.settings.retry_backoff_seconds, self.settings.retry_backoff_max_seconds)
            self._attempt += 1
            self.progress.problem = f"dependency unavailable ({type(exc).__name__}): {len(self._held)} records held"
            self._rlog(logging.WARNING, "hold", "dependency unavailable: batch held (not emitted, not "
                       "committed), retrying", held=len(self._held), retry_in_s=round(delay, 2),
                       error=str(exc), retries=self.held_retries)
            self._wait_paused(delay, stop)
            return
        self._attempt = 0
        self.progress.problem = None
        self._emit(result, _next_offsets(self._held), records=len(self._held))
        if self.metrics is not None:
            self.metrics.observe_batch(time.perf_counter() - started, len(self._held))
        self._held = []

    def _wait_paused(self, seconds: float, stop: threading.Event) -> None:
        """Wait keeping the group membership; paused partitions deliver nothing. Records of
        partitions assigned meanwhile (not paused yet) join the hold and their partitions are
        paused: nothing polled is ever dropped."""
        consumer = self._consumer
        assert consumer is not None
        self._waiting = True
        with contextlib.suppress(KafkaException):
            if consumer.assignment():
                consumer.pause(consumer.assignment())
        deadline = time.monotonic() + seconds
        try:
            while not stop.is_set() and time.monotonic() < deadline:
                self._report_lag(cached=False)
                self.progress.observe(held=len(self._held))
                msgs = consumer.consume(num_messages=100, timeout=min(0.2, max(0.0, deadline - time.monotonic())))
                self._check_fatal()
                arrived = self._records(msgs)
                if arrived:
                    self._held.extend(arrived)
                    with contextlib.suppress(KafkaException):
                        consumer.pause([TopicPartition(t, p) for t, p in {(r.topic, r.partition) for r in arrived}])
                self._sink_service()
        finally:
            self._waiting = False
            with contextlib.suppress(KafkaException):
                if consumer.assignment():
                    consumer.resume(consumer.assignment())

    # -- produce and commit -------------------------------------------------------------------
    def _emit(self, result: Result | None, offsets: dict[TP, int] | None = None, records: int = 0) -> Ticket | None:
        if result is None and not offsets:
            return None
        result = result or Result()
        assert self._sink is not None
        ticket = Ticket(self._sink, offsets or {}, result.outputs, defer=result.defer,
                        checkpoint=result.checkpoint, on_delivered=result.on_delivered, records=records)
        if self.transactional and ticket.offsets:
            self._transact(ticket)
        self._queue.add(ticket)
        if result.outputs and not self.transactional:
            self._sink.send(ticket)
            self._check_fatal()
        return ticket

    def _transact(self, ticket: Ticket) -> None:
        """exactly_once: the ticket's outputs and offsets in one transaction (else recover)."""
        producer, consumer, sink = self._producer, self._consumer, self._sink
        assert producer is not None and consumer is not None and sink is not None
        try:
            producer.begin_transaction()
            sink.send(ticket)
            self._check_fatal()
            if sink.flush(60) or not ticket.done:
                raise _Fatal("transaction outputs not delivered")
            tps = [TopicPartition(t, p, o) for (t, p), o in ticket.offsets.items()]
            producer.send_offsets_to_transaction(tps, consumer.consumer_group_metadata(), 30)
            producer.commit_transaction(60)
        except (KafkaException, _Fatal) as exc:
            with contextlib.suppress(KafkaException, SystemError):
                producer.abort_transaction(30)
            why = error_name(exc) if isinstance(exc, KafkaException) else str(exc)
            raise _Fatal(f"transaction aborted: {why}", producer_only=True) from None
        self._queue.done(ticket.offsets)
        ticket.offsets = {}

    def _sink_service(self) -> None:
        if self._sink is not None:
            self._sink.service(0)
            self._check_fatal()

    def _service(self) -> None:
        # before this round's commits: a stall inside one blocking call (a process that hung) is
        # counted and logged too, not only seen by whoever asked /readyz during it
        if self.progress.observe(held=len(self._held), inflight=self._queue.inflight):
            # /readyz, ops watch and the streamgate_ready gauge read the reason from the engine
            self.log.warning("no progress: not ready", extra={"reason": self.progress.reason})
        self._broker_back()
        self._sink_service()
        self._commit_delivered(sync=False)
        self._report_lag(cached=True)
        self._watch_assignment()
        self._watchdog()

    def _watchdog(self) -> None:
        """Exit (:class:`EngineFatalError`, one line) when not ready with no progress for
        ``watchdog_seconds``: a supervisor's restart is the recovery left. A joined member with no
        partitions is a standby, not stuck."""
        why = self._watchdog_state.check(time.monotonic(), self.not_ready_reason,
                                         standby=self.joined and not self.assigned,
                                         moved_at=self.progress.moved_at)
        if why is not None:
            raise EngineFatalError(f"{self.name}: {why}")

    def _commit_delivered(self, *, sync: bool) -> None:
        """Commit the offsets of the leading finished results (:class:`CommitQueue`), throttled:
        once ``commit_interval_seconds`` passed or ``commit_max_records`` records were freed since
        the last commit, whichever comes first; at once when ``sync`` (a rebalance, the shutdown)
        or a checkpoint was freed (what it covers is durable: a crash must not re-learn it).
        A crash re-delivers at most what was freed since the last commit."""
        q = self._queue
        offsets = q.release()
        if offsets is not None:
            self.progress.moved()
            self._to_commit.update(offsets)
        if not self._to_commit:
            return
        s = self.settings
        now = time.monotonic()
        if (sync or q.released_checkpoint or now - self._commit_at >= s.commit_interval_seconds
                or q.released_records - self._committed_records >= s.commit_max_records):
            todo, self._to_commit = self._to_commit, {}
            self._commit_at, self._committed_records = now, q.released_records
            self._commit(todo, sync=sync)

    def _commit(self, offsets: dict[TP, int], *, sync: bool) -> None:
        todo = self._queue.to_commit(offsets, self.assigned)
        if not todo or self._consumer is None:
            return
        tps = [TopicPartition(t, p, o) for (t, p), o in todo.items()]
        try:
            if sync:
                self._consumer.commit(offsets=tps, asynchronous=False)
            else:
                self._consumer.commit(offsets=tps, asynchronous=True)
        except KafkaException as exc:  # taken by a rebalance: the new owner re-reads (at-least-once)
            self._rlog(logging.WARNING, "commit", "offset commit failed", error=error_name(exc))
            return
        self._queue.done(todo)

    def deliver_now(self, outs: list[Out], timeout: float = 30.0) -> None:
        """Produce ``outs`` and return once every one was acknowledged (receipts before a commit),
        else raise :class:`NotDeliveredError`."""
        assert self._sink is not None
        ticket = Ticket(self._sink, {}, outs)
        self._sink.send(ticket)
        self._sink.flush(timeout)
        if self._fatal is not None or self._producer_fatal is not None:
            raise NotDeliveredError(f"Kafka client failed: {self._fatal or self._producer_fatal}")
        if not ticket.done:
            raise NotDeliveredError(f"{ticket.pending} of {len(outs)} records not delivered within {timeout:.0f} s")

    def _drain(self, timeout: float = 30.0) -> bool:
        """Deliver everything in flight and commit it (rebalance, shutdown). True when done."""
        if self._sink is None:
            return False
        left = self._sink.flush(timeout)
        self._check_fatal()
        self._commit_delivered(sync=True)
        return left == 0

    # -- ticks ------------------------------------------------------------------------------
    def _tick(self) -> None:
        try:
            result = self.tick()
        except self.hold_on as exc:
            if self.metrics is not None and isinstance(exc, KeyUnavailableError):
                self.metrics.redis_error()
            delay = backoff(self._tick_attempt, self.settings.retry_backoff_seconds,
                            self.settings.retry_backoff_max_seconds)
            self._tick_attempt += 1
            self._rlog(logging.WARNING, "tick", f"{self.name} periodic work failed, retrying",
                       error=str(exc), retry_in_s=round(delay, 2))
            self._next_tick = time.monotonic() + delay
            return
        self._tick_attempt = 0
        assert self.tick_interval is not None
        self._next_tick = time.monotonic() + self.tick_interval
        if result is not None and (result.outputs or result.checkpoint):
            self._emit(result)

    # -- callbacks ----------------------------------------------------------------------------
    def _on_assign(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        self.joined = True
        tps = [(tp.topic, tp.partition) for tp in partitions]
        # librdkafka keeps a partition's pause flag across a rebalance: set it as this moment needs
        consumer.assign(partitions)
        with contextlib.suppress(KafkaException):
            if partitions:
                (consumer.pause if self._waiting else consumer.resume)(partitions)
        self.assigned.update(tps)
        if tps:
            self.log.info("partitions assigned", extra={"partitions": sorted(p for _, p in tps)})
            self.assigned_partitions(tps)

    def _on_revoke(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        tps = [(tp.topic, tp.partition) for tp in partitions]
        if not self._closing and self._producer is not None and self._fatal is None and self._producer_fatal is None:
            try:
                self._emit(self.revoked(tps))
                self._drain()
            except _Fatal as exc:
                self._fatal = str(exc)
        self._forget(tps)

    def _on_lost(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        tps = [(tp.topic, tp.partition) for tp in partitions]
        self.lost(tps)
        self._forget(tps)

    def _forget(self, tps: list[TP]) -> None:
        gone = set(tps)
        self.assigned.difference_update(gone)
        self._queue.forget(gone)
        for tp in gone:
            self._to_commit.pop(tp, None)
        if self._held:
            self._held = [r for r in self._held if (r.topic, r.partition) not in gone]

    def _on_consumer_error(self, err: KafkaError) -> None:
        """librdkafka's error callback of the consumer."""
        try:
            if err.fatal():
                self._fatal = error_name(err)
            else:
                self._client_problem(err)
        except Exception as exc:  # never let an exception escape into librdkafka's callback
            self._fatal = f"client error could not be handled: {type(exc).__name__}: {exc}"

    def _on_producer_error(self, err: KafkaError) -> None:
        """librdkafka's error callback of the producer."""
        try:
            if err.fatal():
                if self._sink is not None:
                    self._sink.on_fatal(error_name(err))
                else:
                    self._producer_fatal = error_name(err)
            else:
                self._client_problem(err)
        except Exception as exc:
            self._producer_fatal = f"client error could not be handled: {type(exc).__name__}: {exc}"

    def _client_problem(self, err: KafkaError) -> None:
        code = err.code()
        if code == KafkaError._ALL_BROKERS_DOWN and self._broker_down_since is None:
            self._broker_down_since = time.monotonic()
        self._rlog(logging.WARNING, f"client:{code}", "kafka client error", error=error_name(err))

    # -- clients -------------------------------------------------------------------------------
    def _connect(self) -> None:
        try:
            probe_broker(self.bootstrap, timeout=PROBE_SECONDS)
        except StreamgateError as exc:
            raise EngineFatalError(f"{self.name}: {exc}") from None
        s = self.settings
        cconf = consumer_config(self.bootstrap, self.group(), session_timeout_ms=s.session_timeout_ms,
                                **{"client.id": self.client_id(), "error_cb": self._on_consumer_error,
                                   "topic.metadata.refresh.interval.ms": 10_000},
                                **self.extra_consumer_config(), **self.consumer_overrides)
        consumer = Consumer(cconf)
        self._consumer = consumer
        self._new_producer()
        self.joined = False
        self._unassigned_since = time.monotonic()
        consumer.subscribe(self.topics(), on_assign=self._on_assign, on_revoke=self._on_revoke,
                           on_lost=self._on_lost)

    def _new_producer(self) -> None:
        pconf = producer_config(self.bootstrap, **{"client.id": self.client_id(), "error_cb": self._on_producer_error},
                                **self.extra_producer_config())
        if self.transactional:
            pconf["transactional.id"] = f"{self.group()}-{instance_id()}"
        producer = Producer(pconf)
        if self.transactional:
            producer.init_transactions(30)
        self._producer = producer
        self._sink = Sink(producer, undeliverable=self.undeliverable, on_retry=self._count_retry,
                          on_fatal=self._set_fatal, on_replaced=self._count_replaced,
                          stop=lambda: self._stop is not None and self._stop.is_set())

    def _rewind_to_committed(self) -> None:
        """Seek every assigned partition back to its committed offset (after the producer was
        recreated: what was consumed but not committed is read again)."""
        consumer = self._consumer
        assert consumer is not None
        assignment = consumer.assignment()
        if not assignment:
            return
        positions = {(tp.topic, tp.partition): tp.offset for tp in consumer.position(assignment)}
        for tp in consumer.committed(assignment, timeout=10):
            if positions.get((tp.topic, tp.partition), -1) < 0:
                continue  # nothing fetched yet: it starts from the committed offset anyway
            offset = tp.offset if tp.offset >= 0 else consumer.get_watermark_offsets(tp, timeout=5)[0]
            consumer.seek(TopicPartition(tp.topic, tp.partition, offset))
        self._queue.committed.clear()

    def _set_fatal(self, why: str) -> None:
        self._producer_fatal = why

    def _count_retry(self, n: int) -> None:
        if self.metrics is not None:
            self.metrics.produce_retry(n)

    def _count_replaced(self, out: Out, error: str) -> None:
        self.replaced += 1
        self.log.warning("record refused by Kafka for good: replaced by a compact dead letter",
                         extra={"topic": out.topic, "count": len(out.value or b""), "error": error})

    def _close_clients(self) -> None:
        consumer, self._consumer = self._consumer, None
        self._producer, self._sink = None, None
        if consumer is not None:
            self._closing = True
            try:
                with contextlib.suppress(KafkaException, RuntimeError):
                    consumer.close()
            finally:
                self._closing = False
        self.assigned.clear()
        self._queue.committed.clear()
        self._to_commit.clear()
        self.joined = False

    def _recover(self, why: str, *, producer_only: bool = False, keep_consumer: bool = False) -> None:
        """A client went fatal: recreate it and resume from the committed offsets. A failed
        producer alone is replaced and the consumer rewound (its group membership kept);
        otherwise both clients are recreated. ``keep_consumer`` (the broker came back): the
        consumer is never closed, even when it cannot be rewound yet (see :meth:`_broker_back`)."""
        recent, over = self._budget.spend(time.monotonic())
        self.recoveries += 1
        if over:
            raise EngineFatalError(f"{self.name}: Kafka client failed {recent} times in 120 s, last: {why}")
        what = "the producer" if producer_only else "the clients"
        self.log.error(f"fatal Kafka client error: recreating {what}, resuming from committed offsets",
                       extra={"error": why, "recoveries": self.recoveries})
        self.progress.problem = f"recovering from a fatal client error: {why}"
        self._held = []
        self._queue.tickets.clear()
        self._to_commit.clear()
        if producer_only and self._consumer is not None:
            old, self._producer, self._sink = self._producer, None, None
            if old is not None:
                with contextlib.suppress(Exception):
                    old.purge(in_queue=True, in_flight=True, blocking=False)
            self.reset()
            self._new_producer()
            try:
                self._rewind_to_committed()
            except (KafkaException, SystemError) as exc:  # cannot rewind: start the consumer afresh too
                if keep_consumer:
                    self.log.warning("rewind failed: the group's rejoin starts from the committed offsets",
                                     extra={"error": error_name(exc)})
                else:
                    self.log.warning("rewind failed: recreating the consumer too", extra={"error": error_name(exc)})
                    self._close_clients()
                    self._connect()
        else:
            self._close_clients()
            self.reset()
            self._connect()
        self.progress.problem = None
        self.progress.moved()

    def _broker_back(self) -> None:
        """After every broker was unreachable, probe (once a second); once one answers, recreate
        the producer and rewind the consumer to the committed offsets: a broker that restarted may
        have lost the group, the idempotent producer's state or the log itself, and a client that
        carried on from its old positions could skip records. The consumer is kept, not closed:
        its LeaveGroup, sent to a coordinator that restarted without the group, wedged the
        embedded broker's group for good (no member of the group, not even a new process, joined
        again; see the held-out case in tests/apps/test_conformance.py). A consumer whose
        session expired rejoins by itself, and a new assignment starts from the committed offsets."""
        since = self._broker_down_since
        if since is None:
            return
        now = time.monotonic()
        if now - self._probe_at < 1.0:
            return
        self._probe_at = now
        try:
            probe_broker(self.bootstrap, timeout=1.0)
        except StreamgateError:
            self.progress.problem = f"broker unreachable for {now - since:.0f} s"
            return
        self._broker_down_since = None
        self.progress.problem = None
        self._resync = True
        raise _Fatal(f"the broker is back after {now - since:.0f} s unreachable: resynchronising",
                     keep_consumer=True)

    def _watch_assignment(self) -> None:
        """A member with no partitions for a while: if an input topic vanished (a broker that lost
        its data), re-create it and re-subscribe. After the broker came back, a joined member with
        none while the topics have some re-subscribes too (a topic re-created after the rejoin is
        not always noticed), less and less often, until it holds partitions. (Never otherwise: a
        standby of a healthy group, e.g. a second aggregator, would cost the group a rebalance.)"""
        now = time.monotonic()
        if self.assigned:
            self._unassigned_since = None
            self._resubscribes = 0
            self._resync = False
            return
        if self._unassigned_since is None:
            self._unassigned_since = now
            return
        wait = max(5.0, self.settings.session_timeout_ms / 1000)
        if self.joined:
            wait *= 2 ** min(self._resubscribes, 4)
        if now - self._unassigned_since < wait:
            return
        self._unassigned_since = now
        assert self._consumer is not None
        try:
            md = self._consumer.list_topics(timeout=5.0)
        except KafkaException as exc:
            if self._broker_down_since is None:
                self._broker_down_since = now
            self._rlog(logging.WARNING, "probe", "broker unreachable", error=error_name(exc))
            return
        missing = [t for t in self.topics() if t not in md.topics or md.topics[t].error is not None]
        if not missing and self.joined:
            if not self._resync or not any(md.topics[t].partitions for t in self.topics()):
                return
            self._resubscribes += 1
            self.log.warning("joined with no partitions while the input topics have some: re-subscribing",
                             extra={"resubscribes": self._resubscribes})
            self._consumer.unsubscribe()
            self._consumer.subscribe(self.topics(), on_assign=self._on_assign, on_revoke=self._on_revoke,
                                     on_lost=self._on_lost)
            return
        self.log.warning("input topic missing or group not joined: re-creating topics and re-subscribing",
                         extra={"topics": missing})
        with contextlib.suppress(StreamgateError):
            ensure_topics(self.bootstrap, [*self.topics(), *self.output_topics()],
                          partitions=self.settings.topic_partitions, timeout=10.0)
        self._consumer.unsubscribe()
        self._consumer.subscribe(self.topics(), on_assign=self._on_assign, on_revoke=self._on_revoke,
                                 on_lost=self._on_lost)

    def _report_lag(self, *, cached: bool) -> None:
        now = time.monotonic()
        if now - self._lag_at < LAG_INTERVAL_SECONDS or self._consumer is None:
            return
        self._lag_at = now
        consumer = self._consumer
        try:
            assignment = consumer.assignment()
            positions = consumer.position(assignment) if assignment else []
        except KafkaException:
            return
        total = 0
        held: list[int] = []
        for tp in positions:
            try:
                low, high = (consumer.get_watermark_offsets(tp, cached=True) if cached
                             else consumer.get_watermark_offsets(tp, timeout=1.0))
            except KafkaException:
                continue
            if high < 0:
                continue
            pos = tp.offset if tp.offset >= 0 else max(low, 0)
            lag = max(0, high - pos)
            total += lag
            if self.metrics is not None:
                self.metrics.set_lag(tp.partition, lag)
            held.append(tp.partition)
        if self.metrics is not None:
            self.metrics.clear_lag(held)
        self.progress.observe(lag=total)

    def _shutdown(self) -> None:
        try:
            if self._producer is not None and self._fatal is None and self._producer_fatal is None:
                try:
                    self._emit(self.finish())
                    self._drain()
                except (_Fatal, KafkaException, SystemError) as exc:
                    self.log.warning("shutdown: outputs not delivered (the restart re-reads them)",
                                     extra={"error": str(exc)})
        finally:
            self._close_clients()
            self.log.info(f"{self.name} stopped")


def _next_offsets(records: list[Record]) -> dict[TP, int]:
    """Offsets to commit once ``records`` are done: last offset + 1 per partition."""
    nxt: dict[TP, int] = {}
    for r in records:
        key = (r.topic, r.partition)
        if r.offset >= nxt.get(key, -1):
            nxt[key] = r.offset + 1
    return nxt


def instance_id() -> str:
    return f"{socket.gethostname()}-{os.getpid()}"
