"""Redis access in one place: the client (one server or a Redis Cluster), hash-tagged key names,
the sharded deadline index and script calls batched one hash slot at a time.

Key layout (``<prefix>`` is ``STREAMGATE_REDIS_KEY_PREFIX``; braces are literal hash tags)::

    <prefix>:dek:{<token>}:<epoch>              wrapped data key             slot of the person
    <prefix>:memo:{<token>}:<epoch>             LDP memo hash                slot of the person
    <prefix>:budget:{<token>}:<epoch>           old per-attribute budgets    slot of the person
    <prefix>:ptok:{<token>}                     tk2 token -> lookup id       slot of the person
    <prefix>:gone:{<token>}                     erased token: no key created slot of the person
    <prefix>:ledger:{<slot tag>}:<ledger id>    epsilon ledger (no token)    slot of the person
    <prefix>:pid:{<lookup id>}                  tk2 secret, found by user_id slot of the lookup id
    <prefix>:perased:{<lookup id>}              erased marker (an epoch)     slot of the lookup id (with pid)
    <prefix>:deadlines:{shard-NN}               deadline index shard         one slot per shard
    <prefix>:shredder:pending:{shard-NN}        the shredder's outbox shard  same slot as its index shard
    <prefix>:erasure:<request id>               erasure record               anywhere (one key)
    <prefix>:erasing:<request id>               whom a begun erasure erases  anywhere (one key)
    <prefix>:erasure-floor                      since when erasure records are kept (unix s)  anywhere
    <prefix>:pseudonyms-wrapped                 since when every tk2 secret is wrapped: no more "2."  anywhere
    <prefix>:kek-wraps:<kek id>                 wrap counter                 anywhere (one key)
    <prefix>:replayed:<keyed event digest>      when dlq replay re-published anywhere (one key)
    <prefix>:keystore[:{<slot tag>}]            key-store marker             one per master on a cluster
    <prefix>:shredded                           pub/sub channel of shreds    (a channel, not a key)

A person's keys share the hash tag ``{<token>}``, so every script or transaction over one person
runs in one slot. The ledger must not name the token (an erasure keeps it), so its tag is
:func:`slot_tag` of the person's slot: a short string that hashes to the same slot. Every name
above is built by a function here and nowhere else. The erased marker shares the tag of ``pid``:
the erasure deletes ``pid`` and writes the marker in one script, and the gateway's mint reads both
in one script.
``shard = crc32(token) mod DEADLINE_SHARDS`` (16): every member of one person is in one shard.

On a single server the same names are used (the braces are then only characters).
"""

from __future__ import annotations

import functools
import zlib
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeAlias

import redis
from redis.backoff import NoBackoff
from redis.cluster import RedisCluster
from redis.commands.core import Script
from redis.crc import key_slot
from redis.exceptions import RedisClusterException
from redis.retry import Retry

from stream.errors import ConfigError

if TYPE_CHECKING:
    from stream.config import Settings

__all__ = [
    "REDIS_ERRORS",
    "RedisClient",
    "budget_key",
    "check_prefix",
    "client_for",
    "connect",
    "deadline_shard",
    "deadlines_key",
    "dek_key",
    "erasing_key",
    "erasure_floor_key",
    "erasure_key",
    "eval_many",
    "gone_key",
    "is_cluster",
    "kek_wraps_key",
    "key_patterns",
    "key_slot",
    "keystore_key",
    "ledger_key",
    "memo_key",
    "mget",
    "no_retry",
    "operator_client",
    "pending_key",
    "perased_key",
    "person_slot",
    "person_tag",
    "pid_key",
    "pseudonyms_wrapped_key",
    "ptok_affixes",
    "ptok_key",
    "role_users_dir",
    "shard_tag",
    "shred_channel",
    "slot_groups",
    "slot_tag",
]

#: One Redis server or a Redis Cluster (redis-py clients; bytes, not decoded).
RedisClient: TypeAlias = "redis.Redis | RedisCluster"

