"""The gateway end to end on a real Kafka-protocol broker and a real Redis."""

from __future__ import annotations

import logging
import random
from collections import Counter

import orjson
import pytest
from confluent_kafka.admin import AdminClient

from stream.apps.produce import publish
from stream.components import build_dek_provider, person_tokens
from stream.crypto.keyring import Keyring
from stream.faults import make_invalid
from stream.gateway.reader import ProtectedEventReader
from stream.kafka import ensure_topics
from stream.schema import load_schema, output_validator
from stream.synth import ClickstreamGenerator
from tests.support.kafka import read_topic, running_engine, wait_for

pytestmark = [pytest.mark.integration, pytest.mark.slow]

SCHEMA = load_schema("clickstream-event.v1")
N_EVENTS = 6_000
INVALID_RATE = 0.15


class _Capture(logging.Handler):
    def __init__(self) -> None:
        super().__init__(level=logging.DEBUG)
        self.lines: list[str] = []
        self.setFormatter(logging.Formatter("%(levelname)s %(name)s %(message)s %(args)s"))

    def emit(self, record: logging.LogRecord) -> None:
        extras = {k: v for k, v in record.__dict__.items() if k not in logging.LogRecord("", 0, "", 0, "", (), None).__dict__}
        self.lines.append(self.format(record) + " " + repr(extras))


@pytest.fixture(scope="module", params=["single", "cluster"])
def run(request, kafka_bootstrap, redis_url, tmp_path_factory):
    """One mixed run: publish valid and invalid events, let the gateway drain them, collect everything.
    Once on the single Redis server and once on the Redis Cluster (the tk2 mint and the data keys)."""
    import base64
    import os
    import uuid

    from stream.config import Settings, TopicNames
    from tests.support.workers import ROLE_USERS

    cluster = request.param == "cluster"
    url = request.getfixturevalue("redis_cluster_server").url if cluster else redis_url
    suffix = uuid.uuid4().hex[:8]
    topics = TopicNames(**{f: f"{getattr(TopicNames(), f)}.{suffix}" for f in TopicNames.model_fields})
    settings = Settings(
        kafka_bootstrap=kafka_bootstrap, redis_url=url, redis_cluster=cluster, topics=topics,
        redis_key_prefix=f"sgtest-{suffix}", master_key=base64.b64encode(os.urandom(32)).decode(),
        group_prefix=f"gw-{suffix}", state_dir=tmp_path_factory.mktemp("state"), batch_max_events=500,
        redis_password_file=None if cluster else ROLE_USERS.get(url),  # the gateway logs in as its role
    )
    ensure_topics(kafka_bootstrap, [topics.raw, topics.protected, topics.dlq], partitions=3)
    rng = random.Random(5)
    valid, invalid, payloads = [], [], []
    for ev in ClickstreamGenerator(seed=3).events(N_EVENTS):
        if rng.random() < INVALID_RATE:
            kind, raw = make_invalid(ev, rng)
            invalid.append((kind, ev))
            payloads.append(raw)
        else:
            valid.append(ev)
            payloads.append(orjson.dumps(ev))
    capture = _Capture()
    root = logging.getLogger()
    old_level = root.level
    root.addHandler(capture)
    root.setLevel(logging.DEBUG)
    try:
        publish(kafka_bootstrap, topics.raw, payloads)
        with running_engine(settings) as engine:
            wait_for(lambda: engine.stats.emitted >= N_EVENTS, timeout=120, what="the gateway to drain the raw topic")
            stats = engine.stats
    finally:
        root.removeHandler(capture)
        root.setLevel(old_level)
    yield {
        "settings": settings, "valid": valid, "invalid": invalid, "stats": stats, "logs": "\n".join(capture.lines),
        "protected": read_topic(kafka_bootstrap, topics.protected, expect=len(valid)),
        "dlq": read_topic(kafka_bootstrap, topics.dlq, expect=len(invalid)),
    }
    from stream.redisdb import connect
    from tests.support.fixtures import delete_prefixed_keys

    r = connect(url, cluster=cluster)
    try:
        delete_prefixed_keys(r, f"sgtest-{suffix}")
    finally:
        r.close()


