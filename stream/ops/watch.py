"""``streamgate ops watch``: what the on-call engineer looks at.

Reads three topics from their beginning with one :class:`stream.kafka.TopicReader` (no group,
nothing committed): ``ops.metrics`` (latest snapshot per worker), ``ops.audit`` (receipts
counted by ``kind`` and ``reason``) and ``clicks.dlq`` (dead letters counted by
``reason``). :class:`WatchState` is the pure part (ingest records, render); the
functions below do the Kafka reading.

Memory is bounded whatever names the records carry: the :data:`INSTANCES_KEPT` most recently
updated worker instances, and :data:`NAMES_KEPT` dead-letter reasons and audit rows (counts beyond
them are folded into ``other``, so the totals stay true; receipt and drift kinds keep a row of
their own). Rendering reads each kept instance once.

Nothing from a record is printed unless it passes a strict pattern (names, reason
codes, numbers; a worker's not-ready reason: one short line of safe characters, no
token, no ``@``): a malformed or hostile record shows up as ``other``, never as
its content.

A worker's ``ready`` (and ``reason``) is what its ``/readyz`` computed when the snapshot
was taken (:meth:`stream.ops.worker.OpsHandle.status`).
"""

from __future__ import annotations

import logging
import re
import time
from collections import Counter, OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import orjson
from confluent_kafka import Message

from stream.config import Settings
from stream.kafka import ReadMode, TopicReader
from stream.ops.live import (
    RateWindow,
    examples_learned,
    in_unit,
    live_window,
    liveness,
    not_live_reason,
    out_parts,
    published_reason,
    safe_reason,
)

__all__ = ["INSTANCES_KEPT", "NAMES_KEPT", "WatchState", "feed", "safe_reason", "watch_reader"]

log = logging.getLogger("streamgate.ops.watch")

_NAME = re.compile(r"[a-z0-9_.-]{1,64}")
_TOKENISH = re.compile(r"tk\d+_")
_WORKER_ORDER = {"gateway": 0, "privatizer": 1, "learner": 2, "shredder": 3}
_ZERO = {"in": 0.0, "out": 0.0, "dlq": 0.0}
INSTANCES_KEPT = 256  # worker instances kept (the least recently updated one forgotten)
NAMES_KEPT = 32  # dead-letter reasons and audit rows counted by name; the rest as ``other``
_KNOWN_KINDS = frozenset({"key_shredded", "erasure", "erasure_rejected", "drift"})  # keep a row of their own


def _rate_counters(snap: dict[str, Any]) -> dict[str, int]:
    out = _counts(snap.get("events_out"))
    return {"in": _int(snap.get("events_in")), "out": sum(out.values()), "dlq": out.get("dlq", 0)}


def _key(words: str) -> str:
    return words.replace(" ", "_")


def _name(value: Any) -> str:
    """A printable name (reason code, kind, worker, attribute), else ``other``: never a token or a value."""
    ok = isinstance(value, str) and _NAME.fullmatch(value) and not _TOKENISH.match(value)
    return value if ok else "other"


def _num(value: Any) -> float:
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else 0.0


def _int(value: Any) -> int:
    return int(value) if isinstance(value, int) and not isinstance(value, bool) else 0


def _counts(value: Any) -> dict[str, int]:
    out: Counter[str] = Counter()
    if isinstance(value, dict):
        for k, v in value.items():
            out[_name(k)] += _int(v)
    return dict(out)


#: model metrics that are counts: printed as integers
_COUNT_METRICS = frozenset({"examples_seen", "drifts", "global_version", "version", "pending"})


def _metric_text(metric: str, value: Any) -> str:
    v = _num(value)
    return str(int(v)) if metric in _COUNT_METRICS and v.is_integer() else f"{v:.4f}"


