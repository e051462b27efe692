"""Offset commits that fail, on a real broker (at-least-once; health tells the truth).

A commit is done only once the broker confirmed it: one refused (the answer to an asynchronous
commit, ``on_commit``) or one whose call raised puts its offsets back and the next commit, or the
shutdown's, retries them; the committed offset ends at the log end. Commits failing on and on
are counted (``streamgate_engine_retries_total{cause="commit"}``) and turn the worker not ready
with the reason once they failed for longer than ``stall_seconds``; the next success clears it.

The failures are injected at the confluent-kafka boundary only: a consumer whose ``commit``
raises, or whose asynchronous commit is answered with a refusal through the ``on_commit``
callback the engine configured (as librdkafka answers, from ``consume``).
"""

from __future__ import annotations

import itertools
import re
from collections.abc import Callable
from typing import Any

import pytest
from confluent_kafka import Consumer, KafkaError, KafkaException, TopicPartition

import stream.engine.clients as clients_mod
from stream.apps.engine import GatewayEngine
from stream.apps.produce import publish
from stream.components import build_gateway
from stream.kafka import client_config, ensure_topics
from stream.synth import ClickstreamGenerator
from tests.support.kafka import running_in_thread, wait_for

pytestmark = [pytest.mark.integration]

N = 300

#: (commit call number, offsets, asynchronous) -> "raise" | "refuse" | "drop" | None (commit for real)
Plan = Callable[[int, dict[tuple[str, int], int], bool], str | None]


def failing_commits(plan: Plan) -> type[Consumer]:
    """A consumer class whose commits fail as ``plan`` says; every other call is the real one."""
    calls = itertools.count(1)

    class FailingCommits(Consumer):
        def __init__(self, conf: dict[str, Any]) -> None:
            super().__init__(conf)
            self._answer = conf.get("on_commit")
            self._refused: list[list[TopicPartition]] = []

        def commit(self, *args: Any, **kw: Any) -> Any:
            offsets = kw.get("offsets") or []
            asynchronous = kw.get("asynchronous", True)
            how = plan(next(calls), {(tp.topic, tp.partition): tp.offset for tp in offsets}, asynchronous)
            if how == "raise":
                raise KafkaException(KafkaError(KafkaError.REBALANCE_IN_PROGRESS, "injected: rebalance in progress"))
            if how == "drop" and asynchronous:  # not sent, never answered (a commit the consumer closed on)
                return None
            if how == "refuse" and asynchronous:  # not sent; refused by the answer the next consume serves
                self._refused.append([TopicPartition(tp.topic, tp.partition, tp.offset) for tp in offsets])
                return None
            return super().commit(*args, **kw)

        def consume(self, *args: Any, **kw: Any) -> Any:
            msgs = super().consume(*args, **kw)
            while self._refused:
                parts = self._refused.pop(0)
                if self._answer is not None:  # no on_commit configured: nobody hears the refusal
                    self._answer(KafkaError(KafkaError.REBALANCE_IN_PROGRESS, "injected: commit refused"), parts)
            return msgs

    return FailingCommits


def _committed(bootstrap: str, group: str, topic: str) -> int:
    """The group's committed offset of partition 0, asked of the broker. The tests write ``N``
    records to a fresh one-partition topic without transactions: the log end is ``N`` (the
    embedded broker's reported high watermark is that of the last batch, not usable here)."""
    c = Consumer(client_config(bootstrap, **{"group.id": group, "enable.auto.commit": False}))
    try:
        return int(c.committed([TopicPartition(topic, 0)], timeout=10)[0].offset)
    finally:
        c.close()


def _topics(s: Any, *, events: bool = True) -> tuple[str, str]:
    """(bootstrap, the raw topic): the gateway's topics, one partition each, and ``N`` events already
    in the raw topic unless ``events`` is False."""
    b = s.kafka_bootstrap_or_dev()
    ensure_topics(b, [s.topics.raw, s.topics.protected, s.topics.dlq], partitions=1)
    if events:
        publish(b, s.topics.raw, list(ClickstreamGenerator(seed=4).events(N)))
    return b, s.topics.raw


