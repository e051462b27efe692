"""The shredder engine on the real broker and Redis: retention receipts on ops.audit, erasure
requests from privacy.erasure across every topic (clicks.protected and a compacted topic keyed by
the person token), gateway caches, malformed and unknown-person requests. Injected clocks."""

from __future__ import annotations

import uuid
from pathlib import Path

import orjson
import pytest

from stream.components import build_dek_provider, invalidation_listener, person_tokens
from stream.errors import KeyShreddedError
from stream.kafka import ensure_topics
from stream.schema import output_validator
from stream.storage.retention import RedisShredStore
from stream.synth import ClickstreamGenerator
from tests.support.fixtures import delete_prefixed_keys
from tests.support.kafka import read_topic, running_engine, wait_for
from tests.support.shred import (
    Clock,
    add_ldp_entries,
    audit_receipts,
    key_name,
    produce,
    protect,
    reader,
    redis_keys_of,
    running_shredder,
    signed_request,
    token_of,
)

pytestmark = [pytest.mark.integration, pytest.mark.slow]

E, R = 3600, 7200
T0 = 1_900_000_000.0
VALID = output_validator("audit-receipt.v1")


def expire_at(epoch: int) -> int:
    return (epoch + 1) * E + R


@pytest.fixture
def profiles_topic(unique_id: str) -> str:
    return f"people.profiles.t{unique_id}"


@pytest.fixture
def settings(settings_factory, tmp_path: Path, unique_id: str, profiles_topic: str):
    cfg = tmp_path / "topics.yaml"
    cfg.write_text(
        "version: 1\n"
        "topics:\n"
        "  audit: {partitions: 1, config: {cleanup.policy: delete, retention.ms: 86400000, segment.ms: 3600000}}\n"
        f"  profiles:\n    name: {profiles_topic}\n    partitions: 2\n    keyed_by_subject: true\n"
        "    config: {cleanup.policy: compact}\n"
    )
    return settings_factory(epoch_seconds=E, retention_seconds=R, shredder_interval_seconds=0.2,
                            group_prefix=f"sgshred-{unique_id}", shredder_instance_id="shredder-test",
                            shredder_batch_size=8, shredder_lead_seconds=0, topics_config=cfg,
                            dek_cache_max_staleness_seconds=3600.0)


def raw_events(users: list[str], per_user: int, seed: int) -> list[bytes]:
    out = []
    for i, ev in enumerate(ClickstreamGenerator(seed=seed).events(len(users) * per_user)):
        out.append(orjson.dumps(dict(ev, user_id=users[i % len(users)], email=f"p{seed}.{i}@example.org")))
    return out


