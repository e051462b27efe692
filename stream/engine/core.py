"""The one Kafka loop every streamgate worker runs (design: ``docs/architecture.md``).

A worker subclasses :class:`StreamEngine` and supplies what is its own: ``process`` (a batch
of records in, a :class:`~stream.engine.contract.Result` out), and where it needs them
``tick`` (periodic work), ``assigned_partitions`` / ``revoked`` / ``lost`` / ``reset`` (state
per partition) and ``undeliverable`` (a replacement that fits for a record Kafka refuses). The
engine runs it (no worker overrides ``run``) and owns everything else, once, in a few modules:

* the loop here: consume, process, emit, commit, tick, rebalance callbacks, shutdown;
* the client supervisor (:mod:`stream.engine.clients`, rules in :mod:`stream.engine.supervisor`):
  client setup with a start-up probe, recovery from a fatal client error or a broker that came
  back (resume from the committed offsets), vanished input topics re-created and re-subscribed,
  the recovery budget and the watchdog (repeated failure, or not ready with no progress for
  ``watchdog_seconds``: exit non-zero with one line, :class:`EngineFatalError`);
* **holds** (:mod:`stream.engine.holds`): an exception in ``hold_on`` (the key store is down)
  keeps the batch, pauses the partitions (membership kept), backs off, and retries;
* pipelined produce with one classified error path (:mod:`stream.engine.produce`);
* **commit after delivery, in order** (:mod:`stream.engine.commits`): a batch's offsets are
  committed once its outputs and every earlier batch's were acknowledged (and, for deferred
  batches, a later checkpoint);
* health (:mod:`stream.engine.health`): lag, stalls, and readiness with a reason.

Out-of-range offsets follow ``auto.offset.reset=earliest``: re-read rather than skip
(at-least-once; downstream dedupes by ``event_id``).
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections import Counter
from collections.abc import Callable
from typing import Any, ClassVar

from confluent_kafka import Consumer, KafkaError, KafkaException, Message, TopicPartition

from stream.config import Settings
from stream.engine.clients import ClientFailed, Clients, instance_id
from stream.engine.commits import TP, CommitQueue
from stream.engine.contract import EngineFatalError, NotDeliveredError, Out, Record, Result
from stream.engine.gc import relaxed_gc
from stream.engine.health import Progress
from stream.engine.holds import Hold, Retry
from stream.engine.produce import RateLimitedLog, Ticket, error_name
from stream.engine.supervisor import Watchdog
from stream.errors import KeyUnavailableError, SubjectErasedError

__all__ = ["EngineFatalError", "NotDeliveredError", "StreamEngine", "instance_id"]

#: How often lag is refreshed (cheap, but not per batch).
LAG_INTERVAL_SECONDS = 1.0
#: The name of the offset commits' failure streak (:meth:`Progress.failed`, the not-ready reason).
COMMITS = "offset commits"
#: The name of the periodic work's failure streak.
TICKS = "periodic work"


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
        self.fatal_error: str | None = None
        self.consumed = 0
        self.replaced = 0
        self.hold = Hold(settings.retry_backoff_seconds, settings.retry_backoff_max_seconds)
        self.tick_retry = Retry(settings.retry_backoff_seconds, settings.retry_backoff_max_seconds)
        self._queue = CommitQueue()
        self._next_tick = 0.0
        self._lag_at = float("-inf")
        self._stop: threading.Event | None = None
        self._watchdog = Watchdog(settings.watchdog_seconds, time.monotonic())
        self.clients = Clients(self, settings, self.bootstrap, log=self.log, progress=self.progress,
                               rebalance=(self._on_assign, self._on_revoke, self._on_lost),
                               on_retry=self._count_retry, on_replaced=self._count_replaced,
                               on_closed=self._on_closed, on_commit=self._on_commit,
                               on_recovery=lambda: self._count("recovery"),
                               stopping=lambda: self._stop is not None and self._stop.is_set())
        self.retries: Counter[str] = Counter()  # failures retried, by cause (the metric's tallies)

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

    def stopped(self) -> None:
        """After the loop ended and the clients closed (stop threads of the worker's own)."""

    def result(self) -> Any:
        """What :meth:`run` returns."""
        return None

    def events_done(self) -> int:
        """What ``run(max_events=...)`` counts (default: records consumed)."""
        return self.consumed

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
        down_since = self.clients.outage.since
        if down_since is not None:
            return f"broker unreachable for {time.monotonic() - down_since:.0f} s"
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
        sink = self.clients.sink
        return sink.retries if sink is not None else 0

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
            self.clients.connect()
            self._watchdog.reset(time.monotonic())
            self.started = True
            self.log.info(f"{self.name} started", extra={"topics": self.topics()})
            try:
                while not stop.is_set():
                    if until is not None and until() and not self.hold.records:
                        break
                    try:
                        self._step(stop)
                    except ClientFailed as exc:
                        self._recover(exc)
            except EngineFatalError as exc:
                self.fatal_error = str(exc)
                raise
            finally:
                try:
                    self._shutdown()
                finally:
                    self.stopped()
        return self.result()

    def _step(self, stop: threading.Event) -> None:
        if not self.hold.records:
            self.hold.records = self._consume()
        if self.hold.records:
            self._process_held(stop)
        if self.tick_interval is not None and time.monotonic() >= self._next_tick:
            self._tick()
        self._service()

    def _consume(self) -> list[Record]:
        consumer = self.clients.consumer
        assert consumer is not None
        msgs = consumer.consume(num_messages=self.batch_limit(), timeout=self.settings.batch_max_wait_seconds)
        self.clients.check()
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
                raise ClientFailed(error_name(err))
            else:
                self.clients.problem(err)
        self.consumed += len(out)
        if out and self.metrics is not None:
            self.metrics.events_in(len(out))
        return out

    # -- process and hold --------------------------------------------------------------------
    def _process_held(self, stop: threading.Event) -> None:
        hold = self.hold
        started = time.perf_counter()
        try:
            result = self.process(hold.records)
        except self.hold_on as exc:
            erased = isinstance(exc, SubjectErasedError)  # no dependency is down: not a Redis error either way
            if erased and hold.attempt == 0:
                # people erased since their tokens were memoized: the worker forgot those tokens, so the
                # batch is redone at once (under their next tokens); no dependency is down
                self._count("erased")
                hold.attempt = 1  # a second refusal in a row takes the held path below
                self._rlog(logging.INFO, "erased", "batch redone: people it names were erased meanwhile",
                           held=len(hold), count=self.retries["erased"])
                return
            if self.metrics is not None and isinstance(exc, KeyUnavailableError) and not erased:
                self.metrics.redis_error()
            self._count("hold")
            delay, self.progress.problem = hold.failed_with(exc)
            self._rlog(logging.WARNING, "hold", "dependency unavailable: batch held (not emitted, not "
                       "committed), retrying", held=len(hold), retry_in_s=round(delay, 2),
                       error=str(exc), retries=hold.retries)
            self._wait_paused(delay, stop)
            return
        hold.passed()
        self.progress.problem = None
        starts, offsets = hold.bounds(hold.records)
        ticket = self._emit(result, offsets, records=len(hold))
        if ticket is not None:
            ticket.starts = starts
        if self.metrics is not None:
            self.metrics.observe_batch(time.perf_counter() - started, len(hold))
        hold.clear()

    def _wait_paused(self, seconds: float, stop: threading.Event) -> None:
        """Wait keeping the group membership; paused partitions deliver nothing. Records of
        partitions assigned meanwhile (not paused yet) join the hold and their partitions are
        paused: nothing polled is ever dropped."""
        with self.clients.paused() as consumer:
            deadline = time.monotonic() + seconds
            while not stop.is_set() and time.monotonic() < deadline:
                self._report_lag(cached=False)
                self.progress.observe(held=len(self.hold))
                msgs = consumer.consume(num_messages=100, timeout=min(0.2, max(0.0, deadline - time.monotonic())))
                self.clients.check()
                arrived = self._records(msgs)
                if arrived:
                    self.hold.add(arrived)
                    with contextlib.suppress(KafkaException):
                        consumer.pause([TopicPartition(t, p) for t, p in {(r.topic, r.partition) for r in arrived}])
                self._sink_service()

    def _tick(self) -> None:
        retry = self.tick_retry
        try:
            result = self.tick()
        except self.hold_on as exc:
            if self.metrics is not None and isinstance(exc, KeyUnavailableError):
                self.metrics.redis_error()
            self._count("tick")
            # not ready once it failed for longer than stall_seconds (a shredder that cannot shred)
            self.progress.failed(TICKS, str(exc) or type(exc).__name__)
            delay = retry.failed()
            self._rlog(logging.WARNING, "tick", f"{self.name} periodic work failed, retrying",
                       error=str(exc), retry_in_s=round(delay, 2))
            self._next_tick = time.monotonic() + delay
            return
        retry.passed()
        self.progress.succeeded(TICKS)
        assert self.tick_interval is not None
        self._next_tick = time.monotonic() + self.tick_interval
        if result is not None and (result.outputs or result.checkpoint):
            self._emit(result)

    # -- produce and commit -------------------------------------------------------------------
    def _emit(self, result: Result | None, offsets: dict[TP, int] | None = None, records: int = 0) -> Ticket | None:
        if result is None and not offsets:
            return None
        result = result or Result()
        sink = self.clients.sink
        assert sink is not None
        ticket = Ticket(sink, offsets or {}, result.outputs, defer=result.defer,
                        checkpoint=result.checkpoint, on_delivered=result.on_delivered, records=records)
        if self.transactional and ticket.offsets:
            self._transact(ticket)
        self._queue.add(ticket)
        if result.outputs and not self.transactional:
            sink.send(ticket)
            self.clients.check()
        return ticket

    def _transact(self, ticket: Ticket) -> None:
        """exactly_once: the ticket's outputs and offsets in one transaction (else recover)."""
        c = self.clients
        producer, consumer, sink = c.producer, c.consumer, c.sink
        assert producer is not None and consumer is not None and sink is not None
        try:
            producer.begin_transaction()
            sink.send(ticket)
            c.check()
            if sink.flush(60) or not ticket.done:
                raise ClientFailed("transaction outputs not delivered")
            tps = [TopicPartition(t, p, o) for (t, p), o in ticket.offsets.items()]
            producer.send_offsets_to_transaction(tps, consumer.consumer_group_metadata(), 30)
            producer.commit_transaction(60)
        except (KafkaException, ClientFailed) as exc:
            with contextlib.suppress(KafkaException, SystemError):
                producer.abort_transaction(30)
            why = error_name(exc) if isinstance(exc, KafkaException) else str(exc)
            raise ClientFailed(f"transaction aborted: {why}", producer_only=True) from None
        self._queue.done(ticket.offsets)
        ticket.offsets = {}

    def deliver_now(self, outs: list[Out], timeout: float = 30.0) -> None:
        """Produce ``outs`` and return once every one was acknowledged (receipts before a commit),
        else raise :class:`NotDeliveredError`."""
        sink = self.clients.sink
        assert sink is not None
        ticket = Ticket(sink, {}, outs)
        sink.send(ticket)
        sink.flush(timeout)
        if self.clients.failure is not None:
            raise NotDeliveredError(f"Kafka client failed: {self.clients.failure}")
        if not ticket.done:
            raise NotDeliveredError(f"{ticket.pending} of {len(outs)} records not delivered within {timeout:.0f} s")

    def _sink_service(self) -> None:
        sink = self.clients.sink
        if sink is not None:
            sink.service(0)
            self.clients.check()

    def _commit_delivered(self, *, sync: bool) -> None:
        """Commit the offsets of the leading finished results, throttled (:meth:`CommitQueue.due`)."""
        q = self._queue
        if q.free():
            self.progress.moved()
        if q.positions:  # consumer positions past the records read: commit past transaction markers
            q.free_positions((r.topic, r.partition) for r in self.hold.records)
        s = self.settings
        todo = q.due(time.monotonic(), sync=sync, interval=s.commit_interval_seconds, max_records=s.commit_max_records)
        if todo:
            self._commit(todo, sync=sync)

    def _commit(self, offsets: dict[TP, int], *, sync: bool) -> None:
        """Commit ``offsets``; done once the broker confirms it (an asynchronous commit's answer
        comes to :meth:`_on_commit`), else back to pending and retried (:meth:`_commit_failed`)."""
        q = self._queue
        todo = q.to_commit(offsets, self.assigned, sync=sync)
        consumer = self.clients.consumer
        if not todo or consumer is None:
            return
        tps = [TopicPartition(t, p, o) for (t, p), o in todo.items()]
        try:
            if sync:
                answer = consumer.commit(offsets=tps, asynchronous=False)
            else:
                q.sending(todo)
                consumer.commit(offsets=tps, asynchronous=True)
        except KafkaException as exc:  # e.g. a rebalance in progress: retried by the next commit
            self._commit_failed(todo, error_name(exc))
            return
        if sync:
            self._committed(None, answer or tps)

    def _on_commit(self, err: KafkaError | None, partitions: list[TopicPartition]) -> None:
        """librdkafka's answer to an asynchronous commit (called from ``consume``): nothing may
        escape into it."""
        try:
            self._committed(err, partitions)
        except Exception as exc:
            self._rlog(logging.ERROR, "on_commit", "offset commit answer not handled",
                       error=f"{type(exc).__name__}: {exc}")

    def _committed(self, err: KafkaError | None, partitions: list[TopicPartition]) -> None:
        """A commit's answer: per partition, done or (refused) back to pending."""
        ok: dict[TP, int] = {}
        failed: dict[TP, int] = {}
        why = error_name(err) if err is not None else None
        # a request-level error fails every partition; else (librdkafka sets ``err`` to the first
        # partition's error too) each partition's own error says
        per_partition = any(tp.error is not None for tp in partitions)
        for tp in partitions:
            if tp.offset < 0:
                continue
            e = tp.error if per_partition else err
            if e is None:
                ok[(tp.topic, tp.partition)] = tp.offset
            else:
                failed[(tp.topic, tp.partition)] = tp.offset
                why = why or error_name(e)
        if ok:
            self._queue.done(ok)
        if failed:
            self._commit_failed(failed, why or "commit failed")
        elif ok:
            self.progress.succeeded(COMMITS)

    def _commit_failed(self, offsets: dict[TP, int], why: str) -> None:
        """A commit refused or failed: its offsets (of partitions still held) go back to pending,
        retried by the next due commit; counted, logged (rate-limited), and not ready once commits
        failed for longer than ``stall_seconds`` without a success."""
        back = self._queue.refused({tp: o for tp, o in offsets.items() if tp in self.assigned})
        if not back:  # partitions gone, or a newer offset already pending, sent or committed
            self._rlog(logging.INFO, "commit-stale", "offset commit refused: nothing to retry (partitions no longer "
                       "assigned, or a newer commit supersedes it)", error=why, partitions=len(offsets))
            self._commits_settled()
            return
        self._count("commit")
        self.progress.failed(COMMITS, why)
        self._rlog(logging.WARNING, "commit", "offset commit failed: offsets kept, retried by the next commit",
                   error=why, partitions=len(back), count=self.retries["commit"])

    def _commits_settled(self) -> None:
        """Nothing left to commit or waiting for an answer: no commit failure stands any more."""
        if not self._queue.pending and not self._queue.sent:
            self.progress.succeeded(COMMITS)

    def _drain(self, timeout: float = 30.0) -> bool:
        """Deliver everything in flight and commit it (rebalance, shutdown). True when done."""
        sink = self.clients.sink
        if sink is None:
            return False
        left = sink.flush(timeout)
        self.clients.check()
        self._commit_delivered(sync=True)
        return left == 0

    def _count_retry(self, n: int) -> None:
        if self.metrics is not None:
            self.metrics.produce_retry(n)
        self._count("produce", n)

    def _count(self, cause: str, n: int = 1) -> None:
        """A failure the engine retries: ``streamgate_engine_retries_total{cause}`` and ``retries``."""
        self.retries[cause] += n
        if self.metrics is not None:
            self.metrics.engine_retry(cause, n)

    def _count_replaced(self, out: Out, error: str) -> None:
        self.replaced += 1
        self.log.warning("record refused by Kafka for good: replaced by a compact dead letter",
                         extra={"topic": out.topic, "count": len(out.value or b""), "error": error})

    # -- service: health, the broker, the group, the watchdog -----------------------------------
    def _service(self) -> None:
        # before this round's commits: a stall inside one blocking call (a process that hung) is
        # counted and logged too, not only seen by whoever asked /readyz during it
        if self.progress.observe(held=len(self.hold), inflight=self._queue.inflight):
            # /readyz, ops watch and the streamgate_ready gauge read the reason from the engine
            self.log.warning("no progress: not ready", extra={"reason": self.progress.reason})
        self.clients.broker_back()
        self._sink_service()
        self._commit_delivered(sync=False)
        self._report_lag(cached=True)
        self.clients.watch_assignment(assigned=bool(self.assigned), joined=self.joined)
        # the watchdog: not ready with no progress for watchdog_seconds, exit (a supervisor's restart
        # is the recovery left); a joined member with no partitions is a standby, not stuck
        why = self._watchdog.check(time.monotonic(), self.not_ready_reason,
                                   standby=self.joined and not self.assigned, moved_at=self.progress.moved_at)
        if why is not None:
            raise EngineFatalError(f"{self.name}: {why}")

    def _report_lag(self, *, cached: bool) -> None:
        now = time.monotonic()
        if now - self._lag_at < LAG_INTERVAL_SECONDS or self.clients.consumer is None:
            return
        self._lag_at = now
        lags = self.clients.lags(cached=cached)
        if lags is None:
            return
        if self.metrics is not None:
            for partition, lag in lags:
                self.metrics.set_lag(partition, lag)
            self.metrics.clear_lag([p for p, _ in lags])
        self.progress.observe(lag=sum(lag for _, lag in lags))
        consumer = self.clients.consumer
        with contextlib.suppress(KafkaException):  # for CommitQueue.free_positions
            assignment = consumer.assignment() if consumer is not None else []
            for tp in consumer.position(assignment) if consumer is not None and assignment else []:
                if tp.offset >= 0:
                    self._queue.reached((tp.topic, tp.partition), tp.offset)

    def _recover(self, failed: ClientFailed) -> None:
        """A client went fatal: count it (over budget: exit), drop what is uncommitted, and let the
        client supervisor recreate the clients (:meth:`Clients.recreate`)."""
        self.clients.spend(str(failed))
        self.progress.problem = f"recovering from a fatal client error: {failed}"
        # the lowest offset dropped per partition: where to seek if the rewind to committed fails
        dropped = self.hold.bounds(self.hold.records)[0]
        for t in self._queue.tickets:
            for tp, offset in t.starts.items():
                if tp in t.offsets and offset < dropped.get(tp, offset + 1):
                    dropped[tp] = offset
        self.hold.clear()
        q = self._queue
        # offsets of results delivered and not committed yet (confirmed or not): still owed a commit
        # when the consumer carries on past them (the rewind failed and it seeks to ``dropped``)
        delivered = {tp: max(o, q.pending.get(tp, o)) for tp, o in q.sent.items()}
        delivered.update({tp: o for tp, o in q.pending.items() if tp not in delivered})
        q.drop_inflight()

        def sought() -> None:
            q.reset_positions()
            q.pending.update(delivered)

        self.clients.recreate(failed, rewound=q.reset_positions, dropped=dropped, sought=sought)
        if not self.clients.unsought:  # else the seek's retry reports it
            self.progress.problem = None
        self.progress.moved()

    # -- rebalance callbacks -------------------------------------------------------------------
    def _on_assign(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        self.joined = True
        tps = [(tp.topic, tp.partition) for tp in partitions]
        # librdkafka keeps a partition's pause flag across a rebalance: set it as this moment needs
        consumer.assign(partitions)
        with contextlib.suppress(KafkaException):
            if partitions:
                (consumer.pause if self.clients.waiting else consumer.resume)(partitions)
        self.assigned.update(tps)
        if tps:
            self.log.info("partitions assigned", extra={"partitions": sorted(p for _, p in tps)})
            self.assigned_partitions(tps)

    def _on_revoke(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        tps = [(tp.topic, tp.partition) for tp in partitions]
        if self.clients.can_deliver:
            try:
                self._emit(self.revoked(tps))
                self._drain()
            except ClientFailed as exc:
                self.clients.fatal = str(exc)
        self._forget(tps)

    def _on_lost(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        tps = [(tp.topic, tp.partition) for tp in partitions]
        self.lost(tps)
        self._forget(tps)

    def _forget(self, tps: list[TP]) -> None:
        self.assigned.difference_update(tps)
        for tp in tps:  # a new assignment starts from the committed offset: no seek left to do
            self.clients.unsought.pop(tp, None)
        self._queue.forget(tps)
        self.hold.forget(tps)
        self._commits_settled()

    def _on_closed(self) -> None:
        """The consumer was closed: no assignment, nothing of it left to commit."""
        self.assigned.clear()
        self._queue.reset_positions()
        self._queue.pending.clear()
        self._commits_settled()
        self.joined = False

    def _shutdown(self) -> None:
        try:
            if self.clients.producer is not None and self.clients.failure is None:
                try:
                    self._emit(self.finish())
                    self._drain()
                except (ClientFailed, KafkaException, SystemError) as exc:
                    self.log.warning("shutdown: outputs not delivered (the restart re-reads them)",
                                     extra={"error": str(exc)})
        finally:
            self.clients.close()
            self.log.info(f"{self.name} stopped")
