"""Redis ACL roles (issue 25), on a real Redis of this test alone with the users of
:mod:`stream.storage.acl`: the refusal matrix (each role against every operation an insider would
try), and the real gateway, shredder and reader doing their work as their role and nothing else."""

from __future__ import annotations

import functools
import hashlib
import secrets
from collections.abc import Callable
from typing import Any

import orjson
import pytest
import redis

from stream.components import build_gateway, build_pseudonyms
from stream.gateway.core import RawRecord
from stream.retention.core import MemorySink, Shredder
from stream.storage.acl import ACL_ROLES, acl_file, acl_rules, apply_acls
from stream.storage.retention import RedisShredStore
from stream.synth import ClickstreamGenerator
from tests.support.clock import Clock
from tests.support.shred import reader as shred_reader

pytestmark = pytest.mark.integration

P = "sgacl"
E, R = 3600, 7200
T0 = 1_900_000_000.0
ALL = frozenset(ACL_ROLES)

# (operation, what an insider gains, the roles allowed it)
MATRIX: list[tuple[str, Callable[[redis.Redis], Any], frozenset[str]]] = [
    ("GET data key", lambda c: c.get(f"{P}:dek:{{tk2_x}}:1"), frozenset({"gateway", "shredder", "reader"})),
    ("SET data key", lambda c: c.set(f"{P}:dek:{{tk2_x}}:1", b"x"), frozenset({"gateway", "shredder"})),
    ("DEL data key (unsigned erasure)", lambda c: c.delete(f"{P}:dek:{{tk2_x}}:1"), frozenset({"shredder"})),
    ("GET pseudonym secret", lambda c: c.get(f"{P}:pid:{{abc}}"), frozenset({"gateway", "shredder"})),
    ("DEL pseudonym secret", lambda c: c.delete(f"{P}:pid:{{abc}}"), frozenset({"shredder"})),
    ("GET ε ledger", lambda c: c.get(f"{P}:ledger:{{0}}:x"), frozenset({"gateway", "privatizer"})),
    ("DEL ε ledger (a refund)", lambda c: c.delete(f"{P}:ledger:{{0}}:x"), frozenset()),
    ("SET ε ledger (a reset: a refund)", lambda c: c.set(f"{P}:ledger:{{0}}:x", b"0"), frozenset()),
    ("EVAL script SETting a ledger", lambda c: c.eval("return redis.call('SET', KEYS[1], '0')", 1,
                                                      f"{P}:ledger:{{0}}:x"), frozenset()),
    ("RENAME ε ledger away", lambda c: c.rename(f"{P}:ledger:{{0}}:x", f"{P}:ledger:{{0}}:y"), frozenset()),
    ("INCRBY ε ledger (residual: a negative amount lowers it)", lambda c: c.incrby(f"{P}:ledger:{{0}}:x", -1),
     frozenset({"gateway", "privatizer"})),
    ("EXPIREAT ε ledger (residual: a past time drops it)", lambda c: c.expireat(f"{P}:ledger:{{0}}:x", 1),
     frozenset({"gateway", "privatizer"})),
    ("HGET LDP memo", lambda c: c.hget(f"{P}:memo:{{tk2_x}}:1", "f"), frozenset({"shredder"})),
    ("GET erasure record", lambda c: c.get(f"{P}:erasure:r1"), frozenset({"shredder"})),
    ("DEL erasure record (re-enable a replay)", lambda c: c.delete(f"{P}:erasure:r1"), frozenset({"shredder"})),
    ("DEL erasure floor", lambda c: c.delete(f"{P}:erasure-floor"), frozenset({"shredder"})),
    ("ZADD deadline index", lambda c: c.zadd(f"{P}:deadlines:{{shard-00}}", {"tk2_x:1": 1}),
     frozenset({"gateway"})),
    ("ZREM deadline index", lambda c: c.zrem(f"{P}:deadlines:{{shard-00}}", "tk2_x:1"), frozenset({"shredder"})),
    ("INCRBY KEK wrap counter", lambda c: c.incrby(f"{P}:kek-wraps:k1", 1), frozenset({"gateway"})),
    ("PUBLISH shred channel (fake shreds)", lambda c: c.publish(f"{P}:shredded", "tk2_x:*"), frozenset({"shredder"})),
    ("EVAL script deleting a data key", lambda c: c.eval("return redis.call('DEL', KEYS[1])", 1,
                                                         f"{P}:dek:{{tk2_x}}:1"), frozenset({"shredder"})),
    ("SET dlq replay claim", lambda c: c.set(f"{P}:replayed:abc", b"1"), frozenset({"reader"})),
    ("SET pseudonym secret (overwrite)", lambda c: c.set(f"{P}:pid:{{abc}}", b"x"), frozenset({"gateway", "shredder"})),
    ("INCRBY KEK wrap counter by a negative amount", lambda c: c.incrby(f"{P}:kek-wraps:k1", -1),
     frozenset({"gateway"})),
    ("SET key-store marker (every guard resets)", lambda c: c.set(f"{P}:keystore", b"x"), ALL),
    ("GET pseudonyms-wrapped marker", lambda c: c.get(f"{P}:pseudonyms-wrapped"), frozenset({"gateway"})),
    ("DEL pseudonyms-wrapped marker (accept clear secrets again)", lambda c: c.delete(f"{P}:pseudonyms-wrapped"),
     frozenset()),
    ("GET key of another prefix", lambda c: c.get("other:dek:{tk2_x}:1"), frozenset()),
    ("KEYS *", lambda c: c.keys("*"), frozenset()),
    ("SCAN", lambda c: c.scan(0), frozenset()),
    ("FLUSHALL", lambda c: c.flushall(), frozenset()),
    ("CONFIG GET", lambda c: c.config_get("dir"), frozenset()),
    ("ACL LIST", lambda c: c.acl_list(), frozenset()),
]


