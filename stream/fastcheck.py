"""A JSON Schema subset compiled to one straight-line Python predicate: the gateway's hot path.

Only the keywords the shipped input schemas use are supported: on the object,
``type: object``, ``properties``, ``required``, ``additionalProperties: false``;
on a property, ``type`` (one or a list), ``enum`` (of strings), ``minLength``,
``maxLength``, ``minimum``, ``maximum``, ``pattern``, ``format`` and ``anyOf``
of such subschemas. Annotations (``description``, ``title``, ``x-*``...) are
ignored. :func:`compile_predicate` returns ``None`` for a schema outside the
subset, and the caller falls back to the general validator.

Semantics follow JSON Schema 2020-12 (``jsonschema`` is the reference; an
integer is an int or an integral float, never a bool; ``pattern`` searches,
with ECMA-262's ``$`` (end of input, not "before a final newline");
length and pattern apply to strings only, bounds to numbers only); ``format``
uses exactly the checks of the general validator, so both accept the same
events. The differential tests in ``tests/test_schema.py`` hold the three
engines to that.

The predicate only says valid / invalid: a rejected event is explained by the
detailed validator, off the hot path.

:func:`compile_decoder` goes one step further for JSON bytes: msgspec decodes and checks
types, enums, lengths, patterns, bounds and required properties in one C pass, and a predicate
checks what is left (formats, ``anyOf``). It may refuse what the predicate accepts (the caller
then asks orjson and the predicate), never the reverse.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Mapping
from typing import Annotated, Any, Literal

import msgspec
from fastjsonschema.draft04 import DOLLAR_FINDER
from fastjsonschema.draft07 import CodeGeneratorDraft07

__all__ = ["FORMAT_CHECKS", "compile_decoder", "compile_predicate"]

_ANNOTATIONS = {"description", "title", "$comment", "examples", "default", "deprecated", "readOnly", "writeOnly"}
_PROPERTY_KEYWORDS = {"type", "enum", "minLength", "maxLength", "minimum", "maximum", "pattern", "format", "anyOf"}
_OBJECT_KEYWORDS = {"type", "properties", "required", "additionalProperties", "$schema", "$id"}
_TYPE_TESTS = {
    "string": "type({v}) is str",
    "null": "{v} is None",
    "boolean": "type({v}) is bool",
    "number": "(type({v}) is int or type({v}) is float)",
    "integer": "(type({v}) is int or (type({v}) is float and {v}.is_integer()))",
    "object": "type({v}) is dict",
    "array": "type({v}) is list",
}


_FormatCheck = re.Pattern[str] | Callable[[str], bool]


def _format_checks(extra: Mapping[str, str | Callable[[str], bool]]) -> dict[str, _FormatCheck]:
    """Format name -> compiled regex (matched at the start, anchored by the pattern) or a function."""
    return {
        name: pattern if callable(pattern) else re.compile(pattern)
        for name, pattern in {**CodeGeneratorDraft07.FORMAT_REGEXS, **extra}.items()
    }


FORMAT_CHECKS = _format_checks({})


class _Unsupported(Exception):
    pass


class _Emitter:
    def __init__(self, formats: Mapping[str, _FormatCheck]) -> None:
        self.lines: list[str] = []
        self.env: dict[str, Any] = {}
        self.formats = formats
        self._n = 0

    def name(self, value: Any, prefix: str) -> str:
        self._n += 1
        key = f"_{prefix}{self._n}"
        self.env[key] = value
        return key

    def condition(self, schema: Mapping[str, Any], v: str) -> str:
        """A Python expression, true iff value ``v`` is valid against ``schema``."""
        unknown = set(schema) - _PROPERTY_KEYWORDS - _ANNOTATIONS
        if any(not k.startswith("x-") for k in unknown):
            raise _Unsupported(sorted(unknown))
        parts: list[str] = []
        types = schema.get("type")
        if types is not None:
            types = [types] if isinstance(types, str) else list(types)
            if any(t not in _TYPE_TESTS for t in types):
                raise _Unsupported(types)
            parts.append("(" + " or ".join(_TYPE_TESTS[t].format(v=v) for t in types) + ")")
        if "enum" in schema:
            members = schema["enum"]
            if not all(isinstance(m, str) for m in members):
                raise _Unsupported("enum of non-strings")
            parts.append(f"(type({v}) is str and {v} in {self.name(frozenset(members), 'enum')})")
        str_checks: list[str] = []
        if "minLength" in schema:
            str_checks.append(f"len({v}) >= {int(schema['minLength'])}")
        if "maxLength" in schema:
            str_checks.append(f"len({v}) <= {int(schema['maxLength'])}")
        if "pattern" in schema:
            # ECMA-262 semantics (JSON Schema's regex dialect): "$" ends the input; Python's "$"
            # also matches before a trailing newline. Same fix as the general validator.
            rx = re.compile(DOLLAR_FINDER.sub(r"\\Z", schema["pattern"]))
            str_checks.append(f"{self.name(rx.search, 'rx')}({v}) is not None")
        if "format" in schema:
            check = self.formats.get(schema["format"])
            if isinstance(check, re.Pattern):  # inlined: no Python frame per check
                str_checks.append(f"{self.name(check.match, 'fmt')}({v}) is not None")
            elif check is not None:  # (unknown formats are annotations)
                str_checks.append(f"{self.name(check, 'fmt')}({v})")
        if str_checks:
            parts.append(f"(type({v}) is not str or ({' and '.join(str_checks)}))")
        num_checks: list[str] = []
        if "minimum" in schema:
            num_checks.append(f"{v} >= {self.name(schema['minimum'], 'min')}")
        if "maximum" in schema:
            num_checks.append(f"{v} <= {self.name(schema['maximum'], 'max')}")
        if num_checks:
            parts.append(f"(not (type({v}) is int or type({v}) is float) or ({' and '.join(num_checks)}))")
        if "anyOf" in schema:
            branches = [self.condition(b, v) for b in schema["anyOf"]]
            parts.append("(" + " or ".join(branches) + ")")
        return " and ".join(parts) if parts else "True"


def compile_predicate(
    document: Mapping[str, Any], formats: Mapping[str, str | Callable[[str], bool]] | None = None
) -> Callable[[Any], bool] | None:
    """``document`` as a predicate ``event -> bool``, or None if it uses keywords outside the subset."""
    if document.get("type") != "object" or document.get("additionalProperties") is not False:
        return None
    if any(k not in _OBJECT_KEYWORDS and k not in _ANNOTATIONS and not k.startswith("x-") for k in document):
        return None
    em = _Emitter(_format_checks(formats or {}))
    props: Mapping[str, Any] = document.get("properties") or {}
    required = list(document.get("required") or [])
    lines = [
        "def predicate(d):",
        "    if type(d) is not dict:",
        "        return False",
        f"    if not {em.name(frozenset(props), 'props')}.issuperset(d):",
        "        return False",
    ]
    if required:
        lines.append("    if not (" + " and ".join(f"{k!r} in d" for k in required) + "):")
        lines.append("        return False")
    try:
        for i, (name, schema) in enumerate(props.items()):
            v = f"v{i}"
            cond = em.condition(schema, v)
            if cond == "True":
                continue
            if name in required:
                lines.append(f"    {v} = d[{name!r}]")
            else:
                lines.append(f"    {v} = d.get({name!r}, _MISSING)")
                cond = f"{v} is _MISSING or ({cond})"
            lines.append(f"    if not ({cond}):")
            lines.append("        return False")
    except _Unsupported:
        return None
    lines.append("    return True")
    env: dict[str, Any] = {**em.env, "_MISSING": object()}
    exec(compile("\n".join(lines), f"<predicate {document.get('title', 'schema')}>", "exec"), env)
    predicate: Callable[[Any], bool] = env["predicate"]
    return predicate


# int64 (msgspec's bound constraints): orjson reads up to 2**64 - 1, so the rest takes the general path
_INT_MIN, _INT_MAX = -(1 << 63), (1 << 63) - 1
_MSGSPEC_CHECKED = {"type", "enum", "minLength", "maxLength", "minimum", "maximum", "pattern"}
_PLAIN_TYPES = {"string", "null", "boolean"}


def _msgspec_type(name: str, schema: Mapping[str, Any]) -> tuple[Any, dict[str, Any]]:
    """The msgspec type enforcing ``schema``'s type, enum, lengths, pattern and bounds, and the
    residual subschema (format, anyOf) the predicate checks after the typed decode."""
    unknown = set(schema) - _PROPERTY_KEYWORDS - _ANNOTATIONS
    if any(not k.startswith("x-") for k in unknown):
        raise _Unsupported(sorted(unknown))
    if "anyOf" in schema:  # decoded as any JSON value, checked whole by the predicate
        branches = schema["anyOf"]
        named = [b.get("type") for b in branches] + [schema.get("type")]
        if any(t is not None and not set([t] if isinstance(t, str) else t) <= _PLAIN_TYPES for t in named) or any(
                "type" not in b for b in branches):
            raise _Unsupported("anyOf beyond strings, null and booleans")
        return Any, dict(schema)
    declared = schema.get("type")
    if declared is None:
        raise _Unsupported("no type")
    types: list[str] = [declared] if isinstance(declared, str) else list(declared)
    residual = {k: v for k, v in schema.items() if k == "format"}
    members: list[Any] = []
    for t in types:
        if t == "string":
            if "enum" in schema:
                members.append(Literal[tuple(schema["enum"])])
                residual.update({k: schema[k] for k in ("minLength", "maxLength", "pattern") if k in schema})
                continue
            meta: dict[str, Any] = {}
            if "minLength" in schema:
                meta["min_length"] = int(schema["minLength"])
            if "maxLength" in schema:
                meta["max_length"] = int(schema["maxLength"])
            if "pattern" in schema:  # ECMA-262 "$", as in the predicate
                meta["pattern"] = DOLLAR_FINDER.sub(r"\\Z", schema["pattern"])
            members.append(Annotated[str, msgspec.Meta(**meta)] if meta else str)
        elif t == "null":
            members.append(None)
        elif t == "boolean":
            members.append(bool)
        elif t in ("integer", "number"):
            lo, hi = schema.get("minimum"), schema.get("maximum")
            ilo = _INT_MIN if lo is None else max(_INT_MIN, math.ceil(lo))
            ihi = _INT_MAX if hi is None else min(_INT_MAX, math.floor(hi))
            members.append(Annotated[int, msgspec.Meta(ge=ilo, le=ihi)])
            if t == "number":  # a JSON float stays a float (msgspec refuses infinities)
                flo, fhi = (None if lo is None else float(lo)), (None if hi is None else float(hi))
                members.append(float if lo is None and hi is None else Annotated[float, msgspec.Meta(ge=flo, le=fhi)])
        else:
            raise _Unsupported(t)
    if "enum" in schema and "string" not in types:
        raise _Unsupported("enum without type string")
    union: Any = members[0]
    for m in members[1:]:
        union = union | m
    return union, residual


def compile_decoder(
    document: Mapping[str, Any], formats: Mapping[str, str | Callable[[str], bool]] | None = None
) -> Callable[[bytes], dict[str, Any] | None] | None:
    """One pass of decode and validation: JSON bytes -> the event (the dict ``orjson.loads`` gives,
    keys in the schema's order) if msgspec's typed decode (types, enums, lengths, patterns, bounds, required, no unknown field)
    and then the predicate of what remains (formats, anyOf) accept it; else None, and the caller
    takes the general path (orjson, the predicate, the detailed validator), which alone explains
    and alone accepts what this refuses. One-sided by construction: whatever msgspec would read
    differently from orjson (a float in an integer field, an integer beyond 64 bits) it refuses.
    None for a document outside the subset. Differential tests: ``tests/test_schema.py``."""
    if document.get("type") != "object" or document.get("additionalProperties") is not False:
        return None
    if any(k not in _OBJECT_KEYWORDS and k not in _ANNOTATIONS and not k.startswith("x-") for k in document):
        return None
    props: Mapping[str, Any] = document.get("properties") or {}
    required = set(document.get("required") or [])
    if not required <= set(props):
        return None
    fields: list[tuple[str, Any] | tuple[str, Any, Any]] = []
    residual: dict[str, Any] = {}
    try:
        for name, schema in props.items():
            typ, rest = _msgspec_type(name, schema)
            fields.append((name, typ) if name in required else (name, typ | msgspec.UnsetType, msgspec.UNSET))
            if rest:
                residual[name] = rest
        # (a TypedDict would give the dict directly, but skips unknown keys: a Struct refuses them)
        struct = msgspec.defstruct("Event", fields, kw_only=True, forbid_unknown_fields=True, gc=False)
        decode = msgspec.json.Decoder(struct).decode
    except (_Unsupported, TypeError, ValueError):
        return None
    check = compile_predicate({"type": "object", "additionalProperties": False,
                               "properties": {n: residual.get(n, {}) for n in props}}, formats)
    if check is None:
        return None
    bad = msgspec.DecodeError
    to_builtins = msgspec.to_builtins  # the dict, without the fields left UNSET

    def decode_valid(payload: bytes) -> dict[str, Any] | None:
        try:
            event: dict[str, Any] = to_builtins(decode(payload))
        except bad:
            return None
        return event if check(event) else None

    return decode_valid
