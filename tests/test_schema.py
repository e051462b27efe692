"""Schemas are the source of truth of the privacy policy."""

from __future__ import annotations

import copy
import json

import jsonschema
import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from stream.errors import SchemaPolicyError
from stream.fastcheck import compile_decoder, compile_predicate
from stream.schema import (
    DEFAULT_PAD_BUCKETS,
    POLICIES,
    EventSchema,
    Reason,
    available_schemas,
    load_schema,
    schema_document,
)
from stream.synth import ClickstreamGenerator

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
    category = schema_document(NAME)["properties"]["category"]
    assert len(category["x-privacy"]["domain"]) >= 20 and category["x-privacy"]["open"] is True


def test_protected_schema_is_derived_from_the_input_policy():
    src = load_schema(NAME)
    out = schema_document("protected-event.v1")
    props = out["properties"]
    assert out["additionalProperties"] is False
    for name, f in src.fields.items():
        if f.policy == "drop":
            assert name not in props
        elif f.policy == "token":
            # the subject may be a tk2 pseudonym (pseudonym_tokens); other token fields stay tk1
            assert props[name]["pattern"].startswith("^tk[12]_" if f.subject else "^tk1_")
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
        (_doc_with(**{"quantity__x-privacy": "ldp"}), "domain"),  # only a minimum: no domain
        (_doc_with(**{"page__type": "nonsense"}), "JSON Schema"),
        (_doc_with(**{"page__x-privacy": {"policy": "clear", "pad": True}}), "pad"),
        (_doc_with(**{"email__x-privacy": {"policy": "encrypt", "pad": [64, 32]}}), "pad"),
        (_doc_with(**{"email__x-privacy": {"policy": "encrypt", "pad": []}}), "pad"),
        (_doc_with(**{"email__x-privacy": {"policy": "encrypt", "pad": "64"}}), "pad"),
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
    st.sampled_from([0.0, 3.0, 2.5, -0.0, 1e300]),
    st.lists(st.integers(), max_size=2),
)


_FULL = load_schema(NAME)
_BASE = list(ClickstreamGenerator(seed=2).events(40))
_strings = st.one_of(
    st.text(max_size=8),
    st.sampled_from(["a@b.co", "no-at", "10.0.0.1", "::1", "300.1.1.1", "2026-11-26T10:00:00Z", "2026-13-01T00:00:00Z",
                     "6f1c2e4a-1b2c-4d5e-8f90-123456789abc", "/p/1", "/ bad", "US\n", "usd", "x" * 300]),
)
_events = st.one_of(
    st.dictionaries(st.sampled_from([*_props, "zz"]), _values | _strings, max_size=len(_props) + 1),
    st.builds(lambda ev, ch: {**ev, **ch}, st.sampled_from(_BASE),
              st.dictionaries(st.sampled_from([*_props, "zz"]), _values | _strings, max_size=3)),
    st.builds(lambda ev, drop: {k: v for k, v in ev.items() if k != drop}, st.sampled_from(_BASE), st.sampled_from(list(_props))),
)
_EDGES = [
    None, True, False, 0, 3.0, 2.5, -1, 100_001, 10_001, 1e300, "", "x" * 300, "US\n", "usd", "/ bad", "no-at",
    "::1", "10.0.0.1", "300.1.1.1", "2026-13-01T00:00:00Z", "2026-11-26T10:00:00+01:00", "page_view", [], {},
]


def _agree(event) -> None:
    assert _FULL.is_valid(event) == (_FULL.check(event) is None), event
    assert _FAST.is_valid(event) == (_FAST.check(event) is None), event
    if not any(isinstance(v, str) and v.endswith("\n") for v in event.values()):
        # (the reference uses Python's "$", which also matches before a final newline; we follow
        # ECMA-262, JSON Schema's regex dialect, like fastjsonschema)
        assert _FAST.is_valid(event) == _REF.is_valid(event), event


def test_the_three_validators_agree_on_every_property_edge():
    """Every property of valid events set to every edge value, exhaustively."""
    for base in _BASE[:3]:
        for prop in _props:
            for edge in _EDGES:
                _agree({**base, prop: edge})



@settings(max_examples=600, deadline=None)
@given(_events)
def test_the_three_validators_agree(event):
    """The hot-path predicate, the general validator (fastjsonschema, with formats) and the
    reference (jsonschema 2020-12, formats left aside as annotations) give the same verdict."""
    _agree(event)


_INT_FIELDS = [n for n, spec in _props.items() if spec.get("type") == "integer"]


def _typed(doc):
    return {k: (type(v), v) for k, v in doc.items()} if isinstance(doc, dict) else doc


