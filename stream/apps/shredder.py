"""The shredder worker: a Faust app hosting the retention/erasure loop as a service.

Like the gateway (:mod:`stream.apps.gateway`), Faust provides lifecycle, signals, logging
and the web server (``/healthz``, ``/readyz``, ``/metrics`` via :func:`stream.ops.worker.install_ops`);
the work runs in :class:`ShredderEngine` on a dedicated thread:

* every ``STREAMGATE_SHREDDER_INTERVAL_SECONDS`` it finishes the receipt outbox and
  shreds every key whose deadline passed (:class:`stream.retention.core.Shredder`);
* in between it consumes ``privacy.erasure`` with the consumer group
  ``<STREAMGATE_GROUP_PREFIX>-shredder`` and commits a request's offset only after its
  receipts (and tombstones) were acknowledged by the broker. A request that fails
  (Redis or Kafka down) is retried from the same offset with backoff; a malformed one
  gets a ``rejected`` receipt and is committed.

Receipts go to ``ops.audit`` through :class:`KafkaReceiptSink` (idempotent producer,
flush and check every delivery report). Time is injected (``clock=``).
"""

from __future__ import annotations

import contextlib
import logging
import socket
import time
from collections.abc import Callable, Sequence
from typing import Any, ClassVar

import faust
import orjson

from stream.apps.hosting import worker_app
from stream.components import build_pseudonyms, redis_client
from stream.config import Settings
from stream.crypto.keyring import Keyring
from stream.crypto.signing import signing_key, verify_key
from stream.crypto.tokens import Tokenizer
from stream.engine import NotDeliveredError, Out, Record, Result, StreamEngine
from stream.errors import ConfigError, KeyUnavailableError
from stream.redisdb import DEADLINE_SHARDS, RedisClient
from stream.retention.core import (
    ErasureConflictError,
    ErasureRejectedError,
    Shredder,
    ShredderError,
    ShredStats,
    candidate_epochs,
    erasure_window,
    parse_erasure_request,
    skew_for,
)
from stream.schema import load_schema
from stream.storage.retention import RedisShredStore
from stream.storage.topics import load_topics_config, tombstone_topics

__all__ = ["KafkaReceiptSink", "ShredderEngine", "create_app", "worker_id"]

log = logging.getLogger("streamgate.shredder")

#: A claimed key whose receipt is not delivered after this long is finished by another shredder.
LEASE_SECONDS = 60.0


def worker_id(settings: Settings) -> str:
    """This instance's stable id: ``STREAMGATE_SHREDDER_INSTANCE_ID`` or the host name."""
    return settings.shredder_instance_id or f"shredder-{socket.gethostname()}"


class KafkaReceiptSink:
    """Writes receipts to the audit topic (and tombstones to compacted topics) through the
    engine; returns only when every record was acknowledged, else raises :class:`ShredderError`."""

    def __init__(self, deliver: Callable[[list[Out]], None], topic: str) -> None:
        self._deliver = deliver
        self.topic = topic
        self.delivered = 0

    def deliver(self, receipts: Sequence[dict[str, Any]], tombstones: Sequence[tuple[str, bytes]] = ()) -> None:
        outs = [Out(self.topic, orjson.dumps(r)) for r in receipts]
        outs.extend(Out(topic, None, key) for topic, key in tombstones)
        try:
            self._deliver(outs)
        except NotDeliveredError as exc:
            raise ShredderError(f"audit records not delivered: {exc}") from None
        self.delivered += len(receipts)


