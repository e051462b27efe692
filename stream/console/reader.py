"""The console's one consumer: the derived topics only, from their beginning, nothing committed.

The console may read ``ops.metrics``, ``analytics.frequencies``, ``ops.audit`` and
``models.snapshots`` (names from :class:`stream.config.TopicNames`) and nothing else:
:func:`check_topics` refuses any other topic before it is assigned (``clicks.raw`` and
``clicks.protected`` above all). Receipts and snapshots are verified here, with the public keys
of the settings' keyring (the verifier credential is enough), before they are folded.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Callable, Iterable
from typing import Any

import orjson
from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaError, KafkaException, Message, TopicPartition

from stream.config import Settings, TopicNames
from stream.console.state import RECEIPT_KINDS, ConsoleState
from stream.errors import BrokerUnreachableError, StreamgateError
from stream.kafka import client_config

__all__ = ["ALLOWED_TOPIC_FIELDS", "TopicNotAllowedError", "TopicReader", "Verifiers", "check_topics",
           "console_topics"]

log = logging.getLogger("streamgate.console")

#: The :class:`TopicNames` fields the console may read: derived, aggregate topics only.
ALLOWED_TOPIC_FIELDS = ("metrics", "frequencies", "audit", "snapshots")


class TopicNotAllowedError(StreamgateError):
    """The console was asked to read a topic outside its allow-list."""


def console_topics(names: TopicNames) -> list[str]:
    """The topics the console reads: ``ops.metrics``, ``analytics.frequencies``, ``ops.audit``, ``models.snapshots``."""
    return [getattr(names, f) for f in ALLOWED_TOPIC_FIELDS]


def check_topics(topics: Iterable[str], names: TopicNames) -> None:
    """Raise :class:`TopicNotAllowedError` naming every topic outside the console's allow-list."""
    allowed = set(console_topics(names))
    refused = sorted(set(topics) - allowed)
    if refused:
        raise TopicNotAllowedError(f"the console reads only {', '.join(console_topics(names))}; "
                                   f"refused: {', '.join(refused)}")


class Verifiers:
    """Signature checks of receipts and snapshots; ``None`` (not checked) without the public key."""

    def __init__(self, receipt_key: Any = None, snapshot_key: Any = None) -> None:
        self.receipt_key, self.snapshot_key = receipt_key, snapshot_key

    @classmethod
    def from_settings(cls, settings: Settings) -> Verifiers:
        """The public keys from the settings' keyring (master or a role credential), where it has them."""
        from stream.crypto.keyring import Keyring
        from stream.crypto.signing import verify_key

        try:
            keyring = Keyring.from_settings(settings)
        except Exception:  # no key configured: receipts and snapshots are shown as not checked
            return cls()
        keys: list[Any] = []
        for name in ("receipt", "snapshot"):
            try:
                keys.append(verify_key(keyring, name))
            except Exception:
                keys.append(None)
        return cls(*keys)

    def receipt(self, rec: dict[str, Any]) -> bool | None:
        from stream.retention.receipts import verify_receipt

        return None if self.receipt_key is None else bool(verify_receipt(rec, self.receipt_key))

    def audit(self, rec: dict[str, Any]) -> bool | None:
        """An ``ops.audit`` record checked with its worker's key: a shredder receipt (which must be
        signed) with the receipt key, a drift record with the learner's snapshot key. A record of
        another kind with no signature is None (unsigned by design: it is not a receipt)."""
        from stream.retention.receipts import verify_receipt

        kind = rec.get("kind")
        if kind in RECEIPT_KINDS:
            return self.receipt(rec)
        if "signature" not in rec and "signer" not in rec:
            return None
        key = self.snapshot_key if kind == "drift" else None
        return None if key is None else bool(verify_receipt(rec, key))

    def snapshot(self, data: bytes) -> bool | None:
        """Verified like a serving loader does (signature first, then the restricted unpickler)."""
        from stream.errors import SnapshotError
        from stream.learn.snapshot import ModelSnapshot

        if self.snapshot_key is None:
            return None
        try:
            ModelSnapshot.from_bytes(data, self.snapshot_key)
        except SnapshotError:
            return False
        return True


