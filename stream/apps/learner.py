"""The learner worker: ``features.private`` -> ``models.snapshots`` (+ drift records on ``ops.audit``).

Like every streamgate worker the Kafka loop is a confluent-kafka batch engine hosted in a
Faust worker (:mod:`stream.apps.hosting`: lifecycle, signals, ``/healthz``, ``/readyz``,
``/metrics``, ``ops.metrics``). Port: ``web_port(settings, "learner")`` (6069, :mod:`stream.apps.registry`).

What it does
------------
* Consumes ``settings.topics.features`` with the consumer group
  ``settings.learner_consumer_group`` (a new group starts from the beginning of the topic).
  Only the examples of its model are learned from: ``private-example.v2`` joint reports
  (:class:`stream.learn.joint.JointReport`) for the default ``learn_model = joint-nb``,
  ``private-example.v1`` records (:meth:`stream.learn.example.PrivateExample.from_json`) for
  ``logistic`` - local-DP reports only, never a clear value; ``private-feature.v1`` reports and
  the other model's examples are counted as skipped (``stats.skipped``); anything else is counted by reason
  (``stats.invalid``: ``not_json``, ``not_object``, ``unknown_schema``, ``invalid_example``)
  and skipped. A record's content is never logged.
* **Progressive validation**: the model predicts (``predict_proba_one``) every example of a
  consumed batch before it learns any of them (``learn_one``): a session's examples arrive
  together with one label, so predicting each right after learning the previous one would
  leak that label into the metric (a joint-nb model scores only GRR reports, from the one value
  each shows: a proxy). The prediction is scored against the
  example's *private* (randomized-response) label - the only label the worker ever sees - with
  :class:`stream.learn.evaluate.ProgressiveValidation` (ROC AUC, log loss), and the
  per-example log loss feeds a :class:`stream.learn.evaluate.DriftMonitor` (ADWIN). Under
  label noise these figures are those of the noisy label (the AUC against the noisy label is
  a monotone shrink of the clean one toward 0.5; the benchmarks measure against clean labels).
  The progressive metrics cover the examples seen since this worker process started (``n``
  says how many); ``examples_seen`` is the model's lifetime count.
* **Drift**: when the monitor fires, one ``ops.audit`` record of kind ``drift``
  (``schemas/audit-receipt.v1.json``): model name, metric, ``examples_seen``,
  ``detected_at`` and the detector's parameters - no data values. Signed like a receipt
  (:func:`stream.retention.receipts.sign_receipt`) but with the learner's snapshot key, so it
  verifies with the snapshot public key and never as a shredder receipt.
* **Snapshots** (:class:`stream.learn.snapshot.ModelSnapshot`, Ed25519-signed with the
  learner's snapshot key - the learner credential, or derived from the master keyring) go to
  ``settings.topics.snapshots`` (compacted, key = model name) every
  ``learn_snapshot_every`` examples, at least every ``learn_snapshot_interval_seconds`` while
  the model learns, before partitions are revoked and at shutdown. A snapshot carries the
  metrics, ``examples_seen`` and the epsilon of the reports the model learned from: the
  label's epsilon, per attribute the feature epsilon seen, and the per-person,
  per-epoch ledger cap (``ldp_person_epsilon``). Training is
  post-processing of local-DP reports, so the model adds no privacy cost of its own.
* **Resume**: at start the worker reads ``models.snapshots`` from the beginning and keeps
  the newest snapshot of its model name whose signature verifies (unverifiable ones are
  ignored with a warning, never unpickled); without one it starts a fresh
  :class:`stream.learn.model.PropensityModel` (``learn_correction``, ``learn_debias``,
  domains and bounds from the schema's LDP policy).

Offsets: at-least-once learning
-------------------------------
The model lives in memory; what is durable is the last delivered snapshot. So a consumed
offset is committed **only once a delivered snapshot covers it** (the snapshot is produced
and flushed, its delivery report checked, then the offsets it covers are committed). After a
crash the worker resumes from the last snapshot and re-reads from the offsets that snapshot
covered: it re-learns at most the examples seen since the last snapshot, and no example is
ever lost. Duplicates are possible in one narrow window (snapshot delivered, commit lost):
those examples are learned twice - harmless for an SGD model. Records that teach nothing
(skipped, invalid) are committed without a snapshot when no learned example is pending.
Drift records are produced as they happen and flushed with the next snapshot; an offset is
committed only after the drift records before it were delivered too (undelivered ones are
re-sent).

One instance per model name: the model is a single in-memory object; a second instance in
the same consumer group would learn a share of the partitions and overwrite the first one's
snapshots. For N instances, run them federated (``STREAMGATE_LEARN_FEDERATED``,
:mod:`stream.apps.federated`): each publishes local updates and one of them merges them into the
global model. Measured: about 7,000 examples/s on one core (parse, predict, progressive validation,
learn, drift; most of it in the model's pipeline); a learner that falls behind shows as consumer
lag (``streamgate_consumer_lag{worker="learner"}``), nothing is dropped.
"""

