"""Schema Registry framing, Connect envelopes, evolution and the typed reasons, in the pure core.

Records are framed by confluent-kafka's own serializers against its mock registry: the same
client the gateway's resolver asks (no broker here; tests/apps/test_gateway_framing.py runs
them on the real one)."""

from __future__ import annotations

import copy
import json
import struct

import orjson
import pytest
from confluent_kafka.schema_registry import Schema, SchemaRegistryClient, header_schema_id_serializer
from confluent_kafka.schema_registry.avro import AvroSerializer
from confluent_kafka.schema_registry.json_schema import JSONSerializer
from confluent_kafka.serialization import MessageField, SerializationContext

from stream.config import Settings
from stream.crypto.deks import DekProvider, MemoryKeyStore
from stream.crypto.keyring import Keyring
from stream.crypto.kms import LocalKMS
from stream.crypto.tokens import Tokenizer
from stream.gateway.core import QUARANTINE_SUBJECT, Gateway, RawRecord, unseal_dead_letter
from stream.registry import SchemaResolver, avro_from_json_schema, json_schema_from_avro
from stream.schema import load_schema, output_validator, schema_document
from stream.synth import ClickstreamGenerator
from tests.support.clock import Clock

SCHEMA = load_schema("clickstream-event.v1")
SUBJECT = "clickstream-event"


def v2_document(*, with_policy: bool) -> dict:
    """v1 plus an optional non-PII utm_campaign, a PII pair and a nested context object."""
    doc = copy.deepcopy(schema_document("clickstream-event.v1"))
    doc["title"] = "clickstream-event.v2"
    props = doc["properties"]
    props["utm_campaign"] = {"type": "string", "maxLength": 128, "x-privacy": "clear"}
    props["customer_name"] = {"type": ["string", "null"], "maxLength": 256, "x-privacy": {"policy": "encrypt"}}
    props["billing_email"] = {"type": ["string", "null"], "maxLength": 254, "x-privacy": {"policy": "encrypt"}}
    props["context"] = {"type": "object", "properties": {"app": {"type": "string"}}, "x-privacy": "drop"}
    if not with_policy:
        del props["billing_email"]["x-privacy"]
    return doc


def make_gateway(resolver: SchemaResolver | None = None, **kw):
    keyring = Keyring.generate()
    clock = Clock()
    store = MemoryKeyStore(clock=clock)
    deks = DekProvider(store, LocalKMS(keyring), epoch_seconds=86400, retention_seconds=30 * 86400,
                       max_staleness_seconds=30, max_entries=10_000, clock=clock)
    gw = Gateway(SCHEMA, Tokenizer(keyring), deks, max_event_bytes=64 * 1024, clock=clock, resolver=resolver, **kw)
    return gw, deks


@pytest.fixture
def resolver() -> SchemaResolver:
    return SchemaResolver.from_url("mock://test-framing", SCHEMA)


def ctx(headers=None) -> SerializationContext:
    return SerializationContext("clicks.raw", MessageField.VALUE, headers)


def json_serializer(client: SchemaRegistryClient, **conf) -> JSONSerializer:
    return JSONSerializer(None, client, conf={"auto.register.schemas": False, "use.latest.version": True,
                                              "subject.name.strategy": lambda *_: SUBJECT, **conf})


def avro_serializer(client: SchemaRegistryClient) -> AvroSerializer:
    return AvroSerializer(client, None, conf={"auto.register.schemas": False, "use.latest.version": True,
                                              "subject.name.strategy": lambda *_: SUBJECT + "-avro"})


def recs(values, headers=None) -> list[RawRecord]:
    return [RawRecord("clicks.raw", 0, i, v, 1_800_000_000_000, headers) for i, v in enumerate(values)]


EVENTS = list(ClickstreamGenerator(seed=21).events(300))


def plain_outputs(events) -> list[dict]:
    """What the gateway makes of the same events as plain JSON (tokens differ per gateway: compared
    field by field on what is not keyed)."""
    gw, _ = make_gateway()
    return [orjson.loads(v) for _, v in gw.process(recs([orjson.dumps(e) for e in events])).protected]


