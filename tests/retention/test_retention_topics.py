"""The topics config (ops/topics.yaml): shipped defaults and the checks on load. No broker."""

from __future__ import annotations

from pathlib import Path

import pytest

from stream.config import Settings, TopicNames
from stream.errors import ConfigError
from stream.storage.topics import default_topics_config, load_topics_config, tombstone_topics

REPO = Path(__file__).resolve().parents[2]


def test_the_packaged_config_is_ops_topics_yaml_and_covers_every_topic() -> None:
    assert default_topics_config().read_bytes() == (REPO / "ops" / "topics.yaml").read_bytes()
    specs = load_topics_config(Settings())
    assert {s.name for s in specs} == set(TopicNames().model_dump().values())
    by = {s.key: s for s in specs}
    assert by["snapshots"].config["cleanup.policy"] == "compact"
    assert tombstone_topics(specs) == []  # none of the shipped topics is keyed by the person token
    for s in specs:
        if s.config["cleanup.policy"] == "delete":
            assert 0 < int(s.config["segment.ms"]) <= int(s.config["retention.ms"]) // 4, s.name
    # plaintext and raw identifiers are kept briefly; the audit trail long
    assert int(by["raw"].config["retention.ms"]) <= 86_400_000
    assert int(by["erasure"].config["retention.ms"]) <= 7 * 86_400_000
    assert int(by["audit"].config["retention.ms"]) >= 365 * 86_400_000


def test_names_follow_the_settings(tmp_path: Path) -> None:
    s = Settings(topics=TopicNames(raw="my.raw"))
    assert next(x for x in load_topics_config(s) if x.key == "raw").name == "my.raw"


@pytest.mark.parametrize(("body", "message"), [
    ("topics:\n  raw: {config: {cleanup.policy: delete, retention.ms: 1000, segment.ms: 5000}}\n",
     "segment.ms > retention.ms"),
    ("topics:\n  raw: {config: {cleanup.policy: delete, retention.ms: 1000}}\n", "set segment.ms"),
    ("topics:\n  raw: {config: {cleanup.policy: delete, retention.ms: -1, segment.ms: 5}}\n", "positive retention.ms"),
    ("topics:\n  x: {name: p.x, keyed_by_subject: true, config: {cleanup.policy: delete, retention.ms: 9, "
     "segment.ms: 1}}\n", "keyed_by_subject needs cleanup.policy compact"),
    ("topics:\n  raw: {partitions: 0}\n", "must be > 0"),
    ("topics:\n  raw: {colour: blue}\n", "unknown keys"),
    ("topics: [1, 2]\n", "needs a 'topics' mapping"),
    ("version: 2\ntopics: {}\n", "unsupported version"),
    ("topics: {raw: {config: {cleanup.policy: compact}}, r2: {name: clicks.raw, config: {cleanup.policy: compact}}}\n",
     "listed twice"),
    ("topics: {\n", "not valid YAML"),
])
def test_bad_configs_are_refused_with_a_clear_error(tmp_path: Path, body: str, message: str) -> None:
    path = tmp_path / "topics.yaml"
    path.write_text(body)
    with pytest.raises(ConfigError, match=message):
        load_topics_config(Settings(), path)


def test_keyed_by_subject_topics_are_tombstone_targets(tmp_path: Path) -> None:
    path = tmp_path / "topics.yaml"
    path.write_text("topics:\n  profiles: {name: people.profiles, keyed_by_subject: true, "
                    "config: {cleanup.policy: 'compact,delete', retention.ms: 1000, segment.ms: 100}}\n")
    assert tombstone_topics(load_topics_config(Settings(), path)) == ["people.profiles"]


def test_missing_file_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read"):
        load_topics_config(Settings(), tmp_path / "nope.yaml")
