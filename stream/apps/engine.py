"""The gateway worker on the shared engine: ``clicks.raw`` -> ``clicks.protected`` / ``clicks.dlq``.

What is its own: protect a batch with the pure core (:class:`stream.gateway.core.Gateway`),
and replace a record Kafka refuses for good by a compact dead letter. The loop, holds,
produce errors, commits and health are :class:`stream.engine.StreamEngine`'s.

Delivery: ``at_least_once`` (default) commits a batch once its outputs were acknowledged;
a crash re-emits it (downstream dedupes by ``event_id``). ``exactly_once`` writes a batch's
outputs and offsets in one Kafka transaction. Fail closed: with the key store or the KEK
unavailable nothing of the batch is emitted; it is held and retried.
"""

from __future__ import annotations

import contextlib
import math
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, ClassVar

from confluent_kafka import KafkaException
from confluent_kafka.admin import AdminClient, ConfigResource

from stream.config import Settings
from stream.engine import Out, Record, Result, StreamEngine
from stream.errors import ConfigError
from stream.gateway.core import BatchResult, Gateway
from stream.kafka import admin_config
from stream.registry import RegistryUnavailableError

__all__ = ["EngineStats", "GatewayEngine", "dead_letter_bound"]


def dead_letter_bound(max_event_bytes: int) -> int:
    """The largest dead letter an input of ``max_event_bytes`` can give: its value base64'd,
    sealed and base64'd again (16/9), plus the record's fields."""
    return math.ceil(max_event_bytes * 16 / 9) + 4096


@dataclass
class EngineStats:
    consumed: int = 0
    protected: int = 0
    dead_lettered: int = 0
    batches: int = 0
    fail_closed_retries: int = 0
    produce_retries: int = 0
    replaced: int = 0
    reasons: Counter[str] = field(default_factory=Counter)
    first_event_at: float | None = None
    last_event_at: float | None = None

    @property
    def emitted(self) -> int:
        return self.protected + self.dead_lettered

    def rate(self) -> float:
        """Events/s from the first to the last consumed event."""
        if self.first_event_at is None or self.last_event_at is None or self.last_event_at <= self.first_event_at:
            return 0.0
        return self.consumed / (self.last_event_at - self.first_event_at)

    def as_dict(self) -> dict[str, Any]:
        return {
            "consumed": self.consumed,
            "protected": self.protected,
            "dead_lettered": self.dead_lettered,
            "batches": self.batches,
            "fail_closed_retries": self.fail_closed_retries,
            "produce_retries": self.produce_retries,
            "replaced": self.replaced,
            "reasons": dict(self.reasons),
            "rate": round(self.rate(), 1),
        }


