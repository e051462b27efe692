"""Per-person data keys (DEKs): creation, storage, caching - the crypto-shredding unit.

Every person token gets one AES-256 data key per retention epoch. The key is
created on first use, wrapped by the KEK (:mod:`stream.crypto.kms`) and stored
with an expiry at the end of that epoch's retention. Destroying the stored
(wrapped) key - by expiry or by the shredder - makes every ciphertext under it
unreadable everywhere: the plaintext key only ever lives in process memory.

The store is a :class:`KeyStore`: :class:`MemoryKeyStore` here, Redis in
:class:`stream.storage.keys.RedisKeyStore` (its layout: :mod:`stream.storage.keys`). Keys
expire at ``expire_at = (epoch + 1) * epoch_seconds + retention_seconds`` (unix seconds), and
every created key is indexed by that deadline, so the shredder can act on it.

Stored value (opaque to the store, parsed only here)::

    b"1." + key_id (16 lowercase hex, ascii) + b"." + KMS blob

The KMS wrap binds ``(subject, epoch, key_id)`` as associated data, so a stored
value copied to another person's or epoch's slot fails to unwrap.

Key ids: 16 lowercase hex characters, new for every created key (a key
re-created after shredding gets a new id). With an id key (derived from the
keyring's root, purpose ``dek-id``, automatic for :class:`LocalKMS`) the id is
8 random hex characters followed by an 8-hex-character HMAC tag over
``(subject, epoch, random part)``. That lets the decrypt path tell "this key
existed and was shredded" (:class:`KeyShreddedError`) from "this header was
forged, or moved to another person or epoch" (plain :class:`DecryptError`)
without any tombstones: tampering never masquerades as shredding.

Concurrency: creation is create-if-absent; a worker that loses a race adopts
the winner's value, so all workers agree on one key per (subject, epoch).

Cache: :class:`DekProvider` caches unwrapped keys in-process, bounded in size
(least recently used evicted) and in age: an entry older than ``max_staleness_seconds`` (by
the injected clock) is re-checked against the store before use, so a cached
key never outlives a shred by more than that interval. A key whose retention
deadline has passed is refused even from the cache. With a :class:`KeyStoreGuard`
(:mod:`stream.crypto.keystore`) the whole cache is dropped when Redis lost data.

Failures are typed: the store being unreachable, or a stored key that cannot be
unwrapped, raises :class:`KeyUnavailableError` (the gateway fails closed and
retries); on the decrypt path a missing key or a different (re-created) key
raises :class:`KeyShreddedError`, a reference that was never genuine a plain
:class:`DecryptError`. No error message names a subject.
"""

from __future__ import annotations

import hmac
import os
import re
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, NamedTuple, Protocol, runtime_checkable

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.hmac import HMAC

from stream.crypto.keystore import KeyStoreGuard
from stream.crypto.kms import KMS, LocalKMS, WrapCounter, wrap_all
from stream.errors import DecryptError, KeyShreddedError, KeyUnavailableError

__all__ = [
    "DataKey",
    "DekProvider",
    "DekStats",
    "KeyStore",
    "MemoryKeyStore",
    "check_epoch",
    "check_refs",
    "check_subject",
]

_SUBJECT_RE = re.compile(r"[A-Za-z0-9_.=-]{1,128}")
_KEY_ID_RE = re.compile(rb"[0-9a-f]{16}")
_VALUE_VERSION = b"1"
#: Most data keys a DekProvider caches (least recently used evicted).
DEK_CACHE_MAX_ENTRIES = 200_000
_WRAP_LABEL = b"streamgate/v1/dek"
_ID_LABEL = b"streamgate/v1/dek-id"
_ID_KEY_PURPOSE = "dek-id"


def check_subject(subject: str) -> str:
    """Validate a subject (person token). The message never echoes it: it may be a raw identifier by mistake."""
    if not isinstance(subject, str) or not _SUBJECT_RE.fullmatch(subject):
        raise ValueError("subject must be a person token: 1-128 characters of [A-Za-z0-9_.=-]")
    return subject


