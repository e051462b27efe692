"""``streamgate topics apply``: create the topics of the topics config (:mod:`stream.topicsconfig`,
``ops/topics.yaml``) and set the configs of existing ones to match it."""

from __future__ import annotations

from dataclasses import dataclass, field

from confluent_kafka import KafkaError, KafkaException
from confluent_kafka.admin import AdminClient, AlterConfigOpType, ConfigEntry, ConfigResource, NewTopic

from stream.errors import StreamgateError
from stream.kafka import admin_config
from stream.topicsconfig import TopicSpec, default_topics_config, load_topics_config, tombstone_topics

__all__ = [
    "TopicChange",
    "TopicSpec",
    "apply_topics",
    "default_topics_config",
    "load_topics_config",
    "tombstone_topics",
]


@dataclass
class TopicChange:
    name: str
    action: str  # "create" | "update" | "unchanged"
    changes: dict[str, tuple[str | None, str]] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    def describe(self) -> str:
        parts = [f"{self.action:<9} {self.name}"]
        parts += [f"{k}: {old if old is not None else '-'} -> {new}" for k, (old, new) in sorted(self.changes.items())]
        parts += [f"note: {n}" for n in self.notes]
        return "\n    ".join(parts)


def _kafka_error(exc: KafkaException) -> KafkaError | None:
    err = exc.args[0] if exc.args else None
    return err if isinstance(err, KafkaError) else None


def apply_topics(bootstrap: str, specs: list[TopicSpec], *, dry_run: bool = False,
                 timeout: float = 30.0) -> list[TopicChange]:
    """Create missing topics with their configs; set differing configs of existing ones
    (IncrementalAlterConfigs). Returns what was (or, with ``dry_run``, would be) done."""
    admin = AdminClient(admin_config(bootstrap))
    try:
        existing = admin.list_topics(timeout=timeout).topics
    except KafkaException as exc:
        raise StreamgateError(f"cannot reach Kafka at {bootstrap}: {exc}") from exc
    changes: list[TopicChange] = []
    to_create = [s for s in specs if s.name not in existing]
    for s in to_create:
        planned: dict[str, tuple[str | None, str]] = {k: (None, v) for k, v in s.config.items()}
        planned["partitions"] = (None, str(s.partitions))
        changes.append(TopicChange(s.name, "create", planned))
    present = [s for s in specs if s.name in existing]
    current: dict[str, dict[str, str]] = {}
    if present:
        futures = admin.describe_configs([ConfigResource("topic", s.name) for s in present])
        for res, fut in futures.items():
            try:
                entries = fut.result(timeout=timeout)
            except KafkaException as exc:
                raise StreamgateError(f"cannot describe topic {res.name!r}: {exc}") from exc
            current[res.name] = {k: e.value for k, e in entries.items() if e.value is not None}
    for s in present:
        have = current.get(s.name, {})
        diff = {k: (have.get(k), v) for k, v in s.config.items() if have.get(k) != v}
        change = TopicChange(s.name, "update" if diff else "unchanged", diff)
        n_have = len(existing[s.name].partitions)
        if n_have < s.partitions:
            change.notes.append(f"has {n_have} partitions, config says {s.partitions}: add them with the broker's "
                                "tools (streamgate never changes partition counts of existing topics)")
        elif n_have > s.partitions:
            change.notes.append(f"has {n_have} partitions, more than the {s.partitions} configured (left alone)")
        changes.append(change)
    if dry_run:
        return changes
    if to_create:
        futs = admin.create_topics([NewTopic(s.name, num_partitions=s.partitions, replication_factor=s.replication_factor,
                                             config=dict(s.config)) for s in to_create])
        for name, fut in futs.items():
            try:
                fut.result(timeout=timeout)
            except KafkaException as exc:
                err = _kafka_error(exc)
                if err is not None and err.code() == KafkaError.TOPIC_ALREADY_EXISTS:
                    continue
                raise StreamgateError(f"cannot create topic {name!r}: {exc}") from exc
    updates = [c for c in changes if c.action == "update"]
    if updates:
        resources_ = [ConfigResource("topic", c.name, incremental_configs=[
            ConfigEntry(k, new, incremental_operation=AlterConfigOpType.SET) for k, (_, new) in c.changes.items()])
            for c in updates]
        for res, fut in admin.incremental_alter_configs(resources_).items():
            try:
                fut.result(timeout=timeout)
            except KafkaException as exc:
                raise StreamgateError(f"cannot update the configs of topic {res.name!r}: {exc}") from exc
    return changes