class ShredderEngine(StreamEngine):
    """The shredder's loop on the shared engine (module docstring). ``run(stop)`` until ``stop`` is set."""

    name: ClassVar[str] = "shredder"
    hold_on: ClassVar[tuple[type[BaseException], ...]] = (KeyUnavailableError, ShredderError)
    needs_partitions: ClassVar[bool] = False  # one erasure partition: the other instances hold none

    def __init__(
        self,
        settings: Settings,
        *,
        bootstrap: str | None = None,
        keyring: Keyring | None = None,
        client: RedisClient | None = None,
        clock: Callable[[], float] = time.time,
        metrics: Any = None,
        consumer_overrides: dict[str, Any] | None = None,
    ) -> None:
        super().__init__(settings, bootstrap=bootstrap, metrics=metrics, clock=clock,
                         consumer_overrides=consumer_overrides)
        self.tick_interval = settings.shredder_interval_seconds
        try:  # refused at start when the replay window cannot hold (stream.retention.core.erasure_window)
            self.window = erasure_window(epoch_seconds=settings.epoch_seconds,
                                         retention_seconds=settings.retention_seconds,
                                         skew_seconds=skew_for(settings.epoch_seconds))
        except ValueError as exc:
            raise ConfigError(str(exc)) from None
        self.keyring = keyring or Keyring.from_settings(settings)
        self.tokenizer = Tokenizer(self.keyring)
        self.erasure_key = verify_key(self.keyring, "erasure")  # only requests signed by the eraser run
        self.receipt_key = signing_key(self.keyring, "receipt")  # signs every receipt on ops.audit
        self.token_domain = load_schema(settings.schema_name).subject_domain
        self.store = RedisShredStore(client or redis_client(settings, "shredder"), settings.redis_key_prefix,
                                     shards=DEADLINE_SHARDS)
        with contextlib.suppress(KeyUnavailableError):  # erasure records are kept from now on (if not set)
            self.store.erasure_floor(clock())
        # tk2: a user_id's token is found through the person's secret (lookup only, never created)
        self.pseudonyms = build_pseudonyms(settings, self.keyring, client=self.store.client, role="shredder") \
            if settings.pseudonym_tokens else None
        self.worker = worker_id(settings)
        self.tombstone_topics = tombstone_topics(load_topics_config(settings, settings.topics_config))
        self.shredder = Shredder(
            self.store, KafkaReceiptSink(self.deliver_now, settings.topics.audit), worker=self.worker,
            epoch_seconds=settings.epoch_seconds, retention_seconds=settings.retention_seconds, clock=clock,
            batch_size=settings.shredder_batch_size, lease_seconds=LEASE_SECONDS,
            lead_seconds=settings.shredder_lead_seconds, tombstone_topics=self.tombstone_topics,
            receipt_key=self.receipt_key)
        self.ticks = 0
        self.erasures_committed = 0
        self._reported: dict[str, int] = {"retention": 0, "erasure": 0}
        self._receipts_reported = 0

    # -- state -------------------------------------------------------------------------
    @property
    def stats(self) -> ShredStats:
        return self.shredder.stats

    @property
    def not_ready_reason(self) -> str | None:
        """Ready once the first scan is done and the consumer group has answered (with this
        instance's share of the erasure partitions, which may be none when others hold them)."""
        if self.started and self.ticks == 0:
            return "first shred pass not done"
        return super().not_ready_reason

    def as_dict(self) -> dict[str, Any]:
        d = self.stats.as_dict()
        d.update({"ticks": self.ticks, "erasures_committed": self.erasures_committed,
                  "assigned": len(self.assigned), "tombstone_topics": len(self.tombstone_topics)})
        return d

    def result(self) -> ShredStats:
        return self.stats

    def _report(self) -> None:
        st = self.stats
        for reason, total in (("retention", st.retention_shredded), ("erasure", st.erasure_shredded)):
            delta = total - self._reported[reason]
            if delta > 0 and self.metrics is not None:
                self.metrics.keys_shredded(reason, delta)
            self._reported[reason] = total
        if self.metrics is not None and st.receipts > self._receipts_reported:
            self.metrics.events_out("audit", st.receipts - self._receipts_reported)
        self._receipts_reported = st.receipts

    def _backlog(self) -> None:
        if self.metrics is None:
            return
        now = self.clock()
        with contextlib.suppress(KeyUnavailableError):
            due = self.store.due_count(now)
            oldest = self.store.oldest_deadline()
            self.metrics.set_shred_backlog(due, max(0.0, now - oldest) if due and oldest is not None else 0.0)

    # -- hooks -------------------------------------------------------------------------
    def topics(self) -> list[str]:
        return [self.settings.topics.erasure]

    def output_topics(self) -> list[str]:
        return [self.settings.topics.audit]

    def group(self) -> str:
        return self.settings.shredder_consumer_group

    def batch_limit(self) -> int:
        return 50

    def start(self) -> None:
        log.info("shredder starting", extra={"worker": self.worker,
                                             "interval_s": self.settings.shredder_interval_seconds})

    def tick(self) -> Result | None:
        """Finish the receipt outbox and shred every key whose deadline passed."""
        try:
            n = self.shredder.tick()
        finally:
            self._report()
            self._backlog()
        self.ticks += 1
        if n:
            log.info("shred pass", extra={"keys": n})
        return None

    def process(self, records: list[Record]) -> Result:
        """Execute each request; a failure raises (the batch is held and retried: requests are
        idempotent by ``request_id``). Offsets are committed after the receipts were delivered."""
        for r in records:
            self._erase_one(r.value, f"{r.topic}/{r.partition}/{r.offset}")
        self._report()

        def committed() -> None:
            self.erasures_committed += len(records)

        return Result(on_delivered=committed)

    def _erase_one(self, value: bytes | None, where: str) -> None:
        assert self.shredder is not None
        try:
            # verified (and fresh: younger than the erasure record's TTL) before anything is tokenized
            # the replay window (derived from the idempotency record's life), the deployment, and the time
            # since which Redis kept the records (a request older than that may have lost its record)
            now = self.clock()
            req = parse_erasure_request(value, self.erasure_key, now=now, max_age_seconds=self.window.max_age,
                                        skew_seconds=self.window.skew, audience=self.settings.deployment_id,
                                        not_before=self.store.erasure_floor(now))
        except ErasureRejectedError as exc:
            # unauthenticated or malformed: an erasure_rejected record naming nobody (no user_id, no token)
            log.warning("erasure request rejected", extra={"error": exc.code, "at": where})
            self.shredder.reject(request_id=None, error=exc.code, discriminator=where)
            return
        try:
            subject = req.subject
            if subject is None:
                user_id = req.user_id or ""
                subject = self.tokenizer.token(self.token_domain, user_id)  # tk1
                if self.pseudonyms is not None:
                    # tk2 (none: a token nobody has). Data of the tk1 era still within retention after
                    # the switch is erased first, under its tk1 token.
                    epochs = candidate_epochs(self.clock(), epoch_seconds=self.settings.epoch_seconds,
                                              retention_seconds=self.settings.retention_seconds)
                    if self.store.has_keys(subject, epochs):
                        self.shredder.erase(subject, f"{req.request_id[:120]}.tk1", requested_at=req.requested_at)
                    subject = self.pseudonyms.lookup(user_id) or self.pseudonyms.absent_token(req.request_id)
            outcome = self.shredder.erase(subject, req.request_id, requested_at=req.requested_at, digest=req.digest)
        except ErasureConflictError:
            log.warning("erasure request rejected: request_id reused", extra={"at": where})
            self.shredder.reject(request_id=req.request_id, error="request_id_conflict", discriminator=where)
            return
        log.info("erasure done", extra={"request_id": outcome.request_id, "keys": outcome.keys_shredded,
                                        "repeated": outcome.repeated})




def create_app(settings: Settings) -> faust.App:
    """The shredder's Faust app. ``streamgate shredder`` runs it as a worker (hosted like every
    worker: :mod:`stream.apps.hosting`)."""
    from stream.ops.metrics import WorkerMetrics

    def build(metrics: WorkerMetrics) -> ShredderEngine:
        return ShredderEngine(settings, metrics=metrics)

    return worker_app(settings, "shredder", build, lambda engine: engine.as_dict())
