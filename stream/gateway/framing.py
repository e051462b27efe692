"""Confluent wire format, pure parts: framing, registered versions, Avro decoding, compatibility.

A producer using confluent-kafka's serializers frames each value as magic byte ``0`` + a 4-byte
schema id, or magic byte ``1`` + a 16-byte GUID (in the value, or in the ``__value_schema_id``
header with the payload unframed). :class:`SchemaResolver` turns that id into a
:class:`Resolved` version through a ``SchemaRegistryClient`` (a real registry URL, or its
``mock://`` client, pre-registered from ``schemas/``). Ids are immutable in a registry, so each
is fetched once and cached: a new version applies on its first record, without a restart.

The x-privacy policy travels inside the registered schema (docs/contract.md, "Registered
schemas"): on each property of a JSON Schema, on each field of an Avro record (Avro keeps
unknown field attributes; JSON Schema keywords such as ``format`` ride in ``x-jsonschema``).
A version with a property that has no x-privacy is never applied: its records are dead-lettered
with ``policy_missing`` naming the property.
"""

from __future__ import annotations

import io
import struct
import unicodedata
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from stream.errors import SchemaPolicyError, StreamgateError
from stream.schema import POLICIES, EventSchema, Rejection, _schemas_dir

__all__ = [
    "VALUE_SCHEMA_ID_HEADER",
    "RegistryUnavailableError",
    "Resolved",
    "UnsupportedAvroError",
    "avro_from_json_schema",
    "json_schema_from_avro",
    "lineage_subject",
    "policy_gaps",
    "policy_weakenings",
    "unframed",
]

#: Header confluent-kafka's ``header_schema_id_serializer`` writes (magic 1 + GUID, or magic 0 + id).
VALUE_SCHEMA_ID_HEADER = "__value_schema_id"
#: Seconds a "no such schema id" answer is remembered (garbage that looks framed must not hammer the registry).
NEGATIVE_TTL_SECONDS = 5.0

_AVRO_TYPES = {"string": "string", "boolean": "boolean", "int": "integer", "long": "integer",
               "float": "number", "double": "number", "null": "null"}
_JSON_TO_AVRO = {"string": "string", "boolean": "boolean", "integer": "long", "number": "double"}


class UnsupportedAvroError(SchemaPolicyError):
    """An Avro feature the gateway does not apply; ``rule`` names it in the refusal (letters only)."""

    def __init__(self, message: str, *, rule: str) -> None:
        super().__init__(message)
        self.rule = rule


class RegistryUnavailableError(StreamgateError):
    """The schema registry did not answer: the batch is held and retried, never dead-lettered."""


@dataclass(frozen=True, slots=True)
class Resolved:
    """One registered version as the gateway applies it: its checked schema, or why it is refused."""

    kind: str  # "JSON" | "AVRO"
    schema: EventSchema | None
    refusal: Rejection | None = None
    avro: Any = None  # the parsed (fastavro) writer schema of an Avro version
    read: Any = None  # its compiled reader (compile_avro_reader), when the schema is in its subset


def unframed(value: bytes | None) -> bytes | None:
    """A record's JSON without its Confluent frame (magic 0 + id), if it has one (JSON never starts with 0)."""
    if value is not None and value[:1] == b"\x00" and len(value) >= 5:
        return value[5:]
    return value


def lineage_subject(schema_name: str) -> str:
    """The registry subject of a shipped schema's lineage: ``clickstream-event.v1`` -> ``clickstream-event``."""
    head, sep, tail = schema_name.rpartition(".v")
    return head if sep and tail.isdigit() else schema_name


def policy_gaps(document: Mapping[str, Any]) -> list[str]:
    """Properties of a JSON Schema document that carry no x-privacy (they never pass)."""
    return [n for n, s in (document.get("properties") or {}).items()
            if not isinstance(s, Mapping) or "x-privacy" not in s]


#: Policies a base property's policy may become in a registered version (anything else weakens it).
_NOT_WEAKER = {"encrypt": {"encrypt", "drop"}, "token": {"token", "encrypt", "drop"}, "drop": {"drop"},
               "ldp": {"ldp", "token", "encrypt", "drop"}, "clear": set(POLICIES)}


def _fold(name: str) -> str:
    return unicodedata.normalize("NFKC", name).casefold()


