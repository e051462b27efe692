"""One retry policy for Redis, the engine's hold: the workers' Redis clients (``client_for``) and the
key store built on them retry nothing. A Redis that drops every connection costs one connection
attempt per call, surfaced at once as :class:`KeyUnavailableError`, which the engine holds on."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator

import pytest
from redis.backoff import NoBackoff
from redis.retry import Retry

from stream.components import build_dek_provider
from stream.config import Settings
from stream.crypto.deks import DekProvider
from stream.crypto.keyring import Keyring
from stream.engine import StreamEngine
from stream.errors import KeyUnavailableError
from stream.redisdb import client_for


class DroppingServer:
    """A TCP server that accepts and at once closes every connection (a Redis dying under load),
    counting the connections."""

    def __init__(self) -> None:
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.accepted = 0
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.accepted += 1
            conn.close()

    def close(self) -> None:
        self.sock.close()


@pytest.fixture
def dropping() -> Iterator[DroppingServer]:
    server = DroppingServer()
    try:
        yield server
    finally:
        server.close()


def _provider(port: int, **client_overrides: object) -> DekProvider:
    """The workers' DEK provider (and its identity guard) on ``client_for``'s client of ``port``."""
    s = Settings(redis_url=f"redis://127.0.0.1:{port}/0")
    return build_dek_provider(s, Keyring.generate(), client=client_for(s, "gateway", **client_overrides), listen=False)


def test_a_redis_connection_error_in_the_key_store_surfaces_at_once(dropping: DroppingServer) -> None:
    provider = _provider(dropping.port)
    assert provider.guard is not None
    with pytest.raises(KeyUnavailableError, match=r"ConnectionError"):
        provider.guard.run(lambda: provider.keys_for(["tk_a"], provider.epoch_of(time.time())))
    assert dropping.accepted == 1  # the identity probe's one connection: no retry beneath the hold
    with pytest.raises(KeyUnavailableError):
        provider.keys_for(["tk_a"], provider.epoch_of(time.time()))  # the data key store itself
    assert dropping.accepted == 2
    assert issubclass(KeyUnavailableError, StreamEngine.hold_on)  # what the engine holds on


def test_the_count_would_see_a_retry_beneath_the_hold(dropping: DroppingServer) -> None:
    """The same call through a client that retries twice: more than one connection (the count can
    fail; redis-py retries both the connect and the command: 3 x 3 connections)."""
    provider = _provider(dropping.port, retry=Retry(NoBackoff(), 2))
    assert provider.guard is not None
    with pytest.raises(KeyUnavailableError):
        provider.guard.run(lambda: provider.keys_for(["tk_a"], provider.epoch_of(time.time())))
    assert dropping.accepted > 1
