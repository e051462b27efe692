"""The client supervisor: the Kafka clients' lifecycle, apart from the loop that uses them.

:class:`Clients` creates the consumer and the producer (after a start-up probe: a wrong address
fails within 10 s, one line), subscribes, takes librdkafka's error callbacks, and recreates the
clients after a fatal error: the producer alone when only it failed (the consumer rewound, its
group membership kept), both otherwise, within a recovery budget (over it: exit, one line). When
every broker was unreachable it probes once a second and, once one answers, recreates the
producer and rewinds the consumer (:meth:`Clients.broker_back`). A member left without partitions
re-creates vanished input topics and re-subscribes (:meth:`Clients.watch_assignment`). The rules
(budget, probe and re-subscribe pacing) are :mod:`stream.engine.supervisor`'s, pure.
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import time
from collections.abc import Callable, Iterator
from typing import Any, Protocol

from confluent_kafka import Consumer, KafkaError, KafkaException, Producer, TopicPartition

from stream.config import Settings
from stream.engine.contract import EngineFatalError, Out
from stream.engine.health import Progress
from stream.engine.holds import Retry
from stream.engine.produce import RateLimitedLog, Sink, error_name
from stream.engine.supervisor import Outage, RecoveryBudget, Resubscriber
from stream.errors import StreamgateError
from stream.kafka import consumer_config, ensure_topics, probe_broker, producer_config

__all__ = ["PROBE_SECONDS", "ClientFailed", "Clients", "Worker", "instance_id"]

#: Seconds the start-up probe waits for the broker.
PROBE_SECONDS = 10.0

TP = tuple[str, int]
Rebalance = Callable[[Consumer, list[TopicPartition]], None]


class ClientFailed(Exception):
    """A client went fatal; the loop recreates the clients (only the producer when only the
    producer failed: the consumer keeps its group membership and rewinds)."""

    def __init__(self, why: str, *, producer_only: bool = False, keep_consumer: bool = False) -> None:
        super().__init__(why)
        self.producer_only = producer_only or keep_consumer
        self.keep_consumer = keep_consumer


class Worker(Protocol):
    """What the clients are built from: the worker's hooks (:class:`stream.engine.core.StreamEngine`)."""

    @property
    def name(self) -> str: ...
    transactional: bool
    consumer_overrides: dict[str, Any]

    def topics(self) -> list[str]: ...
    def output_topics(self) -> list[str]: ...
    def group(self) -> str: ...
    def client_id(self) -> str: ...
    def extra_consumer_config(self) -> dict[str, Any]: ...
    def extra_producer_config(self) -> dict[str, Any]: ...
    def undeliverable(self, out: Out, error: str) -> Out | None: ...
    def reset(self) -> None: ...


