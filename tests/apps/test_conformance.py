"""One conformance suite over every worker (river's ``check_estimator``, for engines).

Each worker is driven through the same failure scenarios on a real broker and real Redis:
poison records, a crash (no graceful stop: nothing delivered or committed on the way out)
and restart, a rebalance mid-stream, Redis down with a rebalance during the wait, and the
broker killed and restarted. Each case checks that nothing is lost (by id where records carry
one, by count where they do not), and that health tells the truth. Figures (inputs, missing,
duplicates, seconds to recover) are printed with ``-s`` and kept in docs/benchmarks.md.
"""

from __future__ import annotations

import subprocess
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson
import pytest

from stream.apps.engine import GatewayEngine
from stream.apps.learner import LearnerEngine
from stream.apps.privatizer import PrivatizerEngine, build_privatizer
from stream.apps.produce import publish
from stream.apps.shredder import ShredderEngine
from stream.components import build_gateway
from stream.config import Settings
from stream.engine import StreamEngine
from stream.gateway.core import RawRecord
from stream.kafka import ensure_topics
from stream.synth import ClickstreamGenerator
from tests.support.kafka import read_topic, running_in_thread, wait_for

pytestmark = [pytest.mark.integration, pytest.mark.slow]

POISON = [b"\x00\xff not json", b'{"schema": "nope"}', b"[1, 2, 3]", b"x" * 900_000]


# --------------------------------------------------------------------------- harnesses
@dataclass
class Harness:
    """What the suite needs to know of one worker: its engine, its inputs, how outputs map to ids."""

    name: str
    uses_redis: bool
    make: Callable[[Settings], StreamEngine]
    inputs: Callable[[Settings, int, int], list[tuple[str, bytes]]]  # (id, value)
    produced: Callable[[Settings, list[StreamEngine]], Counter[str]]  # id (or "n") -> times output
    by_id: bool = True

    def input_topic(self, s: Settings) -> str:
        return _INPUT[self.name](s)


_INPUT: dict[str, Callable[[Settings], str]] = {
    "gateway": lambda s: s.topics.raw,
    "privatizer": lambda s: s.topics.protected,
    "learner": lambda s: s.topics.features,
    "shredder": lambda s: s.topics.erasure,
}


def _raw_inputs(s: Settings, n: int, seed: int) -> list[tuple[str, bytes]]:
    return [(e["event_id"], orjson.dumps(e)) for e in ClickstreamGenerator(seed=seed).events(n)]


def _gateway_out(s: Settings, engines: list[StreamEngine]) -> Counter[str]:
    recs = read_topic(s.kafka_bootstrap_or_dev(), s.topics.protected, idle=1.5)
    return Counter(orjson.loads(r.value or b"")["event_id"] for r in recs)


def _protected_inputs(s: Settings, n: int, seed: int) -> list[tuple[str, bytes]]:
    events = list(ClickstreamGenerator(seed=seed).events(n))
    res = build_gateway(s).process([RawRecord("raw", 0, i, orjson.dumps(e)) for i, e in enumerate(events)])
    return [(orjson.loads(v)["event_id"], v) for _k, v in res.protected]


def _privatizer_out(s: Settings, engines: list[StreamEngine]) -> Counter[str]:
    # feature reports carry no id (by design): count them
    return Counter({"n": len(read_topic(s.kafka_bootstrap_or_dev(), s.topics.features, idle=1.5))})


def _example_inputs(s: Settings, n: int, seed: int) -> list[tuple[str, bytes]]:
    from tests.support.learner_examples import make_examples

    return [(str(i), v) for i, v in enumerate(make_examples(n, seed=seed).records)]


def _learner_out(s: Settings, engines: list[StreamEngine]) -> Counter[str]:
    return Counter({"n": sum(e.stats.learned for e in engines)})  # type: ignore[attr-defined]


