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
import json
import struct
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, NamedTuple, Protocol

import orjson

from stream.crypto.deks import DataKey, DekProvider
from stream.crypto.fields import decrypt_value, encrypt_fields, encrypt_many, encrypt_value, parse_ciphertext
from stream.crypto.tokens import Tokenizer
from stream.errors import DecryptError, SchemaPolicyError, SubjectErasedError
from stream.gateway.framing import VALUE_SCHEMA_ID_HEADER, Resolved, decode_avro
from stream.schema import EventSchema, Reason, Rejection

if TYPE_CHECKING:
    from stream.registry import SchemaResolver

__all__ = [
    "DLQ_SCHEMA",
    "QUARANTINE_SUBJECT",
    "BatchResult",
    "Gateway",
    "InputRecord",
    "RawRecord",
    "is_envelope",
    "lenient_json",
    "unseal_dead_letter",
    "unseal_dead_letter_meta",
    "why_not_json",
]

DLQ_SCHEMA = "dlq-record.v1"
#: Reserved subject of the per-epoch quarantine key that seals dead letters without a parseable
#: person. It cannot collide with a person: person subjects are tokens ("tk1_..." / "tk2_...").
QUARANTINE_SUBJECT = "_quarantine"


class InputRecord(Protocol):
    """What the core reads of a consumed record: :class:`RawRecord`, or the engine's own record
    (``stream.engine.contract.Record``, passed as it is: no copy per record)."""

    @property
    def topic(self) -> str: ...
    @property
    def partition(self) -> int: ...
    @property
    def offset(self) -> int: ...
    @property
    def value(self) -> bytes | None: ...
    @property
    def timestamp_ms(self) -> int | None: ...
    @property
    def headers(self) -> Sequence[tuple[str, bytes | None]] | None: ...
    @property
    def key(self) -> bytes | None: ...


class RawRecord(NamedTuple):
    """One record as consumed from the raw topic (a tuple: cheap to build per record)."""

    topic: str
    partition: int
    offset: int
    value: bytes | None
    timestamp_ms: int | None = None
    headers: Sequence[tuple[str, bytes | None]] | None = None
    key: bytes | None = None


Headers = list[tuple[str, bytes | None]]


@dataclass(slots=True)
class BatchResult:
    protected: list[tuple[bytes, bytes]] = field(default_factory=list)  # (key = subject token, value)
    dead_letters: list[bytes] = field(default_factory=list)
    #: index in ``protected`` -> the input's allow-listed headers (``pass_headers``: trace context)
    headers: dict[int, Headers] = field(default_factory=dict)
    reasons: Counter[str] = field(default_factory=Counter)
    keys_requested: int = 0

    @property
    def total(self) -> int:
        return len(self.protected) + len(self.dead_letters)


def _seal_path(topic: str, partition: int, offset: int) -> str:
    return f"source/{topic}/{partition}/{offset}"


_BOM = b"\xef\xbb\xbf"
_META_SUFFIX = "#meta"
#: Most bytes of key and headers together a dead letter keeps (sealed) for replay: within the
#: 4 KiB that stream.apps.engine.dead_letter_bound allows beside the sealed value.
MAX_META_BYTES = 1024
#: Most bytes of the encoded key and headers (JSON, base64'd values), whatever their number and shape:
#: empty or escaped headers cost JSON bytes that ``MAX_META_BYTES`` does not count.
MAX_META_JSON = 2048
_INT64 = 1 << 63


class _OutOfRange(ValueError):
    pass


def _strict_float(text: str) -> float:
    value = float(text)
    if value in (float("inf"), float("-inf")):
        raise _OutOfRange(text)
    return value


def _strict_int(text: str) -> int:
    value = int(text)
    if not -_INT64 <= value < _INT64 << 1:
        raise _OutOfRange(text)
    return value


def _no_constants(text: str) -> Any:
    raise ValueError(text)  # NaN / Infinity are not JSON


def why_not_json(payload: bytes) -> Rejection:
    """orjson refused ``payload``: not UTF-8, valid JSON with a number out of range, or not JSON."""
    try:
        text = payload.decode("utf-8")
    except UnicodeDecodeError:
        return Rejection(Reason.NOT_UTF8)
    try:
        json.loads(text, parse_float=_strict_float, parse_int=_strict_int, parse_constant=_no_constants)
    except _OutOfRange:
        return Rejection(Reason.NUMBER_OUT_OF_RANGE)
    except (ValueError, RecursionError):
        pass
    return Rejection(Reason.NOT_JSON)