def check_epoch(epoch: int) -> int:
    """Validate a retention epoch (a non-negative int)."""
    if type(epoch) is not int or epoch < 0:
        raise ValueError("epoch must be a non-negative int")
    return epoch


def check_refs(refs: Iterable[tuple[str, int]]) -> None:
    """:func:`check_subject` and :func:`check_epoch` of each ``(subject, epoch)``, in one loop."""
    match = _SUBJECT_RE.fullmatch
    for subject, epoch in refs:
        if type(subject) is not str or match(subject) is None:
            check_subject(subject)
        if type(epoch) is not int or epoch < 0:
            check_epoch(epoch)


def _lp(*parts: bytes) -> bytes:
    """Length-prefixed concatenation: an unambiguous encoding of a tuple of byte strings."""
    return b"".join(len(p).to_bytes(4, "big") + p for p in parts)


_WRAP_HEAD = _lp(_WRAP_LABEL)
_ID_HEAD = _lp(_ID_LABEL)
_KEY_BYTES = 32
_ID_BYTES = 8  # random bytes of a key id without an id key; with one, the first 4 of them


def _person(subject: str, epoch: int) -> bytes:
    """``lp(subject, epoch)``: the part of a wrap's and a key id's associated data that names the key."""
    return _lp(subject.encode("ascii"), str(epoch).encode("ascii"))


def _wrap_aad(subject: str, epoch: int, key_id: str) -> bytes:
    return _wrap_aad_of(_person(subject, epoch), key_id.encode("ascii"))


# The wrap's associated data, lp(label, subject, epoch, key_id), from lp(subject, epoch) (``person``).
def _wrap_aad_of(person: bytes, key_id: bytes) -> bytes:
    return _WRAP_HEAD + person + _lp(key_id)


@dataclass(frozen=True)
class DataKey:
    """A ready-to-use data key of one person for one epoch.

    ``aead`` holds the key inside the cipher object; the raw bytes are not kept
    anywhere else, and neither ``repr`` nor equality looks at it (equality is by
    ``subject, epoch, key_id``: a key id is random per created key).
    """

    subject: str
    epoch: int
    key_id: str
    aead: AESGCM = field(repr=False, compare=False)
    # Per-key memo for format layers (e.g. precomputed ciphertext header and
    # associated-data tail in stream.crypto.fields). Holds no secrets.
    _memo: dict[str, Any] = field(default_factory=dict, init=False, repr=False, compare=False)


@dataclass
class DekStats:
    """Counters for metrics. ``hits``/``misses`` count cache lookups per (subject, epoch)."""

    hits: int = 0
    misses: int = 0
    created: int = 0
    store_reads: int = 0

    def as_dict(self) -> dict[str, int]:
        return {
            "hits": self.hits,
            "misses": self.misses,
            "created": self.created,
            "store_reads": self.store_reads,
        }


@runtime_checkable
class KeyStore(Protocol):
    """Raw storage of wrapped data keys. Implementations raise :class:`KeyUnavailableError` when unreachable."""

    def get_many(self, refs: Sequence[tuple[str, int]]) -> list[bytes | None]:
        """Stored values for ``(subject, epoch)`` refs, ``None`` where absent (or expired)."""
        ...

    def create_many(self, items: Sequence[tuple[str, int, bytes, int]]) -> list[bytes]:
        """For each ``(subject, epoch, value, expire_at)``: atomically store ``value`` if absent, index the
        deadline, and return the value stored afterwards (ours, or a concurrent creator's)."""
        ...


def _unavailable(exc: BaseException) -> KeyUnavailableError:
    # Name the failure class only: server replies can quote key names, which contain subjects.
    return KeyUnavailableError(f"data key store unavailable ({type(exc).__name__})")