def _erasure_inputs(s: Settings, n: int, seed: int) -> list[tuple[str, bytes]]:
    """Erasure requests signed by the eraser (the authority), as `streamgate erase` writes them."""
    import uuid

    from stream.crypto.keyring import Keyring
    from stream.crypto.signing import signing_key
    from stream.retention.core import sign_erasure_request
    from stream.retention.receipts import rfc3339

    key = signing_key(Keyring.from_settings(s), "erasure")
    out = []
    for i in range(n):
        rid = f"req-{seed}-{i}-{uuid.uuid4().hex[:6]}"
        body = sign_erasure_request(key, rid, user_id=f"u{seed}-{i}", requested_at=rfc3339(time.time()))
        out.append((rid, orjson.dumps(body)))
    return out


def _shredder_out(s: Settings, engines: list[StreamEngine]) -> Counter[str]:
    recs = read_topic(s.kafka_bootstrap_or_dev(), s.topics.audit, idle=1.5)
    ids: Counter[str] = Counter()
    for r in recs:
        doc = orjson.loads(r.value or b"")
        if doc.get("kind") == "erasure" and doc.get("request_id"):
            ids[doc["request_id"]] = 1  # receipts per key may be many: presence per request
    return ids


def _make_privatizer(s: Settings) -> StreamEngine:
    return PrivatizerEngine(s, build_privatizer(s), grace_seconds=0.5, idle_seconds=1.0)


HARNESSES = {
    "gateway": Harness("gateway", True, lambda s: GatewayEngine(s, build_gateway(s)), _raw_inputs, _gateway_out),
    "privatizer": Harness("privatizer", True, _make_privatizer, _protected_inputs, _privatizer_out, by_id=False),
    "learner": Harness("learner", False, lambda s: LearnerEngine(s), _example_inputs, _learner_out, by_id=False),
    "shredder": Harness("shredder", True, lambda s: ShredderEngine(s), _erasure_inputs, _shredder_out),
}


def _settings(settings_factory: Any, unique_id: str, **kw: Any) -> Settings:
    values: dict[str, Any] = dict(
        batch_max_events=200, retry_backoff_seconds=0.2, retry_backoff_max_seconds=1.0, ldp_seed=3,
        ldp_person_epsilon=1000.0, ldp_window_seconds=2.0, learn_snapshot_every=300,
        learn_snapshot_interval_seconds=2.0, shredder_interval_seconds=1.0,
        learner_consumer_group=f"sgl-{unique_id}", privatizer_consumer_group=f"sgp-{unique_id}",
        shredder_consumer_group=f"sgs-{unique_id}", stall_seconds=5.0,
        learn_model="logistic",  # the harness feeds per-event private-example.v1 records (issue 22)
    )
    values.update(kw)
    s: Settings = settings_factory(**values)
    t = s.topics
    b = s.kafka_bootstrap_or_dev()
    ensure_topics(b, [t.raw, t.protected, t.dlq, t.features, t.frequencies, t.partials], partitions=2)
    ensure_topics(b, [t.erasure, t.audit, t.snapshots], partitions=2)
    return s


def _expect(h: Harness, sent: list[tuple[str, bytes]]) -> Counter[str]:
    return Counter(i for i, _ in sent) if h.by_id else Counter({"n": len(sent)})


def _score(h: Harness, sent: list[tuple[str, bytes]], got: Counter[str]) -> tuple[int, int]:
    """(missing, duplicates)"""
    want = _expect(h, sent)
    if h.by_id:
        missing = sum(1 for i in want if got[i] == 0)
        dups = sum(max(0, got[i] - 1) for i in got)
        return missing, dups
    return max(0, want["n"] - got["n"]), max(0, got["n"] - want["n"])


def _report(case: str, worker: str, sent: int, missing: int, dups: int, seconds: float | None = None) -> None:
    extra = f" recovered_in={seconds:.1f}s" if seconds is not None else ""
    print(f"\nCONFORMANCE {case} {worker}: inputs={sent} missing={missing} duplicates={dups}{extra}")