#: Ways to reset a charged ledger (client, ledger name, a DUMP of it): all refused to every role.
LEDGER_ATTACKS: list[Callable[[redis.Redis, str, bytes], Any]] = [
    lambda c, k, d: c.set(k, b"0"),
    lambda c, k, d: c.delete(k),
    lambda c, k, d: c.unlink(k),
    lambda c, k, d: c.rename(k, k + "x"),
    lambda c, k, d: c.getdel(k),
    lambda c, k, d: c.restore(k, 0, d, replace=True),
    lambda c, k, d: c.eval("return redis.call('SET', KEYS[1], '0')", 1, k),
]


def allowed(client: redis.Redis, op: Callable[[redis.Redis], Any]) -> bool:
    try:
        op(client)
    except redis.exceptions.NoPermissionError:
        return False
    except redis.exceptions.ResponseError as exc:  # refused inside a script, or a wrong type (allowed)
        return not any(m in str(exc) for m in ("NOPERM", "no permissions", "can't run this command",
                                                "can't access"))
    return True


@pytest.fixture
def acl_redis(own_redis):  # type: ignore[no-untyped-def]
    admin = redis.Redis(port=own_redis.port)
    admin_pw = secrets.token_urlsafe(16)
    admin.execute_command("ACL", "SETUSER", "admin", "on", ">" + admin_pw, "~*", "&*", "+@all")
    passwords = {role: secrets.token_urlsafe(16) for role in ACL_ROLES}
    apply_acls(admin, P, passwords)  # and the unauthenticated default user off
    admin.close()

    def url(role: str) -> str:
        pw = admin_pw if role == "admin" else passwords[role]
        return f"redis://{role}:{pw}@127.0.0.1:{own_redis.port}/0"

    yield url


def test_each_role_is_refused_outside_its_patterns_and_commands(acl_redis) -> None:
    anonymous = redis.Redis.from_url("redis://" + acl_redis("gateway").split("@", 1)[1])
    with pytest.raises(redis.exceptions.AuthenticationError):
        anonymous.get(f"{P}:dek:{{tk2_x}}:1")  # the default user is off: nobody without a password
    with pytest.raises(redis.exceptions.AuthenticationError):
        redis.Redis.from_url(acl_redis("reader").replace("reader:", "gateway:")).ping()  # another role's password
    seen: dict[str, dict[str, bool]] = {}
    for role in ACL_ROLES:
        client = redis.Redis.from_url(acl_redis(role))
        seen[role] = {name: allowed(client, op) for name, op, _ in MATRIX}
        client.close()
    expected = {role: {name: role in roles for name, _, roles in MATRIX} for role in ACL_ROLES}
    assert seen == expected


