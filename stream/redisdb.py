"""Redis access in one place: the client (one server or a Redis Cluster), hash-tagged key names,
the sharded deadline index and script calls batched one hash slot at a time.

Key layout (``<prefix>`` is ``STREAMGATE_REDIS_KEY_PREFIX``; braces are literal hash tags)::

    <prefix>:dek:{<token>}:<epoch>              wrapped data key             slot of the person
    <prefix>:memo:{<token>}:<epoch>             LDP memo hash                slot of the person
    <prefix>:budget:{<token>}:<epoch>           old per-attribute budgets    slot of the person
    <prefix>:ptok:{<token>}                     tk2 token -> lookup id       slot of the person
    <prefix>:ledger:{<slot tag>}:<ledger id>    epsilon ledger (no token)    slot of the person
    <prefix>:pid:{<lookup id>}                  tk2 secret, found by user_id slot of the lookup id
    <prefix>:perased:{<lookup id>}              erased marker (an epoch)     slot of the lookup id (with pid)
    <prefix>:deadlines:{shard-NN}               deadline index shard         one slot per shard
    <prefix>:shredder:pending:{shard-NN}        the shredder's outbox shard  same slot as its index shard
    <prefix>:erasure:<request id>               erasure record               anywhere (one key)
    <prefix>:kek-wraps:<kek id>                 wrap counter                 anywhere (one key)
    <prefix>:keystore[:{<slot tag>}]            key-store marker             one per master on a cluster

A person's keys share the hash tag ``{<token>}``, so every script or transaction over one person
runs in one slot. The ledger must not name the token (an erasure keeps it), so its tag is
:func:`slot_tag` of the person's slot: a short string that hashes to the same slot (its name is
built by :func:`stream.storage.ldp.ledger_key` only). The erased marker shares the tag of ``pid``:
the erasure deletes ``pid`` and writes the marker in one script, and the gateway's mint reads both
in one script.
``shard = crc32(token) mod STREAMGATE_REDIS_DEADLINE_SHARDS``: every member of one person is in one shard.

On a single server the same names are used (the braces are then only characters).
"""

from __future__ import annotations

import functools
import zlib
from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING, Any, TypeAlias

import redis
from redis.backoff import ExponentialBackoff
from redis.cluster import RedisCluster
from redis.commands.core import Script
from redis.crc import key_slot
from redis.exceptions import RedisClusterException
from redis.retry import Retry

if TYPE_CHECKING:
    from stream.config import Settings

__all__ = [
    "REDIS_ERRORS",
    "RedisClient",
    "check_prefix",
    "client_for",
    "connect",
    "deadline_shard",
    "deadlines_key",
    "eval_many",
    "is_cluster",
    "key_slot",
    "mget",
    "pending_key",
    "person_tag",
    "shard_tag",
    "slot_tag",
]

#: One Redis server or a Redis Cluster (redis-py clients; bytes, not decoded).
RedisClient: TypeAlias = "redis.Redis | RedisCluster"

#: What a Redis call raises when the store is unreachable or refuses: redis-py's cluster client also
#: raises ``RedisClusterException`` (no reachable node, slots not covered), which is no ``RedisError``.
REDIS_ERRORS: tuple[type[BaseException], ...] = (redis.RedisError, RedisClusterException, OSError)

SLOTS = 16384


def connect(url: str, *, cluster: bool = False, **kwargs: Any) -> RedisClient:
    """A client of ``url``: :class:`redis.cluster.RedisCluster` (any node of the cluster as the
    start-up node) when ``cluster``, else :class:`redis.Redis`."""
    if cluster:
        return RedisCluster.from_url(url, **kwargs)
    return redis.Redis.from_url(url, **kwargs)