def _done(h: Harness, s: Settings, sent: list[tuple[str, bytes]], engines: list[StreamEngine],
          timeout: float = 90.0) -> Counter[str]:
    want = _expect(h, sent)
    got: Counter[str] = Counter()

    def complete() -> bool:
        nonlocal got
        got = h.produced(s, engines)
        return all(got[k] >= v for k, v in want.items())

    try:
        wait_for(complete, timeout=timeout, interval=1.0, what=f"{h.name} outputs for every input")
    except AssertionError as exc:  # say what the engines were doing
        states = [(e.name, e.not_ready_reason, e.recoveries, getattr(e, "errors", None)) for e in engines]
        raise AssertionError(f"{exc}; engines: {states}") from None
    return got


class _Crash(Exception):
    pass


def crashing(engine: StreamEngine) -> StreamEngine:
    """Make ``engine`` die like a kill -9 when stopped: no last outputs, no drain, no commit."""

    def shutdown() -> None:
        engine._close_clients()

    engine._shutdown = shutdown  # type: ignore[method-assign]
    return engine


# --------------------------------------------------------------------------- the cases
WORKERS = sorted(HARNESSES)


@pytest.mark.parametrize("worker", WORKERS)
def test_poison_records_are_accounted_and_the_rest_flows(worker, settings_factory, unique_id):
    h = HARNESSES[worker]
    s = _settings(settings_factory, unique_id)
    good = h.inputs(s, 300, 1)
    publish(s.kafka_bootstrap_or_dev(), h.input_topic(s), [v for _, v in good[:150]] + POISON
            + [v for _, v in good[150:]])
    with running_in_thread(h.make(s), worker) as engine:
        got = _done(h, s, good, [engine])
        assert engine.healthy
        wait_for(lambda: engine.ready, what="ready after the poison")
    missing, dups = _score(h, good, got)
    _report("poison", worker, len(good) + len(POISON), missing, dups)
    assert missing == 0
    if worker == "gateway":
        dlq = read_topic(s.kafka_bootstrap_or_dev(), s.topics.dlq, expect=len(POISON))
        assert len(dlq) == len(POISON)
        big = [orjson.loads(r.value or b"") for r in dlq if orjson.loads(r.value or b"")["size"] == 900_000]
        assert big and big[0]["sealed"] is None and big[0]["digest"].startswith("hs1.")


@pytest.mark.parametrize("worker", WORKERS)
def test_crash_and_restart_loses_nothing(worker, settings_factory, unique_id):
    h = HARNESSES[worker]
    s = _settings(settings_factory, unique_id)
    sent = h.inputs(s, 600, 2)
    bootstrap = s.kafka_bootstrap_or_dev()
    publish(bootstrap, h.input_topic(s), [v for _, v in sent[:300]])
    first = crashing(h.make(s))
    with running_in_thread(first, f"{worker} 1"):
        wait_for(lambda: first.consumed >= 300, what="the first half consumed")
        time.sleep(1.0)
    publish(bootstrap, h.input_topic(s), [v for _, v in sent[300:]])
    t0 = time.monotonic()
    with running_in_thread(h.make(s), f"{worker} 2") as second:
        got = _done(h, s, sent, [first, second])
        took = time.monotonic() - t0
    missing, dups = _score(h, sent, got)
    _report("crash", worker, len(sent), missing, dups, took)
    assert missing == 0


@pytest.mark.parametrize("worker", WORKERS)
def test_rebalance_mid_stream_loses_nothing(worker, settings_factory, unique_id):
    h = HARNESSES[worker]
    s = _settings(settings_factory, unique_id)
    sent = h.inputs(s, 800, 3)
    bootstrap = s.kafka_bootstrap_or_dev()
    a = h.make(s)
    with running_in_thread(a, f"{worker} a"):
        publish(bootstrap, h.input_topic(s), [v for _, v in sent[:400]])
        time.sleep(2.0)
        b = h.make(s)
        with running_in_thread(b, f"{worker} b"):
            publish(bootstrap, h.input_topic(s), [v for _, v in sent[400:]])
            got = _done(h, s, sent, [a, b])
    missing, dups = _score(h, sent, got)
    _report("rebalance", worker, len(sent), missing, dups)
    assert missing == 0


