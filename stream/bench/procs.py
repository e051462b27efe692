"""Worker engines in their own OS processes, and CPU accounting from ``/proc``, for benchmarks.

:func:`start_workers` spawns one process per engine (``spawn``: no librdkafka thread is
forked). A worker joins its consumer group and, while the ``gate`` is closed, keeps its
partitions paused (records fetched meanwhile are rewound, never processed), so that every
member of a group starts from the same moment with its final assignment (no rebalance
inside a measurement). It runs until ``stop`` is set or the group's shared count reaches
``target``, and reports a :class:`WorkerReport` on a queue.
"""

from __future__ import annotations

import contextlib
import multiprocessing as mp
import os
import queue
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from confluent_kafka import KafkaException, TopicPartition

from stream.config import Settings

__all__ = [
    "CpuMeter",
    "Sizing",
    "SizingMeter",
    "WorkerGroup",
    "WorkerReport",
    "group_rate",
    "listener_pid",
    "sizing_lines",
    "start_workers",
]

_CTX = mp.get_context("spawn")


@dataclass
class WorkerReport:
    index: int
    pid: int
    consumed: int
    rate: float  # events/s from its first to its last event
    first_at: float | None  # time.monotonic() (system-wide on Linux: comparable across processes)
    last_at: float | None
    error: str | None = None
    rewound: int = 0  # partitions rewound while gated
    seek_failed: int = 0  # rewinds that failed (their records would be skipped: the phase stalls)


def group_rate(reports: Sequence[WorkerReport]) -> float:
    """Records per second of a group: everything consumed over its first to its last record."""
    firsts = [r.first_at for r in reports if r.first_at is not None]
    lasts = [r.last_at for r in reports if r.last_at is not None]
    if not firsts or not lasts or max(lasts) <= min(firsts):
        return 0.0
    return sum(r.consumed for r in reports) / (max(lasts) - min(firsts))


def _engine(kind: str, settings: Settings, tweaks: dict[str, dict[str, Any]] | None = None) -> Any:
    from stream.engine import StreamEngine

    if kind == "gateway":
        from stream.apps.engine import GatewayEngine
        from stream.components import build_gateway

        base: type[StreamEngine] = GatewayEngine
        args: tuple[Any, ...] = (build_gateway(settings),)
    elif kind == "privatizer":
        from stream.apps.privatizer import PrivatizerEngine, build_privatizer

        base, args = PrivatizerEngine, (build_privatizer(settings),)
    elif kind == "learner":
        from stream.apps.learner import LearnerEngine

        base, args = LearnerEngine, ()
    elif kind == "learner-federated":
        from stream.apps.federated import FederatedLearnerEngine

        base, args = FederatedLearnerEngine, ()
    else:
        raise ValueError(f"unknown worker {kind!r}")

    class Gated(base):  # type: ignore[valid-type,misc]
        """The worker, holding its partitions paused until the gate opens."""

        gate: Any = None
        on_idle: Any = None
        rewound = 0  # partitions rewound while gated (records fetched before the pause)
        seek_failed = 0
        _resumed: frozenset[tuple[str, int]] = frozenset()

        def extra_consumer_config(self) -> dict[str, Any]:
            return {**super().extra_consumer_config(), **(tweaks or {}).get("consumer", {})}

        def extra_producer_config(self) -> dict[str, Any]:
            return {**super().extra_producer_config(), **(tweaks or {}).get("producer", {})}

        def _consume(self) -> list[Any]:
            consumer = self.clients.consumer
            if self.gate is None or self.gate.is_set():
                # resume whatever is assigned now (a pause can outlive a rebalance in the client)
                with contextlib.suppress(KafkaException):
                    now = frozenset(self.assigned)
                    if now != self._resumed:
                        consumer.resume([TopicPartition(t, p) for t, p in now])
                        self._resumed = now
                return super()._consume()
            with contextlib.suppress(KafkaException):
                if consumer.assignment():
                    consumer.pause(consumer.assignment())
            msgs = consumer.consume(num_messages=500, timeout=0.05)
            self.clients.check()
            rewind: dict[tuple[str, int], int] = {}
            for m in msgs:
                if m.error() is None:
                    tp = (m.topic(), m.partition())
                    rewind[tp] = min(m.offset(), rewind.get(tp, m.offset()))
            for (t, p), o in rewind.items():
                try:
                    consumer.seek(TopicPartition(t, p, o))
                    consumer.pause([TopicPartition(t, p)])
                    self.rewound += 1
                except KafkaException:
                    self.seek_failed += 1
            if self.on_idle is not None:
                self.on_idle(len(self.assigned))
            return []

    return Gated(settings, *args, bootstrap=settings.kafka_bootstrap)