def client_for(settings: Settings, **overrides: Any) -> RedisClient:
    """The workers' client of ``settings`` (``redis_url``, ``redis_cluster``): 2 s timeouts and few,
    fast retries (a worker holds the batch and retries with its own backoff: fail closed)."""
    kwargs: dict[str, Any] = {
        "socket_timeout": 2.0,
        "socket_connect_timeout": 2.0,
        "health_check_interval": 10,
        "retry": Retry(ExponentialBackoff(cap=0.5, base=0.05), 2),
    }
    kwargs.update(overrides)
    if settings.redis_cluster and not settings.redis_url:
        from stream.errors import ConfigError

        raise ConfigError("STREAMGATE_REDIS_CLUSTER needs STREAMGATE_REDIS_URL (a node of the cluster): "
                          "the embedded dev Redis is one server")
    return connect(settings.redis_url_or_dev(), cluster=settings.redis_cluster, **kwargs)


def is_cluster(client: Any) -> bool:
    return isinstance(client, RedisCluster)


def check_prefix(prefix: str) -> str:
    """A key prefix: non-empty, no ``:`` (the layout's separator) and no braces (hash tags)."""
    if not prefix or any(c in prefix for c in ":{}"):
        raise ValueError("prefix must be non-empty and contain no ':', '{' or '}'")
    return prefix


def person_tag(subject: str) -> str:
    """The hash tag of a person's keys: ``{<token>}``."""
    return "{" + subject + "}"


@functools.cache
def _slot_tags() -> tuple[str, ...]:
    table: list[str | None] = [None] * SLOTS
    left, i = SLOTS, 0
    while left:
        tag = format(i, "x")
        slot = key_slot(tag.encode("ascii"))
        if table[slot] is None:
            table[slot] = tag
            left -= 1
        i += 1
    return tuple(t for t in table if t is not None)


def slot_tag(slot: int) -> str:
    """The shortest hex string that hashes to ``slot`` (a hash tag naming a slot and nothing else)."""
    return _slot_tags()[slot]


def shard_tag(shard: int) -> str:
    return f"{{shard-{shard:02d}}}"


def deadline_shard(subject: str, shards: int) -> int:
    """The deadline-index shard of a person: ``crc32(token) mod shards``."""
    return zlib.crc32(subject.encode("ascii")) % shards


def deadlines_key(prefix: str, shard: int) -> str:
    return f"{prefix}:deadlines:{shard_tag(shard)}"


def pending_key(prefix: str, shard: int) -> str:
    return f"{prefix}:shredder:pending:{shard_tag(shard)}"


def mget(client: RedisClient, names: Sequence[str]) -> list[Any]:
    """GET of many keys: one MGET, on a cluster one per slot (pipelined)."""
    if not names:
        return []
    if isinstance(client, RedisCluster):
        return list(client.mget_nonatomic(list(names)))
    return list(client.mget(list(names)))


def eval_many(client: RedisClient, script: Script, calls: Iterable[tuple[Sequence[str], Sequence[Any]]]) -> list[Any]:
    """Run ``script`` once per ``(keys, args)`` call, pipelined (each call's keys in one slot);
    returns the results in order. A server that lost the script gets it loaded again."""
    todo = list(calls)
    if not todo:
        return []
    out = _eval_pipelined(client, script.sha, todo)
    missing = [i for i, r in enumerate(out) if isinstance(r, redis.exceptions.NoScriptError)]
    if missing:
        client.script_load(script.script)  # a cluster loads it on every primary
        again = _eval_pipelined(client, script.sha, [todo[i] for i in missing])
        for i, r in zip(missing, again, strict=True):
            out[i] = r
    for r in out:
        if isinstance(r, Exception):
            raise r
    return out


def _eval_pipelined(client: RedisClient, sha: str, calls: list[tuple[Sequence[str], Sequence[Any]]]) -> list[Any]:
    if len(calls) == 1 and not isinstance(client, RedisCluster):
        keys, args = calls[0]
        try:
            return [client.evalsha(sha, len(keys), *keys, *args)]
        except redis.exceptions.NoScriptError as exc:
            return [exc]
    pipe = client.pipeline(transaction=False)
    for keys, args in calls:
        # EVALSHA through execute_command: redis-py refuses pipe.evalsha on a cluster, but routes this
        # by its keys
        pipe.execute_command("EVALSHA", sha, len(keys), *keys, *args)
    return list(pipe.execute(raise_on_error=False))