def lenient_json(payload: bytes) -> Any:
    """``payload`` parsed as far as possible (BOM skipped, out-of-range numbers kept): for naming
    the person of a rejected record, never for passing it. Its strings may hold lone surrogates
    (``"\\udc00"``, which orjson refuses): they do not encode to UTF-8."""
    if payload.startswith(_BOM):
        payload = payload[3:]
    try:
        return orjson.loads(payload)
    except orjson.JSONDecodeError:
        pass
    try:
        return json.loads(payload.decode("utf-8"), parse_constant=lambda _: None)
    except (ValueError, RecursionError):
        return None


def is_envelope(doc: Any) -> bool:
    """A Kafka Connect JsonConverter envelope (``schemas.enable=true``): ``{"schema": .., "payload": ..}``."""
    return type(doc) is dict and len(doc) == 2 and "payload" in doc and "schema" in doc


@dataclass(frozen=True, slots=True)
class _Plan:
    """What protecting an event of one schema version takes (the base schema's, or a registered one's)."""

    schema: EventSchema
    is_valid: Callable[[Any], bool]
    decode_valid: Callable[[bytes], dict[str, Any] | None] | None
    other_tokens: tuple[tuple[str, str], ...]
    encrypt_fields: tuple[str, ...]
    pads: dict[str, tuple[int, ...] | None]
    sealed: tuple[tuple[str, tuple[int, ...] | None], ...]  # (encrypt field, its pad)
    drop_fields: tuple[str, ...]
    int_fields: tuple[str, ...]

    @classmethod
    def of(cls, schema: EventSchema) -> _Plan:
        """Raises SchemaPolicyError if a token property shares the person's token domain: its tokens
        would be the person's (and tk2 person tokens need the batch's key deadline)."""
        props = schema.document.get("properties", {})
        encrypt = tuple(schema.fields_with("encrypt"))
        other_tokens = tuple((p.name, p.token_domain or p.name) for p in schema.fields.values()
                             if p.policy == "token" and p.name != schema.subject_field)
        for name, domain in other_tokens:
            if domain == schema.subject_domain:
                raise SchemaPolicyError(f"schema {schema.name!r}: token property {name!r} has the subject's "
                                        f"token domain {domain!r}; a token property needs another domain")
        return cls(
            schema=schema,
            is_valid=schema.is_valid,
            decode_valid=schema.decode_valid,
            other_tokens=other_tokens,
            encrypt_fields=encrypt,
            pads={n: schema.fields[n].pad for n in encrypt},
            sealed=tuple((n, schema.fields[n].pad) for n in encrypt),
            drop_fields=tuple(schema.fields_with("drop")),
            int_fields=tuple(n for n, spec in props.items() if spec.get("type") == "integer"),
        )


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
        resolver: SchemaResolver | None = None,
        pass_headers: frozenset[str] = frozenset(),
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
        self._plan = _Plan.of(schema)
        self._is_valid = schema.is_valid
        #: Schema Registry framing (magic byte 0/1, ``__value_schema_id``); None = plain JSON only
        self.resolver = resolver
        self._plans: dict[int, _Plan | Rejection] = {}  # id(Resolved) -> its plan (or its refusal)
        self.pass_headers = frozenset(h.lower() for h in pass_headers)
        self._out_head = b'{"_schema":' + orjson.dumps(self.schema_id) + b","

    # -- decoding and validation -------------------------------------------------
    def decode(self, value: bytes | None, headers: Sequence[tuple[str, bytes | None]] | None = None,
               ) -> dict[str, Any] | Rejection:
        got = self._decode(value, headers)
        return got if isinstance(got, Rejection) else got[0]

    def _frame(self, value: bytes, headers: Sequence[tuple[str, bytes | None]] | None,
               ) -> tuple[Resolved | Rejection, bytes] | None:
        """The registered version a framed record names, and its payload; None if not framed."""
        resolver = self.resolver
        if resolver is None:
            return None
        if headers:
            for k, h in headers:
                if k == VALUE_SCHEMA_ID_HEADER:
                    return self._resolve_id(resolver, h or b""), value
        magic = value[0]
        if magic > 1:
            return None
        head = 5 if magic == 0 else 17
        if len(value) < head:
            return Rejection(Reason.BAD_FRAMING), b""
        return self._resolve_id(resolver, value[:head]), value[head:]

    @staticmethod
    def _resolve_id(resolver: SchemaResolver, frame: bytes) -> Resolved | Rejection:
        if len(frame) == 5 and frame[0] == 0:
            return resolver.by_id(struct.unpack_from(">I", frame, 1)[0])
        if len(frame) == 17 and frame[0] == 1:
            return resolver.by_guid(frame[1:])
        return Rejection(Reason.BAD_FRAMING)

    def _plan_of(self, resolved: Resolved) -> _Plan | Rejection:
        """The plan of a registered version, or why none applies (cached either way)."""
        plan = self._plans.get(id(resolved))
        if plan is None:
            assert resolved.schema is not None
            try:
                plan = _Plan.of(resolved.schema)
            except SchemaPolicyError:
                plan = Rejection(Reason.UNSUPPORTED_SCHEMA, rule="SchemaPolicyError")  # as the registry words it
            self._plans[id(resolved)] = plan
        return plan

    @staticmethod
    def _integers(event: dict[str, Any], plan: _Plan) -> tuple[dict[str, Any], _Plan] | Rejection:
        """1e2 is an integer to JSON Schema: it leaves as 100, not 100.0; beyond int64 it is refused."""
        for name in plan.int_fields:
            v = event.get(name)
            if type(v) is float:
                if not -_INT64 <= v < _INT64:
                    return Rejection(Reason.NUMBER_OUT_OF_RANGE, path=name)
                event[name] = int(v)
        return event, plan

    def _decode(self, value: bytes | None, headers: Sequence[tuple[str, bytes | None]] | None = None,
                ) -> tuple[dict[str, Any], _Plan] | Rejection:
        if value is None or len(value) == 0:
            return Rejection(Reason.EMPTY)
        if len(value) > self.max_event_bytes:
            return Rejection(Reason.TOO_LARGE)
        plan = self._plan
        framed = self._frame(value, headers) if self.resolver is not None and (headers or value[0] <= 1) else None
        if framed is None:
            payload = value
            avro = None
        else:
            resolved, payload = framed
            if isinstance(resolved, Rejection):
                return resolved
            if resolved.refusal is not None:
                return resolved.refusal
            got = self._plan_of(resolved)
            if isinstance(got, Rejection):
                return got
            plan = got
            avro = resolved if resolved.kind == "AVRO" else None
        if avro is not None:
            try:
                event = decode_avro(avro, payload)
            except Exception:  # truncated or foreign bytes: fastavro raises EOFError, ValueError, ...
                return Rejection(Reason.BAD_FRAMING, rule="avro")
        else:
            fast = plan.decode_valid
            if fast is not None and (event := fast(payload)) is not None:  # one pass (msgspec)
                return event, plan
            try:  # refused there, or no typed decoder for this schema: orjson decides, and explains
                event = orjson.loads(payload)
            except orjson.JSONDecodeError:
                return why_not_json(payload)
        if plan.is_valid(event):  # the hot path: the compiled predicate
            for name in plan.int_fields:
                if type(event.get(name)) is float:
                    return self._integers(event, plan)
            return event, plan
        if is_envelope(event):  # Kafka Connect JsonConverter: the payload is the event
            event = event["payload"]
            if plan.is_valid(event):
                return self._integers(event, plan)
        rejection = plan.schema.check(event)  # explains the failure (reason, path, rule)
        # The two engines agree (tests/test_schema.py); should they not, the event is still refused.
        return rejection if rejection is not None else Rejection(Reason.SCHEMA_VIOLATION)

    # -- the batch ----------------------------------------------------------------
    def process(self, records: Sequence[InputRecord]) -> BatchResult:
        """Protect a batch. Raises KeyUnavailableError (and returns nothing) if keys can't be had.
        With a key-store guard (``deks.guard``) the batch is returned only if Redis kept its
        identity from before to after it (:mod:`stream.crypto.keystore`); otherwise redone."""
        guard = self.deks.guard
        if guard is None:
            return self._process(records)
        return guard.run(lambda: self._process(records))

    def _process(self, records: Sequence[InputRecord]) -> BatchResult:
        now = self.clock()
        epoch = self.deks.epoch_of(now)
        decode = self._decode
        decoded = [decode(rec.value, rec.headers) for rec in records]
        accepted = [d for d in decoded if not isinstance(d, Rejection)]
        events = [e for e, _ in accepted]
        any_rejects = len(events) != len(decoded)

        # Tokens per batch, memoized: the same people and sessions recur within and across batches.
        tokenize = self.tokenizer.tokens
        expire_at = self.deks.expire_at(epoch)  # person tokens (tk2) live as long as the batch's keys
        subjects = tokenize(self._subject_domain, [e[self.subject_field] for e in events], expire_at=expire_at)
        plans = {id(p): p for _, p in accepted}
        for plan in plans.values():
            mine = events if len(plans) == 1 else [e for e, p in accepted if p is plan]
            for name, domain in plan.other_tokens:
                present = [e for e in mine if e.get(name) is not None]  # (the schema makes it a string)
                for e, tok in zip(present, tokenize(domain, [e[name] for e in present]), strict=True):
                    e[name] = tok
        need_key: set[str] = set()
        for (e, plan), subject in zip(accepted, subjects, strict=True):
            e[self.subject_field] = subject
            for f in plan.encrypt_fields:
                if e.get(f) is not None:
                    need_key.add(subject)
                    break
        rejected_subjects: dict[int, str] = {}
        if any_rejects:
            # a rejected record that still names a person is sealed under that person's key
            owners = [(i, uid) for i, (rec, d) in enumerate(zip(records, decoded, strict=True))
                      if isinstance(d, Rejection) and d.reason is not Reason.TOO_LARGE
                      and (uid := self._parse_subject(rec.value, rec.headers)) is not None]
            if owners:
                toks = tokenize(self._subject_domain, [uid for _, uid in owners], expire_at=expire_at)
                rejected_subjects = {i: tok for (i, _), tok in zip(owners, toks, strict=True)}
                need_key.update(rejected_subjects.values())
            if len(rejected_subjects) < len(decoded) - len(events):
                need_key.add(QUARANTINE_SUBJECT)

        try:
            keys: dict[str, DataKey] = self.deks.keys_for(need_key, epoch) if need_key else {}
        except SubjectErasedError as exc:  # erased since they were tokenized: held, and on the retry
            for subject in exc.subjects:  # the person's next token (their tk2 secret is gone)
                self.tokenizer.forget(subject)
                self.deks.invalidate(subject)
            raise
        result = BatchResult(keys_requested=len(need_key))
        self._protect_all(accepted, subjects, keys, result.protected)
        if self.pass_headers:
            self._carry_headers(records, decoded, result)
        if any_rejects:
            rejected_at = datetime.fromtimestamp(now, UTC).isoformat().replace("+00:00", "Z")
            for i, (rec, d) in enumerate(zip(records, decoded, strict=True)):
                if isinstance(d, Rejection):
                    owner = rejected_subjects.get(i, QUARANTINE_SUBJECT)
                    result.dead_letters.append(self._dead_letter(rec, d, keys.get(owner), rejected_at))
                    result.reasons[d.reason.value] += 1
        return result

    def _carry_headers(self, records: Sequence[InputRecord], decoded: list[Any], result: BatchResult) -> None:
        allowed, j = self.pass_headers, 0
        for rec, d in zip(records, decoded, strict=True):
            if isinstance(d, Rejection):
                continue
            if rec.headers:
                kept = [(k, v) for k, v in rec.headers if k.lower() in allowed]
                if kept:
                    result.headers[j] = kept
            j += 1

    def _parse_subject(self, value: bytes | None, headers: Sequence[tuple[str, bytes | None]] | None = None,
                       ) -> str | None:
        """The subject (user_id) of a rejected record, if it names one the schema could accept:
        parsed as far as it goes (Schema Registry frames, Connect envelopes, a BOM, numbers out of range)."""
        if not value:
            return None
        doc: Any = None
        try:
            framed = self._frame(value, headers)
        except Exception:  # the registry is down: the batch is held anyway
            framed = None
        if framed is not None:
            resolved, payload = framed
            if isinstance(resolved, Resolved) and resolved.avro is not None:
                with contextlib.suppress(Exception):
                    doc = decode_avro(resolved, payload)
            else:
                doc = lenient_json(payload)
        else:
            doc = lenient_json(value)
        if is_envelope(doc):
            doc = doc["payload"]
        uid = doc.get(self.subject_field) if isinstance(doc, dict) else None
        if type(uid) is not str or not 0 < len(uid) <= self._subject_max_len:
            return None
        try:  # the fallback parser keeps lone surrogates ("\udc00"): no person, quarantine
            uid.encode("utf-8")
        except UnicodeEncodeError:
            return None
        return uid

    def _protect_all(self, accepted: list[tuple[dict[str, Any], _Plan]], subjects: list[str],
                     keys: dict[str, DataKey], protected: list[tuple[bytes, bytes]]) -> None:
        """The batch's events (tokens in place; the decoded dicts are the gateway's own) encrypted,
        dropped and encoded: ``{"_schema": .., **event}`` as :meth:`_protect` gives it, byte for byte."""
        jobs = []
        for (e, plan), subject in zip(accepted, subjects, strict=True):
            key = keys.get(subject)
            if key is not None:
                jobs.append((key, e, plan.sealed))
            else:  # no key was asked for: every encrypted field is absent or null
                assert all(e.get(name) is None for name in plan.encrypt_fields)
        encrypt_many(jobs, schema_id=self.schema_id)
        head, dumps, schema_id = self._out_head, orjson.dumps, self.schema_id
        for (e, plan), subject in zip(accepted, subjects, strict=True):
            for name in plan.drop_fields:
                e.pop(name, None)
            if e and "_schema" not in e:  # (the schema's own "_schema" field would override ours)
                protected.append((subject.encode(), head + dumps(e)[1:]))
            else:
                protected.append((subject.encode(), dumps({"_schema": schema_id, **e})))

    def _protect(self, event: dict[str, Any], key: DataKey | None, plan: _Plan | None = None) -> dict[str, Any]:
        """Tokens are already in place (see process); encrypt and drop. Returns the protected dict."""
        plan = plan or self._plan
        out: dict[str, Any] = {"_schema": self.schema_id, **event}
        if key is not None:
            encrypt_fields(key, out, plan.sealed, schema_id=self.schema_id)
        else:  # no key was asked for: every encrypted field is absent or null
            assert all(out.get(name) is None for name in plan.encrypt_fields)
        for name in plan.drop_fields:
            out.pop(name, None)
        return out

    def _dead_letter(self, rec: InputRecord, why: Rejection, key: DataKey | None, rejected_at: str) -> bytes:
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
            meta = self._meta(rec)
            if meta is not None:  # what `dlq replay` needs to re-publish the record as it came
                record["sealed_meta"] = encrypt_value(key, meta, schema_id=DLQ_SCHEMA,
                                                      field_path=_seal_path(rec.topic, rec.partition, rec.offset)
                                                      + _META_SUFFIX)
        if digest is not None:
            record["digest"] = digest
        return orjson.dumps(record)

    @staticmethod
    def _meta(rec: InputRecord) -> str | None:
        """The record's key and headers (JSON, bytes base64'd) when they fit the bounds; headers that do not
        are left out, the key and the Schema Registry id header (``__value_schema_id``: without it a replay
        could not re-frame the record) kept."""
        b64 = base64.b64encode
        key = rec.key if rec.key is not None and len(rec.key) <= MAX_META_BYTES else None
        room = MAX_META_BYTES - len(key or b"")
        k = None if key is None else b64(key).decode()

        def pack(kept: Sequence[tuple[str, bytes | None]]) -> bytes | None:
            if sum(len(name) + len(v or b"") for name, v in kept) > room:
                return None
            text = orjson.dumps({"k": k, "h": [(name, None if v is None else b64(v).decode()) for name, v in kept]})
            return text if len(text) <= MAX_META_JSON else None

        every = list(rec.headers or ())
        ids = [(name, v) for name, v in every if name == VALUE_SCHEMA_ID_HEADER][:1]
        for kept in (every, ids, []) if every else ([],):
            text = pack(kept)
            if text is not None and (kept or key is not None):
                return text.decode()
        return None  # (the key alone always fits: 1,368 base64 characters at most)

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
    b64 = _unseal(record, "sealed", "", deks)
    return None if b64 is None else base64.b64decode(b64)


