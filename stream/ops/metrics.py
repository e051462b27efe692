"""Every Prometheus series of every streamgate worker, in one place.

Each worker process owns one :class:`WorkerMetrics` on its own
:class:`~prometheus_client.CollectorRegistry` (never the global one, so tests can
run several workers in one process). The counts live in plain Python tallies
updated once per *batch* (never per event: the gateway's throughput matters);
one custom collector turns them into metric families when Prometheus scrapes
``GET /metrics``, and :meth:`WorkerMetrics.snapshot` turns the same tallies into
the compact JSON published to ``ops.metrics``. One source of truth for both.

Series (all carry the label ``worker`` = ``gateway`` | ``privatizer`` | ``shredder`` | ``learner``;
every series is declared by every worker, so ``/metrics`` always lists its
``# HELP``/``# TYPE`` even before the first sample):

====================================================  =========  =======================  ==============================================
name                                                  type       labels (besides worker)  meaning
====================================================  =========  =======================  ==============================================
``streamgate_worker_info``                            gauge      ``version``              always 1: which worker and version is running
``streamgate_events_in_total``                        counter                             records consumed from the worker's input topic
``streamgate_events_out_total``                       counter    ``topic``                records written, by logical topic (``protected``,
                                                                                          ``dlq``, ``features``, ``frequencies``,
                                                                                          ``snapshots``, ``audit``);
                                                                                          snapshots to ``ops.metrics`` are counted apart
``streamgate_dead_letters_total``                     counter    ``reason``               records dead-lettered, by reason code
                                                                                          (:class:`stream.schema.Reason`)
``streamgate_batch_duration_seconds``                 histogram                           wall time to process one batch (protect/privatize
                                                                                          + produce), per batch
``streamgate_event_duration_seconds``                 histogram                           the same time per event (each batch contributes
                                                                                          its mean, weighted by its number of events)
``streamgate_consumer_lag``                           gauge      ``partition``            records behind the log end, per input partition
``streamgate_dek_cache_hits_total``                   counter                             data-key cache hits (DekStats.hits)
``streamgate_dek_cache_misses_total``                 counter                             data-key cache misses (DekStats.misses)
``streamgate_dek_keys_created_total``                 counter                             data keys created (DekStats.created)
``streamgate_redis_errors_total``                     counter                             Redis failures (fail-closed retries of a batch)
``streamgate_produce_retries_total``                  counter                             batches re-sent after a produce failure
``streamgate_engine_retries_total``                   counter    ``cause``                failures the engine retries, by cause: ``commit``
                                                                                          (an offset commit refused or failed), ``hold`` (a
                                                                                          batch held: a dependency down), ``tick`` (periodic
                                                                                          work failed), ``recovery`` (Kafka clients
                                                                                          recreated, or a seek back to dropped records
                                                                                          failed), ``produce`` (records re-queued),
                                                                                          ``erased`` (a batch redone at once: people it
                                                                                          names were erased since it was tokenized)
``streamgate_keys_shredded_total``                    counter    ``reason``               data keys destroyed (``retention`` | ``erasure``)
``streamgate_shred_due_keys``                         gauge                               keys past their deadline not yet shredded
``streamgate_shred_overdue_seconds``                  gauge                               how far past its deadline the oldest due key is
``streamgate_ldp_reports_total``                      counter    ``attribute``,           LDP reports emitted, by schema attribute and
                                                                 ``mechanism``            mechanism
``streamgate_ldp_epsilon_spent_total``                counter    ``attribute``            sum of epsilon charged for those reports (and,
                                                                                          as ``session_purchase``, the examples' prepaid
                                                                                          label epsilon)
``streamgate_ldp_suppressed_total``                   counter    ``attribute``            never incremented (no stand-ins since the memo
                                                                                          design went): declared, with no sample, for
                                                                                          older readers; see ``over_budget``
``streamgate_ldp_over_budget_total``                  counter                             events not reported: the person's ledger was at its cap
``streamgate_model_metric``                           gauge      ``model``, ``metric``    the learner's model: ``roc_auc``, ``log_loss``, ``examples_seen``, ``drifts``
``streamgate_ready``                                  gauge                               1 when ``/readyz`` last answered ready
``streamgate_dependency_up``                          gauge      ``dependency``           last readiness check of ``broker`` / ``redis``
                                                                                          / ``kek`` (1 up, 0 down)
``streamgate_metrics_snapshots_total``                counter                             snapshots published to ``ops.metrics``
``streamgate_kafka_client_events_total``              counter    ``event``                failure paths of :mod:`stream.kafka` in this process:
                                                                                          ``read_errors`` (consumer errors a topic reader
                                                                                          skipped), ``produce_queue_full`` (records that met
                                                                                          a full producer queue), ``produce_gave_up``
====================================================  =========  =======================  ==============================================

The ``ops.metrics`` snapshot also carries ``ldp_person_epsilon`` (privatizer only, no Prometheus
series): how much ε the process charged per person in the newest epoch, as counts per bin
(:class:`stream.ldp.privatizer.SpendHistogram`) - counts only, no identifier.
It also carries ``ldp_over_budget``: events not reported because the person's ledger was at its cap.

Labels can never carry a personal value or a token: every label value is checked
against a fixed set (``worker``, ``topic``, ``reason``, shred ``reason``,
``dependency``, ``cause``), the field names of the shipped schemas (``attribute``) or the
pattern ``[a-z0-9_.-]{1,64}`` with a per-label cap on distinct values
(``mechanism``, ``model``, ``metric``); values that look like tokens (``tk1_...``)
or addresses are refused. Anything else raises :class:`ValueError` naming the
label, never echoing the value.
"""

