"""Cache invalidation after a shred: the subscriber side of ``{prefix}:shredded``.

The shredder PUBLISHes ``{subject}:{epoch}`` after destroying one key and
``{subject}:*`` after an erasure. :class:`ShredListener` subscribes in a daemon
thread and calls ``on_shred(subject, epoch)`` (``epoch`` is ``None`` for every
epoch of the person). Pub/sub is fire-and-forget, so the listener is a fast path
only: a message missed while disconnected is covered by ``on_reset`` (called after
every (re)subscription: drop everything cached) and, in the end, by the DEK cache's
staleness bound (``STREAMGATE_DEK_CACHE_MAX_STALENESS_SECONDS``). It reconnects with
exponential backoff and never logs a subject.
"""

from __future__ import annotations

import contextlib
import logging
import threading
from collections.abc import Callable
from typing import Any

import redis

from stream.redisdb import REDIS_ERRORS, RedisClient, shred_channel

__all__ = ["ShredListener", "parse_message"]

log = logging.getLogger("streamgate.retention.invalidation")


def parse_message(data: bytes | str) -> tuple[str, int | None] | None:
    """``b"tok:12"`` -> ``("tok", 12)``; ``b"tok:*"`` -> ``("tok", None)``; anything else -> None."""
    try:
        text = data.decode("ascii") if isinstance(data, bytes) else str(data)
    except UnicodeDecodeError:
        return None
    subject, sep, epoch = text.rpartition(":")
    if not sep or not subject:
        return None
    if epoch == "*":
        return subject, None
    if not epoch.isdigit():
        return None
    return subject, int(epoch)


class ShredListener:
    """Subscribes to ``{prefix}:shredded`` and forwards each message to ``on_shred``.

    ``client_factory`` returns a new Redis client (called on every (re)connect). ``on_reset``
    is called after each successful subscription (missed messages: drop all cached state).
    ``ready`` is set once subscribed (tests wait on it).
    """

    def __init__(
        self,
        client_factory: Callable[[], RedisClient],
        prefix: str,
        on_shred: Callable[[str, int | None], None],
        *,
        on_reset: Callable[[], None] | None = None,
        backoff_seconds: float = 0.2,
        backoff_max_seconds: float = 5.0,
        name: str = "streamgate-shred-listener",
    ) -> None:
        self.client_factory = client_factory
        self.channel = shred_channel(prefix)
        self.on_shred = on_shred
        self.on_reset = on_reset
        self.backoff_seconds = backoff_seconds
        self.backoff_max_seconds = backoff_max_seconds
        self.name = name
        self.ready = threading.Event()
        self.received = 0
        self.reconnects = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> ShredListener:
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name=self.name, daemon=True)
            self._thread.start()
        return self

    def stop(self, timeout: float = 5.0) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)
            self._thread = None

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def _run(self) -> None:
        attempt = 0
        while not self._stop.is_set():
            client: RedisClient | None = None
            pubsub: Any = None
            try:
                client = self.client_factory()
                pubsub = client.pubsub()
                pubsub.subscribe(self.channel)
                # wait for the subscription confirmation before declaring readiness
                confirm = pubsub.get_message(timeout=2.0)
                if confirm is None or confirm.get("type") != "subscribe":
                    raise redis.ConnectionError("no subscription confirmation")
                if self.on_reset is not None:
                    self.on_reset()
                self.ready.set()
                attempt = 0
                while not self._stop.is_set():
                    msg = pubsub.get_message(timeout=0.5)
                    if msg is None:
                        continue
                    if msg.get("type") == "subscribe":
                        # redis-py reconnected and re-subscribed by itself: messages may have been missed
                        self.reconnects += 1
                        if self.on_reset is not None:
                            self.on_reset()
                        continue
                    if msg.get("type") != "message":
                        continue
                    parsed = parse_message(msg.get("data", b""))
                    if parsed is None:
                        continue
                    self.received += 1
                    try:
                        self.on_shred(*parsed)
                    except Exception:  # a bad callback must not kill the listener
                        log.exception("shred callback failed")
            except REDIS_ERRORS as exc:
                self.ready.clear()
                self.reconnects += 1
                delay = min(self.backoff_max_seconds, self.backoff_seconds * (2 ** min(attempt, 10)))
                attempt += 1
                log.warning("shred listener disconnected, reconnecting",
                            extra={"error": type(exc).__name__, "retry_in_s": round(delay, 2)})
                self._stop.wait(delay)
            finally:
                for closer in (pubsub, client):
                    if closer is not None:
                        with contextlib.suppress(Exception):  # best effort
                            closer.close()
