"""``streamgate schema check``: compatibility and policy gaps before a producer ships a version."""

from __future__ import annotations

import copy
import json

import pytest
from click.testing import CliRunner

from stream.cli import cli
from stream.registry import avro_from_json_schema, compatibility_problems
from stream.schema import schema_document
from tests.gateway.test_framing import v2_document


def run(tmp_path, doc, name="candidate.json", *args):
    path = tmp_path / name
    path.write_text(json.dumps(doc))
    return CliRunner().invoke(cli, ["schema", "check", str(path), *args])


@pytest.fixture(autouse=True)
def _mock_registry(monkeypatch):
    monkeypatch.setenv("STREAMGATE_SCHEMA_REGISTRY_URL", "mock://schema-check")


def test_a_compatible_v2_with_policies_passes(tmp_path):
    res = run(tmp_path, v2_document(with_policy=True))
    assert res.exit_code == 0, res.output
    assert "version 1" in res.output and "billing_email (encrypt)" in res.output and "utm_campaign (clear)" in res.output


def test_a_new_field_without_policy_is_reported_by_name(tmp_path):
    res = run(tmp_path, v2_document(with_policy=False))
    assert res.exit_code == 1
    assert "'billing_email' has no x-privacy" in res.output and "billing_email (no x-privacy)" in res.output


def test_removing_a_field_or_narrowing_an_enum_is_not_backward_compatible(tmp_path):
    doc = copy.deepcopy(schema_document("clickstream-event.v1"))
    del doc["properties"]["phone"]
    doc["properties"]["device"]["enum"].remove("tablet")
    doc["required"].append("product_id")
    res = run(tmp_path, doc)
    assert res.exit_code == 1
    for needle in ("phone: removed", "device: enum loses ['tablet']", "product_id: newly required"):
        assert needle in res.output
    assert run(tmp_path, doc, "c2.json", "--compatibility", "NONE").exit_code == 0


def test_avro_candidates_are_checked_against_the_avro_subject(tmp_path):
    doc = v2_document(with_policy=True)
    del doc["properties"]["context"]  # (nested records: not in the Avro converter)
    avro = avro_from_json_schema(doc, name="ClickstreamEvent")
    res = run(tmp_path, avro, "candidate.avsc")
    assert res.exit_code == 0, res.output
    assert "'clickstream-event-avro' version 1" in res.output


def test_forward_and_full():
    v1, v2 = schema_document("clickstream-event.v1"), v2_document(with_policy=True)
    assert compatibility_problems(v1, v2, "BACKWARD") == []
    forward = compatibility_problems(v1, v2, "FORWARD")  # v1 refuses v2's new fields
    assert any("utm_campaign: removed" in p for p in forward)
    assert compatibility_problems(v1, v2, "FULL") == forward


def test_an_unreachable_registry_is_one_clear_error_not_a_first_version(tmp_path):
    res = run(tmp_path, v2_document(with_policy=True), "c.json", "--registry-url", "http://127.0.0.1:9")
    assert res.exit_code == 1
    assert "RegistryUnavailableError: schema registry unreachable" in res.output
    assert "no version yet" not in res.output
