"""``streamgate bench gateway``: the gateway's throughput as a ratio of a same-run passthrough.

Both legs read the same pre-published events from the same broker, one worker
process each, one after the other:

(a) passthrough: confluent-kafka consume (batches) -> JSON decode -> JSON encode
    -> produce, auto-commit, one flush at the end; twice: with the standard library's
    ``json`` (the plain passthrough the target is stated against) and with ``orjson``
    (the gateway's own codec: the stricter comparison);
(b) the gateway engine: consume -> validate -> tokenize -> encrypt (keys from
    Redis) -> produce to protected/DLQ, commit per batch;
(c) with ``engine_floor``: the same engine around a core that passes each record through
    (what the engine itself costs: delivery tracking, holds, commits).

The figure is events/s from the first consumed record to the last delivered one; beside it,
each leg's CPU (this process, every thread, from ``/proc``, from the leg's first record to its
end: start-up and group joins are not counted) as events per CPU-second and as millicores per
MB/s of input and per 1k events/s (:class:`stream.bench.procs.Sizing`).
"""

from __future__ import annotations

import json
import random
import threading
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import orjson
from confluent_kafka import Consumer, Producer

from stream.apps.engine import GatewayEngine
from stream.apps.produce import publish
from stream.bench.procs import Sizing, SizingMeter
from stream.components import build_gateway
from stream.config import Settings, TopicNames
from stream.faults import make_invalid
from stream.gateway.core import BatchResult, InputRecord, RawRecord
from stream.kafka import consumer_config, ensure_topics, produce, producer_config
from stream.synth import ClickstreamGenerator

__all__ = ["BenchResult", "run_gateway_bench"]


@dataclass
class BenchResult:
    events: int
    passthrough_rate: float  # stdlib json: the plain passthrough
    passthrough_orjson_rate: float  # orjson: the gateway's own codec
    gateway_rate: float
    core_rate: float
    protected: int
    dead_lettered: int
    sizing: dict[str, Sizing] = field(default_factory=dict)  # "json", "orjson", "gateway"[, "engine alone"]
    rounds: list[tuple[float, float]] = field(default_factory=list)  # every round's CPU ratios (json, orjson)

    def cpu_ratio(self, baseline: str, leg: str = "gateway") -> float:
        """A leg's events per CPU-second over the passthrough's (steadier than wall clock under load)."""
        return self.sizing[leg].events_per_cpu_s / self.sizing[baseline].events_per_cpu_s

    @property
    def ratio(self) -> float:
        return self.gateway_rate / self.passthrough_rate if self.passthrough_rate else 0.0

    @property
    def ratio_orjson(self) -> float:
        return self.gateway_rate / self.passthrough_orjson_rate if self.passthrough_orjson_rate else 0.0


def _json_dumps(value: Any) -> bytes:
    return json.dumps(value).encode()


def _passthrough(
    bootstrap: str, src: str, dst: str, n: int, batch: int, session_timeout_ms: int, codec: str = "json",
    on_first: Callable[[], None] = lambda: None,
) -> float:
    """The plainest fast loop: batch consume, decode + encode, produce; librdkafka auto-commits
    and batches sends in the background; one flush at the end. (No delivery-before-commit
    guarantee: that is the gateway's extra work, and it is counted against the gateway.)"""
    consumer = Consumer(
        consumer_config(bootstrap, f"bench-pass-{uuid.uuid4().hex[:8]}", session_timeout_ms=session_timeout_ms,
                        **{"enable.auto.commit": True, "enable.auto.offset.store": True})
    )
    producer = Producer(producer_config(bootstrap))
    consumer.subscribe([src])
    seen = 0
    t0: float | None = None
    loads: Callable[[bytes], Any]
    dumps: Callable[[Any], bytes]
    bad: type[Exception]
    if codec == "orjson":
        loads, dumps, bad = orjson.loads, orjson.dumps, orjson.JSONDecodeError
    else:
        loads, dumps, bad = json.loads, _json_dumps, ValueError
    try:
        while seen < n:
            msgs = consumer.consume(num_messages=batch, timeout=0.05)
            if not msgs:
                continue
            if t0 is None:
                on_first()
                t0 = time.perf_counter()
            for m in msgs:
                if m.error() is not None:
                    continue
                value = m.value() or b""
                try:
                    out = dumps(loads(value))
                except bad:
                    out = value
                try:  # inline: the baseline pays no per-record call the gateway's Sink does not pay
                    producer.produce(dst, out, m.key())
                except BufferError:  # a full queue: the bounded wait of stream.kafka.produce
                    produce(producer, dst, out, m.key(), timeout=120.0)
                seen += 1
            producer.poll(0)
        producer.flush(60)
        assert t0 is not None
        return n / (time.perf_counter() - t0)
    finally:
        consumer.close()