def policy_weakenings(base: EventSchema, new: EventSchema) -> list[tuple[str, str, str]]:
    """(property, rule, why) for each way ``new`` weakens ``base``'s policy: a base property whose
    policy becomes weaker (encrypt -> token/clear/ldp, token -> clear/ldp, drop -> kept, ldp -> clear),
    loses its padding or its token domain, or a new property whose name case-folds to a sensitive
    base property (``Email`` beside ``email``). Empty: every base property is as protected."""
    out: list[tuple[str, str, str]] = []
    for name, b in base.fields.items():
        n = new.fields.get(name)
        if n is None:
            continue  # removed: its events carry an unknown field and are refused
        if n.policy not in _NOT_WEAKER[b.policy]:
            out.append((name, "policyWeakened", f"{b.policy} -> {n.policy}"))
        elif b.policy == n.policy == "token" and n.token_domain != b.token_domain:
            out.append((name, "tokenDomain", f"token domain {b.token_domain!r} -> {n.token_domain!r}"))
        elif b.policy == n.policy == "encrypt" and b.pad is not None and n.pad is None:
            out.append((name, "padRemoved", "encrypt loses its padding"))
    sensitive = {_fold(n): n for n in base.sensitive_fields}
    for name in new.fields:
        if name not in base.fields and _fold(name) in sensitive:
            out.append((name, "caseVariant", f"a case variant of the sensitive property {sensitive[_fold(name)]!r}"))
    return out


def _avro_field_type(t: Any) -> tuple[Any, bool]:
    """(JSON Schema type of an Avro field type, nullable)."""
    if isinstance(t, list):
        branches = [b for b in t if b != "null"]
        if len(branches) != 1:
            raise SchemaPolicyError("an Avro union must be [null, T]")
        inner, _ = _avro_field_type(branches[0])
        return inner, "null" in t
    if isinstance(t, Mapping):
        if t.get("type") == "enum":
            return {"type": "string", "enum": list(t["symbols"])}, False
        if t.get("type") == "record":
            return json_schema_from_avro(t), False
        if "logicalType" in t:  # fastavro would decode it to datetime/UUID/Decimal: no JSON type validates that
            raise UnsupportedAvroError(f"Avro logical type {t['logicalType']!r} is not supported in an input schema",
                                       rule="logicalType")
        raise SchemaPolicyError(f"Avro type {t.get('type')!r} is not supported in an input schema")
    if t not in _AVRO_TYPES:
        raise SchemaPolicyError(f"Avro type {t!r} is not supported in an input schema")
    return {"type": _AVRO_TYPES[t]}, False


def json_schema_from_avro(avro: Mapping[str, Any]) -> dict[str, Any]:
    """The JSON Schema an Avro record schema stands for: the gateway validates decoded Avro
    records with it. ``x-privacy`` and ``x-jsonschema`` (extra keywords) come from the fields."""
    if avro.get("type") != "record":
        raise SchemaPolicyError("an Avro input schema must be a record")
    props: dict[str, Any] = {}
    required: list[str] = []
    for f in avro.get("fields", []):
        spec, nullable = _avro_field_type(f["type"])
        extra = dict(f.get("x-jsonschema") or {})
        if "anyOf" in extra:
            spec = {}
        elif nullable and "type" not in extra:
            spec = {**spec, "type": [spec["type"], "null"]}
        prop = {**spec, **extra}
        if "x-privacy" in f:
            prop["x-privacy"] = f["x-privacy"]
        props[f["name"]] = prop
        if not nullable and "default" not in f:
            required.append(f["name"])
    doc: dict[str, Any] = {"type": "object", "additionalProperties": False, "required": required,
                           "properties": props}
    if "doc" in avro:
        doc["description"] = avro["doc"]
    return doc


def avro_from_json_schema(document: Mapping[str, Any], *, name: str, namespace: str = "dev.streamgate") -> dict[str, Any]:
    """An Avro record schema for a JSON Schema input document (the inverse of
    :func:`json_schema_from_avro` on the keywords our schemas use): every property keeps its
    x-privacy; optional properties become ``[null, T]`` with default null."""
    required = set(document.get("required") or [])
    fields: list[dict[str, Any]] = []
    for prop, spec in (document.get("properties") or {}).items():
        types = spec.get("type")
        types = [types] if isinstance(types, str) else list(types or [])
        non_null = [t for t in types if t != "null"]
        if "anyOf" in spec:
            non_null = ["string"]
        if len(non_null) != 1 or non_null[0] not in _JSON_TO_AVRO:
            raise SchemaPolicyError(f"property {prop!r}: no Avro type for {types!r}")
        base: Any = _JSON_TO_AVRO[non_null[0]]
        field: dict[str, Any] = {"name": prop}
        extra = {k: v for k, v in spec.items() if k not in {"x-privacy", "description"}}
        if prop in required:
            field["type"] = base
            extra.pop("type", None)
        else:
            field["type"] = ["null", base]
            field["default"] = None
        if "description" in spec:
            field["doc"] = spec["description"]
        if extra:
            field["x-jsonschema"] = extra
        if "x-privacy" in spec:
            field["x-privacy"] = spec["x-privacy"]
        fields.append(field)
    return {"type": "record", "name": name, "namespace": namespace, "fields": fields}


