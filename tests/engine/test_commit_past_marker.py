"""The committed offset reaches the log end after a transactional producer's commit marker."""

from __future__ import annotations

import orjson
import pytest
from confluent_kafka import Consumer, Producer, TopicPartition

from stream.kafka import client_config, ensure_topics, producer_config
from stream.synth import ClickstreamGenerator
from tests.support.kafka import running_engine, wait_for

pytestmark = [pytest.mark.integration]


def _committed_and_ends(bootstrap: str, group: str, topic: str, partitions: int) -> list[tuple[int, int]]:
    c = Consumer(client_config(bootstrap, **{"group.id": group, "enable.auto.commit": False}))
    try:
        tps = [TopicPartition(topic, p) for p in range(partitions)]
        committed = c.committed(tps, timeout=10)
        return [(tp.offset, c.get_watermark_offsets(tp, timeout=10)[1]) for tp in committed]
    finally:
        c.close()


@pytest.mark.parametrize("guarantee", ["at_least_once", "exactly_once"])
def test_committed_offset_equals_the_high_watermark_after_a_transactional_input(
        kafka_bootstrap, settings_factory, guarantee):
    """The raw topic is written in transactions (each ends in a control record the consumer never
    sees); once the gateway read a partition to its end, its committed offset is the log end, so
    an external lag monitor shows 0, not a lag of 1 that never drains."""
    s = settings_factory(processing_guarantee=guarantee, batch_max_events=100)
    t = s.topics
    ensure_topics(kafka_bootstrap, [t.raw, t.protected, t.dlq], partitions=2)
    events = list(ClickstreamGenerator(seed=5).events(300))
    p = Producer(producer_config(kafka_bootstrap, **{"transactional.id": f"txn-{t.raw}"}))
    p.init_transactions(30)
    for chunk in (events[:120], events[120:]):  # two transactions: two markers per partition
        p.begin_transaction()
        for e in chunk:
            p.produce(t.raw, orjson.dumps(e), e["user_id"].encode())
        p.commit_transaction(30)
    with running_engine(s) as engine:
        wait_for(lambda: engine.stats.emitted >= len(events), what="every event")

        def caught_up() -> bool:
            return all(c == h for c, h in _committed_and_ends(kafka_bootstrap, s.consumer_group, t.raw, 2))

        wait_for(caught_up, timeout=30, what="committed offset == high watermark")
    pairs = _committed_and_ends(kafka_bootstrap, s.consumer_group, t.raw, 2)
    assert all(c == h and h > 0 for c, h in pairs), pairs
    assert engine.stats.protected == len(events)
