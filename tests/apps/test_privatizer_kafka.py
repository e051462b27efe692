"""The privatizer engine on the real broker and Redis: protected events in, private features and
frequency estimates out; nothing identifying ever reaches features.private (invariant 1 / 4)."""

from __future__ import annotations

import re
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager

import orjson
import pytest
import redis

from stream.apps.privatizer import PrivatizerEngine, build_privatizer
from stream.apps.produce import publish
from stream.components import build_gateway
from stream.config import Settings
from stream.gateway.core import RawRecord
from stream.kafka import ensure_topics
from stream.ldp.aggregate import latest_per_source, merge_records
from stream.schema import output_validator
from stream.synth import ClickstreamGenerator
from tests.support.fixtures import OwnRedis
from tests.support.kafka import read_topic, running_in_thread, wait_for

pytestmark = [pytest.mark.integration, pytest.mark.slow]

N = 4000


@contextmanager
def running_privatizer(settings: Settings, seed: int | None = None) -> Iterator[PrivatizerEngine]:
    engine = PrivatizerEngine(settings, build_privatizer(settings, seed=seed), grace_seconds=0.5, idle_seconds=1.0)
    with running_in_thread(engine, "privatizer") as running:
        yield running


def _protect_and_publish(settings: Settings, events: list[dict]) -> list[tuple[bytes, bytes]]:
    gw = build_gateway(settings)
    res = gw.process([RawRecord("raw", 0, i, orjson.dumps(e)) for i, e in enumerate(events)])
    assert not res.dead_letters
    publish(settings.kafka_bootstrap_or_dev(), settings.topics.protected, [v for _k, v in res.protected])
    return res.protected


@pytest.mark.parametrize("redis_backend", ["single", "cluster"])  # the charge script per slot
def test_privatizer_end_to_end(settings_factory, redis_client: redis.Redis) -> None:
    settings = settings_factory(ldp_person_epsilon=1000.0, ldp_window_seconds=2.0)
    t = settings.topics
    bootstrap = settings.kafka_bootstrap_or_dev()
    ensure_topics(bootstrap, [t.protected, t.features, t.frequencies], partitions=2)
    gen = ClickstreamGenerator(seed=21, n_users=3000)
    events = list(gen.events(N))
    protected = _protect_and_publish(settings, events)
    with running_privatizer(settings, seed=1) as engine:
        wait_for(lambda: engine.stats.released >= N, what="all feature reports", timeout=120)
        wait_for(lambda: engine.stats.windows_published >= 1, what="a closed window", timeout=60)
    assert engine.stats.consumed == N and engine.stats.reports == N and not engine.stats.skipped

    feats = read_topic(bootstrap, t.features, expect=N)
    assert len(feats) == N
    check = output_validator("private-feature.v1")
    blob = b"\n".join(r.value or b"" for r in feats)
    # invariant 1 for features.private: no key, no header, no token, no identifier, no exact time
    assert all(r.key is None and not r.headers for r in feats)
    assert all(r.timestamp_ms is not None and r.timestamp_ms % 3_600_000 == 0 for r in feats)
    assert not re.search(rb"tk\d+_", blob)  # neither person (tk2) nor session (tk1) tokens
    tokens = {k for k, _v in protected}
    assert not any(tok in blob for tok in tokens)
    for ev in events:
        for f in ("user_id", "session_id", "event_id", "email", "ip", "phone", "shipping_address", "ts"):
            v = ev.get(f)
            if isinstance(v, str) and len(v) >= 4:
                assert v.encode() not in blob, f
    assert not re.search(rb"\d{4}-\d{2}-\d{2}", blob)
    for r in feats[:300]:
        assert check(orjson.loads(r.value or b"")) == []

    # estimates: merged over windows and partitions they cover every event; close to the truth
    freq = read_topic(bootstrap, t.frequencies)
    recs = [orjson.loads(r.value or b"") for r in freq]
    assert all(output_validator("frequency-estimate.v1")(rec) == [] for rec in recs)
    assert {r.key for r in freq} <= {b"event_type", b"category", b"price", b"device", b"country"}
    merged = {r["attribute"]: r for r in merge_records(engine.privatizer.policy, recs)}
    assert merged["event_type"]["n"] == N  # a cap of 1000: every event is within its person's budget
    # one process, two input partitions: two sources, which `streamgate estimates` adds up, not dedupes
    assert len({r["worker"] for r in recs}) == 2
    (shown,) = [r for r in merge_records(engine.privatizer.policy, latest_per_source(recs))
                if r["attribute"] == "event_type"]
    assert shown["n"] == N
    # the person-epoch's joint-nb example (1.0) is paid first: (1000 - 1) / 2.5 reports per person
    assert "first 399 events" in merged["event_type"]["estimand"]
    truth = Counter(e["event_type"] for e in events)
    for v in merged["event_type"]["values"]:
        assert abs(v["estimate"] - truth[v["value"]] / N) < 4.5 * v["std_error"], v
    top_true = truth.most_common(1)[0][0]
    top_est = max(merged["event_type"]["values"], key=lambda v: v["projected"])["value"]
    assert top_est == top_true

    # Redis holds one ledger number per person and epoch (no memo, no true value), under the retention
    prefix = settings.redis_key_prefix
    assert not list(redis_client.scan_iter(match=f"{prefix}:memo:*", count=1000))
    ledgers = list(redis_client.scan_iter(match=f"{prefix}:ledger:*", count=1000))
    people = {e["user_id"] for e in events}
    assert len(ledgers) == len(people)
    # 5 x 0.5 per report, and each person's one joint-nb example (1.0) once
    assert sum(int(redis_client.get(k) or 0) for k in ledgers) == N * 2_500_000 + len(people) * 1_000_000
    assert all(redis_client.ttl(k) > 0 for k in ledgers[:50])


