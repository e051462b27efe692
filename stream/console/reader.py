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
from collections.abc import Callable, Iterable
from typing import Any

import orjson
from confluent_kafka import Message

from stream.config import Settings, TopicNames
from stream.console.state import RECEIPT_KINDS, ConsoleState
from stream.errors import StreamgateError, TopicReadError
from stream.kafka import TopicReader as KafkaTopicReader

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
        self.consumer: KafkaTopicReader | None = None
        t = names
        self._handlers: dict[str, Callable[[Message], None]] = {
            t.metrics: self._metrics, t.frequencies: self._frequency, t.audit: self._audit, t.snapshots: self._snapshot,
        }

    def start(self) -> TopicReader:
        """Connect and assign (a wrong address fails here, with one line), then read in a thread."""
        topics = console_topics(self.names)
        check_topics(topics, self.names)  # before anything is assigned
        self.consumer = KafkaTopicReader(self.bootstrap, topics, mode="tail", missing="wait",
                                         client_id="streamgate-console", stop=self._stop.is_set, logger=log)
        self._sync()
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
                    self._sync()
                self.consumer.close()
            self.consumer = None

    def _sync(self) -> None:
        assert self.consumer is not None
        self.missing = list(self.consumer.missing)
        self.assigned = sorted({tp.topic for tp in self.consumer.consumer.assignment()})
        check_topics(self.assigned, self.names)

    def _run(self) -> None:
        try:
            self._read()
        except TopicReadError as exc:  # a fatal client error: shown, and the reading ends
            self.error = "fatal"
            log.error("console reader stopped", extra={"error": str(exc)[:200]})

    def _read(self) -> None:
        assert self.consumer is not None
        errors = 0
        for msgs in self.consumer.batches():  # tail: until stop(); errors logged and counted there
            if self.missing:
                self._sync()
            if self.consumer.errors != errors:
                errors, self.error = self.consumer.errors, self.consumer.last_error
            changed = False
            for m in msgs:
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