def same_protection(got: list[dict], want: list[dict]) -> None:
    check = output_validator("protected-event.v1")
    assert len(got) == len(want)
    for g, w in zip(got, want, strict=True):
        assert check(g) == []
        assert set(g) == set(w)
        for k, v in w.items():
            if isinstance(v, str) and v.startswith(("tk1_", "tk2_", "sg1.")):
                assert g[k][:4] == v[:4] and g[k] != v  # tokenized / encrypted, never the plaintext
            else:
                assert g[k] == v, k


def test_json_schema_frames_by_id_are_protected_like_plain_json(resolver):
    ser = json_serializer(resolver.client)
    framed = [ser(e, ctx()) for e in EVENTS]
    assert all(f[0] == 0 and struct.unpack(">I", f[1:5])[0] == 1 for f in framed)
    gw, _ = make_gateway(resolver)
    result = gw.process(recs(framed))
    assert not result.dead_letters
    same_protection([orjson.loads(v) for _, v in result.protected], plain_outputs(EVENTS))


def test_avro_frames_are_protected_like_plain_json(resolver):
    ser = avro_serializer(resolver.client)
    framed = [ser(e, ctx()) for e in EVENTS]
    gw, _ = make_gateway(resolver)
    result = gw.process(recs(framed))
    assert not result.dead_letters, result.reasons
    # Avro has no "absent": a null optional field is absent in the protected event too
    want = [{k: v for k, v in e.items() if v is not None} for e in EVENTS]
    same_protection([orjson.loads(v) for _, v in result.protected], plain_outputs(want))


def test_guid_in_the_schema_id_header_and_in_the_value(resolver):
    ser = json_serializer(resolver.client, **{"schema.id.serializer": header_schema_id_serializer})
    headers: list = []
    value = ser(EVENTS[0], ctx(headers))
    assert value[:1] == b"{" and headers[0][0] == "__value_schema_id" and headers[0][1][0] == 1
    guid_framed = headers[0][1] + value  # magic 1 + GUID in the value itself
    gw, _ = make_gateway(resolver)
    result = gw.process([RawRecord("clicks.raw", 0, 0, value, None, headers),
                         RawRecord("clicks.raw", 0, 1, guid_framed, None)])
    assert len(result.protected) == 2 and not result.dead_letters


def test_unknown_ids_and_short_frames_are_typed_and_sealed_under_the_person(resolver):
    gw, deks = make_gateway(resolver)
    ev = EVENTS[0]
    unknown = b"\x00\x00\x00\x03\xe7" + orjson.dumps(ev)
    result = gw.process(recs([unknown, b"\x00\x00\x01"]))
    dls = [orjson.loads(d) for d in result.dead_letters]
    assert [d["reason"] for d in dls] == ["unknown_schema", "bad_framing"]
    assert dls[0]["sealed_for"].startswith("tk") and dls[1]["sealed_for"] == QUARANTINE_SUBJECT
    assert unseal_dead_letter(dls[0], deks) == unknown
    assert all(output_validator("dlq-record.v1")(d) == [] for d in dls)


def test_without_a_registry_frames_stay_dead_letters():
    gw, _ = make_gateway(None)
    result = gw.process(recs([b"\x00\x00\x00\x00\x01" + orjson.dumps(EVENTS[0])]))
    assert orjson.loads(result.dead_letters[0])["reason"] == "not_json"