def test_the_acl_file_grants_what_apply_acls_grants() -> None:
    text = acl_file(P, {"gateway": "pw"})
    assert text.splitlines()[0].startswith("user default off")
    assert " ".join(acl_rules("gateway", P)) in text and "#@GATEWAY@" in acl_file(P, {"gateway": ""},
                                                                                       placeholder=True)
    assert "#" + hashlib.sha256(b"pw").hexdigest() in text and ">pw" not in text  # only a hash of the password
    with pytest.raises(ValueError):
        acl_rules("learner", P)  # the learner has no Redis user


def event(user_id: str) -> bytes:
    ev = next(iter(ClickstreamGenerator(seed=5).events(1)))
    return orjson.dumps(dict(ev, user_id=user_id, email="someone@example.org"))


def test_the_workers_do_their_work_as_their_role(acl_redis, settings_factory) -> None:
    clock = Clock(T0)
    as_role = {role: settings_factory(redis_url=acl_redis(role), redis_cluster=False, redis_key_prefix=P,
                                      epoch_seconds=E, retention_seconds=R) for role in ACL_ROLES}
    gw = build_gateway(as_role["gateway"], clock=clock)
    out = gw.process([RawRecord("clicks.raw", 0, i, event(u), None) for i, u in enumerate(["usr_a", "usr_b"])])
    assert len(out.protected) == 2 and not out.dead_letters
    events = [orjson.loads(v) for _, v in out.protected]

    reader = shred_reader(as_role["reader"], clock)
    assert reader.decrypt(events[0])["email"] == "someone@example.org"

    s = as_role["shredder"]
    store = RedisShredStore(redis.Redis.from_url(s.redis_url), P)
    Shredder(store, MemorySink(), worker="w", epoch_seconds=E, retention_seconds=R,
             clock=clock).erase(events[0]["user_id"], "req-acl")
    assert build_pseudonyms(as_role["gateway"]).lookup("usr_a") is None
    fresh = shred_reader(as_role["reader"], clock)
    assert fresh.read(events[0]).event["email"] != "someone@example.org"  # shredded
    assert fresh.decrypt(events[1])["email"] == "someone@example.org"


def test_the_suites_workers_log_in_as_their_roles(settings_factory, stack_addresses, redis_client) -> None:
    """The session Redis has the role users: what settings_factory builds logs in as its role, and is
    refused outside it there too (so every test building a worker exercises the roles)."""
    from stream.apps.privatizer import build_privatizer
    from stream.errors import ConfigError
    from stream.redisdb import client_for

    if stack_addresses.redis_users is None:
        pytest.skip("STREAMGATE_REDIS_URL is set: that Redis has no role users (the session warns)")
    s = settings_factory(epoch_seconds=E, retention_seconds=R)
    assert s.redis_password_file == stack_addresses.redis_users
    with pytest.raises(ConfigError, match="role"):
        client_for(s)  # no role, no login: a worker never falls back to another user
    gw = build_gateway(s, clock=Clock(T0))
    out = gw.process([RawRecord("clicks.raw", 0, 0, event("usr_suite"), None)])
    assert len(out.protected) == 1
    privatizer = build_privatizer(s, seed=1)
    assert privatizer.store.spent("tk2_x", "l") == 0
    store = RedisShredStore(client_for(s, "shredder"), s.redis_key_prefix)
    store.erasure_floor(T0)
    users = {c["user"] for c in redis_client.client_list()}
    assert {"gateway", "privatizer", "shredder"} <= users, (users, privatizer)
    tok = out.protected[0][0].decode()
    as_gateway = client_for(s, "gateway")
    with pytest.raises(redis.exceptions.NoPermissionError):
        as_gateway.delete(f"{s.redis_key_prefix}:dek:{{{tok}}}:{int(T0 // E)}")  # an unsigned erasure: refused
    with pytest.raises(redis.exceptions.NoPermissionError):
        as_gateway.keys("*")


