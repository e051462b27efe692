"""``streamgate bench latency``: end-to-end latency at fixed offered rates, p50 / p99 / max.

One gateway and one privatizer run in their own processes (:mod:`stream.bench.procs`) on
fresh topics. A paced producer in this process offers valid synthetic events at each rate
in turn (the first ``warmup`` seconds of each rate are not counted), noting each event's
send time (just before ``produce``). Readers in this process (no consumer group, the same
client defaults as the workers) note when each record arrives on:

* ``clicks.raw``: the same-run baseline, Kafka alone (producer linger + broker + fetch);
* ``clicks.protected`` (gateway): matched to its send time by ``event_id`` (exact);
* ``features.private`` (gateway + privatizer): a feature report carries no identifier, so
  the k-th report is matched to the k-th event sent (budgets unlimited and labelled examples
  off, so every event gives one report). Approximate: the privatizer shuffles each release
  across people, so a report takes the latency of its position in the release.

Where the time goes, per hop: the producer's ``linger.ms`` (5: it waits to fill a batch), the
engine's ``batch_max_wait_seconds`` (``consume`` returns when the batch is full or this expires:
at a low rate every record waits up to all of it, and a longer wait makes bigger batches that
take longer to process) and the consumer's ``fetch.wait.max.ms`` (how long the broker may hold
a fetch: the embedded broker holds an empty fetch for all of it, so each hop costs up to this
long; Kafka answers once data arrived). Measured here (2 shared cores): with librdkafka's 500 ms
and a 50 ms batch wait, the gateway's p99 at 5k events/s was ~800 ms; with 10 ms and 5 ms (the
defaults now) ~50-100 ms, the gateway alone ~48 ms.

Trade-off: lower waits cut latency at low and moderate rates and cost idle work (more fetch
requests and engine loop turns: the broker's CPU at 1k events/s rose from ~6% to ~30% of the
two cores); under a backlog batches fill before any wait expires, so throughput is unchanged
(``streamgate bench gateway``). For throughput-only deployments on a shared broker, raise
``STREAMGATE_BATCH_MAX_WAIT_SECONDS`` (e.g. 0.05) to cut idle polling; ``linger.ms`` below 5
made it worse here (more, smaller produce requests).
"""

from __future__ import annotations

import os
import threading
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import orjson
from confluent_kafka import OFFSET_BEGINNING, Consumer, Producer, TopicPartition

from stream.apps.produce import encode_raw
from stream.bench.procs import CpuMeter, stack_pids, start_workers
from stream.config import Settings, TopicNames
from stream.kafka import consumer_config, ensure_topics, produce, producer_config
from stream.synth import ClickstreamGenerator

__all__ = ["LatencyResult", "LatencyRow", "format_latency", "percentiles", "run_latency_bench"]

PATHS = ("kafka", "gateway", "pipeline")
_PATH_LABEL = {"kafka": "produce -> clicks.raw (Kafka alone)", "gateway": "produce -> clicks.protected",
               "pipeline": "produce -> features.private"}
_EVENT_ID = b'"event_id":"'


@dataclass
class LatencyRow:
    rate: int  # offered events/s
    path: str
    sent: int  # events counted (after the warm-up)
    received: int  # of those, matched on the output
    p50_ms: float
    p99_ms: float
    max_ms: float
    achieved_rate: float  # events/s the producer actually offered
    exact: bool = True


@dataclass
class LatencyResult:
    rows: list[LatencyRow]
    settings: dict[str, Any] = field(default_factory=dict)  # the latency-relevant settings in force
    cpu: dict[int, dict[str, float | None]] = field(default_factory=dict)  # rate -> name -> share

    def row(self, rate: int, path: str) -> LatencyRow | None:
        return next((r for r in self.rows if r.rate == rate and r.path == path), None)


def percentiles(latencies_ms: Sequence[float]) -> tuple[float, float, float]:
    """(p50, p99, max); NaN for no data."""
    if not latencies_ms:
        return float("nan"), float("nan"), float("nan")
    a = np.asarray(latencies_ms, dtype=float)
    p50, p99 = np.percentile(a, [50, 99])
    return float(p50), float(p99), float(a.max())


