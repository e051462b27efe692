"""Federated learning on the engine: N learners in one group, one aggregator that fails over with it.

``STREAMGATE_LEARN_FEDERATED=true`` makes ``streamgate learner`` a :class:`FederatedLearnerEngine`
(design and the averaging rule: :mod:`stream.learn.federated`; docs/learning.md, "Federated
learning"). Each instance runs three Kafka consumers:

* the **learner** (the learner group on ``features.private``): learns its partitions and, every
  ``learn_update_every`` examples or ``learn_update_interval_seconds``, publishes a signed
  :class:`~stream.learn.federated.ModelUpdate` to ``models.updates`` (key = model name). The update
  is the learner's checkpoint: offsets are committed once a delivered update covers them (the
  engine's defer/checkpoint), so a learner that dies loses only its unpublished steps, and their
  records are read again by the partitions' next owner;
* the **aggregator** (:class:`AggregatorEngine`, its own group ``<learner group>-aggregator`` on
  ``models.updates``): the member that holds the partition the model's key maps to (one partition
  by default) verifies every update (unverifiable ones are counted and logged, never merged),
  merges each round with FedAvg and publishes the next global version, signed as every snapshot, to
  ``models.snapshots``. Its offsets are committed once a delivered global version covers them, and
  the version records the update offsets it covers (``federation.next_offsets``): whoever holds the
  partition next resumes from the newest global version and skips what that version already
  merged, so a failover neither loses nor repeats an update;
* a **feed** (:class:`SnapshotFeed`, no group) on ``models.snapshots``: the learner adopts every
  newer global version, keeping its local steps since its last update.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
import uuid
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ClassVar

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from stream.apps.learner import (
    LearnerEngine,
    LearnerStats,
    _rfc3339,
    fresh_model,
    read_snapshot_records,
)
from stream.config import Settings
from stream.crypto.keyring import Keyring
from stream.engine import EngineFatalError, Out, Record, Result, StreamEngine
from stream.engine.produce import RateLimitedLog
from stream.errors import ModelUpdateError, SnapshotError
from stream.learn.federated import ModelUpdate, Parameters, Round, adopt, fedavg, max_epsilon, merge_metrics
from stream.learn.joint import JointNaiveBayes
from stream.learn.model import PropensityModel
from stream.learn.snapshot import EPSILON_NOTE, ModelSnapshot
from stream.ops.metrics import WorkerMetrics

__all__ = ["AggregatorEngine", "AggregatorStats", "FederatedLearnerEngine", "FederatedStats", "SnapshotFeed",
           "aggregator_group", "highest_version", "instance_name", "newest_verified"]

log = logging.getLogger("streamgate.learner")

#: Senders whose last merged update seq a global version carries (the most recent ones: a restarted
#: learner is a new sender, so the oldest entries are of processes long gone)
MAX_SENDERS = 1024


def aggregator_group(settings: Settings) -> str:
    """The aggregators' consumer group (on ``models.updates``): derived from the learner group."""
    return f"{settings.learner_consumer_group}-aggregator"


def instance_name() -> str:
    """A learner instance's name in its updates and global versions: host, pid and a random tag."""
    return f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:6]}"


def _verified(data: bytes, key: Ed25519PublicKey, name: str) -> ModelSnapshot | None:
    """``data`` as a snapshot of ``name`` when it verifies under ``key`` (never unpickled otherwise)."""
    try:
        snap = ModelSnapshot.from_bytes(data, key)
    except SnapshotError:
        return None
    return snap if snap.name == name else None


def newest_verified(candidates: list[bytes], key: Ed25519PublicKey, name: str) -> tuple[ModelSnapshot | None, int]:
    """The newest of ``candidates`` (oldest first) that verifies and names ``name``, and how many newer
    ones were ignored (never unpickled when they do not verify)."""
    ignored = 0
    for data in reversed(candidates):
        snap = _verified(data, key, name)
        if snap is not None:
            return snap, ignored
        ignored += 1
    return None, ignored


