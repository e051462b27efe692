"""Schemas of every topic's records, and the privacy policy they carry.

The JSON Schemas under ``schemas/`` (shipped in the package as
``stream.schemas``) are the source of truth. Each property of an input schema
carries ``x-privacy``, either a string shorthand or an object with a
``policy`` key:

=========  ==================================================================
``token``   replace with a keyed HMAC token (``{"policy": "token", "subject": true}``
            marks the property that identifies the person: its token is the
            protected record's key and every ciphertext is bound to it)
``encrypt`` AEAD under the person's data key (null stays null); ``"pad": true`` or
            ``"pad": [bytes, ...]`` pads the plaintext to length buckets first
            (:data:`DEFAULT_PAD_BUCKETS` for ``true``; see :mod:`stream.crypto.fields`)
``drop``    removed at the gateway
``ldp``     passes the gateway clear inside ``clicks.protected``; the privatizer
            randomizes it (domain from ``enum``/``domain`` or numeric bounds)
``clear``   passes unchanged
=========  ==================================================================

A schema with a property that has no valid ``x-privacy``, that allows
unknown properties, or that names no (or more than one) subject is refused
with :class:`~stream.errors.SchemaPolicyError`: nothing passes through it.

Validation of events uses a compiled validator (fastjsonschema) for speed;
the schema documents themselves are checked against the JSON Schema 2020-12
meta-schema with ``jsonschema``, and a differential test keeps the two
engines in agreement on the keywords our schemas use.
"""

from __future__ import annotations

import enum
import functools
import itertools
import json
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import fastjsonschema
import jsonschema

from stream.errors import SchemaPolicyError
from stream.fastcheck import compile_decoder, compile_predicate

__all__ = [
    "POLICIES",
    "EventSchema",
    "FieldPolicy",
    "Reason",
    "Rejection",
    "available_schemas",
    "load_schema",
    "output_validator",
    "remote_refs",
    "schema_document",
]

POLICIES = frozenset({"token", "encrypt", "drop", "ldp", "clear"})

# Formats fastjsonschema does not know; unknown formats would otherwise be ignored silently.
_CUSTOM_FORMATS: dict[str, str | Callable[[str], bool]] = {
    "uuid": r"^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}\Z",
}


class Reason(enum.StrEnum):
    """Why an input record was dead-lettered. Stable codes: dashboards and alerts key on them."""

    EMPTY = "empty"  # a record with no value (tombstone)
    TOO_LARGE = "too_large"
    NOT_UTF8 = "not_utf8"
    NOT_JSON = "not_json"
    NOT_OBJECT = "not_object"
    UNKNOWN_FIELD = "unknown_field"
    MISSING_FIELD = "missing_field"
    SCHEMA_VIOLATION = "schema_violation"
    NUMBER_OUT_OF_RANGE = "number_out_of_range"  # valid JSON, but a number no double/int64 holds (1e400)
    BAD_FRAMING = "bad_framing"  # a Schema Registry frame (magic byte 0/1) too short to hold its id
    UNKNOWN_SCHEMA = "unknown_schema"  # the frame's schema id/GUID is not in the registry
    UNSUPPORTED_SCHEMA = "unsupported_schema"  # registered, but not a usable input schema (rule: why)
    POLICY_MISSING = "policy_missing"  # the registered version has a property without x-privacy (path)


@dataclass(frozen=True, slots=True)
class Rejection:
    """A validation verdict. ``path`` and ``rule`` only ever name things declared in the
    schema (property names, keywords), never anything the producer sent."""

    reason: Reason
    path: str | None = None
    rule: str | None = None


@dataclass(frozen=True, slots=True)
class FieldPolicy:
    name: str
    policy: str
    subject: bool = False
    token_domain: str | None = None
    options: Mapping[str, Any] = field(default_factory=dict)
    pad: tuple[int, ...] | None = None  # encrypt only: length buckets of the plaintext


#: Buckets of ``"pad": true``: short values hide within 16..256 bytes, longer ones in 256-byte steps.
DEFAULT_PAD_BUCKETS = (16, 32, 64, 128, 256)


def _parse_pad(name: str, policy: str, raw: Any) -> tuple[int, ...] | None:
    if raw is None or raw is False:
        return None
    if policy != "encrypt":
        raise SchemaPolicyError(f"property {name!r}: x-privacy.pad only applies to an 'encrypt' property")
    if raw is True:
        return DEFAULT_PAD_BUCKETS
    ok = isinstance(raw, list) and raw and all(type(b) is int and 2 <= b <= 1 << 20 for b in raw)
    if not ok or any(a >= b for a, b in itertools.pairwise(raw)):
        raise SchemaPolicyError(
            f"property {name!r}: x-privacy.pad must be true or a non-empty increasing list of sizes in bytes"
        )
    return tuple(raw)


def _schemas_dir() -> Path:
    """Installed: the package data folder ``stream/schemas``; in a source tree or an
    editable install: the repository's top-level ``schemas/``."""
    here = Path(__file__).resolve().parent
    packaged = here / "schemas"
    return packaged if packaged.is_dir() else here.parent / "schemas"