#: What a Redis call raises when the store is unreachable or refuses: redis-py's cluster client also
#: raises ``RedisClusterException`` (no reachable node, slots not covered), which is no ``RedisError``.
REDIS_ERRORS: tuple[type[BaseException], ...] = (redis.RedisError, RedisClusterException, OSError)

SLOTS = 16384


try:
    from hiredis import pack_command as _pack_command
except ImportError:  # (a dependency; without it redis-py packs in Python)
    _pack_command = None  # type: ignore[assignment]


class _CPacker:
    """RESP packing in C (hiredis) for commands whose arguments are str, bytes, int or float:
    redis-py's own packer first encodes each argument in Python, about half of the shredder's
    client CPU (docs/benchmarks.md). Anything else (bool, None, bytearray, a command name with a
    space) takes redis-py's packer, its checks and its errors."""

    __slots__ = ("_fallback",)

    def __init__(self, fallback: Any) -> None:
        self._fallback = fallback

    def pack(self, *args: Any) -> list[bytes]:
        first = args[0]
        if type(first) is str and " " not in first:  # (redis-py splits "CONFIG SET" into two arguments)
            try:
                return [_pack_command(args)]
            except TypeError:
                pass
        packed: list[bytes] = self._fallback.pack(*args)
        return packed


class _CPacking:
    def _construct_command_packer(self, packer: Any) -> Any:
        base = super()._construct_command_packer(packer)  # type: ignore[misc]
        enc = self.encoder  # type: ignore[attr-defined]
        if packer is not None or _pack_command is None or enc.encoding.lower().replace("-", "") != "utf8" \
                or enc.encoding_errors != "strict":
            return base
        return _CPacker(base)


class CPackConnection(_CPacking, redis.Connection):
    pass


class CPackSSLConnection(_CPacking, redis.SSLConnection):
    pass


class CPackUnixConnection(_CPacking, redis.UnixDomainSocketConnection):
    pass


_CONNECTIONS = {"redis": CPackConnection, "rediss": CPackSSLConnection, "unix": CPackUnixConnection}


def connect(url: str, *, cluster: bool = False, **kwargs: Any) -> RedisClient:
    """A client of ``url``: :class:`redis.cluster.RedisCluster` (any node of the cluster as the
    start-up node) when ``cluster``, else :class:`redis.Redis`; its commands packed in C
    (:class:`_CPacker`)."""
    conn = _CONNECTIONS.get(url.partition("://")[0].lower())
    if conn is not None:
        kwargs.setdefault("connection_class", conn)
    if cluster:
        return RedisCluster.from_url(url, **kwargs)
    return redis.Redis.from_url(url, **kwargs)


def client_for(settings: Settings, role: str | None = None, **overrides: Any) -> RedisClient:
    """The workers' client of ``settings`` (``redis_url``, ``redis_cluster``): 2 s timeouts and no
    retries of its own. The engine's hold is the one retry policy: a failed call holds the batch
    (fail closed) and the engine retries it with its backoff, counted and logged; retries stacked
    beneath it would only delay the hold (redis-py's default: three timeouts before it).

    ``role``: the worker role (stream.storage.acl) this client acts for. When the passwords are a
    directory of ACL users (:func:`role_users_dir`: the dev stack's, the tests'), the client logs in
    as the user ``role`` with its file there; a client without a role is then refused."""
    kwargs: dict[str, Any] = {
        "socket_timeout": 2.0,
        "socket_connect_timeout": 2.0,
        "health_check_interval": 10,
        "retry": no_retry(),
    }
    users = role_users_dir(settings)
    if users is not None:
        if role is None or not (users / role).is_file():
            raise ConfigError(f"the Redis ACL users in {users} have no user for role {role!r}: "
                              "a worker logs in as its role (stream/storage/acl.py)")
        kwargs["username"], kwargs["password"] = role, (users / role).read_text().strip()
    elif settings.redis_password_file is not None:  # the ACL user's password (stream.storage.acl)
        kwargs["password"] = settings.redis_password_file.read_text().strip()
    kwargs.update(overrides)
    if settings.redis_cluster and not settings.redis_url:
        raise ConfigError("STREAMGATE_REDIS_CLUSTER needs STREAMGATE_REDIS_URL (a node of the cluster): "
                          "the embedded dev Redis is one server")
    return connect(settings.redis_url_or_dev(), cluster=settings.redis_cluster, **kwargs)