@pytest.mark.parametrize("with_policy", [True, False])
def test_a_v2_applies_on_its_first_record_only_with_a_policy_for_every_new_field(resolver, with_policy):
    gw, deks = make_gateway(resolver)
    v1 = json_serializer(resolver.client)(EVENTS[0], ctx())
    assert len(gw.process(recs([v1])).protected) == 1
    resolver.client.register_schema(SUBJECT, Schema(json.dumps(v2_document(with_policy=with_policy)), "JSON"))
    ev2 = {**EVENTS[1], "utm_campaign": "spring", "customer_name": "Ada Lovelace",
           "billing_email": "ada@example.org", "context": {"app": "ios"}}
    framed = [json_serializer(resolver.client)(e, ctx()) for e in (ev2, EVENTS[2])]
    assert framed[0][1:5] == framed[1][1:5] != v1[1:5]  # the v2 id
    result = gw.process(recs([*framed, v1]))
    if with_policy:
        assert not result.dead_letters
        out = orjson.loads(result.protected[0][1])
        assert out["utm_campaign"] == "spring" and "context" not in out
        assert out["customer_name"].startswith("sg1.") and out["billing_email"].startswith("sg1.")
        assert b"Ada" not in result.protected[0][1] and b"ada@" not in result.protected[0][1]
        assert out["_schema"] == "clickstream-event.v1"  # one lineage downstream
    else:
        assert len(result.protected) == 1  # the v1 record
        dls = [orjson.loads(d) for d in result.dead_letters]
        assert [(d["reason"], d["path"]) for d in dls] == [("policy_missing", "billing_email")] * 2
        assert all(d["sealed_for"].startswith("tk") for d in dls)  # sealed under each person's key
        assert unseal_dead_letter(dls[0], deks) == framed[0]


def test_reframe_moves_a_policy_missing_record_to_the_latest_version_once_it_has_a_policy(resolver):
    """dlq replay's re-framing: value-framed and header-framed records of a version without a policy
    pass once re-framed under a later version that has one; while none has, there is nothing to do."""
    gw, _ = make_gateway(resolver)
    resolver.client.register_schema(SUBJECT, Schema(json.dumps(v2_document(with_policy=False)), "JSON"))
    ev = {**EVENTS[1], "billing_email": "ada@example.org"}
    in_value = json_serializer(resolver.client)(ev, ctx())
    headers: list = []
    in_header = json_serializer(resolver.client, **{"schema.id.serializer": header_schema_id_serializer})(
        ev, ctx(headers))
    refused = gw.process([*recs([in_value]), RawRecord("clicks.raw", 0, 1, in_header, None, headers)])
    assert [orjson.loads(d)["reason"] for d in refused.dead_letters] == ["policy_missing"] * 2
    assert resolver.reframe(in_value, []) is None and resolver.reframe(in_header, headers) is None
    assert resolver.reframe(orjson.dumps(ev), []) is None  # not framed
    resolver.client.register_schema(SUBJECT, Schema(json.dumps(v2_document(with_policy=True)), "JSON"))
    v3 = resolver.client.get_latest_version(SUBJECT).schema_id
    (value, same), (payload, moved) = resolver.reframe(in_value, []), resolver.reframe(in_header, headers)
    assert value == b"\x00" + struct.pack(">I", v3) + in_value[5:] and same == []
    assert payload == in_header and moved == [("__value_schema_id", b"\x00" + struct.pack(">I", v3))]
    passed = gw.process([*recs([value]), RawRecord("clicks.raw", 0, 1, payload, None, moved)])
    assert not passed.dead_letters and len(passed.protected) == 2


def test_unframed_drops_a_frame_and_leaves_plain_json_alone():
    from stream.gateway.framing import unframed

    body = orjson.dumps(EVENTS[0])
    assert unframed(b"\x00\x00\x00\x00\x07" + body) == body
    assert unframed(body) == body and unframed(None) is None and unframed(b"") == b""


def test_output_framing_registers_once_and_refuses_to_start_without_a_registry(resolver):
    from stream.apps.engine import GatewayEngine
    from stream.config import Settings
    from stream.errors import ConfigError

    head = resolver.register_output("clicks.protected-value")
    assert head == resolver.register_output("clicks.protected-value")  # idempotent: same id on a restart
    registered = resolver.client.get_latest_version("clicks.protected-value")
    assert head == b"\x00" + struct.pack(">I", registered.schema_id)
    gw, _ = make_gateway(None)
    engine = GatewayEngine(Settings(gateway_frame_output=True, schema_registry_url=""), gw,
                           bootstrap="127.0.0.1:1", metrics=object())
    with pytest.raises(ConfigError, match="SCHEMA_REGISTRY_URL"):
        engine.start()  # before anything is consumed (and before the broker is asked anything)
    assert engine.frame is None