def _registered_documents(names: Iterable[str] | None = None) -> list[tuple[str, str, str]]:
    """(subject, schema type, schema text) of the input schemas shipped in ``schemas/``, in
    registration order: every ``<lineage>.v<N>.json`` (JSON) and ``.avsc`` (AVRO, subject
    ``<lineage>-avro``), by version."""
    out: list[tuple[int, str, str, str, str]] = []
    for path in sorted(Path(_schemas_dir()).iterdir()):
        stem, ext = path.stem, path.suffix
        if ext not in {".json", ".avsc"}:
            continue
        lineage = lineage_subject(stem)
        if lineage == stem or (names is not None and lineage not in names):
            continue
        text = path.read_text(encoding="utf-8")
        if ext == ".json" and "x-privacy" not in text:
            continue  # an output schema (protected events, DLQ records): not an input
        version = int(stem.rpartition(".v")[2])
        kind = "AVRO" if ext == ".avsc" else "JSON"
        subject = f"{lineage}-avro" if kind == "AVRO" else lineage
        out.append((version, kind, subject, stem, text))
    out.sort(key=lambda r: (r[1] != "JSON", r[0]))  # JSON first (ids 1.. in a mock), versions in order
    return [(subject, kind, text) for _, kind, subject, _, text in out]


def decode_avro(resolved: Resolved, payload: bytes) -> Any:
    """One Avro datum (schemaless) as a dict; nulls of optional fields become absent."""
    if resolved.read is not None:
        return resolved.read(payload)
    import fastavro

    record = fastavro.schemaless_reader(io.BytesIO(payload), resolved.avro, None)
    if isinstance(record, dict):
        return {k: v for k, v in record.items() if v is not None}
    return record


def _varint(b: bytes, pos: int) -> tuple[int, int]:
    """A zigzag varint (Avro int/long) at ``pos``: (value, next position)."""
    shift = result = 0
    while True:
        c = b[pos]
        pos += 1
        result |= (c & 0x7F) << shift
        if not c & 0x80:
            break
        shift += 7
        if shift > 63:
            raise ValueError("varint too long")
    return (result >> 1) ^ -(result & 1), pos


def compile_avro_reader(schema: Mapping[str, Any]) -> Any:
    """A straight-line decoder of one Avro record (binary, schemaless) for the subset our input
    schemas use: fields of string, long/int, double/float, boolean, enum and ``[null, T]`` unions.
    Same values as fastavro's ``schemaless_reader`` except that nulls are absent (the differential
    test in tests/gateway/test_framing.py); about twice as fast. None outside the subset (the
    caller uses fastavro). Malformed input raises ValueError, IndexError or UnicodeDecodeError."""
    env: dict[str, Any] = {"_varint": _varint, "_d": struct.Struct("<d").unpack_from,
                           "_f": struct.Struct("<f").unpack_from}

    def long_into(target: str, ind: str) -> list[str]:
        return [f"{ind}c = b[pos]",
                f"{ind}if c < 128:",
                f"{ind}    {target} = (c >> 1) ^ -(c & 1)",
                f"{ind}    pos += 1",
                f"{ind}else:",
                f"{ind}    {target}, pos = _varint(b, pos)"]

    def value(t: Any, name: str, ind: str, depth: int = 0) -> list[str]:
        if isinstance(t, list):
            if depth or len(t) > 8:
                raise _Unsupported()
            out = long_into("u", ind)
            for i, branch in enumerate(t):
                out.append(f"{ind}{'if' if i == 0 else 'elif'} u == {i}:")
                out += [f"{ind}    pass"] if branch == "null" else value(branch, name, ind + "    ", depth + 1)
            return [*out, f"{ind}else:", f"{ind}    raise ValueError('union index')"]
        if isinstance(t, Mapping):
            if t.get("type") == "enum":
                key = f"_symbols{len(env)}"
                env[key] = tuple(str(x) for x in t["symbols"])
                return [*long_into("n", ind), f"{ind}if n < 0:", f"{ind}    raise ValueError('enum')",
                        f"{ind}out[{name!r}] = {key}[n]"]
            if t.get("logicalType") is not None:
                raise _Unsupported()
            t = t.get("type")
        if t == "string":
            return [*long_into("n", ind), f"{ind}if n < 0:", f"{ind}    raise ValueError('length')",
                    f"{ind}end = pos + n", f"{ind}out[{name!r}] = b[pos:end].decode()", f"{ind}pos = end"]
        if t in ("long", "int"):
            return [*long_into("n", ind), f"{ind}out[{name!r}] = n"]
        if t == "double":
            return [f"{ind}out[{name!r}] = _d(b, pos)[0]", f"{ind}pos += 8"]
        if t == "float":
            return [f"{ind}out[{name!r}] = _f(b, pos)[0]", f"{ind}pos += 4"]
        if t == "boolean":
            return [f"{ind}c = b[pos]", f"{ind}pos += 1", f"{ind}if c > 1:", f"{ind}    raise ValueError('boolean')",
                    f"{ind}out[{name!r}] = c == 1"]
        if t == "null":
            return []
        raise _Unsupported()

    if schema.get("type") != "record":
        return None
    lines = ["def read(b):", "    pos = 0", "    out = {}"]
    try:
        for f in schema.get("fields", []):
            name = f["name"]
            if not isinstance(name, str) or not name.isidentifier():
                return None
            lines += value(f["type"], name, "    ")
    except _Unsupported:
        return None
    lines += ["    if pos != len(b):", "        raise ValueError('trailing or missing bytes')", "    return out"]
    exec(compile("\n".join(lines), "<avro reader>", "exec"), env)
    return env["read"]


