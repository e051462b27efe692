"""``streamgate dlq inspect`` on a DLQ topic that holds records which are no dead letters, and
(``--unseal``) a dead letter of an erased person: each gets its line, the listing goes on."""

from __future__ import annotations

import re

import orjson
import pytest
from click.testing import CliRunner

from stream.apps.produce import publish
from stream.cli import cli
from stream.components import build_gateway, redis_client
from stream.gateway.core import RawRecord
from stream.kafka import ensure_topics
from stream.retention.core import MemorySink, Shredder
from stream.storage.retention import RedisShredStore
from stream.synth import ClickstreamGenerator
from tests.support.workers import settings_env

pytestmark = pytest.mark.integration


def _invalid(user_id: str, i: int) -> bytes:
    """An event of ``user_id`` the gateway dead-letters (a device outside the schema's enum)."""
    ev = next(iter(ClickstreamGenerator(seed=200 + i).events(1)))
    return orjson.dumps({**ev, "user_id": user_id, "device": "toaster"})


def _dead_letters(settings, users: list[str]) -> tuple[list[bytes], list[bytes]]:
    """(the original events, their dead letters), one per user, sealed for that user."""
    originals = [_invalid(u, i) for i, u in enumerate(users)]
    result = build_gateway(settings).process([RawRecord("clicks.raw", 0, i, v, None) for i, v in enumerate(originals)])
    assert len(result.dead_letters) == len(users)
    return originals, result.dead_letters


def _erase(settings, token: str) -> None:
    Shredder(RedisShredStore(redis_client(settings, "shredder"), settings.redis_key_prefix), MemorySink(),
             worker="w1", epoch_seconds=settings.epoch_seconds,
             retention_seconds=settings.retention_seconds).erase(token, f"req-{token[-8:]}")


def test_dlq_inspect_unseal_marks_a_shredded_record_and_goes_on(settings_factory) -> None:
    settings = settings_factory()
    ensure_topics(settings.kafka_bootstrap, [settings.topics.dlq], partitions=1)
    originals, dead = _dead_letters(settings, ["usr_dlq_a", "usr_dlq_erased", "usr_dlq_b"])
    publish(settings.kafka_bootstrap, settings.topics.dlq, dead)
    _erase(settings, orjson.loads(dead[1])["sealed_for"])
    result = CliRunner().invoke(cli, ["dlq", "inspect", "--unseal", "--idle-timeout", "1"], prog_name="streamgate",
                                env=settings_env(settings))
    assert result.exit_code == 0, result.output
    originals_shown = [ln for ln in result.stdout.splitlines() if ln.startswith("    original: ")]
    assert originals_shown == [f"    original: {originals[0]!r}", "    original: (shredded)",
                               f"    original: {originals[2]!r}"]


def test_dlq_inspect_lists_malformed_records_and_goes_on(settings_factory) -> None:
    settings = settings_factory()
    ensure_topics(settings.kafka_bootstrap, [settings.topics.dlq], partitions=1)
    originals, (kept, gone) = _dead_letters(settings, ["usr_dlq_kept", "usr_dlq_gone"])
    publish(settings.kafka_bootstrap, settings.topics.dlq, [
        kept,                                    # offset 0
        b"\x00\x01junk",                         # 1: not JSON
        orjson.dumps({"reason": "not_json"}),    # 2: no source
        orjson.dumps([1, 2]),                    # 3: not an object
        gone,                                    # 4
        orjson.dumps({"source": {"topic": "t", "partition": 0, "offset": 1}}),  # 5: no reason
    ])
    _erase(settings, orjson.loads(gone)["sealed_for"])

    env = settings_env(settings)
    plain = CliRunner().invoke(cli, ["dlq", "inspect", "--idle-timeout", "1"], prog_name="streamgate", env=env)
    assert plain.exit_code == 0, plain.output
    listing = plain.stdout.splitlines()
    assert [re.sub(r"\s+", " ", ln) for ln in listing] == [
        f"schema_violation clicks.raw[0]@0 size={len(originals[0])} path=device rule=enum",
        "malformed record at 0@1: not JSON",
        "malformed record at 0@2: no source (topic, partition, offset)",
        "malformed record at 0@3: not a JSON object",
        f"schema_violation clicks.raw[0]@1 size={len(originals[1])} path=device rule=enum",
        "malformed record at 0@5: no reason",
    ]

    unsealed = CliRunner().invoke(cli, ["dlq", "inspect", "--unseal", "--idle-timeout", "1"], prog_name="streamgate",
                                  env=env)
    assert unsealed.exit_code == 0, unsealed.output
    lines = unsealed.stdout.splitlines()
    assert lines == [listing[0], f"    original: {originals[0]!r}", *listing[1:5], "    original: (shredded)",
                     listing[5]]
    # --max counts every record listed, malformed ones too
    two = CliRunner().invoke(cli, ["dlq", "inspect", "--max", "2", "--idle-timeout", "1"], prog_name="streamgate",
                             env=env)
    assert two.exit_code == 0 and two.stdout.splitlines() == listing[:2]