def test_avro_round_trip_of_the_shipped_schema():
    doc = schema_document("clickstream-event.v1")
    shipped = json.loads((__import__("stream.schema", fromlist=["_schemas_dir"])._schemas_dir()
                          / "clickstream-event.v1.avsc").read_text())
    assert shipped == avro_from_json_schema(doc, name="ClickstreamEvent")
    back = json_schema_from_avro(shipped)
    assert set(back["properties"]) == set(doc["properties"]) and set(back["required"]) == set(doc["required"])
    for name, spec in doc["properties"].items():
        assert back["properties"][name]["x-privacy"] == spec["x-privacy"]


def test_connect_json_converter_envelopes_are_unwrapped():
    gw, _deks = make_gateway()
    ev = EVENTS[3]
    envelope = {"schema": {"type": "struct", "fields": [], "optional": False}, "payload": ev}
    bad = {"schema": {"type": "struct"}, "payload": {**ev, "quantity": -1}}
    result = gw.process(recs([orjson.dumps(envelope), orjson.dumps(bad)]))
    assert len(result.protected) == 1 and orjson.loads(result.protected[0][1])["event_id"] == ev["event_id"]
    dl = orjson.loads(result.dead_letters[0])
    assert (dl["reason"], dl["path"]) == ("schema_violation", "quantity")
    assert dl["sealed_for"].startswith("tk")


def test_numbers_out_of_range_have_their_own_reason_and_are_sealed_under_the_person():
    gw, deks = make_gateway()
    base = orjson.dumps(EVENTS[4])[:-1]
    huge = base + b',"price":1e400}'
    big_int = base + b',"quantity":36893488147419103232}'
    nan = base + b',"price":NaN}'
    bom = b"\xef\xbb\xbf" + orjson.dumps(EVENTS[4])
    result = gw.process(recs([huge, big_int, nan, bom]))
    dls = [orjson.loads(d) for d in result.dead_letters]
    assert [d["reason"] for d in dls] == ["number_out_of_range", "number_out_of_range", "not_json", "not_json"]
    person = {d["sealed_for"] for d in (dls[0], dls[1], dls[3])}
    assert len(person) == 1 and person != {QUARANTINE_SUBJECT}
    assert unseal_dead_letter(dls[3], deks) == bom


def test_an_integral_float_in_an_integer_field_leaves_as_an_integer():
    gw, _ = make_gateway()
    raw = orjson.dumps(EVENTS[5])[:-1] + b',"quantity":1e2}'
    value = gw.process(recs([raw])).protected[0][1]
    assert b'"quantity":100' in value and b'"quantity":100.0' not in value
    assert orjson.loads(value)["quantity"] == 100 and type(orjson.loads(value)["quantity"]) is int


def test_trace_headers_pass_only_when_allow_listed():
    gw, _ = make_gateway(pass_headers=frozenset({"traceparent", "tracestate"}))
    tp = b"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
    headers = [("traceparent", tp), ("tracestate", b"congo=t61rcWkgMzE"), ("x-user-email", b"a@b.c")]
    result = gw.process([RawRecord("clicks.raw", 0, 0, orjson.dumps(EVENTS[6]), None, headers),
                         RawRecord("clicks.raw", 0, 1, b"nope", None, headers),
                         RawRecord("clicks.raw", 0, 2, orjson.dumps(EVENTS[7]), None, None)])
    assert result.headers == {0: [("traceparent", tp), ("tracestate", b"congo=t61rcWkgMzE")]}
    gw2, _ = make_gateway()
    assert gw2.process(recs([orjson.dumps(EVENTS[6])], headers)).headers == {}