from __future__ import annotations

import hashlib
import logging
import math
import socket
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, ClassVar

import orjson
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from stream.config import Settings
from stream.crypto.keyring import Keyring
from stream.crypto.signing import signing_key, verify_key
from stream.engine import Out, Record, Result, StreamEngine
from stream.errors import (
    BrokerUnreachableError,
    ConfigError,
    InvalidExampleError,
    SnapshotError,
    StreamgateError,
    TopicMissingError,
)
from stream.kafka import TopicReader
from stream.ldp.policy import LdpPolicy
from stream.learn.evaluate import DriftMonitor, ProgressiveValidation, log_loss
from stream.learn.example import EXAMPLE_SCHEMA, FEATURE_SCHEMA, PrivateExample
from stream.learn.joint import JOINT_SCHEMA, JointNaiveBayes, JointReport
from stream.learn.model import PropensityModel
from stream.learn.snapshot import EPSILON_NOTE, SIGNING_PURPOSE, ModelSnapshot
from stream.ops.metrics import WorkerMetrics
from stream.retention.receipts import sign_receipt
from stream.schema import load_schema

Model = PropensityModel | JointNaiveBayes

__all__ = [
    "DRIFT_METRIC",
    "SNAPSHOT_KEY_PURPOSE",
    "LearnerEngine",
    "LearnerStats",
    "drift_record",
    "fresh_model",
    "latest_snapshot_bytes",
    "load_latest_snapshot",
    "read_snapshot_records",
    "snapshot_key",
    "snapshot_verify_key",
]

log = logging.getLogger("streamgate.learner")

#: Signer name of the snapshot key (:func:`stream.crypto.signing.signing_key`).
SNAPSHOT_KEY_PURPOSE = SIGNING_PURPOSE
#: The progressive metric the drift detector watches.
DRIFT_METRIC = "log_loss"
#: How many of the newest snapshots of a name are kept as fallbacks when the newest does not verify.
_RESUME_CANDIDATES = 16


def snapshot_key(settings: Settings, keyring: Keyring | None = None) -> Ed25519PrivateKey:
    """The learner's Ed25519 key that signs model snapshots (the learner credential, or the master keyring)."""
    return signing_key(keyring or Keyring.from_settings(settings), SNAPSHOT_KEY_PURPOSE)


def snapshot_verify_key(settings: Settings, keyring: Keyring | None = None) -> Ed25519PublicKey:
    """The public key that verifies model snapshots: all a loader holds (the verifier credential suffices)."""
    return verify_key(keyring or Keyring.from_settings(settings), SNAPSHOT_KEY_PURPOSE)


