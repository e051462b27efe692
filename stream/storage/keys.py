"""The key stores of :mod:`stream.crypto` on Redis: data keys, the key-store identity probe, the
KEK wrap counter.

Data keys (:class:`RedisKeyStore`; the shredder relies on it; braces are hash tags,
names from :mod:`stream.redisdb`)::

    <prefix>:dek:{<subject>}:<epoch>     string  stored value, EXPIREAT = expire_at   (SET NX EXAT)
    <prefix>:deadlines:{shard-NN}        zset    member "<subject>:<epoch>", score = expire_at (ZADD NX)
    <prefix>:gone:{<subject>}            string  the erasure's marker: no key is created for the token

``expire_at = (epoch + 1) * epoch_seconds + retention_seconds`` (unix seconds).
Subjects are person tokens (``[A-Za-z0-9_.=-]``, never ``:``), so a deadline
member splits unambiguously with ``member.rsplit(":", 1)``. The deadline index
lets the shredder act even when Redis expiry notifications are missed; ZADD NX
keeps the first deadline recorded for a key. It is sharded (``shard = crc32(subject)
mod shards``) so that no single sorted set takes every write.

Creation (:meth:`RedisKeyStore.create_many`): the deadline entries, then a script that runs
SET NX EXAT and GET for each key (one call per hash slot: :func:`stream.redisdb.slot_groups`).
On one server all of it is one MULTI/EXEC (one script call). On a cluster the deadline entries
are written first (one pipeline), then the scripts (another): a key may be indexed without
existing (the shredder's receipt then says ``expired_before_shred``), never exist without being
indexed.

Key-store identity (:class:`RedisIdentityProbe`, :class:`ClusterIdentityProbe`; the guard is
:class:`stream.crypto.keystore.KeyStoreGuard`): a marker ``<prefix>:keystore`` (one per master
on a cluster, ``<prefix>:keystore:{<slot tag>}`` in a slot it owns), ``run_id`` and
``master_replid``, read by one script; ``WAITAOF`` pipelined after it when asked.

KEK wraps (:class:`RedisWrapCounter`): one ``INCRBY`` on ``<prefix>:kek-wraps:<kek id>`` per
reservation (one key: any node of a cluster).
"""

from __future__ import annotations

import contextlib
import logging
import secrets
from collections.abc import Sequence
from typing import Any

import redis
from redis.cluster import RedisCluster

from stream.crypto.deks import check_refs
from stream.crypto.keystore import IdentityProbe, Probe, StoreIdentity
from stream.crypto.kms import WRAP_REFUSE_AT, WRAP_WARN_AT, WrapCounter
from stream.errors import KeyUnavailableError, SubjectErasedError
from stream.redisdb import (
    REDIS_ERRORS,
    RedisClient,
    check_prefix,
    deadline_shard,
    deadlines_key,
    dek_key,
    eval_many,
    gone_key,
    is_cluster,
    kek_wraps_key,
    keystore_key,
    mget,
    slot_groups,
)

__all__ = ["ClusterIdentityProbe", "RedisIdentityProbe", "RedisKeyStore", "RedisWrapCounter", "identity_probe"]

log = logging.getLogger("streamgate.keystore")

#: A batch that loaded or created data keys waits (WAITAOF, Redis >= 7.2 with AOF) at most this long for
#: Redis to fsync them before it is emitted; not confirmed = batch held. Below the 2 s socket timeout.
WAITAOF_TIMEOUT_MS = 1000


#: KEYS: (data key, its person's erased marker) pairs (of one hash slot); ARGV[1]: their expire_at, then one
#: value per key. Each: 0 if the person's token was erased (no key is created for it), else SET NX EXAT, then
#: GET: 1 if the value stored afterwards is ours, else that value (a concurrent creator's; nil if it expired
#: on creation).
_CREATE_LUA = r"""
local exat = ARGV[1]
local out = {}
for i = 1, #KEYS / 2 do
  if redis.call('GET', KEYS[2 * i]) then  -- (GET: the gateway's ACL user has no EXISTS)
    out[i] = 0
  else
    local ours = ARGV[i + 1]
    redis.call('SET', KEYS[2 * i - 1], ours, 'NX', 'EXAT', exat)
    local v = redis.call('GET', KEYS[2 * i - 1])
    if v == ours then out[i] = 1 else out[i] = v end
  end
end
return out
"""


