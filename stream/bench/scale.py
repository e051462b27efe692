"""``streamgate bench scale``: the gateway and the privatizer with 1, then 2 processes in one group.

For each worker, events are published once to a 4-partition input topic. Each phase starts
N worker processes (real OS processes, :mod:`stream.bench.procs`) in a fresh consumer group,
with fresh output topics and a fresh Redis prefix (cold, like the 1-process phase); once the
group has settled (every member holds partitions) the gate opens and all members read
until the group has handled every event. Per process: events and events/s (its first to
its last event); total: all events over the group's first to last event. The figure is the
2-vs-1 ratio of the totals, with the CPU the broker, Redis and the workers used during each
phase (share of all cores): on a 2-core machine the broker and Redis share the cores with
the workers, so the ratio's ceiling is what they leave.
"""

from __future__ import annotations

import os
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import orjson
from confluent_kafka import Consumer, TopicPartition

from stream.apps.produce import publish
from stream.bench.procs import CpuMeter, WorkerReport, group_rate, stack_pids, start_workers
from stream.components import build_gateway
from stream.config import Settings, TopicNames
from stream.gateway.core import RawRecord
from stream.kafka import consumer_config, ensure_topics
from stream.synth import ClickstreamGenerator

__all__ = ["ScalePhase", "ScaleResult", "format_scale", "run_scale_bench"]

#: A phase that made no progress for this long is stopped (and reported as such).
STALL_SECONDS = 30.0


@dataclass
class ScalePhase:
    worker: str
    processes: int
    events: int  # expected
    reports: list[WorkerReport]
    cpu: dict[str, float | None] = field(default_factory=dict)  # name -> share of all cores
    seconds: float = 0.0  # wall time of the measured interval
    ncpu: int = 1

    @property
    def per_cpu_second(self) -> float:
        """Events per CPU-second the workers used (what scaling keeps when cores are free)."""
        w = self.cpu.get("workers")
        return self.rate / (w * self.ncpu) if w else 0.0

    @property
    def consumed(self) -> int:
        return sum(r.consumed for r in self.reports)

    @property
    def rate(self) -> float:
        """All events over the group's first to last event."""
        return group_rate(self.reports)


@dataclass
class ScaleResult:
    partitions: int
    phases: list[ScalePhase]

    def phase(self, worker: str, processes: int) -> ScalePhase | None:
        return next((p for p in self.phases if p.worker == worker and p.processes == processes), None)

    def ratio(self, worker: str, a: int = 2, b: int = 1) -> float:
        pa, pb = self.phase(worker, a), self.phase(worker, b)
        return pa.rate / pb.rate if pa and pb and pb.rate else 0.0


def _gateway_input(settings: Settings, bootstrap: str, topic: str, events: int, seed: int) -> None:
    payloads = [orjson.dumps(ev) for ev in ClickstreamGenerator(seed=seed).events(events)]
    publish(bootstrap, topic, payloads)


def _privatizer_input(settings: Settings, bootstrap: str, topic: str, events: int, seed: int) -> int:
    gateway = build_gateway(settings)
    raw = [orjson.dumps(ev) for ev in ClickstreamGenerator(seed=seed).events(events)]
    protected: list[bytes] = []
    for i in range(0, len(raw), 2000):
        res = gateway.process([RawRecord("bench", 0, i + j, v) for j, v in enumerate(raw[i : i + 2000])])
        protected.extend(v for _k, v in res.protected)
    return publish(bootstrap, topic, protected)  # keyed by the token (user_id field)


def _commit_start(bootstrap: str, group: str, topic: str, partitions: int) -> None:
    """Commit offset 0 of every partition for the (still empty) group, so its members start
    fetching from a committed offset (no offset reset while the gate holds them paused)."""
    c = Consumer(consumer_config(bootstrap, group))
    try:
        c.commit(offsets=[TopicPartition(topic, p, 0) for p in range(partitions)], asynchronous=False)
    finally:
        c.close()