@pytest.mark.parametrize("redis_backend", ["single", "cluster"])  # the charge script per slot
def test_replay_is_charged_again_and_no_report_repeats(settings_factory, redis_client: redis.Redis) -> None:
    """At-least-once: a second consumer group re-reading the same records releases them again - with fresh
    noise, so no report repeats - and pays for them again: every ledger in Redis doubles (a replay is a new
    release, never free), read from Redis before and after, not from the worker's counters."""
    settings = settings_factory(ldp_window_seconds=60.0, ldp_person_epsilon=1000.0)
    t = settings.topics
    bootstrap = settings.kafka_bootstrap_or_dev()
    ensure_topics(bootstrap, [t.protected, t.features, t.frequencies], partitions=1)
    events = list(ClickstreamGenerator(seed=5, n_users=200).events(500))
    _protect_and_publish(settings, events)
    people = len({e["user_id"] for e in events})

    def ledgers() -> dict[bytes, int]:
        keys = redis_client.scan_iter(match=f"{settings.redis_key_prefix}:ledger:*", count=1000)
        return {k: int(redis_client.get(k) or 0) for k in keys}

    with running_privatizer(settings) as first:
        wait_for(lambda: first.stats.released >= 500, what="first pass")
    before = ledgers()
    # 5 x 0.5 per report, and each person's joint-nb example (1.0), paid at their first event
    assert before and sum(before.values()) == 500 * 2_500_000 + people * 1_000_000
    replay = settings.model_copy(update={"group_prefix": settings.group_prefix + "-replay"})
    with running_privatizer(replay) as second:
        wait_for(lambda: second.stats.released >= 500, what="replay")
    after = ledgers()
    assert set(after) == set(before) and all(after[k] == 2 * v for k, v in before.items())
    feats = read_topic(bootstrap, t.features, expect=1000)
    assert len(feats) == 1000
    assert len({r.value for r in feats}) == 1000  # no report repeats


def test_redis_down_holds_the_batch(settings_factory, own_redis: OwnRedis) -> None:
    """Fail closed: with the memo store unreachable nothing is emitted; once it is back, everything is."""
    settings = settings_factory(redis_url=own_redis.url, retry_backoff_seconds=0.1,
                                ldp_person_epsilon=1000.0)
    t = settings.topics
    bootstrap = settings.kafka_bootstrap_or_dev()
    ensure_topics(bootstrap, [t.protected, t.features, t.frequencies], partitions=1)
    _protect_and_publish(settings, list(ClickstreamGenerator(seed=8).events(300)))
    own_redis.stop()
    with running_privatizer(settings) as engine:
        wait_for(lambda: engine.stats.fail_closed_retries >= 2, what="fail-closed retries")
        assert engine.stats.reports == 0
        assert read_topic(bootstrap, t.features, idle=1.0) == []
        own_redis.start()
        wait_for(lambda: engine.stats.released >= 300, what="reports after Redis came back")
    assert len(read_topic(bootstrap, t.features, expect=300)) == 300



