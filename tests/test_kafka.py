"""``stream.kafka`` against the real broker: is a worker's consumer group live?"""

from __future__ import annotations

import time

import pytest
from confluent_kafka import Consumer

from stream.config import Settings, TopicNames
from stream.kafka import consumer_config, ensure_topics, group_active

pytestmark = pytest.mark.integration


def test_group_active_tells_a_live_group_from_an_absent_one(kafka_bootstrap: str, unique_id: str) -> None:
    topic, group = f"sg-groups-{unique_id}", f"sg-groups-{unique_id}"
    ensure_topics(kafka_bootstrap, [topic], partitions=1)
    assert group_active(kafka_bootstrap, group) is False
    consumer = Consumer(consumer_config(kafka_bootstrap, group))
    try:
        consumer.subscribe([topic])
        deadline = time.monotonic() + 30
        while not consumer.assignment():
            assert time.monotonic() < deadline, "never assigned"
            consumer.poll(0.2)
        assert group_active(kafka_bootstrap, group) is True
    finally:
        consumer.close()


def test_ensure_topics_applies_the_topics_config(kafka_bootstrap: str, topic_names: TopicNames) -> None:
    from confluent_kafka.admin import ConfigResource

    from stream.kafka import admin_client
    from stream.topicsconfig import load_topics_config

    settings = Settings(topics=topic_names)
    specs = {s.key: s for s in load_topics_config(settings)}
    want = [topic_names.partials, topic_names.audit, topic_names.raw]
    assert set(ensure_topics(kafka_bootstrap, want, settings=settings)) == set(want)
    admin = admin_client(kafka_bootstrap)
    md = admin.list_topics(timeout=10).topics
    described = admin.describe_configs([ConfigResource("topic", n) for n in want])
    for res, fut in described.items():
        spec = next(s for s in specs.values() if s.name == res.name)
        have = {k: e.value for k, e in fut.result(timeout=10).items()}
        assert {k: have.get(k) for k in spec.config} == spec.config, res.name
        assert len(md[res.name].partitions) == spec.partitions, res.name
    # a topic the config does not list: the partitions asked for, no configs of ours
    other = f"{topic_names.raw}-other"
    ensure_topics(kafka_bootstrap, [other], partitions=2, settings=settings)
    assert len(admin.list_topics(timeout=10).topics[other].partitions) == 2
