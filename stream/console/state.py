"""The console's in-memory state: records of the derived topics folded into what the page shows.

Pure: :class:`ConsoleState` takes decoded records (``ops.metrics`` snapshots, ``analytics.frequencies``
estimates, ``ops.audit`` receipts with their verification result, ``models.snapshots`` headers with
theirs) and :meth:`ConsoleState.view` returns the JSON the page draws. No Kafka, no clock of its own.

Nothing personal is kept or shown: names, reason codes and request ids pass a strict pattern (else
``other``), receipts lose their person token, and numbers are numbers. Memory is bounded (the newest
``windows_kept`` windows per attribute, ``history`` points per series, the last receipts) whatever
names the records carry: at most ``names_kept`` worker names besides the four workers (the least
recently seen one forgotten with its instances and series), ``names_kept`` models (the same),
``instances_kept`` instances (the least recently updated one forgotten), and ``names_kept`` audit
rows and unsigned kinds (counts beyond them folded into ``other``, so totals stay true). A snapshot
costs work in its worker's instances only (instances are indexed by worker).

The pipeline totals add up across restarts: an instance forgotten (gone from the live window, or
beyond ``instances_kept``) leaves its final counts in its worker's totals; one whose counters went
back (the same host and pid, a restarted container's pid 1) is a new instance, the old one retired.
"""

from __future__ import annotations

import math
import re
from collections import Counter, OrderedDict, deque
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from stream.ldp.aggregate import ESTIMATE_SCHEMA, merge_records, param_mismatch, source_of
from stream.ldp.policy import LdpPolicy
from stream.ops.live import (
    RateWindow,
    examples_learned,
    in_unit,
    live_window,
    liveness,
    not_live_reason,
    out_parts,
    published_reason,
)

__all__ = ["RECEIPT_KINDS", "ConsoleState", "Truth", "merged_view", "own_rates", "rates_between", "sum_counts"]

_NAME = re.compile(r"[a-z0-9_.-]{1,64}")
_TOKENISH = re.compile(r"tk\d+_")
_REQUEST_ID = re.compile(r"[A-Za-z0-9_.:-]{1,128}")
_WORKER_ORDER = {"gateway": 0, "privatizer": 1, "learner": 2, "shredder": 3}
#: rates of a worker instance: consumed, written (all topics), protected, dead-lettered, feature reports
_RATE_KEYS = ("in", "out", "protected", "dlq", "features")
#: audit kinds that are shredder receipts: they must carry the shredder's signature
RECEIPT_KINDS = frozenset({"key_shredded", "erasure", "erasure_rejected"})
#: audit kinds that keep their own rows whatever else floods the topic (receipts and drift)
_KNOWN_KINDS = RECEIPT_KINDS | {"drift"}


def _name(value: Any) -> str:
    """A printable name (worker, reason code, attribute, model), else ``other``."""
    if isinstance(value, str) and _NAME.fullmatch(value) and not _TOKENISH.match(value):
        return value
    return "other"


def _num(value: Any) -> float:
    if isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value):
        return float(value)
    return 0.0


def _int(value: Any) -> int:
    return int(value) if isinstance(value, int) and not isinstance(value, bool) else 0


def _opt_num(value: Any) -> float | None:
    if isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value):
        return float(value)
    return None


def _counts(value: Any) -> dict[str, int]:
    out: Counter[str] = Counter()
    if isinstance(value, dict):
        for k, v in value.items():
            out[_name(k)] += _int(v)
    return dict(out)


def sum_counts(dicts: Iterable[Mapping[str, int]]) -> dict[str, int]:
    """Per-key sums of several count dicts."""
    total: Counter[str] = Counter()
    for d in dicts:
        total.update(d)
    return dict(total)


def _time_of(text: Any) -> float | None:
    """Unix seconds of an RFC 3339 time, else None."""
    if not isinstance(text, str):
        return None
    try:
        return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()
    except ValueError:
        return None


def _counters(snap: Mapping[str, Any]) -> dict[str, int]:
    """The cumulative counters the rates are taken from (:data:`_RATE_KEYS`)."""
    out = _counts(snap.get("events_out"))
    return {"in": _int(snap.get("events_in")), "out": sum(out.values()), "protected": out.get("protected", 0),
            "dlq": out.get("dlq", 0), "features": out.get("features", 0)}