from __future__ import annotations

import bisect
import functools
import re
import threading
import time
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any

from prometheus_client import CollectorRegistry
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector
from prometheus_client.utils import floatToGoString

from stream import __version__
from stream.apps.registry import WORKERS as _REGISTRY
from stream.kafka import COUNTERS as KAFKA_COUNTERS
from stream.kafka import KAFKA_EVENTS
from stream.schema import Reason, available_schemas, schema_document

__all__ = [
    "BATCH_BUCKETS",
    "DEPENDENCIES",
    "EVENT_BUCKETS",
    "OUT_TOPICS",
    "RETRY_CAUSES",
    "SERIES",
    "SHRED_REASONS",
    "WORKERS",
    "SeriesSpec",
    "WorkerMetrics",
    "exposed_names",
]

WORKERS = frozenset(_REGISTRY)
OUT_TOPICS = frozenset({"protected", "dlq", "features", "frequencies", "snapshots", "audit"})
SHRED_REASONS = frozenset({"retention", "erasure"})
DEPENDENCIES = frozenset({"broker", "redis", "kek"})
RETRY_CAUSES = frozenset({"commit", "hold", "tick", "recovery", "produce", "erased"})
DLQ_REASONS = frozenset(r.value for r in Reason)

BATCH_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
EVENT_BUCKETS = (1e-6, 5e-6, 1e-5, 2.5e-5, 5e-5, 1e-4, 2.5e-4, 5e-4, 1e-3, 5e-3, 1e-2, 0.1, 1.0)

_LABEL_RE = re.compile(r"[a-z0-9_.-]{1,64}")
_TOKENISH_RE = re.compile(r"tk\d+_")
_MAX_DISTINCT = {"mechanism": 16, "model": 32, "metric": 32, "attribute": 128}
_MAX_PARTITION = 100_000


@dataclass(frozen=True)
class SeriesSpec:
    """One declared series: exposed name (with ``_total`` for counters), type, labels, help."""

    name: str
    type: str  # counter | gauge | histogram
    labels: tuple[str, ...]
    help: str

    @property
    def family(self) -> str:
        """The metric family name (counters without ``_total``)."""
        return self.name.removesuffix("_total") if self.type == "counter" else self.name