class RedisKeyStore:
    """:class:`stream.crypto.deks.KeyStore` on Redis (one server or a cluster); see the module docstring
    for the key layout.

    ``client`` must return bytes (``decode_responses=False``). One round trip per
    batch: ``get_many`` is one MGET (per slot on a cluster), ``create_many`` one pipelined
    MULTI/EXEC (two pipelines on a cluster).
    """

    def __init__(self, client: RedisClient, prefix: str = "sg", *, shards: int = 16) -> None:
        if client.get_encoder().decode_responses:
            raise ValueError("RedisKeyStore needs a client with decode_responses=False (values are binary)")
        if shards <= 0:
            raise ValueError("shards must be > 0")
        self._client = client
        self.prefix = check_prefix(prefix)
        self.shards = int(shards)
        self.cluster = is_cluster(client)
        self._create = client.register_script(_CREATE_LUA)
        self._shard_keys = [deadlines_key(self.prefix, shard) for shard in range(self.shards)]

    def key_name(self, subject: str, epoch: int) -> str:
        """Redis key holding the wrapped DEK of ``(subject, epoch)``."""
        return dek_key(self.prefix, subject, epoch)

    def deadlines_key(self, subject: str) -> str:
        """The deadline-index shard of ``subject``."""
        return self._shard_keys[deadline_shard(subject, self.shards)]

    @staticmethod
    def deadline_member(subject: str, epoch: int) -> str:
        """Member of the deadline zset for ``(subject, epoch)``."""
        return f"{subject}:{epoch}"

    @staticmethod
    def parse_deadline_member(member: str | bytes) -> tuple[str, int]:
        """Inverse of :meth:`deadline_member`."""
        text = member.decode("ascii") if isinstance(member, bytes) else member
        subject, _, epoch = text.rpartition(":")
        return subject, int(epoch)

    def get_many(self, refs: Sequence[tuple[str, int]]) -> list[bytes | None]:
        if not refs:
            return []
        check_refs(refs)
        prefix = self.prefix
        names = [dek_key(prefix, s, e) for s, e in refs]
        try:
            values = mget(self._client, names)
        except REDIS_ERRORS as exc:
            raise _unavailable(exc) from None
        return [None if v is None else bytes(v) for v in values]

    def create_many(self, items: Sequence[tuple[str, int, bytes, int]]) -> list[bytes]:
        if not items:
            return []
        index: dict[str, dict[str, bytes]] = {}
        names: list[str] = []
        check_refs((subject, epoch) for subject, epoch, _value, _expire_at in items)
        prefix, shard_keys, shards = self.prefix, self._shard_keys, self.shards
        for subject, epoch, _value, expire_at in items:
            member = self.deadline_member(subject, epoch)
            index.setdefault(shard_keys[deadline_shard(subject, shards)], {})[member] = b"%d" % expire_at
            names.append(dek_key(prefix, subject, epoch))
        # one script call per hash slot and deadline (a batch's keys share one deadline)
        parts: list[list[int]] = []
        calls: list[tuple[list[str], list[bytes | int]]] = []
        for group in slot_groups(self._client, names):
            by_deadline: dict[int, list[int]] = {}
            for i in group:
                by_deadline.setdefault(int(items[i][3]), []).append(i)
            for expire_at, part in by_deadline.items():
                parts.append(part)
                keys = [k for i in part for k in (names[i], gone_key(prefix, items[i][0]))]
                calls.append((keys, [expire_at, *(items[i][2] for i in part)]))
        try:
            pipe = self._client.pipeline(transaction=not self.cluster)
            for shard_key, members in index.items():
                pipe.zadd(shard_key, members, nx=True)
            if self.cluster:
                pipe.execute()  # indexed before created (the shards are in other slots than the keys)
                pipe = self._client.pipeline(transaction=False)
            for keys, args in calls:
                # EVALSHA through execute_command: routed by its keys on a cluster (see eval_many)
                pipe.execute_command("EVALSHA", self._create.sha, len(keys), *keys, *args)
            results = pipe.execute(raise_on_error=False)
            replies = results[len(results) - len(calls) :]
            for r in results[: len(results) - len(calls)]:
                if isinstance(r, Exception):
                    raise r
            lost = [j for j, r in enumerate(replies) if isinstance(r, redis.exceptions.NoScriptError)]
            if lost:  # a server without the script (new or restarted): indexed already, create again
                again = eval_many(self._client, self._create, [calls[j] for j in lost])
                for j, r in zip(lost, again, strict=True):
                    replies[j] = r
            for r in replies:
                if isinstance(r, Exception):
                    raise r
        except REDIS_ERRORS as exc:
            raise _unavailable(exc) from None
        stored: list[Any] = [None] * len(items)
        erased: list[str] = []
        for part, reply in zip(parts, replies, strict=True):
            if not isinstance(reply, list) or len(reply) != len(part):
                raise KeyUnavailableError("data key store returned a malformed answer")
            for i, value in zip(part, reply, strict=True):
                if value == 0:
                    erased.append(items[i][0])
                stored[i] = items[i][2] if value == 1 else value
        if erased:
            raise SubjectErasedError(sorted(set(erased)))
        if any(v is None for v in stored):
            # Only possible when expire_at is already in the past by the server's clock.
            raise KeyUnavailableError("data key expired on creation (its retention deadline has passed)")
        return [bytes(v) for v in stored]

    def __repr__(self) -> str:
        return f"RedisKeyStore(prefix={self.prefix!r})"


