"""Schema Registry framing and schema evolution end to end, on the real broker and Redis.

Producers use confluent-kafka's own serializers (JSON Schema and Avro) against the mock registry
the gateway's resolver shares; the gateway runs throughout while the subject gains versions."""

from __future__ import annotations

import json

import orjson
import pytest
from confluent_kafka import Producer
from confluent_kafka.schema_registry import Schema
from confluent_kafka.serialization import MessageField, SerializationContext

from stream.apps.engine import GatewayEngine
from stream.components import build_gateway
from stream.gateway.core import unseal_dead_letter
from stream.kafka import ensure_topics, producer_config
from stream.registry import SchemaResolver
from stream.schema import load_schema, output_validator
from stream.synth import ClickstreamGenerator
from tests.gateway.test_framing import SUBJECT, avro_serializer, json_serializer, v2_document
from tests.support.kafka import read_topic, running_in_thread, wait_for

pytestmark = [pytest.mark.integration]


def _send(bootstrap: str, topic: str, items: list[tuple[bytes, bytes]]) -> None:
    p = Producer(producer_config(bootstrap))
    for key, value in items:
        p.produce(topic, value, key)
    assert p.flush(30) == 0


def test_framed_producers_and_a_schema_that_evolves_under_a_running_gateway(settings_factory, kafka_bootstrap):
    settings = settings_factory(batch_max_events=200)
    t = settings.topics
    ensure_topics(kafka_bootstrap, [t.raw, t.protected, t.dlq], partitions=2)
    resolver = SchemaResolver.from_url("mock://test-gateway-framing", load_schema(settings.schema_name))
    gateway = build_gateway(settings)
    gateway.resolver = resolver  # the producers' registry
    events = list(ClickstreamGenerator(seed=33).events(400))
    ctx = SerializationContext(t.raw, MessageField.VALUE)
    js, avro = json_serializer(resolver.client), avro_serializer(resolver.client)
    v1 = [(e["user_id"].encode(), js(e, ctx)) for e in events[:100]]
    v1 += [(e["user_id"].encode(), avro(e, ctx)) for e in events[100:200]]
    envelope = [(e["user_id"].encode(), orjson.dumps({"schema": {"type": "struct"}, "payload": e}))
                for e in events[200:220]]

    def extra(e: dict) -> dict:
        return {**e, "utm_campaign": "spring", "customer_name": f"Name {e['user_id']}",
                "billing_email": f"bill.{e['user_id']}@example.org", "context": {"app": "ios"}}

    with running_in_thread(GatewayEngine(settings, gateway)) as engine:
        _send(kafka_bootstrap, t.raw, v1 + envelope)
        wait_for(lambda: engine.stats.emitted >= 220, timeout=120, what="v1 and envelopes")
        # v2 adds billing_email without a policy: its records are dead-lettered, naming the field
        resolver.client.register_schema(SUBJECT, Schema(json.dumps(v2_document(with_policy=False)), "JSON"))
        gap = [(e["user_id"].encode(), json_serializer(resolver.client)(extra(e), ctx)) for e in events[220:300]]
        _send(kafka_bootstrap, t.raw, gap)
        wait_for(lambda: engine.stats.emitted >= 300, timeout=120, what="v2 without a policy")
        # v3 gives it one: applies on its first record, same worker, nothing lost
        resolver.client.register_schema(SUBJECT, Schema(json.dumps(v2_document(with_policy=True)), "JSON"))
        ok = [(e["user_id"].encode(), json_serializer(resolver.client)(extra(e), ctx)) for e in events[300:400]]
        _send(kafka_bootstrap, t.raw, ok)
        wait_for(lambda: engine.stats.emitted >= 400, timeout=120, what="v3 with a policy")
        stats = engine.stats

    assert stats.protected == 320 and stats.dead_lettered == 80, stats.as_dict()
    protected = [orjson.loads(r.value) for r in read_topic(kafka_bootstrap, t.protected, expect=320)]
    dlq = [orjson.loads(r.value) for r in read_topic(kafka_bootstrap, t.dlq, expect=80)]
    assert sorted(p["event_id"] for p in protected) == sorted(
        e["event_id"] for e in events[:220] + events[300:400])
    check = output_validator("protected-event.v1")
    v1_ids = {e["event_id"] for e in events[:220]}
    assert all(check(p) == [] for p in protected if p["event_id"] in v1_ids)
    evolved = [p for p in protected if p["event_id"] not in v1_ids]
    assert all(p["utm_campaign"] == "spring" and p["billing_email"].startswith("sg1.") and "context" not in p
               for p in evolved)
    assert {(d["reason"], d["path"]) for d in dlq} == {("policy_missing", "billing_email")}
    assert all(d["sealed_for"].startswith("tk") for d in dlq)  # under each person's key
    raw = {v for _, v in gap}
    assert unseal_dead_letter(dlq[0], gateway.deks) in raw
    blob = b"".join(r.value or b"" for r in read_topic(kafka_bootstrap, t.protected, expect=320))
    assert b"@example.org" not in blob and b"Name " not in blob