def test_the_compiled_avro_reader_agrees_with_fastavro():
    """Same values on valid data (nulls absent); on truncated or flipped bytes, never a value
    fastavro would not give (both refuse, or both give the same record)."""
    import io
    import random

    import fastavro

    from stream.registry import compile_avro_reader

    doc = v2_document(with_policy=True)
    del doc["properties"]["context"]
    schema = avro_from_json_schema(doc, name="V2")
    schema["fields"].append({"name": "flag", "type": ["null", "boolean"], "default": None})
    schema["fields"].append({"name": "kind", "type": {"type": "enum", "name": "K", "symbols": ["a", "b"]}})
    schema["fields"].append({"name": "ratio", "type": "float"})
    read, parsed = compile_avro_reader(schema), fastavro.parse_schema(schema)
    assert read is not None
    rng = random.Random(8)
    for e in ClickstreamGenerator(seed=5).events(300):
        e = {**e, "utm_campaign": "x" * rng.randrange(0, 300), "flag": rng.choice([None, True, False]),
             "kind": rng.choice("ab"), "ratio": 0.5, "quantity": rng.choice([None, 0, 63, 64, 10**12, 2**62])}
        buf = io.BytesIO()
        fastavro.schemaless_writer(buf, parsed, e)
        data = buf.getvalue()
        want = {k: v for k, v in fastavro.schemaless_reader(io.BytesIO(data), parsed, None).items() if v is not None}
        assert read(data) == want
        for bad in (data[: rng.randrange(len(data))], bytes([data[0] ^ 0x40]) + data[1:]):
            try:
                got = read(bad)
            except Exception:
                continue
            ref = fastavro.schemaless_reader(io.BytesIO(bad), parsed, None)
            assert got == {k: v for k, v in ref.items() if v is not None}
    assert compile_avro_reader({"type": "record", "name": "N", "fields": [
        {"name": "m", "type": {"type": "map", "values": "string"}}]}) is None


def test_dead_letter_counts_by_every_reason_reach_the_metrics_snapshot():
    """Dead-letter summaries are the metrics (``ops.metrics`` snapshots and the Prometheus
    counter), not ``ops.audit`` (docs/contract.md): every reason, the new ones included, is a label."""
    from stream.ops.metrics import WorkerMetrics
    from stream.schema import Reason

    gw, _ = make_gateway()
    base = orjson.dumps(EVENTS[8])[:-1]
    result = gw.process(recs([base + b',"price":1e400}', b"", b"{"]))
    m = WorkerMetrics("gateway")
    m.dead_lettered_many(result.reasons)
    m.dead_lettered_many({r.value: 1 for r in Reason})
    snap = m.snapshot()["dlq"]
    assert snap["number_out_of_range"] == 2 and snap["empty"] == 2 and snap["not_json"] == 2
    assert set(snap) == {r.value for r in Reason}


def test_dead_letters_keep_the_key_and_headers_sealed_within_the_bound():
    from stream.apps.engine import dead_letter_bound
    from stream.gateway.core import MAX_META_BYTES, unseal_dead_letter_meta

    gw, deks = make_gateway()
    big = b"x" * 60_000
    headers = [("traceparent", b"00-" + b"a" * 50), ("h", None)]
    result = gw.process([
        RawRecord("clicks.raw", 0, 0, b"{bad " + big, None, headers, b"user-1"),
        RawRecord("clicks.raw", 0, 1, b"{bad " + big, None, [("big", b"y" * MAX_META_BYTES)], b"k" * MAX_META_BYTES),
        RawRecord("clicks.raw", 0, 2, b"{bad", None, None, None),
    ])
    dls = [orjson.loads(d) for d in result.dead_letters]
    assert unseal_dead_letter_meta(dls[0], deks) == (b"user-1", headers)
    assert unseal_dead_letter_meta(dls[1], deks) == (b"k" * MAX_META_BYTES, [])  # headers beyond the bound
    assert "sealed_meta" not in dls[2] and unseal_dead_letter_meta(dls[2], deks) == (None, [])
    assert all(len(d) <= dead_letter_bound(64 * 1024) for d in result.dead_letters)
    assert b"user-1" not in result.dead_letters[0] and b"traceparent" not in result.dead_letters[0]