def highest_version(candidates: list[bytes], key: Ed25519PublicKey, name: str) -> tuple[ModelSnapshot | None, int]:
    """The verified snapshot of ``name`` with the highest global version among ``candidates`` (the
    newest of equals; a single learner's snapshots are version 0), and how many did not verify."""
    best: ModelSnapshot | None = None
    ignored = 0
    for data in candidates:
        snap = _verified(data, key, name)
        if snap is None:
            ignored += 1
        elif best is None or snap.version >= best.version:
            best = snap
    return best, ignored


class SnapshotFeed:
    """New global versions of one model on ``models.snapshots``: a consumer assigned every partition
    from the beginning (no group join, nothing committed), polled without blocking. Only versions
    newer than the caller's are verified and returned; the rest is skipped by its public header."""

    def __init__(self, bootstrap: str, topic: str, name: str, key: Ed25519PublicKey) -> None:
        from stream.kafka import TopicReader

        self.topic, self.name, self.key = topic, name.encode(), key
        self.ignored = 0  # newer versions that did not verify
        self._reader = TopicReader(bootstrap, topic, mode="tail", missing="wait", batch=200,
                                   client_id="streamgate-snapshot-reader", config={"fetch.wait.max.ms": 100})

    def newest(self, after: int) -> ModelSnapshot | None:
        """The newest verified global version above ``after`` among the records arrived since the last call."""
        found: list[tuple[int, bytes]] = []
        while True:
            msgs = self._reader.poll(0)
            if not msgs:
                break
            for m in msgs:
                value = m.value()
                if m.key() != self.name or not value:
                    continue
                try:
                    version = ModelSnapshot.read_header(value).get("federation", {}).get("version")
                except (SnapshotError, AttributeError):
                    continue
                if isinstance(version, int) and not isinstance(version, bool) and version > after:
                    found.append((version, value))
        for _version, value in sorted(found, key=lambda vv: vv[0], reverse=True):
            try:
                snap = ModelSnapshot.from_bytes(value, self.key)
            except SnapshotError:
                self.ignored += 1
                log.warning("global model version ignored: it does not verify with this keyring")
                continue
            if snap.name == self.name.decode() and snap.version > after:
                return snap
        return None

    def close(self) -> None:
        self._reader.close()


# --------------------------------------------------------------------------- the aggregator
@dataclass
class AggregatorStats:
    received: int = 0  # records read from models.updates
    merged_updates: int = 0  # updates merged into a delivered global version
    merged_examples: int = 0
    unverified: int = 0  # updates refused (signature, format): never merged
    other_model: int = 0  # updates of another model name
    already_merged: int = 0  # re-read after a failover, covered by the newest global version: skipped
    repeated: int = 0  # a sender's update seen again at another offset (a re-send, a replay): not merged again
    other_kind: int = 0  # updates of another model class under this name (a misconfigured learner): not merged
    stale: int = 0  # merged updates based on an older global version than the one they went into
    published: int = 0  # global versions delivered
    takeovers: int = 0  # times this instance became the aggregator (state loaded from the newest version)

    def as_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


