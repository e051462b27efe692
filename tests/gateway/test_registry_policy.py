"""A registered version never weakens the base schema's x-privacy policy, nor fetches a remote ``$ref``."""

from __future__ import annotations

import copy
import json

import orjson
import pytest
from click.testing import CliRunner
from confluent_kafka.schema_registry import Schema

from stream.cli import cli
from stream.gateway.core import unseal_dead_letter
from stream.registry import SchemaResolver
from stream.schema import output_validator, schema_document
from tests.gateway.test_framing import EVENTS, SCHEMA, SUBJECT, ctx, json_serializer, make_gateway, recs


def _v2(change) -> dict:
    doc = copy.deepcopy(schema_document("clickstream-event.v1"))
    doc["title"] = "clickstream-event.v2"
    change(doc["properties"])
    return doc


def _set(name, policy):
    def change(props):
        props[name]["x-privacy"] = policy
    return change


def _set_typed(name, policy, type_):
    def change(props):
        props[name]["x-privacy"] = policy
        props[name]["type"] = type_
    return change


def _add(name, spec):
    def change(props):
        props[name] = spec
    return change


WEAKENINGS = {
    "encrypt_to_clear": (_set("email", "clear"), "email", "policyWeakened"),
    # (a token property must be a non-null string: the lowered email is made one, so only its policy differs)
    "encrypt_to_token": (_set_typed("email", "token", "string"), "email", "policyWeakened"),
    "token_to_clear": (_set("session_id", "clear"), "session_id", "policyWeakened"),
    "drop_to_clear": (_set("referrer", "clear"), "referrer", "policyWeakened"),
    "token_domain": (_set("session_id", {"policy": "token", "domain_name": "user_id"}), "session_id", "tokenDomain"),
    "pad_removed": (_set("email", "encrypt"), "email", "padRemoved"),
    "case_variant": (_add("Email", {"type": ["string", "null"], "maxLength": 254, "x-privacy": "clear"}),
                     "Email", "caseVariant"),
}


@pytest.fixture
def resolver() -> SchemaResolver:
    return SchemaResolver.from_url("mock://test-registry-policy", SCHEMA)


@pytest.mark.parametrize("case", list(WEAKENINGS))
def test_a_version_that_weakens_a_base_policy_is_refused_and_its_records_sealed(resolver, case):
    change, prop, rule = WEAKENINGS[case]
    gw, deks = make_gateway(resolver)
    sid = resolver.client.register_schema(SUBJECT, Schema(json.dumps(_v2(change)), "JSON"))
    ev = {**EVENTS[0], "email": "alice@example.com", "session_id": "sess-alice", "referrer": "https://r.example/"}
    if case == "case_variant":
        ev["Email"] = "alice@example.com"
    framed = json_serializer(resolver.client)(ev, ctx())
    assert framed[1:5] == sid.to_bytes(4, "big")  # framed with the new version
    result = gw.process(recs([framed]))
    assert not result.protected
    [dl] = [orjson.loads(d) for d in result.dead_letters]
    assert (dl["reason"], dl["path"], dl["rule"]) == ("unsupported_schema", prop, rule)
    assert output_validator("dlq-record.v1")(dl) == []
    assert b"alice@" not in result.dead_letters[0] and b"sess-alice" not in result.dead_letters[0]
    assert unseal_dead_letter(dl, deks) == framed


def test_a_version_with_a_property_without_policy_dead_letters_in_the_dlq_record_form(resolver):
    """policy_missing: its dead letter names the keyword that is missing, in the form dlq-record.v1 allows."""
    gw, deks = make_gateway(resolver)
    resolver.client.register_schema(SUBJECT, Schema(json.dumps(_v2(_add("utm_campaign", {"type": "string"}))), "JSON"))
    framed = json_serializer(resolver.client)({**EVENTS[0], "utm_campaign": "winter"}, ctx())
    result = gw.process(recs([framed]))
    [dl] = [orjson.loads(d) for d in result.dead_letters]
    assert (dl["reason"], dl["path"], dl["rule"]) == ("policy_missing", "utm_campaign", "x-privacy")
    assert output_validator("dlq-record.v1")(dl) == []
    assert unseal_dead_letter(dl, deks) == framed


@pytest.mark.parametrize("change", [
    _set("email", {"policy": "encrypt", "pad": [256]}),  # other buckets: still padded
    _set("email", "drop"),  # stronger
    _set("event_type", "token"),  # ldp -> token: stronger
    _add("Referrer_Host", {"type": "string", "x-privacy": "clear"}),  # not a case variant
    _add("EVENT_ID", {"type": "string", "x-privacy": "clear"}),  # case variant of a clear property
])
def test_additive_or_stronger_versions_still_apply(resolver, change):
    got = resolver.resolve(json.dumps(_v2(change)), "JSON")
    assert got.refusal is None and got.schema is not None


@pytest.fixture
def _mock_registry(monkeypatch):
    monkeypatch.setenv("STREAMGATE_SCHEMA_REGISTRY_URL", "mock://schema-check-policy")


@pytest.mark.usefixtures("_mock_registry")
@pytest.mark.parametrize("case", list(WEAKENINGS))
def test_schema_check_reports_the_weakening_before_it_is_registered(tmp_path, case):
    change, prop, rule = WEAKENINGS[case]
    path = tmp_path / "candidate.json"
    path.write_text(json.dumps(_v2(change)))
    res = CliRunner().invoke(cli, ["schema", "check", str(path), "--compatibility", "NONE"])
    assert res.exit_code == 1, res.output
    assert f"property {prop!r} weakens clickstream-event.v1" in res.output and f"rule {rule}" in res.output


