"""The shredder's pure core: claim due keys, destroy them, account for them with receipts.

Crash safety (an outbox in Redis)
---------------------------------
Destroying a key and writing its receipt cannot be one atomic step (Redis and Kafka),
so the store keeps an *outbox*, the pending hashes ``<prefix>:shredder:pending:{shard-NN}``:

1. **claim + destroy**: for each due member of the (sharded) deadline index
   ``<prefix>:deadlines:{shard-NN}`` (score = expire_at <= now, by the injected
   clock, plus an optional lead) read the DEK's key id (absent if Redis already expired it), write a pending
   entry (subject, epoch, key id, reason, request id, time, worker, lease) and ZREM the member (one
   script in the shard's slot), then delete ``dek``/``memo``/``budget`` of that (subject, epoch) and
   PUBLISH ``<subject>:<epoch>`` on ``<prefix>:shredded`` (in the person's slot:
   :mod:`stream.storage.retention`). The ZREM makes the claim exclusive: with several
   shredders, exactly one wins a member; whoever finishes an entry destroys its keys again.
2. **receipts**: build one receipt per pending entry (deterministic from the entry) and
   hand them to the sink, which returns only once the broker acknowledged them.
3. **done**: HDEL the pending entries.

A crash after 1 leaves the keys destroyed and the entries pending; on start (and on
every scan) a shredder finishes the pending entries it owns (same worker id) or whose
lease expired (another instance died): nothing is missed. A crash between 2 and 3
re-delivers the *same* receipts (same ``receipt_id``, same content): the documented
idempotency key. Redis expiring a key before the shredder reaches it changes nothing:
the member is still in the index, the claim finds no DEK and the receipt has
``key_id: null`` and ``expired_before_shred: true`` - still exactly one receipt.

Erasure authority: a ``privacy.erasure`` record is executed only if it carries a valid Ed25519
signature by the eraser key over its canonical encoding (request id, user_id or subject, requested_at;
:func:`parse_erasure_request`) and is recent enough; anything else gets an ``erasure_rejected``
record naming nobody. A request id reused with other content is refused (``request_id_conflict``).

Erasure: the store claims every (subject, epoch) of the person found in the index or
among the candidate epochs (those whose keys can still exist), destroys them like above
with reason ``erasure`` and the request id, destroys the person's tk2 secret (leaving, in the
step that deletes its ``pid``, the erased marker ``<prefix>:perased:{<lookup id>}`` = the erasure's
epoch, so that the person's next token starts with exhausted ε ledgers: :mod:`stream.ldp.ledger`),
PUBLISHes ``<subject>:*`` and stores an erasure record ``<prefix>:erasure:<request_id>`` (SET NX)
last. A repeated
request (redelivery after a crash, or a resubmission) finds the record and re-delivers
the same summary receipt: requests are idempotent.
"""

from __future__ import annotations

import dataclasses
import hashlib
import re
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Protocol

import orjson
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from stream.crypto.signing import (
    SignatureError,
    canonical,
    decode_signature,
    encode_signature,
    public_key_id,
    sign,
    verify,
)
from stream.errors import KeyUnavailableError, StreamgateError
from stream.retention.receipts import erasure_receipt, key_receipt, rejection_receipt, sign_receipt

__all__ = [
    "ERASURE_CONTEXT",
    "FUTURE_SKEW_SECONDS",
    "ErasureConflictError",
    "ErasureOutcome",
    "ErasureRecord",
    "ErasureRejectedError",
    "ErasureRequest",
    "MemoryShredStore",
    "MemorySink",
    "PendingShred",
    "ReceiptSink",
    "ShredStats",
    "ShredStore",
    "Shredder",
    "ShredderError",
    "candidate_epochs",
    "check_request_id",
    "erasure_message",
    "parse_erasure_request",
    "sign_erasure_request",
]

_REQUEST_ID_RE = re.compile(r"[A-Za-z0-9_.:-]{1,128}")
_SUBJECT_RE = re.compile(r"[A-Za-z0-9_.=-]{1,128}")


