"""Confluent Schema Registry: framed records in, the registered version's schema and policy out.

:class:`SchemaResolver` turns a schema id or GUID into a :class:`Resolved` version through a
``SchemaRegistryClient`` (a real registry URL, or its ``mock://`` client, pre-registered from
``schemas/``). The pure parts (framing, Avro, compatibility) are in :mod:`stream.gateway.framing`.
"""

from __future__ import annotations

import io
import json
import struct
import time
import uuid
from collections.abc import Mapping
from typing import Any

from stream.errors import SchemaPolicyError
from stream.gateway.framing import (
    NEGATIVE_TTL_SECONDS,
    VALUE_SCHEMA_ID_HEADER,
    RegistryUnavailableError,
    Resolved,
    UnsupportedAvroError,
    _registered_documents,
    avro_from_json_schema,
    compatibility_problems,
    compile_avro_reader,
    decode_avro,
    json_schema_from_avro,
    lineage_subject,
    policy_gaps,
    policy_weakenings,
)
from stream.schema import EventSchema, Reason, Rejection, remote_refs

__all__ = [
    "VALUE_SCHEMA_ID_HEADER",
    "RegistryUnavailableError",
    "Resolved",
    "SchemaResolver",
    "avro_from_json_schema",
    "compatibility_problems",
    "decode_avro",
    "frame_of",
    "json_schema_from_avro",
    "lineage_subject",
    "policy_gaps",
    "policy_weakenings",
]


