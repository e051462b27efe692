"""The topics config (``ops/topics.yaml``): every topic's partitions, replication factor and topic
configs (``cleanup.policy``, ``retention.ms``, ``segment.ms``, ...), plus ``keyed_by_subject`` for
compacted topics keyed by the person token (the shredder tombstones those on erasure). Keys under
``topics:`` are logical names of :class:`stream.config.TopicNames` (resolved through Settings) or
literal topic names. The file ships in the package as ``stream/opsconfig/topics.yaml`` (a symlink
to ``ops/topics.yaml`` in the repository). Parsing only: :func:`stream.kafka.ensure_topics` creates
topics with it, ``streamgate topics apply`` (:mod:`stream.retention.topics`) also updates them.

Rules checked on load (:class:`ConfigError` otherwise): a delete-policy topic has a positive
``retention.ms`` and ``segment.ms <= retention.ms`` (segments must roll within the retention
period, or records outlive it by up to ``segment.ms``); a ``keyed_by_subject`` topic is compacted.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

from stream.config import Settings, TopicNames
from stream.errors import ConfigError

__all__ = ["DEFAULT_PARTITIONS", "TopicSpec", "default_topics_config", "load_topics_config", "tombstone_topics"]

#: Partitions of a topic the config lists without a count and without ``defaults.partitions``.
DEFAULT_PARTITIONS = 4


@dataclass(frozen=True)
class TopicSpec:
    key: str  # the key in the config file
    name: str  # the real topic name
    partitions: int
    replication_factor: int
    config: dict[str, str] = field(default_factory=dict)
    keyed_by_subject: bool = False


def default_topics_config() -> Path:
    """The packaged topics config (``stream/opsconfig/topics.yaml``)."""
    return Path(str(resources.files("stream") / "opsconfig" / "topics.yaml"))


def _int(value: Any, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int | str):
        raise ConfigError(f"{what} must be an integer")
    try:
        return int(value)
    except ValueError:
        raise ConfigError(f"{what} must be an integer") from None


def load_topics_config(settings: Settings, path: Path | None = None) -> list[TopicSpec]:
    """Parse and check the topics config (default: the packaged one) against ``settings``' topic names."""
    path = path or default_topics_config()
    try:
        doc = yaml.safe_load(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise ConfigError(f"cannot read topics config {path}: {exc.strerror}") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"topics config {path} is not valid YAML: {exc}") from None
    if not isinstance(doc, dict) or not isinstance(doc.get("topics"), dict):
        raise ConfigError(f"topics config {path}: needs a 'topics' mapping")
    if doc.get("version", 1) != 1:
        raise ConfigError(f"topics config {path}: unsupported version {doc.get('version')!r}")
    defaults = doc.get("defaults") or {}
    if not isinstance(defaults, dict):
        raise ConfigError(f"topics config {path}: 'defaults' must be a mapping")
    logical = set(TopicNames.model_fields)
    specs: list[TopicSpec] = []
    for key, body in doc["topics"].items():
        body = body or {}
        where = f"topics config {path}, topic {key!r}"
        if not isinstance(body, dict):
            raise ConfigError(f"{where}: must be a mapping")
        unknown = set(body) - {"partitions", "replication_factor", "config", "keyed_by_subject", "name"}
        if unknown:
            raise ConfigError(f"{where}: unknown keys {sorted(unknown)}")
        name = body.get("name") or (getattr(settings.topics, key) if key in logical else str(key))
        partitions = _int(body.get("partitions", defaults.get("partitions", DEFAULT_PARTITIONS)),
                          f"{where}: partitions")
        rf = _int(body.get("replication_factor", defaults.get("replication_factor", 1)), f"{where}: replication_factor")
        if partitions <= 0 or rf <= 0:
            raise ConfigError(f"{where}: partitions and replication_factor must be > 0")
        raw_conf = body.get("config") or {}
        if not isinstance(raw_conf, dict):
            raise ConfigError(f"{where}: 'config' must be a mapping")
        conf = {str(k): str(v).lower() if isinstance(v, bool) else str(v) for k, v in raw_conf.items()}
        policy = {p.strip() for p in conf.get("cleanup.policy", "delete").split(",")}
        if "delete" in policy:
            retention = _int(conf.get("retention.ms", "-1"), f"{where}: retention.ms")
            if retention <= 0:
                raise ConfigError(f"{where}: a delete-policy topic needs a positive retention.ms")
            if "segment.ms" not in conf:
                raise ConfigError(f"{where}: set segment.ms so segments roll within retention.ms")
            if _int(conf["segment.ms"], f"{where}: segment.ms") > retention:
                raise ConfigError(f"{where}: segment.ms > retention.ms (records would outlive retention.ms by "
                                  "up to segment.ms)")
        keyed = bool(body.get("keyed_by_subject", False))
        if keyed and "compact" not in policy:
            raise ConfigError(f"{where}: keyed_by_subject needs cleanup.policy compact")
        specs.append(TopicSpec(str(key), name, partitions, rf, conf, keyed))
    names = [s.name for s in specs]
    if len(set(names)) != len(names):
        raise ConfigError(f"topics config {path}: a topic is listed twice")
    return specs


def tombstone_topics(specs: list[TopicSpec]) -> list[str]:
    """Names of the compacted topics keyed by the person token (tombstoned on erasure)."""
    return [s.name for s in specs if s.keyed_by_subject]