def test_labelled_examples_are_released_when_sessions_end(settings_factory) -> None:
    """With labelled examples on, every reported event also yields one private-example.v1 record once its
    session has been idle for the gap; at label epsilon 20 (flip probability 2e-9) the randomized labels
    count exactly the events of the sessions that contain a purchase."""
    settings = settings_factory(ldp_person_epsilon=1000.0, learn_label_epsilon=20.0,
                                learn_session_gap_seconds=1.0, learn_model="logistic")  # per-event v1 (issue 22)
    t = settings.topics
    bootstrap = settings.kafka_bootstrap_or_dev()
    ensure_topics(bootstrap, [t.protected, t.features, t.frequencies], partitions=2)
    events = list(ClickstreamGenerator(seed=33, n_users=800).events(2000))
    protected = _protect_and_publish(settings, events)
    with running_privatizer(settings, seed=5) as engine:
        wait_for(lambda: engine.stats.examples >= 2000 and engine.stats.released >= 4000,
                 what="all labelled examples", timeout=120)
    st = engine.stats
    assert st.reports == 2000 and st.examples == 2000 and st.examples_pending == 0 and not st.examples_dropped
    recs = read_topic(bootstrap, t.features, expect=4000)
    examples = [r for r in recs if b'"private-example.v1"' in (r.value or b"")]
    assert len(examples) == 2000 and len(recs) == 4000
    assert all(r.key is None and not r.headers and r.timestamp_ms % 3_600_000 == 0 for r in examples)
    check = output_validator("private-example.v1")
    docs = [orjson.loads(r.value or b"") for r in examples]
    assert all(check(d) == [] for d in docs)
    buying = {e["session_id"] for e in events if e["event_type"] == "purchase"}
    positives = sum(e["session_id"] in buying for e in events)
    assert 0 < positives < 2000
    assert sum(d["label"]["r"] for d in docs) == positives
    blob = b"\n".join(r.value or b"" for r in examples)
    assert not re.search(rb"tk\d+_", blob) and not any(tok in blob for tok, _v in protected)
    assert not any(e["session_id"].encode() in blob for e in events)


def test_an_erasure_drops_the_persons_held_examples(settings_factory, redis_client: redis.Redis) -> None:
    """The shredder's channel says "every epoch of tk1_a is gone": the privatizer never emits that
    person's examples still waiting for their session to end (nor charges labels for them);
    a retention shred of one epoch of someone else leaves theirs alone (retention is checked when
    they are labelled)."""
    from stream.apps.privatizer import start_memo_invalidation
    from stream.ldp.labels import ExampleStub

    settings = settings_factory(learn_session_gap_seconds=3600.0)
    priv = build_privatizer(settings)
    engine = PrivatizerEngine(settings, priv, bootstrap="127.0.0.1:9")  # never connects in this test
    assert engine.labeler is not None
    epoch = int(time.time()) // settings.epoch_seconds
    held = [ExampleStub("s1", "tk1_a", epoch, False, b'"features":{}', 0),
            ExampleStub("s2", "tk1_b", epoch, False, b'"features":{}', 0)]
    engine.labeler.add(held)
    engine._released.append((ExampleStub("s3", "tk1_a", epoch, True, b'"features":{}', 0), True))
    listener = start_memo_invalidation(settings, priv, on_erasure=engine.forget_subject)
    try:
        assert listener.ready.wait(10)
        channel = f"{settings.redis_key_prefix}:shredded"
        redis_client.publish(channel, f"tk1_b:{epoch}")  # retention of one epoch: not an erasure
        redis_client.publish(channel, "tk1_a:*")
        wait_for(lambda: listener.received >= 2 and len(engine._erased) == 1, what="the shred messages", timeout=10)
    finally:
        listener.stop()
    engine._drop_erased()
    assert engine.labeler.pending == 1 and engine._released == []
    assert engine.labeler.dropped["erased"] == 1 and engine.stats.examples_dropped["erased"] == 1
