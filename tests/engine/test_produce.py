"""The engine's produce path without a broker: ``classify`` and ``Sink`` against a fake producer."""

from __future__ import annotations

import itertools

import pytest
from confluent_kafka import KafkaError

from stream.engine.contract import Out
from stream.engine.produce import Disposition, Sink, Ticket, classify
from tests.engine.fakes import FakeProducer

RETRY = [KafkaError._QUEUE_FULL, KafkaError._MSG_TIMED_OUT, KafkaError._TRANSPORT, KafkaError._ALL_BROKERS_DOWN,
         KafkaError.NOT_LEADER_FOR_PARTITION, KafkaError.REQUEST_TIMED_OUT]
RECORD = [KafkaError.MSG_SIZE_TOO_LARGE, KafkaError.INVALID_RECORD,
          KafkaError.INVALID_MSG, KafkaError.RECORD_LIST_TOO_LARGE, KafkaError._INVALID_ARG]
FATAL = [KafkaError._FENCED, KafkaError.PRODUCER_FENCED, KafkaError.OUT_OF_ORDER_SEQUENCE_NUMBER,
         KafkaError.TOPIC_AUTHORIZATION_FAILED, KafkaError.CLUSTER_AUTHORIZATION_FAILED,
         KafkaError._PURGE_QUEUE, KafkaError._PURGE_INFLIGHT]


@pytest.mark.parametrize(("codes", "want"), [(RETRY, Disposition.RETRY), (RECORD, Disposition.RECORD),
                                             (FATAL, Disposition.FATAL)])
def test_classify(codes, want):
    assert [classify(KafkaError(c)) for c in codes] == [want] * len(codes)


def test_classify_a_fatal_flag_wins_over_the_code():
    assert classify(KafkaError(KafkaError._QUEUE_FULL, "x", fatal=True)) is Disposition.FATAL
    assert classify(KafkaError(KafkaError.MSG_SIZE_TOO_LARGE, "x", fatal=True)) is Disposition.FATAL


class Harness:
    """A Sink on a fake producer, recording what it tells the engine; a fake clock that advances
    by each poll's wait (the Sink blocks only through ``poll``)."""

    def __init__(self, producer: FakeProducer, *, replacement: bool = True, stop: bool = False,
                 block_seconds: float = 30.0) -> None:
        self.producer = producer
        self.retries = 0
        self.fatal: list[str] = []
        self.replaced: list[tuple[Out, str]] = []
        self.stopped = stop
        self.now = 0.0
        poll = producer.poll

        def timed_poll(timeout: float = 0.0) -> int:
            self.now += max(timeout, 0.01)
            return poll(timeout)

        producer.poll = timed_poll  # type: ignore[method-assign]
        self.sink = Sink(producer, undeliverable=(lambda o, e: Out("dlq", b"small")) if replacement else (lambda o, e: None),
                         on_retry=self._retry, on_fatal=self.fatal.append,
                         on_replaced=lambda o, e: self.replaced.append((o, e)), stop=lambda: self.stopped,
                         block_seconds=block_seconds, clock=lambda: self.now)

    def _retry(self, n: int) -> None:
        self.retries += n

    def ticket(self, outs: list[Out]) -> Ticket:
        return Ticket(self.sink, {("in", 0): len(outs)}, outs)


def outs(n: int, topic: str = "out", *, ts: bool = False) -> list[Out]:
    return [Out(topic, b"v%d" % i, b"k%d" % i, 1000 + i if ts else None) for i in range(n)]


def test_headers_reach_the_producer_in_order_with_their_records():
    """A run with headers (the gateway's trace context) goes record by record, in order: produce_batch
    cannot carry headers, and records of one key must keep their order."""
    h = Harness(FakeProducer(buffer_errors=2))
    run = [Out("out", b"v%d" % i, b"k", None, [("traceparent", b"t%d" % i)] if i % 2 else None) for i in range(6)]
    t = h.ticket(run)
    h.sink.send(t)
    assert h.sink.flush(5) == 0 and t.done and not h.fatal
    got = [(m.value(), m.headers()) for m in h.producer.delivered]
    assert got == [(o.value, o.headers) for o in run]


@pytest.mark.parametrize("ts", [False, True])  # produce_batch, and produce one by one (timestamps)
def test_a_full_queue_is_retried_counted_and_then_delivered(ts):
    h = Harness(FakeProducer(buffer_errors=3))
    t = h.ticket(outs(5, ts=ts))
    h.sink.send(t)
    assert h.sink.flush(5) == 0 and t.done
    assert h.retries >= 3 and h.sink.retries == h.retries and not h.fatal
    assert sorted(m.value() for m in h.producer.delivered) == sorted(o.value for o in t.outputs)