def test_what_a_gateway_or_privatizer_can_still_do_to_a_ledger_and_what_not(acl_redis) -> None:
    """The attack, as each role that charges ledgers: resetting, deleting, renaming or SETting a charged
    ledger through a script is refused; what remains (docs/privacy.md, "What each Redis role can still
    do") is lowering it with a negative INCRBY and dropping it with a past EXPIREAT. Idempotency
    (erasure) records and data keys cannot be deleted by either."""
    from stream.errors import KeyUnavailableError
    from stream.ldp.ledger import Charge
    from stream.storage.ldp import RedisLedgerStore

    admin = redis.Redis.from_url(acl_redis("admin"))
    for role in ("gateway", "privatizer"):
        client = redis.Redis.from_url(acl_redis(role))
        store = RedisLedgerStore(client, P)
        charge = Charge(subject=f"tk2_{role}", ledger="l1", cost_micro=700_000, expire_at=int(T0) + 10 * E)
        assert store.charge([charge], 1_000_000) == [True]  # the real script, as the role
        name = store.ledger_key(charge.subject, charge.ledger)
        dump = admin.dump(name)
        for attack in LEDGER_ATTACKS:
            assert not allowed(client, functools.partial(attack, k=name, d=dump))
        assert store.spent(charge.subject, charge.ledger) == 700_000
        with pytest.raises(KeyUnavailableError):  # the script refuses a negative charge
            store.charge([Charge(charge.subject, charge.ledger, -700_000, charge.expire_at)], 1_000_000)
        assert store.spent(charge.subject, charge.ledger) == 700_000
        # the residual: INCRBY takes any amount, EXPIREAT any time (ACLs grant commands, not arguments)
        client.incrby(name, -700_000)
        assert store.spent(charge.subject, charge.ledger) == 0
        client.incrby(name, 700_000)
        client.expireat(name, 1)
        assert store.spent(charge.subject, charge.ledger) == 0 and not admin.exists(name)
        admin.set(f"{P}:erasure:r-{role}", b"done")
        admin.set(f"{P}:dek:{{tk2_{role}}}:1", b"wrapped")
        for name in (f"{P}:erasure:r-{role}", f"{P}:dek:{{tk2_{role}}}:1"):
            assert not allowed(client, lambda c, n=name: c.delete(n))  # type: ignore[misc]
            assert not allowed(client, lambda c, n=name: c.unlink(n))  # type: ignore[misc]
            assert admin.exists(name)
        client.close()
    admin.close()


def test_a_deadline_entry_added_by_the_gateway_destroys_a_key_early(acl_redis, settings_factory) -> None:
    """The residual of the gateway's ZADD on the deadline index (docs/privacy.md): an entry with a past
    score makes the shredder destroy that person-epoch's data key at its next pass - an unsigned erasure
    of one key. (The privatizer may not ZADD: the matrix.)"""
    from stream.redisdb import DEADLINE_SHARDS, deadline_shard, deadlines_key

    clock = Clock(T0)
    as_role = {role: settings_factory(redis_url=acl_redis(role), redis_cluster=False, redis_key_prefix=P,
                                      epoch_seconds=E, retention_seconds=R) for role in ACL_ROLES}
    out = build_gateway(as_role["gateway"], clock=clock).process(
        [RawRecord("clicks.raw", 0, i, event(u), None) for i, u in enumerate(["usr_zadd", "usr_other"])])
    events = [orjson.loads(v) for _, v in out.protected]
    tok = events[0]["user_id"]
    gateway = redis.Redis.from_url(acl_redis("gateway"))
    gateway.zadd(deadlines_key(P, deadline_shard(tok, DEADLINE_SHARDS)), {f"{tok}:{int(T0 // E)}": 0})
    store = RedisShredStore(redis.Redis.from_url(as_role["shredder"].redis_url), P)
    shredder = Shredder(store, MemorySink(), worker="w", epoch_seconds=E, retention_seconds=R, clock=clock)
    assert shredder.shred_due() == 1  # long before the key's deadline (T0 + R)
    fresh = shred_reader(as_role["reader"], clock)
    assert fresh.read(events[0]).event["email"] != "someone@example.org"  # destroyed
    assert fresh.decrypt(events[1])["email"] == "someone@example.org"