def _unavailable(exc: BaseException) -> KeyUnavailableError:
    # Name the failure class only: server replies can quote key names, which contain subjects.
    return KeyUnavailableError(f"data key store unavailable ({type(exc).__name__})")


def _text(value: Any) -> str:
    return value.decode("ascii", "replace") if isinstance(value, bytes) else str(value or "")


#: One call answers the identity: the marker (created if absent), run_id, master_replid. With
#: ARGV[2] == "1" the marker is rewritten with its own value: a write of ours, so that a WAITAOF
#: after it covers every earlier write (whoever made it).
_IDENTITY_LUA = r"""
local marker = redis.call('GET', KEYS[1])
if not marker then
  marker = ARGV[1]
  redis.call('SET', KEYS[1], marker)
elseif ARGV[2] == '1' then
  redis.call('SET', KEYS[1], marker)
end
local server = redis.call('INFO', 'server')
local replication = redis.call('INFO', 'replication')
return {marker, string.match(server, 'run_id:(%x+)') or '', string.match(replication, 'master_replid:(%x+)') or ''}
"""


class RedisIdentityProbe:
    """:class:`stream.crypto.keystore.IdentityProbe` on Redis: one round trip (a script reading the marker, run_id and
    master_replid; when asked, WAITAOF pipelined after it)."""

    def __init__(self, client: redis.Redis, prefix: str, *, waitaof_timeout_ms: int = 0,
                 marker_key: str | None = None) -> None:
        check_prefix(prefix)
        self._client = client
        self.marker_key = marker_key or keystore_key(prefix)
        self.waitaof_timeout_ms = int(waitaof_timeout_ms)
        self.waitaof_supported = self.waitaof_timeout_ms > 0
        self._script = client.register_script(_IDENTITY_LUA)

    def probe(self, durable: bool) -> Probe:
        wait = durable and self.waitaof_supported
        try:
            out = self._round_trip(wait)
            if isinstance(out[0], redis.exceptions.NoScriptError):  # a restarted server: load it again
                self._client.script_load(_IDENTITY_LUA)
                out = self._round_trip(wait)
        except REDIS_ERRORS as exc:
            raise KeyUnavailableError(f"data key store unavailable ({type(exc).__name__})") from None
        if isinstance(out[0], Exception):
            raise KeyUnavailableError(f"data key store unavailable ({type(out[0]).__name__})")
        identity = StoreIdentity(*(_text(v) for v in out[0]))
        fsynced: bool | None = None
        if wait:
            answer = out[1]
            if isinstance(answer, redis.ResponseError):
                # unknown command (Redis < 7.2) or appendonly off: nothing to wait for
                self.waitaof_supported = False
                log.info("key store: WAITAOF unavailable (Redis < 7.2 or appendonly off); "
                         "loaded data keys are not waited for until the store changes")
            elif isinstance(answer, Exception):
                raise KeyUnavailableError(f"data key store unavailable ({type(answer).__name__})")
            else:
                fsynced = bool(answer) and int(answer[0]) >= 1
        return Probe(identity, fsynced)

    def _round_trip(self, wait: bool) -> list[Any]:
        # EVALSHA directly (a Script object in a pipeline would ask SCRIPT EXISTS first: one more trip)
        args = (self._script.sha, 1, self.marker_key, secrets.token_hex(8), "1" if wait else "0")
        if not wait:
            try:
                return [self._client.evalsha(*args)]
            except redis.exceptions.NoScriptError as exc:
                return [exc]
        pipe = self._client.pipeline(transaction=False)
        pipe.evalsha(*args)
        pipe.execute_command("WAITAOF", 1, 0, self.waitaof_timeout_ms)
        return list(pipe.execute(raise_on_error=False))

    def rearm(self) -> None:
        """The store changed: try WAITAOF again (the new server may support it)."""
        self.waitaof_supported = self.waitaof_timeout_ms > 0

    def __repr__(self) -> str:
        return f"RedisIdentityProbe(marker_key={self.marker_key!r})"


