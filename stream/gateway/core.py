"""The gateway's pure core: raw records in, protected events and sealed DLQ records out.

No Kafka here: the adapter in :mod:`stream.apps.gateway` feeds batches of
:class:`RawRecord` and writes the :class:`BatchResult`. The only I/O is
through the :class:`~stream.crypto.deks.DekProvider`'s key store, and its
failure (:class:`~stream.errors.KeyUnavailableError`) propagates *before*
anything of the batch is returned: the batch fails closed as a whole.

Every input record ends in exactly one of ``BatchResult.protected`` or
``BatchResult.dead_letters`` (invariant 5), in input order within each list.

Dead letters are sealed under the *person's* data key whenever the rejected record
still names a person (a JSON object whose subject field is a string the schema could
accept): erasing that person then makes their dead letters unsealable too. Only a
record without a parseable subject is sealed under the per-epoch quarantine key.
The DLQ record names the key's subject (``sealed_for``: the person token, or
``"_quarantine"``); the ciphertext is bound to it, so changing it fails to unseal.
"""

from __future__ import annotations

import base64
import contextlib
import hmac
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, NamedTuple

import orjson

from stream.crypto.deks import DataKey, DekProvider
from stream.crypto.fields import decrypt_value, encrypt_value, parse_ciphertext
from stream.crypto.tokens import Tokenizer
from stream.errors import DecryptError
from stream.schema import EventSchema, Reason, Rejection

__all__ = [
    "DLQ_SCHEMA",
    "QUARANTINE_SUBJECT",
    "BatchResult",
    "Gateway",
    "RawRecord",
    "unseal_dead_letter",
]

DLQ_SCHEMA = "dlq-record.v1"
#: Reserved subject of the per-epoch quarantine key that seals dead letters without a parseable
#: person. It cannot collide with a person: person subjects are tokens ("tk1_..." / "tk2_...").
QUARANTINE_SUBJECT = "_quarantine"


class RawRecord(NamedTuple):
    """One record as consumed from the raw topic (a tuple: cheap to build per record)."""

    topic: str
    partition: int
    offset: int
    value: bytes | None
    timestamp_ms: int | None = None


@dataclass(slots=True)
class BatchResult:
    protected: list[tuple[bytes, bytes]] = field(default_factory=list)  # (key = subject token, value)
    dead_letters: list[bytes] = field(default_factory=list)
    reasons: Counter[str] = field(default_factory=Counter)
    keys_requested: int = 0

    @property
    def total(self) -> int:
        return len(self.protected) + len(self.dead_letters)


def _seal_path(topic: str, partition: int, offset: int) -> str:
    return f"source/{topic}/{partition}/{offset}"