class AggregatorEngine(StreamEngine):
    """Merges the updates of ``models.updates`` into global versions on ``models.snapshots`` (module
    docstring). Any member of the aggregator group may hold the partition: the one that does aggregates."""

    name: ClassVar[str] = "aggregator"
    tick_interval = 0.2
    needs_partitions: ClassVar[bool] = False  # the members that do not aggregate are standbys, not ill

    def __init__(self, settings: Settings, *, key: Ed25519PrivateKey, instance: str, bootstrap: str | None = None,
                 clock: Callable[[], float] = time.time, consumer_overrides: dict[str, Any] | None = None) -> None:
        super().__init__(settings, bootstrap=bootstrap, clock=clock, consumer_overrides=consumer_overrides)
        self.key = key
        self.instance = instance
        self.model_name = settings.learn_model_name
        self.stats = AggregatorStats()
        s = settings
        self.round = Round(wait_seconds=s.learn_aggregate_wait_seconds,
                           active_seconds=2 * s.learn_update_interval_seconds + s.learn_aggregate_wait_seconds)
        self.loaded = False
        self.version = 0
        self.examples_seen = 0
        self.params = Parameters({})
        self.model: PropensityModel | JointNaiveBayes | None = None
        self.frontier: dict[int, int] = {}  # updates partition -> next offset not yet merged or skipped
        #: sender -> the highest seq merged (or in the open round), most recent last: each update once
        self.seqs: OrderedDict[str, int] = OrderedDict()
        self.epsilon: dict[str, Any] = {}
        self._sender_metrics: dict[str, dict[str, float]] = {}
        self._rlog_agg = RateLimitedLog(self.log)

    @property
    def aggregating(self) -> bool:
        return bool(self.assigned)

    def as_dict(self) -> dict[str, Any]:
        return {"aggregating": self.aggregating, "version": self.version, "pending": len(self.round.pending),
                **self.stats.as_dict()}

    # -- hooks ---------------------------------------------------------------------------
    def topics(self) -> list[str]:
        return [self.settings.topics.updates]

    def output_topics(self) -> list[str]:
        return [self.settings.topics.snapshots]

    def group(self) -> str:
        return aggregator_group(self.settings)

    def client_id(self) -> str:
        return "streamgate-aggregator"

    def assigned_partitions(self, partitions: list[tuple[str, int]]) -> None:
        if not self.loaded:
            self._load()

    def revoked(self, partitions: list[tuple[str, int]]) -> Result | None:
        result = self._publish()  # hand over: merge what is pending before the partition goes
        self._drop_state()
        return result

    def lost(self, partitions: list[tuple[str, int]]) -> None:
        self._drop_state()

    def reset(self) -> None:
        self._drop_state()

    def finish(self) -> Result | None:
        return self._publish()

    def tick(self) -> Result | None:
        if self.round.due(time.monotonic()):
            return self._publish()
        return None

    def process(self, records: list[Record]) -> Result:
        if not self.loaded:
            self._load()
        st = self.stats
        want = self.model_name.encode()
        now = time.monotonic()
        for r in records:
            st.received += 1
            if r.offset < self.frontier.get(r.partition, 0):
                st.already_merged += 1
                continue
            self.frontier[r.partition] = r.offset + 1
            if r.key != want:
                st.other_model += 1
                continue
            try:
                update = ModelUpdate.from_bytes(r.value or b"", self.key.public_key())
            except ModelUpdateError as exc:
                st.unverified += 1
                self._rlog_agg(logging.WARNING, "unverified", "model update refused: not merged",
                               error=str(exc), partition=r.partition, offset=r.offset, count=st.unverified)
                continue
            if update.model != self.model_name:
                st.other_model += 1
                continue
            if update.kind and self.model is not None and update.kind != type(self.model).__name__:
                st.other_kind += 1  # another model class under this name: its parameters mean something else
                self._rlog_agg(logging.WARNING, "kind", "model update of another model kind: not merged",
                               kind=update.kind, model=self.model_name, count=st.other_kind)
                continue
            if update.seq <= self.seqs.get(update.sender, 0):
                st.repeated += 1
                self._rlog_agg(logging.WARNING, "repeated", "model update seen before (its sender and seq): not merged "
                               "again", partition=r.partition, offset=r.offset, count=st.repeated)
                continue
            self.seqs[update.sender] = update.seq
            self.seqs.move_to_end(update.sender)
            while len(self.seqs) > MAX_SENDERS:
                self.seqs.popitem(last=False)
            self.round.add(update, now)
        result = Result(defer=bool(self.round.pending))
        if self.round.due(now):
            merged = self._publish()
            if merged is not None:
                result.outputs, result.checkpoint, result.on_delivered = merged.outputs, True, merged.on_delivered
        return result

    # -- state ---------------------------------------------------------------------------
    def _drop_state(self) -> None:
        self.loaded = False
        self.round.clear()

    def _load(self) -> None:
        """Take over: the highest verified global version (else a fresh model), and the update offsets it covers."""
        s = self.settings
        candidates = read_snapshot_records(self.bootstrap, s.topics.snapshots, self.model_name)
        snap, ignored = highest_version(candidates, self.key.public_key(), self.model_name)
        if ignored:
            log.warning("aggregator: snapshots ignored (they do not verify)", extra={"count": ignored})
        self.round.clear()
        self._sender_metrics.clear()
        self.frontier = {}
        self.seqs = OrderedDict()
        if snap is None:
            self.model, self.version, self.examples_seen, self.epsilon = fresh_model(s), 0, 0, {}
        else:
            self.model, self.version, self.examples_seen = snap.model, snap.version, snap.examples_seen
            self.epsilon = dict(snap.epsilon)
            fed = snap.federation or {}
            offsets = fed.get("next_offsets") if fed.get("updates_topic") == s.topics.updates else None
            if isinstance(offsets, dict):
                self.frontier = {int(p): int(o) for p, o in offsets.items()
                                 if str(p).isdigit() and isinstance(o, int) and not isinstance(o, bool)}
            seqs = fed.get("seqs")
            if isinstance(seqs, dict):
                self.seqs = OrderedDict((str(k), int(v)) for k, v in seqs.items()
                                        if isinstance(v, int) and not isinstance(v, bool))
        self.params = Parameters(*self.model.parameters())
        self.loaded = True
        self.stats.takeovers += 1
        log.info("aggregator: took over", extra={"model": self.model_name, "n": self.examples_seen,
                                                 "version": self.version, "instance": self.instance})

    def _publish(self) -> Result | None:
        """Merge the open round into the next global version (signed), once delivered it frees the offsets."""
        if not self.loaded or not self.round.pending or self.model is None:
            return None
        updates = self.round.take()
        params, n = fedavg(self.params, updates, additive=bool(getattr(self.model, "additive", False)))
        stale = sum(1 for u in updates if u.base_version < self.version)
        self.version += 1
        self.params = params
        self.examples_seen += n
        model = self.model
        model.set_parameters(params.weights, params.intercept)
        model.examples_seen = self.examples_seen
        for u in updates:
            self._sender_metrics[u.sender] = u.metrics
        label, feats = max_epsilon([self.epsilon, *(u.epsilon for u in updates)])
        self.epsilon = {"label": label, "features": dict(sorted(feats.items())),
                        "budget_per_person_epoch": self.settings.ldp_person_epsilon,
                        "note": EPSILON_NOTE + "; budget_per_person_epoch is the ledger cap the privatizer enforces"}
        metrics = merge_metrics(self._sender_metrics)
        metrics["n"] = float(self.examples_seen)
        senders = sorted({u.sender for u in updates})
        federation = {
            "version": self.version, "aggregator": self.instance, "updates_topic": self.settings.topics.updates,
            "next_offsets": {str(p): o for p, o in sorted(self.frontier.items())},
            "merged_updates": len(updates), "merged_examples": n, "senders": senders, "stale_updates": stale,
            "seqs": dict(self.seqs),  # (in merge order: the next aggregator keeps the most recent senders)
        }
        snap = ModelSnapshot(name=self.model_name, created_at=_rfc3339(self.clock()), examples_seen=self.examples_seen,
                             metrics=metrics, epsilon=self.epsilon, model=model, federation=federation)
        value = snap.to_bytes(self.key)
        version, count = self.version, len(updates)

        def delivered() -> None:
            st = self.stats
            st.published += 1
            st.merged_updates += count
            st.merged_examples += n
            st.stale += stale
            log.info("global model published", extra={"model": self.model_name, "version": version, "n": n,
                                                      "count": count})

        return Result([Out(self.settings.topics.snapshots, value, self.model_name.encode())], checkpoint=True,
                      on_delivered=delivered)