class GatewayEngine(StreamEngine):
    """The gateway on Kafka until ``stop`` is set (or ``max_events`` were emitted)."""

    name: ClassVar[str] = "gateway"
    hold_on: ClassVar[tuple[type[BaseException], ...]] = (*StreamEngine.hold_on, RegistryUnavailableError)

    def __init__(self, settings: Settings, gateway: Gateway, *, bootstrap: str | None = None,
                 on_batch: Callable[[EngineStats], None] | None = None,
                 consumer_overrides: dict[str, Any] | None = None, metrics: Any = None) -> None:
        if metrics is None:
            from stream.ops.metrics import WorkerMetrics
            metrics = WorkerMetrics("gateway")
        super().__init__(settings, bootstrap=bootstrap, metrics=metrics, consumer_overrides=consumer_overrides)
        self.gateway = gateway
        self.on_batch = on_batch
        self.stats = EngineStats()
        self._moved = 0  # protected outputs Kafka refused, replaced by dead letters, not accounted yet
        self.transactional = settings.processing_guarantee == "exactly_once"
        self.frame: bytes | None = None  # the Confluent frame of clicks.protected values (gateway_frame_output)

    # -- hooks -------------------------------------------------------------------------------
    def topics(self) -> list[str]:
        return [self.settings.topics.raw]

    def output_topics(self) -> list[str]:
        return [self.settings.topics.protected, self.settings.topics.dlq]

    def group(self) -> str:
        return self.settings.consumer_group

    def client_id(self) -> str:
        return "streamgate"

    def extra_consumer_config(self) -> dict[str, Any]:
        return {"isolation.level": "read_committed"} if self.transactional else {}

    def start(self) -> None:
        if self.settings.gateway_frame_output:  # registered before anything is consumed, or no start
            if self.gateway.resolver is None:
                raise ConfigError("STREAMGATE_GATEWAY_FRAME_OUTPUT needs STREAMGATE_SCHEMA_REGISTRY_URL")
            self.frame = self.gateway.resolver.register_output(f"{self.settings.topics.protected}-value")
        self.check_limits()

    def process(self, records: list[Record]) -> Result:
        st = self.stats
        now = time.monotonic()
        if st.first_event_at is None:
            st.first_event_at = now
        st.consumed += len(records)
        try:
            result = self.gateway.process(records)
        except self.hold_on:
            st.consumed -= len(records)  # counted again on the retry
            st.fail_closed_retries += 1
            raise
        t = self.settings.topics
        if self.frame is not None:
            head = self.frame
            result.protected = [(k, head + v) for k, v in result.protected]
        if result.headers:  # allow-listed headers (trace context) of the inputs, onto their protected records
            outs = [Out(t.protected, v, k, None, result.headers.get(i)) for i, (k, v) in enumerate(result.protected)]
        else:
            outs = [Out(t.protected, v, k) for k, v in result.protected]
        outs.extend(Out(t.dlq, v) for v in result.dead_letters)
        return Result(outs, on_delivered=lambda: self._account(result))

    def undeliverable(self, out: Out, error: str) -> Out | None:
        self.stats.replaced += 1
        if out.topic == self.settings.topics.protected:  # a protected record ends as a dead letter:
            self._moved += 1  # counted so when its result is accounted (always after this call)
        else:
            self.stats.reasons["too_large"] += 1
        return Out(self.settings.topics.dlq, self.gateway.compact_dead_letter(out.value, topic=out.topic, error=error))

    def reset(self) -> None:
        """The clients were recreated: the results the replaced records were counted for are gone
        (their input is read again), so are those counts."""
        self._moved = 0

    def result(self) -> EngineStats:
        self.stats.produce_retries = self.produce_retries
        return self.stats

    def events_done(self) -> int:
        return self.stats.emitted

    # -- limits --------------------------------------------------------------------------------
    def check_limits(self) -> None:
        """Every accepted input's dead letter must fit the producer's and the DLQ topic's limits."""
        s = self.settings
        bound = dead_letter_bound(s.max_event_bytes)
        if bound > s.producer_max_message_bytes:
            raise ConfigError(
                f"STREAMGATE_MAX_EVENT_BYTES={s.max_event_bytes} can give dead letters of {bound} bytes, over "
                f"STREAMGATE_PRODUCER_MAX_MESSAGE_BYTES={s.producer_max_message_bytes}: lower the first")
        topic_max = _topic_max_message_bytes(self.bootstrap, s.topics.dlq)
        if topic_max is not None and bound > topic_max:
            raise ConfigError(f"topic {s.topics.dlq} accepts records up to {topic_max} bytes (max.message.bytes), "
                              f"but dead letters can reach {bound}: lower STREAMGATE_MAX_EVENT_BYTES")

    def extra_producer_config(self) -> dict[str, Any]:
        return {"message.max.bytes": self.settings.producer_max_message_bytes}

    # -- accounting -----------------------------------------------------------------------------
    def _account(self, result: BatchResult) -> None:
        st = self.stats
        moved = min(self._moved, len(result.protected))  # (over the in-flight results, the totals add up)
        self._moved -= moved
        protected, dead = len(result.protected) - moved, len(result.dead_letters) + moved
        reasons = result.reasons + Counter(too_large=moved) if moved else result.reasons
        st.protected += protected
        st.dead_lettered += dead
        st.reasons.update(reasons)
        st.batches += 1
        st.last_event_at = time.monotonic()
        st.produce_retries = self.produce_retries
        m = self.metrics
        if m is not None:
            if protected:
                m.events_out("protected", protected)
            if dead:
                m.events_out("dlq", dead)
                m.dead_lettered_many(reasons)
            ds = self.gateway.deks.stats
            m.set_dek_cache(ds.hits, ds.misses, ds.created)
        if self.on_batch is not None:
            self.on_batch(st)


def _topic_max_message_bytes(bootstrap: str, topic: str) -> int | None:
    """The topic's ``max.message.bytes`` (None when the broker does not say)."""
    with contextlib.suppress(KafkaException, ValueError, TypeError, RuntimeError):
        admin = AdminClient(admin_config(bootstrap))
        futures = admin.describe_configs([ConfigResource(ConfigResource.Type.TOPIC, topic)], request_timeout=5)
        for fut in futures.values():
            entry = fut.result(timeout=5).get("max.message.bytes")
            if entry is not None and entry.value is not None:
                return int(entry.value)
    return None