def operator_client(settings: Settings) -> RedisClient:
    """A client of ``settings``' Redis as the URL's own user (``redis_password_file`` when it is a file),
    never a worker role: for operator tools that need what no role has (``SCAN``)."""
    password_file = settings.redis_password_file
    kwargs: dict[str, Any] = {"socket_timeout": 10.0, "socket_connect_timeout": 5.0}
    if password_file is not None and not password_file.is_dir():
        kwargs["password"] = password_file.read_text().strip()
    return connect(settings.redis_url_or_dev(), cluster=settings.redis_cluster, **kwargs)


def role_users_dir(settings: Settings) -> Path | None:
    """The directory of ACL users' passwords the workers of ``settings`` log in with
    (:meth:`stream.config.Settings.redis_users_dir`: it owns the one lookup of the dev stack)."""
    return settings.redis_users_dir()


def no_retry() -> Retry:
    """redis-py's retry object that never retries (the caller's own policy decides)."""
    return Retry(NoBackoff(), 0)


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


#: Shards of the deadline index (``<prefix>:deadlines:{shard-NN}``); a constant, since a change would
#: strand the members of the shards that no longer exist.
DEADLINE_SHARDS = 16


def deadline_shard(subject: str, shards: int) -> int:
    """The deadline-index shard of a person: ``crc32(token) mod shards``."""
    return zlib.crc32(subject.encode("ascii")) % shards


def deadlines_key(prefix: str, shard: int) -> str:
    return f"{prefix}:deadlines:{shard_tag(shard)}"


def pending_key(prefix: str, shard: int) -> str:
    return f"{prefix}:shredder:pending:{shard_tag(shard)}"


# --- key names (the layout in the module docstring; built here only) ---------------------------
def dek_key(prefix: str, subject: str, epoch: int | str) -> str:
    """The wrapped data key of ``(subject, epoch)``."""
    return f"{prefix}:dek:{person_tag(subject)}:{epoch}"


def gone_key(prefix: str, subject: str) -> str:
    """The marker of an erased token: no data key is created for it any more (in the person's slot)."""
    return f"{prefix}:gone:{person_tag(subject)}"


def memo_key(prefix: str, subject: str, epoch: int | str) -> str:
    """The LDP memo hash of ``(subject, epoch)``."""
    return f"{prefix}:memo:{person_tag(subject)}:{epoch}"


def budget_key(prefix: str, subject: str, epoch: int | str) -> str:
    """The old per-attribute budget hash of ``(subject, epoch)`` (only deleted)."""
    return f"{prefix}:budget:{person_tag(subject)}:{epoch}"


def person_slot(subject: str) -> int:
    """The hash slot of a person's keys (their ledgers too, without naming the token)."""
    return int(key_slot(person_tag(subject).encode("ascii")))


def ledger_key(prefix: str, subject: str, ledger: str) -> str:
    """The epsilon ledger ``ledger`` of ``subject``: in the person's slot, named by :func:`slot_tag`."""
    return f"{prefix}:ledger:{{{slot_tag(person_slot(subject))}}}:{ledger}"


def pid_key(prefix: str, lookup_id: str) -> str:
    """The tk2 secret of the person with lookup id ``lookup_id``."""
    return f"{prefix}:pid:{person_tag(lookup_id)}"


def perased_key(prefix: str, lookup_id: str) -> str:
    """The erased marker of the person with lookup id ``lookup_id`` (in the slot of their ``pid``)."""
    return f"{prefix}:perased:{person_tag(lookup_id)}"