# -- remote $ref: nothing is ever fetched --------------------------------------------------------


@pytest.fixture
def http_server():
    """A real local HTTP server that serves a string schema and records every request it sees."""
    import http.server
    import threading

    seen: list[str] = []

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            seen.append(self.path)
            body = b'{"type": "string"}'
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", seen
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


def _remote(base: str, how: str) -> dict:
    ref = {"$ref": f"{base}/email.json"}
    if how == "nested_id":  # a "#" ref under a nested $id resolves against that (remote) id
        ref = {"$id": f"{base}/", "$ref": "#/$defs/s"}
    elif how == "relative":  # relative to the root $id (https://streamgate.dev/...)
        ref = {"$ref": "email.json"}
    return _v2(lambda props: props["email"].update(ref))


@pytest.mark.parametrize("how", ["absolute", "nested_id", "relative"])
def test_a_version_with_a_remote_ref_is_refused_and_nothing_is_fetched(resolver, http_server, how):
    base, seen = http_server
    gw, deks = make_gateway(resolver)
    doc = _remote(base, how)
    sid = resolver.client.register_schema(SUBJECT, Schema(json.dumps(doc), "JSON"))
    # framed by hand: the serializer would resolve the schema's $refs itself (client side)
    framed = b"\x00" + sid.to_bytes(4, "big") + orjson.dumps({**EVENTS[0], "email": "a@b.example"})
    result = gw.process(recs([framed]))
    assert seen == []
    assert not result.protected
    [dl] = [orjson.loads(d) for d in result.dead_letters]
    assert (dl["reason"], dl["path"], dl["rule"]) == ("unsupported_schema", "email", "ref")
    assert unseal_dead_letter(dl, deks) == framed


def test_the_validator_fetches_nothing_even_when_the_ref_check_is_skipped(http_server, monkeypatch):
    from stream import schema as schema_module
    from stream.errors import SchemaPolicyError

    base, seen = http_server
    monkeypatch.setattr(schema_module, "remote_refs", lambda _doc: [], raising=False)
    with pytest.raises(SchemaPolicyError, match="remote"):
        schema_module.EventSchema("clickstream-event.v1", _remote(base, "absolute"))
    assert seen == []


@pytest.mark.usefixtures("_mock_registry")
def test_schema_check_and_load_refuse_a_remote_ref_without_fetching(tmp_path, http_server):
    from stream.errors import SchemaPolicyError
    from stream.schema import EventSchema

    base, seen = http_server
    path = tmp_path / "candidate.json"
    path.write_text(json.dumps(_remote(base, "absolute")))
    res = CliRunner().invoke(cli, ["schema", "check", str(path), "--compatibility", "NONE"])
    assert res.exit_code == 1, res.output
    assert "property 'email' has a non-local $ref" in res.output
    with pytest.raises(SchemaPolicyError, match="non-local"):
        EventSchema("clickstream-event.v1", _remote(base, "nested_id"))
    assert seen == []


# -- Avro logical types --------------------------------------------------------------------------


@pytest.mark.parametrize("logical", [
    {"type": "long", "logicalType": "timestamp-millis"},
    ["null", {"type": "string", "logicalType": "uuid"}],
])
def test_an_avro_version_with_a_logical_type_is_refused_as_unsupported_not_every_record_a_violation(resolver, logical):
    import io

    import fastavro

    from stream.registry import avro_from_json_schema

    avro = avro_from_json_schema(schema_document("clickstream-event.v1"), name="ClickstreamEvent")
    avro["fields"].append({"name": "seen_at", "type": logical, "x-privacy": "clear",
                           **({"default": None} if isinstance(logical, list) else {})})
    sid = resolver.client.register_schema(SUBJECT + "-avro", Schema(json.dumps(avro), "AVRO"))
    ev = {k: v for k, v in EVENTS[0].items() if v is not None}
    value = "6f1c2e44-6f0e-4f43-9e55-7e4b1d2f0a10" if isinstance(logical, list) else 1_800_000_000_000
    out = io.BytesIO()
    fastavro.schemaless_writer(out, fastavro.parse_schema(avro), {**ev, "seen_at": value})
    framed = b"\x00" + sid.to_bytes(4, "big") + out.getvalue()
    gw, deks = make_gateway(resolver)
    result = gw.process(recs([framed]))
    [dl] = [orjson.loads(d) for d in result.dead_letters]
    assert (dl["reason"], dl["rule"]) == ("unsupported_schema", "logicalType")
    assert output_validator("dlq-record.v1")(dl) == []
    assert unseal_dead_letter(dl, deks) == framed


@pytest.mark.usefixtures("_mock_registry")
def test_schema_check_names_an_avro_logical_type(tmp_path):
    from stream.registry import avro_from_json_schema

    avro = avro_from_json_schema(schema_document("clickstream-event.v1"), name="ClickstreamEvent")
    avro["fields"].append({"name": "seen_at", "type": {"type": "long", "logicalType": "timestamp-millis"},
                           "x-privacy": "clear"})
    path = tmp_path / "candidate.avsc"
    path.write_text(json.dumps(avro))
    res = CliRunner().invoke(cli, ["schema", "check", str(path)])
    assert res.exit_code != 0 and "logical type 'timestamp-millis' is not supported" in res.output, res.output