@pytest.mark.parametrize("worker", [w for w in WORKERS if HARNESSES[w].uses_redis])
def test_redis_down_with_a_rebalance_during_the_wait(worker, settings_factory, unique_id, own_redis):
    h = HARNESSES[worker]
    s = _settings(settings_factory, unique_id, redis_url=own_redis.url, dek_cache_max_staleness_seconds=0.0)
    sent = h.inputs(s, 600, 4)
    bootstrap = s.kafka_bootstrap_or_dev()
    a = h.make(s)
    with running_in_thread(a, f"{worker} a"):
        wait_for(lambda: a.joined, what="a joined")
        own_redis.stop()
        publish(bootstrap, h.input_topic(s), [v for _, v in sent])
        wait_for(lambda: a.held_retries >= 2 or a._tick_attempt >= 2, what="the hold")
        b = h.make(s)
        with running_in_thread(b, f"{worker} b"):
            wait_for(lambda: b.joined, what="b joined: a rebalance during the hold")
            time.sleep(2.0)
            if worker == "gateway":
                assert not read_topic(bootstrap, s.topics.protected, idle=0.5), "emitted while Redis was down"
            assert not a.ready and a.not_ready_reason is not None
            t0 = time.monotonic()
            own_redis.start()
            got = _done(h, s, sent, [a, b])
            took = time.monotonic() - t0
    missing, dups = _score(h, sent, got)
    _report("redis-down+rebalance", worker, len(sent), missing, dups, took)
    assert missing == 0


class OwnBroker:
    """A Tansu broker of one test alone, restartable on the same port (memory storage: a
    restart loses every topic and offset, as a broker that lost its disk would)."""

    def __init__(self, workdir: Path) -> None:
        from stream.dev.stack import free_port

        self.port = free_port()
        self.dir = workdir
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def bootstrap(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self) -> None:
        from stream.dev.stack import find_broker_binary
        from stream.errors import StreamgateError
        from stream.kafka import probe_broker

        url = f"tcp://127.0.0.1:{self.port}"
        self.proc = subprocess.Popen([find_broker_binary(), "broker", "--listener-url", url,
                                      "--advertised-listener-url", url, "--storage-engine", "memory://tansu/"],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 30
        while True:
            try:
                probe_broker(self.bootstrap, timeout=2.0)
                return
            except StreamgateError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.2)

    def kill(self) -> None:
        if self.proc is not None:
            self.proc.kill()
            self.proc.wait(10)
            self.proc = None


@pytest.fixture
def own_broker(tmp_path: Path) -> Iterator[OwnBroker]:
    b = OwnBroker(tmp_path)
    b.start()
    try:
        yield b
    finally:
        b.kill()


@pytest.mark.parametrize("worker", ["gateway", "privatizer"])
def test_broker_killed_and_restarted_recovers_within_30s(worker, settings_factory, unique_id, own_broker):
    """The broker dies and comes back empty (memory storage): the worker resynchronises by
    itself and processes what producers send from then on, within 30 s of the broker's return."""
    h = HARNESSES[worker]
    s = _settings(settings_factory, unique_id)
    s = s.model_copy(update={"kafka_bootstrap": own_broker.bootstrap})
    t = s.topics
    topics = [t.raw, t.protected, t.dlq, t.features, t.frequencies, t.partials]
    ensure_topics(own_broker.bootstrap, topics, partitions=2)
    before, after = h.inputs(s, 300, 5), h.inputs(s, 300, 6)
    engine = h.make(s)
    with running_in_thread(engine, worker):
        publish(own_broker.bootstrap, h.input_topic(s), [v for _, v in before])
        _done(h, s, before, [engine])
        own_broker.kill()
        wait_for(lambda: not engine.ready, what="not ready while the broker is away")
        own_broker.start()
        back = time.monotonic()
        ensure_topics(own_broker.bootstrap, topics, partitions=2)  # as an operator's topics apply would
        publish(own_broker.bootstrap, h.input_topic(s), [v for _, v in after])
        got = _done(h, s, after, [engine], timeout=30.0)
        took = time.monotonic() - back
        assert engine.healthy and engine.recoveries >= 1
    missing, dups = _score(h, after, got)
    _report("broker-restart", worker, len(after), missing, dups, took)
    assert missing == 0


