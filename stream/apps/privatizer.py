"""The privatizer worker: ``clicks.protected`` -> ``features.private`` + ``analytics.frequencies``.

Like the gateway (see :mod:`stream.apps.engine` for why), the Kafka loop is a
confluent-kafka batch engine hosted in a Faust worker (:mod:`stream.apps.hosting`),
which provides the lifecycle, the web server (health, metrics) and signals.

Per batch (the loop, holds, produce and commits are :class:`stream.engine.StreamEngine`'s):
privatize the records of each input partition with the pure core
(:class:`stream.ldp.privatizer.Privatizer`: fresh noise per report, each charged to the person's
ledger), hand the feature reports to the release buffer (:mod:`stream.ldp.release`: shuffled,
released once they come from ``STREAMGATE_LDP_RELEASE_MIN_PEOPLE`` people or after the max delay;
no key, no headers, Kafka timestamp floored to the hour), add the attribute reports to that
partition's tumbling windows (:mod:`stream.ldp.aggregate`), publish the windows that closed (only
those with enough people), and write the partition's open windows to the compacted
``analytics.partials`` topic only when the counts added since the last write come from enough
people (or a window closed: then the last written state minus the closed windows).

Guarantees: at-least-once for ``features.private`` for every report released before a crash;
reports held in the release buffer at a crash (at most the max delay's worth) are lost, their ε
stays spent. Fail closed: with Redis unreachable the batch is held and retried. Windows survive a
crash: a new owner of a partition restores its open windows from ``analytics.partials`` and skips
counting the records the restored windows already hold (``next_offset``); records after the last
partial write are then not counted (the estimate stays unbiased for what it counted). A graceful
stop releases everything held and publishes the open windows (with enough people).
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import time
from collections import Counter, deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, ClassVar

import faust
import orjson

from stream.apps.hosting import worker_app
from stream.config import Settings
from stream.crypto.keyring import Keyring
from stream.engine import Out, Record, Result, StreamEngine
from stream.errors import KeyUnavailableError, TopicMissingError
from stream.gateway.framing import unframed
from stream.kafka import TopicReader
from stream.ldp.aggregate import WindowAggregator
from stream.ldp.labels import LABEL_NAME, ExampleStub, SessionLabeler
from stream.ldp.ledger import LEDGER_PURPOSE
from stream.ldp.oracle import secure_rng
from stream.ldp.policy import LdpPolicy
from stream.ldp.privatizer import Privatizer, PrivatizeResult, ProtectedRecord
from stream.ldp.release import ReleaseBuffer
from stream.ops.metrics import WorkerMetrics
from stream.redisdb import RedisClient
from stream.schema import load_schema
from stream.storage.invalidation import ShredListener
from stream.storage.ldp import RedisLedgerStore

__all__ = [
    "PrivatizerEngine",
    "PrivatizerStats",
    "build_privatizer",
    "create_app",
    "start_memo_invalidation",
]

log = logging.getLogger("streamgate.privatizer")

_HOUR_MS = 3_600_000
#: Most unlabelled examples held in memory; beyond it the least recently active sessions' examples
#: are dropped (counted), never labelled early.
LEARN_MAX_PENDING = 200_000


def start_memo_invalidation(settings: Settings, privatizer: Privatizer,
                            on_erasure: Callable[[str], None] | None = None) -> ShredListener:
    """Drop cached ledger ids when the shredder announces a shred (one epoch or every epoch of a person),
    and everything after a reconnect (messages may have been missed). ``on_erasure(subject)`` is called
    for a shred of every epoch of a person (an erasure): the engine drops their held examples."""
    from stream.components import redis_client

    cache = privatizer.cache

    def on_shred(subject: str, epoch: int | None) -> None:
        cache.invalidate(subject, epoch)
        if epoch is None and on_erasure is not None:
            on_erasure(subject)

    return ShredListener(
        lambda: redis_client(settings, "privatizer"), settings.redis_key_prefix, on_shred,
        on_reset=cache.invalidate, name="streamgate-memo-shred-listener",
    ).start()


def build_privatizer(
    settings: Settings,
    *,
    keyring: Keyring | None = None,
    client: RedisClient | None = None,
    clock: Callable[[], float] = time.time,
    seed: int | None = None,
    guard: bool = True,
) -> Privatizer:
    """Wire the pure core from settings (memo key: keyring purpose ``ldp-memo``; ledger ids: ``ldp-ledger``).

    Noise comes from a ChaCha20 keystream keyed from the OS CSPRNG. ``seed`` keys it reproducibly
    instead: an argument of test and benchmark entry points only, never a setting (a worker started
    with ``STREAMGATE_LDP_SEED`` in its environment, in any case, is refused by Settings).
    """
    from stream.components import guard_privatizer, redis_client
    from stream.errors import ConfigError
    from stream.ldp.csprng import ChaChaRandom

    keyring = keyring or Keyring.from_settings(settings)
    schema = load_schema(settings.schema_name)
    policy = LdpPolicy.from_schema(schema, settings.ldp_epsilon)
    report_cost = sum(a.epsilon_1 for a in policy.attributes)
    if settings.learn_examples and settings.learn_model == "joint-nb":
        report_cost += settings.learn_label_epsilon  # the person-epoch's example is paid before any feature report
    if report_cost > settings.ldp_person_epsilon:
        raise ConfigError(f"STREAMGATE_LDP_PERSON_EPSILON ({settings.ldp_person_epsilon:g}) is below the price of one "
                          f"feature report ({report_cost:g}, with a joint-nb example's epsilon): nothing would ever be released")
    rng = secure_rng() if seed is None else ChaChaRandom(seed)
    client = client or redis_client(settings, "privatizer")
    privatizer = Privatizer(
        policy,
        RedisLedgerStore(client, prefix=settings.redis_key_prefix),
        memo_key=keyring.derive("ldp-memo"),
        ledger_key=keyring.derive(LEDGER_PURPOSE),
        subject_field=schema.subject_field,
        budget_epsilon=settings.ldp_person_epsilon,
        epoch_seconds=settings.epoch_seconds,
        retention_seconds=settings.retention_seconds,
        retention_margin_seconds=settings.shredder_lead_seconds + 1.0,
        rng=rng,
        clock=clock,
        shuffle_seed=seed,
        label_epsilon=settings.learn_label_epsilon if settings.learn_examples and settings.learn_model == "logistic"
        else None,
        examples=_joint_examples(settings, policy, rng, schema.subject_field),  # issue 22
    )
    if guard:  # a ledger lost with the key store's data is noticed
        guard_privatizer(settings, privatizer, client)
    return privatizer


def _joint_examples(settings: Settings, policy: LdpPolicy, rng: Any, subject_field: str) -> Any:
    """Issue 22: the joint-example side of the privatizer (:class:`stream.ldp.examples.JointExamples`), or None."""
    if not settings.learn_examples or settings.learn_model != "joint-nb":
        return None
    from stream.ldp.examples import ExampleSpec, JointExamples

    return JointExamples(ExampleSpec.from_policy(policy), settings.learn_label_epsilon, rng,
                         subject_field=subject_field)


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
    over_budget: int = 0  # events not reported: the person's ledger was at its cap
    released: int = 0  # records (feature reports and examples) released to features.private
    small_releases: int = 0  # releases of fewer than min_people people (after the max delay)
    windows_withheld: int = 0  # windows with fewer than min_people people: not published
    first_event_at: float | None = None
    last_event_at: float | None = None

    def rate(self) -> float:
        if self.first_event_at is None or self.last_event_at is None or self.last_event_at <= self.first_event_at:
            return 0.0
        return self.consumed / (self.last_event_at - self.first_event_at)

    def add(self, res: PrivatizeResult) -> None:
        self.reports += len(res.reports)
        self.fully_suppressed += res.fully_suppressed
        self.over_budget += res.over_budget
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
            "over_budget": self.over_budget,
            "released": self.released,
            "small_releases": self.small_releases,
            "windows_withheld": self.windows_withheld,
            "memo_hits": self.memo_hits,
            "memo_resolved": self.memo_resolved,
            "windows_published": self.windows_published,
            "estimates_published": self.estimates_published,
            "late": self.late,
            "batches": self.batches,
            "fail_closed_retries": self.fail_closed_retries,
            "rate": round(self.rate(), 1),
        }


class _Partition:
    """The windows of one input partition, the offset below which its records are counted, the people
    added since the last partial-window record and that record's (next_offset, state)."""

    __slots__ = ("aggregator", "next_offset", "people_since", "written")

    def __init__(self, aggregator: WindowAggregator, next_offset: int = 0) -> None:
        self.aggregator = aggregator
        self.next_offset = next_offset
        self.people_since: set[int] = set()
        self.written: tuple[int, dict[str, Any]] | None = None


