"""The worker registry: which worker writes which topic, and worker ids that survive log redaction."""

from __future__ import annotations

import socket

import pytest

from stream.apps.registry import WORKERS, writer_of
from stream.apps.shredder import worker_id
from stream.config import Settings
from stream.ops.logging import safe_value


def test_every_derived_topic_names_its_writer() -> None:
    s = Settings()
    t = s.topics
    assert {topic: getattr(writer_of(s, topic), "name", None) for topic in
            (t.protected, t.dlq, t.features, t.frequencies, t.partials, t.audit, t.snapshots, t.raw)} == {
        t.protected: "gateway", t.dlq: "gateway", t.features: "privatizer", t.frequencies: "privatizer",
        t.partials: "privatizer", t.audit: "shredder", t.snapshots: "learner", t.raw: None}
    assert {spec.name: spec.group(s) for spec in WORKERS.values()} == {
        "gateway": s.consumer_group, "privatizer": s.privatizer_consumer_group,
        "shredder": s.shredder_consumer_group, "learner": s.learner_consumer_group}


@pytest.mark.parametrize("instance", [None, "shredder-eu-1"])
def test_shredder_worker_id_is_printed_as_is_in_logs(instance: str | None) -> None:
    wid = worker_id(Settings(shredder_instance_id=instance))
    assert safe_value(wid) == wid
    assert wid == (instance or f"shredder-{socket.gethostname()}")
