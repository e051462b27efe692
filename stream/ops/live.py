"""What an ``ops.metrics`` snapshot says about its worker instance *now*: live, stale or stopped,
its rates over a sliding window, and what each of its counters counts.

Pure (no Kafka, no clock of its own: ``now`` is passed in), shared by the console
(:mod:`stream.console.state`) and ``streamgate ops watch`` (:mod:`stream.ops.watch`), so both
show the same thing.

* **Liveness.** A snapshot with ``state == "stopping"`` is the last one of a graceful stop: the
  instance is ``stopped``. One with ``state == "failed"`` is from a worker whose engine failed
  (it exits non-zero): ``failed``, with the published reason. One whose newest snapshot is older
  than :data:`STALE_INTERVALS` publishing intervals (its own ``interval_s``, else
  :data:`DEFAULT_INTERVAL`) is ``stale`` (crashed, killed, or cut off). Any of these is not
  ready and its rates are 0.
* **Rates** (:class:`RateWindow`): from the cumulative counters, over the last
  :data:`RATE_WINDOW` seconds of the instance's snapshots; a worker that runs idle publishes
  snapshots with the same counters, so its rates fall to 0 one window after the last record.
  Counters that went back (a restart with the same host and pid) start the window again: the
  snapshot's own rates until the next one.
* **Units** (:func:`in_unit`, :func:`out_parts`): every count is named by what it counts. The
  features topic carries two kinds of records, a feature report per event and a labelled example
  per event of a session that ended, so the privatizer's writes there and the learner's reads are
  split into feature reports and examples (the examples are the privatizer's ``session_purchase``
  label reports).
"""

from __future__ import annotations

import math
import re
from collections import deque
from collections.abc import Mapping
from typing import Any

__all__ = ["DEFAULT_INTERVAL", "LIVE_INTERVALS", "LIVE_MIN_SECONDS", "RATE_WINDOW", "STALE_INTERVALS", "RateWindow",
           "in_unit", "interval_of", "live_window", "liveness", "not_live_reason", "out_parts", "published_reason",
           "safe_reason"]

STALE_INTERVALS = 3
LIVE_INTERVALS = 6  # an instance this many intervals older than its worker's newest is gone (see live_window)
LIVE_MIN_SECONDS = 30.0
DEFAULT_INTERVAL = 10.0  # Settings.metrics_interval_seconds' default, for snapshots that do not say theirs
RATE_WINDOW = 30.0
LABEL_ATTRIBUTE = "session_purchase"  # stream.ldp.labels.LABEL_NAME: one label report per example

#: what a worker's ``events_in`` counts (the records of its input topic)
_IN_UNITS = {"gateway": "events", "privatizer": "events", "learner": "records",
             "shredder": "erasure requests"}
#: what the records a worker writes to each logical topic are
_OUT_UNITS = {"protected": "protected events", "dlq": "dead letters", "frequencies": "estimates",
              "snapshots": "model snapshots", "audit": "audit records"}


_TOKENISH = re.compile(r"tk\d+_")
_REASON = re.compile(r"[A-Za-z0-9 _.,:;/=+()<>#%|~-]{1,200}")
_REASON_DROP = re.compile(r"[^A-Za-z0-9 _.,:;/=+()<>#%|~-]")
_REASON_MAX = 200


def safe_reason(value: Any) -> str | None:
    """A not-ready reason fit to publish and print: one line of safe characters (others
    removed), at most 200 characters, no person token; ``None`` for nothing, ``other`` for a
    reason that mentions a token."""
    if not isinstance(value, str):
        return None
    text = _REASON_DROP.sub("", " ".join(value.split()))[:_REASON_MAX].strip()
    if not text:
        return None
    return "other" if _TOKENISH.search(value) or not _REASON.fullmatch(text) else text


def published_reason(snap: Mapping[str, Any]) -> str | None:
    """The snapshot's ``reason`` as it may be shown: exactly as published if :func:`safe_reason`
    keeps it so, else ``other``; None when it has none."""
    raw = snap.get("reason")
    if not isinstance(raw, str):
        return None
    kept = safe_reason(raw)
    return kept if kept == raw else "other"


def _num(value: Any) -> float | None:
    if isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value):
        return float(value)
    return None


def _int(value: Any) -> int:
    return int(value) if isinstance(value, int) and not isinstance(value, bool) else 0


def interval_of(snap: Mapping[str, Any]) -> float:
    """The publishing interval the snapshot says its worker has (seconds), else the default."""
    v = _num(snap.get("interval_s"))
    return v if v is not None and v > 0 else DEFAULT_INTERVAL


