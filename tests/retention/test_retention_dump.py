"""Erasure against an adversary who dumps everything (issue 27): the person's pseudonym secret, wrapped
data keys and data-key plaintexts are captured before the erasure; afterwards every key of every type
on every Redis node (DUMP included, the shredder's outbox and the erased marker among them) and every
record of every Kafka topic must hold none of those bytes in any encoding, and raw AES-GCM under
every key the dump and the keyring yield opens none of the person's ciphertexts. The same adversary
opens them before the erasure (it is not blind). Single Redis and Redis Cluster (conftest)."""

from __future__ import annotations

import uuid

import orjson
import pytest

from stream.components import build_pseudonyms, redis_client
from stream.crypto.keyring import Keyring
from stream.crypto.kms import LocalKMS
from stream.gateway.core import DLQ_SCHEMA
from stream.kafka import ensure_topics
from stream.retention.core import MemorySink, Shredder, ShredderError
from stream.schema import load_schema
from stream.storage.retention import RedisShredStore
from stream.synth import ClickstreamGenerator
from tests.support.adversary import (
    Dump,
    dek_value_parts,
    dump_kafka,
    dump_redis,
    find,
    raw_decrypt,
    unwrap_all,
)
from tests.support.fixtures import admin_client
from tests.support.kafka import read_topic, running_engine, wait_for
from tests.support.shred import Clock, add_ldp_entries, key_name, produce, running_shredder, signed_request

pytestmark = pytest.mark.integration

E, R = 3600, 7200
T0 = 1_900_000_000.0
SCHEMA = load_schema("clickstream-event.v1")
ENCRYPTED = SCHEMA.fields_with("encrypt")


@pytest.fixture
def settings(settings_factory, unique_id):
    return settings_factory(epoch_seconds=E, retention_seconds=R, dek_cache_max_staleness_seconds=3600.0,
                            shredder_interval_seconds=0.2, shredder_instance_id="shredder-dump",
                            shredder_lead_seconds=0)


def raw(user_id: str, i: int, **over) -> bytes:
    ev = next(iter(ClickstreamGenerator(seed=100 + i).events(1)))
    fields = {"user_id": user_id, "email": f"p{i}.{user_id}@example.org", "phone": "+4915112345678", **over}
    return orjson.dumps({**ev, **fields})


from stream.crypto.tokens import PseudonymKeys  # noqa: E402
from stream.retention.receipts import rfc3339  # noqa: E402


class Captured:
    """What the adversary grabs from Redis before the erasure: the person's tk2 secret (and its
    whole stored value), every wrapped DEK value and KMS blob, every DEK plaintext (unwrapped with
    the keyring: the adversary holds the master key)."""

    def __init__(self, settings, user_id: str, token: str, epochs: list[int]) -> None:
        rc = admin_client(settings)  # the adversary reads everything
        pseud = build_pseudonyms(settings)
        kms = LocalKMS(Keyring.from_settings(settings))
        pid_name = pseud.pid_key(pseud.lookup_id(user_id))
        pid = rc.get(pid_name)
        head = b"3." + token.encode() + b"."
        assert pid is not None and pid.startswith(head)  # the secret, wrapped by the KEK
        wrapped = pid[len(head):]
        self.secret = kms.unwrap(wrapped, PseudonymKeys._aad(pid_name, token))
        self.items: dict[str, bytes] = {"pseudonym secret": self.secret, "wrapped pseudonym secret": wrapped,
                                        "pid value": pid}
        self.deks: list[bytes] = []
        for e in epochs:
            value = rc.get(key_name(settings.redis_key_prefix, "dek", token, e))
            if value is None:
                continue
            parts = dek_value_parts(value)
            assert parts is not None
            key_id, blob = parts
            dek = kms.unwrap(blob, _wrap(token, e, key_id))
            self.items |= {f"wrapped DEK {e}": value, f"KMS blob {e}": blob, f"DEK plaintext {e}": dek}
            self.deks.append(dek)
        assert self.deks, "the person has no data key to capture"

    def leaks(self, dump: Dump) -> dict[str, list[str]]:
        return {name: where for name, b in self.items.items() if (where := find(dump, b))}