def _unseal(record: dict[str, Any], field: str, suffix: str, deks: DekProvider) -> str | None:
    """The plaintext of the DLQ record's sealed ``field`` (None if absent), under the key it names."""
    sealed = record.get(field)
    if sealed is None:
        return None
    owner = record.get("sealed_for", QUARANTINE_SUBJECT)
    if type(owner) is not str:
        raise DecryptError()
    header = parse_ciphertext(sealed)
    key = deks.key_for_decrypt(owner, header.epoch, header.key_id)
    src = record["source"]
    path = _seal_path(src["topic"], src["partition"], src["offset"]) + suffix
    plain: str = decrypt_value(key, sealed, schema_id=DLQ_SCHEMA, field_path=path)
    return plain


def unseal_dead_letter_meta(record: dict[str, Any], deks: DekProvider) -> tuple[bytes | None, Headers]:
    """The original key and headers of a DLQ record (``sealed_meta``; none in records written
    before it). Same keys and errors as :func:`unseal_dead_letter`."""
    text = _unseal(record, "sealed_meta", _META_SUFFIX, deks)
    if text is None:
        return None, []
    meta = orjson.loads(text)
    k = meta.get("k")
    headers: Headers = [(str(n), None if v is None else base64.b64decode(v)) for n, v in meta.get("h", [])]
    return (None if k is None else base64.b64decode(k)), headers