def test_retention_pass_writes_one_valid_receipt_per_key_and_due_epochs_fail(settings, redis_client) -> None:

    t = settings.topics
    ensure_topics(settings.kafka_bootstrap, [t.erasure, t.audit], partitions=1)
    clock = Clock(T0)
    users = [f"usr_k{i}" for i in range(12)]
    old = protect(settings, clock, users, 2)
    e0 = int(T0 // E)
    for u in users[:4]:
        add_ldp_entries(redis_client, settings.redis_key_prefix, token_of(settings, u), e0, expire_at(e0))
    clock.advance(2 * E)
    new = protect(settings, clock, users, 1, seed=4)
    clock.t = expire_at(e0)
    with running_shredder(settings, clock) as engine:
        wait_for(lambda: engine.ready and engine.stats.retention_shredded >= 12, timeout=60, what="retention pass")
    receipts = audit_receipts(settings.kafka_bootstrap, t.audit, expect=12)
    assert len(receipts) == 12 and not any(VALID(r) for r in receipts)
    assert {r["subject"] for r in receipts} == {token_of(settings, u) for u in users}
    assert {(r["kind"], r["reason"], r["epoch"], r["worker"]) for r in receipts} == {
        ("key_shredded", "retention", e0, "shredder-test")}
    for ev in old:
        with pytest.raises(KeyShreddedError):
            reader(settings, Clock(T0)).decrypt(ev)
    for ev in new:
        assert reader(settings, clock).decrypt(ev)["email"].endswith("@example.org")
    for u in users[:4]:
        assert all(not k.endswith(f":{e0}") for k in redis_keys_of(redis_client, settings.redis_key_prefix,
                                                                     token_of(settings, u)))


@pytest.mark.parametrize("redis_backend", ["single", "cluster"])  # the end-to-end path on a Redis Cluster too
def test_erasure_request_makes_one_person_unreadable_in_every_topic(settings, redis_client, profiles_topic) -> None:
    """privacy.erasure -> shredder: the person's ciphertexts in clicks.protected and in a compacted
    topic keyed by token become unreadable, the compacted topic gets a tombstone, memo and budget
    are gone, others are untouched; the running gateway (invalidation channel, staleness bound of an
    hour on a frozen clock) gives the person's new events a new token and key; receipts are valid."""
    t = settings.topics
    bootstrap = settings.kafka_bootstrap
    ensure_topics(bootstrap, [t.raw, t.protected, t.dlq, t.erasure, t.audit], partitions=2)
    ensure_topics(bootstrap, [profiles_topic], partitions=2)
    clock = Clock(T0)
    prefix = settings.redis_key_prefix
    gone_user, other_users = "usr_forget_me", ["usr_keep1", "usr_keep2"]
    gone = token_of(settings, gone_user)
    e0 = int(T0 // E)
    with running_engine(settings, clock=clock, listen=True) as gw_engine:
        listener = invalidation_listener(gw_engine.gateway.deks)
        assert listener is not None and listener.ready.wait(10)
        produce(bootstrap, t.raw, [(None, v) for v in raw_events([gone_user, *other_users], 4, seed=1)])
        before = read_topic(bootstrap, t.protected, expect=12)
        assert len(before) == 12
        # a compacted topic keyed by the person token (e.g. latest profile per person)
        produce(bootstrap, profiles_topic, [(r.key, r.value) for r in before])
        for tok in (gone, *(token_of(settings, u) for u in other_users)):
            add_ldp_entries(redis_client, prefix, tok, e0, expire_at(e0))

        rid = f"req-{uuid.uuid4().hex[:8]}"
        request = signed_request(settings, rid, user_id=gone_user)
        with running_shredder(settings, clock) as shredder:
            produce(bootstrap, t.erasure, [(gone_user.encode(), request)])
            wait_for(lambda: shredder.erasures_committed >= 1, timeout=60, what="erasure committed")
            produce(bootstrap, t.raw, [(None, v) for v in raw_events([gone_user], 3, seed=2)])
            after_all = read_topic(bootstrap, t.protected, expect=15)
        listener.stop()
    assert len(after_all) == 15
    rd = reader(settings, clock)
    before_keys = set()
    for rec in before:
        ev = orjson.loads(rec.value)
        if ev["user_id"] == gone:
            before_keys.add(ev["email"].split(".")[1])
            with pytest.raises(KeyShreddedError):
                rd.decrypt(ev)
            res = rd.read(ev)
            assert res.shredded and "email" in res.shredded
        else:
            assert rd.decrypt(ev)["email"].endswith("@example.org")
    new = [orjson.loads(r.value) for r in after_all if r.value not in {b.value for b in before}]
    assert len(new) == 3
    for ev in new:  # produced after the erasure: a fresh key, readable
        assert ev["email"].split(".")[1] not in before_keys
        assert rd.decrypt(ev)["email"].endswith("@example.org")
    # the compacted topic: the person's records are unreadable and tombstoned
    profile = read_topic(bootstrap, profiles_topic, expect=13)
    tombstones = [r for r in profile if r.value is None]
    assert [r.key for r in tombstones] == [gone.encode()]
    for r in profile:
        if r.value is not None and r.key == gone.encode():
            with pytest.raises(KeyShreddedError):
                rd.decrypt(orjson.loads(r.value))
    # Redis: nothing is left under the erased token; the person's new events carry a new tk2 token
    # (the old one is unlinked) with a fresh key; others keep memo and budget
    assert redis_keys_of(redis_client, prefix, gone) == []
    (fresh,) = {ev["user_id"] for ev in new}
    assert fresh != gone and fresh.startswith("tk2_")
    assert redis_keys_of(redis_client, prefix, fresh) == [key_name(prefix, "dek", fresh, e0)]
    for u in other_users:
        assert len(redis_keys_of(redis_client, prefix, token_of(settings, u))) == 3
    receipts = audit_receipts(bootstrap, t.audit, expect=2)
    assert not any(VALID(r) for r in receipts)
    summary = [r for r in receipts if r["kind"] == "erasure"]
    keys = [r for r in receipts if r["kind"] == "key_shredded"]
    assert len(summary) == 1 and summary[0]["request_id"] == rid and summary[0]["subject"] == gone
    assert summary[0]["keys_shredded"] == 1 and summary[0]["status"] == "completed"
    assert len(keys) == 1 and keys[0]["key_id"] in before_keys and keys[0]["reason"] == "erasure"
    raw_text = b"".join(orjson.dumps(r) for r in receipts)
    assert gone_user.encode() not in raw_text


def test_malformed_repeated_and_unknown_person_requests(settings, redis_client) -> None:
    t = settings.topics
    bootstrap = settings.kafka_bootstrap
    ensure_topics(bootstrap, [t.erasure, t.audit], partitions=1)
    clock = Clock(T0)
    provider = build_dek_provider(settings, clock=clock)
    known = token_of(settings, "usr_known")
    provider.keys_for([known], int(T0 // E))
    reqs = [
        (b"x", b"not json at all usr_secret_1"),
        (b"usr_nobody", signed_request(settings, "r-nobody", user_id="usr_nobody")),
        (b"usr_known", signed_request(settings, "r-known", user_id="usr_known")),
        (b"usr_known", signed_request(settings, "r-known", user_id="usr_known")),  # repeated
        (b"usr_other", signed_request(settings, "r-known", user_id="usr_other")),  # id reused
    ]
    with running_shredder(settings, clock) as engine:
        produce(bootstrap, t.erasure, reqs)
        wait_for(lambda: engine.erasures_committed >= 5, timeout=60, what="requests committed")
    receipts = audit_receipts(bootstrap, t.audit, expect=7)
    assert not any(VALID(r) for r in receipts)
    summaries = [r for r in receipts if r["kind"] in ("erasure", "erasure_rejected")]
    assert [(r["request_id"], r["status"], r["error"], r["keys_shredded"]) for r in summaries] == [
        (None, "rejected", "invalid_request", 0),
        ("r-nobody", "completed", None, 0),
        ("r-known", "completed", None, 1),
        ("r-known", "completed", None, 1),
        ("r-known", "rejected", "request_id_conflict", 0),
    ]
    assert summaries[2] == summaries[3]  # the repeated request: the same receipt again
    assert len({r["receipt_id"] for r in summaries}) == 4
    text = b"".join(orjson.dumps(r) for r in receipts)
    for secret in (b"usr_secret_1", b"usr_nobody", b"usr_known", b"usr_other"):
        assert secret not in text
    assert RedisShredStore(redis_client, settings.redis_key_prefix).pending_count() == 0


def test_shredder_metrics_move_with_requests_and_receipts(settings) -> None:
    """The shredder's series: requests in, receipts out (audit), keys shredded by reason, and the
    erasure consumer's lag gauge (what the erasure-backlog alert reads)."""
    from stream.ops.metrics import WorkerMetrics

    t = settings.topics
    bootstrap = settings.kafka_bootstrap
    ensure_topics(bootstrap, [t.erasure, t.audit], partitions=1)
    clock = Clock(T0)
    provider = build_dek_provider(settings, clock=clock)
    provider.keys_for([token_of(settings, "usr_metrics")], int(T0 // E))
    metrics = WorkerMetrics("shredder")
    with running_shredder(settings, clock, metrics=metrics) as engine:
        produce(bootstrap, t.erasure, [(b"usr_metrics", signed_request(settings, "m-1", user_id="usr_metrics"))])
        wait_for(lambda: engine.erasures_committed >= 1, timeout=60, what="request committed")
        wait_for(lambda: "0" in metrics.snapshot().get("lag", {}), timeout=30,
                 what="a lag gauge for the erasure partition")
    text = "\n".join(f.name + repr([s.labels for s in f.samples]) + repr([s.value for s in f.samples])
                     for f in metrics.families())
    values = {(s.name, tuple(sorted(s.labels.items()))): s.value for f in metrics.families() for s in f.samples}
    assert values[("streamgate_events_in_total", (("worker", "shredder"),))] >= 1, text
    assert values[("streamgate_events_out_total", (("topic", "audit"), ("worker", "shredder")))] >= 2, text
    assert values[("streamgate_keys_shredded_total", (("reason", "erasure"), ("worker", "shredder")))] == 1, text
    assert "usr_metrics" not in text and "tk1_" not in text and "tk2_" not in text


def test_a_replay_after_redis_lost_the_erasure_record_is_refused(settings, redis_client) -> None:
    """The real shredder: a signed request erases; Redis then loses its data (the idempotency record
    with it) and the person comes back with new data; the same signed request, replayed well within
    its window, is refused (``predates_store``) and the new data stays readable."""
    from stream.retention.receipts import rfc3339

    t = settings.topics
    bootstrap = settings.kafka_bootstrap
    ensure_topics(bootstrap, [t.erasure, t.audit], partitions=1)
    clock = Clock(T0)
    user = "usr_replayed"
    events = protect(settings, clock, [user], 1)
    request = signed_request(settings, "r-replayed", user_id=user, requested_at=rfc3339(T0))
    with running_shredder(settings, clock) as engine:
        produce(bootstrap, t.erasure, [(b"", request)])
        wait_for(lambda: engine.erasures_committed >= 1, timeout=60, what="erasure committed")
        assert engine.stats.erasures == 1
        with pytest.raises(KeyShreddedError):
            reader(settings, clock).decrypt(events[0])
        assert delete_prefixed_keys(redis_client, settings.redis_key_prefix) > 0  # Redis loses its data
        clock.advance(E)  # well within the window (retention + 1 epoch): only the record could stop it
        again = protect(settings, clock, [user], 1)  # the person is back, under a new token
        produce(bootstrap, t.erasure, [(b"", request)])
        wait_for(lambda: engine.erasures_committed >= 2, timeout=60, what="replay committed")
        assert engine.stats.erasures == 1 and engine.stats.erasures_rejected == 1
    assert reader(settings, clock).decrypt(again[0])["email"].endswith("@example.org")
    rejected = [r for r in audit_receipts(bootstrap, t.audit, expect=3) if r["kind"] == "erasure_rejected"]
    assert [(r["error"], r["subject"]) for r in rejected] == [("predates_store", None)]


def test_only_signed_erasure_requests_shred(settings, redis_client) -> None:
    """The audit's attack, on the real broker and Redis: unsigned requests by user_id and by a token
    copied from a clicks.protected key, one signed with another key and a validly signed but stale one
    (a replay) leave the person's events
    decryptable and the data key in place; each gets an erasure_rejected record naming nobody. The
    signed request then shreds them. Every record on ops.audit carries a valid receipt signature."""
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    from stream.crypto.keyring import Keyring
    from stream.crypto.signing import verify_key
    from stream.retention.core import sign_erasure_request
    from stream.retention.receipts import verify_receipt

    t = settings.topics
    bootstrap = settings.kafka_bootstrap
    ensure_topics(bootstrap, [t.erasure, t.audit], partitions=1)
    clock = Clock(T0)
    user = "usr_victim"
    token = token_of(settings, user)
    events = protect(settings, clock, [user], 2)
    assert all(ev["user_id"] == token for ev in events)  # the token anyone reading clicks.protected sees
    prefix = settings.redis_key_prefix
    assert len([k for k in redis_keys_of(redis_client, prefix, token) if ":dek:" in k]) == 1
    forged = sign_erasure_request(Ed25519PrivateKey.generate(), "att-3", subject=token,
                                  requested_at="2030-03-17T17:46:40.000Z", audience="default")
    attacks = [
        (user.encode(), orjson.dumps({"request_id": "att-1", "user_id": user})),
        (token.encode(), orjson.dumps({"request_id": "att-2", "subject": token})),
        (token.encode(), orjson.dumps(forged)),
        # validly signed but years old: a replay after its record expired must not erase newer data
        (token.encode(), signed_request(settings, "att-4", subject=token, requested_at="2020-01-01T00:00:00.000Z")),
        # validly signed, fresh, but for another deployment sharing the eraser key
        (token.encode(), signed_request(settings, "att-5", subject=token, audience="staging")),
    ]
    with running_shredder(settings, clock) as engine:
        produce(bootstrap, t.erasure, attacks)
        wait_for(lambda: engine.erasures_committed >= 5, timeout=60, what="attacks committed")
        assert engine.stats.erasures_rejected == 5 and engine.stats.erasures == 0
        assert len([k for k in redis_keys_of(redis_client, prefix, token) if ":dek:" in k]) == 1
        for ev in events:  # still readable
            assert reader(settings, clock).decrypt(ev)["email"].endswith("@example.org")
        produce(bootstrap, t.erasure, [(b"", signed_request(settings, "legit-1", subject=token))])
        wait_for(lambda: engine.erasures_committed >= 6, timeout=60, what="signed request committed")
    assert redis_keys_of(redis_client, prefix, token) == []
    for ev in events:
        with pytest.raises(KeyShreddedError):
            reader(settings, clock).decrypt(ev)
    receipts = audit_receipts(bootstrap, t.audit, expect=7)
    assert not any(VALID(r) for r in receipts)
    public = verify_key(Keyring.from_settings(settings), "receipt")
    assert all(verify_receipt(r, public) for r in receipts)
    rejected = [r for r in receipts if r["kind"] == "erasure_rejected"]
    assert [(r["error"], r["subject"], r["request_id"]) for r in rejected] == [
        ("unauthenticated", None, None)] * 3 + [("stale_request", None, None), ("wrong_audience", None, None)]
    text = b"".join(orjson.dumps(r) for r in rejected)
    assert user.encode() not in text and token.encode() not in text
    (done,) = [r for r in receipts if r["kind"] == "erasure"]
    assert (done["request_id"], done["subject"], done["keys_shredded"]) == ("legit-1", token, 1)


def test_each_role_credential_alone_does_its_part(settings, redis_client, tmp_path: Path) -> None:
    """No process holds the master key: the gateway credential protects, the eraser credential signs,
    the shredder credential verifies, shreds and signs receipts, the reader credential decrypts (before)
    and gets KeyShreddedError (after), the verifier credential checks the receipts."""
    from stream.crypto.keyring import Keyring
    from stream.crypto.signing import signing_key, verify_key
    from stream.retention.core import sign_erasure_request
    from stream.retention.receipts import verify_receipt
    from stream.schema import load_schema

    master = Keyring.from_settings(settings)
    schema = load_schema(settings.schema_name)
    domains = sorted({f.token_domain for f in schema.fields.values() if f.token_domain})
    as_role = {}
    for role in ("gateway", "reader", "eraser", "shredder", "verifier"):
        path = tmp_path / f"{role}.json"
        master.for_role(role, token_domains=domains, person_domain=schema.subject_domain).save(path)
        as_role[role] = settings.model_copy(update={"master_key": None, "key_file": path})
    t = settings.topics
    bootstrap = settings.kafka_bootstrap
    ensure_topics(bootstrap, [t.erasure, t.audit], partitions=1)
    clock = Clock(T0)
    events = protect(as_role["gateway"], clock, ["usr_roles"], 2)
    token = events[0]["user_id"]
    for ev in events:
        assert reader(as_role["reader"], clock).decrypt(ev)["email"].endswith("@example.org")
    request = sign_erasure_request(signing_key(Keyring.from_settings(as_role["eraser"]), "erasure"), "roles-1",
                                   user_id="usr_roles", requested_at="2030-03-17T17:46:40.000Z",
                                   audience=as_role["shredder"].deployment_id)
    with running_shredder(as_role["shredder"], clock) as engine:
        produce(bootstrap, t.erasure, [(b"", orjson.dumps(request))])
        wait_for(lambda: engine.erasures_committed >= 1, timeout=60, what="erasure committed")
    for ev in events:
        with pytest.raises(KeyShreddedError):
            reader(as_role["reader"], clock).decrypt(ev)
    receipts = audit_receipts(bootstrap, t.audit, expect=2)
    public = verify_key(Keyring.from_settings(as_role["verifier"]), "receipt")
    assert len(receipts) == 2 and all(verify_receipt(r, public) for r in receipts)
    assert {r["subject"] for r in receipts} == {token} and token.startswith("tk2_")  # found by the shredder's lookup
    assert person_tokens(settings, "usr_roles", legacy=False) == []  # and unlinked with the person's secret