def test_headers_beyond_the_bound_keep_the_schema_id_header_for_replay():
    """Headers too large to seal are left out, but not ``__value_schema_id``: without it `dlq replay` would
    re-publish the payload without its frame, to be judged against the base schema (never fixable)."""
    from stream.gateway.core import MAX_META_BYTES, unseal_dead_letter_meta
    from stream.gateway.framing import VALUE_SCHEMA_ID_HEADER

    gw, deks = make_gateway()
    guid = b"\x01" + bytes(range(16))
    headers = [("big", b"y" * MAX_META_BYTES), (VALUE_SCHEMA_ID_HEADER, guid), ("traceparent", b"00-ab")]
    result = gw.process([RawRecord("clicks.raw", 0, 0, b"{bad", None, headers, b"user-1"),
                         RawRecord("clicks.raw", 0, 1, b"{bad", None, headers, None)])
    metas = [unseal_dead_letter_meta(orjson.loads(d), deks) for d in result.dead_letters]
    assert metas == [(b"user-1", [(VALUE_SCHEMA_ID_HEADER, guid)]), (None, [(VALUE_SCHEMA_ID_HEADER, guid)])]


@pytest.mark.parametrize(("headers", "key"), [
    ([("", b"")] * 100_000, b"k" * 1024),  # 200 KB on the wire, no header bytes counted by MAX_META_BYTES
    ([("", None)] * 100_000, None),
    ([("\x00" * 100, b"")] * 10, b"k"),  # 1,000 characters, which JSON escapes to 6,000 bytes
    ([("€" * 1000, b"v")], b"k"),  # three bytes per character in UTF-8
], ids=["empty", "null", "escaped", "utf8"])
def test_dead_letters_fit_their_bound_whatever_the_headers(headers: list, key: bytes | None) -> None:
    from stream.apps.engine import dead_letter_bound
    from stream.gateway.core import MAX_META_JSON, unseal_dead_letter_meta

    gw, deks = make_gateway()
    value = b"{bad " + b"x" * (64 * 1024 - 5)  # the largest input the gateway seals
    result = gw.process([RawRecord("clicks.raw", 0, 0, value, None, headers, key)])
    (dl,) = result.dead_letters
    assert len(dl) <= dead_letter_bound(64 * 1024)
    assert unseal_dead_letter_meta(orjson.loads(dl), deks) == (key, [])  # the key kept for replay
    fits = [("a" * 10, b"b" * 10)] * 20
    meta = gw._meta(RawRecord("clicks.raw", 0, 1, b"{bad", None, fits, None))
    assert meta is not None and len(meta.encode()) <= MAX_META_JSON and len(orjson.loads(meta)["h"]) == 20


def test_a_registry_that_does_not_answer_holds_the_batch():
    """Fail closed: nothing of the batch is returned (the engine holds it and retries: hold_on)."""
    from stream.apps.engine import GatewayEngine
    from stream.registry import RegistryUnavailableError

    down = SchemaResolver.from_url("http://127.0.0.1:9", SCHEMA, conf={"max.retries": 0})
    gw, _ = make_gateway(down)
    plain = orjson.dumps(EVENTS[9])
    with pytest.raises(RegistryUnavailableError):
        gw.process(recs([plain, b"\x00\x00\x00\x00\x07" + plain]))
    assert len(gw.process(recs([plain])).protected) == 1  # plain JSON needs no registry
    assert RegistryUnavailableError in GatewayEngine.hold_on


