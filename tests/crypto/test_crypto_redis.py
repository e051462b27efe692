"""RedisKeyStore against a real Redis: layout, create-if-absent races, failure mapping.

Uses the project fixtures ``redis_connect`` / ``redis_prefix`` (tests/support/fixtures.py): the
configured or embedded Redis - and a local Redis Cluster - and a per-test key prefix cleaned afterwards.
"""

from __future__ import annotations

import socket
import threading
import time
import zlib
from collections.abc import Callable
from pathlib import Path

import pytest
import redis
from redis.backoff import NoBackoff
from redis.cluster import RedisCluster
from redis.retry import Retry

from stream.config import Settings
from stream.crypto.deks import DataKey, DekProvider
from stream.crypto.fields import decrypt_value, encrypt_value
from stream.crypto.keyring import Keyring
from stream.crypto.kms import LocalKMS
from stream.errors import ConfigError, KeyShreddedError, KeyUnavailableError
from stream.ldp.ledger import Charge
from stream.redisdb import RedisClient, client_for, connect
from stream.storage.keys import RedisKeyStore, identity_probe
from stream.storage.ldp import RedisLedgerStore
from stream.storage.retention import RedisShredStore
from tests.support.cluster import OwnCluster

DAY = 86400


def make_provider(client: RedisClient, prefix: str, kms: LocalKMS, **kw: float) -> DekProvider:
    args = {
        "epoch_seconds": DAY,
        "retention_seconds": 7 * DAY,
        "max_staleness_seconds": 30.0,
        "max_entries": 10_000,
    }
    args.update(kw)
    return DekProvider(RedisKeyStore(client, prefix=prefix), kms, **args)  # type: ignore[arg-type]


@pytest.mark.integration
def test_layout_set_nx_exat_and_deadline_index(redis_client: RedisClient, redis_prefix: str) -> None:
    client, prefix = redis_client, redis_prefix
    store = RedisKeyStore(client, prefix=prefix, shards=16)
    now = int(time.time())
    expire_at = now + 3600

    [stored] = store.create_many([("tk1_a", 5, b"first", expire_at)])
    assert stored == b"first"
    name = f"{prefix}:dek:{{tk1_a}}:5"  # hash-tagged by the person
    assert store.key_name("tk1_a", 5) == name
    shard = zlib.crc32(b"tk1_a") % 16
    assert store.deadlines_key("tk1_a") == f"{prefix}:deadlines:{{shard-{shard:02d}}}"
    assert client.get(name) == b"first"
    assert 0 < client.ttl(name) <= 3600
    assert client.expiretime(name) == expire_at
    assert client.zscore(store.deadlines_key("tk1_a"), "tk1_a:5") == expire_at

    # create-if-absent: a second creator gets the first value; the first deadline is kept
    [again] = store.create_many([("tk1_a", 5, b"second", expire_at + 999)])
    assert again == b"first"
    assert client.expiretime(name) == expire_at
    assert client.zscore(store.deadlines_key("tk1_a"), "tk1_a:5") == expire_at
    assert RedisKeyStore.parse_deadline_member(b"tk1_a:5") == ("tk1_a", 5)

    assert store.get_many([("tk1_a", 5), ("tk1_b", 5)]) == [b"first", None]
    assert store.get_many([]) == [] and store.create_many([]) == []


@pytest.mark.integration
def test_create_after_the_server_lost_its_script_and_a_deadline_already_past(redis_client: RedisClient,
                                                                               redis_prefix: str) -> None:
    store = RedisKeyStore(redis_client, prefix=redis_prefix)
    redis_client.script_flush()  # a restarted server: the create script is loaded again
    now = int(time.time())
    subjects = [f"tk1_p{i:02d}" for i in range(40)]  # many hash slots on a cluster
    assert store.create_many([(s, 5, s.encode(), now + 3600) for s in subjects]) == [s.encode() for s in subjects]
    assert all(redis_client.zscore(store.deadlines_key(s), f"{s}:5") == now + 3600 for s in subjects)
    # ours and a concurrent creator's in one call; two deadlines in one call
    assert store.create_many([(subjects[0], 5, b"late", now + 3600), ("tk1_new", 6, b"v", now + 7200)]) == [
        subjects[0].encode(), b"v"]
    assert redis_client.expiretime(store.key_name("tk1_new", 6)) == now + 7200
    with pytest.raises(KeyUnavailableError, match="expired on creation"):
        store.create_many([("tk1_gone", 5, b"v", now - 10)])
    assert redis_client.get(store.key_name("tk1_gone", 5)) is None


@pytest.mark.integration
def test_provider_layout_and_shred(redis_client: RedisClient, redis_prefix: str) -> None:
    client, prefix = redis_client, redis_prefix
    p = make_provider(client, prefix, LocalKMS(Keyring.generate()), max_staleness_seconds=0)
    epoch = p.epoch_of(time.time())
    key = p.keys_for(["tk1_alice"], epoch)["tk1_alice"]
    store = RedisKeyStore(client, prefix=prefix)
    name = store.key_name("tk1_alice", epoch)
    assert client.expiretime(name) == p.expire_at(epoch)
    assert client.zscore(store.deadlines_key("tk1_alice"), f"tk1_alice:{epoch}") == p.expire_at(epoch)
    raw = client.get(name)
    assert raw is not None and raw.startswith(b"1." + key.key_id.encode() + b".")
    text = encrypt_value(key, "alice@example.com", schema_id="s", field_path="email")
    assert (
        decrypt_value(
            p.key_for_decrypt("tk1_alice", epoch, key.key_id), text, schema_id="s", field_path="email"
        )
        == "alice@example.com"
    )
    client.delete(name)  # what the shredder does
    with pytest.raises(KeyShreddedError):
        p.key_for_decrypt("tk1_alice", epoch, key.key_id)