def _wrap(subject: str, epoch: int, key_id: str) -> bytes:
    from tests.support.adversary import wrap_aad

    return wrap_aad(subject, epoch, key_id)


def every_key(settings, dump: Dump, subjects: list[str], epochs: list[int]) -> list[bytes]:
    """Every key the adversary can find: each DEK the keyring unwraps from any dumped value (under
    the binding of every data-key name in the dump and of the targets), every 32-byte value and
    every value's last 32 bytes (a tk2 secret's place), and the keyring's own key bytes."""
    prefix = settings.redis_key_prefix.encode()
    refs = {(s, e) for s in subjects for e in epochs}
    for item in dump.items:
        if item.where.endswith(" name") and item.data.startswith(prefix + b":dek:{"):
            tag, _, epoch = item.data.split(b":", 2)[2].rpartition(b":")
            refs.add((tag.decode().strip("{}"), int(epoch)))
    keyring = Keyring.from_settings(settings)
    keys = unwrap_all(dump, LocalKMS(keyring), refs)
    keys += [i.data for i in dump.items if len(i.data) == 32] + [i.data[-32:] for i in dump.items if len(i.data) > 32]
    keys += [keyring.kek(kid) for kid in keyring.ids]  # the KEKs themselves
    return list(dict.fromkeys(keys))


def opened(event: dict, keys: list[bytes]) -> list[str]:
    """The encrypted fields of ``event`` raw AES-GCM opens under any of ``keys``."""
    return [f for f in ENCRYPTED if event.get(f) and raw_decrypt(
        event[f], schema_id=event["_schema"], field_path=f, subject=event["user_id"], keys=keys) is not None]


def dead_letter_opened(dl: dict, keys: list[bytes]) -> bool:
    src = dl["source"]
    path = f"source/{src['topic']}/{src['partition']}/{src['offset']}"  # the seal's binding (gateway.core)
    return raw_decrypt(dl["sealed"], schema_id=DLQ_SCHEMA, field_path=path, subject=dl["sealed_for"],
                       keys=keys) is not None