def _child(kind: str, settings: Settings, index: int, gate: Any, assigned: Any, done: Any, target: int | None,
           stop: Any, out: Any, tweaks: dict[str, dict[str, Any]] | None) -> None:
    """One worker process (module docstring)."""
    if kind.startswith("learner"):  # drift warnings on the progressive metric are noise in a benchmark's output
        import logging

        logging.getLogger("streamgate.learner").setLevel(logging.ERROR)
    engine = _engine(kind, settings, tweaks)
    engine.gate = gate

    def on_idle(n: int) -> None:
        assigned[index] = n

    engine.on_idle = on_idle
    reported = 0

    def until() -> bool:
        nonlocal reported
        if engine.assigned:
            assigned[index] = len(engine.assigned)
        st = engine.stats
        n = st.emitted if kind == "gateway" else st.consumed
        if n != reported:
            with done.get_lock():
                done.value += n - reported
            reported = n
        return bool(stop.is_set() or (target is not None and done.value >= target))

    error = None
    try:
        engine.run(threading.Event(), until=until)
    except Exception as exc:  # reported to the parent, which says so
        error = f"{type(exc).__name__}: {exc}"
    st = engine.stats
    out.put(WorkerReport(index, os.getpid(), st.consumed, st.rate(), st.first_event_at, st.last_event_at, error,
                         engine.rewound, engine.seek_failed))


class WorkerGroup:
    """Worker processes of one consumer group (:func:`start_workers`)."""

    def __init__(self, kind: str, settings: Settings, n: int, *, target: int | None, gated: bool,
                 tweaks: dict[str, dict[str, Any]] | None = None) -> None:
        self.kind, self.n, self.target = kind, n, target
        self.gate = _CTX.Event()
        if not gated:
            self.gate.set()
        self.stop = _CTX.Event()
        self.assigned: Any = _CTX.Array("i", n)
        self.done = _CTX.Value("q", 0)
        self.out: Any = _CTX.Queue()
        self.procs = [
            _CTX.Process(target=_child, name=f"bench-{kind}-{i}", daemon=True,
                         args=(kind, settings, i, self.gate, self.assigned, self.done, target, self.stop, self.out,
                               tweaks))
            for i in range(n)
        ]
        for p in self.procs:
            p.start()

    @property
    def pids(self) -> list[int]:
        return [p.pid for p in self.procs if p.pid is not None]

    def wait_assigned(self, partitions: int, *, timeout: float = 90.0, stable: float = 1.0) -> None:
        """Until every member holds partitions and together all ``partitions`` (for ``stable`` s)."""
        deadline = time.monotonic() + timeout
        since: float | None = None
        while time.monotonic() < deadline:
            counts = self.assigned[:]
            if all(c > 0 for c in counts) and sum(counts) == partitions:
                since = since or time.monotonic()
                if time.monotonic() - since >= stable:
                    return
            else:
                since = None
            if any(not p.is_alive() for p in self.procs):
                raise RuntimeError(f"a {self.kind} process exited early: {self.reports(1.0)}")
            time.sleep(0.05)
        raise RuntimeError(f"{self.kind}: group did not settle within {timeout:.0f} s (assigned {self.assigned[:]})")

    def open(self) -> None:
        self.gate.set()

    def finished(self) -> bool:
        return self.target is not None and self.done.value >= self.target

    def reports(self, timeout: float = 120.0) -> list[WorkerReport]:
        """Every member's report (asks them to stop first: once the target was reached, or not)."""
        self.stop.set()
        got: list[WorkerReport] = []
        deadline = time.monotonic() + timeout
        while len(got) < self.n and time.monotonic() < deadline:
            try:
                got.append(self.out.get(timeout=0.2))
            except queue.Empty:
                if all(not p.is_alive() for p in self.procs) and self.out.empty():
                    break
        for p in self.procs:
            p.join(10)
            if p.is_alive():
                p.terminate()
                p.join(5)
        return sorted(got, key=lambda r: r.index)

    def close(self) -> None:
        self.stop.set()
        for p in self.procs:
            p.join(10)
            if p.is_alive():
                p.terminate()
                p.join(5)