@pytest.mark.integration
def test_racing_workers_agree_on_one_key_per_subject(redis_connect: Callable[..., RedisClient],
                                                      redis_prefix: str) -> None:
    prefix = redis_prefix
    kms = LocalKMS(Keyring.generate())
    subjects = [f"tk1_person{i:03d}" for i in range(200)]
    n_threads = 8
    barrier = threading.Barrier(n_threads)
    results: list[dict[str, DataKey] | BaseException] = [RuntimeError("not run")] * n_threads
    epoch = int(time.time() // DAY)

    def worker(i: int) -> None:
        client = redis_connect()
        try:
            provider = make_provider(client, prefix, kms)
            order = subjects[i * 25 :] + subjects[: i * 25]  # different orders, same set
            barrier.wait(timeout=10)
            results[i] = provider.keys_for(order, epoch)
        except BaseException as exc:  # reported below
            results[i] = exc
        finally:
            client.close()

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(n_threads)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert all(isinstance(r, dict) for r in results), results
    maps = [{s: k.key_id for s, k in r.items()} for r in results if isinstance(r, dict)]
    assert all(m == maps[0] for m in maps)
    assert set(maps[0]) == set(subjects)
    assert len(set(maps[0].values())) == 200

    client = redis_connect()
    assert len(list(client.scan_iter(match=f"{prefix}:dek:*", count=1000))) == 200
    shards = {RedisKeyStore(client, prefix=prefix).deadlines_key(s) for s in subjects}
    assert len(shards) == 16  # 200 people spread over every shard of the index
    assert sum(client.zcard(k) for k in shards) == 200
    if isinstance(client, RedisCluster):  # ... and their keys over every master
        nodes = {client.get_node_from_key(f"{prefix}:dek:{{{s}}}:{epoch}").name for s in subjects}
        assert len(nodes) == 3
    # every worker's key decrypts every other worker's ciphertext
    first, last = results[0], results[-1]
    assert isinstance(first, dict) and isinstance(last, dict)
    for s in subjects[:20]:
        text = encrypt_value(first[s], s, schema_id="s", field_path="f")
        assert decrypt_value(last[s], text, schema_id="s", field_path="f") == s


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_store_unreachable_raises_key_unavailable() -> None:
    client = redis.Redis(
        host="127.0.0.1",
        port=_closed_port(),
        socket_connect_timeout=0.5,
        socket_timeout=0.5,
        retry=Retry(NoBackoff(), 0),  # fail fast: redis-py retries with backoff by default
    )
    store = RedisKeyStore(client, prefix="sgtest-down")
    with pytest.raises(KeyUnavailableError) as info:
        store.get_many([("tk1_secret_subject", 1)])
    assert "tk1_secret_subject" not in str(info.value)
    with pytest.raises(KeyUnavailableError) as info:
        store.create_many([("tk1_secret_subject", 1, b"v", int(time.time()) + 60)])
    assert "tk1_secret_subject" not in str(info.value)
    provider = make_provider(client, "sgtest-down", LocalKMS(Keyring.generate()))
    with pytest.raises(KeyUnavailableError):
        provider.keys_for(["tk1_secret_subject"], provider.epoch_of(time.time()))
    with pytest.raises(KeyUnavailableError):
        provider.key_for_decrypt("tk1_secret_subject", provider.epoch_of(time.time()), "0123456789abcdef")


def test_decode_responses_client_refused() -> None:
    with pytest.raises(ValueError):
        RedisKeyStore(redis.Redis(decode_responses=True))


@pytest.mark.slow  # starts a cluster of its own
def test_a_cluster_that_goes_away_fails_closed(tmp_path: Path) -> None:
    """Every store on a Redis Cluster whose masters are gone raises KeyUnavailableError (the worker holds
    its batch), never redis-py's cluster errors."""
    cluster = OwnCluster(tmp_path)
    cluster.start()
    client = connect(cluster.url, cluster=True, socket_connect_timeout=0.5, socket_timeout=0.5,
                     retry=Retry(NoBackoff(), 0))
    try:
        store = RedisKeyStore(client, prefix="sgdown")
        epoch = int(time.time() // DAY)
        assert store.create_many([("tk1_up", epoch, b"v", int(time.time()) + 60)]) == [b"v"]
        shreds = RedisShredStore(client, "sgdown")
        ledgers = RedisLedgerStore(client, "sgdown")
        cluster.stop()
        calls: list[Callable[[], object]] = [
            lambda: store.get_many([("tk1_up", epoch)]),
            lambda: store.create_many([("tk1_new", epoch, b"v", int(time.time()) + 60)]),
            lambda: shreds.claim_due(time.time(), 10, at=time.time(), worker="w", lease_until=time.time() + 60),
            lambda: ledgers.charge([Charge("tk1_up", "L", 1, int(time.time()) + 60)], 10),
            lambda: identity_probe(client, "sgdown").probe(False),
        ]
        for call in calls:
            with pytest.raises(KeyUnavailableError):
                call()
    finally:
        client.close()
        cluster.stop()


def test_cluster_without_a_url_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="STREAMGATE_REDIS_URL"):
        client_for(Settings(redis_cluster=True, state_dir=tmp_path))