class ShredderError(StreamgateError):
    """The shredder could not complete a step (receipts not delivered, store unavailable, bad request)."""


class ErasureConflictError(ShredderError):
    """An erasure request reused the request id of another person's erasure, or of a request with
    other content (nothing was done)."""


class ErasureRejectedError(ShredderError):
    """An erasure request was refused before anything was done; ``code`` is ``invalid_request`` or
    ``unauthenticated`` (the audit record's ``error``)."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code


# --------------------------------------------------------------------------- values
@dataclass(frozen=True)
class PendingShred:
    """One claimed-and-destroyed (subject, epoch) whose receipt is not delivered yet (the outbox entry)."""

    field: str  # the entry's name in the pending hash
    subject: str
    epoch: int
    key_id: str | None
    reason: str  # "retention" | "erasure"
    request_id: str | None
    at: float  # when it was destroyed (injected clock)
    deadline: int | None  # its score in the deadline index, if it was indexed
    worker: str  # the instance that destroyed it (named in the receipt)
    lease_until: float
    owner: str = ""  # the instance finishing it now (lease holder); "" = worker

    @property
    def holder(self) -> str:
        return self.owner or self.worker

    def encode(self) -> bytes:
        return orjson.dumps([self.subject, self.epoch, self.key_id or "", self.reason, self.request_id or "",
                             repr(float(self.at)), "" if self.deadline is None else str(self.deadline), self.worker,
                             repr(float(self.lease_until)), self.holder])

    @classmethod
    def decode(cls, name: str, raw: bytes | str) -> PendingShred:
        s, e, k, reason, rid, at, deadline, worker, lease, owner = orjson.loads(raw)
        return cls(name, str(s), int(e), str(k) or None, str(reason), str(rid) or None, float(at),
                   int(float(deadline)) if deadline not in ("", None) else None, str(worker), float(lease),
                   str(owner))

    def receipt(self) -> dict[str, Any]:
        return key_receipt(reason=self.reason, subject=self.subject, epoch=self.epoch, key_id=self.key_id,
                           request_id=self.request_id, at=self.at, worker=self.worker, deadline=self.deadline)


def pending_field(subject: str, epoch: int, reason: str, request_id: str | None, key_id: str | None) -> str:
    """Name of an outbox entry: unique per receipt (same parts as the receipt id)."""
    return f"{subject}:{epoch}|{reason}|{request_id or ''}|{key_id or ''}"


@dataclass(frozen=True)
class ErasureRecord:
    """What an erasure request did; stored once (SET NX), re-read on a repeated request."""

    subject: str
    at: float
    keys_shredded: int
    worker: str
    digest: str = ""  # SHA-256 of the signed request's canonical encoding ("" for unsigned callers)

    def encode(self) -> bytes:
        return orjson.dumps({"subject": self.subject, "at": self.at, "keys_shredded": self.keys_shredded,
                             "worker": self.worker, "digest": self.digest})

    @classmethod
    def decode(cls, raw: bytes | str) -> ErasureRecord:
        d = orjson.loads(raw)
        return cls(str(d["subject"]), float(d["at"]), int(d["keys_shredded"]), str(d["worker"]),
                   str(d.get("digest") or ""))


@dataclass(frozen=True)
class ErasureRequest:
    """A validated request from ``privacy.erasure``: ``user_id`` (raw; only ever tokenized) or ``subject``."""

    request_id: str
    user_id: str | None = field(default=None, repr=False)
    subject: str | None = None
    requested_at: str | None = None
    digest: str = ""  # SHA-256 hex of the signed canonical encoding (replay-with-other-content check)


@dataclass(frozen=True)
class ErasureOutcome:
    request_id: str
    subject: str
    keys_shredded: int
    repeated: bool  # the request had been processed before (idempotent replay)
    receipts: int


@dataclass
class ShredStats:
    retention_shredded: int = 0
    erasure_shredded: int = 0
    expired_before_shred: int = 0
    erasures: int = 0
    erasures_rejected: int = 0
    receipts: int = 0
    recovered: int = 0
    scans: int = 0
    last_scan_at: float | None = None

    def as_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


def check_request_id(request_id: Any) -> str:
    if not isinstance(request_id, str) or not _REQUEST_ID_RE.fullmatch(request_id):
        raise ShredderError("request_id must be 1-128 characters of [A-Za-z0-9_.:-]")
    return request_id


#: Signature context of erasure requests (:mod:`stream.crypto.signing`); v2 names the audience.
ERASURE_CONTEXT = "erasure-request.v2"
#: Default of how far ahead of the shredder's clock a request's ``requested_at`` may be (clock skew).
FUTURE_SKEW_SECONDS = 300.0
_AUDIENCE_RE = re.compile(r"[A-Za-z0-9_.:-]{1,64}")


@dataclass(frozen=True)
class ErasureWindow:
    """When a signed request is accepted, derived from the life of its idempotency record:
    ``requested_at`` in ``[now - max_age, now + skew]``, the record kept ``record_ttl`` after it is
    processed. A request processed at ``p >= requested_at - skew`` keeps its record until
    ``p + record_ttl > requested_at + max_age`` (the last instant it is accepted) as long as
    ``max_age + skew < record_ttl``: a replay is then either idempotent or stale."""

    max_age: float
    skew: float
    record_ttl: int


def skew_for(epoch_seconds: int) -> float:
    """How far ahead of the shredder's clock a request may be dated: 300 s, or a quarter epoch if that
    is shorter (so the replay window always holds)."""
    return min(FUTURE_SKEW_SECONDS, epoch_seconds / 4)


def erasure_window(*, epoch_seconds: int, retention_seconds: int,
                   skew_seconds: float = FUTURE_SKEW_SECONDS) -> ErasureWindow:
    """The window of :class:`ErasureWindow`: the record lives retention + 2 epochs, requests are
    accepted for retention + 1 epoch (every key they could name has expired by then). Raises
    ``ValueError`` when the skew allowance is not below one epoch (the window cannot hold)."""
    record_ttl = int(retention_seconds) + 2 * int(epoch_seconds)
    max_age = float(record_ttl - int(epoch_seconds))
    if not 0 <= skew_seconds < epoch_seconds or not max_age + skew_seconds < record_ttl:
        raise ValueError(f"the erasure replay window cannot hold: the clock-skew allowance ({skew_seconds:g} s) "
                         f"must be below one epoch ({epoch_seconds} s); lengthen STREAMGATE_EPOCH_SECONDS")
    return ErasureWindow(max_age, float(skew_seconds), record_ttl)


def erasure_message(request_id: str, *, user_id: str | None, subject: str | None, requested_at: str | None,
                    audience: str | None) -> bytes:
    """The canonical bytes an erasure request's signature covers: request id, which identifier
    (``user_id`` or ``subject``) and its value, ``requested_at`` and the deployment it is for."""
    kind, ident = ("user_id", user_id) if user_id is not None else ("subject", subject)
    return canonical([ERASURE_CONTEXT, request_id, kind, ident, requested_at, audience])


def sign_erasure_request(key: Ed25519PrivateKey, request_id: str, *, user_id: str | None = None,
                         subject: str | None = None, requested_at: str, audience: str) -> dict[str, Any]:
    """The signed ``privacy.erasure`` document (what ``streamgate erase`` publishes), for the deployment
    ``audience`` (``STREAMGATE_DEPLOYMENT_ID``) only."""
    check_request_id(request_id)
    if (user_id is None) == (subject is None):
        raise ValueError("exactly one of user_id, subject")
    if not isinstance(audience, str) or not _AUDIENCE_RE.fullmatch(audience):
        raise ValueError("audience must be 1-64 characters of [A-Za-z0-9_.:-]")
    msg = erasure_message(request_id, user_id=user_id, subject=subject, requested_at=requested_at,
                          audience=audience)
    doc: dict[str, Any] = {"request_id": request_id, "requested_at": requested_at, "audience": audience}
    doc["user_id" if user_id is not None else "subject"] = user_id if user_id is not None else subject
    doc["signer"] = public_key_id(key)
    doc["signature"] = encode_signature(sign(key, ERASURE_CONTEXT, msg))
    return doc


def parse_erasure_request(value: bytes | None, verify_key: Ed25519PublicKey, *, now: float | None = None,
                          max_age_seconds: float | None = None, skew_seconds: float = FUTURE_SKEW_SECONDS,
                          audience: str | None = None, not_before: float | None = None) -> ErasureRequest:
    """Parse, validate and authenticate one ``privacy.erasure`` record.

    Raises :class:`ErasureRejectedError` with ``code`` ``invalid_request`` (malformed),
    ``unauthenticated`` (no valid signature by ``verify_key``) or, when ``now`` and
    ``max_age_seconds`` are given, ``stale_request`` (``requested_at`` missing, older than
    ``max_age_seconds`` or more than ``skew_seconds`` ahead of ``now``: :func:`erasure_window`),
    ``wrong_audience`` (signed for another deployment than ``audience``) and ``predates_store``
    (``requested_at`` more than ``skew_seconds`` before ``not_before``: the time since which the
    store has kept erasure records - the record of such a request may have been lost with Redis's
    data). The shredder keeps each request's record longer than that age, so an old signed request
    replayed later is either idempotent or refused - it never erases data created since.
    Only a verified request is returned; error messages never quote the record."""
    try:
        doc = orjson.loads(value or b"")
    except orjson.JSONDecodeError:
        raise ErasureRejectedError("invalid_request", "erasure request is not JSON") from None
    if not isinstance(doc, dict):
        raise ErasureRejectedError("invalid_request", "erasure request is not a JSON object")
    try:
        rid = check_request_id(doc.get("request_id"))
    except ShredderError as exc:
        raise ErasureRejectedError("invalid_request", str(exc)) from None
    user_id, subject = doc.get("user_id"), doc.get("subject")
    if user_id is not None and (not isinstance(user_id, str) or not 0 < len(user_id) <= 512):
        raise ErasureRejectedError("invalid_request", "erasure request: user_id must be a non-empty string")
    if subject is not None and (not isinstance(subject, str) or not _SUBJECT_RE.fullmatch(subject)):
        raise ErasureRejectedError("invalid_request", "erasure request: subject must be a person token")
    if (user_id is None) == (subject is None):
        raise ErasureRejectedError("invalid_request", "erasure request needs exactly one of user_id, subject")
    requested_at = doc.get("requested_at")
    if requested_at is not None and (not isinstance(requested_at, str) or len(requested_at) > 64):
        raise ErasureRejectedError("invalid_request", "erasure request: requested_at must be an RFC 3339 string")
    aud = doc.get("audience")
    if aud is not None and (not isinstance(aud, str) or not _AUDIENCE_RE.fullmatch(aud)):
        raise ErasureRejectedError("invalid_request", "erasure request: audience must be a deployment id")
    msg = erasure_message(rid, user_id=user_id, subject=subject, requested_at=requested_at, audience=aud)
    try:
        verify(verify_key, ERASURE_CONTEXT, msg, decode_signature(doc.get("signature")))
    except SignatureError:
        raise ErasureRejectedError("unauthenticated", "erasure request is not signed by the eraser key") from None
    if audience is not None and aud != audience:
        raise ErasureRejectedError("wrong_audience", "erasure request is signed for another deployment")
    if now is not None and max_age_seconds is not None:
        t = _parse_time(requested_at)
        if t is None or not now - max_age_seconds <= t <= now + skew_seconds:
            raise ErasureRejectedError("stale_request", "erasure request is too old, or dated in the future")
        if not_before is not None and t < not_before - skew_seconds:
            raise ErasureRejectedError("predates_store", "erasure request predates the store's erasure records "
                                       "(Redis lost data since): sign it again")
    return ErasureRequest(rid, user_id=user_id, subject=subject, requested_at=requested_at,
                          digest=hashlib.sha256(msg).hexdigest())


def _parse_time(text: str | None) -> float | None:
    if text is None:
        return None
    try:
        dt = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        return None
    return dt.timestamp() if dt.tzinfo is not None else None


def candidate_epochs(now: float, *, epoch_seconds: int, retention_seconds: int, margin: int = 2) -> list[int]:
    """Every epoch whose keys can still exist at ``now`` (keys of epoch e live until
    ``(e + 1) * epoch_seconds + retention_seconds``), widened by ``margin`` epochs each side for clock skew."""
    first = max(0, int((now - retention_seconds) // epoch_seconds) - 1 - margin)
    last = int(now // epoch_seconds) + margin
    return list(range(first, last + 1))


# --------------------------------------------------------------------------- ports
class ShredStore(Protocol):
    """Key storage as the shredder sees it (Redis: :class:`stream.storage.retention.RedisShredStore`)."""

    def erasure_floor(self, now: float) -> float:
        """Since when the store has kept erasure records: set to ``now`` if absent (a new or emptied store)."""
        ...

    def sync(self) -> None:
        """Make what was destroyed so far durable before a receipt says so (Redis with AOF: WAITAOF);
        raise :class:`~stream.errors.KeyUnavailableError` when the store does not confirm it in time."""
        ...

    def claim_due(self, now: float, limit: int, *, at: float, worker: str, lease_until: float) -> list[PendingShred]:
        """Claim (exclusively: one winner per member) and destroy up to ``limit`` members with deadline <= ``now``."""
        ...

    def erase_subject(self, subject: str, epochs: Sequence[int], *, request_id: str, at: float, worker: str,
                      lease_until: float, record_ttl: int, digest: str = "",
                      erased: tuple[int, int] | None = None) -> tuple[ErasureRecord, bool]:
        """Mark ``subject`` erased first (no data key is created for it from then on, for ``record_ttl``
        seconds), then claim and destroy every key of ``subject`` (indexed ones and ``epochs``) and its pseudonym
        secret, leaving the erased marker ``erased`` = (epoch, expire_at) where there was one (never
        lowered), and store the erasure record last; if a record for ``request_id`` exists, touch
        nothing and return it. Re-running an interrupted request completes it. Returns ``(record, created)``."""
        ...

    def pending(self) -> list[PendingShred]:
        ...

    def take_over(self, entry: PendingShred, *, worker: str, lease_until: float) -> PendingShred | None:
        """Re-lease ``entry`` to ``worker`` if it is unchanged (compare-and-set) and make sure its keys are
        destroyed; None if someone else did."""
        ...

    def done(self, entries: Sequence[PendingShred]) -> None:
        ...

    def publish(self, message: str) -> None:
        ...


class ReceiptSink(Protocol):
    def deliver(self, receipts: Sequence[dict[str, Any]], tombstones: Sequence[tuple[str, bytes]] = ()) -> None:
        """Write receipts (and ``(topic, key)`` tombstones) and return once all are acknowledged;
        raise :class:`ShredderError` if any was not."""
        ...


class MemorySink:
    """A :class:`ReceiptSink` that keeps everything in lists (tests, dry runs). ``fail_next`` injects failures."""

    def __init__(self) -> None:
        self.receipts: list[dict[str, Any]] = []
        self.tombstones: list[tuple[str, bytes]] = []
        self.fail_next = 0

    def deliver(self, receipts: Sequence[dict[str, Any]], tombstones: Sequence[tuple[str, bytes]] = ()) -> None:
        if self.fail_next > 0:
            self.fail_next -= 1
            raise ShredderError("receipts not delivered (injected failure)")
        self.receipts.extend(receipts)
        self.tombstones.extend(tombstones)


class MemoryShredStore:
    """In-memory :class:`ShredStore` with Redis's semantics (expiry by the injected clock), for tests.

    ``deks``: (subject, epoch) -> (key_id, expire_at); ``memos`` / ``budgets``: (subject, epoch) -> expire_at.
    """

    def __init__(self, clock: Callable[[], float] = time.time) -> None:
        self.clock = clock
        self.deks: dict[tuple[str, int], tuple[str, int]] = {}
        self.memos: dict[tuple[str, int], int] = {}
        self.budgets: dict[tuple[str, int], int] = {}
        self.deadlines: dict[str, int] = {}
        self.pending_entries: dict[str, bytes] = {}
        self.erasures: dict[str, bytes] = {}
        self.published: list[str] = []
        self.syncs = 0  # sync() calls
        self.fail_sync = 0  # the next sync() calls that raise (tests)
        self._lock = threading.Lock()

    def erasure_floor(self, now: float) -> float:
        with self._lock:
            return float(self.erasures.setdefault("\0floor", str(float(now)).encode()))

    def sync(self) -> None:
        self.syncs += 1
        if self.fail_sync:
            self.fail_sync -= 1
            raise KeyUnavailableError("deletes not confirmed durable (injected)")

    # test helpers
    def add_key(self, subject: str, epoch: int, key_id: str, expire_at: int, *, ldp: bool = True) -> None:
        with self._lock:
            self.deks[(subject, epoch)] = (key_id, expire_at)
            if ldp:
                self.memos[(subject, epoch)] = expire_at
                self.budgets[(subject, epoch)] = expire_at
            self.deadlines.setdefault(f"{subject}:{epoch}", expire_at)

    def live(self, subject: str, epoch: int) -> dict[str, bool]:
        now = self.clock()
        ref = (subject, epoch)
        dek = self.deks.get(ref)
        return {"dek": dek is not None and now < dek[1],
                "memo": ref in self.memos and now < self.memos[ref],
                "budget": ref in self.budgets and now < self.budgets[ref]}

    # the port
    def _claim(self, member: str, reason: str, request_id: str | None, at: float, worker: str,
               lease_until: float) -> PendingShred | None:
        subject, _, ep = member.rpartition(":")
        ref = (subject, int(ep))
        now = self.clock()
        deadline = self.deadlines.get(member)
        dek = self.deks.get(ref)
        key_id = dek[0] if dek is not None and now < dek[1] else None
        has_ldp = any(ref in d and now < d[ref] for d in (self.memos, self.budgets))
        if deadline is None and key_id is None and not has_ldp:
            return None
        name = pending_field(subject, ref[1], reason, request_id, key_id)
        entry = PendingShred(name, subject, ref[1], key_id, reason, request_id, at, deadline, worker, lease_until)
        self.pending_entries.setdefault(name, entry.encode())
        for d in (self.deks, self.memos, self.budgets):
            d.pop(ref, None)
        self.deadlines.pop(member, None)
        self.published.append(member)
        return PendingShred.decode(name, self.pending_entries[name])

    def claim_due(self, now: float, limit: int, *, at: float, worker: str, lease_until: float) -> list[PendingShred]:
        with self._lock:
            due = sorted((score, m) for m, score in self.deadlines.items() if score <= now)[:limit]
            out = [self._claim(m, "retention", None, at, worker, lease_until) for _, m in due]
        return [e for e in out if e is not None]

    def erase_subject(self, subject: str, epochs: Sequence[int], *, request_id: str, at: float, worker: str,
                      lease_until: float, record_ttl: int, digest: str = "",
                      erased: tuple[int, int] | None = None) -> tuple[ErasureRecord, bool]:
        # no pseudonym secrets here, hence no erased marker
        with self._lock:
            if request_id in self.erasures:
                return ErasureRecord.decode(self.erasures[request_id]), False
            members = {m for m in self.deadlines if m.rpartition(":")[0] == subject}
            members |= {f"{subject}:{e}" for e in epochs}
            n = 0
            for m in sorted(members):
                entry = self._claim(m, "erasure", request_id, at, worker, lease_until)
                if entry is not None and entry.key_id is not None:
                    n += 1
            record = ErasureRecord(subject, at, n, worker, digest)
            self.erasures[request_id] = record.encode()
            self.published.append(f"{subject}:*")
            return record, True

    def pending(self) -> list[PendingShred]:
        with self._lock:
            return [PendingShred.decode(k, v) for k, v in sorted(self.pending_entries.items())]

    def take_over(self, entry: PendingShred, *, worker: str, lease_until: float) -> PendingShred | None:
        with self._lock:
            if self.pending_entries.get(entry.field) != entry.encode():
                return None
            new = dataclasses.replace(entry, lease_until=lease_until, owner=worker)
            self.pending_entries[entry.field] = new.encode()
            return new

    def done(self, entries: Sequence[PendingShred]) -> None:
        with self._lock:
            for e in entries:
                self.pending_entries.pop(e.field, None)

    def publish(self, message: str) -> None:
        self.published.append(message)


# --------------------------------------------------------------------------- the shredder
class Shredder:
    """Drives retention from the deadline index and executes erasure requests (see the module docstring).

    ``lead_seconds``: destroy keys up to this long *before* their deadline, so that the shredder
    (not Redis's lazy expiry) destroys them and the receipt can name the key id. Keys that Redis
    expired first still get exactly one receipt (``key_id: null``).

    ``clock`` is injected (unix seconds); ``worker`` identifies this instance across restarts (a
    restarted instance finishes its own pending entries at once, others' after ``lease_seconds``).
    """

    def __init__(
        self,
        store: ShredStore,
        sink: ReceiptSink,
        *,
        worker: str,
        epoch_seconds: int,
        retention_seconds: int,
        clock: Callable[[], float] = time.time,
        batch_size: int = 500,
        lease_seconds: float = 60.0,
        tombstone_topics: Iterable[str] = (),
        lead_seconds: float = 0.0,
        on_progress: Callable[[ShredStats], None] | None = None,
        receipt_key: Ed25519PrivateKey | None = None,
    ) -> None:
        if batch_size <= 0 or lease_seconds <= 0 or lead_seconds < 0:
            raise ValueError("batch_size and lease_seconds must be > 0, lead_seconds >= 0")
        self.store = store
        self.sink = sink
        self.worker = worker
        self.epoch_seconds = int(epoch_seconds)
        self.retention_seconds = int(retention_seconds)
        self.clock = clock
        self.batch_size = int(batch_size)
        self.lease_seconds = float(lease_seconds)
        self.tombstone_topics = tuple(tombstone_topics)
        self.lead_seconds = float(lead_seconds)
        self.on_progress = on_progress
        self.receipt_key = receipt_key
        self.stats = ShredStats()

    def _signed(self, receipts: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
        if self.receipt_key is None:
            return list(receipts)
        return [sign_receipt(r, self.receipt_key) for r in receipts]

    # -- outbox ------------------------------------------------------------------------
    def _finish(self, entries: Sequence[PendingShred], extra: Sequence[dict[str, Any]] = (),
                tombstones: Sequence[tuple[str, bytes]] = ()) -> int:
        receipts = self._signed([e.receipt() for e in entries] + list(extra))
        if receipts or tombstones:
            self.store.sync()  # what the receipts say was destroyed is durable before they go
            self.sink.deliver(receipts, tombstones)
        self.store.done(entries)
        self.stats.receipts += len(receipts)
        for e in entries:
            if e.reason == "retention":
                self.stats.retention_shredded += 1
            else:
                self.stats.erasure_shredded += 1
            if e.key_id is None:
                self.stats.expired_before_shred += 1
        if self.on_progress is not None:
            self.on_progress(self.stats)
        return len(receipts)

    def recover(self, *, request_id: str | None = None) -> int:
        """Finish pending entries this worker owns or whose lease expired (``request_id``: only that
        request's). Returns how many were finished."""
        now = self.clock()
        mine: list[PendingShred] = []
        for entry in self.store.pending():
            if request_id is not None and entry.request_id != request_id:
                continue
            if entry.holder != self.worker and entry.lease_until > now:
                continue  # another live instance is on it
            taken = self.store.take_over(entry, worker=self.worker, lease_until=now + self.lease_seconds)
            if taken is not None:
                mine.append(taken)
        for i in range(0, len(mine), self.batch_size):
            self._finish(mine[i:i + self.batch_size])
        self.stats.recovered += len(mine)
        return len(mine)

    # -- retention -----------------------------------------------------------------------
    def shred_due(self, *, max_batches: int | None = None) -> int:
        """Claim, destroy and receipt every key whose deadline passed (by the injected clock). Returns the count."""
        total = 0
        batches = 0
        while max_batches is None or batches < max_batches:
            now = self.clock()
            claimed = self.store.claim_due(now + self.lead_seconds, self.batch_size, at=now, worker=self.worker,
                                           lease_until=now + self.lease_seconds)
            if claimed:
                self._finish(claimed)
                total += len(claimed)
                batches += 1
            if len(claimed) < self.batch_size:
                break
        self.stats.scans += 1
        self.stats.last_scan_at = self.clock()
        return total

    def tick(self) -> int:
        """One scheduled pass: finish the outbox, then shred what is due."""
        return self.recover() + self.shred_due()

    # -- erasure ---------------------------------------------------------------------------
    def erase(self, subject: str, request_id: str, *, requested_at: str | None = None,
              record_ttl: int | None = None, digest: str = "") -> ErasureOutcome:
        """Destroy every key, memo and budget entry of ``subject`` now; deliver one receipt per key, one
        for the request, and tombstones for the configured compacted topics. Idempotent per ``request_id``;
        the same ``request_id`` with another subject or another request ``digest`` (a replayed id with
        different content) raises :class:`ErasureConflictError` and does nothing."""
        if not _SUBJECT_RE.fullmatch(subject):
            raise ShredderError("subject must be a person token")
        check_request_id(request_id)
        now = self.clock()
        epochs = candidate_epochs(now, epoch_seconds=self.epoch_seconds, retention_seconds=self.retention_seconds)
        ttl = record_ttl or (self.retention_seconds + 2 * self.epoch_seconds)
        # the erased marker lives as long as the ledgers of the erasure's epoch (stream.ldp.ledger)
        epoch = int(now // self.epoch_seconds)
        erased = (epoch, (epoch + 1) * self.epoch_seconds + self.retention_seconds)
        record, created = self.store.erase_subject(subject, epochs, request_id=request_id, at=now,
                                                   worker=self.worker, lease_until=now + self.lease_seconds,
                                                   record_ttl=ttl, digest=digest, erased=erased)
        if record.digest and digest:
            # the signed request decides: a redelivered request by user_id may resolve to another token
            # once the person's tk2 secret is gone (stream.crypto.tokens); it is the same request
            if record.digest != digest:
                raise ErasureConflictError("request_id was already used for another person's erasure")
            subject = record.subject
        elif record.subject != subject:
            raise ErasureConflictError("request_id was already used for another person's erasure")
        if not created:
            self.store.publish(f"{subject}:*")
        entries = [e for e in self.store.pending() if e.request_id == request_id]
        summary = erasure_receipt(subject=subject, request_id=request_id, at=record.at, worker=record.worker,
                                  keys_shredded=record.keys_shredded, requested_at=requested_at)
        tombstones = [(t, subject.encode("ascii")) for t in self.tombstone_topics]
        n = self._finish(entries, [summary], tombstones)
        self.stats.erasures += 1
        return ErasureOutcome(request_id, subject, record.keys_shredded, not created, n)

    def reject(self, *, request_id: str | None, error: str, discriminator: str) -> dict[str, Any]:
        """Deliver an ``erasure_rejected`` record (no person, no identifier) for a request that is not
        executed. Pass ``request_id`` only for an authenticated request."""
        (receipt,) = self._signed([rejection_receipt(error=error, at=self.clock(), worker=self.worker,
                                                     discriminator=discriminator, request_id=request_id)])
        self.sink.deliver([receipt])
        self.stats.erasures_rejected += 1
        self.stats.receipts += 1
        return receipt
