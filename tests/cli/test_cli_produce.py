"""``streamgate produce --file``: invalid lines are counted and not sent unless --allow-invalid."""

from __future__ import annotations

from pathlib import Path

import orjson
import pytest
from click.testing import CliRunner

from stream.cli import cli
from stream.synth import ClickstreamGenerator
from tests.support.kafka import read_topic
from tests.support.workers import settings_env

pytestmark = pytest.mark.integration


def test_produce_file_refuses_invalid_lines_unless_allowed(settings_factory, tmp_path: Path) -> None:
    settings = settings_factory()
    readme = Path(__file__).resolve().parents[2] / "README.md"
    events = [orjson.dumps(e) for e in ClickstreamGenerator(seed=5).events(3)]
    mixed = tmp_path / "mixed.jsonl"
    mixed.write_bytes(b"\n".join([events[0], b"not json", events[1], events[2]]) + b"\n")
    env = settings_env(settings)
    runner = CliRunner()

    docs = runner.invoke(cli, ["produce", "--file", str(readme)], env=env, prog_name="streamgate")
    assert docs.exit_code == 1
    assert "published 0 records" in docs.output and "--allow-invalid" in docs.output
    assert "lines are not valid clickstream-event.v1 events" in docs.output

    partly = runner.invoke(cli, ["produce", "--file", str(mixed)], env=env, prog_name="streamgate")
    assert partly.exit_code == 1 and "published 3 records" in partly.output
    assert "1 of 4 lines are not valid" in partly.output and "first at line 2" in partly.output
    sent = [r.value for r in read_topic(settings.kafka_bootstrap, settings.topics.raw, expect=3)]
    assert sorted(sent) == sorted(events)

    forced = runner.invoke(cli, ["produce", "--file", str(mixed), "--allow-invalid"], env=env, prog_name="streamgate")
    assert forced.exit_code == 0 and "published 4 records" in forced.output and "sent anyway" in forced.output
    assert b"not json" in [r.value for r in read_topic(settings.kafka_bootstrap, settings.topics.raw, expect=7)]