class SchemaResolver:
    """Schema ids and GUIDs -> :class:`Resolved` versions, through a ``SchemaRegistryClient``.

    ``base`` is the deployment's input schema (``schema_name``): every version must name the
    same subject property (the person) and its events are protected under the base's name
    (``_schema``), so downstream readers see one lineage."""

    def __init__(self, client: Any, base: EventSchema) -> None:
        self.client = client
        self.base = base
        self._by_id: dict[int, Resolved] = {}
        self._by_guid: dict[bytes, Resolved] = {}
        self._missing: dict[Any, float] = {}
        self._subjects: dict[bytes, tuple[str, int] | None] = {}  # frame -> (subject, id) (re-framing)
        self.negative_ttl = NEGATIVE_TTL_SECONDS

    @classmethod
    def from_url(cls, url: str, base: EventSchema, *, conf: Mapping[str, Any] | None = None,
                 preregister: bool | None = None) -> SchemaResolver:
        """A resolver on the registry at ``url``; a ``mock://`` registry is pre-registered from ``schemas/``."""
        from confluent_kafka.schema_registry import SchemaRegistryClient

        client = SchemaRegistryClient.new_client({"url": url, **(conf or {})})
        resolver = cls(client, base)
        if preregister if preregister is not None else url.startswith("mock://"):
            resolver.preregister()
        return resolver

    def preregister(self) -> dict[str, int]:
        """Register the shipped input schemas (of the base's lineage) in order; returns "subject#version" -> id."""
        from confluent_kafka.schema_registry import Schema

        ids: dict[str, int] = {}
        for subject, kind, text in _registered_documents({lineage_subject(self.base.name)}):
            sid = self.client.register_schema(subject, Schema(text, kind))
            ids[f"{subject}#{self.client.get_latest_version(subject).version}"] = sid
        return ids

    # -- lookups -------------------------------------------------------------------------------
    def by_id(self, schema_id: int) -> Resolved | Rejection:
        hit = self._by_id.get(schema_id)
        if hit is not None:
            return hit
        got = self._fetch(schema_id, lambda: self.client.get_schema(schema_id))
        if isinstance(got, Resolved):
            self._by_id[schema_id] = got
        return got

    def by_guid(self, guid: bytes) -> Resolved | Rejection:
        hit = self._by_guid.get(guid)
        if hit is not None:
            return hit
        got = self._fetch(guid, lambda: self.client.get_schema_by_guid(str(uuid.UUID(bytes=guid))))
        if isinstance(got, Resolved):
            self._by_guid[guid] = got
        return got

    def _fetch(self, key: Any, get: Any) -> Resolved | Rejection:
        from confluent_kafka.schema_registry.error import SchemaRegistryError

        since = self._missing.get(key)
        if since is not None and time.monotonic() - since < self.negative_ttl:
            return Rejection(Reason.UNKNOWN_SCHEMA)
        try:
            schema = get()
        except SchemaRegistryError as exc:
            if exc.http_status_code == 404:
                if len(self._missing) > 10_000:
                    self._missing.clear()
                self._missing[key] = time.monotonic()
                return Rejection(Reason.UNKNOWN_SCHEMA)
            raise RegistryUnavailableError(f"schema registry: HTTP {exc.http_status_code}") from None
        except Exception as exc:  # connection refused, timeouts: the registry is down, hold the batch
            raise RegistryUnavailableError(f"schema registry unreachable: {type(exc).__name__}") from None
        return self.resolve(schema.schema_str, schema.schema_type or "AVRO")

    def resolve(self, text: str, kind: str) -> Resolved:
        """A registered schema's text as the gateway applies it (or its refusal)."""
        kind = kind.upper()
        avro = None
        try:
            doc = json.loads(text)
            if kind == "AVRO":
                import fastavro

                avro = fastavro.parse_schema(doc)
                doc = json_schema_from_avro(doc)
            elif kind != "JSON":
                return Resolved(kind, None, Rejection(Reason.UNSUPPORTED_SCHEMA, rule=kind.lower()))
            gaps = policy_gaps(doc)
            if gaps:
                return Resolved(kind, None, Rejection(Reason.POLICY_MISSING, path=gaps[0], rule="x-privacy"), avro)
            remote = remote_refs(doc)
            if remote:  # nothing a registered version names is ever fetched
                return Resolved(kind, None, Rejection(Reason.UNSUPPORTED_SCHEMA, path=remote[0][0], rule="ref"), avro)
            schema = EventSchema(self.base.name, doc)
        except (SchemaPolicyError, ValueError, TypeError, KeyError) as exc:
            rule = exc.rule if isinstance(exc, UnsupportedAvroError) else type(exc).__name__
            return Resolved(kind, None, Rejection(Reason.UNSUPPORTED_SCHEMA, rule=rule))
        except Exception as exc:  # fastavro's SchemaParseException and friends
            return Resolved(kind, None, Rejection(Reason.UNSUPPORTED_SCHEMA, rule=type(exc).__name__))
        if schema.subject_field != self.base.subject_field or schema.subject_domain != self.base.subject_domain:
            return Resolved(kind, None, Rejection(Reason.UNSUPPORTED_SCHEMA, path=schema.subject_field,
                                                  rule="subject"), avro)
        weakened = policy_weakenings(self.base, schema)
        if weakened:  # a version never lowers the base's protection (its events keep the base's name)
            prop, rule, _ = weakened[0]
            return Resolved(kind, None, Rejection(Reason.UNSUPPORTED_SCHEMA, path=prop, rule=rule), avro)
        reader = compile_avro_reader(json.loads(text)) if kind == "AVRO" else None
        return Resolved(kind, schema, None, avro, reader)

    def register_output(self, subject: str, name: str = "protected-event.v1") -> bytes:
        """Register the output schema ``name`` (JSON Schema) under ``subject`` (idempotent: an
        identical schema keeps its id) and return the frame of its records: magic byte 0 + id.
        Registered open (``additionalProperties``): a registered input version that adds
        properties adds them, already protected by its x-privacy, to the protected events."""
        from confluent_kafka.schema_registry import Schema

        from stream.schema import schema_document

        doc = {**schema_document(name), "additionalProperties": True}
        schema_id = self.client.register_schema(subject, Schema(json.dumps(doc), "JSON"))
        return b"\x00" + struct.pack(">I", schema_id)

    # -- re-framing (dlq replay) -------------------------------------------------------------
    def subject_of(self, frame: bytes) -> tuple[str, int] | None:
        """(Subject, schema id) of the version a frame (magic 0 + id, or 1 + GUID) names; None if none."""
        hit = self._subjects.get(frame)
        if hit is not None or frame in self._subjects:
            return hit
        found: tuple[str, int] | None = None
        if frame[0] == 0 and not type(self.client).__name__.startswith("Mock"):
            schema_id = struct.unpack_from(">I", frame, 1)[0]
            subjects = self.client.get_subjects_by_schema_id(schema_id)
            found = (str(subjects[0]), schema_id) if subjects else None
        else:  # a GUID, or the mock (it serves no ids/{id}/subjects): scan the subjects' versions
            want = (struct.unpack_from(">I", frame, 1)[0] if frame[0] == 0
                    else str(uuid.UUID(bytes=frame[1:])))
            for subject in self.client.get_subjects():
                for v in self.client.get_versions(subject):
                    reg = self.client.get_version(subject, v)
                    if want in (reg.schema_id, reg.guid):
                        found = (str(subject), int(reg.schema_id))
                        break
                if found is not None:
                    break
        self._subjects[frame] = found
        return found

    def reframe(self, value: bytes, headers: list[tuple[str, bytes | None]],
                ) -> tuple[bytes, list[tuple[str, bytes | None]]] | None:
        """A framed record refused by its version (``policy_missing``) re-framed under the latest
        version of its subject, when that one is applied (has a policy for every property) and
        differs. Avro payloads are re-encoded (read with the old writer schema, resolved to the
        new one); JSON payloads keep their bytes. None: not framed, or nothing newer that applies."""
        frame, payload = frame_of(value, headers)
        if frame is None:
            return None
        named = self.subject_of(frame)
        if named is None:
            return None
        subject, schema_id = named
        latest = self.client.get_latest_version(subject)
        if latest.schema_id == schema_id:
            return None
        new, old = self.by_id(latest.schema_id), self.by_id(schema_id)
        if not isinstance(new, Resolved) or new.refusal is not None or not isinstance(old, Resolved):
            return None
        if new.kind != old.kind:
            return None
        if new.kind == "AVRO":
            import fastavro

            datum = fastavro.schemaless_reader(io.BytesIO(payload), old.avro, new.avro)
            out = io.BytesIO()
            fastavro.schemaless_writer(out, new.avro, datum)
            payload = out.getvalue()
        head = b"\x00" + struct.pack(">I", latest.schema_id)
        if any(k == VALUE_SCHEMA_ID_HEADER for k, _ in headers):
            return payload, [(k, head if k == VALUE_SCHEMA_ID_HEADER else v) for k, v in headers]
        return head + payload, headers


def frame_of(value: bytes, headers: list[tuple[str, bytes | None]] | None = None) -> tuple[bytes | None, bytes]:
    """(The frame: magic byte and schema id or GUID, the payload) of a record; (None, value) if unframed."""
    for k, h in headers or ():
        if k == VALUE_SCHEMA_ID_HEADER and h and ((h[0] == 0 and len(h) == 5) or (h[0] == 1 and len(h) == 17)):
            return h, value
    if value[:1] == b"\x00" and len(value) >= 5:
        return value[:5], value[5:]
    if value[:1] == b"\x01" and len(value) >= 17:
        return value[:17], value[17:]
    return None, value