def start_workers(kind: str, settings: Settings, n: int, *, target: int | None = None, gated: bool = True,
                  tweaks: dict[str, dict[str, Any]] | None = None) -> WorkerGroup:
    """``n`` processes of ``kind`` (``gateway`` / ``privatizer`` / ``learner`` / ``learner-federated``) in one
    group (module docstring);
    ``tweaks``: extra ``producer`` / ``consumer`` client settings (latency experiments)."""
    return WorkerGroup(kind, settings, n, target=target, gated=gated, tweaks=tweaks)


# --------------------------------------------------------------------------- CPU accounting
_TICK = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


def _proc_cpu(pid: int) -> float | None:
    """CPU seconds (user + system, threads included) of ``pid`` so far; None if unknown."""
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = raw.rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / _TICK


def _machine_busy() -> tuple[float, float] | None:
    """(busy, total) CPU seconds of the whole machine so far."""
    try:
        first = Path("/proc/stat").read_text().splitlines()[0].split()[1:]
    except OSError:
        return None
    vals = [int(v) for v in first]
    idle = vals[3] + (vals[4] if len(vals) > 4 else 0)
    total = sum(vals[:8])
    return (total - idle) / _TICK, total / _TICK


def listener_pid(address: str) -> int | None:
    """The pid listening on the TCP port of ``address`` (``host:port`` or a URL); None if unknown."""
    try:
        netloc = urlparse(address).netloc if "//" in address else address.split(",")[0]
        port = int(netloc.rsplit(":", 1)[1].split("/")[0])
    except (IndexError, ValueError):
        return None
    inodes: set[str] = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with contextlib.suppress(OSError):
            for line in Path(table).read_text().splitlines()[1:]:
                cols = line.split()
                if len(cols) > 9 and cols[3] == "0A" and int(cols[1].rsplit(":", 1)[1], 16) == port:
                    inodes.add(cols[9])
    if not inodes:
        return None
    targets = {f"socket:[{i}]" for i in inodes}
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        with contextlib.suppress(OSError):
            for fd in (proc / "fd").iterdir():
                with contextlib.suppress(OSError):
                    if os.readlink(fd) in targets:
                        return int(proc.name)
    return None


class CpuMeter:
    """CPU used by named processes, and by the whole machine, between :meth:`start` and :meth:`stop`,
    as a share of all cores (1.0 = every core busy for the whole interval)."""

    def __init__(self, pids: dict[str, Sequence[int | None]]) -> None:
        self.pids = {name: [p for p in ps if p] for name, ps in pids.items()}
        self.ncpu = os.cpu_count() or 1
        self._t0 = 0.0
        self._c0: dict[str, float] = {}
        self._m0: tuple[float, float] | None = None
        self.shares: dict[str, float | None] = {}
        self.seconds = 0.0

    def _cpu(self, name: str) -> float | None:
        vals = [_proc_cpu(p) for p in self.pids[name]]
        known = [v for v in vals if v is not None]
        return sum(known) if known else None

    def start(self) -> None:
        self._t0 = time.monotonic()
        self._c0 = {n: c for n in self.pids if (c := self._cpu(n)) is not None}
        self._m0 = _machine_busy()

    def stop(self) -> dict[str, float | None]:
        self.seconds = wall = max(1e-9, time.monotonic() - self._t0)
        for n in self.pids:
            c = self._cpu(n)
            self.shares[n] = None if c is None or n not in self._c0 else (c - self._c0[n]) / wall / self.ncpu
        m1 = _machine_busy()
        if self._m0 is not None and m1 is not None and m1[1] > self._m0[1]:
            machine = (m1[0] - self._m0[0]) / (m1[1] - self._m0[1])
            ours = sum(v for v in self.shares.values() if v is not None)
            self.shares["other"] = max(0.0, machine - ours)
            self.shares["machine"] = machine
        return self.shares