class MemoryKeyStore:
    """In-memory :class:`KeyStore` for unit tests: same semantics as Redis, expiry by an injected clock."""

    def __init__(self, clock: Callable[[], float] = time.time) -> None:
        self._clock = clock
        self._values: dict[tuple[str, int], tuple[bytes, int]] = {}
        self.deadlines: dict[str, int] = {}
        self._lock = threading.Lock()

    def _live(self, ref: tuple[str, int], now: float) -> bytes | None:
        item = self._values.get(ref)
        if item is None:
            return None
        if now >= item[1]:  # Redis semantics: a key is gone from its EXPIREAT second on
            del self._values[ref]
            return None
        return item[0]

    def get_many(self, refs: Sequence[tuple[str, int]]) -> list[bytes | None]:
        now = self._clock()
        with self._lock:
            return [self._live((check_subject(s), check_epoch(e)), now) for s, e in refs]

    def create_many(self, items: Sequence[tuple[str, int, bytes, int]]) -> list[bytes]:
        now = self._clock()
        out: list[bytes] = []
        with self._lock:
            for subject, epoch, value, expire_at in items:
                ref = (check_subject(subject), check_epoch(epoch))
                current = self._live(ref, now)
                if current is None and now < expire_at:
                    self._values[ref] = (bytes(value), int(expire_at))
                    current = bytes(value)
                self.deadlines.setdefault(f"{subject}:{epoch}", int(expire_at))
                if current is None:
                    raise KeyUnavailableError(
                        "data key expired on creation (its retention deadline has passed)"
                    )
                out.append(current)
        return out

    def delete(self, subject: str, epoch: int) -> None:
        """Shred: remove the stored key (and its deadline entry), as the shredder would."""
        with self._lock:
            self._values.pop((subject, epoch), None)
            self.deadlines.pop(f"{subject}:{epoch}", None)


class _Entry(NamedTuple):
    key: DataKey
    fetched_at: float


