"""Produce with one classified error path.

Every produce error, whether raised when queueing or reported on delivery, is one of:

* ``RETRY``: the local queue is full, a broker is away, a delivery timed out. The record
  is queued again after serving delivery reports; each retry is counted and logged
  (rate-limited), never silent. A full queue blocks a send for at most ``block_seconds``
  (then the client counts as failed: ``FATAL``) and never past the stop event (the records
  stay for the shutdown flush; uncommitted, a restart re-reads them).
* ``RECORD``: this record can never be written (too large, invalid). The engine asks the
  worker for a replacement that fits (a compact dead letter) and the rest flows.
* ``FATAL``: the client is unusable (fenced, idempotence sequence desync, not authorized).
  The engine recreates its clients and resumes from the committed offsets.
"""

from __future__ import annotations

import enum
import logging
import time
from collections.abc import Callable
from typing import Any

from confluent_kafka import KafkaError, KafkaException, Producer

from stream.engine.contract import Out

__all__ = ["BLOCK_SECONDS", "Disposition", "RateLimitedLog", "Sink", "Ticket", "classify"]

log = logging.getLogger("streamgate.engine")

#: Longest a full local produce queue may block one send before the producer counts as failed.
BLOCK_SECONDS = 30.0


class Disposition(enum.Enum):
    RETRY = "retry"
    RECORD = "record"
    FATAL = "fatal"


_RECORD_CODES = frozenset(
    c for c in (
        getattr(KafkaError, name, None)
        for name in ("MSG_SIZE_TOO_LARGE", "INVALID_RECORD", "INVALID_MSG",  # INVALID_MSG: Kafka's CORRUPT_MESSAGE
                     "RECORD_LIST_TOO_LARGE", "_INVALID_ARG", "INVALID_REQUIRED_ACKS", "_KEY_SERIALIZATION",
                     "_VALUE_SERIALIZATION")
    ) if c is not None
)
_FATAL_CODES = frozenset(
    c for c in (
        getattr(KafkaError, name, None)
        for name in ("_FATAL", "_FENCED", "PRODUCER_FENCED", "INVALID_PRODUCER_EPOCH", "OUT_OF_ORDER_SEQUENCE_NUMBER",
                     "UNKNOWN_PRODUCER_ID", "INVALID_PRODUCER_ID_MAPPING", "TOPIC_AUTHORIZATION_FAILED",
                     "CLUSTER_AUTHORIZATION_FAILED", "TRANSACTIONAL_ID_AUTHORIZATION_FAILED",
                     "SASL_AUTHENTICATION_FAILED", "_AUTHENTICATION", "_INCONSISTENT",
                     # librdkafka purges queued records only after a fatal error or an aborted
                     # transaction (the engine never purges): the client must be recreated
                     "_PURGE_QUEUE", "_PURGE_INFLIGHT")
    ) if c is not None
)


def classify(err: KafkaError) -> Disposition:
    """The disposition of one produce error (module docstring)."""
    if err.fatal() or err.code() in _FATAL_CODES:
        return Disposition.FATAL
    if err.code() in _RECORD_CODES:
        return Disposition.RECORD
    return Disposition.RETRY


def error_name(err: KafkaError | KafkaException | BaseException) -> str:
    """``NAME: description`` of a Kafka error (log-safe: librdkafka's text, no record content)."""
    if isinstance(err, KafkaException):
        err = err.args[0] if err.args else err
    if isinstance(err, KafkaError):
        return f"{err.name()}: {err.str()}"
    return type(err).__name__


class RateLimitedLog:
    """Log a repeated condition once, then at most every ``interval`` seconds with the count since."""

    def __init__(self, logger: logging.Logger, interval: float = 10.0) -> None:
        self.logger = logger
        self.interval = interval
        self._last: dict[str, tuple[float, int]] = {}

    def __call__(self, level: int, key: str, msg: str, **extra: Any) -> None:
        now = time.monotonic()
        at, suppressed = self._last.get(key, (float("-inf"), 0))
        if now - at < self.interval:
            self._last[key] = (at, suppressed + 1)
            return
        self._last[key] = (now, 0)
        if suppressed:
            extra["suppressed"] = suppressed
        self.logger.log(level, msg, extra=extra)


class Ticket:
    """One result in flight: its outputs' delivery and the offsets they free for commit."""

    __slots__ = ("checkpoint", "defer", "offsets", "on_delivered", "outputs", "pending", "records", "sink", "starts")

    def __init__(self, sink: Sink, offsets: dict[tuple[str, int], int], outputs: list[Out], *,
                 defer: bool = False, checkpoint: bool = False,
                 on_delivered: Callable[[], None] | None = None, records: int = 0) -> None:
        self.sink = sink
        self.records = records  # input records whose offsets this ticket frees
        self.starts: dict[tuple[str, int], int] = {}  # their lowest offsets (a recovery that drops them)
        self.offsets = offsets
        self.outputs = outputs
        self.pending = len(outputs)
        self.defer = defer
        self.checkpoint = checkpoint
        self.on_delivered = on_delivered

    @property
    def done(self) -> bool:
        return self.pending <= 0

    def on_delivery(self, err: KafkaError | None, msg: Any) -> None:
        if err is None:
            self.pending -= 1
            return
        try:
            self.sink.failed(self, err, msg)
        except Exception as exc:  # never let an exception escape into librdkafka's callback
            self.sink.on_fatal(f"delivery report could not be handled: {type(exc).__name__}: {exc}")