def test_an_open_category_passes_the_broker_and_is_estimated_as_other(settings_factory, kafka_bootstrap):
    """An external-style stream (plain JSON, no registry) where about 3 % of the events carry a
    category the catalog added since the schema was written: v1's category is open, so none is
    dead-lettered, and the privatizer (same schema) estimates them as _other, covering the truth."""
    import os
    import random
    import time

    import numpy as np

    from stream.ldp.aggregate import WindowAggregator, merge_records
    from stream.ldp.memo import MemoCache, MemoryMemoStore
    from stream.ldp.policy import OTHER_VALUE, LdpPolicy
    from stream.ldp.privatizer import Privatizer, ProtectedRecord
    from tests.support.clock import Clock

    n = 3000
    settings = settings_factory(batch_max_events=500)
    t = settings.topics
    ensure_topics(kafka_bootstrap, [t.raw, t.protected, t.dlq], partitions=2)
    rng = random.Random(31)
    new_values = ("fashion", "gift_cards", "pet_food")
    events = []
    for i, e in enumerate(ClickstreamGenerator(seed=32, n_users=n).events(n)):
        e["user_id"] = f"person-{i}"
        if rng.random() < 0.03:
            e["category"] = rng.choice(new_values)
        events.append(e)
    unknown = sum(e.get("category") in new_values for e in events)
    assert 50 < unknown < 130
    with running_in_thread(GatewayEngine(settings, build_gateway(settings))) as engine:
        _send(kafka_bootstrap, t.raw, [(e["user_id"].encode(), orjson.dumps(e)) for e in events])
        wait_for(lambda: engine.stats.emitted >= n, timeout=180, what="the open-domain events")
        stats = engine.stats
    assert stats.protected == n and stats.dead_lettered == 0, stats.as_dict()
    protected = read_topic(kafka_bootstrap, t.protected, expect=n)
    assert sum(orjson.loads(r.value).get("category") in new_values for r in protected) == unknown
    check = output_validator("protected-event.v1")  # the output contract is open too
    assert all(check(orjson.loads(r.value)) == [] for r in protected)

    # a high epsilon: at 3 % of 3,000 people the estimate must stand clear of zero to mean anything
    policy = LdpPolicy.from_schema(load_schema(settings.schema_name), 8.0)
    priv = Privatizer(policy, MemoryMemoStore(time.time), memo_key=os.urandom(32), subject_field="user_id",
                      budget_epsilon=1000.0, epoch_seconds=86400, retention_seconds=30 * 86400,
                      rng=np.random.default_rng(6), cache=MemoCache(max_entries=100_000, max_staleness_seconds=30.0),
                      clock=time.time, shuffle_seed=6)
    now_ms = int(time.time() * 1000)
    reports = priv.process([ProtectedRecord(r.value, now_ms) for r in protected]).attribute_reports
    agg = WindowAggregator(policy, window_seconds=3600, clock=Clock(time.time()))
    agg.add(reports)
    (cat,) = [r for r in merge_records(policy, [r for w in agg.drain() for r in agg.records(w, worker="t")])
              if r["attribute"] == "category"]
    other = next(v for v in cat["values"] if v["value"] == OTHER_VALUE)
    truth = unknown / n
    assert abs(other["estimate"] - truth) < 4 * other["std_error"], (other, truth)
    assert other["estimate"] > 3 * other["std_error"]  # counted, not noise around zero


