"""Tumbling-window frequency estimation over the feature reports.

Each window (``window_seconds``, aligned to the epoch, by the protected
record's Kafka timestamp) accumulates, per attribute, the number of reports
``n`` and the support count of every domain value (categorical), or the sum
of the unbiased numeric reports (numeric). When it closes it becomes one
``analytics.frequencies`` record per attribute (``schemas/frequency-estimate.v1.json``):

* ``estimand``: the population the estimate is unbiased for - the reports the privatizer
  released, i.e. each person's first ``c`` events of the epoch (the person cap,
  :func:`stream.ldp.privatizer.estimand`); the demo, ``estimates`` and the console show the
  truth of that population;
* ``estimate``: the unbiased estimate (Wang et al. 2017) - may be negative or
  above 1 (it is unbiased precisely because it is not clipped);
* ``std_error``: from the closed form of the one-round oracle at ``n`` and the estimated
  frequency clipped into [0, 1]; reports carry independent noise (no memo), so it is the
  standard error of the estimate for the released population (measured: ``streamgate bench
  ldp --coverage``); ``ci95`` = estimate +- 1.96 std_error (normal approximation);
* ``projected``: a consistent post-processed view, the Euclidean projection of
  the estimate vector onto the probability simplex (non-negative, sums to 1);
  biased, but closer to the truth in L2 than the raw vector.

A window is published only if its reports come from at least ``min_people`` distinct people
(counted in process by an in-process number of their ledger; never published): otherwise its
record is withheld (counted in ``withheld``), so no record describes one or two people's events.

Records also carry ``support`` and ``n``, so estimates of several privatizer
instances (each sees its own partitions) or windows merge exactly by summing
(``streamgate estimates`` does, keeping the latest record per ``source`` and window:
:func:`latest_per_source`). A window closes when the newest record seen
is ``grace_seconds`` past its end, or when nothing arrived for a while and the
clock is past it (idle close); records of an already closed window are
counted as ``late`` and not estimated (their feature reports are emitted).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import numpy as np

from stream.ldp.policy import LdpAttribute, LdpPolicy
from stream.ldp.postprocess import project_simplex
from stream.ldp.privatizer import AttributeReport

__all__ = ["ESTIMATE_SCHEMA", "MIN_PEOPLE", "WindowAggregator", "WindowState", "estimate_record", "latest_per_source",
           "merge_records", "param_mismatch", "source_of"]

ESTIMATE_SCHEMA = "frequency-estimate.v1"

#: Default minimum of distinct people behind a published window (and a partial-window record).
MIN_PEOPLE = 10
#: Kept for callers of the memo design (a constant no estimate uses any more).
MAX_REPORTS_PER_MEMO = 1


@dataclass
class _Acc:
    n: int = 0
    support: np.ndarray | None = None
    total: float = 0.0


@dataclass
class WindowState:
    start_ms: int
    end_ms: int
    accs: dict[str, _Acc] = field(default_factory=dict)
    #: in-process numbers of the people whose reports are in the window (never published)
    people: set[int] = field(default_factory=set)
    #: distinct people counted before a restore (the numbers themselves are not persisted)
    restored_people: int = 0

    @property
    def n_people(self) -> int:
        """Distinct people, at least: after a restore, whoever reports again may be someone counted
        before, so the larger of the two counts, never their sum."""
        return max(len(self.people), self.restored_people)


def _iso(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def estimate_record(attr: LdpAttribute, *, n: int, support: Sequence[int] | np.ndarray | None, total: float | None,
                    start_ms: int, end_ms: int, worker: str | None = None, estimand: str | None = None,
                    max_reports_per_memo: int | None = None, source: str | None = None) -> dict[str, Any]:
    """The ``analytics.frequencies`` record of one attribute for one window (or a merge of windows).
    ``max_reports_per_memo`` is accepted for older callers and ignored (reports are independent)."""
    del max_reports_per_memo
    rec: dict[str, Any] = {
        "schema": ESTIMATE_SCHEMA,
        "attribute": attr.name,
        "kind": attr.kind,
        **{k: v for k, v in attr.params().items() if k != "m"},
        "mechanism": attr.mechanism,
        "window": {"start": _iso(start_ms), "end": _iso(end_ms), "start_ms": start_ms, "end_ms": end_ms},
        "n": n,
    }
    if estimand is not None:
        rec["estimand"] = estimand
    if worker is not None:
        rec["worker"] = worker
    if source is not None:
        rec["source"] = source
    if attr.oracle is not None:
        counts = np.asarray(support if support is not None else np.zeros(attr.k), dtype=np.int64)
        rec["support"] = [int(c) for c in counts]
        if n > 0:
            est = attr.oracle.estimate(counts, n)
            var = attr.oracle.variance(n, np.clip(est, 0.0, 1.0))
            se = np.sqrt(np.maximum(np.asarray(var, dtype=np.float64), 0.0))
            proj = project_simplex(est)
            rec["values"] = [
                {
                    "value": v,
                    "estimate": round(float(e), 6),
                    "std_error": round(float(s), 6),
                    "ci95": [round(float(e - 1.96 * s), 6), round(float(e + 1.96 * s), 6)],
                    "projected": round(float(p), 6),
                }
                for v, e, s, p in zip(attr.domain, est, se, proj, strict=True)
            ]
        else:
            rec["values"] = []
        rec["post_processing"] = "simplex_projection"
    else:
        assert attr.numeric is not None
        rec["sum"] = float(total or 0.0)
        if n > 0:
            mean = float(total or 0.0) / n
            sd = _numeric_std_error(attr, n, mean)
            rec["mean"] = round(mean, 6)
            rec["std_error"] = round(sd, 6)
            rec["ci95"] = [round(mean - 1.96 * sd, 6), round(mean + 1.96 * sd, 6)]
            rec["clipped_mean"] = round(min(attr.hi, max(attr.lo, mean)), 6)
    return rec


def _numeric_std_error(attr: LdpAttribute, n: int, mean: float) -> float:
    """Standard error of the mean: Duchi's per-report variance ``B^2 - t^2`` at the clipped mean (an upper
    bound of its average over the values, being concave in the value)."""
    assert attr.numeric is not None
    half = (attr.hi - attr.lo) / 2.0
    t = float(attr.numeric.to_unit(min(attr.hi, max(attr.lo, mean))))
    var_unit = float(attr.numeric.variance_unit(t))
    return math.sqrt(max(var_unit, 0.0) * half * half / n)


def source_of(rec: Mapping[str, Any]) -> str:
    """What publishes a window once: ``source`` (the consumer group and input partition), else the
    ``worker`` of records written before it."""
    return str(rec.get("source") or rec.get("worker"))


def latest_per_source(records: Iterable[Mapping[str, Any]]) -> list[Mapping[str, Any]]:
    """The last record per (source, attribute, window start), in the order first seen: a window
    published again for the same input partition (a restart after a crash that came between the window's
    records and its partial write) replaces the earlier record, whichever process wrote it; records of
    other partitions are kept to be added up."""
    latest: dict[tuple[str, str, int], Mapping[str, Any]] = {}
    for r in records:
        try:
            key = (source_of(r), str(r["attribute"]), int(r["window"]["start_ms"]))
        except (KeyError, TypeError, ValueError):
            continue
        latest[key] = r
    return list(latest.values())


def merge_records(policy: LdpPolicy, records: Iterable[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Merge estimate records (several windows and/or workers) per attribute by summing n and
    support (or sums); records whose mechanism parameters differ from the policy's are skipped
    (:func:`param_mismatch` says why; ``streamgate estimates`` reports them).
    The merged estimand is the union of the records' populations (it names theirs when they agree)."""
    grouped: dict[str, list[Mapping[str, Any]]] = {}
    for r in records:
        grouped.setdefault(str(r.get("attribute")), []).append(r)
    out = []
    for attr in policy.attributes:
        recs = [r for r in grouped.get(attr.name, []) if _same_params(attr, r)]
        if not recs:
            continue
        n = sum(int(r["n"]) for r in recs)
        start = min(int(r["window"]["start_ms"]) for r in recs)
        end = max(int(r["window"]["end_ms"]) for r in recs)
        names = {r.get("estimand") for r in recs}
        est = names.pop() if len(names) == 1 else "the union of the merged windows' populations"
        if attr.oracle is not None:
            support = np.sum([np.asarray(r["support"], dtype=np.int64) for r in recs], axis=0)
            out.append(estimate_record(attr, n=n, support=support, total=None, start_ms=start, end_ms=end,
                                       estimand=est))
        else:
            total = sum(float(r.get("sum", 0.0)) for r in recs)
            out.append(estimate_record(attr, n=n, support=None, total=total, start_ms=start, end_ms=end,
                                       estimand=est))
    return out