class ClusterIdentityProbe:
    """:class:`stream.crypto.keystore.IdentityProbe` on a Redis Cluster: a :class:`RedisIdentityProbe` on every master
    (module docstring), their answers joined in the order of the masters' first slots."""

    def __init__(self, client: RedisCluster, prefix: str, *, waitaof_timeout_ms: int = 0) -> None:
        self._client = client
        self.prefix = check_prefix(prefix)
        self.waitaof_timeout_ms = int(waitaof_timeout_ms)
        #: the slot map last read: redis-py's dict, its node lists by slot, (node list, its primary)
        self._seen: tuple[dict[int, list[Any]], list[list[Any]], list[tuple[list[Any], Any]]] | None = None
        self._probes: list[tuple[str, RedisIdentityProbe]] = []  # (master, probe) by first slot

    def _masters(self) -> list[tuple[str, RedisIdentityProbe]]:
        """(node name, probe) per master, by the first slot it owns; read again whenever a slot's
        primary may have changed. redis-py replaces its slot map on a refresh but patches it in place
        on a MOVED (``NodesManager.move_slot``: a slot's node list replaced, or a shared list's primary
        swapped on a failover): the same dict, the same node list objects per slot and the same primary
        of each list mean the same slot -> primary map (~70 us per call at 16384 slots)."""
        slots: dict[int, list[Any]] = self._client.nodes_manager.slots_cache
        lists = list(slots.values())
        seen = self._seen
        if seen is not None and seen[0] is slots and seen[1] == lists and all(
                nodes[0] is primary for nodes, primary in seen[2]):
            return self._probes
        # the primaries are noted before the layout is read: a change in between is seen next time
        primaries = [(nodes, nodes[0]) for nodes in {id(n): n for n in lists}.values()]
        first: dict[str, int] = {}
        by_name: dict[str, Any] = {}
        for slot in sorted(slots):
            primary = slots[slot][0]
            if primary.name not in first:
                first[primary.name], by_name[primary.name] = slot, primary
        kept = {(name, p.marker_key): p for name, p in self._probes}
        masters = []
        for name, slot in sorted(first.items(), key=lambda item: item[1]):
            node_client = self._client.get_redis_connection(by_name[name])
            marker = keystore_key(self.prefix, slot)
            probe = kept.get((name, marker))
            if probe is None or probe._client is not node_client:  # else the same probe (its WAITAOF state)
                probe = RedisIdentityProbe(node_client, self.prefix, marker_key=marker,
                                           waitaof_timeout_ms=self.waitaof_timeout_ms)
            masters.append((name, probe))
        self._probes, self._seen = masters, (slots, lists, primaries)
        return masters

    @property
    def marker_keys(self) -> list[str]:
        return [p.marker_key for _, p in self._masters()]

    @property
    def waitaof_supported(self) -> bool:
        return any(p.waitaof_supported for _, p in self._masters())

    def probe(self, durable: bool) -> Probe:
        try:
            answers = [(name, p.probe(durable)) for name, p in self._masters()]
        except KeyUnavailableError:
            # a node gone or a slot moved: learn the cluster's layout again before the next try
            self._seen = None
            with contextlib.suppress(*REDIS_ERRORS):
                self._client.nodes_manager.initialize()
            raise
        ids = [a.identity for _, a in answers]
        identity = StoreIdentity(
            marker=",".join(i.marker for i in ids),
            run_id=",".join(f"{name}={i.run_id}" for (name, _), i in zip(answers, ids, strict=True)),
            replid=",".join(i.replid for i in ids),
        )
        flags = [a.durable for _, a in answers]
        fsynced = False if False in flags else (True if True in flags else None)
        return Probe(identity, fsynced)

    def rearm(self) -> None:
        for _, p in self._masters():
            p.rearm()

    def __repr__(self) -> str:
        return f"ClusterIdentityProbe(prefix={self.prefix!r})"


def identity_probe(client: RedisClient, prefix: str, *, waitaof_timeout_ms: int = 0) -> IdentityProbe:
    """The identity probe of ``client``: one server, or every master of a cluster."""
    if isinstance(client, RedisCluster):
        return ClusterIdentityProbe(client, prefix, waitaof_timeout_ms=waitaof_timeout_ms)
    return RedisIdentityProbe(client, prefix, waitaof_timeout_ms=waitaof_timeout_ms)


class RedisWrapCounter(WrapCounter):
    """:class:`stream.crypto.kms.WrapCounter` on Redis: one ``INCRBY`` per reservation, shared by every worker."""

    def __init__(self, client: RedisClient, prefix: str, *, warn_at: int = WRAP_WARN_AT,
                 refuse_at: int = WRAP_REFUSE_AT) -> None:
        super().__init__(warn_at=warn_at, refuse_at=refuse_at)
        self._client = client
        self.prefix = check_prefix(prefix)

    def key_name(self, kek_id: str) -> str:
        return kek_wraps_key(self.prefix, kek_id)

    def count(self, kek_id: str, n: int) -> int:
        try:
            return int(self._client.incrby(self.key_name(kek_id), int(n)))
        except REDIS_ERRORS as exc:
            raise KeyUnavailableError(f"data key store unavailable ({type(exc).__name__})") from None

    def __repr__(self) -> str:
        return f"RedisWrapCounter(prefix={self.prefix!r}, warn_at={self.warn_at}, refuse_at={self.refuse_at})"
