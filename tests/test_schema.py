"""Schemas are the source of truth of the privacy policy."""

from __future__ import annotations

import copy

import jsonschema
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from stream.errors import SchemaPolicyError
from stream.schema import POLICIES, EventSchema, Reason, available_schemas, load_schema, schema_document

NAME = "clickstream-event.v1"


def test_shipped_schemas_are_valid_2020_12_documents():
    assert {"clickstream-event.v1", "protected-event.v1", "dlq-record.v1"} <= set(available_schemas())
    for name in available_schemas():
        jsonschema.Draft202012Validator.check_schema(schema_document(name))


def test_clickstream_policy_is_the_producers_contract():
    s = load_schema(NAME)
    policy = {n: f.policy for n, f in s.fields.items()}
    assert policy == {
        "event_id": "clear", "event_type": "ldp", "ts": "clear", "user_id": "token", "session_id": "token",
        "email": "encrypt", "phone": "encrypt", "ip": "encrypt", "user_agent": "encrypt", "shipping_address": "encrypt",
        "referrer": "drop", "page": "clear", "product_id": "clear", "currency": "clear", "quantity": "clear",
        "category": "ldp", "price": "ldp", "device": "ldp", "country": "ldp",
    }
    assert s.subject_field == "user_id"
    assert set(s.required) == {"event_id", "event_type", "ts", "user_id", "session_id", "page"}
    assert len(schema_document(NAME)["properties"]["category"]["enum"]) >= 20


def test_protected_schema_is_derived_from_the_input_policy():
    src = load_schema(NAME)
    out = schema_document("protected-event.v1")
    props = out["properties"]
    assert out["additionalProperties"] is False
    for name, f in src.fields.items():
        if f.policy == "drop":
            assert name not in props
        elif f.policy == "token":
            assert props[name]["pattern"].startswith("^tk1_")
        elif f.policy == "encrypt":
            assert props[name]["type"] == ["string", "null"] and props[name]["pattern"].startswith("^sg1")
        else:
            assert name in props


def _doc_with(**changes):
    doc = schema_document(NAME)
    for path, value in changes.items():
        prop, _, key = path.partition("__")
        if value is None:
            doc["properties"][prop].pop(key)
        else:
            doc["properties"][prop][key] = value
    return doc


@pytest.mark.parametrize(
    ("doc", "needle"),
    [
        ({**schema_document(NAME), "additionalProperties": True}, "additionalProperties"),
        (_doc_with(**{"email__x-privacy": None}), "no x-privacy"),
        (_doc_with(**{"email__x-privacy": "publish"}), "x-privacy must be"),
        (_doc_with(**{"user_id__x-privacy": "token"}), "subject"),
        (_doc_with(**{"email__x-privacy": {"policy": "encrypt", "subject": True}}), "subject"),
        (_doc_with(**{"quantity__x-privacy": "ldp", "quantity__maximum": None}), "domain"),
        (_doc_with(**{"page__type": "nonsense"}), "JSON Schema"),
    ],
)
def test_a_schema_without_a_complete_policy_is_refused(doc, needle):
    with pytest.raises(SchemaPolicyError, match=needle):
        EventSchema("broken", doc)


def test_unknown_schema_name():
    with pytest.raises(SchemaPolicyError, match="unknown schema"):
        load_schema("nope.v9")


def test_policies_are_the_documented_five():
    assert frozenset({"token", "encrypt", "drop", "ldp", "clear"}) == POLICIES


def _strip_formats(node):
    if isinstance(node, dict):
        return {k: _strip_formats(v) for k, v in node.items() if k != "format"}
    if isinstance(node, list):
        return [_strip_formats(v) for v in node]
    return node


_DOC = _strip_formats(schema_document(NAME))
_FAST = EventSchema("no-formats", copy.deepcopy(_DOC))
_REF = jsonschema.Draft202012Validator(_DOC)
_props = schema_document(NAME)["properties"]
_values = st.one_of(
    st.none(), st.booleans(), st.integers(-5, 200_000), st.floats(-1, 200_000, allow_nan=False),
    st.text(max_size=6), st.sampled_from(["page_view", "purchase", "US", "mobile", "electronics", "/p/1", "EUR", "ZZZ"]),
    st.lists(st.integers(), max_size=2),
)


@settings(max_examples=400, deadline=None)
@given(st.dictionaries(st.sampled_from([*_props, "zz"]), _values, max_size=len(_props) + 1))
def test_compiled_validator_agrees_with_the_reference_implementation(event):
    """fastjsonschema (hot path) and jsonschema 2020-12 (reference) agree on our keywords."""
    assert (_FAST.check(event) is None) == _REF.is_valid(event)


@pytest.mark.parametrize(
    ("field", "value", "reason"),
    [
        ("event_id", "not-a-uuid", Reason.SCHEMA_VIOLATION),
        ("ts", "2026-13-40T25:00:00Z", Reason.SCHEMA_VIOLATION),
        ("email", "no-at-sign", Reason.SCHEMA_VIOLATION),
        ("ip", "300.1.1.1", Reason.SCHEMA_VIOLATION),
        ("country", "usa", Reason.SCHEMA_VIOLATION),
        ("price", 100_001, Reason.SCHEMA_VIOLATION),
        ("quantity", True, Reason.SCHEMA_VIOLATION),
    ],
)
def test_formats_are_enforced(field, value, reason):
    ok = {"event_id": "6f1c2e4a-1b2c-4d5e-8f90-123456789abc", "event_type": "page_view", "ts": "2026-11-26T10:00:00Z",
          "user_id": "u1", "session_id": "s1", "page": "/"}
    s = load_schema(NAME)
    assert s.check(ok) is None
    rejection = s.check({**ok, field: value})
    assert rejection is not None and rejection.reason == reason and rejection.path == field
