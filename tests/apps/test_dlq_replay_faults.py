"""``streamgate dlq replay`` on malformed dead letters, failing produces, concurrent runs and a
gateway that refuses the replayed copy again (real broker and Redis): nothing lost, nothing sent twice."""

from __future__ import annotations

import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import orjson
import pytest
from confluent_kafka import Producer
from confluent_kafka.schema_registry import Schema
from confluent_kafka.serialization import MessageField, SerializationContext

from stream.apps.engine import GatewayEngine
from stream.commands.dlq_replay import ReplayIncompleteError, ReplayStats, replay_dead_letters, run_replay
from stream.components import build_dek_provider, build_gateway, redis_client
from stream.crypto.keyring import Keyring, derive_key
from stream.gateway.core import RawRecord
from stream.kafka import ensure_topics, producer_config
from stream.synth import ClickstreamGenerator
from tests.apps.test_dlq_replay import _avro_version
from tests.gateway.test_framing import SUBJECT, avro_serializer
from tests.support.fixtures import admin_client
from tests.support.kafka import read_topic, running_in_thread, wait_for

pytestmark = [pytest.mark.integration]


def _invalid(i: int, **fields: Any) -> bytes:
    """An event the gateway dead-letters (a device outside the schema's enum)."""
    ev = next(iter(ClickstreamGenerator(seed=300 + i).events(1)))
    return orjson.dumps({**ev, "device": "toaster", **fields})


def _dead_letters(gateway: Any, values: list[bytes]) -> list[bytes]:
    result = gateway.process([RawRecord("clicks.raw", 0, i, v, None) for i, v in enumerate(values)])
    assert len(result.dead_letters) == len(values)
    return list(result.dead_letters)


def _replay(settings: Any, dead_letters: list[bytes], *, producer: Producer | None = None,
            wrap: Callable[[Callable[..., None]], Callable[..., None]] | None = None,
            redis: Any = None, reframe: Any = None) -> ReplayStats:
    """:func:`replay_dead_letters` wired as ``run_replay`` wires it, reading ``dead_letters``."""
    keyring = Keyring.from_settings(settings)
    producer = producer or Producer(producer_config(settings.kafka_bootstrap))

    def produce(value: bytes, key: bytes | None, headers: list[tuple[str, bytes | None]],
                done: Callable[[str | None], None] = lambda _err: None) -> None:
        producer.produce(settings.topics.raw, value, key, headers=list(headers) or None,
                         on_delivery=lambda err, _m: done(None if err is None else str(err)))

    def flush() -> int:
        return int(producer.flush(60))

    return replay_dead_letters(
        dlq_records=lambda: iter(dead_letters), deks=build_dek_provider(settings, keyring, role="reader"),
        redis=redis or redis_client(settings, "reader"), ledger_prefix=settings.redis_key_prefix,
        ledger_key=derive_key(keyring.derive("dek-id"), "dlq-replay"),
        produce=wrap(produce) if wrap else produce, flush=flush, reframe=reframe)


def test_malformed_dead_letters_are_counted_and_the_run_goes_on(settings_factory, kafka_bootstrap):
    """A dead letter without ``source``, a ``policy_missing`` Avro payload that does not decode
    under its version: each counted ``undecodable``; an ``event_id`` with a lone surrogate is
    replayed like any other; the good dead letters around them are replayed."""
    settings = settings_factory()
    t = settings.topics
    ensure_topics(kafka_bootstrap, [t.raw], partitions=1)
    gateway = build_gateway(settings)
    resolver = gateway.resolver
    assert resolver is not None
    good = [_invalid(i) for i in range(3)]
    surrogate = _invalid(3, event_id="SURROGATE").replace(b'"SURROGATE"', b'"\\ud800-lone"')
    dls = _dead_letters(gateway, [*good, surrogate])
    no_source = orjson.loads(dls[1])
    del no_source["source"]

    avro = avro_serializer(resolver.client)
    resolver.client.register_schema(SUBJECT + "-avro", Schema(_avro_version(with_policy=False, campaign=False), "AVRO"))
    ev = {**next(iter(ClickstreamGenerator(seed=399).events(1))), "billing_email": "bill@example.org"}
    framed = avro(ev, SerializationContext(t.raw, MessageField.VALUE))
    truncated = gateway.process([RawRecord("clicks.raw", 0, 9, framed[:-12], None)]).dead_letters
    assert [orjson.loads(d)["reason"] for d in truncated] == ["policy_missing"]
    resolver.client.register_schema(SUBJECT + "-avro", Schema(_avro_version(with_policy=True, campaign=True), "AVRO"))

    st = _replay(settings, [dls[0], orjson.dumps(no_source), truncated[0], dls[2], dls[3]], reframe=resolver.reframe)
    assert (st.matched, st.undecodable, st.replayed) == (5, 2, 3), st
    raw = {r.value for r in read_topic(kafka_bootstrap, t.raw, expect=3)}
    assert raw == {good[0], good[2], surrogate}


class _Lockstep:
    """A real Redis client whose first GET of each key waits for the other run's: both runs read
    the ledger entry before either claims it (the widest race of two concurrent replays)."""

    def __init__(self, client: Any, barrier: threading.Barrier) -> None:
        self.client, self.barrier, self.seen = client, barrier, set()

    def get(self, key: str) -> Any:
        value = self.client.get(key)
        if key not in self.seen:
            self.seen.add(key)
            self.barrier.wait()
        return value

    def __getattr__(self, name: str) -> Any:
        return getattr(self.client, name)