class Sink:
    """The engine's producer side: queue outputs, sort out errors (module docstring).

    ``undeliverable(out, error)`` is the worker's replacement for a ``RECORD`` failure (or
    None: then the engine stops, since the record would be lost). ``on_retry`` and
    ``on_fatal`` let the engine count and react.
    """

    def __init__(self, producer: Producer, *, undeliverable: Callable[[Out, str], Out | None],
                 on_retry: Callable[[int], None], on_fatal: Callable[[str], None],
                 on_replaced: Callable[[Out, str], None], stop: Callable[[], bool] = lambda: False,
                 block_seconds: float = BLOCK_SECONDS, clock: Callable[[], float] = time.monotonic) -> None:
        self.producer = producer
        self.stop = stop
        self.block_seconds = block_seconds
        self.clock = clock
        self.undeliverable = undeliverable
        self.on_retry = on_retry
        self._on_fatal = on_fatal
        self.fatal = False  # the client is unusable: nothing more is sent through it
        self.on_replaced = on_replaced
        self._redo: list[tuple[Ticket, Out]] = []
        self._rlog = RateLimitedLog(log)
        self.retries = 0

    def on_fatal(self, why: str) -> None:
        self.fatal = True
        self._redo.clear()
        self._on_fatal(why)

    # -- queueing ---------------------------------------------------------------------------
    def send(self, ticket: Ticket) -> None:
        """Queue every output of ``ticket`` (grouped by topic, one produce_batch per run)."""
        outs = ticket.outputs
        i, n = 0, len(outs)
        while i < n:
            topic = outs[i].topic
            j = i + 1
            while j < n and outs[j].topic == topic:
                j += 1
            self._send_run(ticket, outs[i:j])
            i = j

    def _send_run(self, ticket: Ticket, run: list[Out]) -> None:
        if run[0].timestamp_ms is not None or any(o.headers for o in run):
            # produce_batch cannot set timestamps or headers: one record at a time, in order
            for o in run:
                self._single(ticket, o, wait=True)
            return
        topic = run[0].topic
        msgs: list[dict[str, Any]] = []
        for o in run:
            d: dict[str, Any] = {"value": o.value}
            if o.key is not None:
                d["key"] = o.key
            if o.timestamp_ms is not None:
                d["timestamp"] = o.timestamp_ms
            msgs.append(d)
        cb = ticket.on_delivery
        pending = list(zip(run, msgs, strict=True))
        deadline = self.clock() + self.block_seconds
        while pending:
            try:
                queued = self.producer.produce_batch(topic, [m for _, m in pending], on_delivery=cb)
            except BufferError:
                queued = 0
                for m in (m for _, m in pending):
                    m.setdefault("_error", KafkaError(KafkaError._QUEUE_FULL))
            except KafkaException as exc:
                self._raised(ticket, pending, exc)
                return
            if queued == len(pending):
                return
            again: list[tuple[Out, dict[str, Any]]] = []
            for o, m in pending:
                err = m.pop("_error", None)
                if err is None:
                    continue
                disposition = classify(err) if isinstance(err, KafkaError) else Disposition.RETRY
                if disposition is Disposition.RETRY:
                    again.append((o, m))
                elif disposition is Disposition.RECORD:
                    self._replace(ticket, o, error_name(err))
                else:
                    self.on_fatal(error_name(err))
                    return
            if again:
                self._count_retry(len(again), "produce queue full or broker away: records re-queued",
                                  "queue")
                if self._blocked(deadline, len(again)):
                    if not self.fatal:
                        self._redo.extend((ticket, o) for o, _ in again)
                    return
                self._poll(0.05)
            pending = again

    def _blocked(self, deadline: float, n: int) -> bool:
        """Stop waiting for room in the queue: the worker stops (the records wait in the redo list
        for the shutdown flush) or the wait passed ``block_seconds`` (the producer is failed)."""
        if self.stop():
            return True
        if self.clock() >= deadline:
            self.on_fatal(f"produce queue still full after {self.block_seconds:.0f} s: {n} records not queued")
            return True
        return False

    def _raised(self, ticket: Ticket, pending: list[tuple[Out, dict[str, Any]]], exc: KafkaException) -> None:
        err = exc.args[0] if exc.args and isinstance(exc.args[0], KafkaError) else None
        disposition = classify(err) if err is not None else Disposition.FATAL
        if disposition is Disposition.FATAL:
            self.on_fatal(error_name(exc))
        elif disposition is Disposition.RECORD:
            for o, _m in pending:  # produce_batch refused the call: try each record on its own
                self._single(ticket, o)
        else:
            self._count_retry(len(pending), "produce refused: records re-queued", "raised")
            self._redo.extend((ticket, o) for o, _ in pending)

    def _single(self, ticket: Ticket, o: Out, *, wait: bool = False) -> None:
        """Queue one record; ``wait``: on a full queue serve delivery reports and try again
        (else it is re-sent by the next :meth:`service`)."""
        deadline = self.clock() + self.block_seconds
        while wait:
            try:
                self._produce_one(ticket, o)
                return
            except BufferError:
                self._count_retry(1, "produce queue full: records re-queued", "queue")
                if self._blocked(deadline, 1):
                    if not self.fatal:
                        self._redo.append((ticket, o))
                    return
                self._poll(0.05)
                if self.fatal:
                    return
            except KafkaException as exc:
                self._refused(ticket, o, exc)
                return
        try:
            self._produce_one(ticket, o)
        except BufferError:
            self._count_retry(1, "produce queue full: record re-queued", "queue")
            self._redo.append((ticket, o))
        except KafkaException as exc:
            self._refused(ticket, o, exc)

    def _produce_one(self, ticket: Ticket, o: Out) -> None:
        if o.headers:
            self.producer.produce(o.topic, o.value, o.key, on_delivery=ticket.on_delivery,
                                  headers=o.headers,  # type: ignore[arg-type]
                                  timestamp=0 if o.timestamp_ms is None else o.timestamp_ms)
        elif o.timestamp_ms is None:
            self.producer.produce(o.topic, o.value, o.key, on_delivery=ticket.on_delivery)
        else:
            self.producer.produce(o.topic, o.value, o.key, on_delivery=ticket.on_delivery,
                                  timestamp=o.timestamp_ms)

    def _refused(self, ticket: Ticket, o: Out, exc: KafkaException) -> None:
        err = exc.args[0] if exc.args and isinstance(exc.args[0], KafkaError) else None
        disposition = classify(err) if err is not None else Disposition.FATAL
        if disposition is Disposition.RECORD:
            self._replace(ticket, o, error_name(exc))
        elif disposition is Disposition.FATAL:
            self.on_fatal(error_name(exc))
        else:
            self._count_retry(1, "produce refused: record re-queued", "raised", error=error_name(exc))
            self._redo.append((ticket, o))

    # -- delivery reports ---------------------------------------------------------------------
    def failed(self, ticket: Ticket, err: KafkaError, msg: Any) -> None:
        """A delivery report with an error (called from ``poll``/``flush``)."""
        if self.fatal:
            return  # the engine recreates the client and resumes from the committed offsets
        disposition = classify(err)
        if disposition is Disposition.FATAL:  # (a purged message's accessors may fail: not touched)
            self.on_fatal(error_name(err))
            return
        o = _out_of(ticket, msg)
        if disposition is Disposition.RECORD:
            self._replace(ticket, o, error_name(err))
        else:
            self._count_retry(1, "delivery failed, record re-sent", "delivery", error=error_name(err))
            self._redo.append((ticket, o))

    def _replace(self, ticket: Ticket, o: Out, error: str) -> None:
        replacement = self.undeliverable(o, error)
        self.on_replaced(o, error)
        if replacement is None:
            self.on_fatal(f"a record for {o.topic} can never be written ({error}) and the worker has no "
                          "replacement for it")
            return
        self._single(ticket, replacement)

    def _count_retry(self, n: int, msg: str, key: str, **extra: Any) -> None:
        self.retries += n
        self.on_retry(n)
        self._rlog(logging.WARNING, key, msg, count=n, retries=self.retries, **extra)

    def _poll(self, timeout: float, *, flush: bool = False) -> int:
        """``poll`` / ``flush``; a client that fails inside them (confluent-kafka raises
        SystemError from a fatal transactional producer) is reported fatal."""
        try:
            return self.producer.flush(timeout) if flush else (self.producer.poll(timeout) and 0)
        except (SystemError, KafkaException) as exc:
            self.on_fatal(f"producer failed: {error_name(exc)}: {exc}")
            return 1

    def service(self, timeout: float = 0.0) -> None:
        """Serve delivery reports and re-send what asked for it."""
        self._poll(timeout)
        if self._redo and not self.fatal:
            redo, self._redo = self._redo, []
            for ticket, o in redo:
                self._single(ticket, o)

    def flush(self, timeout: float) -> int:
        """Deliver everything queued (re-sending retriable failures) within ``timeout``; returns
        how many records are still undelivered."""
        deadline = time.monotonic() + timeout
        while True:
            left = self._poll(max(0.0, min(1.0, deadline - time.monotonic())), flush=True)
            if self.fatal:
                return max(left, 1)
            if self._redo:
                self.service()
                left += 1
            if not left or time.monotonic() >= deadline:
                return left


def _out_of(ticket: Ticket, msg: Any) -> Out:
    """The output a delivery report is about (rare: only for failed deliveries)."""
    value, key, topic = msg.value(), msg.key(), msg.topic()
    for o in ticket.outputs:
        if o.topic == topic and o.value == value and o.key == key:
            return o
    _ts_type, ts = msg.timestamp()
    return Out(topic, value, key, ts if ts and ts > 0 else None)
