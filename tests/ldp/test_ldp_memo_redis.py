"""The memo store and person ledger on a real Redis: same semantics as the in-memory one, atomic,
expiring, no refund on erasure, fail-closed when Redis is gone."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

import pytest
import redis

from stream.errors import KeyUnavailableError
from stream.ldp.memo import MemoRequest, MemoryMemoStore, RedisMemoStore
from stream.redisdb import RedisClient, deadline_shard, deadlines_key, key_slot

pytestmark = pytest.mark.integration


def _req(subject: str, field: str, cand: str, *, attr: str = "category", cost: int = 1_000_000,
         epoch: int = 20000, expire_at: int | None = None, ledger: str | None = None) -> MemoRequest:
    return MemoRequest(subject, epoch, expire_at or int(time.time()) + 3600, f"{attr}:{field}", attr, cost, cand,
                       ledger or f"L{subject}{epoch}")


def test_redis_and_memory_stores_agree(redis_client: RedisClient, redis_prefix: str) -> None:
    requests = [
        _req("tk1_a", "x", "1"), _req("tk1_a", "x", "2"),  # memo hit within the batch
        _req("tk1_a", "y", "3"),
        _req("tk1_a", "w", "6", attr="device"),  # other attribute, same person ledger: over a 2-epsilon cap
        _req("tk1_b", "x", "5"),
        _req("tk1_a", "x", "7"),  # memo replays cost nothing, even at the cap
    ]
    redis_store = RedisMemoStore(redis_client, prefix=redis_prefix)
    got = redis_store.resolve(requests, 2_000_000)
    want = MemoryMemoStore().resolve(requests, 2_000_000)
    assert got == want
    assert [r.status for r in got] == ["new", "memo", "new", "suppressed", "new", "memo"]
    assert got[1].report == "1"
    # layout: the memo hash by token, the ledger under its id only: one integer, in the person's slot
    mk, lk = redis_store.memo_key("tk1_a", 20000), redis_store.ledger_key("tk1_a", "Ltk1_a20000")
    assert mk == f"{redis_prefix}:memo:{{tk1_a}}:20000" and "tk1_a" not in lk.replace("Ltk1_a20000", "")
    assert key_slot(mk.encode()) == key_slot(lk.encode())
    assert redis_client.get(lk) == b"2000000" and redis_client.type(lk) == b"string"
    assert redis_client.ttl(mk) > 3000 and redis_client.ttl(lk) > 3000
    shard = deadlines_key(redis_prefix, deadline_shard("tk1_a", 16))
    assert redis_client.zscore(shard, "tk1_a:20000") is not None
    assert not redis_client.exists(f"{redis_prefix}:budget:{{tk1_a}}:20000")  # no per-attribute budget any more
    again = redis_store.resolve(requests[:3], 2_000_000)
    assert [r.status for r in again] == ["memo", "memo", "memo"]
    assert redis_client.get(lk) == b"2000000"


def test_deleting_memos_keeps_the_ledger(redis_client: RedisClient, redis_prefix: str) -> None:
    """What the shredder deletes (memo hash, old budget hash) is not the ledger: nothing is refunded."""
    store = RedisMemoStore(redis_client, prefix=redis_prefix)
    assert store.resolve([_req("tk1_e", "x", "1"), _req("tk1_e", "y", "2")], 2_000_000)[1].status == "new"
    redis_client.delete(store.memo_key("tk1_e", 20000), f"{redis_prefix}:budget:{{tk1_e}}:20000")
    got = store.resolve([_req("tk1_e", "x", "3"), _req("tk1_e", "z", "4")], 2_000_000)
    assert [r.status for r in got] == ["suppressed", "suppressed"]
    mem = MemoryMemoStore()
    mem.resolve([_req("tk1_e", "x", "1"), _req("tk1_e", "y", "2")], 2_000_000)
    mem.delete("tk1_e")
    assert [r.status for r in mem.resolve([_req("tk1_e", "x", "3")], 2_000_000)] == ["suppressed"]


def test_concurrent_workers_agree_on_one_response(redis_client: RedisClient, redis_prefix: str,
                                                 redis_connect: Callable[..., RedisClient]) -> None:
    stores = [RedisMemoStore(redis_connect(), prefix=redis_prefix) for _ in range(4)]
    results: list[list[str | None]] = [[] for _ in stores]
    barrier = threading.Barrier(len(stores))

    def work(i: int) -> None:
        barrier.wait()
        reqs = [_req(f"tk1_p{j}", "v", f"{i}-{j}") for j in range(300)]
        results[i] = [r.report for r in stores[i].resolve(reqs, 1_000_000)]

    threads = [threading.Thread(target=work, args=(i,)) for i in range(len(stores))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert all(r == results[0] for r in results)  # every worker sees the same winner per person
    for j in range(300):
        assert redis_client.get(stores[0].ledger_key(f"tk1_p{j}", f"Ltk1_p{j}20000")) == b"1000000"  # charged once


def test_unreachable_redis_fails_closed() -> None:
    dead = redis.Redis(host="127.0.0.1", port=1, socket_connect_timeout=0.2, retry=None)
    with pytest.raises(KeyUnavailableError, match="unavailable") as info:
        RedisMemoStore(dead, prefix="x").resolve([_req("tk1_a", "x", "1")], 1_000_000)
    assert "tk1_a" not in str(info.value)


def test_large_batches_are_chunked(redis_client: RedisClient, redis_prefix: str) -> None:
    store = RedisMemoStore(redis_client, prefix=redis_prefix, chunk=100)
    reqs = [_req(f"tk1_q{j % 50}", f"v{j}", str(j), cost=1) for j in range(1234)]
    got = store.resolve(reqs, 10**9)
    assert len(got) == 1234 and all(r.status == "new" for r in got)
