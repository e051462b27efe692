"""Fail closed, no loss, and arbitrary input, on a real broker and real Redis servers."""

from __future__ import annotations

import json
import time
from collections import Counter

import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from stream.apps.produce import publish
from stream.components import build_dek_provider
from stream.gateway.reader import ProtectedEventReader
from stream.kafka import ensure_topics
from stream.schema import load_schema
from stream.synth import ClickstreamGenerator
from tests.support.kafka import read_topic, running_engine, wait_for

pytestmark = [pytest.mark.integration, pytest.mark.slow]
SCHEMA = load_schema("clickstream-event.v1")


def test_redis_down_mid_stream_holds_everything_and_loses_nothing(kafka_bootstrap, own_redis, settings_factory):
    """Invariant 2 (fail closed) and 5 (exactly one output per event): stop Redis mid-stream ->
    no protected output while it is down; restart it -> every event delivered exactly once."""
    s = settings_factory(
        redis_url=own_redis.url, dek_cache_max_staleness_seconds=0.0,  # every batch asks Redis
        batch_max_events=200, retry_backoff_seconds=0.1,
    )
    ensure_topics(kafka_bootstrap, [s.topics.raw, s.topics.protected, s.topics.dlq], partitions=2)
    gen = ClickstreamGenerator(seed=21)
    before, during = list(gen.events(1000)), list(gen.events(1000))

    with running_engine(s) as engine:
        publish(kafka_bootstrap, s.topics.raw, before)
        wait_for(lambda: engine.stats.emitted >= 1000, what="the first half")
        own_redis.stop()
        publish(kafka_bootstrap, s.topics.raw, during)
        wait_for(lambda: engine.stats.fail_closed_retries >= 2, what="the gateway to notice Redis is gone")
        time.sleep(2.0)  # give a leaking implementation the chance to leak
        assert engine.stats.emitted == 1000, "events were emitted while the key store was down"
        out = read_topic(kafka_bootstrap, s.topics.protected, idle=1.0)
        assert {orjson.loads(r.value)["event_id"] for r in out} == {e["event_id"] for e in before}
        own_redis.start()
        wait_for(lambda: engine.stats.emitted >= 2000, what="the held events after Redis came back")

    out = read_topic(kafka_bootstrap, s.topics.protected, expect=2000)
    ids = Counter(orjson.loads(r.value)["event_id"] for r in out)
    assert set(ids) == {e["event_id"] for e in before + during}
    assert max(ids.values()) == 1, "duplicates downstream"
    assert not read_topic(kafka_bootstrap, s.topics.dlq, idle=0.5)
    # and the events protected after the outage decrypt with keys that survived the restart
    reader = ProtectedEventReader(SCHEMA, build_dek_provider(s))
    by_id = {e["event_id"]: e for e in during}
    for r in out:
        ev = orjson.loads(r.value)
        if ev["event_id"] in by_id:
            assert reader.decrypt(ev).get("email") == by_id[ev["event_id"]].get("email")


def test_a_missing_kek_fails_closed_too(kafka_bootstrap, settings_factory):
    """Data keys in Redis wrapped by a KEK this worker's keyring lacks (same root key, so the same
    tokens; the newest wrapping key missing): nothing is emitted, nothing passes in clear."""
    import base64
    import os

    from pydantic import SecretStr

    root, newest = (base64.b64encode(os.urandom(32)).decode() for _ in range(2))
    s = settings_factory(master_key=f"root:{root},new:{newest}", batch_max_events=100, retry_backoff_seconds=0.2)
    ensure_topics(kafka_bootstrap, [s.topics.raw, s.topics.protected, s.topics.dlq], partitions=1)
    with_email = [e for e in ClickstreamGenerator(seed=8).events(400) if e.get("email")][:100]
    publish(kafka_bootstrap, s.topics.raw, with_email)
    with running_engine(s) as engine:
        wait_for(lambda: engine.stats.emitted >= 100, what="keys to exist")
    lacking = s.model_copy(update={"master_key": SecretStr(f"root:{root}")})
    publish(kafka_bootstrap, s.topics.raw, with_email)  # the same people again: their keys exist
    with running_engine(lacking) as engine:
        wait_for(lambda: engine.stats.fail_closed_retries >= 2, what="the unwrap failure to hold the batch")
        assert engine.stats.emitted == 0
    assert len(read_topic(kafka_bootstrap, s.topics.protected, expect=100)) == 100


json_scalars = st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=12)
json_values = st.recursive(json_scalars, lambda c: st.lists(c, max_size=3) | st.dictionaries(st.text(max_size=8), c, max_size=3),
                           max_leaves=8)
_base = list(ClickstreamGenerator(seed=4).events(30))
payloads = st.one_of(
    st.binary(max_size=200),
    json_values.map(lambda v: json.dumps(v).encode()),
    st.builds(lambda ev, ch: json.dumps({**ev, **ch}).encode(), st.sampled_from(_base),
              st.dictionaries(st.sampled_from([*SCHEMA.fields, "x"]), json_values, max_size=2)),
    st.sampled_from(_base).map(lambda ev: json.dumps(ev).encode()),
)