def test_privatizer_windows_survive_a_crash(settings_factory, unique_id):
    """Estimates count every report once even when the privatizer dies with windows open."""
    from stream.ldp.aggregate import merge_records

    s = _settings(settings_factory, unique_id, ldp_window_seconds=3600.0)
    h = HARNESSES["privatizer"]
    sent = h.inputs(s, 1000, 7)
    uncapped = 10**6  # no per-memo count cap: n must count every report exactly once
    bootstrap = s.kafka_bootstrap_or_dev()
    publish(bootstrap, s.topics.protected, [v for _, v in sent[:600]])
    first = crashing(PrivatizerEngine(s, build_privatizer(s), max_reports_per_memo=uncapped))
    with running_in_thread(first, "privatizer 1"):
        wait_for(lambda: first.stats.consumed >= 600, what="the first 600")  # type: ignore[attr-defined]
        time.sleep(1.0)  # their partials delivered
    assert first.stats.windows_published == 0  # type: ignore[attr-defined]
    publish(bootstrap, s.topics.protected, [v for _, v in sent[600:]])
    second = PrivatizerEngine(s, build_privatizer(s), max_reports_per_memo=uncapped)
    with running_in_thread(second, "privatizer 2"):
        wait_for(lambda: second.stats.consumed >= 400, what="the rest")  # type: ignore[attr-defined]
    # the graceful stop of the second publishes the open windows: they hold every report once
    recs = [orjson.loads(r.value or b"") for r in read_topic(bootstrap, s.topics.frequencies, idle=1.5)]
    merged = merge_records(second.privatizer.policy, recs)  # type: ignore[attr-defined]
    counts = {r["attribute"]: r["n"] for r in merged}
    from stream.ldp.privatizer import ProtectedRecord

    offline = build_privatizer(s).process([ProtectedRecord(v, int(time.time() * 1000)) for _i, v in sent])
    print(f"\nCONFORMANCE windows-crash privatizer: inputs={len(sent)} estimate_n={counts} "
          f"expected={dict(offline.reported)}")
    assert counts == dict(offline.reported)
    # the restored window says its memos may count up to 2 m times (error bars stay upper bounds)
    assert {r["max_reports_per_memo"] for r in merged} == {2 * uncapped}



def test_a_fatal_producer_error_recreates_the_clients_and_loses_nothing(settings_factory, unique_id):
    """A real fatal client error: another producer takes over the gateway's transactional id
    (fencing it). The gateway recreates its clients, resumes from the committed offsets, and
    every event ends in clicks.protected."""
    from confluent_kafka import Producer

    from stream.engine.core import instance_id
    from stream.kafka import producer_config

    h = HARNESSES["gateway"]
    s = _settings(settings_factory, unique_id, processing_guarantee="exactly_once")
    sent = h.inputs(s, 600, 8)
    bootstrap = s.kafka_bootstrap_or_dev()
    engine = h.make(s)
    with running_in_thread(engine, "gateway"):
        publish(bootstrap, s.topics.raw, [v for _, v in sent[:300]])
        _done(h, s, sent[:300], [engine])
        fencer = Producer(producer_config(bootstrap, **{"transactional.id": f"{s.consumer_group}-{instance_id()}"}))
        fencer.init_transactions(30)  # the broker fences the gateway's producer epoch
        t0 = time.monotonic()
        publish(bootstrap, s.topics.raw, [v for _, v in sent[300:]])
        got = _done(h, s, sent, [engine])
        took = time.monotonic() - t0
        assert engine.recoveries >= 1 and engine.healthy
    missing, dups = _score(h, sent, got)
    _report("fatal-producer", "gateway", len(sent), missing, dups, took)
    assert missing == 0