class Gateway:
    """Validates raw records against ``schema`` and applies its ``x-privacy`` policy."""

    def __init__(
        self,
        schema: EventSchema,
        tokenizer: Tokenizer,
        deks: DekProvider,
        *,
        max_event_bytes: int = 64 * 1024,
        clock: Callable[[], float] = time.time,
        digest_key: bytes | None = None,
    ) -> None:
        self.schema = schema
        self.schema_id = schema.name
        self.tokenizer = tokenizer
        self.deks = deks
        self.max_event_bytes = max_event_bytes
        self.clock = clock
        self.digest_key = digest_key if digest_key is not None else tokenizer.keyring.derive("dlq-digest")
        self.subject_field = schema.subject_field
        self._subject_domain = schema.subject_domain
        subject_spec = schema.document.get("properties", {}).get(self.subject_field, {})
        self._subject_max_len = int(subject_spec.get("maxLength", 128))
        self._other_tokens = tuple(
            (p.name, p.token_domain or p.name)
            for p in schema.fields.values()
            if p.policy == "token" and p.name != self.subject_field
        )
        self._is_valid = schema.is_valid
        self._encrypt_fields = tuple(schema.fields_with("encrypt"))
        self._pads = {n: schema.fields[n].pad for n in self._encrypt_fields}
        self._drop_fields = tuple(schema.fields_with("drop"))

    # -- decoding and validation -------------------------------------------------
    def decode(self, value: bytes | None) -> dict[str, Any] | Rejection:
        if value is None or len(value) == 0:
            return Rejection(Reason.EMPTY)
        if len(value) > self.max_event_bytes:
            return Rejection(Reason.TOO_LARGE)
        try:
            event = orjson.loads(value)
        except orjson.JSONDecodeError:
            try:
                value.decode("utf-8")
            except UnicodeDecodeError:
                return Rejection(Reason.NOT_UTF8)
            return Rejection(Reason.NOT_JSON)
        if self._is_valid(event):  # the hot path: the compiled predicate
            return event
        rejection = self.schema.check(event)  # explains the failure (reason, path, rule)
        # The two engines agree (tests/test_schema.py); should they not, the event is still refused.
        return rejection if rejection is not None else Rejection(Reason.SCHEMA_VIOLATION)

    # -- the batch ----------------------------------------------------------------
    def process(self, records: Sequence[RawRecord]) -> BatchResult:
        """Protect a batch. Raises KeyUnavailableError (and returns nothing) if keys can't be had.
        With a key-store guard (``deks.guard``) the batch is returned only if Redis kept its
        identity from before to after it (:mod:`stream.crypto.keystore`); otherwise redone."""
        guard = self.deks.guard
        if guard is None:
            return self._process(records)
        return guard.run(lambda: self._process(records))

    def _process(self, records: Sequence[RawRecord]) -> BatchResult:
        now = self.clock()
        epoch = self.deks.epoch_of(now)
        decode = self.decode
        decoded = [decode(rec.value) for rec in records]
        events = [d for d in decoded if not isinstance(d, Rejection)]
        any_rejects = len(events) != len(decoded)

        # Tokens per batch, memoized: the same people and sessions recur within and across batches.
        tokenize = self.tokenizer.tokens
        expire_at = self.deks.expire_at(epoch)  # person tokens (tk2) live as long as the batch's keys
        subjects = tokenize(self._subject_domain, [e[self.subject_field] for e in events], expire_at=expire_at)
        for name, domain in self._other_tokens:
            present = [e for e in events if name in e]
            for e, tok in zip(present, tokenize(domain, [e[name] for e in present]), strict=True):
                e[name] = tok
        need_key: set[str] = set()
        enc_fields = self._encrypt_fields
        for e, subject in zip(events, subjects, strict=True):
            e[self.subject_field] = subject
            for f in enc_fields:
                if e.get(f) is not None:
                    need_key.add(subject)
                    break
        rejected_subjects: dict[int, str] = {}
        if any_rejects:
            # a rejected record that still names a person is sealed under that person's key
            owners = [(i, uid) for i, (rec, d) in enumerate(zip(records, decoded, strict=True))
                      if isinstance(d, Rejection) and d.reason is not Reason.TOO_LARGE
                      and (uid := self._parse_subject(rec.value)) is not None]
            if owners:
                toks = tokenize(self._subject_domain, [uid for _, uid in owners], expire_at=expire_at)
                rejected_subjects = {i: tok for (i, _), tok in zip(owners, toks, strict=True)}
                need_key.update(rejected_subjects.values())
            if len(rejected_subjects) < len(decoded) - len(events):
                need_key.add(QUARANTINE_SUBJECT)

        keys: dict[str, DataKey] = self.deks.keys_for(need_key, epoch) if need_key else {}
        result = BatchResult(keys_requested=len(need_key))
        protect, dumps = self._protect, orjson.dumps
        protected = result.protected
        for e, subject in zip(events, subjects, strict=True):
            protected.append((subject.encode(), dumps(protect(e, keys.get(subject)))))
        if any_rejects:
            rejected_at = datetime.fromtimestamp(now, UTC).isoformat().replace("+00:00", "Z")
            for i, (rec, d) in enumerate(zip(records, decoded, strict=True)):
                if isinstance(d, Rejection):
                    owner = rejected_subjects.get(i, QUARANTINE_SUBJECT)
                    result.dead_letters.append(self._dead_letter(rec, d, keys.get(owner), rejected_at))
                    result.reasons[d.reason.value] += 1
        return result

    def _parse_subject(self, value: bytes | None) -> str | None:
        """The subject (user_id) of a rejected record, if it names one the schema could accept."""
        try:
            doc = orjson.loads(value or b"")
        except orjson.JSONDecodeError:
            return None
        uid = doc.get(self.subject_field) if isinstance(doc, dict) else None
        if type(uid) is not str or not 0 < len(uid) <= self._subject_max_len:
            return None
        return uid

    def _protect(self, event: dict[str, Any], key: DataKey | None) -> dict[str, Any]:
        """Tokens are already in place (see process); encrypt and drop. Returns the protected dict."""
        out: dict[str, Any] = {"_schema": self.schema_id, **event}
        schema_id, pads = self.schema_id, self._pads
        for name in self._encrypt_fields:
            value = out.get(name)
            if value is not None:
                assert key is not None
                out[name] = encrypt_value(key, value, schema_id=schema_id, field_path=name, pad=pads[name])
        for name in self._drop_fields:
            out.pop(name, None)
        return out

    def _dead_letter(self, rec: RawRecord, why: Rejection, key: DataKey | None, rejected_at: str) -> bytes:
        sealed = digest = None
        if why.reason is Reason.TOO_LARGE:
            # never the raw bytes of an oversized record: a keyed digest, its size and where it was
            digest = self.digest(rec.value or b"")
        elif rec.value:
            assert key is not None
            sealed = encrypt_value(
                key,
                base64.b64encode(rec.value).decode("ascii"),
                schema_id=DLQ_SCHEMA,
                field_path=_seal_path(rec.topic, rec.partition, rec.offset),
            )
        record = {
            "_schema": DLQ_SCHEMA,
            "reason": why.reason.value,
            "path": why.path,
            "rule": why.rule,
            "input_schema": self.schema_id,
            "source": {
                "topic": rec.topic,
                "partition": rec.partition,
                "offset": rec.offset,
                "timestamp_ms": rec.timestamp_ms,
            },
            "size": len(rec.value or b""),
            "sealed": sealed,
            "rejected_at": rejected_at,
        }
        if sealed is not None:
            assert key is not None
            record["sealed_for"] = key.subject
        if digest is not None:
            record["digest"] = digest
        return orjson.dumps(record)

    def digest(self, value: bytes) -> str:
        """A keyed digest of ``value`` (HMAC-SHA256 under the ``dlq-digest`` purpose key): it
        identifies a record to whoever holds the key, and reveals nothing to anyone else."""
        return "hs1." + base64.urlsafe_b64encode(hmac.digest(self.digest_key, value, "sha256")).decode().rstrip("=")

    def compact_dead_letter(self, value: bytes | None, *, topic: str, error: str) -> bytes:
        """A dead letter that always fits, for an output Kafka refused for good (``too_large``):
        the source coordinates when the refused record names them, its size and keyed digest."""
        source: dict[str, Any] = {"topic": topic, "partition": 0, "offset": 0, "timestamp_ms": None}
        with contextlib.suppress(Exception):
            doc = orjson.loads(value or b"")
            if isinstance(doc, dict) and isinstance(doc.get("source"), dict):
                source = {k: doc["source"].get(k) for k in ("topic", "partition", "offset", "timestamp_ms")}
        record = {
            "_schema": DLQ_SCHEMA,
            "reason": Reason.TOO_LARGE.value,
            "path": None,
            "rule": None,
            "input_schema": self.schema_id,
            "source": source,
            "size": len(value or b""),
            "sealed": None,
            "digest": self.digest(value or b""),
            "refused": error[:200],
            "rejected_at": datetime.fromtimestamp(self.clock(), UTC).isoformat().replace("+00:00", "Z"),
        }
        return orjson.dumps(record)


def unseal_dead_letter(record: dict[str, Any], deks: DekProvider) -> bytes | None:
    """The original bytes of a DLQ record (authorized ops only: needs the master key), sealed under
    the person's key (``sealed_for``: their token) or the quarantine key (``sealed_for`` absent in
    records written before person sealing). Raises DecryptError / KeyShreddedError like any
    ciphertext: after the person's erasure, KeyShreddedError."""
    sealed = record.get("sealed")
    if sealed is None:
        return None
    owner = record.get("sealed_for", QUARANTINE_SUBJECT)
    if type(owner) is not str:
        raise DecryptError()
    header = parse_ciphertext(sealed)
    key = deks.key_for_decrypt(owner, header.epoch, header.key_id)
    src = record["source"]
    b64 = decrypt_value(
        key, sealed, schema_id=DLQ_SCHEMA, field_path=_seal_path(src["topic"], src["partition"], src["offset"])
    )
    return base64.b64decode(b64)