def test_arbitrary_bytes_and_json_each_end_in_exactly_one_topic(kafka_bootstrap, settings_factory):
    s = settings_factory(batch_max_events=100)
    ensure_topics(kafka_bootstrap, [s.topics.raw, s.topics.protected, s.topics.dlq], partitions=1)
    sent: list[bytes] = []

    with running_engine(s) as engine:

        @settings(max_examples=25, deadline=None, suppress_health_check=list(HealthCheck))
        @given(st.lists(payloads, min_size=1, max_size=40))
        def one_batch(batch: list[bytes]) -> None:
            target = engine.stats.emitted + len(batch)
            publish(kafka_bootstrap, s.topics.raw, batch)
            sent.extend(batch)
            wait_for(lambda: engine.stats.emitted >= target, timeout=60, what="the batch's outputs")
            assert engine.stats.emitted == target
            assert engine.thread.is_alive()  # type: ignore[attr-defined]

        one_batch()

    protected = read_topic(kafka_bootstrap, s.topics.protected, idle=1.0)
    dlq = read_topic(kafka_bootstrap, s.topics.dlq, idle=1.0)
    assert len(protected) + len(dlq) == len(sent)
    expected_valid = 0
    for raw in sent:
        try:
            ev = orjson.loads(raw)
        except orjson.JSONDecodeError:
            continue
        if SCHEMA.check(ev) is None and len(raw) <= s.max_event_bytes:
            expected_valid += 1
    assert len(protected) == expected_valid
    sources = Counter(orjson.loads(r.value)["source"]["offset"] for r in dlq)
    assert max(sources.values(), default=1) == 1


def test_exactly_once_mode_uses_transactions(kafka_bootstrap, settings_factory):
    """processing_guarantee=exactly_once: outputs and offsets in one transaction per batch.
    (The embedded broker may leave aborted records visible; none are aborted here.)"""
    s = settings_factory(processing_guarantee="exactly_once", batch_max_events=250)
    ensure_topics(kafka_bootstrap, [s.topics.raw, s.topics.protected, s.topics.dlq], partitions=2)
    events = list(ClickstreamGenerator(seed=9).events(1000))
    publish(kafka_bootstrap, s.topics.raw, events)
    with running_engine(s) as engine:
        wait_for(lambda: engine.stats.emitted >= 1000, what="transactional batches")
    out = read_topic(kafka_bootstrap, s.topics.protected, expect=1000)
    ids = Counter(orjson.loads(r.value)["event_id"] for r in out)
    assert set(ids) == {e["event_id"] for e in events} and max(ids.values()) == 1
    # a restarted worker with the same group resumes after the committed offsets: once a marker
    # published after the restart is out, the marker is all it consumed (nothing re-read)
    marker = next(iter(ClickstreamGenerator(seed=10).events(1)))
    with running_engine(s) as engine:
        publish(kafka_bootstrap, s.topics.raw, [marker])
        wait_for(lambda: engine.stats.emitted >= 1, what="the marker")
        assert engine.stats.consumed == 1


def test_a_near_megabyte_record_among_20000_never_stalls_the_gateway(kafka_bootstrap, settings_factory):
    """Issue 11: a 900 KB record (the broker takes it; sealed it would not fit) inside 20,000 valid ones. It is dead-lettered
    as a keyed digest (never its bytes), all 20,000 are protected, and the worker never stalls."""
    s = settings_factory(batch_max_events=2000)
    ensure_topics(kafka_bootstrap, [s.topics.raw, s.topics.protected, s.topics.dlq], partitions=2)
    events = list(ClickstreamGenerator(seed=12).events(20_000))
    big = b'{"page": "' + b"x" * 900_000 + b'"}'
    publish(kafka_bootstrap, s.topics.raw, [orjson.dumps(e) for e in events[:10_000]])
    publish(kafka_bootstrap, s.topics.raw, [big])
    publish(kafka_bootstrap, s.topics.raw, [orjson.dumps(e) for e in events[10_000:]])
    with running_engine(s) as engine:
        wait_for(lambda: engine.stats.emitted >= 20_001, what="every record out", timeout=180)
        assert engine.progress.stalls == 0 and engine.ready
    out = read_topic(kafka_bootstrap, s.topics.protected, expect=20_000)
    assert {orjson.loads(r.value)["event_id"] for r in out} == {e["event_id"] for e in events}
    (dead,) = read_topic(kafka_bootstrap, s.topics.dlq, idle=1.0)
    letter = orjson.loads(dead.value)
    assert letter["reason"] == "too_large" and letter["size"] == len(big)
    assert letter["sealed"] is None and letter["digest"].startswith("hs1.") and len(dead.value) < 2000
    assert b"xxxx" not in dead.value