class DekProvider:
    """Hands out data keys: bounded, staleness-checked cache in front of a :class:`KeyStore` and a :class:`KMS`."""

    def __init__(
        self,
        store: KeyStore,
        kms: KMS,
        *,
        epoch_seconds: int,
        retention_seconds: int,
        max_staleness_seconds: float,
        max_entries: int,
        clock: Callable[[], float] = time.time,
        key_id_key: bytes | None = None,
        guard: KeyStoreGuard | None = None,
        wrap_counter: WrapCounter | None = None,
        wrap_block: int = 1,
    ) -> None:
        """See the module docstring. ``wrap_counter`` (:mod:`stream.crypto.kms`) counts wraps per KEK
        and refuses new keys beyond the KEK's limit, reserved ``wrap_block`` at a time (a process
        over-counts by less than a block; the workers share one block size with the tk2 secrets:
        no round trip for most batches with new people). ``key_id_key`` authenticates key ids; by default it is derived
        from the keyring of a :class:`LocalKMS` (``keyring.derive("dek-id")``) and absent otherwise.
        ``guard`` (:mod:`stream.crypto.keystore`) drops the whole cache when the store loses data."""
        if epoch_seconds <= 0 or retention_seconds < 0:
            raise ValueError("epoch_seconds must be > 0 and retention_seconds >= 0")
        if max_staleness_seconds < 0 or max_entries <= 0:
            raise ValueError("max_staleness_seconds must be >= 0 and max_entries > 0")
        self._store = store
        self._kms = kms
        self.epoch_seconds = int(epoch_seconds)
        self.retention_seconds = int(retention_seconds)
        self.max_staleness_seconds = float(max_staleness_seconds)
        self.max_entries = int(max_entries)
        self._clock = clock
        self._cache: OrderedDict[tuple[str, int], _Entry] = OrderedDict()
        self._epochs_of: dict[str, set[int]] = {}
        self._lock = threading.RLock()
        self.stats = DekStats()
        if key_id_key is None and isinstance(kms, LocalKMS):
            key_id_key = kms.keyring.derive(_ID_KEY_PURPOSE)
        self._id_key = key_id_key
        # keyed state built once, copied per key id (the pads are not re-hashed)
        self._id_mac = None if key_id_key is None else HMAC(key_id_key, hashes.SHA256())
        self.guard = guard
        if guard is not None:
            guard.on_reset(self.invalidate)
        self.wrap_counter = wrap_counter
        self.wrap_block = max(1, int(wrap_block))
        self._wraps_left: dict[str, int] = {}  # KEK id -> wraps reserved, not yet used (under the lock)

    # --- time -------------------------------------------------------------------------

    def epoch_of(self, t: float) -> int:
        """Retention epoch of unix time ``t``."""
        return int(t // self.epoch_seconds)

    def expire_at(self, epoch: int) -> int:
        """Unix second at which the keys of ``epoch`` expire: end of the epoch plus retention."""
        return (epoch + 1) * self.epoch_seconds + self.retention_seconds

    # --- public API ----------------------------------------------------------------------

    def keys_for(self, subjects: Iterable[str], epoch: int) -> dict[str, DataKey]:
        """Encryption keys of ``subjects`` for ``epoch``, created where absent (the gateway's batch path).

        Fresh cache entries are served directly; the rest cost one ``get_many``
        and, for keys that do not exist yet, one ``create_many``. On any store
        failure :class:`KeyUnavailableError` is raised and nothing is returned.
        Raises ``ValueError`` for an epoch whose retention already ended (a key
        created for it would be born shredded).
        """
        check_epoch(epoch)
        wanted = list(dict.fromkeys(subjects))
        now = self._clock()
        if self.expire_at(epoch) <= now:
            raise ValueError("the retention of this epoch has ended; no data keys can be issued for it")
        found: dict[str, DataKey] = {}
        todo: list[str] = []
        with self._lock:
            for subject in wanted:
                key = self._fresh(subject, epoch, now)
                if key is None:
                    todo.append(subject)
                else:
                    found[subject] = key
            self.stats.hits += len(found)
            self.stats.misses += len(todo)
        if todo:
            # Cached subjects were checked when their key was loaded; check the rest before they
            # reach the store (a raw identifier must never become a Redis key name).
            check_refs((subject, epoch) for subject in todo)
            loaded = self._load_or_create(todo, epoch)
            if self.guard is not None:
                self.guard.note_loaded()
            with self._lock:
                put = self._put
                for key in loaded.values():
                    put(key, now)
            found.update(loaded)
        return {s: found[s] for s in wanted}

    def key_for_decrypt(self, subject: str, epoch: int, key_id: str) -> DataKey:
        """The key that encrypted a ciphertext with header ``(key_id, epoch)`` of ``subject``.

        Raises :class:`KeyShreddedError` if the stored key is gone, its retention
        deadline passed, or it is a different (re-created) key;
        :class:`KeyUnavailableError` if the store cannot be reached;
        :class:`DecryptError` if the reference cannot be genuine: invalid
        ``subject``/``epoch``, or (with key id authentication) a ``key_id`` that
        was never issued for this ``(subject, epoch)``.
        """
        try:
            check_subject(subject)
            check_epoch(epoch)
        except ValueError:
            # A reference no key can have (e.g. a forged event): as opaque as any bad ciphertext.
            raise DecryptError() from None
        now = self._clock()
        if self.expire_at(epoch) <= now:
            self.invalidate_key(subject, epoch)
            raise self._gone(subject, epoch, key_id)
        with self._lock:
            cached = self._fresh(subject, epoch, now)
            if cached is not None and cached.key_id == key_id:
                self.stats.hits += 1
                return cached
            self.stats.misses += 1
        (value,) = self._get([(subject, epoch)])
        if value is None:
            self.invalidate_key(subject, epoch)
            raise self._gone(subject, epoch, key_id)
        key = self._open(subject, epoch, value)
        with self._lock:
            self._put(key, now)
        if key.key_id != key_id:
            raise self._gone(subject, epoch, key_id)
        return key

    def invalidate(self, subject: str | None = None) -> None:
        """Drop cached keys: all of them, or every epoch of one subject (after shredding it)."""
        with self._lock:
            if subject is None:
                self._cache.clear()
                self._epochs_of.clear()
                return
            for epoch in self._epochs_of.pop(subject, ()):
                self._cache.pop((subject, epoch), None)

    def invalidate_key(self, subject: str, epoch: int) -> None:
        """Drop the cached key of one ``(subject, epoch)``."""
        with self._lock:
            if self._cache.pop((subject, epoch), None) is not None:
                self._forget_epoch(subject, epoch)

    @property
    def hits(self) -> int:
        return self.stats.hits

    @property
    def misses(self) -> int:
        return self.stats.misses

    @property
    def cache_size(self) -> int:
        return len(self._cache)

    def __repr__(self) -> str:
        return f"DekProvider(cached={len(self._cache)}, max_entries={self.max_entries}, stats={self.stats})"

    # --- internals ------------------------------------------------------------------------

    def _fresh(self, subject: str, epoch: int, now: float) -> DataKey | None:
        """Cached key if confirmed against the store less than ``max_staleness_seconds`` ago (lock held)."""
        entry = self._cache.get((subject, epoch))
        if entry is None:
            return None
        age = now - entry.fetched_at
        if not 0 <= age < self.max_staleness_seconds:  # a clock stepping back also forces a re-read
            return None
        self._cache.move_to_end((subject, epoch))
        return entry.key

    def _put(self, key: DataKey, now: float) -> None:
        """Cache ``key`` (lock held), evicting the least recently used beyond ``max_entries``."""
        ref = (key.subject, key.epoch)
        self._cache[ref] = _Entry(key, now)
        self._cache.move_to_end(ref)
        self._epochs_of.setdefault(key.subject, set()).add(key.epoch)
        while len(self._cache) > self.max_entries:
            (old_subject, old_epoch), _ = self._cache.popitem(last=False)
            self._forget_epoch(old_subject, old_epoch)

    def _forget_epoch(self, subject: str, epoch: int) -> None:
        epochs = self._epochs_of.get(subject)
        if epochs is not None:
            epochs.discard(epoch)
            if not epochs:
                del self._epochs_of[subject]

    def _get(self, refs: list[tuple[str, int]]) -> list[bytes | None]:
        self.stats.store_reads += 1
        try:
            values = self._store.get_many(refs)
        except KeyUnavailableError:
            raise
        except OSError as exc:  # a store that did not map its I/O failure: fail closed all the same
            raise _unavailable(exc) from None
        if len(values) != len(refs):
            raise KeyUnavailableError("data key store returned a malformed answer")
        return values

    def _load_or_create(self, subjects: list[str], epoch: int) -> dict[str, DataKey]:
        values = self._get([(s, epoch) for s in subjects])
        loaded: dict[str, DataKey] = {}
        missing = sum(v is None for v in values)
        if missing and self.wrap_counter is not None:
            # counted before any wrap (one INCRBY per block); beyond the KEK's limit nothing is wrapped
            self._reserve(self.wrap_counter, str(getattr(self._kms, "primary_id", "kms")), missing)
        for subject, value in zip(subjects, values, strict=True):
            if value is not None:
                loaded[subject] = self._open(subject, epoch, value)
        if missing:
            fresh = self._new_keys([s for s, v in zip(subjects, values, strict=True) if v is None], epoch)
            expire_at = self.expire_at(epoch)
            items = [(key.subject, epoch, value, expire_at) for key, value in fresh]
            try:
                winners = self._store.create_many(items)
            except KeyUnavailableError:
                raise
            except OSError as exc:
                raise _unavailable(exc) from None
            if len(winners) != len(items):
                raise KeyUnavailableError("data key store returned a malformed answer")
            for (key, ours), stored in zip(fresh, winners, strict=True):
                if stored == ours:
                    self.stats.created += 1
                    loaded[key.subject] = key
                else:  # a concurrent creator won: adopt its key so every worker agrees
                    loaded[key.subject] = self._open(key.subject, epoch, stored)
        return loaded

    def _reserve(self, counter: WrapCounter, kek: str, n: int) -> None:
        with self._lock:
            left = self._wraps_left.get(kek, 0)
            if left >= n:
                self._wraps_left[kek] = left - n
                return
            need = max(n - left, self.wrap_block)
            counter.reserve(kek, need)  # raises beyond the limit: nothing wrapped
            self._wraps_left[kek] = left + need - n

    def _id_tag(self, subject: str, epoch: int, nonce_hex: str) -> str:
        return self._tag(_person(subject, epoch), nonce_hex.encode("ascii")).decode("ascii")

    def _tag(self, person: bytes, nonce_hex: bytes) -> bytes:
        """HMAC-SHA256(id key, lp(label, subject, epoch, nonce_hex))[:4] in hex, from lp(subject) + lp(epoch)."""
        assert self._id_mac is not None
        mac = self._id_mac.copy()
        mac.update(_ID_HEAD + person + _lp(nonce_hex))
        return mac.finalize()[:4].hex().encode("ascii")

    def _gone(self, subject: str, epoch: int, key_id: str) -> DecryptError:
        """The error for a key that is not (or no longer) stored: shredded, unless the id is not genuine."""
        if self._id_key is not None:
            genuine = (
                isinstance(key_id, str)
                and _KEY_ID_RE.fullmatch(key_id.encode("ascii", "replace")) is not None
                and hmac.compare_digest(key_id[8:], self._id_tag(subject, epoch, key_id[:8]))
            )
            if not genuine:
                return DecryptError()
        return KeyShreddedError()

    def _new_keys(self, subjects: list[str], epoch: int) -> list[tuple[DataKey, bytes]]:
        """A new key of each subject and its stored value. One random draw for the batch: per key 32 bytes
        of key and 8 for its id (4 with an id key), each slice used once."""
        step = _KEY_BYTES + _ID_BYTES
        rand = os.urandom(step * len(subjects))
        tag = self._tag if self._id_mac is not None else None
        ids: list[bytes] = []
        items: list[tuple[bytes, bytes]] = []
        for i, subject in enumerate(subjects):
            start = i * step
            person = _person(subject, epoch)
            if tag is None:
                key_id = rand[start + _KEY_BYTES : start + step].hex().encode("ascii")
            else:
                nonce_hex = rand[start + _KEY_BYTES : start + _KEY_BYTES + 4].hex().encode("ascii")
                key_id = nonce_hex + tag(person, nonce_hex)
            ids.append(key_id)
            items.append((rand[start : start + _KEY_BYTES], _wrap_aad_of(person, key_id)))
        blobs = wrap_all(self._kms, items)
        return [(DataKey(subject, epoch, key_id.decode("ascii"), AESGCM(raw)),
                 _VALUE_VERSION + b"." + key_id + b"." + blob)
                for subject, key_id, (raw, _aad), blob in zip(subjects, ids, items, blobs, strict=True)]

    def _open(self, subject: str, epoch: int, value: bytes) -> DataKey:
        """Parse and unwrap a stored value. A value that cannot be opened makes the key unusable, not shredded."""
        version, dot1, rest = value.partition(b".")
        key_id_raw, dot2, blob = rest.partition(b".")
        if version != _VALUE_VERSION or not dot1 or not dot2 or not _KEY_ID_RE.fullmatch(key_id_raw):
            raise KeyUnavailableError("stored data key is malformed")
        key_id = key_id_raw.decode("ascii")
        try:
            raw = self._kms.unwrap(blob, _wrap_aad(subject, epoch, key_id))
        except DecryptError:
            raise KeyUnavailableError(
                "stored data key could not be unwrapped (is its KEK missing from the keyring?)"
            ) from None
        try:
            aead = AESGCM(raw)
        except ValueError:
            raise KeyUnavailableError("stored data key is malformed") from None
        return DataKey(subject, epoch, key_id, aead)
