"""Key-store identity guard: notice that Redis lost data, and drop every cache built on it.

Redis restarting empty stands for any data loss (a crash under ``appendfsync
everysec``, a failover to a lagging replica, a FLUSHALL). Data keys and LDP
memos cached in a worker then describe keys Redis no longer holds; an event
encrypted under such a key is unreadable for ever. :class:`KeyStoreGuard`
identifies the dataset by three values, read in one round trip by an
:class:`IdentityProbe` (on Redis: :mod:`stream.storage.keys`):

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
the batch is returned. Not confirmed in time: counted (``unconfirmed``), logged
(rate-limited) and asked again, up to ``max_attempts`` times, then the batch is held.
Unsupported (older server, AOF off): noted once in the log and skipped until the identity
changes. Replicas are not waited for (a failover is caught by the identity instead).

Redis Cluster (:class:`stream.storage.keys.ClusterIdentityProbe`): a master that loses data loses only its
slots, so the identity is that of every master - the same probe on each, with a marker
``{prefix}:keystore:{<slot tag>}`` in a slot the master owns - joined in slot order. A
master restarting, failing over or losing its marker, a master added to or gone from the
slot map, and a marker's slot moving to another master (a resharding too) change the
identity: every cache is dropped (conservative). A slot moved with its keys between masters
that stay loses nothing and changes nothing. The masters are those of redis-py's slot map at
each probe, also after a MOVED patched it in place. One round trip per master per probe;
WAITAOF is asked of every master.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import NamedTuple, Protocol, TypeVar

from stream.errors import KeyUnavailableError

__all__ = ["IdentityProbe", "KeyStoreGuard", "Probe", "StoreIdentity"]

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


class KeyStoreGuard:
    """Tracks the key store's identity and drops every registered cache when it changes.

    ``resets`` counts identity changes seen (export it as a metric); ``checks`` counts probes;
    ``unconfirmed`` counts fsyncs not confirmed in time (each one asked again or the batch held),
    logged at most once per ``log_interval`` seconds of ``clock``.
    Thread-safe; meant to be checked once per batch via :meth:`run`.
    """

    def __init__(self, probe: IdentityProbe, *, max_attempts: int = 3, log_interval: float = 10.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        if max_attempts < 1:
            raise ValueError("max_attempts must be >= 1")
        self.probe = probe
        self.max_attempts = max_attempts
        self.identity: StoreIdentity | None = None
        self.resets = 0
        self.checks = 0
        self.unconfirmed = 0
        self.log_interval = log_interval
        self._clock = clock
        self._unconfirmed_logged: tuple[float, int] = (float("-inf"), 0)  # last logged at, suppressed since
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
                self._note_unconfirmed()
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
        work is redone with empty caches; after ``max_attempts`` it fails closed.

        It retries on these two answers only (an identity change, an fsync not confirmed in time),
        never on an error: a store that is down raises :class:`KeyUnavailableError` from the probe
        or the work, which goes up at once to the engine's hold, the one retry policy for Redis."""
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

    def _note_unconfirmed(self) -> None:
        self.unconfirmed += 1
        now = self._clock()
        at, suppressed = self._unconfirmed_logged
        if now - at < self.log_interval:
            self._unconfirmed_logged = (at, suppressed + 1)
            return
        self._unconfirmed_logged = (now, 0)
        extra = {"count": self.unconfirmed}  # allow-listed keys (stream.ops.logging): the total so far
        if suppressed:
            extra["suppressed"] = suppressed
        log.warning("key store: fsync (WAITAOF) of loaded keys not confirmed in time: asked again, "
                    "the batch is held after %d tries", self.max_attempts, extra=extra)

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
        return (f"KeyStoreGuard(resets={self.resets}, checks={self.checks}, unconfirmed={self.unconfirmed}, "
                f"probe={self.probe!r})")
