"""``streamgate dlq replay`` on the real broker and Redis: filters, original keys, idempotence.

The cause: producers framed with a schema version the gateway's registry did not have yet
(``unknown_schema``). Once it is registered there, the dead letters are replayed, by partition
first, then the rest, then once more: nothing is published twice."""

from __future__ import annotations

import json
import time
from collections import Counter
from pathlib import Path

import orjson
import pytest
from confluent_kafka import Producer
from confluent_kafka.schema_registry import Schema
from confluent_kafka.serialization import MessageField, SerializationContext

from stream.apps.engine import GatewayEngine
from stream.commands.dlq_replay import run_replay
from stream.components import build_gateway
from stream.kafka import ensure_topics, producer_config
from stream.registry import SchemaResolver
from stream.schema import load_schema
from stream.synth import ClickstreamGenerator
from tests.gateway.test_framing import SUBJECT, avro_serializer, json_serializer, v2_document
from tests.support.kafka import read_topic, running_in_thread, wait_for

pytestmark = [pytest.mark.integration]


def test_replay_twice_publishes_each_dead_letter_once_with_its_key(settings_factory, kafka_bootstrap):
    settings = settings_factory(batch_max_events=100)
    t = settings.topics
    ensure_topics(kafka_bootstrap, [t.raw, t.protected, t.dlq], partitions=2)
    base = load_schema(settings.schema_name)
    producers = SchemaResolver.from_url("mock://replay-producers", base)
    v2 = json.dumps(v2_document(with_policy=True))
    producers.client.register_schema(SUBJECT, Schema(v2, "JSON"))  # id 3, unknown to the gateway's registry
    gateway = build_gateway(settings)
    assert gateway.resolver is not None
    gateway.resolver.negative_ttl = 0.0
    events = list(ClickstreamGenerator(seed=44).events(90))
    ctx = SerializationContext(t.raw, MessageField.VALUE)
    ser = json_serializer(producers.client)
    framed = [{**e, "utm_campaign": "autumn"} for e in events[:60]]
    p = Producer(producer_config(kafka_bootstrap))
    for e in framed:
        p.produce(t.raw, ser(e, ctx), e["user_id"].encode())
    for e in events[60:80]:
        p.produce(t.raw, orjson.dumps(e), e["user_id"].encode())
    for e in events[80:]:
        p.produce(t.raw, b"{not json " + e["user_id"].encode(), e["user_id"].encode())
    assert p.flush(30) == 0

    with running_in_thread(GatewayEngine(settings, gateway)) as engine:
        wait_for(lambda: engine.stats.emitted >= 90, timeout=120, what="the first pass")
        assert engine.stats.reasons == Counter({"unknown_schema": 60, "not_json": 10}), engine.stats.as_dict()
        dlq = [orjson.loads(r.value) for r in read_topic(kafka_bootstrap, t.dlq, expect=70)]
        assert all(d["sealed_for"].startswith("tk") for d in dlq if d["reason"] == "unknown_schema")

        # nothing matches a window in the future, or a reason nobody has
        assert run_replay(settings, since=time.time() + 3600).matched == 0
        assert run_replay(settings, reasons=("policy_missing",)).matched == 0

        gateway.resolver.client.register_schema(SUBJECT, Schema(v2, "JSON"))  # the fix: id 3 there too
        first = run_replay(settings, reasons=("unknown_schema",), partitions=(0,))
        rest = run_replay(settings, reasons=("unknown_schema",))
        again = run_replay(settings, reasons=("unknown_schema",))
        assert first.replayed > 0 and first.matched == first.replayed < 60
        assert (rest.replayed, rest.already) == (60 - first.replayed, first.replayed)
        assert (again.replayed, again.already) == (0, 60)
        wait_for(lambda: engine.stats.protected >= 80, timeout=120, what="the replayed events")
        time.sleep(2)  # anything duplicated would arrive now
        stats = engine.stats

    assert stats.protected == 80 and stats.dead_lettered == 70, stats.as_dict()
    protected = _protected_once(kafka_bootstrap, t.protected, {e["event_id"] for e in events[:80]})
    assert all(ev["utm_campaign"] == "autumn" for ev in protected if ev["event_id"] in {e["event_id"] for e in framed})
    raw = read_topic(kafka_bootstrap, t.raw, expect=150)
    assert len(raw) == 150  # 90 produced + 60 replayed, once each
    replayed = [r for r in raw if r.value and r.value[:1] == b"\x00"]
    by_id = {e["event_id"]: e for e in framed}
    seen = Counter()
    for r in replayed:
        ev = orjson.loads(r.value[5:])
        assert r.key == by_id[ev["event_id"]]["user_id"].encode()  # the original key
        seen[ev["event_id"]] += 1
    assert set(seen.values()) == {2}  # the original and one replay of each