class TopicReader:
    """One background thread: a consumer assigned the console's topics from their beginning (no
    group join, nothing committed) that folds every record into ``state`` under ``lock``."""

    def __init__(self, bootstrap: str, names: TopicNames, state: ConsoleState, lock: threading.Lock, *,
                 verifiers: Verifiers | None = None, on_change: Callable[[], None] | None = None) -> None:
        self.bootstrap, self.names, self.state, self.lock = bootstrap, names, state, lock
        self.verifiers = verifiers or Verifiers()
        self.on_change = on_change
        # the topics the client says it is assigned (updated by the reader's own thread: a
        # confluent-kafka consumer must not be called from another thread while it consumes)
        self.assigned: list[str] = []
        self.missing: list[str] = []
        self.error: str | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.consumer: Consumer | None = None
        t = names
        self._handlers: dict[str, Callable[[Message], None]] = {
            t.metrics: self._metrics, t.frequencies: self._frequency, t.audit: self._audit, t.snapshots: self._snapshot,
        }

    def start(self) -> TopicReader:
        """Connect and assign (a wrong address fails here, with one line), then read in a thread."""
        consumer = Consumer(client_config(self.bootstrap, **{
            "group.id": "streamgate-console", "enable.auto.commit": False, "client.id": "streamgate-console",
        }))
        try:
            consumer.list_topics(timeout=10)
        except KafkaException as exc:
            consumer.close()
            raise BrokerUnreachableError(f"cannot reach Kafka at {self.bootstrap}; check STREAMGATE_KAFKA_BOOTSTRAP",
                                         bootstrap=self.bootstrap) from exc
        self.consumer = consumer
        self.missing = self._assign(console_topics(self.names))
        self._thread = threading.Thread(target=self._run, name="streamgate-console-reader", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        """End the thread, then close the consumer (``assigned`` keeps its last assignment)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(15)
        if self.consumer is not None:
            with contextlib.suppress(Exception):
                if self._thread is None or not self._thread.is_alive():
                    self.assigned = sorted({tp.topic for tp in self.consumer.assignment()})
                self.consumer.close()
            self.consumer = None

    def _assign(self, topics: list[str]) -> list[str]:
        """Assign every partition of ``topics`` that exist (from the beginning); returns the missing ones."""
        check_topics(topics, self.names)
        assert self.consumer is not None
        try:
            md = self.consumer.list_topics(timeout=5)
        except KafkaException:
            return topics
        parts, missing = [], []
        for topic in topics:
            tmd = md.topics.get(topic)
            if tmd is None or tmd.error is not None:
                missing.append(topic)
            else:
                parts += [TopicPartition(topic, p, OFFSET_BEGINNING) for p in tmd.partitions]
        if parts:
            self.consumer.incremental_assign(parts)
        self.assigned = sorted({tp.topic for tp in self.consumer.assignment()})
        check_topics(self.assigned, self.names)
        return missing

    def _run(self) -> None:
        assert self.consumer is not None
        next_check = time.monotonic() + 2.0
        while not self._stop.is_set():
            if self.missing and time.monotonic() >= next_check:
                self.missing = self._assign(self.missing)
                next_check = time.monotonic() + 2.0
            if not self.assigned:
                self._stop.wait(0.5)
                continue
            try:
                msgs = self.consumer.consume(num_messages=500, timeout=0.5)
            except KafkaException as exc:
                self.error = type(exc).__name__
                self._stop.wait(1.0)
                continue
            changed = False
            for m in msgs:
                err = m.error()
                if err is not None:
                    if err.code() != KafkaError._PARTITION_EOF:
                        self.error = err.name()
                    continue
                handler = self._handlers.get(m.topic() or "")
                if handler is not None and m.value() is not None:
                    handler(m)
                    changed = True
            if changed:
                self.error = None
                if self.on_change is not None:
                    self.on_change()

    # --- per topic ---------------------------------------------------------------------------
    @staticmethod
    def _json(m: Message) -> Any:
        try:
            return orjson.loads(m.value() or b"")
        except orjson.JSONDecodeError:
            return None

    def _metrics(self, m: Message) -> None:
        rec = self._json(m)
        with self.lock:
            self.state.add_metrics(rec)

    def _frequency(self, m: Message) -> None:
        rec = self._json(m)
        with self.lock:
            self.state.add_frequency(rec)

    def _audit(self, m: Message) -> None:
        rec = self._json(m)
        verified = self.verifiers.audit(rec) if isinstance(rec, dict) else None
        with self.lock:
            self.state.add_audit(rec, verified)

    def _snapshot(self, m: Message) -> None:
        from stream.errors import SnapshotError
        from stream.learn.snapshot import ModelSnapshot

        data = m.value() or b""
        try:
            header: Any = ModelSnapshot.read_header(data)
        except SnapshotError:
            header = None
        verified = self.verifiers.snapshot(data) if header is not None else None
        with self.lock:
            self.state.add_snapshot(header, verified)