def _core_rate(settings: Settings, payloads: list[bytes]) -> float:
    """The pure core alone (no Kafka), over the same payloads: where the gateway's time goes."""
    gw = build_gateway(settings)
    records = [RawRecord("bench", 0, i, p) for i, p in enumerate(payloads)]
    gw.process(records[:2000])  # warm the key cache like the engine run did
    t0 = time.perf_counter()
    for i in range(0, len(records), 2000):
        gw.process(records[i : i + 2000])
    return len(records) / (time.perf_counter() - t0)


def _metered(process: Callable[[Sequence[InputRecord]], BatchResult],
             meter: SizingMeter) -> Callable[[Sequence[InputRecord]], BatchResult]:
    """``process``, restarting ``meter`` at its first batch (the engine's start-up is not counted,
    as the passthroughs' is not: every leg's CPU runs from its first record)."""
    started = False

    def first_batch_restarts(records: Sequence[InputRecord]) -> BatchResult:
        nonlocal started
        if not started:
            started = True
            meter.restart()
        return process(records)

    return first_batch_restarts


def _pass_through_core(records: Sequence[InputRecord]) -> BatchResult:
    """The engine-floor leg's core: every record's value out as it came in (no decode, no keys)."""
    return BatchResult(protected=[(rec.key or b"", rec.value or b"") for rec in records])


