"""Open LDP domains: a catalog value outside the listed ones passes the gateway and counts as ``_other``."""

from __future__ import annotations

import copy
import json
import random

import orjson
from confluent_kafka.schema_registry import Schema

from stream.ldp.policy import OTHER_VALUE, LdpPolicy
from stream.registry import SchemaResolver
from stream.schema import EventSchema, load_schema, schema_document
from stream.synth import ClickstreamGenerator
from tests.gateway.test_framing import SUBJECT, ctx, json_serializer, make_gateway, recs


def open_document() -> dict:
    doc = copy.deepcopy(schema_document("clickstream-event.v1"))
    category = doc["properties"]["category"]
    # the listed values move to x-privacy.domain: a producer's serializer accepts any value
    category["x-privacy"] = {"policy": "ldp", "open": True, "domain": category.pop("enum")}
    return doc


def test_an_open_domain_passes_new_values_and_closed_ones_still_refuse():
    schema = EventSchema("clickstream-event.v1", open_document())
    ev = next(iter(ClickstreamGenerator(seed=2).events(1)))
    fashion = {**ev, "category": "fashion"}
    assert schema.is_valid(fashion) and schema.check(fashion) is None
    assert not schema.is_valid({**ev, "category": "x" * 65})  # bounded even when open
    assert not load_schema("clickstream-event.v1").is_valid(fashion)  # v1's category stays closed
    assert not schema.is_valid({**ev, "device": "fridge"})  # other enums stay closed


def test_open_domain_values_count_in_other():
    policy = LdpPolicy.from_schema(EventSchema("clickstream-event.v1", open_document()), 2.0)
    cat = next(a for a in policy.attributes if a.name == "category")
    assert cat.domain[-2:] == (OTHER_VALUE, "_none") or OTHER_VALUE in cat.domain
    assert cat.index_of("fashion") == cat.domain.index(OTHER_VALUE)
    assert cat.index_of("books") == cat.domain.index("books")


def test_a_registered_version_opening_the_domain_stops_dead_letters():
    resolver = SchemaResolver.from_url("mock://open-domain", load_schema("clickstream-event.v1"))
    gw, _ = make_gateway(resolver)
    rng = random.Random(4)
    evs = [{**e, "category": "fashion" if rng.random() < 0.3 else e.get("category", "books")}
           for e in ClickstreamGenerator(seed=9).events(200)]
    n_fashion = sum(e["category"] == "fashion" for e in evs)
    before = gw.process(recs([json_serializer(resolver.client, validate=False)(e, ctx()) for e in evs]))
    assert before.reasons == {"schema_violation": n_fashion}
    resolver.client.register_schema(SUBJECT, Schema(json.dumps(open_document()), "JSON"))
    after = gw.process(recs([json_serializer(resolver.client)(e, ctx()) for e in evs]))
    assert not after.dead_letters and len(after.protected) == 200
    assert sum(orjson.loads(v)["category"] == "fashion" for _, v in after.protected) == n_fashion
