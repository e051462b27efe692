"""Tumbling-window frequency estimation over the feature reports.

Each window (``window_seconds``, aligned to the epoch, by the protected
record's Kafka timestamp) accumulates, per attribute, the number of reports
``n`` and the support count of every domain value (categorical), or the sum
of the unbiased numeric reports (numeric). When it closes it becomes one
``analytics.frequencies`` record per attribute (``schemas/frequency-estimate.v1.json``):

* ``estimate``: the unbiased estimate (Wang et al. 2017) - may be negative or
  above 1 (it is unbiased precisely because it is not clipped);
* ``std_error``: an upper bound on the standard error computed from public
  quantities only (n, the support, the mechanism's parameters and the cap ``m``
  below), and ``ci95`` = estimate +- 1.96 std_error (normal approximation).
  Reports sharing a permanent response (one person, one value) are correlated:
  ``c`` of them have variance ``c s_w^2 + c^2 s_b^2`` where ``s_b^2`` is the variance
  of ``E[report | permanent response]`` (:mod:`stream.ldp.longitudinal`). The
  aggregator counts at most ``m = max_reports_per_memo`` reports per permanent
  response per window (the privatizer knows which share one, in process only;
  every report is still emitted on features.private), so
  ``Var(C_v) <= n [f (P(1-P) + (m-1) s_b,v^2) + (1-f) (Q(1-Q) + (m-1) s_b,o^2)]`` holds
  whatever the persons' behaviour, with ``f`` the estimated frequency clipped
  into [0, 1]. Nothing about how many reports or values a person had is
  published. Merging ``w`` windows multiplies the cap by ``w`` (a person's
  reports may fall in each), so merged error bars stay upper bounds;
* ``projected``: a consistent post-processed view, the Euclidean projection of
  the estimate vector onto the probability simplex (non-negative, sums to 1);
  biased, but closer to the truth in L2 than the raw vector.

Records also carry ``support`` and ``n``, so estimates of several privatizer
instances (each sees its own partitions) or windows merge exactly by summing
(``streamgate estimates`` does). A window closes when the newest record seen
is ``grace_seconds`` past its end, or when nothing arrived for a while and the
clock is past it (idle close); records of an already closed window are
counted as ``late`` and not estimated (their feature reports are emitted).
"""

from __future__ import annotations

import math
import time
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import numpy as np

from stream.ldp.longitudinal import LongitudinalDuchi, LongitudinalGRR, LongitudinalOUE
from stream.ldp.policy import LdpAttribute, LdpPolicy
from stream.ldp.postprocess import project_simplex
from stream.ldp.privatizer import AttributeReport

__all__ = ["ESTIMATE_SCHEMA", "WindowAggregator", "WindowState", "estimate_record", "merge_records"]

ESTIMATE_SCHEMA = "frequency-estimate.v1"


#: Default cap on the reports of one permanent response counted per window.
MAX_REPORTS_PER_MEMO = 4


@dataclass
class _Acc:
    n: int = 0
    support: np.ndarray | None = None
    total: float = 0.0
    clusters: Counter[int] = field(default_factory=Counter)
    capped: int = 0  # reports over the per-memo cap (in process only)


@dataclass
class WindowState:
    start_ms: int
    end_ms: int
    accs: dict[str, _Acc] = field(default_factory=dict)
    #: reports per memo counted before a restore (the in-process memo counts are not persisted)
    restored_m: int = 0


