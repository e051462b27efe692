"""Token properties: a non-null string of another token domain than the person's, or the schema is
refused when loaded (a registered version: its records dead-lettered, never a failed batch)."""

from __future__ import annotations

import copy
import json
import struct
from collections.abc import Sequence

import orjson
import pytest
from confluent_kafka.schema_registry import Schema

from stream.crypto.deks import DekProvider, MemoryKeyStore
from stream.crypto.keyring import Keyring
from stream.crypto.kms import LocalKMS
from stream.crypto.tokens import PseudonymKeys, Tokenizer
from stream.errors import SchemaPolicyError
from stream.gateway.core import Gateway, RawRecord
from stream.registry import SchemaResolver, json_schema_from_avro
from stream.schema import EventSchema, load_schema, output_validator, schema_document
from stream.synth import ClickstreamGenerator
from tests.support.clock import Clock

SCHEMA = load_schema("clickstream-event.v1")
EVENTS = list(ClickstreamGenerator(seed=3).events(4))


class _Persons:
    """tk2 person tokens of the subject's domain from a fixed secret (no store: the core only asks tokens)."""

    domain = SCHEMA.subject_domain

    def __init__(self, keyring: Keyring) -> None:
        self._keys = PseudonymKeys(keyring, self.domain)

    def tokens(self, values: Sequence[str], expire_at: int) -> list[str]:
        return [self._keys.token_from(b"\1" * 32, v) for v in values]

    def clear(self) -> None:
        pass

    def forget(self, token: str) -> int:
        return 0


def _gateway(schema: EventSchema = SCHEMA, resolver: SchemaResolver | None = None) -> Gateway:
    keyring, clock = Keyring.generate(), Clock()
    deks = DekProvider(MemoryKeyStore(clock=clock), LocalKMS(keyring), epoch_seconds=86400,
                       retention_seconds=30 * 86400, max_staleness_seconds=30, max_entries=10_000, clock=clock)
    return Gateway(schema, Tokenizer(keyring, pseudonyms=_Persons(keyring)), deks, clock=clock, resolver=resolver)


def _with(**props: dict) -> dict:
    doc = copy.deepcopy(schema_document("clickstream-event.v1"))
    doc["properties"].update(props)
    return doc


NULLABLE = {"anonymous_id": {"type": ["string", "null"], "maxLength": 64, "x-privacy": "token"}}
INTEGER = {"anonymous_id": {"type": "integer", "x-privacy": "token"}}
UNTYPED = {"anonymous_id": {"maxLength": 64, "x-privacy": "token"}}
PERSON_DOMAIN = {"anonymous_id": {"type": "string", "maxLength": 64,
                                  "x-privacy": {"policy": "token", "domain_name": SCHEMA.subject_domain}}}


@pytest.mark.parametrize("props", [NULLABLE, INTEGER, UNTYPED], ids=["nullable", "integer", "untyped"])
def test_a_token_property_that_may_be_no_string_is_refused_at_load(props):
    with pytest.raises(SchemaPolicyError, match=r"anonymous_id.*non-null string"):
        EventSchema("t", _with(**props))


def test_a_nullable_subject_is_refused_at_load():
    doc = _with()
    doc["properties"]["user_id"]["type"] = ["string", "null"]
    with pytest.raises(SchemaPolicyError, match=r"user_id.*non-null string"):
        EventSchema("t", doc)


def test_the_shipped_input_schemas_still_load():
    EventSchema("t", schema_document("clickstream-event.v1"))
    with open("schemas/clickstream-event.v1.avsc") as f:
        EventSchema("t", json_schema_from_avro(json.load(f)))


def test_a_token_property_in_the_person_domain_is_refused_by_the_gateway():
    with pytest.raises(SchemaPolicyError, match=r"anonymous_id.*token domain"):
        _gateway(EventSchema("t", _with(**PERSON_DOMAIN)))


@pytest.mark.parametrize("props", [NULLABLE, INTEGER, PERSON_DOMAIN], ids=["nullable", "integer", "person_domain"])
def test_a_registered_version_with_a_bad_token_property_dead_letters_its_records(props):
    """Before: TypeError (token value must be str) or ValueError (person tokens need expire_at) for the batch."""
    resolver = SchemaResolver.from_url("mock://test-token-policy", SCHEMA)
    sid = resolver.client.register_schema("clickstream-event", Schema(json.dumps(_with(**props)), "JSON"))
    value = {"anonymous_id": None} if props is NULLABLE else {"anonymous_id": 7 if props is INTEGER else "a-1"}
    framed = b"\0" + struct.pack(">I", sid) + orjson.dumps({**EVENTS[1], **value})
    gw = _gateway(resolver=resolver)
    result = gw.process([RawRecord("clicks.raw", 0, 0, orjson.dumps(EVENTS[0])),
                         RawRecord("clicks.raw", 0, 1, framed)])
    assert len(result.protected) == 1 and len(result.dead_letters) == 1
    assert orjson.loads(result.protected[0][1])["user_id"].startswith("tk2_")
    rec = orjson.loads(result.dead_letters[0])
    assert output_validator("dlq-record.v1")(rec) == []
    assert rec["reason"] == "unsupported_schema" and rec["rule"] == "SchemaPolicyError"
    assert rec["sealed_for"].startswith("tk2_")  # it still names its person