def _protected_once(bootstrap: str, topic: str, event_ids: set[str]) -> list[dict]:
    """The protected events: each of ``event_ids`` exactly once, nothing else."""
    protected = [orjson.loads(r.value) for r in read_topic(bootstrap, topic, expect=len(event_ids))]
    ids = Counter(ev["event_id"] for ev in protected)
    assert set(ids) == event_ids and max(ids.values()) == 1
    return protected


def _avro_version(*, with_policy: bool, campaign: bool) -> str:
    """The shipped Avro v1 plus billing_email (policed or not) and, in a later version, utm_campaign
    ahead of it: the payload layout changes, so a replay must re-encode, not only re-frame."""
    doc = json.loads((Path(__file__).parents[2] / "schemas" / "clickstream-event.v1.avsc").read_text())
    email = {"name": "billing_email", "type": ["null", "string"], "default": None}
    if with_policy:
        email["x-privacy"] = {"policy": "encrypt"}
    extra = [{"name": "utm_campaign", "type": ["null", "string"], "default": None, "x-privacy": "clear"}]
    doc["fields"] = [*(extra if campaign else []), *doc["fields"], email]
    return json.dumps(doc)


def test_policy_missing_dead_letters_replay_under_the_version_that_adds_the_policy(settings_factory, kafka_bootstrap):
    """v2 adds billing_email without a policy: its events (JSON Schema and Avro frames) are
    dead-lettered. v3 gives it one; `dlq replay --reason policy_missing` re-frames each under v3
    (Avro re-encoded): every one lands in clicks.protected once, with the email sealed; a second
    replay sends nothing."""
    settings = settings_factory(batch_max_events=100)
    t = settings.topics
    ensure_topics(kafka_bootstrap, [t.raw, t.protected, t.dlq], partitions=2)
    gateway = build_gateway(settings)
    resolver = gateway.resolver
    assert resolver is not None
    client = resolver.client
    client.register_schema(SUBJECT, Schema(json.dumps(v2_document(with_policy=False)), "JSON"))
    client.register_schema(SUBJECT + "-avro", Schema(_avro_version(with_policy=False, campaign=False), "AVRO"))
    events = [{**e, "billing_email": f"bill.{e['user_id']}@example.org"}
              for e in ClickstreamGenerator(seed=45).events(80)]
    ctx = SerializationContext(t.raw, MessageField.VALUE)
    js, avro = json_serializer(client), avro_serializer(client)
    p = Producer(producer_config(kafka_bootstrap))
    for i, e in enumerate(events):
        p.produce(t.raw, (js if i % 2 else avro)(e, ctx), e["user_id"].encode())
    assert p.flush(30) == 0

    with running_in_thread(GatewayEngine(settings, gateway)) as engine:
        wait_for(lambda: engine.stats.emitted >= 80, timeout=120, what="the v2 events")
        assert engine.stats.reasons == Counter({"policy_missing": 80}), engine.stats.as_dict()
        early = run_replay(settings, reasons=("policy_missing",), resolver=resolver)
        assert (early.replayed, early.still_refused) == (0, 80)  # no version with a policy yet: nothing sent
        client.register_schema(SUBJECT, Schema(json.dumps(v2_document(with_policy=True)), "JSON"))
        client.register_schema(SUBJECT + "-avro", Schema(_avro_version(with_policy=True, campaign=True), "AVRO"))
        first = run_replay(settings, reasons=("policy_missing",), resolver=resolver)
        again = run_replay(settings, reasons=("policy_missing",), resolver=resolver)
        assert (first.replayed, first.reframed) == (80, 80)
        assert (again.replayed, again.already) == (0, 80)
        wait_for(lambda: engine.stats.protected >= 80, timeout=120, what="the replayed events")
        time.sleep(2)  # anything duplicated would arrive now
        stats = engine.stats

    assert stats.protected == 80 and stats.dead_lettered == 80, stats.as_dict()
    protected = _protected_once(kafka_bootstrap, t.protected, {e["event_id"] for e in events})
    assert all(ev["billing_email"].startswith("sg1.") for ev in protected)
    blob = b"".join(r.value or b"" for r in read_topic(kafka_bootstrap, t.protected, expect=80))
    assert b"@example.org" not in blob