@pytest.mark.parametrize("how", ["raise", "refuse"])
def test_one_failed_commit_is_retried_and_the_committed_offset_reaches_the_log_end(
        settings_factory: Callable[..., Any], monkeypatch: pytest.MonkeyPatch, how: str) -> None:
    s = settings_factory(commit_interval_seconds=0.2)
    b, topic = _topics(s)  # the events before the start: one batch, one commit
    failed: list[int] = []

    def plan(n: int, offsets: dict[tuple[str, int], int], asynchronous: bool) -> str | None:
        # the commit of the log end fails, once: the first commit (raise), the last one (refuse)
        if not failed and (offsets.get((topic, 0)) == N or (how == "raise" and n == 1)):
            failed.append(n)
            return how
        return None

    monkeypatch.setattr(clients_mod, "Consumer", failing_commits(plan))
    engine = GatewayEngine(s, build_gateway(s))
    with running_in_thread(engine, "gateway"):
        wait_for(lambda: engine.stats.emitted >= N, what="every event emitted")
        wait_for(lambda: bool(failed), what="the injected commit failure")
        # retried by the next commit while it runs (not only at the shutdown)
        wait_for(lambda: _committed(b, s.consumer_group, topic) == N, timeout=30,
                 what="the committed offset at the log end")
        assert engine.metrics.retries["commit"] == 1
        assert engine.ready, engine.not_ready_reason
    assert _committed(b, s.consumer_group, topic) == N


def test_a_commit_never_confirmed_is_committed_by_the_graceful_stop(
        settings_factory: Callable[..., Any], monkeypatch: pytest.MonkeyPatch) -> None:
    s = settings_factory(commit_interval_seconds=0.2)
    b, topic = _topics(s)
    dropped: list[int] = []

    def plan(n: int, offsets: dict[tuple[str, int], int], asynchronous: bool) -> str | None:
        if asynchronous and offsets.get((topic, 0)) == N:  # the last commit's answer never comes
            dropped.append(n)
            return "drop"
        return None

    monkeypatch.setattr(clients_mod, "Consumer", failing_commits(plan))
    engine = GatewayEngine(s, build_gateway(s))
    with running_in_thread(engine, "gateway"):
        wait_for(lambda: engine.stats.emitted >= N, what="every event emitted")
        wait_for(lambda: bool(dropped), what="the unanswered commit")
        assert _committed(b, s.consumer_group, topic) < N
    assert len(dropped) == 1  # not re-sent while its answer is awaited
    assert _committed(b, s.consumer_group, topic) == N  # the stop's synchronous commit made sure


@pytest.mark.parametrize("how", ["raise", "refuse"])
def test_commits_failing_on_and_on_turn_the_worker_not_ready_counted_until_one_succeeds(
        settings_factory: Callable[..., Any], monkeypatch: pytest.MonkeyPatch, how: str) -> None:
    s = settings_factory(stall_seconds=2.0, watchdog_seconds=300.0, commit_interval_seconds=0.2)
    b, topic = _topics(s, events=False)
    broken = [True]
    monkeypatch.setattr(clients_mod, "Consumer", failing_commits(lambda n, o, a: how if broken[0] else None))
    engine = GatewayEngine(s, build_gateway(s))
    with running_in_thread(engine, "gateway"):
        wait_for(lambda: engine.ready, what="ready")
        publish(b, topic, list(ClickstreamGenerator(seed=4).events(N)))
        wait_for(lambda: engine.stats.emitted >= N, what="every event emitted")
        wait_for(lambda: not engine.ready, timeout=30, what="not ready: commits fail")
        reason = engine.not_ready_reason
        assert reason is not None and reason.startswith("offset commits failing for "), reason
        assert "REBALANCE_IN_PROGRESS" in reason
        assert engine.metrics.retries["commit"] >= 2
        assert re.search(r'^streamgate_engine_retries_total\{(?=.*cause="commit").*\} [1-9]', _scrape(engine), re.M)
        assert _committed(b, s.consumer_group, topic) < N
        broken[0] = False  # the coordinator takes commits again: committed, ready again
        wait_for(lambda: _committed(b, s.consumer_group, topic) == N, timeout=30,
                 what="the committed offset at the log end")
        wait_for(lambda: engine.ready, timeout=10, what="ready again")


def _scrape(engine: Any) -> str:
    from prometheus_client import generate_latest

    return generate_latest(engine.metrics.registry).decode()