def _iso(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _variance_bound(attr: LdpAttribute, n: int, f: np.ndarray, m: int) -> np.ndarray:
    """Upper bound on Var of the frequency estimates with at most ``m`` reports per permanent response."""
    mech = attr.longitudinal
    assert isinstance(mech, LongitudinalGRR | LongitudinalOUE)
    return mech.frequency_variance(n, f, m)


def estimate_record(attr: LdpAttribute, *, n: int, support: Sequence[int] | np.ndarray | None, total: float | None,
                    start_ms: int, end_ms: int, worker: str | None = None,
                    max_reports_per_memo: int = MAX_REPORTS_PER_MEMO) -> dict[str, Any]:
    """The ``analytics.frequencies`` record of one attribute for one window (or a merge of windows)."""
    rec: dict[str, Any] = {
        "schema": ESTIMATE_SCHEMA,
        "attribute": attr.name,
        "kind": attr.kind,
        **{k: v for k, v in attr.params().items() if k != "m"},
        "mechanism": attr.mechanism,
        "eps_inf": attr.epsilon,
        "window": {"start": _iso(start_ms), "end": _iso(end_ms), "start_ms": start_ms, "end_ms": end_ms},
        "n": n,
    }
    if worker is not None:
        rec["worker"] = worker
    m = max(1, int(max_reports_per_memo))
    rec["max_reports_per_memo"] = m
    if attr.oracle is not None:
        counts = np.asarray(support if support is not None else np.zeros(attr.k), dtype=np.int64)
        rec["support"] = [int(c) for c in counts]
        if n > 0:
            est = attr.oracle.estimate(counts, n)
            var = _variance_bound(attr, n, np.clip(est, 0.0, 1.0), m)
            se = np.sqrt(np.maximum(var, 0.0))
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
            sd = _numeric_std_error(attr, n, mean, m)
            rec["mean"] = round(mean, 6)
            rec["std_error"] = round(sd, 6)
            rec["ci95"] = [round(mean - 1.96 * sd, 6), round(mean + 1.96 * sd, 6)]
            rec["clipped_mean"] = round(min(attr.hi, max(attr.lo, mean)), 6)
    return rec


def _numeric_std_error(attr: LdpAttribute, n: int, mean: float, m: int) -> float:
    """Upper bound on the standard error of the mean: Duchi's per-report variance at the clipped mean
    (an upper bound of its average, being concave in the value) plus ``(m-1)`` times the worst-case
    between-report variance of a shared permanent bit."""
    assert attr.numeric is not None
    mech = attr.longitudinal
    extra = mech.between_variance_unit() if isinstance(mech, LongitudinalDuchi) else 0.0
    half = (attr.hi - attr.lo) / 2.0
    t = float(attr.numeric.to_unit(min(attr.hi, max(attr.lo, mean))))
    var_unit = float(attr.numeric.variance_unit(t)) + (m - 1) * extra
    return math.sqrt(max(var_unit, 0.0) * half * half / n)


def merge_records(policy: LdpPolicy, records: Iterable[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Merge estimate records (several windows and/or workers) per attribute by summing n and
    support (or sums); records whose mechanism parameters differ from the policy's are skipped."""
    grouped: dict[str, list[Mapping[str, Any]]] = {}
    for r in records:
        grouped.setdefault(str(r.get("attribute")), []).append(r)
    out = []
    for attr in policy.attributes:
        recs = [r for r in grouped.get(attr.name, []) if _same_params(attr, r)]
        if not recs:
            continue
        n = sum(int(r["n"]) for r in recs)
        # a person's reports may fall in every merged window: the per-memo cap adds up over windows
        per_window: dict[int, int] = {}
        for r in recs:
            w = int(r["window"]["start_ms"])
            per_window[w] = max(per_window.get(w, 0), int(r.get("max_reports_per_memo", MAX_REPORTS_PER_MEMO)))
        cap = sum(per_window.values())
        start = min(int(r["window"]["start_ms"]) for r in recs)
        end = max(int(r["window"]["end_ms"]) for r in recs)
        if attr.oracle is not None:
            support = np.sum([np.asarray(r["support"], dtype=np.int64) for r in recs], axis=0)
            out.append(estimate_record(attr, n=n, support=support, total=None, start_ms=start, end_ms=end,
                                       max_reports_per_memo=cap))
        else:
            total = sum(float(r.get("sum", 0.0)) for r in recs)
            out.append(estimate_record(attr, n=n, support=None, total=total, start_ms=start, end_ms=end,
                                       max_reports_per_memo=cap))
    return out


def _same_params(attr: LdpAttribute, rec: Mapping[str, Any]) -> bool:
    if rec.get("mechanism") != attr.mechanism or not math.isclose(float(rec.get("eps", -1)), attr.epsilon_1):
        return False
    if attr.oracle is not None:
        return rec.get("k") == attr.k and len(rec.get("support", ())) == attr.k
    return rec.get("lo") == attr.lo and rec.get("hi") == attr.hi


class WindowAggregator:
    """Accumulates attribute reports into tumbling windows and closes them (see the module docstring)."""

    def __init__(self, policy: LdpPolicy, *, window_seconds: float, grace_seconds: float = 5.0,
                 idle_seconds: float = 5.0, clock: Callable[[], float] = time.time,
                 max_reports_per_memo: int = MAX_REPORTS_PER_MEMO) -> None:
        if window_seconds <= 0:
            raise ValueError("window_seconds must be > 0")
        self.policy = policy
        self.window_ms = max(1, round(window_seconds * 1000))
        if max_reports_per_memo < 1:
            raise ValueError("max_reports_per_memo must be >= 1")
        self.max_reports_per_memo = max_reports_per_memo
        self.grace_ms = round(grace_seconds * 1000)
        self.idle_seconds = idle_seconds
        self._clock = clock
        self.windows: dict[int, WindowState] = {}
        self.closed_before_ms = 0  # windows starting before this are closed
        self.watermark_ms = 0
        self.last_add = clock()
        self.late = 0

    def add(self, reports: Sequence[AttributeReport | tuple[int, str, Any, int]]) -> None:
        if not reports:
            return
        self.last_add = self._clock()
        grouped: dict[tuple[int, str], list[Any]] = {}
        w = self.window_ms
        for ts, name, report, cluster in reports:
            start = (ts // w) * w
            if start < self.closed_before_ms:
                self.late += 1
                continue
            grouped.setdefault((start, name), []).append((report, cluster))
            if ts > self.watermark_ms:
                self.watermark_ms = ts
        for (start, name), items in grouped.items():
            win = self.windows.get(start)
            if win is None:
                win = self.windows[start] = WindowState(start, start + w)
            acc = win.accs.setdefault(name, _Acc())
            attr = self.policy.by_name[name]
            cap = self.max_reports_per_memo
            clusters = acc.clusters
            reps = []
            for r, c in items:
                seen = clusters[c]
                if seen >= cap:
                    acc.capped += 1
                    continue
                clusters[c] = seen + 1
                reps.append(r)
            if not reps:
                continue
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

    def records(self, win: WindowState, worker: str | None = None) -> list[dict[str, Any]]:
        out = []
        for attr in self.policy.attributes:
            acc = win.accs.get(attr.name)
            if acc is None:
                continue
            out.append(estimate_record(attr, n=acc.n, support=acc.support, total=acc.total,
                                       start_ms=win.start_ms, end_ms=win.end_ms, worker=worker,
                                       max_reports_per_memo=self.max_reports_per_memo + win.restored_m))
        return out

    # -- crash recovery: the open windows as a plain value ------------------------------------
    def state(self) -> dict[str, Any]:
        """The open windows' counts. Not the in-process memo counts (they would be per-person
        data in a topic): a restored window may count a memo ``m`` more times, and its records
        say so (``max_reports_per_memo`` grows by ``m`` per restore: the error bars stay upper bounds)."""
        return {
            "closed_before_ms": self.closed_before_ms,
            "watermark_ms": self.watermark_ms,
            "late": self.late,
            "windows": [
                {"start_ms": w.start_ms, "end_ms": w.end_ms, "m": self.max_reports_per_memo + w.restored_m,
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
            win = WindowState(int(w["start_ms"]), int(w["end_ms"]), restored_m=int(w.get("m", self.max_reports_per_memo)))
            for name, a in w.get("accs", {}).items():
                if name not in self.policy.by_name:
                    continue
                sup = a.get("support")
                win.accs[name] = _Acc(n=int(a["n"]), total=float(a.get("total", 0.0)),
                                      support=None if sup is None else np.asarray(sup, dtype=np.int64))
            self.windows[win.start_ms] = win
        self.last_add = self._clock()
