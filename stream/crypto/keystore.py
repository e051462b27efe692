"""Key-store identity guard: notice that Redis lost data, and drop every cache built on it.

Redis restarting empty stands for any data loss (a crash under ``appendfsync
everysec``, a failover to a lagging replica, a FLUSHALL). Data keys and LDP
memos cached in a worker then describe keys Redis no longer holds; an event
encrypted under such a key is unreadable for ever. :class:`KeyStoreGuard`
identifies the dataset by three values, read in one round trip
(:class:`RedisIdentityProbe`):

* ``{prefix}:keystore`` - a generation marker, created if absent (in a script) holding a
  random id: lost with the data (restart empty, FLUSHALL);
* the server's ``run_id`` - new on every start (also a restart that kept its
  data: its last second may be lost) and different on another node (failover);
* ``master_replid`` - new whenever a node is promoted, so a switch back to a
  node that resynced from a lagging primary is noticed too.

The check is per batch, never per event (:meth:`KeyStoreGuard.run`): the
identity is known before any cached key is used, and probed again after the
batch's key I/O and before the batch is returned. Identity values never recur,
so an unchanged identity means every key the batch used (cached under it, or
loaded during the batch) is still held. On a change: one warning, ``resets``
+1, every registered cache dropped (:meth:`KeyStoreGuard.on_reset`), and the
batch re-done with fresh keys; if the identity keeps changing the batch fails
closed (:class:`KeyUnavailableError`: the engine holds it and retries).

Durability (``dek_waitaof_timeout_ms``): a key created less than a second
before a crash under ``everysec`` is lost although events under it may be out
already; the restart changes ``run_id``, so later batches are safe, but those
events are not. When a batch loaded or created keys, the end probe therefore
also rewrites the marker (a write of ours) and sends ``WAITAOF 1 0 <timeout>`` (Redis >= 7.2,
Valkey): every write before it - whoever made it - is fsynced to the AOF before
the batch is returned. Not confirmed in time: the batch is held and the wait is
asked again. Unsupported (older server, AOF off): noted once in the log and
skipped until the identity changes. Replicas are not waited for (a failover is
caught by the identity instead).

Redis Cluster (:class:`ClusterIdentityProbe`): a master that loses data loses only its
slots, so the identity is that of every master - the same probe on each, with a marker
``{prefix}:keystore:{<slot tag>}`` in a slot the master owns - joined in slot order. A
master restarting, failing over or losing its marker, and any change of which masters own
the slots (a resharding too), changes the identity: every cache is dropped (conservative).
One round trip per master per probe; WAITAOF is asked of every master.
"""

from __future__ import annotations

import contextlib
import logging
import secrets
import threading
from collections.abc import Callable
from typing import Any, NamedTuple, Protocol, TypeVar

import redis
from redis.cluster import RedisCluster

from stream.errors import KeyUnavailableError
from stream.redisdb import REDIS_ERRORS, RedisClient, check_prefix, slot_tag

__all__ = ["ClusterIdentityProbe", "IdentityProbe", "KeyStoreGuard", "Probe", "RedisIdentityProbe", "StoreIdentity",
           "identity_probe"]

log = logging.getLogger("streamgate.keystore")

T = TypeVar("T")


class StoreIdentity(NamedTuple):
    """What identifies the Redis dataset the caches were filled from."""

    marker: str
    run_id: str
    replid: str

    def differs(self, other: StoreIdentity) -> str:
        """Names of the fields that differ (``""`` when equal)."""
        return ",".join(name for name, a, b in zip(self._fields, self, other, strict=True) if a != b)


class Probe(NamedTuple):
    """One probe's answer. ``durable``: True = fsynced, False = not confirmed in time,
    None = not asked or unsupported by the server."""

    identity: StoreIdentity
    durable: bool | None = None