def stack_pids(settings: Settings) -> dict[str, int | None]:
    """Pids of the broker and Redis the settings point at (local listeners only)."""
    return {"broker": listener_pid(settings.kafka_bootstrap_or_dev()), "redis": listener_pid(settings.redis_url_or_dev())}


def format_share(v: float | None) -> str:
    return "n/a" if v is None else f"{v:6.1%}"


def drain_nowait(q: Any) -> None:
    with contextlib.suppress(queue.Empty, OSError):
        while True:
            q.get_nowait()


# --------------------------------------------------------------------------- sizing (CPU per MB/s)
@dataclass(frozen=True)
class Sizing:
    """A process's CPU over a run, in the units operators size proxies by: millicores per MB/s
    of input (CPU-ms per MB) and per 1k events/s (CPU-ms per 1k events). Broker and Redis CPU
    are not included: a proxy's published figure counts the proxy alone."""

    label: str
    events: int
    input_bytes: int
    cpu_seconds: float  # utime + stime of every thread (/proc/<pid>/stat)
    wall_seconds: float

    @property
    def per_mb_s(self) -> float:
        return self.cpu_seconds * 1e3 / (self.input_bytes / 1e6) if self.input_bytes else float("nan")

    @property
    def per_kevents_s(self) -> float:
        return self.cpu_seconds * 1e3 / (self.events / 1e3) if self.events else float("nan")

    @property
    def events_per_cpu_s(self) -> float:
        return self.events / self.cpu_seconds if self.cpu_seconds > 0 else float("nan")

    def line(self) -> str:
        return (f"    {self.label:<22} {self.per_mb_s:7.0f} millicores per MB/s  {self.per_kevents_s:6.0f} per 1k events/s"
                f"  ({self.events_per_cpu_s:,.0f} events/CPU-s; {self.input_bytes / max(1, self.events):,.0f} B/event)")


class SizingMeter:
    """CPU of one process (default: this one, every thread) from :meth:`__init__` to :meth:`stop`. This
    process's is read from its CPU clock (ns: a short leg is not rounded to the /proc 10 ms ticks)."""

    def __init__(self, pid: int | None = None) -> None:
        self.pid = pid or os.getpid()
        self._t0, self._c0 = time.monotonic(), self._cpu() or 0.0

    def _cpu(self) -> float | None:
        return time.process_time() if self.pid == os.getpid() else _proc_cpu(self.pid)

    def restart(self) -> None:
        """Count from now (a leg's first record: start-up is not steady-state work)."""
        self._t0, self._c0 = time.monotonic(), self._cpu() or 0.0

    def stop(self, label: str, events: int, input_bytes: int) -> Sizing:
        cpu = (self._cpu() or self._c0) - self._c0
        return Sizing(label, events, input_bytes, cpu, time.monotonic() - self._t0)


def sizing_lines(*sizings: Sizing) -> str:
    """The sizing lines a benchmark prints, with the load average they were measured at."""
    load = " ".join(f"{x:.2f}" for x in os.getloadavg())
    return "\n".join([f"sizing (CPU of this process, every thread; broker and Redis not counted; load {load}):",
                      *(s.line() for s in sizings)])