class Clients:
    """The consumer, the producer and its :class:`Sink` of one worker (module docstring).

    ``rebalance``: the engine's (on_assign, on_revoke, on_lost); ``on_closed``: the consumer was
    closed (the engine forgets its assignment); ``stopping``: the stop event is set.
    """

    def __init__(self, worker: Worker, settings: Settings, bootstrap: str, *, log: logging.Logger,
                 progress: Progress, rebalance: tuple[Rebalance, Rebalance, Rebalance],
                 on_retry: Callable[[int], None], on_replaced: Callable[[Out, str], None],
                 on_closed: Callable[[], None], stopping: Callable[[], bool],
                 on_commit: Callable[[KafkaError | None, list[TopicPartition]], None] | None = None,
                 on_recovery: Callable[[], None] | None = None) -> None:
        self.worker = worker
        self.settings = settings
        self.bootstrap = bootstrap
        self.log = log
        self._rlog = RateLimitedLog(log)
        self.progress = progress
        self._rebalance = rebalance
        self._on_retry = on_retry
        self._on_replaced = on_replaced
        self._on_closed = on_closed
        self._stopping = stopping
        self._on_commit = on_commit
        self._on_recovery = on_recovery
        self.consumer: Consumer | None = None
        self.producer: Producer | None = None
        self.sink: Sink | None = None
        self.fatal: str | None = None  # the consumer (or both) failed
        self.producer_fatal: str | None = None  # the producer alone failed
        self.closing = False  # the consumer is closing (its revoke delivers nothing)
        self.waiting = False  # a hold's paused wait: partitions assigned meanwhile start paused
        self.recoveries = 0
        self.budget = RecoveryBudget(settings.max_client_recoveries)
        self.outage = Outage()
        self.resubscriber = Resubscriber(settings.session_timeout_ms / 1000)
        # a failed rewind's fallback: the lowest offset a recovery dropped per partition, not sought
        # yet (those partitions paused); retried with backoff (:meth:`seek_dropped`)
        self.unsought: dict[TP, int] = {}
        self.seek_retry = Retry(settings.retry_backoff_seconds, settings.retry_backoff_max_seconds)
        self._seek_at = float("-inf")

    # -- state ----------------------------------------------------------------------------------
    @property
    def failure(self) -> str | None:
        return self.fatal or self.producer_fatal

    @property
    def can_deliver(self) -> bool:
        """A producer that did not fail, and a consumer not closing (revoke and shutdown outputs)."""
        return not self.closing and self.producer is not None and self.failure is None

    def check(self) -> None:
        """Raise :class:`ClientFailed` for a failure an error callback (or the sink) noted."""
        if self.fatal is not None:
            why, self.fatal, self.producer_fatal = self.fatal, None, None
            raise ClientFailed(why)
        if self.producer_fatal is not None:
            why, self.producer_fatal = self.producer_fatal, None
            raise ClientFailed(why, producer_only=True)

    # -- error callbacks (librdkafka's; nothing may escape into it) -----------------------------------
    def on_consumer_error(self, err: KafkaError) -> None:
        try:
            if err.fatal():
                self.fatal = error_name(err)
            else:
                self.problem(err)
        except Exception as exc:
            self.fatal = f"client error could not be handled: {type(exc).__name__}: {exc}"

    def on_producer_error(self, err: KafkaError) -> None:
        try:
            if err.fatal():
                if self.sink is not None:
                    self.sink.on_fatal(error_name(err))
                else:
                    self.producer_fatal = error_name(err)
            else:
                self.problem(err)
        except Exception as exc:
            self.producer_fatal = f"client error could not be handled: {type(exc).__name__}: {exc}"

    def problem(self, err: KafkaError) -> None:
        """A client error that is not fatal: logged (rate-limited); every broker down starts an outage."""
        code = err.code()
        if code == KafkaError._ALL_BROKERS_DOWN:
            self.outage.down(time.monotonic())
        self._rlog(logging.WARNING, f"client:{code}", "kafka client error", error=error_name(err))

    def set_producer_fatal(self, why: str) -> None:
        self.producer_fatal = why

    # -- lifecycle ------------------------------------------------------------------------------
    def connect(self) -> None:
        """Probe the broker (unreachable: :class:`EngineFatalError`), create both clients, subscribe."""
        w = self.worker
        try:
            probe_broker(self.bootstrap, timeout=PROBE_SECONDS)
        except StreamgateError as exc:
            raise EngineFatalError(f"{w.name}: {exc}") from None
        s = self.settings
        cconf = consumer_config(self.bootstrap, w.group(), session_timeout_ms=s.session_timeout_ms,
                                **{"client.id": w.client_id(), "error_cb": self.on_consumer_error,
                                   "topic.metadata.refresh.interval.ms": 10_000},
                                **w.extra_consumer_config(), **w.consumer_overrides)
        if self._on_commit is not None:  # the answers to asynchronous commits (served by consume)
            cconf["on_commit"] = self._on_commit
        self.consumer = Consumer(cconf)
        self.new_producer()
        self.resubscriber.start(time.monotonic())
        self.subscribe()

    def subscribe(self) -> None:
        assert self.consumer is not None
        on_assign, on_revoke, on_lost = self._rebalance
        self.consumer.subscribe(self.worker.topics(), on_assign=on_assign, on_revoke=on_revoke, on_lost=on_lost)

    def new_producer(self) -> None:
        w = self.worker
        pconf = producer_config(self.bootstrap, **{"client.id": w.client_id(), "error_cb": self.on_producer_error},
                                **w.extra_producer_config())
        if w.transactional:
            pconf["transactional.id"] = f"{w.group()}-{instance_id()}"
        producer = Producer(pconf)
        if w.transactional:
            producer.init_transactions(30)
        self.producer = producer
        self.sink = Sink(producer, undeliverable=w.undeliverable, on_retry=self._on_retry,
                         on_fatal=self.set_producer_fatal, on_replaced=self._on_replaced, stop=self._stopping)

    def close(self) -> None:
        """Close the consumer (its revoke delivers nothing) and drop the producer."""
        consumer, self.consumer = self.consumer, None
        self.producer, self.sink = None, None
        self.unsought = {}  # a new consumer starts from the committed offsets
        if consumer is not None:
            self.closing = True
            try:
                with contextlib.suppress(KafkaException, RuntimeError):
                    consumer.close()
            finally:
                self.closing = False
        self._on_closed()

    def rewind_to_committed(self) -> bool:
        """Seek every assigned partition back to its committed offset (after the producer was
        recreated: what was consumed but not committed is read again). False: nothing assigned."""
        consumer = self.consumer
        assert consumer is not None
        assignment = consumer.assignment()
        if not assignment:
            return False
        positions = {(tp.topic, tp.partition): tp.offset for tp in consumer.position(assignment)}
        for tp in consumer.committed(assignment, timeout=10):
            if positions.get((tp.topic, tp.partition), -1) < 0:
                continue  # nothing fetched yet: it starts from the committed offset anyway
            offset = tp.offset if tp.offset >= 0 else consumer.get_watermark_offsets(tp, timeout=5)[0]
            consumer.seek(TopicPartition(tp.topic, tp.partition, offset))
        return True

    def spend(self, why: str) -> None:
        """Count a recovery; more than ``max_client_recoveries`` in 120 s: :class:`EngineFatalError`."""
        recent, over = self.budget.spend(time.monotonic())
        self.recoveries += 1
        if self._on_recovery is not None:  # streamgate_engine_retries_total{cause="recovery"}
            self._on_recovery()
        if over:
            raise EngineFatalError(f"{self.worker.name}: Kafka client failed {recent} times in 120 s, last: {why}")

    def recreate(self, failed: ClientFailed, *, rewound: Callable[[], None],
                 dropped: dict[TP, int] | None = None, sought: Callable[[], None] | None = None) -> None:
        """Recreate the failed clients and resume from the committed offsets (the caller spent the
        budget and dropped what was uncommitted: ``dropped``, the lowest offset it dropped per
        partition). A failed producer alone is replaced and the consumer rewound (its group
        membership kept; ``rewound`` then runs); otherwise both are recreated. ``keep_consumer``
        (the broker came back): the consumer is never closed (see :meth:`broker_back`); when it
        cannot be rewound (the coordinator still loading), it kept its membership and would carry
        on from its position, past the dropped records: each partition is sought back to its
        lowest dropped record instead (:meth:`seek_dropped`), and ``sought`` runs (else ``rewound``):
        what was delivered below those records is not read again. The worker's ``reset`` runs
        before the new clients exist."""
        what = "the producer" if failed.producer_only else "the clients"
        self.log.error(f"fatal Kafka client error: recreating {what}, resuming from committed offsets",
                       extra={"error": str(failed), "recoveries": self.recoveries})
        if failed.producer_only and self.consumer is not None:
            old, self.producer, self.sink = self.producer, None, None
            if old is not None:
                with contextlib.suppress(Exception):
                    old.purge(in_queue=True, in_flight=True, blocking=False)
            self.worker.reset()
            self.new_producer()
            try:
                if self.rewind_to_committed():
                    rewound()
                self.resume_unsought()  # rewound to the committed offsets: at or before them
            except (KafkaException, SystemError) as exc:  # cannot rewind: start the consumer afresh too
                if failed.keep_consumer:
                    self.log.warning("rewind failed: seeking to the records the recovery dropped",
                                     extra={"error": error_name(exc), "partitions": len(dropped or {})})
                    for tp, offset in (dropped or {}).items():
                        self.unsought[tp] = min(offset, self.unsought.get(tp, offset))
                    self._seek_at = float("-inf")
                    self.seek_dropped()
                    (sought or rewound)()
                else:
                    self.log.warning("rewind failed: recreating the consumer too", extra={"error": error_name(exc)})
                    self.close()
                    self.connect()
        else:
            self.close()
            self.worker.reset()
            self.connect()

    def seek_dropped(self) -> None:
        """Seek each partition of ``unsought`` to the lowest record a recovery dropped (a seek needs
        no coordinator; those records were never committed: at-least-once). A failed seek leaves
        them paused (nothing past the dropped records is read) and is retried with backoff, each
        try logged and counted (``seek_retry.retries``, and as a ``recovery`` retry); readiness says so meanwhile. A partition
        no longer assigned is left out: its next owner starts from the committed offset."""
        consumer = self.consumer
        assert consumer is not None
        if time.monotonic() >= self._seek_at:
            try:
                assigned = {(tp.topic, tp.partition) for tp in consumer.assignment()}
                for tp, offset in list(self.unsought.items()):
                    if tp in assigned:
                        consumer.seek(TopicPartition(*tp, offset))
                        consumer.resume([TopicPartition(*tp)])
                    del self.unsought[tp]
            except KafkaException as exc:
                delay = self.seek_retry.failed()
                self._seek_at = time.monotonic() + delay
                if self._on_recovery is not None:  # part of the recovery: streamgate_engine_retries_total{cause="recovery"}
                    self._on_recovery()
                with contextlib.suppress(KafkaException):  # local; fails only for a partition not assigned
                    consumer.pause([TopicPartition(*tp) for tp in self.unsought])
                self.log.warning("seek to the records a recovery dropped failed: partitions paused, retrying",
                                 extra={"error": error_name(exc), "partitions": sorted(p for _, p in self.unsought),
                                        "retries": self.seek_retry.retries, "retry_in_s": round(delay, 2)})
        if self.unsought:  # every round: a batch of other partitions clears ``problem``
            self.progress.problem = (f"{len(self.unsought)} partitions paused at records a recovery dropped: "
                                     f"seek failed {self.seek_retry.retries} times, retrying")
        elif self.seek_retry.attempt:
            self.seek_retry.passed()
            self.progress.problem = None

    def resume_unsought(self) -> None:
        """The consumer was rewound to the committed offsets: no seek is left to do."""
        if self.unsought and self.consumer is not None:
            with contextlib.suppress(KafkaException):
                self.consumer.resume([TopicPartition(*tp) for tp in self.unsought])
        self.unsought = {}
        self.seek_retry.passed()

    @contextlib.contextmanager
    def paused(self) -> Iterator[Consumer]:
        """Pause the assignment (membership kept; paused partitions deliver nothing); resume after."""
        consumer = self.consumer
        assert consumer is not None
        self.waiting = True
        with contextlib.suppress(KafkaException):
            if consumer.assignment():
                consumer.pause(consumer.assignment())
        try:
            yield consumer
        finally:
            self.waiting = False
            with contextlib.suppress(KafkaException):  # not those still to be sought back
                rest = [tp for tp in consumer.assignment() if (tp.topic, tp.partition) not in self.unsought]
                if rest:
                    consumer.resume(rest)

    # -- the broker, the group ----------------------------------------------------------------------
    def broker_back(self) -> None:
        """After every broker was unreachable, probe (once a second); once one answers, raise
        :class:`ClientFailed` (``keep_consumer``): the producer is recreated and the consumer
        rewound to the committed offsets: a broker that restarted may have lost the group, the
        idempotent producer's state or the log itself, and a client that carried on from its old
        positions could skip records. The consumer is kept, not closed: its LeaveGroup, sent to a
        coordinator that restarted without the group, wedged the embedded broker's group for good
        (no member of the group, not even a new process, joined again; see the held-out case in
        tests/apps/test_conformance.py). A consumer whose session expired rejoins by itself, and a
        new assignment starts from the committed offsets."""
        if self.unsought:
            self.seek_dropped()
        outage = self.outage
        now = time.monotonic()
        if not outage.probe_due(now):
            return
        assert outage.since is not None
        try:
            probe_broker(self.bootstrap, timeout=1.0)
        except StreamgateError:
            self.progress.problem = f"broker unreachable for {now - outage.since:.0f} s"
            return
        took = outage.up(now)
        self.progress.problem = None
        self.resubscriber.resync = True
        raise ClientFailed(f"the broker is back after {took:.0f} s unreachable: resynchronising", keep_consumer=True)

    def watch_assignment(self, *, assigned: bool, joined: bool) -> None:
        """A member with no partitions for a while: if an input topic vanished (a broker that lost
        its data), re-create it and re-subscribe. After the broker came back, a joined member with
        none while the topics have some re-subscribes too (a topic re-created after the rejoin is
        not always noticed), less and less often, until it holds partitions. (Never otherwise: a
        standby of a healthy group, e.g. a second aggregator, would cost the group a rebalance.)"""
        now = time.monotonic()
        rs = self.resubscriber
        if not rs.due(now, assigned=assigned, joined=joined):
            return
        consumer = self.consumer
        assert consumer is not None
        topics = self.worker.topics()
        try:
            md = consumer.list_topics(timeout=5.0)
        except KafkaException as exc:
            self.outage.down(now)
            self._rlog(logging.WARNING, "probe", "broker unreachable", error=error_name(exc))
            return
        missing = [t for t in topics if t not in md.topics or md.topics[t].error is not None]
        if not missing and joined:
            if not rs.resync or not any(md.topics[t].partitions for t in topics):
                return
            rs.count += 1
            self.log.warning("joined with no partitions while the input topics have some: re-subscribing",
                             extra={"resubscribes": rs.count})
            consumer.unsubscribe()
            self.subscribe()
            return
        self.log.warning("input topic missing or group not joined: re-creating topics and re-subscribing",
                         extra={"topics": missing})
        with contextlib.suppress(StreamgateError):
            ensure_topics(self.bootstrap, [*topics, *self.worker.output_topics()],
                          partitions=self.settings.topic_partitions, timeout=10.0)
        consumer.unsubscribe()
        self.subscribe()

    def lags(self, *, cached: bool) -> list[tuple[int, int]] | None:
        """(partition, lag) of every assigned partition whose end is known; None: unknown now."""
        consumer = self.consumer
        if consumer is None:
            return None
        try:
            assignment = consumer.assignment()
            positions = consumer.position(assignment) if assignment else []
        except KafkaException:
            return None
        out: list[tuple[int, int]] = []
        for tp in positions:
            try:
                low, high = (consumer.get_watermark_offsets(tp, cached=True) if cached
                             else consumer.get_watermark_offsets(tp, timeout=1.0))
            except KafkaException:
                continue
            if high < 0:
                continue
            pos = tp.offset if tp.offset >= 0 else max(low, 0)
            out.append((tp.partition, max(0, high - pos)))
        return out


def instance_id() -> str:
    return f"{socket.gethostname()}-{os.getpid()}"