def test_concurrent_runs_publish_each_dead_letter_once(settings_factory, kafka_bootstrap):
    """Two runs read the ledger in lockstep: each dead letter is claimed (``SET NX``) and published
    by one of them only, on a fresh ledger and when re-claiming a copy refused after an earlier replay."""
    settings = settings_factory()
    t = settings.topics
    ensure_topics(kafka_bootstrap, [t.raw], partitions=1)
    originals = [_invalid(i) for i in range(3)]
    dls = _dead_letters(build_gateway(settings), originals)

    def both() -> list[ReplayStats]:
        barrier = threading.Barrier(2, timeout=60)
        with ThreadPoolExecutor(2) as pool:
            runs = [pool.submit(_replay, settings, dls, redis=_Lockstep(redis_client(settings, "reader"), barrier))
                    for _ in range(2)]
            return [r.result() for r in runs]

    first = both()
    assert sum(s.replayed for s in first) == 3 and sum(s.already for s in first) == 3, first
    assert sorted(r.value for r in read_topic(kafka_bootstrap, t.raw, expect=3)) == sorted(originals)

    admin = admin_client(settings)
    ledger = sorted(k for k in admin.scan_iter(f"{settings.redis_key_prefix}:replayed:*"))
    assert len(ledger) == 3
    for k in ledger:  # replayed long before these dead letters were rejected: each is eligible once more
        admin.set(k, "1.0", ex=3600)
    again = both()
    assert sum(s.replayed for s in again) == 3 and sum(s.already for s in again) == 3, again
    raw = [r.value for r in read_topic(kafka_bootstrap, t.raw, expect=6)]
    assert sorted(raw) == sorted(originals * 2)


def test_a_record_produce_raised_for_is_released_and_replayed_by_the_next_run(settings_factory, kafka_bootstrap):
    """The producer refuses a record too large for it (``produce`` raises after the claim): the run
    goes on, then says so (:class:`ReplayIncompleteError`, ``unsent``); the record's claim was
    released, so the next run replays it (and only it)."""
    settings = settings_factory()
    t = settings.topics
    ensure_topics(kafka_bootstrap, [t.raw], partitions=1)
    originals = [_invalid(0), _invalid(1, page_title="x" * 4000), _invalid(2)]
    dls = _dead_letters(build_gateway(settings), originals)
    small = Producer(producer_config(kafka_bootstrap, **{"message.max.bytes": 2000}))
    with pytest.raises(ReplayIncompleteError, match="1 dead letters were not sent") as err:
        _replay(settings, dls, producer=small)
    assert (err.value.stats.replayed, err.value.stats.unsent) == (2, 1), err.value.stats
    st = _replay(settings, dls)
    assert (st.replayed, st.already, st.unsent) == (1, 2, 0), st
    raw = [r.value for r in read_topic(kafka_bootstrap, t.raw, expect=3)]
    assert sorted(raw) == sorted(originals)


def test_an_interrupted_run_releases_the_claim_of_the_record_it_did_not_send(settings_factory, kafka_bootstrap):
    """Ctrl-C inside ``produce`` (after the claim): the interrupt ends the run; the records sent
    before it are delivered and stay claimed, the interrupted one is released: the next run
    replays it and the rest, nothing twice."""
    settings = settings_factory()
    t = settings.topics
    ensure_topics(kafka_bootstrap, [t.raw], partitions=1)
    originals = [_invalid(i) for i in range(4)]
    dls = _dead_letters(build_gateway(settings), originals)

    def interrupt_second(produce: Callable[..., None]) -> Callable[..., None]:
        calls = [0]

        def wrapped(*args: Any) -> None:
            calls[0] += 1
            if calls[0] == 2:
                raise KeyboardInterrupt
            produce(*args)
        return wrapped

    with pytest.raises(KeyboardInterrupt):
        _replay(settings, dls, wrap=interrupt_second)
    st = _replay(settings, dls)
    assert (st.replayed, st.already) == (3, 1), st
    raw = [r.value for r in read_topic(kafka_bootstrap, t.raw, expect=4)]
    assert sorted(raw) == sorted(originals)


def test_a_copy_the_gateway_refuses_again_is_not_replayed_by_the_same_run(settings_factory, kafka_bootstrap):
    """A dead letter whose cause is not fixed: the gateway refuses the replayed copy again while the
    run still reads ``clicks.dlq`` (its idle timeout): that new dead letter, rejected after the run
    started, is skipped (``during_run``), not replayed again and again. The next run replays it once."""
    settings = settings_factory(batch_max_events=10)
    t = settings.topics
    ensure_topics(kafka_bootstrap, [t.raw, t.protected, t.dlq], partitions=1)
    broken = b"{not json, still broken"
    p = Producer(producer_config(kafka_bootstrap))
    p.produce(t.raw, broken, b"k")
    assert p.flush(30) == 0
    with running_in_thread(GatewayEngine(settings, build_gateway(settings))) as engine:
        wait_for(lambda: engine.stats.dead_lettered >= 1, timeout=120, what="the dead letter")
        st = run_replay(settings, idle_timeout=8.0)  # reads on long after the gateway refused the copy
        wait_for(lambda: engine.stats.dead_lettered >= 2, timeout=120, what="the copy refused again")
        assert (st.replayed, st.during_run) == (1, 1), st
        nxt = run_replay(settings, idle_timeout=0.5)
        assert (nxt.replayed, nxt.already) == (1, 1), nxt
        wait_for(lambda: engine.stats.dead_lettered >= 3, timeout=120, what="the second copy refused")
    raw = [r.value for r in read_topic(kafka_bootstrap, t.raw, expect=3)]
    assert raw == [broken] * 3  # the original, one replay per run
