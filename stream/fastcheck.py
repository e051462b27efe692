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
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from typing import Any

from fastjsonschema.draft04 import DOLLAR_FINDER
from fastjsonschema.draft07 import CodeGeneratorDraft07

__all__ = ["FORMAT_CHECKS", "compile_predicate"]

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