def test_every_event_ends_in_exactly_one_topic(run):
    protected_ids = Counter(orjson.loads(r.value)["event_id"] for r in run["protected"])
    assert max(protected_ids.values()) == 1
    assert set(protected_ids) == {e["event_id"] for e in run["valid"]}
    assert len(run["dlq"]) == len(run["invalid"])
    assert run["stats"].protected + run["stats"].dead_lettered == N_EVENTS
    sources = {(d["source"]["partition"], d["source"]["offset"]) for d in (orjson.loads(r.value) for r in run["dlq"])}
    assert len(sources) == len(run["dlq"])  # each rejected input once


def test_outputs_follow_their_schemas_and_keys(run):
    protected_check, dlq_check = output_validator("protected-event.v1"), output_validator("dlq-record.v1")
    for r in run["protected"]:
        ev = orjson.loads(r.value)
        assert protected_check(ev) == []
        assert r.key == ev["user_id"].encode()  # keyed by the user token
    reasons = Counter()
    for r in run["dlq"]:
        rec = orjson.loads(r.value)
        assert dlq_check(rec) == [] and r.key is None
        reasons[rec["reason"]] += 1
    expected = Counter({"not_json": 0, "not_utf8": 0, "not_object": 0, "unknown_field": 0, "missing_field": 0,
                        "schema_violation": 0, "too_large": 0, "empty": 0})
    kind_to_reason = {"bad_email": "schema_violation", "bad_type": "schema_violation"}
    for kind, _ in run["invalid"]:
        expected[kind_to_reason.get(kind, kind)] += 1
    assert reasons == +expected


def _sensitive_values(events) -> set[bytes]:
    out = set()
    for ev in events:
        for f in SCHEMA.sensitive_fields:
            v = ev.get(f)
            if isinstance(v, str) and len(v) >= 6:  # shorter strings could occur by chance inside base64
                out.add(v.encode())
    return out


def test_no_plaintext_of_token_encrypt_or_drop_fields_anywhere(run, kafka_bootstrap):
    """Invariant 1: scan every record (key, value, headers) of every topic the gateway can write,
    and every captured log line, for the plaintext of every sensitive field of every input."""
    secrets = _sensitive_values(run["valid"]) | _sensitive_values(ev for _, ev in run["invalid"])
    assert len(secrets) > 1000
    topics = [t for t in AdminClient({"bootstrap.servers": kafka_bootstrap}).list_topics(timeout=10).topics
              if t.endswith(run["settings"].topics.raw.rsplit(".", 1)[-1]) and t != run["settings"].topics.raw]
    assert run["settings"].topics.protected in topics and run["settings"].topics.dlq in topics
    scanned = 0
    for topic in topics:
        for r in read_topic(kafka_bootstrap, topic):
            blob = b"\x00".join([r.key or b"", r.value or b"", *(v or b"" for _, v in r.headers)])
            scanned += 1
            leaked = [s for s in secrets if s in blob]
            assert not leaked, f"plaintext leaked into {topic}"
    assert scanned == N_EVENTS
    logs = run["logs"].encode()
    assert b"gateway" in logs  # the capture did capture the gateway's log lines
    assert not [s for s in secrets if s in logs]


def test_authorized_reader_recovers_every_encrypted_field(run):
    settings = run["settings"]
    keyring = Keyring.from_settings(settings)
    reader = ProtectedEventReader(SCHEMA, build_dek_provider(settings, keyring))
    by_id = {e["event_id"]: e for e in run["valid"]}
    tokens: dict[str, set[str]] = {}
    for r in run["protected"]:
        prot = orjson.loads(r.value)
        back = reader.decrypt(prot)
        raw = by_id[prot["event_id"]]
        for f in SCHEMA.fields_with("encrypt"):
            assert back.get(f) == raw.get(f)
        tokens.setdefault(raw["user_id"], set()).add(prot["user_id"])
    assert all(len(t) == 1 for t in tokens.values())
    assert len({next(iter(t)) for t in tokens.values()}) == len(tokens)
    # and the token is the user_id's tk2 token, found by lookup (what `streamgate decrypt --user` matches on)
    user, toks = next(iter(tokens.items()))
    assert next(iter(toks)).startswith("tk2_") and person_tokens(settings, user, legacy=False) == list(toks)