class _Unsupported(Exception):
    pass


_LOWER_BOUNDS = ("minLength", "minimum", "exclusiveMinimum", "minItems")
_UPPER_BOUNDS = ("maxLength", "maximum", "exclusiveMaximum", "maxItems")


def _types(spec: Mapping[str, Any]) -> set[str] | None:
    t = spec.get("type")
    if t is None:
        return None
    types = {t} if isinstance(t, str) else set(t)
    if "integer" in types or "number" in types:
        types |= {"integer"} if "number" in types else set()
    return types


def _reads_all_of(reader: Mapping[str, Any], writer: Mapping[str, Any], name: str) -> list[str]:
    """Why a property validated by ``reader`` may refuse a value ``writer`` allowed (empty: it never does)."""
    out: list[str] = []
    rt, wt = _types(reader), _types(writer)
    if rt is not None and (wt is None or not wt <= rt):
        out.append(f"{name}: type {sorted(wt or ['any'])} is not within {sorted(rt)}")
    if "enum" in reader and ("enum" not in writer or not set(writer["enum"]) <= set(reader["enum"])):
        gone = sorted(set(writer.get("enum", [])) - set(reader["enum"]))
        out.append(f"{name}: enum loses {gone}" if gone else f"{name}: enum added")
    for k in _LOWER_BOUNDS:
        if k in reader and (k not in writer or writer[k] < reader[k]):
            out.append(f"{name}: {k} raised to {reader[k]}")
    for k in _UPPER_BOUNDS:
        if k in reader and (k not in writer or writer[k] > reader[k]):
            out.append(f"{name}: {k} lowered to {reader[k]}")
    for k in ("pattern", "format", "const"):
        if k in reader and reader.get(k) != writer.get(k):
            out.append(f"{name}: {k} changed")
    return out


def compatibility_problems(old: Mapping[str, Any], new: Mapping[str, Any], mode: str = "BACKWARD") -> list[str]:
    """Why ``new`` is not ``mode``-compatible with ``old`` (JSON Schema documents of closed objects;
    Avro schemas compared as the JSON Schemas they stand for). BACKWARD: ``new`` validates every
    event ``old`` did; FORWARD: the reverse; FULL: both; NONE: no check."""
    mode = mode.upper()
    if mode == "NONE":
        return []
    if mode == "FULL":
        return compatibility_problems(old, new, "BACKWARD") + compatibility_problems(old, new, "FORWARD")
    reader, writer = (new, old) if mode == "BACKWARD" else (old, new)
    rp, wp = reader.get("properties") or {}, writer.get("properties") or {}
    out = [f"{n}: removed (events that carry it would be refused)" for n in wp if n not in rp]
    out += [f"{n}: newly required" for n in reader.get("required", []) if n not in writer.get("required", [])]
    for n in wp:
        if n in rp:
            out += _reads_all_of(rp[n], wp[n], n)
    return [f"{mode}: {p}" for p in out]