class PrivatizerEngine(StreamEngine):
    """The privatizer on the shared engine (module docstring)."""

    name: ClassVar[str] = "privatizer"
    tick_interval = 0.5

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
        max_reports_per_memo: int | None = None,  # accepted for older callers; nothing is capped per memo
    ) -> None:
        super().__init__(settings, bootstrap=bootstrap, metrics=metrics, clock=clock)
        del max_reports_per_memo
        self.privatizer = privatizer
        self.min_people = settings.ldp_release_min_people
        self.release = ReleaseBuffer(min_people=self.min_people,
                                     max_delay_seconds=settings.ldp_release_max_delay_seconds,
                                     shuffle=privatizer._shuffle)
        # metric increments of reports still held: published with their release, never per batch
        self._unreleased: list[PrivatizeResult] = []
        self.stats = PrivatizerStats()
        self._grace, self._idle = grace_seconds, idle_seconds
        self.parts: dict[tuple[str, int], _Partition] = {}
        self.worker_id = f"{socket.gethostname()}-{os.getpid()}"
        self.on_batch = on_batch
        self.listener: ShredListener | None = None
        # labelled examples: held per session until it ends (stream.learn.labels)
        self.labeler: SessionLabeler | None = None
        if privatizer.examples_enabled:
            self.labeler = SessionLabeler(round(settings.learn_session_gap_seconds * 1000),
                                          max_pending=LEARN_MAX_PENDING)
        self._released: list[tuple[ExampleStub, bool]] = []  # ended sessions waiting for their labels
        self._idle_since = time.time()
        self._idle_watermark = 0
        self._erased: deque[str] = deque()  # subjects erased (shred channel thread -> engine loop)

    def close(self) -> None:
        """Stop the shred listener (called by the hosting service after the loop ended)."""
        if self.listener is not None:
            self.listener.stop()
            self.listener = None

    def events_done(self) -> int:
        return self.stats.consumed

    def result(self) -> PrivatizerStats:
        return self.stats

    # -- hooks -------------------------------------------------------------------------------
    def topics(self) -> list[str]:
        return [self.settings.topics.protected]

    def output_topics(self) -> list[str]:
        t = self.settings.topics
        return [t.features, t.frequencies, t.partials]

    def group(self) -> str:
        return self.settings.privatizer_consumer_group

    def client_id(self) -> str:
        return "streamgate"

    def _aggregator(self) -> WindowAggregator:
        return WindowAggregator(self.privatizer.policy, window_seconds=self.settings.ldp_window_seconds,
                                grace_seconds=self._grace, idle_seconds=self._idle, clock=self.clock,
                                min_people=self.min_people, estimand=self.privatizer.estimand())

    def _part(self, tp: tuple[str, int]) -> _Partition:
        part = self.parts.get(tp)
        if part is None:
            part = self.parts[tp] = _Partition(self._aggregator())
        return part

    def assigned_partitions(self, partitions: list[tuple[str, int]]) -> None:
        """Restore the open windows of these partitions from the partials topic (crash recovery)."""
        wanted = {self._partial_key(tp): tp for tp in partitions}
        for key, doc in read_partials(self.bootstrap, self.settings.topics.partials, set(wanted)).items():
            self.restore(wanted[key], doc)

    def restore(self, tp: tuple[str, int], doc: dict[str, Any]) -> None:
        """Continue partition ``tp``'s open windows from its partial-window record ``doc``."""
        part = self._part(tp)
        part.aggregator.restore(doc.get("state", {}))
        part.next_offset = int(doc.get("next_offset", 0))
        part.written = (part.next_offset, doc.get("state", {}))
        log.info("windows restored", extra={"partition": tp[1], "windows": len(part.aggregator.windows)})

    def revoked(self, partitions: list[tuple[str, int]]) -> Result | None:
        # the open windows stay in the partials topic for the next owner; examples: see _examples
        for tp in partitions:
            self.parts.pop(tp, None)
        return self._examples(final="rebalance")

    def lost(self, partitions: list[tuple[str, int]]) -> None:
        for tp in partitions:
            self.parts.pop(tp, None)

    def reset(self) -> None:
        self.parts.clear()
        if self.labeler is not None:
            self.labeler.discard("recovery")
        self._released.clear()

    def finish(self) -> Result | None:
        """A graceful stop publishes the open windows as they are (``n`` says how many reports)."""
        outs: list[Out] = []
        for tp, part in self.parts.items():
            wins = part.aggregator.drain()
            if wins:
                outs.extend(self._estimates(tp, wins))
                outs.append(self._partial(tp, part, closed=wins))
        ex = self._examples(final="shutdown")
        if ex is not None:
            outs.extend(ex.outputs)
        outs.extend(self._release(force=True))
        return Result(outs)

    def tick(self) -> Result | None:
        self._idle_tick()
        outs: list[Out] = []
        for tp, part in self.parts.items():
            wins = part.aggregator.due()
            if wins:
                outs.extend(self._estimates(tp, wins))
                outs.append(self._partial(tp, part, closed=wins))
        ex = self._examples()
        if ex is not None:
            outs.extend(ex.outputs)
        outs.extend(self._release())
        return Result(outs) if outs else None

    def process(self, records: list[Record]) -> Result:
        t0 = time.perf_counter()
        by_part: dict[tuple[str, int], list[Record]] = {}
        for r in records:
            by_part.setdefault((r.topic, r.partition), []).append(r)
        # resolve every partition's memos first: a KeyUnavailableError leaves nothing half-done
        results: list[tuple[tuple[str, int], PrivatizeResult, bool]] = []
        for tp, recs in by_part.items():
            part = self._part(tp)
            counted = [r for r in recs if r.offset < part.next_offset]  # already in restored windows
            fresh = [r for r in recs if r.offset >= part.next_offset] if counted else recs
            for group, aggregate in ((counted, False), (fresh, True)):
                if group:
                    try:
                        res = self.privatizer.process([ProtectedRecord(unframed(r.value), r.timestamp_ms or 0)
                                                       for r in group])
                    except self.hold_on:
                        self.stats.fail_closed_retries += 1
                        raise
                    results.append((tp, res, aggregate))
        outs: list[Out] = []
        for tp, res, aggregate in results:
            self.release.add(res.reports, res.people)
            if aggregate:
                part = self.parts[tp]
                part.aggregator.add(res.attribute_reports)
                part.people_since.update(res.people)
            if self.labeler is not None:
                self.labeler.add(res.examples)
                self._idle_since, self._idle_watermark = time.time(), self.labeler.watermark_ms
            self._account(res, t0)
        for tp, recs in by_part.items():
            part = self.parts[tp]
            part.next_offset = max(part.next_offset, recs[-1].offset + 1)
            wins = part.aggregator.due()
            if wins:
                outs.extend(self._estimates(tp, wins))
                outs.append(self._partial(tp, part, closed=wins))
            elif len(part.people_since) >= self.min_people:
                outs.append(self._partial(tp, part))
        outs.extend(self._release())
        self.stats.consumed += len(records)
        self.stats.batches += 1
        self.stats.late = sum(p.aggregator.late for p in self.parts.values())
        now = time.monotonic()
        if self.stats.first_event_at is None:
            self.stats.first_event_at = now
        self.stats.last_event_at = now
        return Result(outs)

    # -- outputs -------------------------------------------------------------------------------
    def _partial_key(self, tp: tuple[str, int]) -> str:
        return f"{self.group()}|{tp[0]}|{tp[1]}"

    def _partial(self, tp: tuple[str, int], part: _Partition, closed: list[Any] | None = None) -> Out:
        """The partition's partial-window record: its current state if the counts added since the last
        one come from at least ``min_people`` people; else (a window closed) the last written state
        without the closed windows, so no record shows the increments of a few people."""
        if len(part.people_since) >= self.min_people or closed is None:
            offset, state = part.next_offset, part.aggregator.state()
            part.people_since.clear()
        else:
            offset, old = part.written if part.written is not None else (0, {"windows": []})
            gone = {w.start_ms for w in closed}
            state = {**old, "closed_before_ms": part.aggregator.closed_before_ms,
                     "windows": [w for w in old.get("windows", ()) if int(w["start_ms"]) not in gone]}
        part.written = (offset, state)
        doc = {"schema": PARTIAL_SCHEMA, "next_offset": offset, "state": state}
        return Out(self.settings.topics.partials, orjson.dumps(doc), self._partial_key(tp).encode())

    def _release(self, *, force: bool = False) -> list[Out]:
        """The held feature reports and examples that may leave now (:class:`ReleaseBuffer`), and the
        metrics of the feature reports among them (published with their release, never per batch)."""
        values = self.release.due(force=force)
        if not values:
            return []
        hour_ms = (int(time.time() * 1000) // _HOUR_MS) * _HOUR_MS
        features = self.settings.topics.features
        self.stats.released += len(values)
        self.stats.small_releases = self.release.small_releases
        m = self.metrics
        if m is not None:
            m.events_out("features", len(values))
            for res in self._unreleased:
                # every attribute reported or charged: the label's ε (LABEL_NAME) is charged (prepaid) with the
                # feature reports of a batch, its examples are counted when they are labelled
                for name in res.reported.keys() | res.epsilon_spent.keys():
                    attr = self.privatizer.policy.by_name.get(name)
                    m.ldp_reports(name, attr.mechanism if attr is not None else "GRR", res.reported.get(name, 0),
                                  res.epsilon_spent.get(name, 0.0))
            hist = self.privatizer.spend.published()
            if hist is not None:
                m.set_person_epsilon(hist)
        self._unreleased.clear()
        return [Out(features, v, None, hour_ms) for v in values]

    def _estimates(self, tp: tuple[str, int], windows: list[Any]) -> list[Out]:
        """The windows' records; ``worker`` names the process and the input partition, ``source`` the
        group and the input partition: records of one window from several partitions are distinct
        sources, which readers add up; the same window of one source again (a restart after a crash
        between the records and their partial write) replaces the earlier one."""
        topic = self.settings.topics.frequencies
        outs: list[Out] = []
        agg = next(iter(self.parts.values())).aggregator if self.parts else self._aggregator()
        worker, source = f"{self.worker_id}/p{tp[1]}", f"{self.group()}/{tp[0]}/{tp[1]}"
        for win in windows:
            recs = agg.records(win, worker=worker, source=source)
            for rec in recs:
                outs.append(Out(topic, orjson.dumps(rec), rec["attribute"].encode()))
            if recs:
                self.stats.windows_published += 1
            else:
                self.stats.windows_withheld += 1
        self.stats.estimates_published += len(outs)
        if self.metrics is not None and outs:
            self.metrics.events_out("frequencies", len(outs))
        return outs

    def _account(self, res: PrivatizeResult, t0: float) -> None:
        self.stats.add(res)
        if res.over_budget and self.metrics is not None:
            self.metrics.ldp_over_budget(res.over_budget)
        if res.reported or res.epsilon_spent:
            self._unreleased.append(res)
        if self.on_batch is not None:
            self.on_batch(self.stats, res, time.perf_counter() - t0)

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

    def _examples(self, *, final: str | None = None) -> Result | None:
        """Label the examples of the sessions that ended. ``final`` (a stop or a rebalance): the
        sessions still open are dropped unlabelled (counted with that reason). An example is
        derived data whose source offsets were committed long ago: it carries no offsets."""
        labeler = self.labeler
        if labeler is None:
            return None
        self._drop_erased()
        items = self._released
        items.extend(labeler.release())
        if final is not None:
            labeler.discard(final)
        outs: list[Out] = []
        if items:
            try:
                res = self.privatizer.label_examples(items)
            except KeyUnavailableError:
                if final is None:
                    raise  # held: the engine backs off and ticks again
                if self.metrics is not None:
                    self.metrics.redis_error()
                self.stats.examples_dropped[final] += len(items)
                items.clear()
            else:
                items.clear()
                # examples leave through the release buffer too: shuffled among enough people
                lid = self.privatizer.ledger_id
                self.release.add(res.examples, [hash(lid(st.subject, st.epoch)) for st in res.stubs])
                if res.examples:
                    self._unreleased.append(PrivatizeResult(reported=Counter({LABEL_NAME: len(res.examples)}),
                                                            epsilon_spent={LABEL_NAME: res.epsilon_spent}))
                self.stats.examples += len(res.examples)
                self.stats.examples_suppressed += res.suppressed
                self.stats.skipped.update({f"example_{k}": v for k, v in res.skipped.items()})
                if res.epsilon_spent:
                    self.stats.epsilon_spent.update({LABEL_NAME: res.epsilon_spent})
        self.stats.examples_pending = labeler.pending
        self.stats.examples_dropped.update(labeler.dropped)
        labeler.dropped.clear()
        return Result(outs) if outs else None


PARTIAL_SCHEMA = "window-partial.v1"


def read_partials(bootstrap: str, topic: str, keys: set[str]) -> dict[str, dict[str, Any]]:
    """The latest partial-window record of each of ``keys`` (reads the compacted topic to its end;
    raises :class:`~stream.errors.TopicReadError` if the end is not reached)."""
    if not keys:
        return {}
    found: dict[str, dict[str, Any]] = {}
    try:
        reader = TopicReader(bootstrap, topic, batch=1000)
    except TopicMissingError:
        return {}  # no partials topic yet: nothing to restore
    with reader:
        for m in reader:
            key = (m.key() or b"").decode("utf-8", "replace")
            value = m.value()
            if key in keys and value:
                with contextlib.suppress(orjson.JSONDecodeError):
                    doc = orjson.loads(value)
                    if isinstance(doc, dict) and doc.get("schema") == PARTIAL_SCHEMA:
                        found[key] = doc
    return found


def create_app(settings: Settings) -> faust.App:
    """The privatizer's Faust app. ``streamgate privatizer`` runs it as a worker (hosted like every
    worker: :mod:`stream.apps.hosting`); its memo cache listens on the shredder's channel."""

    def build(metrics: WorkerMetrics) -> PrivatizerEngine:
        privatizer = build_privatizer(settings)
        engine = PrivatizerEngine(settings, privatizer, metrics=metrics)
        engine.listener = start_memo_invalidation(settings, privatizer, on_erasure=engine.forget_subject)
        return engine

    return worker_app(settings, "privatizer", build, lambda engine: engine.stats.as_dict())
