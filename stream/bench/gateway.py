"""``streamgate bench gateway``: the gateway's throughput as a ratio of a same-run passthrough.

Both legs read the same pre-published events from the same broker, one worker
process each, one after the other:

(a) passthrough: confluent-kafka consume (batches) -> JSON decode -> JSON encode
    -> produce, auto-commit, one flush at the end; twice: with the standard library's
    ``json`` (the plain passthrough the target is stated against) and with ``orjson``
    (the gateway's own codec: the stricter comparison);
(b) the gateway engine: consume -> validate -> tokenize -> encrypt (keys from
    Redis) -> produce to protected/DLQ, commit per batch.

The figure is events/s from the first consumed record to the last delivered one.
"""

from __future__ import annotations

import json
import random
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import orjson
from confluent_kafka import Consumer, Producer

from stream.apps.engine import GatewayEngine
from stream.apps.produce import publish
from stream.components import build_gateway
from stream.config import Settings, TopicNames
from stream.faults import make_invalid
from stream.gateway.core import RawRecord
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

    @property
    def ratio(self) -> float:
        return self.gateway_rate / self.passthrough_rate if self.passthrough_rate else 0.0

    @property
    def ratio_orjson(self) -> float:
        return self.gateway_rate / self.passthrough_orjson_rate if self.passthrough_orjson_rate else 0.0


def _json_dumps(value: Any) -> bytes:
    return json.dumps(value).encode()


def _passthrough(
    bootstrap: str, src: str, dst: str, n: int, batch: int, session_timeout_ms: int, codec: str = "json"
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


def run_gateway_bench(
    settings: Settings,
    *,
    events: int = 100_000,
    invalid_rate: float = 0.01,
    seed: int = 7,
    say: Callable[[str], None] = print,
) -> BenchResult:
    bootstrap = settings.kafka_bootstrap_or_dev()
    run = uuid.uuid4().hex[:8]
    topics = TopicNames(
        raw=f"bench.raw.{run}",
        protected=f"bench.protected.{run}",
        dlq=f"bench.dlq.{run}",
    )
    pass_out, pass_out2 = f"bench.passthrough.{run}", f"bench.passthrough-orjson.{run}"
    settings = settings.model_copy(
        update={"topics": topics, "group_prefix": f"bench-gw-{run}", "redis_key_prefix": f"sgbench-{run}"}
    )
    ensure_topics(bootstrap, [topics.raw, topics.protected, topics.dlq, pass_out, pass_out2], partitions=1)

    say(f"generating {events:,} events ({invalid_rate:.0%} invalid) ...")
    rng = random.Random(seed)
    payloads: list[bytes] = []
    for ev in ClickstreamGenerator(seed=seed).events(events):
        payloads.append(make_invalid(ev, rng)[1] if rng.random() < invalid_rate else orjson.dumps(ev))
    publish(bootstrap, topics.raw, payloads)
    say(f"published to {topics.raw}; (a) passthrough ...")
    args = (events, settings.batch_max_events, settings.session_timeout_ms)
    pass_rate = _passthrough(bootstrap, topics.raw, pass_out, *args, codec="json")
    say(f"    passthrough (json):   {pass_rate:,.0f} events/s")
    pass2_rate = _passthrough(bootstrap, topics.raw, pass_out2, *args, codec="orjson")
    say(f"    passthrough (orjson): {pass2_rate:,.0f} events/s")

    say("(b) gateway engine ...")
    engine = GatewayEngine(settings, build_gateway(settings), bootstrap=bootstrap)
    stats = engine.run(threading.Event(), max_events=events)
    gw_rate = stats.rate()
    say(f"    gateway:     {gw_rate:,.0f} events/s")
    core_rate = _core_rate(settings, payloads)
    return BenchResult(events, pass_rate, pass2_rate, gw_rate, core_rate, stats.protected, stats.dead_lettered)
