"""Settings: removed settings are refused (never silently ignored), topic names come from one variable."""

from __future__ import annotations

import pytest

from stream.config import REMOVED_SETTINGS, Settings
from stream.errors import ConfigError


@pytest.mark.parametrize("name", sorted(REMOVED_SETTINGS))
def test_a_removed_setting_is_refused_as_argument_copy_and_environment(name: str,
                                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(ConfigError, match=f"{name} is no longer a setting"):
        Settings(**{name: "1"})
    with pytest.raises(ConfigError, match=f"{name} is no longer a setting"):
        Settings().model_copy(update={name: "1"})
    var = f"streamgate_{name}" if len(name) % 2 else f"STREAMGATE_{name.upper()}"  # any letter case
    monkeypatch.setenv(var, "1")
    with pytest.raises(ConfigError, match=f"{var} is no longer a setting"):
        Settings()


def test_topic_names_come_from_one_json_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("STREAMGATE_TOPICS", '{"raw": "t1.raw", "audit": "t1.audit"}')
    t = Settings().topics
    assert (t.raw, t.audit, t.protected) == ("t1.raw", "t1.audit", "clicks.protected")
    monkeypatch.setenv("STREAMGATE_TOPICS", '{"rwa": "typo"}')
    with pytest.raises(ValueError, match="rwa"):  # an unknown name is an error, not ignored
        Settings()
    monkeypatch.delenv("STREAMGATE_TOPICS")
    monkeypatch.setenv("STREAMGATE_TOPIC_RAW", "old.raw")
    with pytest.raises(ConfigError, match="STREAMGATE_TOPICS"):
        Settings()
    monkeypatch.delenv("STREAMGATE_TOPIC_RAW")
    monkeypatch.setenv("STREAMGATE_TOPIC_PARTITIONS", "2")  # a setting, not a topic name
    assert Settings().topic_partitions == 2


def test_derived_names_and_cadences_keep_their_defaults() -> None:
    s = Settings()
    assert [s.consumer_group, s.privatizer_consumer_group, s.shredder_consumer_group, s.learner_consumer_group] == [
        "streamgate-gateway", "streamgate-privatizer", "streamgate-shredder", "streamgate-learner"]
    assert (s.learn_snapshot_every, s.learn_snapshot_interval_seconds) == (10_000, 60.0)
    assert (s.learn_update_every, s.learn_update_interval_seconds) == (1000, 5.0)
    assert s.kek_wrap_warn_at == 2**30
    t = Settings(group_prefix="t1", learn_publish_every=7, learn_publish_interval_seconds=2.0)
    assert t.shredder_consumer_group == "t1-shredder" and t.learn_update_every == t.learn_snapshot_every == 7
    assert len(Settings.model_fields) <= 60