def test_the_reader_role_unseals_dead_letters_and_shares_the_replay_ledger_key():
    """`dlq replay` runs with the reader's credential: it unwraps the person's data key, unseals
    value, key and headers, and derives the same ledger key as the master keyring."""
    from stream.crypto.keyring import derive_key
    from stream.gateway.core import unseal_dead_letter_meta

    keyring = Keyring.generate()
    clock = Clock()
    store = MemoryKeyStore(clock=clock)

    def provider(kr):
        return DekProvider(store, LocalKMS(kr), epoch_seconds=86400, retention_seconds=30 * 86400,
                           max_staleness_seconds=30, max_entries=100, clock=clock)

    gw = Gateway(SCHEMA, Tokenizer(keyring), provider(keyring), clock=clock)
    raw = b"\xef\xbb\xbf" + orjson.dumps(EVENTS[10])
    (dl,) = [orjson.loads(d) for d in gw.process(
        [RawRecord("clicks.raw", 1, 7, raw, None, [("traceparent", b"00-ab")], b"key-1")]).dead_letters]
    reader = keyring.for_role("reader")
    assert unseal_dead_letter(dl, provider(reader)) == raw
    assert unseal_dead_letter_meta(dl, provider(reader)) == (b"key-1", [("traceparent", b"00-ab")])
    assert derive_key(reader.derive("dek-id"), "dlq-replay") == derive_key(keyring.derive("dek-id"), "dlq-replay")


def test_a_protected_record_kafka_refuses_is_counted_as_the_dead_letter_it_becomes():
    """Counts that add up: a protected output Kafka refuses for good is replaced by a compact dead letter
    (``undeliverable``, called before its result's delivery is accounted): it counts as dead-lettered
    (too_large), in the worker's stats and metrics, and no longer as protected."""
    from stream.apps.engine import GatewayEngine
    from stream.engine.contract import Record
    from stream.ops.metrics import WorkerMetrics

    gw, _ = make_gateway(None)
    metrics = WorkerMetrics("gateway")
    s = Settings(schema_registry_url="")
    engine = GatewayEngine(s, gw, bootstrap="127.0.0.1:1", metrics=metrics)
    events = [orjson.dumps(e) for e in ClickstreamGenerator(seed=3).events(3)]
    result = engine.process([Record("clicks.raw", 0, i, v) for i, v in enumerate([*events, b"{bad"])])
    protected = [o for o in result.outputs if o.topic == s.topics.protected]
    assert len(protected) == 3
    replacement = engine.undeliverable(protected[0], "MSG_SIZE_TOO_LARGE")
    assert replacement is not None and replacement.topic == s.topics.dlq
    assert result.on_delivered is not None
    result.on_delivered()
    st = engine.stats
    assert (st.protected, st.dead_lettered, st.replaced) == (2, 2, 1)
    assert st.reasons == {"too_large": 1, "not_json": 1}
    snap = metrics.snapshot()
    assert snap["events_out"] == {"protected": 2, "dlq": 2}
    assert snap["dlq"]["too_large"] == 1 and snap["dlq"]["not_json"] == 1


def test_a_replaced_protected_record_of_a_result_a_recovery_dropped_is_not_counted_on_the_next():
    """The result whose protected record was replaced never delivers (a fatal error or an aborted
    transaction drops it; its input is read again): the next result's counts are its own."""
    from stream.apps.engine import GatewayEngine
    from stream.engine.contract import Record
    from stream.ops.metrics import WorkerMetrics

    gw, _ = make_gateway(None)
    metrics = WorkerMetrics("gateway")
    s = Settings(schema_registry_url="")
    engine = GatewayEngine(s, gw, bootstrap="127.0.0.1:1", metrics=metrics)
    records = [Record("clicks.raw", 0, i, orjson.dumps(e)) for i, e in enumerate(ClickstreamGenerator(seed=4).events(3))]
    dropped = engine.process(records)
    engine.undeliverable(next(o for o in dropped.outputs if o.topic == s.topics.protected), "MSG_SIZE_TOO_LARGE")
    engine.reset()  # the clients were recreated: that result is gone, its records are read again
    again = engine.process(records)
    assert again.on_delivered is not None
    again.on_delivered()
    st = engine.stats
    assert (st.protected, st.dead_lettered) == (3, 0) and not st.reasons
    assert metrics.snapshot()["events_out"] == {"protected": 3}