def run_gateway_bench(
    settings: Settings,
    *,
    events: int = 100_000,
    invalid_rate: float = 0.01,
    seed: int = 7,
    engine_floor: bool = False,
    rounds: int = 1,
    say: Callable[[str], None] = print,
) -> BenchResult:
    """``rounds`` of the legs, one after the other; the result is the round of the median CPU
    ratio to the orjson passthrough, with every round's CPU ratios in ``rounds``."""
    bootstrap = settings.kafka_bootstrap_or_dev()
    run = uuid.uuid4().hex[:8]
    topics = TopicNames(
        raw=f"bench.raw.{run}",
        protected=f"bench.protected.{run}",
        dlq=f"bench.dlq.{run}",
    )
    pass_out, pass_out2 = f"bench.passthrough.{run}", f"bench.passthrough-orjson.{run}"
    settings = settings.model_copy(update={"topics": topics})
    ensure_topics(bootstrap, [topics.raw, topics.protected, topics.dlq,
                              *(f"{t}.{i}" for t in (pass_out, pass_out2) for i in range(rounds)),
                              *(f"bench.floor.{run}-{i}" for i in range(rounds) if engine_floor)], partitions=1)

    say(f"generating {events:,} events ({invalid_rate:.0%} invalid) ...")
    rng = random.Random(seed)
    payloads: list[bytes] = []
    for ev in ClickstreamGenerator(seed=seed).events(events):
        payloads.append(make_invalid(ev, rng)[1] if rng.random() < invalid_rate else orjson.dumps(ev))
    publish(bootstrap, topics.raw, payloads)
    say(f"published to {topics.raw}")
    args = (events, settings.batch_max_events, settings.session_timeout_ms)
    size = sum(map(len, payloads))
    results: list[BenchResult] = []
    for i in range(rounds):
        tag = f"{run}-{i}"
        say(f"round {i + 1} of {rounds}: (a) passthrough ..." if rounds > 1 else "(a) passthrough ...")
        sizing: dict[str, Sizing] = {}
        meter = SizingMeter()
        pass_rate = _passthrough(bootstrap, topics.raw, f"{pass_out}.{i}", *args, codec="json",
                                 on_first=meter.restart)
        sizing["json"] = meter.stop("passthrough (json)", events, size)
        say(f"    passthrough (json):   {pass_rate:,.0f} events/s")
        meter = SizingMeter()
        pass2_rate = _passthrough(bootstrap, topics.raw, f"{pass_out2}.{i}", *args, codec="orjson",
                                  on_first=meter.restart)
        sizing["orjson"] = meter.stop("passthrough (orjson)", events, size)
        say(f"    passthrough (orjson): {pass2_rate:,.0f} events/s")

        say("(b) gateway engine ...")  # every round a new group and new people (a fresh key prefix)
        leg = settings.model_copy(update={"group_prefix": f"bench-gw-{tag}", "redis_key_prefix": f"sgbench-{tag}"})
        meter = SizingMeter()
        gateway = build_gateway(leg)
        gateway.process = _metered(gateway.process, meter)  # type: ignore[method-assign,assignment]
        stats = GatewayEngine(leg, gateway, bootstrap=bootstrap).run(threading.Event(), max_events=events)
        sizing["gateway"] = meter.stop("gateway", events, size)
        gw_rate = stats.rate()
        say(f"    gateway:     {gw_rate:,.0f} events/s")
        if engine_floor:
            say("(c) the engine alone: a core that passes each record through ...")
            meter = SizingMeter()
            idle = build_gateway(leg)
            idle.process = _metered(_pass_through_core, meter)  # type: ignore[method-assign,assignment]
            floor = leg.model_copy(update={"group_prefix": f"bench-floor-{tag}", "topics": TopicNames(
                raw=topics.raw, protected=f"bench.floor.{tag}", dlq=topics.dlq)})
            GatewayEngine(floor, idle, bootstrap=bootstrap).run(threading.Event(), max_events=events)
            sizing["engine alone"] = meter.stop("engine alone", events, size)
        r = BenchResult(events, pass_rate, pass2_rate, gw_rate, 0.0, stats.protected, stats.dead_lettered, sizing)
        results.append(r)
        if rounds > 1:
            say(f"    round {i + 1}: CPU ratio {r.cpu_ratio('json'):.2f} (json), {r.cpu_ratio('orjson'):.2f} (orjson)")
    # the round of the median CPU ratio to orjson (its sizing lines are one round's)
    median = sorted(results, key=lambda r: r.cpu_ratio("orjson"))[len(results) // 2]
    median.core_rate = _core_rate(settings.model_copy(update={"redis_key_prefix": f"sgbench-{run}-0"}), payloads)
    median.rounds = [(r.cpu_ratio("json"), r.cpu_ratio("orjson")) for r in results]
    return median


@dataclass
class FramingResult:
    events: int
    rates: dict[str, list[float]]  # leg -> engine events/s per round (wall clock)
    cpu_rates: dict[str, list[float]]  # leg -> engine events per CPU second of this process per round
    core_rates: dict[str, float]  # leg -> the pure core's events per CPU second

    @staticmethod
    def _median(runs: list[float]) -> float:
        runs = sorted(runs)
        return runs[len(runs) // 2]

    def rate(self, leg: str) -> float:
        return self._median(self.rates[leg])

    def cpu_rate(self, leg: str) -> float:
        return self._median(self.cpu_rates[leg])

    def ratio(self, leg: str) -> float:
        """Median over rounds of the round's ratio to plain JSON (legs of a round run back to back)."""
        return self._median([a / b for a, b in zip(self.rates[leg], self.rates["plain"], strict=True) if b])

    def cpu_ratio(self, leg: str) -> float:
        """The same in events per CPU second: steadier on a loaded machine (other processes'
        load stretches wall-clock time more than this process's CPU time)."""
        return self._median([a / b for a, b in zip(self.cpu_rates[leg], self.cpu_rates["plain"], strict=True) if b])


def framed_payloads(settings: Settings, events: list[dict[str, Any]], kind: str) -> tuple[list[bytes], Any]:
    """``events`` framed as a Confluent serializer frames them (magic 0 + schema id + JSON or Avro),
    with the ids of a mock registry pre-registered from ``schemas/``; and that registry's resolver."""
    import io
    import struct

    import fastavro

    from stream.registry import SchemaResolver, lineage_subject
    from stream.schema import load_schema

    resolver = SchemaResolver.from_url("mock://bench", load_schema(settings.schema_name))
    subject = lineage_subject(settings.schema_name) + ("-avro" if kind == "avro" else "")
    reg = resolver.client.get_latest_version(subject)
    head = b"\x00" + struct.pack(">I", reg.schema_id)
    if kind == "json":
        return [head + orjson.dumps(e) for e in events], resolver
    parsed = fastavro.parse_schema(json.loads(reg.schema.schema_str))
    out = []
    for e in events:
        buf = io.BytesIO()
        fastavro.schemaless_writer(buf, parsed, e)
        out.append(head + buf.getvalue())
    return out, resolver


def run_framing_bench(
    settings: Settings, *, events: int = 50_000, rounds: int = 3, legs: tuple[str, ...] = ("json", "avro"),
    seed: int = 7, say: Callable[[str], None] = print,
) -> FramingResult:
    """The gateway engine on the same events as plain JSON and framed (Schema Registry wire
    format), legs alternating ``rounds`` times (a loaded machine drifts: the median is reported)."""
    bootstrap = settings.kafka_bootstrap_or_dev()
    evs = list(ClickstreamGenerator(seed=seed).events(events))
    inputs: dict[str, tuple[list[bytes], Any]] = {"plain": ([orjson.dumps(e) for e in evs], None)}
    for leg in legs:
        inputs[leg] = framed_payloads(settings, evs, leg)
    run = uuid.uuid4().hex[:8]
    topics_of: dict[str, str] = {}
    for leg, (payloads, _) in inputs.items():
        topics_of[leg] = f"bench.raw.{leg}.{run}"
        ensure_topics(bootstrap, [topics_of[leg]], partitions=1)
        publish(bootstrap, topics_of[leg], payloads)
    say(f"published {events:,} events per leg: {', '.join(inputs)}")
    rates: dict[str, list[float]] = {leg: [] for leg in inputs}
    cpu: dict[str, list[float]] = {leg: [] for leg in inputs}
    for r in range(rounds):
        for leg, (_, resolver) in inputs.items():
            tag = f"{leg}-{r}-{run}"
            topics = TopicNames(raw=topics_of[leg], protected=f"bench.protected.{tag}", dlq=f"bench.dlq.{tag}")
            s = settings.model_copy(update={"topics": topics, "consumer_group": f"bench-fr-{tag}",
                                            "redis_key_prefix": f"sgbench-{run}"})
            ensure_topics(bootstrap, [topics.protected, topics.dlq], partitions=1)
            gw = build_gateway(s)
            gw.resolver = resolver
            engine = GatewayEngine(s, gw, bootstrap=bootstrap)
            c0 = time.process_time()
            stats = engine.run(threading.Event(), max_events=events)
            cpu[leg].append(events / (time.process_time() - c0))
            assert stats.protected == events, stats.as_dict()
            rates[leg].append(stats.rate())
            say(f"    round {r + 1} {leg:<6} {stats.rate():>10,.0f} events/s  {cpu[leg][-1]:>10,.0f} events/CPU-s")
    core: dict[str, float] = {}
    for leg, (payloads, resolver) in inputs.items():
        gw = build_gateway(settings.model_copy(update={"redis_key_prefix": f"sgbench-{run}"}))
        gw.resolver = resolver
        records = [RawRecord("bench", 0, i, p) for i, p in enumerate(payloads)]
        gw.process(records[:2000])
        t0 = time.process_time()
        for i in range(0, len(records), 2000):
            gw.process(records[i : i + 2000])
        core[leg] = len(records) / (time.process_time() - t0)
    return FramingResult(events, rates, cpu, core)