def _totals(snap: Mapping[str, Any]) -> dict[str, int]:
    """An instance's cumulative counts the pipeline totals add up: ``events_in``, ``out.<topic>``
    and ``dlq.<reason>``."""
    out = {"events_in": _int(snap.get("events_in"))}
    out.update({f"out.{k}": v for k, v in _counts(snap.get("events_out")).items()})
    out.update({f"dlq.{k}": v for k, v in _counts(snap.get("dlq")).items()})
    return out


def _went_back(old: Mapping[str, int], new: Mapping[str, int]) -> bool:
    return any(new.get(k, 0) < v for k, v in old.items())


def rates_between(prev: Mapping[str, Any], cur: Mapping[str, Any]) -> dict[str, float]:
    """Per-second rates of one worker instance between two of its snapshots (from the cumulative
    counters, so a missed snapshot does not matter); 0 for a counter that went back (a restart)."""
    w = RateWindow(window=float("inf"))
    w.add(_num(prev.get("ts")), _counters(prev))
    w.add(_num(cur.get("ts")), _counters(cur))
    return w.rates() or dict.fromkeys(_RATE_KEYS, 0.0)


def own_rates(snap: Mapping[str, Any]) -> dict[str, float]:
    """The rates a snapshot carries itself (over the interval since the worker's previous one), for
    an instance's first snapshot, when there is nothing to take differences from. ``protected`` is
    ``out - dlq`` for a worker that writes nothing else (the gateway), ``features`` is ``out`` for
    one that writes only feature reports; else 0 (not known from the snapshot alone)."""
    raw = snap.get("rates")
    r: Mapping[str, Any] = raw if isinstance(raw, dict) else {}
    out, dlq = _num(r.get("out")), _num(r.get("dlq"))
    kinds = set(_counts(snap.get("events_out")))
    return {"in": _num(r.get("in")), "out": out, "dlq": dlq,
            "protected": round(max(0.0, out - dlq), 2) if kinds and kinds <= {"protected", "dlq"} else 0.0,
            "features": out if kinds == {"features"} else 0.0}


@dataclass(frozen=True)
class Truth:
    """What a synthetic run knows for sure (the demo): per categorical attribute the true frequency of
    each value, per numeric attribute the true mean, over the events since ``since_ms``."""

    frequencies: Mapping[str, Mapping[str, float]] = field(default_factory=dict)
    means: Mapping[str, float] = field(default_factory=dict)
    events: int = 0
    label: str = "truth"

    def as_dict(self) -> dict[str, Any]:
        return {"frequencies": {a: dict(v) for a, v in self.frequencies.items()}, "means": dict(self.means),
                "events": self.events, "label": self.label}


def merged_view(policy: LdpPolicy, records: Sequence[Mapping[str, Any]], truth: Truth | None = None) -> dict[str, Any] | None:
    """One attribute's records (several windows and/or privatizer partitions) merged as
    ``streamgate estimates`` merges them (:func:`stream.ldp.aggregate.merge_records`), in the page's
    compact form: categorical ``values`` rows ``[value, projected, estimate, ci_low, ci_high, truth]``,
    numeric ``mean`` and ``ci95``."""
    merged = merge_records(policy, records)
    if not merged:
        return None
    rec = merged[0]
    name = rec["attribute"]
    out: dict[str, Any] = {"start_ms": rec["window"]["start_ms"], "end_ms": rec["window"]["end_ms"], "n": rec["n"],
                           "windows": len({int(r["window"]["start_ms"]) for r in records})}
    if rec["kind"] == "categorical":
        true = (truth.frequencies.get(name) if truth is not None else None) or {}
        out["values"] = [[v["value"], v["projected"], v["estimate"], v["ci95"][0], v["ci95"][1], true.get(v["value"])]
                         for v in rec.get("values", [])]
    else:
        out["mean"] = rec.get("mean")
        out["ci95"] = rec.get("ci95")
        out["truth"] = truth.means.get(name) if truth is not None else None
    return out


