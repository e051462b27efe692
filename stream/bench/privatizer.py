"""Throughput part of ``streamgate bench ldp``: the privatizer vs a same-run JSON passthrough.

Synthetic events are protected by the gateway's pure core and published to a
fresh ``clicks.protected``-like topic. Then, one after the other on the same
broker and records: (a) the plain confluent-kafka passthrough (consume, stdlib
JSON decode + encode, produce) of :mod:`stream.bench.gateway`; (b) the
privatizer engine (one ledger charge per event in Redis, fresh randomized
responses, feature reports, the release buffer, windowed aggregation, delivery
before commit). Redis starts empty. At the default cap most of a heavy user's
events are over budget (not reported): ``reports`` says how many were.
"""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass

import orjson

from stream.apps.privatizer import PrivatizerEngine, build_privatizer
from stream.apps.produce import publish
from stream.bench.gateway import _passthrough
from stream.bench.procs import SizingMeter, sizing_lines
from stream.components import build_gateway
from stream.config import Settings, TopicNames
from stream.engine.gc import relaxed_gc
from stream.gateway.core import RawRecord
from stream.kafka import ensure_topics
from stream.ldp.privatizer import ProtectedRecord
from stream.synth import ClickstreamGenerator

__all__ = ["PrivatizerBenchResult", "run_privatizer_bench"]


@dataclass
class PrivatizerBenchResult:
    events: int
    passthrough_rate: float
    privatizer_rate: float
    core_rate: float
    reports: int
    suppressed: int

    @property
    def ratio(self) -> float:
        return self.privatizer_rate / self.passthrough_rate if self.passthrough_rate else 0.0


def run_privatizer_bench(
    settings: Settings, *, events: int = 50_000, seed: int = 0, say: Callable[[str], None] = print
) -> PrivatizerBenchResult:
    bootstrap = settings.kafka_bootstrap_or_dev()
    run = uuid.uuid4().hex[:8]
    topics = TopicNames(protected=f"bench.protected.{run}", features=f"bench.features.{run}",
                        frequencies=f"bench.frequencies.{run}")
    pass_out = f"bench.passthrough.{run}"
    settings = settings.model_copy(update={
        "topics": topics, "group_prefix": f"bench-priv-{run}",
        "redis_key_prefix": f"sgbench-{run}",
    })
    ensure_topics(bootstrap, [topics.protected, topics.features, topics.frequencies, pass_out], partitions=1)

    say(f"protecting {events:,} synthetic events with the gateway core ...")
    gateway = build_gateway(settings)
    raw = [orjson.dumps(ev) for ev in ClickstreamGenerator(seed=seed).events(events)]
    protected: list[tuple[bytes, bytes]] = []
    for i in range(0, len(raw), 2000):
        res = gateway.process([RawRecord("bench", 0, i + j, v) for j, v in enumerate(raw[i : i + 2000])])
        protected.extend(res.protected)
    publish(bootstrap, topics.protected, [v for _k, v in protected])  # keyed by the token (user_id field)
    say(f"published {len(protected):,} protected events; (a) passthrough ...")
    size, meter = sum(len(v) for _k, v in protected), SizingMeter()  # sizing: CPU per MB/s (stream.bench.procs)
    pass_rate = _passthrough(bootstrap, topics.protected, pass_out, len(protected), settings.batch_max_events,
                             settings.session_timeout_ms, codec="json")
    pass_sizing = meter.stop("passthrough (json)", len(protected), size)
    say(f"    passthrough (json): {pass_rate:,.0f} events/s")

    say("(b) privatizer engine ...")
    engine = PrivatizerEngine(settings, build_privatizer(settings, seed=seed), bootstrap=bootstrap)
    meter = SizingMeter()
    stats = engine.run(threading.Event(), max_events=len(protected))
    say(sizing_lines(pass_sizing, meter.stop("privatizer", len(protected), size)))
    say(f"    privatizer:         {stats.rate():,.0f} events/s")

    # the pure core alone, on a fresh Redis prefix (cold, like the engine run)
    core_settings = settings.model_copy(update={"redis_key_prefix": f"sgbench-{run}-core"})
    core = build_privatizer(core_settings, seed=seed)
    now_ms = int(time.time() * 1000)
    records = [ProtectedRecord(v, now_ms) for _k, v in protected]
    with relaxed_gc():  # as the engine runs it
        t0 = time.perf_counter()
        for i in range(0, len(records), settings.batch_max_events):
            core.process(records[i : i + settings.batch_max_events])
        core_rate = len(records) / (time.perf_counter() - t0)
    return PrivatizerBenchResult(len(protected), pass_rate, stats.rate(), core_rate, stats.reports,
                                 sum(stats.suppressed.values()))