def _s(name: str, type_: str, labels: tuple[str, ...], help_: str) -> SeriesSpec:
    return SeriesSpec(name, type_, ("worker", *labels), help_)


SERIES: tuple[SeriesSpec, ...] = (
    _s("streamgate_worker_info", "gauge", ("version",), "Always 1: the worker and streamgate version running."),
    _s("streamgate_events_in_total", "counter", (), "Records consumed from the worker's input topic."),
    _s("streamgate_events_out_total", "counter", ("topic",), "Records written, by logical output topic."),
    _s("streamgate_dead_letters_total", "counter", ("reason",), "Records dead-lettered, by reason code."),
    _s("streamgate_batch_duration_seconds", "histogram", (), "Wall time to process one batch (work + produce)."),
    _s("streamgate_event_duration_seconds", "histogram", (),
       "Processing time per event (each batch adds its mean, weighted by its events)."),
    _s("streamgate_consumer_lag", "gauge", ("partition",), "Records behind the log end, per input partition."),
    _s("streamgate_dek_cache_hits_total", "counter", (), "Data-key cache hits."),
    _s("streamgate_dek_cache_misses_total", "counter", (), "Data-key cache misses."),
    _s("streamgate_dek_keys_created_total", "counter", (), "Data keys created."),
    _s("streamgate_redis_errors_total", "counter", (), "Redis failures (each one a fail-closed retry)."),
    _s("streamgate_produce_retries_total", "counter", (), "Batches re-sent after a produce failure."),
    _s("streamgate_engine_retries_total", "counter", ("cause",),
       "Failures the engine retries (commit | hold | tick | recovery | produce)."),
    _s("streamgate_keys_shredded_total", "counter", ("reason",), "Data keys destroyed (retention | erasure)."),
    _s("streamgate_shred_due_keys", "gauge", (), "Keys past their deadline that are not shredded yet."),
    _s("streamgate_shred_overdue_seconds", "gauge", (), "How far past its deadline the oldest due key is."),
    _s("streamgate_ldp_reports_total", "counter", ("attribute", "mechanism"), "LDP reports emitted."),
    _s("streamgate_ldp_epsilon_spent_total", "counter", ("attribute",), "Sum of epsilon spent by LDP reports."),
    _s("streamgate_ldp_suppressed_total", "counter", ("attribute",),
       "Never incremented (kept for older readers): see streamgate_ldp_over_budget_total."),
    _s("streamgate_ldp_over_budget_total", "counter", (),
       "Events not reported because the person's ledger was at its cap."),
    _s("streamgate_model_metric", "gauge", ("model", "metric"), "Online model quality metrics."),
    _s("streamgate_ready", "gauge", (), "1 when the worker was last found ready."),
    _s("streamgate_dependency_up", "gauge", ("dependency",), "Last readiness check of a dependency (1 up)."),
    _s("streamgate_metrics_snapshots_total", "counter", (), "Snapshots published to the ops.metrics topic."),
    _s("streamgate_kafka_client_events_total", "counter", ("event",),
       "Failure paths of the topic reader and the produce helper (stream.kafka), by event."),
)


def exposed_names() -> set[str]:
    """Every sample name a scrape can show (histograms: ``_bucket``, ``_sum``, ``_count``)."""
    names: set[str] = set()
    for s in SERIES:
        if s.type == "histogram":
            names.update(f"{s.name}{suffix}" for suffix in ("_bucket", "_sum", "_count"))
        else:
            names.add(s.name)
    return names


@functools.cache
def _schema_field_names() -> frozenset[str]:
    """Property names of every shipped schema: the only values an ``attribute`` label may take."""
    names: set[str] = set()
    for name in available_schemas():
        names.update(schema_document(name).get("properties", {}))
    return frozenset(names)