def test_trace_context_crosses_the_gateway_and_nothing_else_does(settings_factory, kafka_bootstrap):
    """W3C trace headers of a raw record reach its protected record (STREAMGATE_GATEWAY_PASS_HEADERS);
    every other header, here one carrying a person's email, is dropped."""
    settings = settings_factory(batch_max_events=50)
    t = settings.topics
    ensure_topics(kafka_bootstrap, [t.raw, t.protected, t.dlq], partitions=2)
    events = list(ClickstreamGenerator(seed=41).events(60))
    p = Producer(producer_config(kafka_bootstrap))
    for i, e in enumerate(events):
        headers = [("x-customer-email", e["email"].encode())] if isinstance(e.get("email"), str) else []
        if i % 2 == 0:  # half of them traced
            headers += [("traceparent", f"00-{i:032x}-{i:016x}-01".encode()), ("tracestate", b"sg=1")]
        p.produce(t.raw, orjson.dumps(e), e["user_id"].encode(), headers=headers or None)
    assert p.flush(30) == 0
    with running_in_thread(GatewayEngine(settings, build_gateway(settings))) as engine:
        wait_for(lambda: engine.stats.emitted >= len(events), timeout=120, what="every event")
    out = read_topic(kafka_bootstrap, t.protected, expect=engine.stats.protected)
    assert len(out) == engine.stats.protected > 0
    want = {e["event_id"]: i for i, e in enumerate(events)}
    traced = 0
    for rec in out:
        i = want[orjson.loads(rec.value or b"")["event_id"]]
        names = [k for k, _v in rec.headers]
        assert "x-customer-email" not in names
        if i % 2 == 0:
            assert dict(rec.headers) == {"traceparent": f"00-{i:032x}-{i:016x}-01".encode(), "tracestate": b"sg=1"}
            traced += 1
        else:
            assert rec.headers == []
    assert traced >= len(out) // 2 - 2  # about half the protected events were traced


def test_framed_protected_output_is_read_by_confluent_kafkas_json_deserializer(settings_factory, kafka_bootstrap):
    """STREAMGATE_GATEWAY_FRAME_OUTPUT: clicks.protected values are framed (magic 0 + the id of
    protected-event.v1, registered under clicks.protected-value); confluent-kafka's own
    JSONDeserializer (it fetches the schema by id and validates) reads every one, including an
    open-domain category; streamgate's own readers (the privatizer, decrypt) drop the frame (unframed)."""
    from confluent_kafka.schema_registry.json_schema import JSONDeserializer

    from stream.gateway.framing import unframed

    settings = settings_factory(batch_max_events=100, gateway_frame_output=True)
    t = settings.topics
    ensure_topics(kafka_bootstrap, [t.raw, t.protected, t.dlq], partitions=2)
    gateway = build_gateway(settings)
    assert gateway.resolver is not None
    client = gateway.resolver.client
    events = list(ClickstreamGenerator(seed=46).events(120))
    events[0]["category"] = "fashion"
    _send(kafka_bootstrap, t.raw, [(e["user_id"].encode(), orjson.dumps(e)) for e in events])
    with running_in_thread(GatewayEngine(settings, gateway)) as engine:
        wait_for(lambda: engine.stats.emitted >= len(events), timeout=120, what="every event")
    assert engine.stats.protected == len(events)
    out = read_topic(kafka_bootstrap, t.protected, expect=len(events))
    registered = client.get_latest_version(f"{t.protected}-value")
    assert all(r.value[:5] == b"\x00" + registered.schema_id.to_bytes(4, "big") for r in out)
    deserialize = JSONDeserializer(None, schema_registry_client=client)  # validates against the registered schema
    ctx = SerializationContext(t.protected, MessageField.VALUE)
    got = [deserialize(r.value, ctx) for r in out]
    assert sorted(g["event_id"] for g in got) == sorted(e["event_id"] for e in events)
    assert [g["event_id"] for g in got if g.get("category") == "fashion"] == [events[0]["event_id"]]
    assert all(g == orjson.loads(unframed(r.value)) for g, r in zip(got, out, strict=True))
    assert all(g["user_id"].startswith("tk") for g in got)