class _Reader(threading.Thread):
    """Reads a topic from its beginning and notes each record's arrival (``perf_counter``)."""

    def __init__(self, bootstrap: str, topic: str, partitions: int, conf: dict[str, Any], *, ids: bool) -> None:
        super().__init__(name=f"latency-reader-{topic}", daemon=True)
        c = consumer_config(bootstrap, f"bench-latency-{uuid.uuid4().hex[:8]}", **conf)
        self.consumer = Consumer(c)
        self.consumer.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in range(partitions)])
        self.ids = ids
        self.arrivals: list[tuple[float, bytes | None]] = []
        self.stop = threading.Event()

    def run(self) -> None:
        consumer, out, ids = self.consumer, self.arrivals, self.ids
        try:
            while not self.stop.is_set():
                first = consumer.poll(0.1)
                if first is None:
                    continue
                now = time.perf_counter()
                msgs = [first, *consumer.consume(num_messages=5000, timeout=0)]
                for m in msgs:
                    if m.error() is not None:
                        continue
                    if ids:
                        v = m.value() or b""
                        i = v.find(_EVENT_ID)
                        out.append((now, v[i + 12 : i + 48] if i >= 0 else None))
                    else:
                        out.append((now, None))
        finally:
            self.consumer.close()


def _pace(producer: Producer, topic: str, events: list[tuple[bytes | None, bytes]], rate: int,
          sent_at: list[float]) -> float:
    """Offer ``events`` at ``rate`` events/s (send times appended to ``sent_at``); the achieved rate."""
    t0 = time.perf_counter()
    i, n = 0, len(events)
    while i < n:
        due = min(n, int((time.perf_counter() - t0) * rate) + 1)
        while i < due:
            key, value = events[i]
            sent_at.append(time.perf_counter())  # a wait for a full queue counts towards the latency
            produce(producer, topic, value, key, timeout=120.0)
            i += 1
        producer.poll(0)
        nxt = t0 + (i + 1) / rate
        delay = nxt - time.perf_counter()
        if delay > 0:
            time.sleep(min(delay, 0.002))
    elapsed = time.perf_counter() - t0
    return n / elapsed if elapsed > 0 else 0.0