def run_scale_bench(
    settings: Settings,
    *,
    events: int = 100_000,
    partitions: int = 4,
    processes: Sequence[int] = (1, 2),
    workers: Sequence[str] = ("gateway", "privatizer"),
    seed: int = 3,
    say: Callable[[str], None] = print,
) -> ScaleResult:
    bootstrap = settings.kafka_bootstrap_or_dev()
    run = uuid.uuid4().hex[:8]
    stack = stack_pids(settings)
    base = settings.model_copy(update={"topic_partitions": partitions})
    inputs = {"gateway": f"bench.scale.raw.{run}", "privatizer": f"bench.scale.protected.{run}"}
    ensure_topics(bootstrap, [inputs[w] for w in workers], partitions=partitions)
    counts: dict[str, int] = {}
    for w in workers:
        say(f"{w}: publishing {events:,} events to {inputs[w]} ({partitions} partitions) ...")
        if w == "gateway":
            _gateway_input(base, bootstrap, inputs[w], events, seed)
            counts[w] = events
        else:
            counts[w] = _privatizer_input(base.model_copy(update={"redis_key_prefix": f"sgbench-{run}-in"}),
                                          bootstrap, inputs[w], events, seed)
    result = ScaleResult(partitions, [])
    for w in workers:
        for n in processes:
            tag = f"{run}-{w[0]}{n}"
            topics = TopicNames(raw=inputs["gateway"], protected=inputs["privatizer"] if w == "privatizer"
                                else f"bench.scale.out.{tag}", dlq=f"bench.scale.dlq.{tag}",
                                features=f"bench.scale.features.{tag}", frequencies=f"bench.scale.freq.{tag}",
                                partials=f"bench.scale.partials.{tag}")
            s = base.model_copy(update={
                "topics": topics, "redis_key_prefix": f"sgbench-{tag}", "kafka_bootstrap": bootstrap,
                "redis_url": settings.redis_url_or_dev(),
                "group_prefix": f"bench-scale-{tag}",
            })
            outs = [topics.protected, topics.dlq] if w == "gateway" else [topics.features, topics.frequencies,
                                                                        topics.partials]
            ensure_topics(bootstrap, outs, partitions=partitions)
            _commit_start(bootstrap, s.consumer_group, inputs[w], partitions)
            say(f"{w} x{n}: starting {n} process(es), waiting for the group to settle ...")
            group = start_workers(w, s, n, target=counts[w])
            try:
                group.wait_assigned(partitions)
                meter = CpuMeter({"broker": [stack["broker"]], "redis": [stack["redis"]], "workers": group.pids,
                                  "bench": [os.getpid()]})
                meter.start()
                group.open()
                last, moved = -1, time.monotonic()
                while not group.finished() and time.monotonic() - moved < STALL_SECONDS:
                    if not any(p.is_alive() for p in group.procs):
                        break
                    if group.done.value != last:
                        last, moved = group.done.value, time.monotonic()
                    time.sleep(0.01)
                if not group.finished():
                    say(f"    stopped: {group.done.value:,} of {counts[w]:,} events after no progress for "
                        f"{STALL_SECONDS:.0f} s")
                cpu = meter.stop()
                reports = group.reports()
            finally:
                group.close()
            phase = ScalePhase(w, n, counts[w], reports, cpu, meter.seconds, meter.ncpu)
            for r in reports:
                if r.error:
                    say(f"    process {r.index} failed: {r.error}")
                if r.seek_failed:
                    say(f"    process {r.index}: {r.seek_failed} rewind(s) failed while gated")
            if len(reports) < n:
                say(f"    only {len(reports)} of {n} processes reported")
            say(f"    {phase.consumed:,} events, {phase.rate:,.0f} events/s total")
            result.phases.append(phase)
    return result


def format_scale(r: ScaleResult) -> str:
    """The table printed by ``streamgate bench scale``."""
    lines = [f"{'worker':<11}{'procs':>5}  {'per process (events @ events/s)':<56}{'total ev/s':>11}"
             f"{'broker':>8}{'redis':>7}{'workers':>9}{'other':>7}{'machine':>9}{'ev/worker-cpu-s':>17}"]
    for p in r.phases:
        t0 = min((x.first_at for x in p.reports if x.first_at is not None), default=0.0)
        per = ", ".join(f"#{x.index} {x.consumed:,} @ {x.rate:,.0f}"
                        + (f" (+{x.first_at - t0:.2f} s)" if p.processes > 1 and x.first_at is not None else "")
                        for x in p.reports)

        def pct(name: str, p: ScalePhase = p) -> str:
            v = p.cpu.get(name)
            return "n/a" if v is None else f"{v:.0%}"

        lines.append(f"{p.worker:<11}{p.processes:>5}  {per:<56}{p.rate:>11,.0f}"
                     f"{pct('broker'):>8}{pct('redis'):>7}{pct('workers'):>9}{pct('other'):>7}{pct('machine'):>9}"
                     f"{p.per_cpu_second:>17,.0f}")
    ncpu = r.phases[0].ncpu if r.phases else 1
    lines.append(f"(CPU: share of all {ncpu} cores during the phase; other = processes outside this benchmark; "
                 "machine = everything;\n +x s: how much later than the group's first event a process began)")
    for w in dict.fromkeys(p.worker for p in r.phases):
        if r.phase(w, 1) and r.phase(w, 2):
            lines.append(f"ratio {w} 2 / 1 processes: {r.ratio(w):.2f}   (target >= 1.5)")
    return "\n".join(lines)