def live_window(snap: Mapping[str, Any]) -> float:
    """How much older than its worker's newest snapshot an instance's newest may be and still be
    shown: ``max(30 s, 6 intervals)`` (its own ``interval_s``); older, it is gone (left behind by
    a restart). ``ops watch`` and the console both keep the instances this says."""
    return max(LIVE_MIN_SECONDS, LIVE_INTERVALS * interval_of(snap))


def liveness(snap: Mapping[str, Any], now: float) -> str:
    """``stopped`` (its last snapshot was a graceful stop's), ``failed`` (its engine failed),
    ``stale`` (nothing for more than :data:`STALE_INTERVALS` intervals) or ``live``."""
    if snap.get("state") == "stopping":
        return "stopped"
    if snap.get("state") == "failed":
        return "failed"
    ts = _num(snap.get("ts"))
    if ts is None or now - ts > STALE_INTERVALS * interval_of(snap):
        return "stale"
    return "live"


def not_live_reason(snap: Mapping[str, Any], now: float) -> str | None:
    """Why an instance is not live (one line), or None when it is."""
    status = liveness(snap, now)
    if status == "stopped":
        return "stopped (graceful shutdown)"
    if status == "failed":
        return f"failed: {published_reason(snap) or 'no reason given'}"
    if status == "stale":
        age = now - (_num(snap.get("ts")) or 0.0)
        return (f"no snapshot for {age:.0f} s (more than {STALE_INTERVALS} intervals of "
                f"{interval_of(snap):g} s): gone or cut off")
    return None


class RateWindow:
    """One instance's cumulative counters at its snapshot times; :meth:`rates` over the last
    ``window`` seconds of them. A counter that went back is a restart (the same host and pid, e.g. a
    container's pid 1): the window starts again from that snapshot, so until the next one there
    are no rates (None: the caller takes the snapshot's own)."""

    def __init__(self, window: float = RATE_WINDOW) -> None:
        self.window = window
        self.points: deque[tuple[float, dict[str, int]]] = deque()

    def add(self, ts: float, counters: Mapping[str, int]) -> None:
        if self.points and ts <= self.points[-1][0]:
            return
        if self.points and any(counters.get(k, 0) < v for k, v in self.points[-1][1].items()):
            self.points.clear()  # a restart: differences with the old process mean nothing
        self.points.append((ts, dict(counters)))
        # keep the points of the window and the newest one before it (the window's base)
        while len(self.points) > 2 and self.points[1][0] <= ts - self.window:
            self.points.popleft()

    def rates(self) -> dict[str, float] | None:
        """Per-second rates over the window ending at the newest snapshot; None with one point."""
        if len(self.points) < 2:
            return None
        t1, new = self.points[-1]
        base = self.points[0]
        for p in self.points:
            if p[0] <= t1 - self.window:
                base = p
        t0, old = base
        dt = t1 - t0
        return {k: round(max(0, v - old.get(k, 0)) / dt, 2) for k, v in new.items()}


def in_unit(worker: str) -> str:
    """What the worker's ``events_in`` counts."""
    return _IN_UNITS.get(worker, "records")


def out_parts(snap: Mapping[str, Any]) -> dict[str, int]:
    """The records a snapshot's worker wrote, by what they are (``feature reports``, ``examples``,
    ``protected events``, ``dead letters``, ``estimates``, ...): the ``features`` count split into
    feature reports and examples (one ``session_purchase`` label report per example)."""
    raw = snap.get("events_out")
    out = {str(k): _int(v) for k, v in raw.items()} if isinstance(raw, dict) else {}
    parts: dict[str, int] = {}
    for topic, n in sorted(out.items()):
        if topic == "features":
            examples = _examples_written(snap)
            parts["feature reports"] = max(0, n - examples)
            if examples:
                parts["examples"] = examples
        else:
            parts[_OUT_UNITS.get(topic, topic)] = n
    return parts


def _examples_written(snap: Mapping[str, Any]) -> int:
    ldp = snap.get("ldp")
    row = ldp.get(LABEL_ATTRIBUTE) if isinstance(ldp, dict) else None
    return _int(row.get("reports")) if isinstance(row, dict) else 0


def examples_learned(snap: Mapping[str, Any]) -> int | None:
    """A learner's examples learned (its models' ``examples_seen``, the model's lifetime count)."""
    models = snap.get("models")
    if not isinstance(models, dict):
        return None
    seen = [_num(m.get("examples_seen")) for m in models.values() if isinstance(m, dict)]
    vals = [int(v) for v in seen if v is not None]
    return sum(vals) if vals else None