class IdentityProbe(Protocol):
    def probe(self, durable: bool) -> Probe:
        """The store's identity (and, if ``durable``, whether every earlier write is fsynced).
        Raises :class:`KeyUnavailableError` when the store is unreachable."""
        ...


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
    """:class:`IdentityProbe` on Redis: one round trip (a script reading the marker, run_id and
    master_replid; when asked, WAITAOF pipelined after it)."""

    def __init__(self, client: redis.Redis, prefix: str, *, waitaof_timeout_ms: int = 0,
                 marker_key: str | None = None) -> None:
        check_prefix(prefix)
        self._client = client
        self.marker_key = marker_key or f"{prefix}:keystore"
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
    """:class:`IdentityProbe` on a Redis Cluster: a :class:`RedisIdentityProbe` on every master
    (module docstring), their answers joined in the order of the masters' first slots."""

    def __init__(self, client: RedisCluster, prefix: str, *, waitaof_timeout_ms: int = 0) -> None:
        self._client = client
        self.prefix = check_prefix(prefix)
        self.waitaof_timeout_ms = int(waitaof_timeout_ms)
        self._layout: tuple[int, list[tuple[str, RedisIdentityProbe]]] | None = None

    def _masters(self) -> list[tuple[str, RedisIdentityProbe]]:
        """(node name, probe) per master, by the first slot it owns; recomputed when redis-py's
        slot map changed."""
        slots: dict[int, list[Any]] = self._client.nodes_manager.slots_cache
        if self._layout is not None and self._layout[0] == id(slots):
            return self._layout[1]
        first: dict[str, int] = {}
        nodes: dict[str, Any] = {}
        for slot in sorted(slots):
            primary = slots[slot][0]
            if primary.name not in first:
                first[primary.name], nodes[primary.name] = slot, primary
        masters = []
        for name in sorted(first, key=first.__getitem__):
            node_client = self._client.get_redis_connection(nodes[name])
            marker = f"{self.prefix}:keystore:{{{slot_tag(first[name])}}}"
            masters.append((name, RedisIdentityProbe(node_client, self.prefix, marker_key=marker,
                                                     waitaof_timeout_ms=self.waitaof_timeout_ms)))
        self._layout = (id(slots), masters)
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
            self._layout = None
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


class KeyStoreGuard:
    """Tracks the key store's identity and drops every registered cache when it changes.

    ``resets`` counts identity changes seen (export it as a metric); ``checks`` counts probes.
    Thread-safe; meant to be checked once per batch via :meth:`run`.
    """

    def __init__(self, probe: IdentityProbe, *, max_attempts: int = 3) -> None:
        if max_attempts < 1:
            raise ValueError("max_attempts must be >= 1")
        self.probe = probe
        self.max_attempts = max_attempts
        self.identity: StoreIdentity | None = None
        self.resets = 0
        self.checks = 0
        self._callbacks: list[Callable[[], None]] = []
        self._loads = 0  # note_loaded calls so far
        self._durable_upto = 0  # ... of which the last confirmed durable
        self._lock = threading.RLock()

    def on_reset(self, callback: Callable[[], None]) -> None:
        """Call ``callback()`` (drop everything cached) whenever the identity changes."""
        with self._lock:
            self._callbacks.append(callback)

    def note_loaded(self) -> None:
        """Keys or memos were read from / written to the store: confirm their durability at the next check."""
        self._loads += 1

    def check(self) -> bool:
        """Probe once. True: same identity as before (and durable, if that was pending).
        False: the identity changed (caches already dropped) or durability is not confirmed yet.
        The first check only learns the identity."""
        with self._lock:
            loads = self._loads
            answer = self.probe.probe(loads != self._durable_upto)
            self.checks += 1
            known, self.identity = self.identity, answer.identity
            if known is None:
                # Anything cached before the identity was known cannot be vouched for.
                for callback in self._callbacks:
                    callback()
            elif known != answer.identity:
                self._reset(known.differs(answer.identity))
                return False
            if answer.durable is False:
                return False
            self._durable_upto = loads
            return True

    def reset(self, reason: str = "requested") -> None:
        """Drop every registered cache now (counted like an identity change)."""
        with self._lock:
            self._reset(reason)

    def run(self, work: Callable[[], T]) -> T:
        """``work()`` (a batch that may use cached keys), returned only if the store kept its identity
        from before the work to after it (and, if asked, fsynced what it loaded). After a change the
        work is redone with empty caches; after ``max_attempts`` it fails closed."""
        if self.identity is None:
            self.check()  # learn the identity before any cached key is used
        for _ in range(self.max_attempts):
            generation = self.resets  # a reset by another thread also invalidates this attempt
            result = work()
            for _ in range(self.max_attempts):
                ok = self.check()
                if self.resets != generation:
                    break  # changed: redo the work with fresh keys
                if ok:
                    return result
                # same store, fsync not confirmed in time: ask again
            else:
                break
        raise KeyUnavailableError("key store changed or unconfirmed during the batch; batch held")

    def _reset(self, reason: str) -> None:
        self.resets += 1
        self._durable_upto = self._loads  # nothing loaded so far survives the reset in any cache
        rearm = getattr(self.probe, "rearm", None)
        if rearm is not None:
            rearm()
        for callback in self._callbacks:
            callback()
        log.warning(
            "key store identity changed (Redis lost data, restarted or failed over): "
            "every cached data key and memo dropped",
            extra={"changed": reason, "keystore_resets": self.resets},
        )

    def __repr__(self) -> str:
        return f"KeyStoreGuard(resets={self.resets}, checks={self.checks}, probe={self.probe!r})"