def fresh_model(settings: Settings, policy: LdpPolicy | None = None) -> Model:
    """A new, untrained model configured from ``settings`` (``learn_model``: joint naive Bayes, or the
    logistic regression with its label-noise correction and feature debiasing) and the schema's LDP
    policy (domains, bounds: to name weights and serve on clear values)."""
    policy = policy or LdpPolicy.from_schema(load_schema(settings.schema_name), settings.ldp_epsilon)
    if settings.learn_model == "joint-nb":
        return JointNaiveBayes.for_policy(policy, name=settings.learn_model_name)
    return PropensityModel.for_policy(policy, name=settings.learn_model_name, correction=settings.learn_correction,
                                      debias=settings.learn_debias)


def _rfc3339(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


# --------------------------------------------------------------------------- reading snapshots
def read_snapshot_records(bootstrap: str, topic: str, name: str, *, keep: int = _RESUME_CANDIDATES,
                          timeout: float = 30.0) -> list[bytes]:
    """The values of the newest ``keep`` records keyed ``name`` on ``topic`` (oldest first), read
    from the beginning of every partition to its end (:class:`~stream.kafka.TopicReader`). A
    tombstone (null value) forgets what came before it. An absent topic reads as empty. Raises
    :class:`~stream.errors.TopicReadError` (a :class:`StreamgateError`) if the read makes no
    progress towards the end for ``timeout`` seconds."""
    try:
        reader = TopicReader(bootstrap, topic, stall_timeout=timeout, client_id="streamgate-snapshot-reader")
    except TopicMissingError:
        return []
    except BrokerUnreachableError as exc:
        raise StreamgateError(f"cannot read {topic!r} at {bootstrap}: {exc}") from None
    want = name.encode()
    found: list[bytes] = []
    with reader:
        for m in reader:
            if m.key() != want:
                continue
            value = m.value()
            if value is None:
                found.clear()
            else:
                found.append(value)
                del found[:-keep]
    return found


def latest_snapshot_bytes(settings: Settings, name: str | None = None) -> bytes | None:
    """The newest snapshot record of ``name`` (default: ``settings.learn_model_name``), unverified."""
    found = read_snapshot_records(settings.kafka_bootstrap_or_dev(), settings.topics.snapshots,
                                  name or settings.learn_model_name, keep=1)
    return found[-1] if found else None


def load_latest_snapshot(settings: Settings, name: str | None = None, *,
                         keyring: Keyring | None = None) -> ModelSnapshot:
    """The newest snapshot of model ``name`` (default: ``settings.learn_model_name``), verified with
    the snapshot public key of the configured credential - what a consumer that serves the model calls::

        snap = load_latest_snapshot(Settings())
        p = snap.model.predict_proba_one(PrivateExample.from_json(record))      # a private report
        p = snap.model.predict_proba_event({"event_type": "checkout", ...}, 42)  # clear LDP values

    Raises :class:`SnapshotError` when there is no snapshot of that name yet or the newest one
    fails verification (it is never unpickled then), :class:`~stream.errors.KeyringError` when
    no master key is configured."""
    name = name or settings.learn_model_name
    key = snapshot_verify_key(settings, keyring)
    data = latest_snapshot_bytes(settings, name)
    if data is None:
        raise SnapshotError(f"no snapshot of model {name!r} on {settings.topics.snapshots} yet "
                            "(is `streamgate learner` running, and has it learned any example?)")
    return ModelSnapshot.from_bytes(data, key)


# --------------------------------------------------------------------------- audit records
def drift_record(model: str, examples_seen: int, detector: dict[str, Any], *, at: float, worker: str,
                 metric: str = DRIFT_METRIC, detections: int | None = None) -> dict[str, Any]:
    """An ``audit-receipt.v1`` record of kind ``drift``. ``receipt_id`` is sha256 hex of
    ``audit-receipt.v1|drift|drift|<model>|<metric>|<examples_seen>`` (a re-learned stretch that
    drifts at the same point gives the same id; consumers dedupe by it)."""
    rid = hashlib.sha256(f"audit-receipt.v1|drift|drift|{model}|{metric}|{examples_seen}".encode()).hexdigest()
    rec: dict[str, Any] = {
        "schema": "audit-receipt.v1", "receipt_id": rid, "kind": "drift", "reason": "drift",
        "subject": None, "epoch": None, "key_id": None, "request_id": None,
        "at": _rfc3339(at), "worker": worker,
        "model": model, "metric": metric, "examples_seen": int(examples_seen), "detected_at": _rfc3339(at),
        "detector": detector,
    }
    if detections is not None:
        rec["detections"] = int(detections)
    return rec


def _detector_params(monitor: DriftMonitor) -> dict[str, Any]:
    """The drift detector's name and parameters."""
    return {"name": "ADWIN", "delta": monitor.delta, "max_loss": round(monitor.max_loss, 6)}


def _drift_statistics(monitor: DriftMonitor) -> dict[str, float]:
    """What the detection saw: ADWIN's window width after it and the mean (clipped) loss just
    before and after - model statistics, no data values."""
    last = monitor.last
    if last is None:
        return {}
    return {"width": float(last.width), "mean_loss_before": round(last.mean_before, 6),
            "mean_loss_after": round(last.mean_after, 6)}


# --------------------------------------------------------------------------- the engine
@dataclass
class LearnerStats:
    consumed: int = 0  # records read from the features topic
    learned: int = 0  # examples learned by this process
    skipped: Counter[str] = field(default_factory=Counter)  # reason -> records that carry no example
    invalid: Counter[str] = field(default_factory=Counter)  # reason -> malformed records (skipped)
    snapshots: int = 0  # snapshots delivered
    snapshot_failures: int = 0
    drifts: int = 0  # drift records produced
    commits: int = 0
    batches: int = 0
    resumed_from: int | None = None  # examples_seen of the snapshot resumed from
    ignored_snapshots: int = 0  # snapshots of our name that failed verification at start
    first_event_at: float | None = None  # time.monotonic() at the start of the first batch, the end of the last
    last_event_at: float | None = None

    def rate(self) -> float:
        """Records per second from the first to the last batch (benchmarks)."""
        if self.first_event_at is None or self.last_event_at is None or self.last_event_at <= self.first_event_at:
            return 0.0
        return self.consumed / (self.last_event_at - self.first_event_at)

    def as_dict(self) -> dict[str, Any]:
        return {
            "consumed": self.consumed, "learned": self.learned, "skipped": dict(self.skipped),
            "invalid": dict(self.invalid), "snapshots": self.snapshots, "snapshot_failures": self.snapshot_failures,
            "drifts": self.drifts, "commits": self.commits, "batches": self.batches,
            "resumed_from": self.resumed_from, "ignored_snapshots": self.ignored_snapshots,
        }


class LearnerEngine(StreamEngine):
    """The learner on the shared engine (module docstring). ``run(stop)`` until ``stop`` is set."""

    name: ClassVar[str] = "learner"
    tick_interval = 0.5
    needs_partitions: ClassVar[bool] = False  # a member with no partitions (more learners than partitions) is idle, not ill

    def __init__(
        self,
        settings: Settings,
        *,
        bootstrap: str | None = None,
        keyring: Keyring | None = None,
        metrics: WorkerMetrics | None = None,
        clock: Callable[[], float] = time.time,
        consumer_overrides: dict[str, Any] | None = None,
    ) -> None:
        super().__init__(settings, bootstrap=bootstrap, metrics=metrics, clock=clock,
                         consumer_overrides=consumer_overrides)
        self.model_name = settings.learn_model_name
        self.key = snapshot_key(settings, keyring)  # fails fast without a KEK
        self.policy = LdpPolicy.from_schema(load_schema(settings.schema_name), settings.ldp_epsilon)
        self.worker = f"learner-{socket.gethostname()}"
        self.stats = LearnerStats()
        self.model: Model | None = None
        self.evaluation = ProgressiveValidation()
        self.monitor = DriftMonitor()
        self.label_epsilon: float | None = None
        self.resumed: ModelSnapshot | None = None  # the snapshot the model was resumed from
        self.feature_epsilon: dict[str, float] = {}
        self._uncovered = 0  # examples learned that no delivered output covers yet (snapshot, or update)
        self._covered_at = time.monotonic()

    # -- state -------------------------------------------------------------------------
    @property
    def examples_seen(self) -> int:
        return self.model.examples_seen if self.model is not None else 0

    def as_dict(self) -> dict[str, Any]:
        d = self.stats.as_dict()
        d.update({"model": self.model_name, "examples_seen": self.examples_seen, "assigned": len(self.assigned),
                  "metrics": self.evaluation.as_dict()})
        return d

    def result(self) -> LearnerStats:
        return self.stats

    # -- hooks -------------------------------------------------------------------------
    def topics(self) -> list[str]:
        return [self.settings.topics.features]

    def output_topics(self) -> list[str]:
        return [self.settings.topics.snapshots, self.settings.topics.audit]

    def group(self) -> str:
        return self.settings.learner_consumer_group

    def batch_limit(self) -> int:
        """Consume no further than the next checkpoint boundary: snapshots cover exactly every
        ``learn_snapshot_every`` examples."""
        left = self.cover_every() - self._uncovered
        return max(1, min(self.settings.batch_max_events, left))

    def cover_every(self) -> int:
        """Examples between two checkpoints (what makes learned examples durable)."""
        return self.settings.learn_snapshot_every

    def cover_interval(self) -> float:
        """Most seconds between two checkpoints while the model learns."""
        return self.settings.learn_snapshot_interval_seconds

    def cover(self) -> Result | None:
        """The checkpoint: a snapshot (a federated learner publishes a local update instead)."""
        return self._snapshot()

    def start(self) -> None:
        self.model = self.resume()
        self._publish_model_metrics()
        self._covered_at = time.monotonic()
        log.info("learner ready", extra={"topic": self.settings.topics.features, "model": self.model_name,
                                         "n": self.examples_seen})

    def reset(self) -> None:
        """Clients recreated: the model goes back to the newest snapshot, the committed state."""
        self.model = self.resume()
        self._uncovered = 0

    def revoked(self, partitions: list[tuple[str, int]]) -> Result | None:
        return self.cover()  # the partitions go: cover what was learned from them first

    def finish(self) -> Result | None:
        return self.cover()

    def tick(self) -> Result | None:
        if self._uncovered > 0 and time.monotonic() - self._covered_at >= self.cover_interval():
            return self.cover()
        return None

    def process(self, records: list[Record]) -> Result:
        assert self.model is not None
        model, evaluation, monitor = self.model, self.evaluation, self.monitor
        stats = self.stats
        if stats.first_event_at is None:
            stats.first_event_at = time.monotonic()
        # Progressive validation per batch: every example of the batch is predicted before any of
        # it is learned. The examples of one session are released together with one label, so
        # learning one before predicting the next would leak that label (see stream.learn.model).
        parsed = [self._parse(r.value) for r in records]
        predictions = [None if ex is None else model.predict_proba_one(ex) for ex in parsed]  # type: ignore[arg-type]
        outs: list[Out] = []
        learned = 0
        for example, p in zip(parsed, predictions, strict=True):
            stats.consumed += 1
            if example is None:
                continue
            model.learn_one(example)  # type: ignore[arg-type]
            learned += 1
            self._note_epsilon(example)
            if p is None or example.label is None:  # an OUE joint report shows no label: learned, not scored
                continue
            y = bool(example.label)
            evaluation.update(y, p)
            if monitor.update(log_loss(y, p)):
                outs.append(self._drift())
        stats.learned += learned
        self._uncovered += learned
        stats.batches += 1
        stats.last_event_at = time.monotonic()
        if self.metrics is not None:  # (the engine observes the batch itself)
            self._publish_model_metrics()
        result = Result(outs, defer=learned > 0)
        if self._uncovered >= self.cover_every():
            snap = self.cover()
            if snap is not None:
                result.outputs.extend(snap.outputs)
                result.checkpoint, result.on_delivered = True, snap.on_delivered
        return result

    # -- outputs -------------------------------------------------------------------------
    def _snapshot(self) -> Result | None:
        """A snapshot of everything learned so far; once delivered it frees the offsets it covers."""
        if self.model is None or self._uncovered <= 0:
            return None
        snap = ModelSnapshot(name=self.model_name, created_at=_rfc3339(self.clock()),
                             examples_seen=self.model.examples_seen, metrics=self.current_metrics(),
                             epsilon=self.epsilon_info(), model=self.model)
        value = snap.to_bytes(self.key)
        n = self.model.examples_seen
        self._uncovered = 0
        self._covered_at = time.monotonic()

        def delivered() -> None:
            self.stats.snapshots += 1
            self.stats.commits += 1
            if self.metrics is not None:
                self.metrics.events_out("snapshots", 1)
            log.info("snapshot published", extra={"model": self.model_name, "n": n, "count": len(value)})

        return Result([Out(self.settings.topics.snapshots, value, self.model_name.encode())], checkpoint=True,
                      on_delivered=delivered)

    def _drift(self) -> Out:
        rec = drift_record(self.model_name, self.examples_seen, _detector_params(self.monitor), at=self.clock(),
                           worker=self.worker, detections=self.monitor.detections)
        stats = _drift_statistics(self.monitor)
        if stats:
            rec["statistics"] = stats
        rec = sign_receipt(rec, self.key)  # signed with the learner's own (snapshot) key
        self.stats.drifts += 1
        if self.metrics is not None:
            self.metrics.events_out("audit", 1)
        log.warning("drift detected on the progressive metric",
                    extra={"model": self.model_name, "metric": DRIFT_METRIC, "n": self.examples_seen})
        return Out(self.settings.topics.audit, orjson.dumps(rec))

    def epsilon_info(self) -> dict[str, Any]:
        """The epsilon of the reports the model learned from (worst case seen per kind)."""
        return {
            "label": self.label_epsilon,
            "features": {k: self.feature_epsilon[k] for k in sorted(self.feature_epsilon)},
            "budget_per_person_epoch": self.settings.ldp_person_epsilon,
            "note": EPSILON_NOTE + "; budget_per_person_epoch is the ledger cap the privatizer enforces",
        }

    def current_metrics(self) -> dict[str, float]:
        out = {k: float(v) for k, v in self.evaluation.as_dict().items()}
        out["drifts"] = float(self.monitor.detections)
        return out

    def resume(self) -> Model:
        """The newest verifiable snapshot's model, else a fresh one (module docstring)."""
        candidates = read_snapshot_records(self.bootstrap, self.settings.topics.snapshots, self.model_name)
        self.resumed = None
        for data in reversed(candidates):
            try:
                snap = ModelSnapshot.from_bytes(data, self.key.public_key())
            except SnapshotError as exc:
                self.stats.ignored_snapshots += 1
                log.warning("snapshot ignored: it does not verify with this keyring",
                            extra={"model": self.model_name, "error": str(exc)})
                continue
            if snap.name != self.model_name:
                self.stats.ignored_snapshots += 1
                log.warning("snapshot ignored: it names another model", extra={"model": self.model_name})
                continue
            s = self.settings
            kind = JointNaiveBayes if s.learn_model == "joint-nb" else PropensityModel
            if not isinstance(snap.model, kind):  # it would skip every example it reads, and stay ready
                raise ConfigError(
                    f"the newest snapshot of model {self.model_name!r} holds a {type(snap.model).__name__}, but "
                    f"STREAMGATE_LEARN_MODEL={s.learn_model}: it could learn nothing from the examples it reads; "
                    "start a new model under another STREAMGATE_LEARN_MODEL_NAME, or set the kind it was trained as")
            if (snap.model.correction, snap.model.debias) != (s.learn_correction, s.learn_debias):
                log.warning("the snapshot's model was trained with other learn_correction/learn_debias settings: "
                            "it keeps its own (start a new model name to change them)", extra={"model": self.model_name})
            self._merge_epsilon(snap.epsilon)
            self.resumed = snap
            self.stats.resumed_from = snap.examples_seen
            log.info("resumed from snapshot", extra={"model": self.model_name, "n": snap.examples_seen,
                                                     "at": snap.created_at})
            return snap.model
        log.info("no snapshot to resume from: starting a fresh model", extra={"model": self.model_name})
        return fresh_model(self.settings, self.policy)

    def _merge_epsilon(self, eps: Any) -> None:
        if not isinstance(eps, dict):
            return
        label = eps.get("label")
        if isinstance(label, int | float) and not isinstance(label, bool):
            self.label_epsilon = max(float(label), self.label_epsilon or 0.0)
        feats = eps.get("features")
        if isinstance(feats, dict):
            for k, v in feats.items():
                if isinstance(k, str) and isinstance(v, int | float) and not isinstance(v, bool):
                    self.feature_epsilon[k] = max(float(v), self.feature_epsilon.get(k, 0.0))

    def _parse(self, value: bytes | None) -> PrivateExample | JointReport | None:
        """The example of a record, or None (counted as skipped or invalid by reason)."""
        stats = self.stats
        if not value:
            stats.invalid["empty"] += 1
            return None
        try:
            doc = orjson.loads(value)
        except orjson.JSONDecodeError:
            stats.invalid["not_json"] += 1
            return None
        if not isinstance(doc, dict):
            stats.invalid["not_object"] += 1
            return None
        kind = doc.get("schema")
        if kind == FEATURE_SCHEMA:
            stats.skipped["feature_report"] += 1
            return None
        joint = isinstance(self.model, JointNaiveBayes)
        if kind in (EXAMPLE_SCHEMA, JOINT_SCHEMA) and (kind == JOINT_SCHEMA) != joint:
            stats.skipped["other_model_example"] += 1  # an example for the other learn_model
            return None
        if kind == JOINT_SCHEMA:
            try:
                return JointReport.from_dict(doc)
            except InvalidExampleError:
                stats.invalid["invalid_example"] += 1
                return None
        if kind != EXAMPLE_SCHEMA:
            stats.invalid["unknown_schema"] += 1
            return None
        try:
            example = PrivateExample.from_dict(doc)
        except InvalidExampleError:
            stats.invalid["invalid_example"] += 1
            return None
        if example.label is None:  # (from_dict guarantees a label for an example; be strict anyway)
            stats.invalid["invalid_example"] += 1
            return None
        return example

    def _note_epsilon(self, example: PrivateExample | JointReport) -> None:
        if isinstance(example, JointReport):  # the whole example's epsilon, reported as the label's
            if self.label_epsilon is None or example.epsilon > self.label_epsilon:
                self.label_epsilon = example.epsilon
            return
        le = example.label_epsilon
        if le is not None and (self.label_epsilon is None or le > self.label_epsilon):
            self.label_epsilon = float(le)
        fe = self.feature_epsilon
        for name, report in example.features.items():
            e = report.epsilon
            if e > fe.get(name, 0.0):
                fe[name] = float(e)

    def _publish_model_metrics(self) -> None:
        m = self.metrics
        if m is None:
            return
        ev = self.evaluation.as_dict()
        for metric in ("roc_auc", "log_loss"):
            v = ev.get(metric)
            if v is not None and math.isfinite(float(v)):
                m.set_model_metric(self.model_name, metric, float(v))
        m.set_model_metric(self.model_name, "examples_seen", float(self.examples_seen))
        m.set_model_metric(self.model_name, "drifts", float(self.monitor.detections))