def _reason_of(snap: dict[str, Any]) -> str | None:
    """Why a worker was not ready: its published reason (printed only if it is a safe line,
    exactly as :func:`safe_reason` keeps it), else the failed checks by name."""
    if isinstance(snap.get("reason"), str):
        return published_reason(snap)
    checks = snap.get("checks")
    if isinstance(checks, dict):
        failed = sorted({_name(k) for k, v in checks.items() if v is False})
        if failed:
            return "failed checks: " + ", ".join(failed)
    return None


@dataclass
class _Instance:
    snap: dict[str, Any]
    window: RateWindow = field(default_factory=RateWindow)


@dataclass
class WatchState:
    """Everything ``ops watch`` shows, built from records of the three topics."""

    instances: OrderedDict[tuple[str, str, int], _Instance] = field(default_factory=OrderedDict)  # LRU order
    dlq: Counter[str] = field(default_factory=Counter)
    audit: Counter[tuple[str, str]] = field(default_factory=Counter)
    records: Counter[str] = field(default_factory=Counter)  # per source topic kind
    malformed: int = 0

    # --- ingest -----------------------------------------------------------------------
    def add_metrics(self, value: bytes | None) -> None:
        snap = self._load(value)
        if snap is None:
            return
        self.records["metrics"] += 1
        worker = _name(snap.get("worker"))
        key = (worker, str(snap.get("host", ""))[:128], _int(snap.get("pid")))
        inst = self.instances.setdefault(key, _Instance(snap))
        self.instances.move_to_end(key)
        while len(self.instances) > INSTANCES_KEPT:
            self.instances.popitem(last=False)
        ts = _num(snap.get("ts"))
        if ts >= _num(inst.snap.get("ts")):
            inst.snap = snap
        inst.window.add(ts, _rate_counters(snap))

    @property
    def workers(self) -> dict[str, dict[str, Any]]:
        """The newest snapshot per worker name."""
        out: dict[str, dict[str, Any]] = {}
        for (worker, _h, _p), inst in self.instances.items():
            if worker not in out or _num(inst.snap.get("ts")) >= _num(out[worker].get("ts")):
                out[worker] = inst.snap
        return out

    def _live(self) -> list[tuple[str, _Instance]]:
        """The instances not left behind by a restart (:func:`stream.ops.live.live_window` of their
        worker's newest)."""
        newest = {w: _num(s.get("ts")) for w, s in self.workers.items()}
        return sorted(((w, i) for (w, _h, _p), i in self.instances.items()
                       if newest[w] - _num(i.snap.get("ts")) <= live_window(i.snap)),
                      key=lambda wi: (_WORKER_ORDER.get(wi[0], 9), wi[0], str(wi[1].snap.get("instance") or ""),
                                      _int(wi[1].snap.get("pid"))))

    def add_dlq(self, value: bytes | None) -> None:
        rec = self._load(value)
        if rec is None:
            return
        self.records["dlq"] += 1
        reason = _name(rec.get("reason"))
        self.dlq[reason if reason in self.dlq or len(self.dlq) < NAMES_KEPT else "other"] += 1

    def add_audit(self, value: bytes | None) -> None:
        rec = self._load(value)
        if rec is None:
            return
        self.records["audit"] += 1
        reason = rec.get("reason")
        row = (_name(rec.get("kind")), _name(reason) if reason is not None else "-")
        if row not in self.audit and len(self.audit) >= NAMES_KEPT:
            row = (row[0], "other") if row[0] in _KNOWN_KINDS else ("other", "other")
        self.audit[row] += 1

    def _load(self, value: bytes | None) -> dict[str, Any] | None:
        try:
            rec = orjson.loads(value or b"")
        except orjson.JSONDecodeError:
            rec = None
        if not isinstance(rec, dict):
            self.malformed += 1
            return None
        return rec

    # --- derived ----------------------------------------------------------------------
    def worker_rows(self, now: float | None = None) -> list[dict[str, Any]]:
        """One row per worker instance from its newest snapshot (all values sanitized). An instance
        that stopped, or sent nothing for 3 intervals, is not ready and its rates are 0
        (:mod:`stream.ops.live`); rates are over the last 30 s of its snapshots."""
        now = time.time() if now is None else now
        rows: list[dict[str, Any]] = []
        for worker, inst in self._live():
            s = inst.snap
            status = liveness(s, now)
            raw_rates = s.get("rates")
            own: dict[str, Any] = raw_rates if isinstance(raw_rates, dict) else {}
            rates = inst.window.rates() or {k: _num(own.get(k)) for k in _ZERO}
            if status != "live":
                rates = dict(_ZERO)
            lag = _counts(s.get("lag"))
            ready = bool(s.get("ready")) and status == "live"
            instance, agg = s.get("instance"), s.get("aggregator")
            rows.append({
                "worker": worker,
                "instance": _name(instance) if instance is not None else None,
                "aggregating": bool(agg.get("aggregating")) if isinstance(agg, dict) else None,
                "status": status,
                "age_s": round(max(0.0, now - _num(s.get("ts"))), 1) if s.get("ts") else None,
                "in_rate": rates["in"],
                "out_rate": rates["out"],
                "dlq_rate": rates["dlq"],
                "in_unit": in_unit(worker),
                "events_in": _int(s.get("events_in")),
                "events_out": sum(_counts(s.get("events_out")).values()),
                "out": {k: n for k, n in out_parts(s).items() if n},
                "examples_in_model": examples_learned(s) if worker == "learner" else None,
                "dlq": _counts(s.get("dlq")),
                "lag": _int(s.get("lag_total")) if "lag_total" in s else sum(lag.values()),
                "lag_by_partition": lag,
                "redis_errors": _int(s.get("redis_errors")),
                "keys_shredded": _counts(s.get("keys_shredded")),
                "shred_due": _int(s.get("shred_due")),
                "ready": ready,
                "reason": None if ready else (not_live_reason(s, now) or _reason_of(s)),
            })
        return rows

    def ldp_rows(self) -> list[tuple[str, int, float, int]]:
        """(attribute, reports, epsilon spent, suppressed), added up over the instances shown (as the
        console adds them)."""
        acc: dict[str, list[Any]] = {}
        for _worker, inst in self._live():
            ldp = inst.snap.get("ldp")
            if not isinstance(ldp, dict):
                continue
            for attr, row in ldp.items():
                if isinstance(row, dict):
                    a = acc.setdefault(_name(attr), [0, 0.0, 0])
                    a[0] += _int(row.get("reports"))
                    a[1] = round(a[1] + _num(row.get("epsilon_spent")), 6)
                    a[2] += _int(row.get("suppressed"))
        return [(attr, n, eps, sup) for attr, (n, eps, sup) in sorted(acc.items())]

    def over_budget(self) -> int | None:
        """Events not reported because the person's ledger was at its cap (``ldp_over_budget``), added
        up over the privatizers shown; None when no snapshot shown carries it."""
        counts = [_int(inst.snap.get("ldp_over_budget")) for w, inst in self._live()
                  if w == "privatizer" and "ldp_over_budget" in inst.snap]
        return sum(counts) if counts else None

    def model_rows(self) -> list[tuple[str, str, list[tuple[str, str]]]]:
        """(instance label, model, [(metric, value as text)]): one row per learner instance and model
        (a federation's learners each have theirs; counts printed as integers)."""
        rows: list[tuple[str, str, list[tuple[str, str]]]] = []
        for worker, inst in self._live():
            s = inst.snap
            models = s.get("models")
            if not isinstance(models, dict):
                continue
            instance = s.get("instance")
            label = f"{worker} {_name(instance)}" if instance is not None else f"{worker} pid {_int(s.get('pid'))}"
            for model, metrics in sorted(models.items()):
                if isinstance(metrics, dict):
                    rows.append((label, _name(model), [(_name(k), _metric_text(_name(k), v))
                                                       for k, v in sorted(metrics.items())]))
        return rows

    # --- rendering ----------------------------------------------------------------------
    @staticmethod
    def _written(r: dict[str, Any]) -> str:
        """``events_out=N`` for the gateway (protected and dead-lettered events), else the records
        written by what they are (``feature_reports_out=``, ``examples_out=``, ``estimates_out=``, ...)."""
        if r["worker"] == "gateway" or not r["out"]:
            return f"events_out={r['events_out']}"
        return " ".join(f"{_key(k)}_out={n}" for k, n in r["out"].items())

    def render_plain(self, now: float | None = None) -> str:
        """The ``--once`` output: stable, line-oriented, greppable."""
        now = time.time() if now is None else now
        stamp = datetime.fromtimestamp(now, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        lines = [f"streamgate ops watch  {stamp}", ""]
        rows = self.worker_rows(now)
        lines.append(f"workers ({len(rows)})")
        if not rows:
            lines.append("  (no snapshot on the metrics topic yet)")
        for r in rows:
            lines.append(
                f"  {r['worker']:<11} in={r['in_rate']:.1f}/s out={r['out_rate']:.1f}/s dlq={r['dlq_rate']:.1f}/s"
                f" {_key(r['in_unit'])}_in={r['events_in']} {self._written(r)} lag={r['lag']}"
                f" redis_errors={r['redis_errors']} ready={'yes' if r['ready'] else 'no'}"
                + (f" age={r['age_s']}s" if r["age_s"] is not None else "")
                + (f" status={r['status']}" if r["status"] != "live" else "")
            )
            if r["instance"] is not None or r["aggregating"] is not None:
                lines.append(f"    instance: {r['instance'] or '-'}"
                             + ("" if r["aggregating"] is None else
                                f", aggregator: {'yes (merges the updates)' if r['aggregating'] else 'standby'}"))
            if r["examples_in_model"] is not None:
                lines.append(f"    {_key(r['in_unit'])}_in are feature reports and examples;"
                             f" examples in the model: {r['examples_in_model']}")
            if r["reason"]:
                lines.append(f"    not ready: {r['reason']}")
            if r["dlq"]:
                lines.append("    dead letters: " + ", ".join(f"{k}={v}" for k, v in sorted(r["dlq"].items())))
            if r["lag_by_partition"]:
                lines.append("    lag by partition: " + ", ".join(
                    f"{k}={v}" for k, v in sorted(r["lag_by_partition"].items(), key=lambda kv: kv[0])))
            if r["keys_shredded"] or r["shred_due"]:
                lines.append("    keys shredded: " + ", ".join(f"{k}={v}" for k, v in sorted(r["keys_shredded"].items()))
                             + f" (due, not yet shredded: {r['shred_due']})")
        lines += ["", f"dead-letter topic: {sum(self.dlq.values())} records"]
        lines += [f"  {reason:<17} {n}" for reason, n in sorted(self.dlq.items(), key=lambda kv: (-kv[1], kv[0]))]
        lines += ["", f"audit topic: {sum(self.audit.values())} records (receipts and drift records)"]
        lines += [f"  {kind:<17} {reason:<12} {n}"
                  for (kind, reason), n in sorted(self.audit.items(), key=lambda kv: (-kv[1], kv[0]))]
        ldp, over = self.ldp_rows(), self.over_budget()
        if ldp or over:
            lines += ["", "privacy budget (attribute: reports, epsilon spent, suppressed; all instances added up)"]
            lines += [f"  {attr:<17} reports={n} epsilon_spent={eps:.3f} suppressed={sup}" for attr, n, eps, sup in ldp]
            if over is not None:
                lines.append(f"  not reported: over_budget={over} (events of people whose ledger was at its cap)")
        models = self.model_rows()
        if models:
            lines += ["", "models (per learner instance)"]
            lines += [f"  {model:<17} {label}: " + " ".join(f"{k}={v}" for k, v in metrics)
                      for label, model, metrics in models]
        if self.malformed:
            lines += ["", f"({self.malformed} records could not be parsed)"]
        return "\n".join(lines) + "\n"

    def render_rich(self, now: float | None = None) -> Any:
        """A rich renderable for the live view."""
        from rich.console import Group
        from rich.markup import escape
        from rich.table import Table

        now = time.time() if now is None else now
        t = Table(title="workers", expand=True)
        for col in ("worker", "in/s", "out/s", "dlq/s", "read", "written", "lag", "redis err", "shredded", "ready", "age"):
            t.add_column(col, justify="left" if col in ("worker", "read", "written") else "right")
        for r in self.worker_rows(now):
            name = r["worker"] + (f" {r['instance']}" if r["instance"] else "") + (" (aggregator)" if r["aggregating"] else "")
            read = f"{r['events_in']:,} {r['in_unit']}" + (
                f" ({r['examples_in_model']:,} examples in the model)" if r["examples_in_model"] is not None else "")
            written = ", ".join(f"{n:,} {k}" for k, n in r["out"].items()) or "-"
            t.add_row(name, f"{r['in_rate']:,.1f}", f"{r['out_rate']:,.1f}", f"{r['dlq_rate']:,.1f}",
                      read, written, f"{r['lag']:,}", str(r["redis_errors"]),
                      str(sum(r["keys_shredded"].values())),
                      "yes" if r["ready"] else "[red]no[/red]" + (f" ({escape(r['reason'][:60])})" if r["reason"] else ""),
                      f"{r['age_s']}s" if r["age_s"] is not None else "-")
        d = Table(title=f"dead letters ({sum(self.dlq.values()):,})", expand=True)
        d.add_column("reason")
        d.add_column("records", justify="right")
        for reason, n in self.dlq.most_common():
            d.add_row(reason, f"{n:,}")
        a = Table(title=f"audit ({sum(self.audit.values()):,})", expand=True)
        for col in ("kind", "reason", "records"):
            a.add_column(col, justify="right" if col == "records" else "left")
        for (kind, reason), n in self.audit.most_common(12):
            a.add_row(kind, reason, f"{n:,}")
        parts: list[Any] = [t, d, a]
        ldp, over = self.ldp_rows(), self.over_budget()
        if ldp or over:
            title = "privacy budget" + (f" (not reported, ledger at its cap: {over:,})" if over is not None else "")
            b = Table(title=title, expand=True)
            for col in ("attribute", "reports", "epsilon spent", "suppressed"):
                b.add_column(col, justify="left" if col == "attribute" else "right")
            for attr, n, eps, sup in ldp:
                b.add_row(attr, f"{n:,}", f"{eps:,.2f}", f"{sup:,}")
            parts.append(b)
        models = self.model_rows()
        if models:
            m = Table(title="models", expand=True)
            for col in ("instance", "model", "metric", "value"):
                m.add_column(col)
            for label, model, metrics in models:
                for metric, value in metrics:
                    m.add_row(label, model, metric, value)
            parts.append(m)
        return Group(*parts)


def watch_reader(bootstrap: str, settings: Settings, *, mode: ReadMode = "tail", linger: float = 0.0,
                 stop: Callable[[], bool] | None = None) -> tuple[TopicReader, dict[str, Callable[[WatchState, bytes | None], None]]]:
    """A reader of the three topics from their beginning (topics that do not exist yet are shown as
    empty and assigned once they do) and the ingest function per topic."""
    t = settings.topics
    handlers: dict[str, Callable[[WatchState, bytes | None], None]] = {
        t.metrics: WatchState.add_metrics, t.dlq: WatchState.add_dlq, t.audit: WatchState.add_audit,
    }
    reader = TopicReader(bootstrap, list(handlers), mode=mode, linger=linger, missing="wait", batch=1000,
                         poll_timeout=0.2, client_id="streamgate-ops-watch", stop=stop, logger=log)
    return reader, handlers


def feed(state: WatchState, handlers: dict[str, Callable[[WatchState, bytes | None], None]],
         msgs: list[Message]) -> int:
    """Fold a batch of records into ``state``; returns how many were ingested."""
    n = 0
    for m in msgs:
        handler = handlers.get(m.topic() or "")
        if handler is not None:
            handler(state, m.value())
            n += 1
    return n