@dataclass
class _Instance:
    snap: dict[str, Any]
    rates: dict[str, float]  # over the rate window ending at ``snap`` (the first snapshot: its own)
    window: RateWindow = field(default_factory=RateWindow)

    def rates_at(self, now: float) -> dict[str, float]:
        """Its rates at ``now``: 0 once it stopped or went stale (:func:`stream.ops.live.liveness`)."""
        return self.rates if liveness(self.snap, now) == "live" else dict.fromkeys(_RATE_KEYS, 0.0)


@dataclass
class ConsoleState:
    """Everything the console shows, folded from the derived topics (module docstring)."""

    policy: LdpPolicy
    since_ms: int = 0  # records older than this are ignored
    #: instances whose newest snapshot is this much older than their worker's are gone; None: each
    #: instance's :func:`stream.ops.live.live_window` (as ``ops watch``)
    live_seconds: float | None = None
    rate_window: float = 30.0  # seconds of snapshots the rates are computed over
    history: int = 360  # points kept per time series
    windows_kept: int = 240  # estimate windows kept per attribute
    windows_shown: int = 8  # of which the page gets the newest, value by value
    receipts_kept: int = 20
    names_kept: int = 32  # worker names (besides the four), models, audit rows, unsigned kinds
    instances_kept: int = 256  # worker instances, all workers together
    truth: Truth | None = None
    version: int = 0
    records: Counter[str] = field(default_factory=Counter)
    malformed: int = 0
    _instances: OrderedDict[tuple[str, str, int], _Instance] = field(default_factory=OrderedDict)  # LRU order
    #: per worker, the final counts of its instances no longer kept (gone, or restarted with the same pid)
    _retired: dict[str, Counter[str]] = field(default_factory=dict)
    #: instances whose final counts are in ``_retired``: (ts, counts) of their last snapshot (LRU order)
    _retired_keys: OrderedDict[tuple[str, str, int], tuple[float, dict[str, int]]] = field(default_factory=OrderedDict)
    _by_worker: dict[str, dict[tuple[str, str, int], _Instance]] = field(default_factory=dict)
    _series: OrderedDict[str, deque[dict[str, float]]] = field(default_factory=OrderedDict)  # LRU order
    #: attribute -> window start -> source -> its latest record (a window published again replaces)
    _windows: dict[str, OrderedDict[int, dict[str, dict[str, Any]]]] = field(default_factory=dict)
    _audit: Counter[tuple[str, str]] = field(default_factory=Counter)
    _receipts: deque[dict[str, Any]] = field(default_factory=deque)
    _seen_receipts: OrderedDict[str, None] = field(default_factory=OrderedDict)
    _unverified: int = 0
    _unsigned: Counter[str] = field(default_factory=Counter)
    _drifts: deque[dict[str, Any]] = field(default_factory=deque)
    _models: OrderedDict[str, deque[dict[str, Any]]] = field(default_factory=OrderedDict)  # LRU order
    _window_views: dict[tuple[str, int], tuple[int, dict[str, Any] | None]] = field(default_factory=dict)
    #: (attribute, why) -> estimate records skipped: written under other mechanism parameters than the policy's
    _skipped: Counter[tuple[str, str]] = field(default_factory=Counter)

    def __post_init__(self) -> None:
        self._receipts = deque(maxlen=self.receipts_kept)
        self._drifts = deque(maxlen=self.receipts_kept)

    # --- ingest --------------------------------------------------------------------------------
    def set_truth(self, truth: Truth | None) -> None:
        self.truth = truth
        self.version += 1

    def malformed_record(self) -> None:
        self.malformed += 1
        self.version += 1

    def add_metrics(self, snap: Any) -> None:
        """One ``ops.metrics`` snapshot."""
        if not isinstance(snap, dict) or _opt_num(snap.get("ts")) is None:
            self.malformed_record()
            return
        ts = _num(snap["ts"])
        if ts * 1000 < self.since_ms:
            return
        worker = _name(snap.get("worker"))
        key = (worker, str(snap.get("host", ""))[:128], _int(snap.get("pid")))
        prev = self._instances.get(key)
        if prev is not None and ts <= _num(prev.snap.get("ts")):
            return  # a re-delivered or older snapshot
        if prev is not None and _went_back(_totals(prev.snap), _totals(snap)):
            self._retire(key)  # the same host and pid, counting from 0: a new process
            prev = None
        elif prev is None and key in self._retired_keys:
            gone_at, counts = self._retired_keys[key]
            if ts <= gone_at:
                return  # a late snapshot of an instance whose final counts are kept
            if not _went_back(counts, _totals(snap)):  # the same process, back after a silence
                del self._retired_keys[key]
                self._retired[worker].subtract(counts)
        window = prev.window if prev is not None else RateWindow(self.rate_window)
        window.add(ts, _counters(snap))
        rates = window.rates() or own_rates(snap)
        self._put_instance(key, _Instance(snap, rates, window))
        live = self._live(worker)
        rates_now = [i.rates_at(ts) for i in live]
        point = {"ts": ts, **{k: round(sum(r[k] for r in rates_now), 2) for k in _RATE_KEYS}}
        series = self._series.get(worker)
        if series is None:
            series = self._series[worker] = deque(maxlen=self.history)
        self._series.move_to_end(worker)
        series.append(point)
        self._forget_workers()
        self.records["metrics"] += 1
        self.version += 1

    def add_frequency(self, rec: Any) -> None:
        """One ``analytics.frequencies`` estimate record (one attribute, one window, one partition)."""
        try:
            ok = rec.get("schema") == ESTIMATE_SCHEMA and rec.get("attribute") in self.policy.by_name
            start, end = int(rec["window"]["start_ms"]), int(rec["window"]["end_ms"])
            int(rec["n"])
        except (AttributeError, KeyError, TypeError, ValueError):
            ok = False
        if not ok:
            self.malformed_record()
            return
        if end < self.since_ms:
            return
        why = param_mismatch(self.policy.by_name[rec["attribute"]], rec)
        if why is not None:  # written under other parameters: cannot be merged with this policy's, shown why
            self._skipped[(rec["attribute"], why)] += 1
            self.records["frequencies"] += 1
            self.version += 1
            return
        windows = self._windows.setdefault(rec["attribute"], OrderedDict())
        windows.setdefault(start, {})[source_of(rec)] = rec
        self._window_views.pop((rec["attribute"], start), None)
        if len(windows) > self.windows_kept:
            for old in sorted(windows)[: len(windows) - self.windows_kept]:
                del windows[old]
                self._window_views.pop((rec["attribute"], old), None)
        self.records["frequencies"] += 1
        self.version += 1

    def add_audit(self, rec: Any, verified: bool | None) -> None:
        """One ``ops.audit`` record; ``verified``: its signature checked (None: no key to check it, or
        a record that is not a receipt and carries no signature: counted as unsigned by design)."""
        if not isinstance(rec, dict):
            self.malformed_record()
            return
        at = _time_of(rec.get("at"))
        if at is not None and at * 1000 < self.since_ms:
            return
        self.records["audit"] += 1
        self.version += 1
        kind = _name(rec.get("kind"))
        if verified is False:
            self._unverified += 1
        elif verified is None and kind not in RECEIPT_KINDS and "signature" not in rec:
            self._unsigned[kind if kind in self._unsigned or len(self._unsigned) < self.names_kept else "other"] += 1
        rid = rec.get("receipt_id")
        if verified is not False and isinstance(rid, str):
            if rid in self._seen_receipts:
                return  # a re-delivered receipt
            self._seen_receipts[rid] = None
            if len(self._seen_receipts) > 200_000:
                self._seen_receipts.popitem(last=False)
        reason = rec.get("reason")
        self._audit[self._row((kind, _name(reason) if reason is not None else "-"))] += 1
        if kind in ("erasure", "erasure_rejected"):
            request = rec.get("request_id")
            self._receipts.append({
                "at": rec.get("at") if at is not None else None,
                "kind": kind,
                "status": _name(rec.get("status")) if rec.get("status") is not None else None,
                "error": _name(rec.get("error")) if rec.get("error") is not None else None,
                "keys_shredded": _int(rec.get("keys_shredded")),
                "request_id": request if isinstance(request, str) and _REQUEST_ID.fullmatch(request) else
                ("other" if request is not None else None),
                "receipt_id": rid[:16] if isinstance(rid, str) and re.fullmatch(r"[0-9a-f]{64}", rid) else None,
                "verified": verified,
            })
        elif kind == "drift":
            self._drifts.append({
                "at": rec.get("at") if at is not None else None, "ts": at, "model": _name(rec.get("model")),
                "metric": _name(rec.get("metric")), "examples_seen": _int(rec.get("examples_seen")),
                "detections": _int(rec.get("detections")), "verified": verified,
                "signed": "signature" in rec,
            })

    def add_snapshot(self, header: Any, verified: bool | None) -> None:
        """One ``models.snapshots`` record's public header; ``verified``: its signature checked."""
        if not isinstance(header, dict) or _time_of(header.get("created_at")) is None:
            self.malformed_record()
            return
        ts = _time_of(header["created_at"])
        assert ts is not None
        if ts * 1000 < self.since_ms:
            return
        name = _name(header.get("name"))
        series = self._models.get(name)
        if series is None:
            series = self._models[name] = deque(maxlen=self.history)
            while len(self._models) > self.names_kept:  # a flood of model names: forget the least recent
                self._models.popitem(last=False)
        self._models.move_to_end(name)
        if any(p["created_at"] == header["created_at"] and p["examples_seen"] == _int(header.get("examples_seen"))
               for p in series):
            return  # a re-delivered snapshot
        raw_metrics = header.get("metrics")
        metrics: dict[str, Any] = raw_metrics if isinstance(raw_metrics, dict) else {}
        key_id = header.get("key_id")
        point = {"ts": ts, "created_at": header["created_at"], "examples_seen": _int(header.get("examples_seen")),
                 "roc_auc": _opt_num(metrics.get("roc_auc")), "log_loss": _opt_num(metrics.get("log_loss")),
                 "drifts": int(_num(metrics.get("drifts"))),
                 "key_id": key_id if isinstance(key_id, str) and _NAME.fullmatch(key_id) else None,
                 "verified": verified}
        series.append(point)
        if len(series) > 1 and series[-2]["ts"] > ts:
            ordered = sorted(series, key=lambda p: p["ts"])
            series.clear()
            series.extend(ordered)
        self.records["snapshots"] += 1
        self.version += 1

    # --- bounds ---------------------------------------------------------------------------------
    def _put_instance(self, key: tuple[str, str, int], inst: _Instance) -> None:
        """Store an instance (most recent last); forget its worker's gone instances (left behind by a
        restart) and, beyond ``instances_kept``, the least recently updated instances."""
        self._instances[key] = inst
        self._instances.move_to_end(key)
        mine = self._by_worker.setdefault(key[0], {})
        mine[key] = inst
        newest = max(_num(i.snap.get("ts")) for i in mine.values())
        for k in [k for k, i in mine.items() if newest - _num(i.snap.get("ts")) > self._window(i)]:
            self._retire(k)
        while len(self._instances) > self.instances_kept:
            self._retire(next(iter(self._instances)))

    def _retire(self, key: tuple[str, str, int]) -> None:
        """Forget an instance, its final counts kept in its worker's totals."""
        inst = self._instances.get(key)
        if inst is not None:
            counts = _totals(inst.snap)
            self._retired.setdefault(key[0], Counter()).update(counts)
            self._retired_keys[key] = (_num(inst.snap.get("ts")), counts)
            self._retired_keys.move_to_end(key)
            while len(self._retired_keys) > self.instances_kept:
                self._retired_keys.popitem(last=False)
        self._drop_instance(key)

    def _drop_instance(self, key: tuple[str, str, int]) -> None:
        self._instances.pop(key, None)
        mine = self._by_worker.get(key[0])
        if mine is not None:
            mine.pop(key, None)
            if not mine:
                del self._by_worker[key[0]]

    def _forget_workers(self) -> None:
        """Beyond ``names_kept`` worker names besides the four, forget the least recently seen one
        (its series and instances)."""
        others = [w for w in self._series if w not in _WORKER_ORDER]  # LRU order, at most names_kept + 1
        for w in others[: max(0, len(others) - self.names_kept)]:
            del self._series[w]
            self._retired.pop(w, None)
            for k in list(self._by_worker.get(w, {})):
                self._drop_instance(k)
            for k in [k for k in self._retired_keys if k[0] == w]:
                del self._retired_keys[k]

    def _row(self, row: tuple[str, str]) -> tuple[str, str]:
        """An audit row, or beyond ``names_kept`` rows its fold: ``(kind, other)`` for a receipt or
        drift kind, else ``(other, other)``."""
        if row in self._audit or len(self._audit) < self.names_kept:
            return row
        return (row[0], "other") if row[0] in _KNOWN_KINDS else ("other", "other")

    # --- derived -------------------------------------------------------------------------------
    def _live(self, worker: str) -> list[_Instance]:
        mine = list(self._by_worker.get(worker, {}).values())
        if not mine:
            return []
        newest = max(_num(i.snap.get("ts")) for i in mine)
        return [i for i in mine if newest - _num(i.snap.get("ts")) <= self._window(i)]

    def _window(self, inst: _Instance) -> float:
        return self.live_seconds if self.live_seconds is not None else live_window(inst.snap)

    def workers(self) -> list[str]:
        return sorted(self._by_worker, key=lambda w: (_WORKER_ORDER.get(w, 9), w))

    def view(self, now: float) -> dict[str, Any]:
        """The page's JSON (see the module docstring)."""
        return {
            "version": self.version,
            "now": round(now, 3),
            "since_ms": self.since_ms,
            "records": dict(self.records),
            "malformed": self.malformed,
            "pipeline": self._pipeline(now),
            "estimates": self._estimates(),
            "privacy": self._privacy(),
            "model": self._model(),
        }

    def _pipeline(self, now: float) -> dict[str, Any]:
        rows = []
        for worker in self.workers():
            for inst in sorted(self._live(worker), key=lambda i: _int(i.snap.get("pid"))):
                s = inst.snap
                status = liveness(s, now)
                ready = bool(s.get("ready")) and status == "live"
                reason = not_live_reason(s, now)
                if not ready and reason is None:
                    reason = published_reason(s)
                row = {
                    "worker": worker, "pid": _int(s.get("pid")), "age_s": round(max(0.0, now - _num(s.get("ts"))), 1),
                    "status": status, "events_in": _int(s.get("events_in")), "in_unit": in_unit(worker),
                    "events_out": _counts(s.get("events_out")), "out": {k: n for k, n in out_parts(s).items() if n},
                    "lag": _int(s.get("lag_total")), "lag_by_partition": _counts(s.get("lag")),
                    "ready": ready, "reason": reason, "rates": inst.rates_at(now),
                }
                if worker == "learner":
                    row["examples_in_model"] = examples_learned(s)
                    instance, agg = s.get("instance"), s.get("aggregator")
                    row["instance"] = _name(instance) if instance is not None else None
                    row["aggregating"] = bool(agg.get("aggregating")) if isinstance(agg, dict) else None
                rows.append(row)
        gateways = self._live("gateway")
        totals = Counter(self._retired.get("gateway", Counter()))
        for i in gateways:
            totals.update(_totals(i.snap))
        series = list(self._series.get("gateway", ()))
        current = {"ts": round(now, 3), **{k: round(sum(i.rates_at(now)[k] for i in gateways), 2) for k in _RATE_KEYS}}
        if series and all(liveness(i.snap, now) != "live" for i in gateways) and series[-1]["ts"] < now:
            series.append(current)  # the chart falls to 0 once no gateway is live
        return {
            "workers": rows,
            "events_in": totals["events_in"],
            "protected": totals["out.protected"],
            "dead_lettered": totals["out.dlq"],
            "dlq_by_reason": dict(sorted(((k[4:], n) for k, n in totals.items() if k.startswith("dlq.") and n),
                                         key=lambda kv: (-kv[1], kv[0]))),
            "rates": current if gateways else None,
            "series": series,
        }

    def _estimates(self) -> dict[str, Any]:
        attrs = []
        for attr in self.policy.attributes:
            windows = self._windows.get(attr.name)
            if not windows:
                continue
            starts = sorted(windows)
            entry: dict[str, Any] = {"name": attr.name, "kind": attr.kind, "mechanism": attr.mechanism,
                                     "eps_inf": attr.epsilon,
                                     "merged": merged_view(self.policy, [r for s in starts for r in windows[s].values()], self.truth)}
            if attr.kind == "categorical":
                entry["windows"] = [v for s in starts[-self.windows_shown:]
                                    if (v := self._window_view(attr.name, s)) is not None]
            else:
                entry["series"] = [v for s in starts if (v := self._window_view(attr.name, s)) is not None]
            attrs.append(entry)
        skipped = [{"attribute": a, "why": why, "records": n} for (a, why), n in sorted(self._skipped.items())]
        return {"attributes": attrs, "truth": self.truth.as_dict() if self.truth is not None else None,
                "skipped": skipped}

    def _window_view(self, attribute: str, start: int) -> dict[str, Any] | None:
        """One window's merged view, computed again only when a record of it arrived."""
        records = list(self._windows[attribute][start].values())
        cached = self._window_views.get((attribute, start))
        if cached is None:
            cached = (len(records), merged_view(self.policy, records))
            self._window_views[(attribute, start)] = cached
        return cached[1]

    def _privacy(self) -> dict[str, Any]:
        ldp: dict[str, dict[str, float]] = {}
        histogram: dict[str, Any] | None = None
        over_budget = 0
        privatizers = self._live("privatizer")
        for inst in privatizers:
            over_budget += _int(inst.snap.get("ldp_over_budget"))
            rows = inst.snap.get("ldp")
            if isinstance(rows, dict):
                for attr, row in rows.items():
                    if not isinstance(row, dict):
                        continue
                    acc = ldp.setdefault(_name(attr), {"reports": 0, "epsilon_spent": 0.0, "suppressed": 0})
                    acc["reports"] += _int(row.get("reports"))
                    acc["epsilon_spent"] = round(acc["epsilon_spent"] + _num(row.get("epsilon_spent")), 6)
                    acc["suppressed"] += _int(row.get("suppressed"))
            histogram = _add_histograms(histogram, inst.snap.get("ldp_person_epsilon"))
        shredders = self._live("shredder")
        return {
            "ldp": dict(sorted(ldp.items())),
            "suppressed": sum(int(r["suppressed"]) for r in ldp.values()),
            "over_budget": over_budget,
            "privatizers": len(privatizers),
            "person_epsilon": histogram,
            "keys_shredded": sum_counts(_counts(i.snap.get("keys_shredded")) for i in shredders),
            "shred_due": sum(_int(i.snap.get("shred_due")) for i in shredders),
            "shred_overdue_seconds": max((_num(i.snap.get("shred_overdue_seconds")) for i in shredders), default=0.0),
            "receipts": list(reversed(self._receipts)),
            "audit": [{"kind": k, "reason": r, "count": n}
                      for (k, r), n in sorted(self._audit.items(), key=lambda kv: (-kv[1], kv[0]))],
            "unverified": self._unverified,
            "unsigned": dict(sorted(self._unsigned.items())),
        }

    def _model(self) -> dict[str, Any]:
        models = []
        for name in sorted(self._models):
            series = list(self._models[name])
            models.append({"name": name, "series": series, "versions": list(reversed(series[-10:]))})
        latest: dict[str, dict[str, float]] = {}
        for inst in self._live("learner"):
            ms = inst.snap.get("models")
            if isinstance(ms, dict):
                for name, metrics in ms.items():
                    if isinstance(metrics, dict):
                        latest[_name(name)] = {_name(k): _num(v) for k, v in metrics.items()}
        return {"models": models, "drifts": list(reversed(self._drifts)), "latest": latest}


def _add_histograms(acc: dict[str, Any] | None, h: Any) -> dict[str, Any] | None:
    """Sum the ε-per-person histograms of several privatizers (same epoch and bins; a newer epoch wins)."""
    if not isinstance(h, dict) or not isinstance(h.get("counts"), list):
        return acc
    counts = [_int(c) for c in h["counts"]]
    mine = {"epoch": _int(h.get("epoch")), "cap": _num(h.get("cap")), "bin_width": _num(h.get("bin_width")),
            "counts": counts, "people": _int(h.get("people")), "untracked": _int(h.get("untracked"))}
    if acc is None or mine["epoch"] > acc["epoch"]:
        return mine
    if mine["epoch"] < acc["epoch"] or len(counts) != len(acc["counts"]) or mine["bin_width"] != acc["bin_width"]:
        return acc
    return dict(acc, counts=[a + b for a, b in zip(acc["counts"], counts, strict=True)],
                people=acc["people"] + mine["people"], untracked=acc["untracked"] + mine["untracked"])