@pytest.mark.slow
def test_after_erasure_no_captured_byte_is_anywhere_and_raw_aes_opens_nothing(settings, own_broker) -> None:
    """On a broker of its own, so the adversary's dump of every topic is the whole broker the workers
    wrote to, not also the records of every test before it on the session's broker (which made the
    dump and the raw-AES trial of every dumped 32-byte string take minutes)."""
    settings = settings.model_copy(update={"kafka_bootstrap": own_broker.bootstrap})
    t = settings.topics
    bootstrap = settings.kafka_bootstrap
    ensure_topics(bootstrap, [t.raw, t.protected, t.dlq, t.erasure, t.audit], partitions=2)
    clock = Clock(T0)
    e0 = int(T0 // E)
    gone_user, kept_user = "usr_dump_gone", "usr_dump_kept"
    rc = admin_client(settings)
    with running_engine(settings, clock=clock, listen=True):
        produce(bootstrap, t.raw, [(None, raw(gone_user, i)) for i in range(3)]
                + [(None, raw(kept_user, i)) for i in range(3, 5)]
                + [(None, raw(gone_user, 9, email="not an email"))])  # a dead letter sealed for the person
        protected = [orjson.loads(r.value) for r in read_topic(bootstrap, t.protected, expect=5)]
        dead = [orjson.loads(r.value) for r in read_topic(bootstrap, t.dlq, expect=1)]
        clock.advance(E)  # a second epoch: the person has two data keys
        produce(bootstrap, t.raw, [(None, raw(gone_user, 10))])
        protected = [orjson.loads(r.value) for r in read_topic(bootstrap, t.protected, expect=6)]
    assert len(protected) == 6 and len(dead) == 1
    pseud = build_pseudonyms(settings)
    gone, kept = pseud.lookup(gone_user), pseud.lookup(kept_user)
    assert gone and kept and dead[0]["sealed_for"] == gone
    add_ldp_entries(rc, settings.redis_key_prefix, gone, e0, (e0 + 1) * E + R)
    epochs = [e0, e0 + 1]
    cap = Captured(settings, gone_user, gone, epochs)
    assert len(cap.deks) == 2
    gone_events = [ev for ev in protected if ev["user_id"] == gone]
    kept_events = [ev for ev in protected if ev["user_id"] == kept]
    assert len(gone_events) == 4 and len(kept_events) == 2

    # the adversary is not blind: before the erasure its dump holds every stored secret and its keys
    # open the person's events and dead letter
    before = dump_kafka(bootstrap, dump_redis(rc))
    seen = cap.leaks(before)
    stored = {n for n in cap.items if not n.startswith("DEK plaintext") and n != "pseudonym secret"}
    # neither a DEK's plaintext nor the pseudonym secret is ever stored: both only wrapped by the KEK
    assert set(seen) == stored, "the dump misses what it should see"
    keys = every_key(settings, before, [gone], epochs)
    assert all(opened(ev, keys) for ev in gone_events) and dead_letter_opened(dead[0], keys)

    rid = f"req-{uuid.uuid4().hex[:8]}"
    with running_shredder(settings, clock) as shredder:
        produce(bootstrap, t.erasure, [(gone_user.encode(), signed_request(settings, rid, user_id=gone_user,
                                                                        requested_at=rfc3339(clock())))])
        wait_for(lambda: shredder.erasures_committed >= 1, timeout=60, what="erasure committed")

    after = dump_kafka(bootstrap, dump_redis(rc))
    names = b"\n".join(i.data for i in after.items if i.where.endswith(" name"))
    marker = pseud.perased_key(pseud.lookup_id(gone_user)).encode()
    assert marker in names, "the erased marker is part of the dump"
    assert after.nodes == (3 if settings.redis_cluster else 1) and after.records >= 6 + 1 + 1 + 3
    assert {"string", "zset"} <= after.types  # other types: test_the_adversary_finds_a_copy_in_every_type
    assert cap.leaks(after) == {}
    keys = every_key(settings, after, [gone], epochs)
    assert len(keys) > 10
    for ev in gone_events:
        assert opened(ev, keys) == []
    assert not dead_letter_opened(dead[0], keys)
    for ev in kept_events:  # the others' keys are in the dump and open theirs: the check can succeed
        assert opened(ev, keys) == [f for f in ENCRYPTED if ev.get(f)]


def test_an_erasure_stopped_before_its_receipts_leaves_no_secret_in_the_outbox_or_marker(settings) -> None:
    """The receipts fail to go out: the outbox keeps the erasure's entries and the erased marker is
    written. Neither (nor anything else on any node) holds the secret, a wrapped key or a key."""
    from stream.components import build_gateway
    from stream.gateway.core import RawRecord

    clock = Clock(T0)
    e0 = int(T0 // E)
    gw = build_gateway(settings, clock=clock)
    out = gw.process([RawRecord("clicks.raw", 0, i, raw("usr_outbox", i), None) for i in range(2)])
    tok = out.protected[0][0].decode()
    cap = Captured(settings, "usr_outbox", tok, [e0])
    rc = admin_client(settings)
    store = RedisShredStore(redis_client(settings, "shredder"), settings.redis_key_prefix)
    sink = MemorySink()
    sink.fail_next = 1
    sh = Shredder(store, sink, worker="w1", epoch_seconds=E, retention_seconds=R, clock=clock)
    with pytest.raises(ShredderError):
        sh.erase(tok, "req-outbox")
    assert store.pending_count() == 1  # the outbox entry is there to be dumped
    dump = dump_redis(rc)
    pseud = build_pseudonyms(settings)
    assert any(pseud.perased_key(pseud.lookup_id("usr_outbox")).encode() == i.data for i in dump.items)
    assert cap.leaks(dump) == {}
    keys = every_key(settings, dump, [tok], [e0])
    for _, value in out.protected:
        assert opened(orjson.loads(value), keys) == []


def test_the_adversary_finds_a_copy_in_every_type_node_and_encoding(settings, redis_client) -> None:
    """The dumper is no proxy: a planted copy of a secret is found in a string, a hash field and
    value, a set, a sorted set, a list and a stream, raw, hex and base64 at every alignment inside
    a longer value, on whichever node holds it; and nothing is reported where there is no copy."""
    import base64
    import os

    prefix = settings.redis_key_prefix
    secret = os.urandom(32)
    forms = [secret, secret.hex().encode(), b"x" + base64.b64encode(b"ab" + secret) + b"y",
             base64.urlsafe_b64encode(b"a" + secret), base64.b64encode(secret).upper()]  # the last is no copy
    rc = redis_client
    plants = {
        f"{prefix}:plant:s{{a}}": lambda k: rc.set(k, b"2.tk2_x." + forms[0]),
        f"{prefix}:plant:h{{b}}": lambda k: rc.hset(k, mapping={b"f": forms[1], forms[0]: b"v"}),
        f"{prefix}:plant:set{{c}}": lambda k: rc.sadd(k, forms[2]),
        f"{prefix}:plant:z{{d}}": lambda k: rc.zadd(k, {forms[3]: 1}),
        f"{prefix}:plant:l{{e}}": lambda k: rc.rpush(k, b"-", forms[1]),
        f"{prefix}:plant:x{{f}}": lambda k: rc.xadd(k, {b"v": forms[2]}),
    }
    assert find(dump_redis(rc), secret) == []
    rc.set(f"{prefix}:plant:decoy", forms[4])
    for key, plant in plants.items():
        plant(key)
    dump = dump_redis(rc)
    assert {"string", "hash", "set", "zset", "list", "stream"} <= dump.types
    hits = find(dump, secret)
    for key in plants:
        assert any(repr(key.encode()) in w and not w.endswith("DUMP") for w in hits), key
        assert any(repr(key.encode()) in w and w.endswith("DUMP") for w in hits), key  # the raw/hex copies
    assert not any(":plant:decoy" in w for w in hits)


def test_events_encrypted_under_a_stale_cached_key_after_the_erasure_are_unreadable_too(settings) -> None:
    """docs/privacy.md ("Caches"): a gateway without the shred channel keeps using its cached key for
    up to the staleness bound after an erasure; those events are lost, never exposed. They carry the
    erased key's id, no reader opens them (KeyShreddedError), and raw AES-GCM under every key in the
    dump and the keyring opens none, while the same batch's other person opens. After the bound the
    gateway gives the person a fresh key."""
    from stream.components import build_gateway
    from stream.errors import KeyShreddedError
    from stream.gateway.core import RawRecord
    from tests.support.shred import reader

    settings = settings.model_copy(update={"dek_cache_max_staleness_seconds": 600.0})
    clock = Clock(T0)
    e0 = int(T0 // E)
    assert (e0 + 1) * E > T0 + 60 + 600  # every step below stays in one epoch
    gw = build_gateway(settings, clock=clock)  # no listener: only the staleness bound drops keys
    first = gw.process([RawRecord("clicks.raw", 0, 0, raw("usr_stale", 0), None)])
    tok = first.protected[0][0].decode()
    old_kid = orjson.loads(first.protected[0][1])["email"].split(".")[1]
    Shredder(RedisShredStore(redis_client(settings, "shredder"), settings.redis_key_prefix), MemorySink(), worker="w1",
             epoch_seconds=E, retention_seconds=R, clock=clock).erase(tok, "req-stale")
    clock.advance(60)  # within the bound
    late = gw.process([RawRecord("clicks.raw", 0, i, raw(u, i), None)
                       for i, u in enumerate(["usr_stale", "usr_stale_other"], start=1)])
    stale, other = (orjson.loads(v) for _, v in late.protected)
    assert stale["user_id"] == tok and stale["email"].split(".")[1] == old_kid  # the stale key indeed
    assert b"usr_stale@" not in late.protected[0][1] and b"example.org" not in late.protected[0][1]
    with pytest.raises(KeyShreddedError):
        reader(settings, clock).decrypt(stale)
    keys = every_key(settings, dump_redis(admin_client(settings)), [tok], [e0])
    assert opened(stale, keys) == []
    assert opened(other, keys) == [f for f in ENCRYPTED if other.get(f)]
    clock.advance(settings.dek_cache_max_staleness_seconds)  # past the bound: a fresh token and key
    fresh = orjson.loads(gw.process([RawRecord("clicks.raw", 0, 9, raw("usr_stale", 9), None)]).protected[0][1])
    assert fresh["email"].split(".")[1] != old_kid
    assert reader(settings, clock).decrypt(fresh)["email"] == "p9.usr_stale@example.org"