def ptok_affixes(prefix: str) -> tuple[str, str]:
    """``(head, tail)`` with ``ptok_key(prefix, token) == head + token + tail`` (for a script that
    names the index of a token it reads)."""
    return f"{prefix}:ptok:{{", "}"


def ptok_key(prefix: str, token: str) -> str:
    """The tk2 token index: token -> lookup id (in the person's slot)."""
    head, tail = ptok_affixes(prefix)
    return head + token + tail


def erasure_key(prefix: str, request_id: str) -> str:
    """The record of a processed erasure request."""
    return f"{prefix}:erasure:{request_id}"


def erasing_key(prefix: str, request_id: str) -> str:
    """Which person an erasure request began to erase (written before anything is destroyed)."""
    return f"{prefix}:erasing:{request_id}"


def erasure_floor_key(prefix: str) -> str:
    """Since when this store has kept erasure records (set if absent: a new or emptied store)."""
    return f"{prefix}:erasure-floor"


def pseudonyms_wrapped_key(prefix: str) -> str:
    """Set by ``streamgate keys rewrap-pseudonyms`` once every stored tk2 secret is wrapped by the KEK:
    from then on a clear (``2.``) secret is refused (stream.storage.pseudonyms)."""
    return f"{prefix}:pseudonyms-wrapped"


def replayed_key(prefix: str, digest: str) -> str:
    """When ``streamgate dlq replay`` re-published the event of keyed digest ``digest``."""
    return f"{prefix}:replayed:{digest}"


def kek_wraps_key(prefix: str, kek_id: str) -> str:
    """The wrap counter of KEK ``kek_id``."""
    return f"{prefix}:kek-wraps:{kek_id}"


def keystore_key(prefix: str, slot: int | None = None) -> str:
    """The key-store marker: one per server, or one per cluster master in a ``slot`` it owns."""
    return f"{prefix}:keystore" if slot is None else f"{prefix}:keystore:{{{slot_tag(slot)}}}"


def shred_channel(prefix: str) -> str:
    """The pub/sub channel on which the shredder announces destroyed keys."""
    return f"{prefix}:shredded"


def key_patterns(prefix: str) -> dict[str, str]:
    """Glob patterns (Redis ACL ``~`` rules) of every kind of key above, by kind (stream.storage.acl)."""
    return {
        "dek": dek_key(prefix, "*", "*"), "memo": memo_key(prefix, "*", "*"), "budget": budget_key(prefix, "*", "*"),
        "ptok": ptok_key(prefix, "*"), "gone": gone_key(prefix, "*"), "ledger": f"{prefix}:ledger:*",
        "pid": pid_key(prefix, "*"),
        "perased": perased_key(prefix, "*"), "deadlines": f"{prefix}:deadlines:*",
        "pending": f"{prefix}:shredder:pending:*", "erasure": erasure_key(prefix, "*"),
        "erasing": erasing_key(prefix, "*"),
        "erasure-floor": erasure_floor_key(prefix), "kek-wraps": kek_wraps_key(prefix, "*"),
        "pwrapped": pseudonyms_wrapped_key(prefix),
        "replayed": replayed_key(prefix, "*"), "keystore": keystore_key(prefix) + "*",
    }


def mget(client: RedisClient, names: Sequence[str]) -> list[Any]:
    """GET of many keys: one MGET, on a cluster one per slot (pipelined)."""
    if not names:
        return []
    if isinstance(client, RedisCluster):
        return list(client.mget_nonatomic(list(names)))
    return list(client.mget(list(names)))


def slot_groups(client: RedisClient, names: Sequence[str]) -> list[list[int]]:
    """Indices of ``names``, grouped so that the keys of a group share a hash slot (a script may take
    them all): one group on one server, one per slot on a cluster."""
    if not isinstance(client, RedisCluster):
        return [list(range(len(names)))] if names else []
    groups: dict[int, list[int]] = {}
    for i, name in enumerate(names):
        groups.setdefault(key_slot(name.encode("utf-8")), []).append(i)
    return list(groups.values())


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