class _WeightedHistogram:
    """Cumulative-bucket histogram whose observations can carry a weight (``n`` events)."""

    __slots__ = ("bounds", "counts", "sum", "total")

    def __init__(self, bounds: tuple[float, ...]) -> None:
        self.bounds = bounds
        self.counts = [0] * (len(bounds) + 1)  # last = +Inf
        self.sum = 0.0
        self.total = 0

    def observe(self, value: float, weight: int = 1) -> None:
        self.counts[bisect.bisect_left(self.bounds, value)] += weight
        self.sum += value * weight
        self.total += weight

    def buckets(self) -> list[tuple[str, float]]:
        out: list[tuple[str, float]] = []
        acc = 0
        for bound, c in zip((*self.bounds, float("inf")), self.counts, strict=True):
            acc += c
            out.append((floatToGoString(bound), float(acc)))
        return out


class WorkerMetrics:
    """The metrics of one worker process; see the module docstring for the series.

    Thread-safe (one lock; updates are per batch). ``registry`` holds exactly one collector.
    """

    def __init__(self, worker: str, registry: CollectorRegistry | None = None, *,
                 attributes: Iterable[str] | None = None) -> None:
        if worker not in WORKERS:
            raise ValueError(f"worker must be one of {sorted(WORKERS)}")
        self.worker = worker
        self.registry = registry if registry is not None else CollectorRegistry(auto_describe=False)
        # schema field names, plus the label pseudo-attribute of the labelled examples
        self._attributes = (frozenset(attributes) if attributes is not None else _schema_field_names()) | {
            "session_purchase"
        }
        self._lock = threading.Lock()
        self._seen: dict[str, set[str]] = {k: set() for k in _MAX_DISTINCT}
        self.events_in_total = 0
        self.out: Counter[str] = Counter()
        self.dlq: Counter[str] = Counter()
        self.batch_hist = _WeightedHistogram(BATCH_BUCKETS)
        self.event_hist = _WeightedHistogram(EVENT_BUCKETS)
        self.lag: dict[int, int] = {}
        self.dek = {"hits": 0, "misses": 0, "created": 0}
        self.redis_errors = 0
        self.produce_retries = 0
        self.retries: Counter[str] = Counter()
        self.shredded: Counter[str] = Counter()
        self.shred_due = 0
        self.shred_overdue = 0.0
        self.ldp: Counter[tuple[str, str]] = Counter()
        self.epsilon: dict[str, float] = {}
        self.suppressed: Counter[str] = Counter()
        self.over_budget = 0
        self.models: dict[tuple[str, str], float] = {}
        self.person_epsilon: dict[str, Any] | None = None
        self.ready = 0
        self.deps: dict[str, int] = {}
        self.snapshots_published = 0
        self._last_rate_at: float | None = None
        self._last_rate_totals: tuple[int, int, int] = (0, 0, 0)
        self.registry.register(_Collector(self))

    # --- label checks -------------------------------------------------------------------
    def _free(self, label: str, value: str) -> str:
        """A pattern-checked label value with a cap on distinct values (mechanism/model/metric/attribute)."""
        if not isinstance(value, str) or not _LABEL_RE.fullmatch(value) or _TOKENISH_RE.match(value):
            raise ValueError(f"invalid value for metric label {label!r} (allowed: [a-z0-9_.-]{{1,64}}, no tokens)")
        seen = self._seen[label]
        if value not in seen:
            if len(seen) >= _MAX_DISTINCT[label]:
                raise ValueError(f"too many distinct values for metric label {label!r}")
            seen.add(value)
        return value

    def _attribute(self, attribute: str) -> str:
        if attribute not in self._attributes:
            raise ValueError("metric label 'attribute' must be a schema field name")
        return self._free("attribute", attribute)

    @staticmethod
    def _member(label: str, value: str, allowed: frozenset[str]) -> str:
        if value not in allowed:
            raise ValueError(f"invalid value for metric label {label!r}; allowed: {sorted(allowed)}")
        return value

    @staticmethod
    def _count(n: int) -> int:
        if type(n) is not int or n < 0:
            raise ValueError("a count must be a non-negative int")
        return n

    # --- updates (once per batch) ---------------------------------------------------------
    def events_in(self, n: int) -> None:
        n = self._count(n)
        with self._lock:
            self.events_in_total += n

    def events_out(self, topic: str, n: int) -> None:
        self._member("topic", topic, OUT_TOPICS)
        n = self._count(n)
        with self._lock:
            self.out[topic] += n

    def dead_lettered(self, reason: str, n: int = 1) -> None:
        reason = self._member("reason", str(reason), DLQ_REASONS)
        n = self._count(n)
        with self._lock:
            self.dlq[reason] += n

    def dead_lettered_many(self, reasons: dict[str, int]) -> None:
        """Several reasons at once (a batch's ``Counter``)."""
        for reason in reasons:
            self._member("reason", str(reason), DLQ_REASONS)
        with self._lock:
            for reason, n in reasons.items():
                self.dlq[str(reason)] += int(n)

    def observe_batch(self, seconds: float, events: int) -> None:
        seconds = max(0.0, float(seconds))
        events = self._count(events)
        with self._lock:
            self.batch_hist.observe(seconds)
            if events:
                self.event_hist.observe(seconds / events, events)

    def set_lag(self, partition: int, lag: int) -> None:
        if type(partition) is not int or not 0 <= partition < _MAX_PARTITION:
            raise ValueError("partition must be an int in [0, 100000)")
        with self._lock:
            self.lag[partition] = max(0, int(lag))

    def clear_lag(self, keep: Iterable[int] = ()) -> None:
        """Forget the lag of partitions this worker no longer holds."""
        keep = set(keep)
        with self._lock:
            for p in [p for p in self.lag if p not in keep]:
                del self.lag[p]

    def set_dek_cache(self, hits: int, misses: int, created: int) -> None:
        with self._lock:
            self.dek = {"hits": self._count(hits), "misses": self._count(misses), "created": self._count(created)}

    def redis_error(self, n: int = 1) -> None:
        n = self._count(n)
        with self._lock:
            self.redis_errors += n

    def produce_retry(self, n: int = 1) -> None:
        n = self._count(n)
        with self._lock:
            self.produce_retries += n

    def engine_retry(self, cause: str, n: int = 1) -> None:
        """A failure the engine retries (``streamgate_engine_retries_total{cause}``)."""
        self._member("cause", cause, RETRY_CAUSES)
        n = self._count(n)
        with self._lock:
            self.retries[cause] += n

    def keys_shredded(self, reason: str, n: int = 1) -> None:
        self._member("reason", reason, SHRED_REASONS)
        n = self._count(n)
        with self._lock:
            self.shredded[reason] += n

    def set_shred_backlog(self, due: int, overdue_seconds: float) -> None:
        """Keys past their deadline still in the store, and how late the oldest is (0 when none)."""
        with self._lock:
            self.shred_due = self._count(due)
            self.shred_overdue = max(0.0, float(overdue_seconds))

    def ldp_reports(self, attribute: str, mechanism: str, n: int, epsilon_spent: float) -> None:
        attribute = self._attribute(attribute)
        mechanism = self._free("mechanism", str(mechanism).lower())
        n = self._count(n)
        with self._lock:
            self.ldp[(attribute, mechanism)] += n
            self.epsilon[attribute] = self.epsilon.get(attribute, 0.0) + max(0.0, float(epsilon_spent))

    def ldp_suppressed(self, attribute: str, n: int = 1) -> None:
        """Unused by the workers (an event past the cap is dropped whole: :meth:`ldp_over_budget`); kept
        because ``ops watch`` and the console still read the snapshot's ``suppressed`` per attribute."""
        attribute = self._attribute(attribute)
        n = self._count(n)
        with self._lock:
            self.suppressed[attribute] += n

    def ldp_over_budget(self, n: int) -> None:
        n = self._count(n)
        with self._lock:
            self.over_budget += n

    def set_person_epsilon(self, histogram: dict[str, Any]) -> None:
        """The privatizer's ε-per-person histogram (:meth:`SpendHistogram.as_dict`): numbers only."""
        counts = histogram.get("counts")
        if not isinstance(counts, list) or not all(type(c) is int and c >= 0 for c in counts):
            raise ValueError("person epsilon histogram: counts must be non-negative ints")
        epoch = histogram.get("epoch")
        clean: dict[str, Any] = {"epoch": epoch if type(epoch) is int else None, "counts": list(counts)}
        for key in ("cap", "bin_width"):
            clean[key] = float(histogram.get(key, 0.0))
        for key in ("people", "untracked"):
            clean[key] = self._count(int(histogram.get(key, 0)))
        with self._lock:
            self.person_epsilon = clean

    def set_model_metric(self, model: str, metric: str, value: float) -> None:
        model = self._free("model", model)
        metric = self._free("metric", metric)
        with self._lock:
            self.models[(model, metric)] = float(value)

    def set_ready(self, ready: bool, dependencies: dict[str, bool] | None = None) -> None:
        for dep in dependencies or {}:
            self._member("dependency", dep, DEPENDENCIES)
        with self._lock:
            self.ready = int(bool(ready))
            for dep, up in (dependencies or {}).items():
                self.deps[dep] = int(bool(up))

    def snapshot_published(self) -> None:
        with self._lock:
            self.snapshots_published += 1

    # --- reading ------------------------------------------------------------------------------
    def snapshot(self) -> dict[str, Any]:
        """Compact JSON-ready summary for ``ops.metrics``: cumulative totals plus the rates since
        the previous :meth:`snapshot` call (events/s; 0.0 on the first call)."""
        now = time.monotonic()
        with self._lock:
            out_total = sum(self.out.values())
            dlq_total = sum(self.dlq.values())
            totals = (self.events_in_total, out_total, dlq_total)
            if self._last_rate_at is None or now <= self._last_rate_at:
                rates = {"in": 0.0, "out": 0.0, "dlq": 0.0}
            else:
                dt = now - self._last_rate_at
                rates = {k: round((a - b) / dt, 2) for k, a, b in
                         zip(("in", "out", "dlq"), totals, self._last_rate_totals, strict=True)}
            self._last_rate_at, self._last_rate_totals = now, totals
            eh = self.event_hist
            ldp: dict[str, dict[str, Any]] = {}
            for (attr, mech), n in self.ldp.items():
                row = ldp.setdefault(attr, {"reports": 0, "epsilon_spent": 0.0, "suppressed": 0})
                row["reports"] += n
                row["mechanism"] = mech
            for attr, eps in self.epsilon.items():
                ldp.setdefault(attr, {"reports": 0, "epsilon_spent": 0.0, "suppressed": 0})["epsilon_spent"] = round(eps, 6)
            for attr, n in self.suppressed.items():
                ldp.setdefault(attr, {"reports": 0, "epsilon_spent": 0.0, "suppressed": 0})["suppressed"] = n
            models: dict[str, dict[str, float]] = {}
            for (model, metric), v in self.models.items():
                models.setdefault(model, {})[metric] = v
            extra: dict[str, Any] = {}
            if self.person_epsilon is not None:
                extra["ldp_person_epsilon"] = dict(self.person_epsilon, counts=list(self.person_epsilon["counts"]))
            return {
                "worker": self.worker,
                "events_in": self.events_in_total,
                "events_out": dict(self.out),
                "dlq": dict(self.dlq),
                "rates": rates,
                "lag": {str(p): v for p, v in sorted(self.lag.items())},
                "lag_total": sum(self.lag.values()),
                "batches": self.batch_hist.total,
                "event_seconds_mean": round(eh.sum / eh.total, 9) if eh.total else None,
                "dek_cache": dict(self.dek),
                "redis_errors": self.redis_errors,
                "produce_retries": self.produce_retries,
                "engine_retries": {c: self.retries.get(c, 0) for c in sorted(RETRY_CAUSES)},
                "keys_shredded": dict(self.shredded),
                "shred_due": self.shred_due,
                "shred_overdue_seconds": round(self.shred_overdue, 3),
                "ldp": ldp,
                "ldp_over_budget": self.over_budget,
                "models": models,
                "ready": bool(self.ready),
                **extra,
            }

    def families(self) -> list[Metric]:
        """The metric families of a scrape (every declared series, samples or not)."""
        w = self.worker
        f: dict[str, Metric] = {}
        for s in SERIES:
            doc = s.help
            if s.type == "counter":
                f[s.name] = CounterMetricFamily(s.family, doc, labels=list(s.labels))
            elif s.type == "gauge":
                f[s.name] = GaugeMetricFamily(s.name, doc, labels=list(s.labels))
            else:
                f[s.name] = HistogramMetricFamily(s.name, doc, labels=list(s.labels))

        def add(name: str, labels: list[str], value: float) -> None:
            f[name].add_metric([w, *labels], value)  # type: ignore[attr-defined]

        with self._lock:
            add("streamgate_worker_info", [__version__], 1)
            add("streamgate_events_in_total", [], self.events_in_total)
            for topic, n in sorted(self.out.items()):
                add("streamgate_events_out_total", [topic], n)
            for reason, n in sorted(self.dlq.items()):
                add("streamgate_dead_letters_total", [reason], n)
            for name, hist in (("streamgate_batch_duration_seconds", self.batch_hist),
                               ("streamgate_event_duration_seconds", self.event_hist)):
                f[name].add_metric([w], hist.buckets(), hist.sum)  # type: ignore[attr-defined]
            for p, lag in sorted(self.lag.items()):
                add("streamgate_consumer_lag", [str(p)], lag)
            add("streamgate_dek_cache_hits_total", [], self.dek["hits"])
            add("streamgate_dek_cache_misses_total", [], self.dek["misses"])
            add("streamgate_dek_keys_created_total", [], self.dek["created"])
            add("streamgate_redis_errors_total", [], self.redis_errors)
            add("streamgate_produce_retries_total", [], self.produce_retries)
            for cause in sorted(RETRY_CAUSES):
                add("streamgate_engine_retries_total", [cause], self.retries.get(cause, 0))
            for reason in sorted(SHRED_REASONS):
                add("streamgate_keys_shredded_total", [reason], self.shredded.get(reason, 0))
            add("streamgate_shred_due_keys", [], self.shred_due)
            add("streamgate_shred_overdue_seconds", [], self.shred_overdue)
            for (attr, mech), n in sorted(self.ldp.items()):
                add("streamgate_ldp_reports_total", [attr, mech], n)
            for attr, eps in sorted(self.epsilon.items()):
                add("streamgate_ldp_epsilon_spent_total", [attr], eps)
            for attr, n in sorted(self.suppressed.items()):
                add("streamgate_ldp_suppressed_total", [attr], n)
            add("streamgate_ldp_over_budget_total", [], self.over_budget)
            for (model, metric), v in sorted(self.models.items()):
                add("streamgate_model_metric", [model, metric], v)
            add("streamgate_ready", [], self.ready)
            for dep, up in sorted(self.deps.items()):
                add("streamgate_dependency_up", [dep], up)
            add("streamgate_metrics_snapshots_total", [], self.snapshots_published)
        for event in KAFKA_EVENTS:  # process-wide tallies of stream.kafka
            add("streamgate_kafka_client_events_total", [event], KAFKA_COUNTERS[event])
        return list(f.values())


class _Collector(Collector):
    def __init__(self, metrics: WorkerMetrics) -> None:
        self._metrics = metrics

    def collect(self) -> Iterator[Metric]:
        yield from self._metrics.families()

    def describe(self) -> Iterator[Metric]:
        """Declared names (lets the registry detect duplicates without collecting)."""
        for s in SERIES:
            yield Metric(s.family, s.help, s.type)