def available_schemas() -> list[str]:
    """Names (file stems) of the schemas shipped with streamgate."""
    return sorted(p.name.removesuffix(".json") for p in _schemas_dir().glob("*.json"))


@functools.cache
def _read_document(name: str) -> str:
    path = _schemas_dir() / f"{name}.json"
    if not path.is_file():
        raise SchemaPolicyError(f"unknown schema {name!r}; shipped schemas: {', '.join(available_schemas())}")
    return path.read_text(encoding="utf-8")


def schema_document(name: str) -> dict[str, Any]:
    """A fresh copy of a shipped schema document."""
    doc: dict[str, Any] = json.loads(_read_document(name))
    return doc


def _parse_policy(name: str, spec: Mapping[str, Any]) -> FieldPolicy:
    raw = spec.get("x-privacy")
    if raw is None:
        raise SchemaPolicyError(f"property {name!r} has no x-privacy policy; every property must declare one")
    if isinstance(raw, str):
        raw = {"policy": raw}
    if not isinstance(raw, Mapping) or raw.get("policy") not in POLICIES:
        raise SchemaPolicyError(
            f"property {name!r}: x-privacy must be one of {sorted(POLICIES)} or an object with such a 'policy'"
        )
    policy = str(raw["policy"])
    subject = bool(raw.get("subject", False))
    if subject and policy != "token":
        raise SchemaPolicyError(f"property {name!r}: only a 'token' property can be the subject")
    options = {k: v for k, v in raw.items() if k not in {"policy", "subject", "domain_name"}}
    if policy == "ldp":
        has_domain = "enum" in spec or "domain" in raw
        has_bounds = "minimum" in spec and "maximum" in spec
        if not (has_domain or has_bounds):
            raise SchemaPolicyError(
                f"property {name!r}: an ldp property needs a domain (enum, x-privacy.domain) or minimum/maximum bounds"
            )
    token_domain = str(raw.get("domain_name", name)) if policy == "token" else None
    if policy == "token" and spec.get("type") not in ("string", ["string"]):
        # a null or a number would fail the whole batch at tokenizing (its type, not the record, is wrong)
        raise SchemaPolicyError(
            f"property {name!r}: a token property must be a non-null string (\"type\": \"string\"), "
            f"not {spec.get('type')!r}"
        )
    pad = _parse_pad(name, policy, raw.get("pad"))
    return FieldPolicy(name=name, policy=policy, subject=subject, token_domain=token_domain, options=options,
                       pad=pad)


#: Keywords whose values are data, not subschemas: a "$ref" in them is never resolved.
_DATA_KEYWORDS = frozenset({"enum", "const", "default", "examples", "x-privacy"})
_REF_KEYWORDS = ("$ref", "$dynamicRef", "$recursiveRef")


def remote_refs(document: Any) -> list[tuple[str | None, str]]:
    """(top-level property or None, what) for every reference that could leave the document: a
    ``$ref`` not starting with ``#``, a nested ``$id``/``id`` (it moves where ``#`` refs resolve),
    a root ``$id`` with a fragment. Empty: every reference is local."""
    out: list[tuple[str | None, str]] = []
    root = document.get("$id", document.get("id")) if isinstance(document, Mapping) else None
    if isinstance(root, str) and "#" in root:
        out.append((None, "$id with a fragment"))

    def walk(node: Any, prop: str | None, depth: int) -> None:
        if isinstance(node, list):
            for item in node:
                walk(item, prop, depth + 1)
        elif isinstance(node, Mapping):
            for k in _REF_KEYWORDS:
                ref = node.get(k)
                if isinstance(ref, str) and not ref.startswith("#"):
                    out.append((prop, k))
            if depth and any(isinstance(node.get(k), str) for k in ("$id", "id")):
                out.append((prop, "$id"))
            for k, v in node.items():
                if k in _DATA_KEYWORDS:
                    continue
                walk(v, k if depth == 1 and prop is None else prop, depth + 1)

    walk(document, None, 0)
    return [(p if p in (document.get("properties") or {}) else None, w) for p, w in out]


class _NoRemoteRefs(dict[str, Callable[[str], Any]]):
    """fastjsonschema ``handlers`` for every URI scheme: each refuses (no fetch, whatever the ref)."""

    def __contains__(self, scheme: object) -> bool:
        return True

    def __missing__(self, scheme: str) -> Callable[[str], Any]:
        return self._refuse

    @staticmethod
    def _refuse(uri: str) -> Any:
        raise SchemaPolicyError("a remote $ref is never fetched: an input schema's references must be local (#...)")


_NO_REMOTE_REFS = _NoRemoteRefs()