def run_latency_bench(
    settings: Settings,
    *,
    rates: Sequence[int] = (1000, 5000, 20000),
    seconds: float = 4.0,
    warmup: float = 1.0,
    partitions: int = 1,
    seed: int = 5,
    producer: dict[str, Any] | None = None,
    consumer: dict[str, Any] | None = None,
    pipeline: bool = True,
    say: Callable[[str], None] = print,
) -> LatencyResult:
    """Latency per offered rate and path (module docstring). ``producer`` / ``consumer``: client
    settings over the defaults of :mod:`stream.kafka`, for every client (workers and this bench).
    ``pipeline=False``: no privatizer (the gateway alone on the cores)."""
    if not rates or min(rates) <= 0 or seconds <= 0 or warmup < 0:
        raise ValueError("at least one rate, each > 0; seconds > 0; warmup >= 0")
    bootstrap = settings.kafka_bootstrap_or_dev()
    run = uuid.uuid4().hex[:8]
    topics = TopicNames(raw=f"bench.lat.raw.{run}", protected=f"bench.lat.protected.{run}",
                        dlq=f"bench.lat.dlq.{run}", features=f"bench.lat.features.{run}",
                        frequencies=f"bench.lat.freq.{run}", partials=f"bench.lat.partials.{run}")
    s = settings.model_copy(update={
        "topics": topics, "kafka_bootstrap": bootstrap, "redis_url": settings.redis_url_or_dev(),
        "group_prefix": f"bench-lat-{run}", "redis_key_prefix": f"sgbench-{run}",
        "learn_examples": False, "topic_partitions": partitions,
        # latency, not the budget: every event is reported (past a person's cap nothing would be)
        "ldp_person_epsilon": 1e9,
    })
    ensure_topics(bootstrap, [topics.raw, topics.protected, topics.dlq, topics.features, topics.frequencies,
                              topics.partials], partitions=partitions)
    pconf, cconf = dict(producer or {}), dict(consumer or {})
    tweaks = {"producer": pconf, "consumer": cconf}
    effective_p, effective_c = producer_config(bootstrap, **pconf), consumer_config(bootstrap, "x", **cconf)
    info = {
        "linger.ms": effective_p.get("linger.ms"),
        "batch_max_wait_seconds": s.batch_max_wait_seconds,
        "batch_max_events": s.batch_max_events,
        "fetch.wait.max.ms": effective_c.get("fetch.wait.max.ms", "500 (librdkafka default)"),
        "partitions": partitions,
    }
    say("settings: " + ", ".join(f"{k}={v}" for k, v in info.items()))

    total = sum(int(r * (warmup + seconds)) for r in rates)
    events = [encode_raw(orjson.dumps(ev)) for ev in ClickstreamGenerator(seed=seed).events(total)]
    seq_of = {}
    for i, (_k, v) in enumerate(events):
        j = v.find(_EVENT_ID)
        seq_of[v[j + 12 : j + 48]] = i

    say("starting the gateway" + (" and the privatizer (one process each)" if pipeline else " (one process)") + " ...")
    gw = start_workers("gateway", s, 1, gated=False, tweaks=tweaks)
    priv = start_workers("privatizer", s, 1, gated=False, tweaks=tweaks) if pipeline else None
    readers = {
        "kafka": _Reader(bootstrap, topics.raw, partitions, cconf, ids=True),
        "gateway": _Reader(bootstrap, topics.protected, partitions, cconf, ids=True),
    }
    if pipeline:
        readers["pipeline"] = _Reader(bootstrap, topics.features, partitions, cconf, ids=False)
    stack = stack_pids(s)
    result = LatencyResult([], info)
    prod = Producer(producer_config(bootstrap, **{"client.id": "bench-latency", **pconf}))
    sent_at: list[float] = []
    try:
        gw.wait_assigned(partitions)
        if priv is not None:
            priv.wait_assigned(partitions)
        for r in readers.values():
            r.start()
        start = 0
        for rate in rates:
            n = int(rate * (warmup + seconds))
            skip = int(rate * warmup)
            say(f"offering {rate:,} events/s for {warmup + seconds:g} s (load average {os.getloadavg()[0]:.2f}) ...")
            meter = CpuMeter({"broker": [stack["broker"]], "redis": [stack["redis"]], "bench": [os.getpid()],
                              "gateway": gw.pids,
                              **({"privatizer": priv.pids} if priv is not None else {})})
            meter.start()
            achieved = _pace(prod, topics.raw, events[start : start + n], rate, sent_at)
            prod.flush(30)
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline and min(len(r.arrivals) for r in readers.values()) < start + n:
                time.sleep(0.05)
            result.cpu[rate] = meter.stop()
            counted = range(start + skip, start + n)
            for path, reader in readers.items():
                arrivals = list(reader.arrivals)
                lat: list[float] = []
                if reader.ids:
                    for at, eid in arrivals:
                        seq = seq_of.get(eid) if eid is not None else None
                        if seq is not None and counted.start <= seq < counted.stop:
                            lat.append((at - sent_at[seq]) * 1000)
                else:
                    for seq in counted:
                        if seq < len(arrivals):
                            lat.append((arrivals[seq][0] - sent_at[seq]) * 1000)
                p50, p99, mx = percentiles(lat)
                # features.private is matched by arrival order: releases are shuffled across people,
                # so a report's latency is that of its release's position (not exact)
                row = LatencyRow(rate, path, len(counted), len(lat), p50, p99, mx, achieved, exact=reader.ids)
                result.rows.append(row)
                say(f"    {_PATH_LABEL[path]:<38} p50 {p50:7.1f}  p99 {p99:7.1f}  max {mx:7.1f} ms"
                    f"  ({len(lat):,}/{len(counted):,})")
            start += n
            time.sleep(0.5)
    finally:
        for r in readers.values():
            r.stop.set()
        for r in readers.values():
            if r.is_alive():
                r.join(5)
        gw.close()
        if priv is not None:
            priv.close()
    return result


def format_latency(r: LatencyResult) -> str:
    """The table printed by ``streamgate bench latency``."""
    lines = [f"{'offered':>8} {'achieved':>9}  {'path':<38}{'p50 ms':>8}{'p99 ms':>8}{'max ms':>8}  {'matched':>13}"]
    for row in r.rows:
        mark = "" if row.exact else " ~"
        lines.append(f"{row.rate:>8,} {row.achieved_rate:>9,.0f}  {_PATH_LABEL[row.path]:<38}{row.p50_ms:>8.1f}"
                     f"{row.p99_ms:>8.1f}{row.max_ms:>8.1f}  {row.received:>6,}/{row.sent:<6,}{mark}")
    for rate, cpu in r.cpu.items():
        lines.append(f"CPU at {rate:,}/s (share of all cores): " + ", ".join(
            f"{k} {'n/a' if v is None else f'{v:.0%}'}" for k, v in cpu.items()))
    if any(not row.exact for row in r.rows):
        lines.append("~ features.private matched by rank (releases are shuffled across people): approximate")
    return "\n".join(lines)
