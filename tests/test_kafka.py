"""``stream.kafka`` against the real broker: is a worker's consumer group live?"""

from __future__ import annotations

import time

import pytest
from confluent_kafka import Consumer

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
