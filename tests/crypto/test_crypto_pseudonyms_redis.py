"""tk2 pseudonym secrets on a real Redis (one server and a cluster, where the secret and its token
index live in different slots): concurrent first sightings agree on one token per person, and every
secret has its token index, living at least as long."""

from __future__ import annotations

import threading
from collections.abc import Callable

import pytest

from stream.crypto.keyring import Keyring
from stream.redisdb import RedisClient
from stream.storage.pseudonyms import Pseudonyms

pytestmark = pytest.mark.integration


def test_concurrent_first_sightings_agree_and_every_secret_is_indexed(
    redis_connect: Callable[..., RedisClient], redis_prefix: str
) -> None:
    ring = Keyring.generate()
    people = [f"usr_p{i}" for i in range(120)]
    n = 6
    barrier = threading.Barrier(n)
    results: list[list[str] | BaseException] = [RuntimeError("not run")] * n

    def worker(i: int) -> None:
        client = redis_connect()
        try:
            pseud = Pseudonyms(ring, client, redis_prefix, domain="user")
            barrier.wait(timeout=10)
            results[i] = pseud.tokens(people[i * 20:] + people[: i * 20], 2_000_000_000 + i)
        except BaseException as exc:  # reported below
            results[i] = exc
        finally:
            client.close()

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    maps = []
    for i, r in enumerate(results):
        assert isinstance(r, list), r
        maps.append(dict(zip(people[i * 20:] + people[: i * 20], r, strict=True)))
    assert all(m == maps[0] for m in maps)
    assert len(set(maps[0].values())) == len(people)

    client = redis_connect()
    pseud = Pseudonyms(ring, client, redis_prefix, domain="user")
    for person, tok in maps[0].items():
        pid, ptok = pseud.pid_key(pseud.lookup_id(person)), pseud.ptok_key(tok)
        assert pseud.lookup(person) == tok
        assert client.get(ptok) == pseud.lookup_id(person).encode()  # erasure by token finds the secret
        assert client.expiretime(ptok) >= client.expiretime(pid) == 2_000_000_000 + n - 1  # the latest wins (GT)
    client.close()


def test_secrets_are_wrapped_only_for_new_people_and_counted_against_the_kek_limit(
    redis_connect: Callable[..., RedisClient], redis_prefix: str
) -> None:
    from stream.crypto.kms import KekUsageExceededError, MemoryWrapCounter

    ring = Keyring.generate()
    counter = MemoryWrapCounter(warn_at=4, refuse_at=5)
    client = redis_connect()
    pseud = Pseudonyms(ring, client, redis_prefix, domain="user", max_staleness_seconds=0.0, wrap_counter=counter,
                       wrap_block=1)
    first = pseud.tokens(["usr_w1", "usr_w2", "usr_w3"], 2_000_000_000)
    assert counter.last_total[ring.primary_id] == 3 and pseud.created == 3
    trips = pseud.round_trips
    assert pseud.tokens(["usr_w1", "usr_w2", "usr_w3"], 2_000_000_000) == first  # stored: read, nothing wrapped
    assert counter.last_total[ring.primary_id] == 3
    if not pseud.cluster:
        assert pseud.round_trips == trips + 1  # one script, no second pass
    pseud.tokens(["usr_w4", "usr_w5"], 2_000_000_000)
    with pytest.raises(KekUsageExceededError):  # the limit holds for secrets as for data keys
        pseud.tokens(["usr_w6"], 2_000_000_000)
    assert client.get(pseud.pid_key(pseud.lookup_id("usr_w6"))) is None
    # reserved a block at a time: one count per block, never fewer wraps counted than done
    blocks = MemoryWrapCounter()
    batched = Pseudonyms(ring, client, redis_prefix + "b", domain="user", wrap_counter=blocks, wrap_block=4)
    batched.tokens([f"usr_b{i}" for i in range(3)], 2_000_000_000)
    assert blocks.last_total[ring.primary_id] == 4
    batched.tokens(["usr_b3"], 2_000_000_000)
    assert blocks.last_total[ring.primary_id] == 4  # from the block: no round trip
    batched.tokens(["usr_b4", "usr_b5"], 2_000_000_000)
    assert blocks.last_total[ring.primary_id] == 8 >= batched.created == 6
    client.close()