def _same_params(attr: LdpAttribute, rec: Mapping[str, Any]) -> bool:
    return param_mismatch(attr, rec) is None


def param_mismatch(attr: LdpAttribute, rec: Mapping[str, Any]) -> str | None:
    """Why :func:`merge_records` skips ``rec`` under ``attr``: its mechanism parameters and the policy's
    where they differ (e.g. ``"eps=2; this policy's: eps=0.5"``); None if they agree."""
    theirs: list[str] = []
    ours: list[str] = []
    if rec.get("mechanism") != attr.mechanism:
        theirs.append(f"mechanism {rec.get('mechanism')}")
        ours.append(f"mechanism {attr.mechanism}")
    eps = rec.get("eps")
    if isinstance(eps, bool) or not isinstance(eps, int | float) or not math.isclose(float(eps), attr.epsilon_1):
        theirs.append(f"eps={eps:g}" if isinstance(eps, int | float) and not isinstance(eps, bool) else f"eps={eps}")
        ours.append(f"eps={attr.epsilon_1:g}")
    if attr.oracle is not None:
        support = rec.get("support")
        if rec.get("k") != attr.k or not isinstance(support, list) or len(support) != attr.k:
            theirs.append(f"k={rec.get('k')}" if isinstance(support, list) else "no support counts")
            ours.append(f"k={attr.k}")
    elif rec.get("lo") != attr.lo or rec.get("hi") != attr.hi:
        theirs.append(f"bounds [{rec.get('lo')}, {rec.get('hi')}]")
        ours.append(f"bounds [{attr.lo:g}, {attr.hi:g}]")
    return f"{', '.join(theirs)}; this policy's: {', '.join(ours)}" if theirs else None