# --------------------------------------------------------------------------- the learner
@dataclass
class FederatedStats(LearnerStats):
    updates: int = 0  # local updates delivered
    update_examples: int = 0  # examples those updates cover
    adopted: int = 0  # global versions adopted
    global_version: int = 0  # the version adopted last (or resumed from)

    def as_dict(self) -> dict[str, Any]:
        d = super().as_dict()
        d.update({"updates": self.updates, "update_examples": self.update_examples, "adopted": self.adopted,
                  "global_version": self.global_version})
        return d


class FederatedLearnerEngine(LearnerEngine):
    """A learner instance of a federation (module docstring): learns, publishes local updates, adopts
    global versions, and runs an :class:`AggregatorEngine` in a second thread (``aggregate=False``: none)."""

    stats: FederatedStats

    def __init__(self, settings: Settings, *, bootstrap: str | None = None, keyring: Keyring | None = None,
                 metrics: WorkerMetrics | None = None, clock: Callable[[], float] = time.time,
                 consumer_overrides: dict[str, Any] | None = None, aggregate: bool = True) -> None:
        super().__init__(settings, bootstrap=bootstrap, keyring=keyring, metrics=metrics, clock=clock,
                         consumer_overrides=consumer_overrides)
        self.instance = instance_name()
        self.worker = f"learner-{self.instance}"
        self.stats = FederatedStats()
        self.version = 0
        self.anchor = Parameters({})
        self._seq = 0
        self._feed: SnapshotFeed | None = None
        self.aggregator = (AggregatorEngine(settings, key=self.key, instance=self.instance, bootstrap=self.bootstrap,
                                            clock=clock) if aggregate else None)
        self._agg_stop = threading.Event()
        self._agg_thread: threading.Thread | None = None
        self._agg_error: BaseException | None = None

    def as_dict(self) -> dict[str, Any]:
        d = super().as_dict()
        d.update({"instance": self.instance, "global_version": self.version})
        if self.aggregator is not None:
            d["aggregator"] = self.aggregator.as_dict()
        return d

    # -- lifecycle ---------------------------------------------------------------------------
    def stopped(self) -> None:
        super().stopped()
        alive = self._stop_aggregator()
        if self._feed is not None:
            self._feed.close()
            self._feed = None
        if self.fatal_error is None and (self._agg_error is not None or alive):
            # the aggregator failed (or hung) while the learner was stopping: the worker must not exit 0
            why = f"its aggregator stopped: {self._agg_error}" if self._agg_error is not None else \
                "its aggregator did not stop within 60 s"
            self.fatal_error = f"learner: {why}"
            raise EngineFatalError(self.fatal_error)

    def start(self) -> None:
        super().start()
        self._anchor_to_resumed()
        self._feed = SnapshotFeed(self.bootstrap, self.settings.topics.snapshots, self.model_name, self.key.public_key())
        if self.aggregator is not None and self._agg_thread is None:
            self._agg_thread = threading.Thread(target=self._run_aggregator, name=f"aggregator-{self.instance}",
                                                daemon=True)
            self._agg_thread.start()

    def _run_aggregator(self) -> None:
        assert self.aggregator is not None
        try:
            self.aggregator.run(self._agg_stop)
        except BaseException as exc:  # the learner stops too (tick): the worker exits non-zero
            self._agg_error = exc
            log.error("aggregator stopped", extra={"error": f"{type(exc).__name__}: {exc}"})

    def _stop_aggregator(self) -> bool:
        """Stop the aggregator thread; True if it is still running after a minute."""
        self._agg_stop.set()
        alive = False
        if self._agg_thread is not None:
            self._agg_thread.join(60)
            alive = self._agg_thread.is_alive()
            self._agg_thread = None
        return alive

    def _anchor_to_resumed(self) -> None:
        assert self.model is not None
        self.anchor = Parameters(*self.model.parameters())
        self.version = self.resumed.version if self.resumed is not None else 0
        self.stats.global_version = self.version

    def reset(self) -> None:
        """Clients recreated: back to the newest global version; the unpublished steps are read again."""
        super().reset()
        self._anchor_to_resumed()

    # -- checkpoints: local updates ----------------------------------------------------------
    def output_topics(self) -> list[str]:
        return [self.settings.topics.updates, self.settings.topics.snapshots, self.settings.topics.audit]

    def cover_every(self) -> int:
        return self.settings.learn_update_every

    def cover_interval(self) -> float:
        return self.settings.learn_update_interval_seconds

    def cover(self) -> Result | None:
        """A signed local update of everything learned since the anchor; once delivered it frees the offsets."""
        if self.model is None or self._uncovered <= 0:
            return None
        current = Parameters(*self.model.parameters())
        full = current.minus(self.anchor)
        delta = Parameters({k: v for k, v in full.weights.items() if v != 0.0}, full.intercept)
        self._seq += 1
        eps = self.epsilon_info()
        update = ModelUpdate(model=self.model_name, sender=self.instance, seq=self._seq, base_version=self.version,
                             examples=self._uncovered, delta=delta, created_at=_rfc3339(self.clock()),
                             epsilon={"label": eps["label"], "features": eps["features"]},
                             metrics=self.current_metrics(), kind=type(self.model).__name__)
        value = update.to_bytes(self.key)
        n, seq = self._uncovered, self._seq
        self.anchor = current
        self._uncovered = 0
        self._covered_at = time.monotonic()

        def delivered() -> None:
            self.stats.updates += 1
            self.stats.update_examples += n
            self.stats.commits += 1
            log.debug("model update published", extra={"model": self.model_name, "n": n, "count": seq})

        return Result([Out(self.settings.topics.updates, value, self.model_name.encode())], checkpoint=True,
                      on_delivered=delivered)

    # -- adopting global versions --------------------------------------------------------------
    def tick(self) -> Result | None:
        if self._agg_error is not None:
            raise EngineFatalError(f"learner: its aggregator stopped: {self._agg_error}")
        self.poll_global()
        return super().tick()

    def poll_global(self) -> bool:
        """Adopt the newest global version above ours, if one arrived. True if one was adopted."""
        if self._feed is None or self.model is None:
            return False
        snap = self._feed.newest(self.version)
        if snap is None:
            return False
        self.adopt(snap)
        return True

    def adopt(self, snap: ModelSnapshot) -> None:
        """Take the global version's parameters, keeping the local steps not yet published."""
        assert self.model is not None
        if type(snap.model) is not type(self.model):  # another model kind under this name: not ours to take
            raise EngineFatalError(
                f"learner: global version {snap.version} of {self.model_name!r} holds a {type(snap.model).__name__}, "
                f"this learner a {type(self.model).__name__} (STREAMGATE_LEARN_MODEL differs between the learners)")
        glob = Parameters(*snap.model.parameters())
        new = adopt(glob, Parameters(*self.model.parameters()), self.anchor)
        self.model.set_parameters(new.weights, new.intercept)
        self.model.examples_seen = snap.examples_seen + self._uncovered
        self.anchor = glob
        self.version = snap.version
        self._merge_epsilon(snap.epsilon)
        st = self.stats
        st.adopted += 1
        st.global_version = snap.version
        if self.metrics is not None:
            self.metrics.set_model_metric(self.model_name, "global_version", float(snap.version))
            self.metrics.set_model_metric(self.model_name, "examples_seen", float(self.examples_seen))

