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
    """The shipped v1: its category is open (the listed values in x-privacy.domain, no enum)."""
    return copy.deepcopy(schema_document("clickstream-event.v1"))


def closed_document() -> dict:
    """v1 with category closed again (the listed values as its enum): a producer's older version."""
    doc = open_document()
    category = doc["properties"]["category"]
    category["enum"] = category["x-privacy"].pop("domain")
    del category["x-privacy"]["open"]
    return doc


def test_an_open_domain_passes_new_values_and_closed_ones_still_refuse():
    schema = load_schema("clickstream-event.v1")
    assert "enum" not in schema_document("clickstream-event.v1")["properties"]["category"]  # serializers pass it
    ev = next(iter(ClickstreamGenerator(seed=2).events(1)))
    fashion = {**ev, "category": "fashion"}
    assert schema.is_valid(fashion) and schema.check(fashion) is None
    assert not schema.is_valid({**ev, "category": "x" * 65})  # bounded even when open
    assert not EventSchema("clickstream-event.v1", closed_document()).is_valid(fashion)
    assert not schema.is_valid({**ev, "device": "fridge"})  # other enums stay closed


def test_open_domain_values_count_in_other():
    policy = LdpPolicy.from_schema(load_schema("clickstream-event.v1"), 2.0)
    cat = next(a for a in policy.attributes if a.name == "category")
    assert cat.domain[-2:] == (OTHER_VALUE, "_none") and cat.k == 32  # 30 listed + _other + _none
    assert cat.index_of("fashion") == cat.domain.index(OTHER_VALUE)
    assert cat.index_of("books") == cat.domain.index("books")


def test_a_registered_version_that_closes_the_domain_dead_letters_new_values():
    """The registered version decides: a producer framing with a closed version has "fashion"
    refused (schema_violation), the same events framed with the shipped (open) v1 pass."""
    resolver = SchemaResolver.from_url("mock://open-domain", load_schema("clickstream-event.v1"))
    gw, _ = make_gateway(resolver)
    rng = random.Random(4)
    evs = [{**e, "category": "fashion" if rng.random() < 0.3 else e.get("category", "books")}
           for e in ClickstreamGenerator(seed=9).events(200)]
    n_fashion = sum(e["category"] == "fashion" for e in evs)
    opened = gw.process(recs([json_serializer(resolver.client)(e, ctx()) for e in evs]))
    assert not opened.dead_letters and len(opened.protected) == 200
    assert sum(orjson.loads(v)["category"] == "fashion" for _, v in opened.protected) == n_fashion
    resolver.client.register_schema(SUBJECT, Schema(json.dumps(closed_document()), "JSON"))
    closed = gw.process(recs([json_serializer(resolver.client, validate=False)(e, ctx()) for e in evs]))
    assert closed.reasons == {"schema_violation": n_fashion}


def test_estimates_show_other_and_it_covers_the_truth():
    """6,000 people, one event each, 20 % of them in a category the catalog added ("fashion"):
    gateway (open domain) -> privatizer (eps 2) -> window estimate of ``_other``."""
    import os
    import time

    import numpy as np

    from stream.ldp.aggregate import WindowAggregator, merge_records
    from stream.ldp.memo import MemoCache, MemoryMemoStore
    from stream.ldp.privatizer import Privatizer, ProtectedRecord
    from tests.support.clock import Clock

    schema = load_schema("clickstream-event.v1")
    policy = LdpPolicy.from_schema(schema, 2.0)
    rng = random.Random(12)
    events = []
    for i, e in enumerate(ClickstreamGenerator(seed=13, n_users=6000).events(6000)):
        e["user_id"] = f"person-{i}"
        e["category"] = "fashion" if rng.random() < 0.2 else e.get("category", "books")
        events.append(e)
    gw, _ = make_gateway()
    gw = type(gw)(schema, gw.tokenizer, gw.deks, clock=gw.clock)
    res = gw.process(recs([orjson.dumps(e) for e in events]))
    assert not res.dead_letters
    priv = Privatizer(policy, MemoryMemoStore(time.time), memo_key=os.urandom(32), subject_field="user_id",
                      budget_epsilon=1000.0, epoch_seconds=86400, retention_seconds=30 * 86400,
                      rng=np.random.default_rng(5), cache=MemoCache(max_entries=100_000, max_staleness_seconds=30.0),
                      clock=time.time, shuffle_seed=5)
    now_ms = int(time.time() * 1000)
    reports = priv.process([ProtectedRecord(v, now_ms) for _, v in res.protected]).attribute_reports
    agg = WindowAggregator(policy, window_seconds=3600, clock=Clock(time.time()))
    agg.add(reports)
    (cat,) = [r for r in merge_records(policy, [r for w in agg.drain() for r in agg.records(w, worker="t")])
              if r["attribute"] == "category"]
    other = next(v for v in cat["values"] if v["value"] == OTHER_VALUE)
    truth = sum(e["category"] == "fashion" for e in events) / len(events)
    assert abs(other["estimate"] - truth) < 4 * other["std_error"], (other, truth)
    assert other["estimate"] > 3 * other["std_error"]  # clearly there, not noise around zero