class WindowAggregator:
    """Accumulates attribute reports into tumbling windows and closes them (see the module docstring)."""

    def __init__(self, policy: LdpPolicy, *, window_seconds: float, grace_seconds: float = 5.0,
                 idle_seconds: float = 5.0, clock: Callable[[], float] = time.time,
                 min_people: int = 1, estimand: str | None = None, max_reports_per_memo: int | None = None) -> None:
        if window_seconds <= 0:
            raise ValueError("window_seconds must be > 0")
        if min_people < 1:
            raise ValueError("min_people must be >= 1")
        del max_reports_per_memo
        self.policy = policy
        self.window_ms = max(1, round(window_seconds * 1000))
        self.min_people = min_people
        self.estimand = estimand
        self.grace_ms = round(grace_seconds * 1000)
        self.idle_seconds = idle_seconds
        self._clock = clock
        self.windows: dict[int, WindowState] = {}
        self.closed_before_ms = 0  # windows starting before this are closed
        self.watermark_ms = 0
        self.last_add = clock()
        self.late = 0
        self.withheld = 0  # windows not published: fewer than min_people people

    def add(self, reports: Sequence[AttributeReport | tuple[int, str, Any, int]]) -> None:
        if not reports:
            return
        self.last_add = self._clock()
        grouped: dict[tuple[int, str], list[Any]] = {}
        w = self.window_ms
        for ts, name, report, person in reports:
            start = (ts // w) * w
            if start < self.closed_before_ms:
                self.late += 1
                continue
            win = self.windows.get(start)
            if win is None:
                win = self.windows[start] = WindowState(start, start + w)
            win.people.add(person)
            grouped.setdefault((start, name), []).append(report)
            if ts > self.watermark_ms:
                self.watermark_ms = ts
        for (start, name), reps in grouped.items():
            acc = self.windows[start].accs.setdefault(name, _Acc())
            attr = self.policy.by_name[name]
            acc.n += len(reps)
            if attr.oracle is not None:
                sup = attr.oracle.support(reps)
                acc.support = sup if acc.support is None else acc.support + sup
            else:
                acc.total += float(np.sum(np.asarray(reps, dtype=np.float64)))

    def due(self) -> list[WindowState]:
        """Remove and return the windows that are closed now."""
        now_ms = self._clock() * 1000
        idle = self._clock() - self.last_add >= self.idle_seconds
        out = []
        for start in sorted(self.windows):
            win = self.windows[start]
            if self.watermark_ms >= win.end_ms + self.grace_ms or (idle and now_ms >= win.end_ms + self.grace_ms):
                out.append(self.windows.pop(start))
                self.closed_before_ms = max(self.closed_before_ms, win.end_ms)
        return out

    def drain(self) -> list[WindowState]:
        """Remove and return every open window (graceful stop: publish what we have)."""
        out = [self.windows.pop(s) for s in sorted(self.windows)]
        if out:
            self.closed_before_ms = max(self.closed_before_ms, out[-1].end_ms)
        return out

    def records(self, win: WindowState, worker: str | None = None, source: str | None = None) -> list[dict[str, Any]]:
        """The window's estimate records; none if it holds fewer than ``min_people`` people (withheld)."""
        if win.n_people < self.min_people:
            self.withheld += 1
            return []
        out = []
        for attr in self.policy.attributes:
            acc = win.accs.get(attr.name)
            if acc is None:
                continue
            out.append(estimate_record(attr, n=acc.n, support=acc.support, total=acc.total,
                                       start_ms=win.start_ms, end_ms=win.end_ms, worker=worker,
                                       estimand=self.estimand, source=source))
        return out

    # -- crash recovery: the open windows as a plain value ------------------------------------
    def state(self) -> dict[str, Any]:
        """The open windows' counts (and how many distinct people each holds, not who)."""
        return {
            "closed_before_ms": self.closed_before_ms,
            "watermark_ms": self.watermark_ms,
            "late": self.late,
            "windows": [
                {"start_ms": w.start_ms, "end_ms": w.end_ms, "people": w.n_people,
                 "accs": {name: {"n": a.n, "total": a.total,
                                 "support": None if a.support is None else [int(c) for c in a.support]}
                          for name, a in w.accs.items()}}
                for w in self.windows.values()
            ],
        }

    def restore(self, state: Mapping[str, Any]) -> None:
        """Continue from :meth:`state` (attributes the policy no longer has are dropped)."""
        self.closed_before_ms = int(state.get("closed_before_ms", 0))
        self.watermark_ms = int(state.get("watermark_ms", 0))
        self.late = int(state.get("late", 0))
        self.windows = {}
        for w in state.get("windows", ()):
            win = WindowState(int(w["start_ms"]), int(w["end_ms"]), restored_people=int(w.get("people", 0)))
            for name, a in w.get("accs", {}).items():
                if name not in self.policy.by_name:
                    continue
                sup = a.get("support")
                win.accs[name] = _Acc(n=int(a["n"]), total=float(a.get("total", 0.0)),
                                      support=None if sup is None else np.asarray(sup, dtype=np.int64))
            self.windows[win.start_ms] = win
        self.last_add = self._clock()
