"""ops/kafka/acls.sh is derived from the worker registry, and grants every topic and group a worker uses.

Checked as configuration (no Kafka with an authorizer here): the file is what the registry
generates; each grant the registry implies is in the file; and the registry is complete against
the code: every topic a worker's modules name and every reader id they read with is granted.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from stream.apps.registry import WORKERS, WorkerSpec
from stream.config import Settings
from stream.ops.acls import Grant, acls_script, grants

REPO = Path(__file__).resolve().parents[2]
ACLS = REPO / "ops" / "kafka" / "acls.sh"
_ACL_LINE = re.compile(r"^acl\s+(\S+)\s+(\S+)\s+(\S+)\s+(\S+)\s+(\S+)\s*$")
#: The modules each worker's process runs (besides stream/ops/worker.py: every worker's metrics).
MODULES = {
    "gateway": ["stream/apps/engine.py", "stream/apps/gateway.py"],
    "privatizer": ["stream/apps/privatizer.py"],
    "shredder": ["stream/apps/shredder.py"],
    "learner": ["stream/apps/learner.py", "stream/apps/federated.py"],
}


def _file_grants(text: str) -> set[Grant]:
    return {Grant(*m.groups()) for m in map(_ACL_LINE.match, text.splitlines()) if m}


def _missing(spec: WorkerSpec, have: set[Grant], s: Settings) -> list[Grant]:
    """The grants worker ``spec`` needs for what the registry says it uses that ``have`` lacks."""
    need = [Grant(spec.name, "Read", "topic", t) for t in spec.topics_read(s)]
    need += [Grant(spec.name, "Write", "topic", t) for t in spec.topics_written(s)]
    need += [Grant(spec.name, "Read", "group", g) for g in spec.all_groups(s)]
    return [g for g in need if g not in have]


def test_acls_sh_is_generated_from_the_registry_and_current() -> None:
    assert ACLS.read_text() == acls_script(Settings()), (
        "ops/kafka/acls.sh is stale: python -m stream.ops.acls > ops/kafka/acls.sh")


@pytest.mark.parametrize("worker", sorted(WORKERS))
def test_every_topic_and_group_a_worker_uses_is_granted(worker: str) -> None:
    s = Settings()
    spec = WORKERS[worker]
    have = _file_grants(ACLS.read_text())
    assert not _missing(spec, have, s)
    mine = {g for g in have if g.principal == worker}
    # the registry is complete against the code: every topic the worker's modules name ...
    granted_topics = {g.name for g in mine if g.kind == "topic"}
    source = "\n".join((REPO / m).read_text() for m in MODULES[worker])
    named = {getattr(s.topics, f) for f in re.findall(r"\btopics\.([a-z_]+)\b", source)}
    assert named and named <= granted_topics, named - granted_topics
    assert Grant(worker, "Write", "topic", s.topics.metrics) in mine  # stream/ops/worker.py
    # ... and every reader id it reads with (stream.kafka.TopicReader's default: streamgate-reader)
    granted_groups = {g.name for g in mine if g.kind == "group"}
    readers = re.findall(r"TopicReader\(([^)]*)\)", source)
    ids = {m.group(1) if (m := re.search(r'client_id="([^"]+)"', call)) else "streamgate-reader" for call in readers}
    assert bool(readers) == (worker in ("privatizer", "learner"))  # the side reads are found
    assert ids <= granted_groups, ids - granted_groups
    assert spec.group(s) in granted_groups


def test_the_check_finds_what_the_old_file_lacked() -> None:
    """The hand-written file gave the privatizer no right to analytics.partials or its reader id."""
    s = Settings()
    have = _file_grants(ACLS.read_text())
    old = {g for g in have if not (g.principal == "privatizer" and g.name in (s.topics.partials, "streamgate-reader"))}
    assert set(_missing(WORKERS["privatizer"], old, s)) == {
        Grant("privatizer", "Read", "topic", s.topics.partials), Grant("privatizer", "Write", "topic", s.topics.partials),
        Grant("privatizer", "Read", "group", "streamgate-reader")}


def test_grants_follow_the_configured_names() -> None:
    s = Settings(group_prefix="tenant1", topics={"partials": "t1.partials"})  # type: ignore[arg-type]
    got = set(grants(s))
    assert Grant("privatizer", "Read", "topic", "t1.partials") in got
    assert Grant("learner", "Read", "group", "tenant1-learner-aggregator") in got
    assert Grant("gateway", "Write", "transactional-id", "tenant1-gateway", "prefixed") in got
    assert not [g for g in got if g.name == "*" or g.operation not in ("Read", "Write", "Describe")]
