"""``streamgate schema check FILE`` on a file that is no schema: one typed error naming the file and
what is wrong, exit 1, no traceback."""

from __future__ import annotations

import pytest
from click.testing import CliRunner

from stream.cli import cli


@pytest.fixture(autouse=True)
def _mock_registry(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("STREAMGATE_SCHEMA_REGISTRY_URL", "mock://schema-check-input")


@pytest.mark.parametrize(("name", "content", "why"), [
    ("broken.json", b'{"type": "object", "properties": {', "not valid JSON (Expecting property name enclosed in "
                                                          "double quotes at line 1 column 35)"),
    ("empty.json", b"", "not valid JSON (Expecting value at line 1 column 1)"),
    ("list.json", b'[{"type": "object"}]', "not a schema: the document is a JSON array, not an object"),
    ("str.json", b'"clickstream"', "not a schema: the document is a JSON string, not an object"),
    ("props.json", b'{"type": "object", "properties": ["a"]}', "not a schema: its properties are a JSON array, not an object"),
    ("prop.json", b'{"type": "object", "properties": {"a": "string"}}',
     "property 'a' is a JSON string, not an object (every property needs its x-privacy policy)"),
    ("latin1.json", '{"description": "caf\u00e9"}'.encode("latin-1"), "not UTF-8 text (an invalid byte at offset 20)"),
    ("enum.avsc", b'{"type": "enum", "name": "E", "symbols": ["a"]}', "an Avro input schema must be a record"),
    ("nofieldtype.avsc", b'{"type": "record", "name": "R", "fields": [{"name": "a"}]}',
     "not a valid Avro record schema (KeyError 'type')"),
])
def test_a_file_that_is_no_schema_is_a_typed_error(tmp_path, name: str, content: bytes, why: str) -> None:
    path = tmp_path / name
    path.write_bytes(content)
    result = CliRunner().invoke(cli, ["schema", "check", str(path)], prog_name="streamgate")
    assert result.exit_code == 1, result.output
    assert isinstance(result.exception, SystemExit), result.exception  # not an uncaught exception
    assert result.stderr.strip() == f"error: SchemaPolicyError: {path}: {why}"
    assert "Traceback" not in result.output
