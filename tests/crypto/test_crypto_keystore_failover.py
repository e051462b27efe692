"""The key-store guard against a failover, one identity field at a time (issue 27: the other tests
change every field at once). Three real servers: a primary and two replicas. The guard's client
follows a service address that moves between nodes, as a failover moves it.

* to the other replica (same dataset, same replication history): only ``run_id`` differs;
* that replica promoted (``REPLICAOF NO ONE``: the failover itself, whatever the replica lagged
  behind): only ``replid`` differs;
* the promoted node flushed (FLUSHALL: no restart, no failover): only the ``marker`` differs.
Each change alone drops every registered cache once and fails the batch's check."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
import redis

from stream.crypto.keystore import KeyStoreGuard, StoreIdentity
from stream.storage.keys import RedisIdentityProbe
from tests.support.fixtures import OwnRedis

pytestmark = pytest.mark.integration

PREFIX = "sgfail"


def _replicate(replica: OwnRedis, primary: OwnRedis) -> None:
    r = redis.Redis(port=replica.port)
    try:
        r.execute_command("REPLICAOF", "127.0.0.1", primary.port)
        deadline = time.monotonic() + 30
        while r.info("replication").get("master_link_status") != "up":
            assert time.monotonic() < deadline, "the replica did not sync"
            time.sleep(0.05)
    finally:
        r.close()


def _move(client: redis.Redis, node: OwnRedis) -> None:
    """The service address now leads to ``node`` (what a failover does to the clients)."""
    client.connection_pool.connection_kwargs["port"] = node.port
    client.connection_pool.disconnect()
    client.connection_pool.reset()  # forget the old connections (they would reconnect to the old node)


@pytest.fixture
def servers(tmp_path: Path):
    nodes = []
    for name in ("primary", "replica1", "replica2"):
        (tmp_path / name).mkdir()
        nodes.append(OwnRedis(tmp_path / name))
    try:
        for n in nodes:
            n.start()
        yield nodes
    finally:
        for n in nodes:
            n.stop()


def test_each_identity_field_alone_is_a_change_the_guard_acts_on(servers) -> None:
    primary, replica1, replica2 = servers
    admin = redis.Redis(port=primary.port)
    RedisIdentityProbe(admin, PREFIX).probe(False)  # the marker, written on the primary
    for r in (replica1, replica2):
        _replicate(r, primary)
    client = redis.Redis(port=replica1.port)  # the guard reads the dataset through a replica
    guard = KeyStoreGuard(RedisIdentityProbe(client, PREFIX))
    drops: list[int] = []
    guard.on_reset(lambda: drops.append(1))
    try:
        assert guard.check() and guard.check()  # learnt, then stable
        drops.clear()
        steps: list[tuple[str, str]] = []

        def changed(what: str) -> None:
            known = guard.identity
            assert known is not None
            resets = guard.resets
            assert not guard.check(), f"{what}: the guard did not notice"
            assert guard.resets == resets + 1 and len(drops) == resets + 1
            assert isinstance(guard.identity, StoreIdentity)
            steps.append((what, known.differs(guard.identity)))
            assert guard.check(), f"{what}: the new identity is stable"

        _move(client, replica2)
        changed("another replica of the same primary")
        redis.Redis(port=replica2.port).execute_command("REPLICAOF", "NO", "ONE")
        changed("that replica promoted")
        redis.Redis(port=replica2.port).flushall()
        changed("the marker lost")
        assert steps == [("another replica of the same primary", "run_id"),
                         ("that replica promoted", "replid"),
                         ("the marker lost", "marker")]
    finally:
        client.close()
        admin.close()