@pytest.mark.parametrize("ts", [False, True])
def test_a_queue_that_stays_full_fails_the_producer_after_the_bound(ts):
    h = Harness(FakeProducer(buffer_errors=None), block_seconds=2.0)
    t = h.ticket(outs(4, ts=ts))
    h.sink.send(t)  # returns: bounded, not a loop for ever
    assert len(h.fatal) == 1 and "still full after 2 s" in h.fatal[0]
    assert h.sink.fatal and not t.done and h.now >= 2.0
    assert h.now < 3.0 + 4  # stopped soon after the bound (one wait per record at most)


@pytest.mark.parametrize("ts", [False, True])
def test_a_re_send_that_meets_a_full_queue_again_is_counted(ts):
    """Records kept for a later re-send (the stop ended the wait) that meet a full queue again are
    re-queued and counted each time (streamgate_engine_retries_total{cause="produce"}), not silently."""
    h = Harness(FakeProducer(buffer_errors=None), stop=True)
    t = h.ticket(outs(3, ts=ts))
    h.sink.send(t)
    before = h.retries
    h.sink.service()  # the queue is still full
    assert h.retries == before + 3 and h.sink.retries == h.retries and not t.done
    h.producer.buffer_errors = 0
    assert h.sink.flush(5) == 0 and t.done


@pytest.mark.parametrize("ts", [False, True])
def test_a_stop_ends_the_wait_and_keeps_the_records_for_the_flush(ts):
    h = Harness(FakeProducer(buffer_errors=None), stop=True)
    t = h.ticket(outs(3, ts=ts))
    h.sink.send(t)
    assert not h.fatal and not t.done and h.now < 1.0
    h.producer.buffer_errors = 0  # room again: the shutdown flush delivers what was kept
    assert h.sink.flush(5) == 0 and t.done


@pytest.mark.parametrize("code", RETRY)
def test_a_retriable_delivery_error_is_resent(code):
    h = Harness(FakeProducer(delivery_errors=[KafkaError(code)] * 2))
    t = h.ticket(outs(3))
    h.sink.send(t)
    assert h.sink.flush(5) == 0 and t.done
    assert h.retries == 2 and not h.fatal and len(h.producer.delivered) == 3


@pytest.mark.parametrize("code", RECORD)
def test_a_record_error_on_delivery_is_replaced_and_the_rest_flows(code):
    h = Harness(FakeProducer(delivery_errors=[KafkaError(code)]))
    t = h.ticket(outs(3))
    h.sink.send(t)
    assert h.sink.flush(5) == 0 and t.done and not h.fatal
    assert len(h.replaced) == 1 and h.replaced[0][0].value == b"v0"
    assert sorted(m.value() for m in h.producer.delivered) == [b"small", b"v1", b"v2"]


@pytest.mark.parametrize("code", RECORD)
def test_a_record_error_without_a_replacement_is_fatal(code):
    h = Harness(FakeProducer(delivery_errors=[KafkaError(code)]), replacement=False)
    h.sink.send(h.ticket(outs(2)))
    h.sink.flush(1)
    assert len(h.fatal) == 1 and "no replacement" in h.fatal[0]


@pytest.mark.parametrize("code", FATAL)
def test_a_fatal_delivery_error_stops_the_sink(code):
    h = Harness(FakeProducer(delivery_errors=[KafkaError(code)]))
    t = h.ticket(outs(3))
    h.sink.send(t)
    assert h.sink.flush(1) >= 1 and h.fatal and h.sink.fatal


@pytest.mark.parametrize(("code", "ts"), list(itertools.product(FATAL[:3] + RECORD[:2] + RETRY[:2], [False, True])))
def test_an_error_raised_when_queueing_is_classified(code, ts):
    h = Harness(FakeProducer(raise_on_produce=KafkaError(code)))
    t = h.ticket(outs(2, ts=ts))
    h.sink.send(t)
    left = h.sink.flush(5)
    kind = classify(KafkaError(code))
    if kind is Disposition.FATAL:
        assert h.fatal and left >= 1
    else:
        assert not h.fatal and left == 0 and t.done
        # a refused batch call is tried record by record (the fake refuses one call only); a refused
        # single record is replaced
        assert len(h.replaced) == (1 if kind is Disposition.RECORD and ts else 0)
        assert len(h.producer.delivered) == 2