def _one_pass_agrees(payload: bytes, schema: EventSchema = _FULL) -> bool:
    """The one-pass decoder (msgspec) against orjson + the predicate: it accepts nothing they
    refuse, gives the same values and types, and refuses a valid event only when msgspec reads
    its numbers otherwise (an integral float in an integer field, an integer beyond int64)."""
    fast = schema.decode_valid(payload)
    try:
        ref = orjson.loads(payload)
    except orjson.JSONDecodeError:
        assert fast is None, payload
        return False
    valid = schema.is_valid(ref)
    if fast is not None:
        assert valid, payload
        assert _typed(fast) == _typed(ref), payload
        return True
    if valid:
        odd = [v for k, v in ref.items() if (k in _INT_FIELDS and type(v) is float)
               or (type(v) is int and not -(1 << 63) <= v < 1 << 63)]
        pairs = json.loads(payload, object_pairs_hook=lambda kv: kv)
        assert odd or len(pairs) != len(ref), payload
    return False


# format edges (newlines, case, leap days, prefixes) for the one-pass decoder
_FORMAT_EDGES = ["10.0.0.1\n", "::1\n", "::ffff:10.0.0.1", "1.2.3", "a@b.co\n", "a..b@c.de", "2026-02-29T00:00:00Z",
                 "2028-02-29T00:00:00Z", "2026-11-26T10:00:00Z\n", "2026-11-26t10:00:00z",
                 "6F1C2E4A-1B2C-4D5E-8F90-123456789ABC", "6f1c2e4a1b2c4d5e8f90123456789abc",
                 "x6f1c2e4a-1b2c-4d5e-8f90-123456789abc"]


def test_the_one_pass_decoder_agrees_on_every_property_edge():
    accepted = sum(_one_pass_agrees(orjson.dumps(ev)) for ev in _BASE)
    assert accepted == len(_BASE)  # the generator's events all take the fast path
    for base in _BASE[:3]:
        for prop in _props:
            for edge in [*_EDGES, *_FORMAT_EDGES, 1 << 63, (1 << 63) - 1, 1 << 64 - 1, -(1 << 63), 5.0, "é" * 64,
                         "\U0001f600" * 65]:
                _one_pass_agrees(orjson.dumps({**base, prop: edge}))
                _one_pass_agrees(orjson.dumps({**base, prop: edge}), _FAST)


_RAW_EDGES = [
    b'{"user_id":"a","user_id":"b"}', b'\xef\xbb\xbf{}', b'{"quantity":1E2}', b'{"quantity":1.0}', b'{"price":1e400}',
    b'{"price":NaN}', b'{"price":99999999999999999999999}', b'{"quantity":18446744073709551615}',
    b'{"page":"/\\ud800"}', b'{"page":"/\xff"}', b'[]', b'"x"', b'null', b'{"zz":1}', b'{"page":{"a":1}}', b'{}x',
    b'{"\\u0070age":"/q"}', b'{"page":"/a\\n"}', b'{"page":"/a"} ', b'{"ip":"::1","ip":null}',
    b'{"email":"a@b.co","email":5}', b'{"country":"US\\n"}',
]


@pytest.mark.parametrize("raw", _RAW_EDGES)
def test_the_one_pass_decoder_on_raw_json_edges(raw):
    ok = orjson.dumps({"event_id": "6f1c2e4a-1b2c-4d5e-8f90-123456789abc", "event_type": "page_view",
                       "ts": "2026-11-26T10:00:00Z", "user_id": "u1", "session_id": "s1", "page": "/"})
    assert _one_pass_agrees(ok)
    if raw.startswith(b"{") and raw != b"{}x":  # spliced into a valid event, after and before its fields
        body = raw[1:-1]
        _one_pass_agrees(ok[:-1] + b"," + body + b"}")
        _one_pass_agrees(b"{" + body + b"," + ok[1:])
    _one_pass_agrees(raw)


@settings(max_examples=600, deadline=None)
@given(_events)
def test_the_one_pass_decoder_agrees(event):
    payload = json.dumps(event).encode()  # (non-ASCII as escapes; integers of any size)
    _one_pass_agrees(payload)
    _one_pass_agrees(payload, _FAST)


def test_the_predicate_is_the_compiled_one_and_unknown_keywords_fall_back():
    assert _FULL.is_valid.__name__ == "predicate"
    doc = schema_document(NAME)
    doc["properties"]["page"]["multipleOf"] = 2  # outside the compiled subset
    assert compile_predicate(doc) is None
    assert compile_decoder(doc) is None
    fallback = EventSchema("fallback", doc)
    assert fallback.decode_valid is None
    assert fallback.is_valid.__name__ != "predicate"
    assert fallback.is_valid(_BASE[0]) == (fallback.check(_BASE[0]) is None)


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


def test_pad_defaults_and_the_shipped_buckets():
    assert _parse_pad_of({"policy": "encrypt", "pad": True}) == DEFAULT_PAD_BUCKETS
    assert _parse_pad_of({"policy": "encrypt"}) is None
    fields = load_schema(NAME).fields
    assert fields["email"].pad == (64, 128, 256) and fields["ip"].pad == (48,)
    assert fields["phone"].pad and fields["shipping_address"].pad
    assert fields["user_agent"].pad is None


def _parse_pad_of(x_privacy):
    return EventSchema("padded", _doc_with(**{"email__x-privacy": x_privacy})).fields["email"].pad