class EventSchema:
    """A loaded, checked input schema: its validator and its privacy policy."""

    def __init__(self, name: str, document: Mapping[str, Any]) -> None:
        self.name = name
        self.document = document
        try:
            jsonschema.Draft202012Validator.check_schema(document)
        except jsonschema.SchemaError as exc:
            raise SchemaPolicyError(f"schema {name!r} is not a valid JSON Schema 2020-12 document: {exc.message}") from exc
        if document.get("type") != "object" or document.get("additionalProperties") is not False:
            raise SchemaPolicyError(
                f"schema {name!r} must describe an object with additionalProperties: false (unknown fields never pass)"
            )
        remote = remote_refs(document)
        if remote:
            where = f"property {remote[0][0]!r}" if remote[0][0] else "the document"
            raise SchemaPolicyError(f"schema {name!r}: {where} has a non-local {remote[0][1]} "
                                    "(references must be local, #...: nothing is fetched)")
        props = document.get("properties") or {}
        if not props:
            raise SchemaPolicyError(f"schema {name!r} declares no properties")
        self.fields: dict[str, FieldPolicy] = {n: _parse_policy(n, s) for n, s in props.items()}
        subjects = [f.name for f in self.fields.values() if f.subject]
        if len(subjects) != 1:
            raise SchemaPolicyError(
                f"schema {name!r} must mark exactly one token property as the subject (found {len(subjects)})"
            )
        self.subject_field: str = subjects[0]
        #: Token domain of the person (the subject): its tokens are tk2 with ``pseudonym_tokens``.
        self.subject_domain: str = self.fields[self.subject_field].token_domain or self.subject_field
        if self.subject_field not in document.get("required", []):
            raise SchemaPolicyError(f"schema {name!r}: the subject property {self.subject_field!r} must be required")
        self.required: tuple[str, ...] = tuple(document.get("required", []))
        #: ldp properties whose domain is open (``x-privacy.open``): a value outside the enum passes
        #: the gateway and counts as ``_other`` in LDP (stream.ldp.policy)
        self.open_domains = tuple(f.name for f in self.fields.values()
                                  if f.policy == "ldp" and f.options.get("open") is True)
        check_doc: Mapping[str, Any] = document
        if self.open_domains:
            check_doc = {**document, "properties": {
                n: ({"maxLength": 64, **{k: v for k, v in s.items() if k != "enum"}} if n in self.open_domains else s)
                for n, s in props.items()}}
        # The general validator names the failing rule of a rejected event; the hot path asks a
        # predicate compiled for our keyword subset (same verdicts; see stream.fastcheck).
        self._explain = fastjsonschema.compile(
            dict(check_doc), handlers=_NO_REMOTE_REFS, formats=_CUSTOM_FORMATS, use_default=False,
            detailed_exceptions=True,
        )
        self.is_valid: Callable[[Any], bool] = compile_predicate(check_doc, _CUSTOM_FORMATS) or self._explains_valid
        #: JSON bytes -> the valid event in one pass, or None: then orjson and ``is_valid`` decide
        self.decode_valid: Callable[[bytes], dict[str, Any] | None] | None = compile_decoder(check_doc, _CUSTOM_FORMATS)

    def fields_with(self, policy: str) -> list[str]:
        return [f.name for f in self.fields.values() if f.policy == policy]

    @property
    def sensitive_fields(self) -> list[str]:
        """Fields whose plaintext must never reach a topic, a log line, a metric label or an error."""
        return [f.name for f in self.fields.values() if f.policy in {"token", "encrypt", "drop"}]

    def check(self, event: Any) -> Rejection | None:
        """Validate a decoded event. Returns None if valid, else a Rejection naming only schema things."""
        if not isinstance(event, dict):
            return Rejection(Reason.NOT_OBJECT)
        try:
            self._explain(event)
        except fastjsonschema.JsonSchemaValueException as exc:
            return self._rejection(event, exc)
        return None

    def _explains_valid(self, event: Any) -> bool:
        return self.check(event) is None

    def _rejection(self, event: dict[str, Any], exc: fastjsonschema.JsonSchemaValueException) -> Rejection:
        unknown = [k for k in event if k not in self.fields]
        if unknown:
            return Rejection(Reason.UNKNOWN_FIELD)  # never name the unknown key: it is producer data
        missing = [k for k in self.required if k not in event]
        if missing:
            return Rejection(Reason.MISSING_FIELD, path=missing[0], rule="required")
        path = None
        if exc.path and len(exc.path) > 1 and exc.path[1] in self.fields:
            path = str(exc.path[1])
        rule = exc.rule if isinstance(exc.rule, str) and re.fullmatch(r"[A-Za-z]+", exc.rule) else None
        return Rejection(Reason.SCHEMA_VIOLATION, path=path, rule=rule)


@functools.cache
def load_schema(name: str) -> EventSchema:
    """Load and check a shipped input schema by name (e.g. ``clickstream-event.v1``)."""
    return EventSchema(name, schema_document(name))


@functools.cache
def output_validator(name: str) -> Callable[[Any], list[str]]:
    """A strict JSON Schema 2020-12 validator (with format checks) for records streamgate
    *writes* (protected events, DLQ records). Returns the list of error messages (empty = valid).
    Used by tests and by `streamgate` self-checks; not on the hot path."""
    validator = jsonschema.Draft202012Validator(
        schema_document(name), format_checker=jsonschema.Draft202012Validator.FORMAT_CHECKER
    )

    def errors(instance: Any) -> list[str]:
        return [e.message for e in validator.iter_errors(instance)]

    return errors
