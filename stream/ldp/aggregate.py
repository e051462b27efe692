"""Tumbling-window frequency estimation over the feature reports.

Each window (``window_seconds``, aligned to the epoch, by the protected
record's Kafka timestamp) accumulates, per attribute, the number of reports
``n`` and the support count of every domain value (categorical), or the sum
of the unbiased numeric reports (numeric). When it closes it becomes one
``analytics.frequencies`` record per attribute (``schemas/frequency-estimate.v1.json``):

* ``estimate``: the unbiased estimate (Wang et al. 2017) - may be negative or
  above 1 (it is unbiased precisely because it is not clipped);
* ``std_error``: sqrt of the closed-form variance at n, epsilon and the
  estimated frequency (clipped into [0, 1] for the variance), times the square
  root of the *design effect*, and ``ci95`` = estimate +- 1.96 std_error
  (normal approximation). The design effect: memoization makes the reports of
  one person about one value identical (one random draw counted ``c`` times),
  so the variance of a count is ``sum(c^2) * v`` rather than ``n * v``;
  ``design_effect = sum_c2 / n`` (1 when every report is its own draw). The
  privatizer knows which reports share a memo (in process, never published)
  and counts ``sum_c2`` per window. Merging windows sums ``sum_c2``, which
  treats one person's reports in different windows as independent: the
  merged standard error is then a lower bound (the per-window ones are not);
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

from stream.ldp.numeric import mean_std_error
from stream.ldp.policy import LdpAttribute, LdpPolicy
from stream.ldp.postprocess import project_simplex
from stream.ldp.privatizer import AttributeReport

__all__ = ["ESTIMATE_SCHEMA", "WindowAggregator", "WindowState", "estimate_record", "merge_records"]

ESTIMATE_SCHEMA = "frequency-estimate.v1"


@dataclass
class _Acc:
    n: int = 0
    support: np.ndarray | None = None
    total: float = 0.0
    clusters: Counter[int] = field(default_factory=Counter)

    @property
    def sum_c2(self) -> int:
        return sum(c * c for c in self.clusters.values())


@dataclass
class WindowState:
    start_ms: int
    end_ms: int
    accs: dict[str, _Acc] = field(default_factory=dict)


def _iso(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def estimate_record(attr: LdpAttribute, *, n: int, support: Sequence[int] | np.ndarray | None, total: float | None,
                    start_ms: int, end_ms: int, worker: str | None = None,
                    sum_c2: int | None = None) -> dict[str, Any]:
    """The ``analytics.frequencies`` record of one attribute for one window (or a merge of windows)."""
    rec: dict[str, Any] = {
        "schema": ESTIMATE_SCHEMA,
        "attribute": attr.name,
        "kind": attr.kind,
        **{k: v for k, v in attr.params().items() if k != "m"},
        "mechanism": attr.mechanism,
        "window": {"start": _iso(start_ms), "end": _iso(end_ms), "start_ms": start_ms, "end_ms": end_ms},
        "n": n,
    }
    if worker is not None:
        rec["worker"] = worker
    sum_c2 = n if sum_c2 is None else max(int(sum_c2), n)
    deff = sum_c2 / n if n > 0 else 1.0
    rec["sum_c2"] = sum_c2
    rec["design_effect"] = round(deff, 4)
    if attr.oracle is not None:
        counts = np.asarray(support if support is not None else np.zeros(attr.k), dtype=np.int64)
        rec["support"] = [int(c) for c in counts]
        if n > 0:
            est = attr.oracle.estimate(counts, n)
            var = np.asarray(attr.oracle.variance(n, np.clip(est, 0.0, 1.0)), dtype=np.float64)
            se = np.sqrt(np.maximum(var, 0.0) * deff)
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
            sd = float(mean_std_error(attr.numeric, n, min(attr.hi, max(attr.lo, mean)))) * math.sqrt(deff)
            rec["mean"] = round(mean, 6)
            rec["std_error"] = round(sd, 6)
            rec["ci95"] = [round(mean - 1.96 * sd, 6), round(mean + 1.96 * sd, 6)]
            rec["clipped_mean"] = round(min(attr.hi, max(attr.lo, mean)), 6)
    return rec


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
        sum_c2 = sum(int(r.get("sum_c2", r["n"])) for r in recs)
        start = min(int(r["window"]["start_ms"]) for r in recs)
        end = max(int(r["window"]["end_ms"]) for r in recs)
        if attr.oracle is not None:
            support = np.sum([np.asarray(r["support"], dtype=np.int64) for r in recs], axis=0)
            out.append(estimate_record(attr, n=n, support=support, total=None, start_ms=start, end_ms=end,
                                       sum_c2=sum_c2))
        else:
            total = sum(float(r.get("sum", 0.0)) for r in recs)
            out.append(estimate_record(attr, n=n, support=None, total=total, start_ms=start, end_ms=end,
                                       sum_c2=sum_c2))
    return out


def _same_params(attr: LdpAttribute, rec: Mapping[str, Any]) -> bool:
    if rec.get("mechanism") != attr.mechanism or not math.isclose(float(rec.get("eps", -1)), attr.epsilon):
        return False
    if attr.oracle is not None:
        return rec.get("k") == attr.k and len(rec.get("support", ())) == attr.k
    return rec.get("lo") == attr.lo and rec.get("hi") == attr.hi


class WindowAggregator:
    """Accumulates attribute reports into tumbling windows and closes them (see the module docstring)."""

    def __init__(self, policy: LdpPolicy, *, window_seconds: float, grace_seconds: float = 5.0,
                 idle_seconds: float = 5.0, clock: Callable[[], float] = time.time) -> None:
        if window_seconds <= 0:
            raise ValueError("window_seconds must be > 0")
        self.policy = policy
        self.window_ms = max(1, round(window_seconds * 1000))
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
            reps = [r for r, _c in items]
            acc.clusters.update(c for _r, c in items)
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
                                       start_ms=win.start_ms, end_ms=win.end_ms, worker=worker, sum_c2=acc.sum_c2))
        return out

    # -- crash recovery: the open windows as a plain value ------------------------------------
    def state(self) -> dict[str, Any]:
        """The open windows' counts (not the in-process memo clusters: a restored window's
        design effect counts only the reports added after the restore)."""
        return {
            "closed_before_ms": self.closed_before_ms,
            "watermark_ms": self.watermark_ms,
            "late": self.late,
            "windows": [
                {"start_ms": w.start_ms, "end_ms": w.end_ms,
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
            win = WindowState(int(w["start_ms"]), int(w["end_ms"]))
            for name, a in w.get("accs", {}).items():
                if name not in self.policy.by_name:
                    continue
                sup = a.get("support")
                win.accs[name] = _Acc(n=int(a["n"]), total=float(a.get("total", 0.0)),
                                      support=None if sup is None else np.asarray(sup, dtype=np.int64))
            self.windows[win.start_ms] = win
        self.last_add = self._clock()
