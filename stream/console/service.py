"""One console: the topic reader, the state and the HTTP server, started and stopped together."""

from __future__ import annotations

import logging
import secrets
import threading
import time
from types import TracebackType
from typing import Any

import orjson

from stream.config import Settings
from stream.console.reader import TopicReader, Verifiers
from stream.console.server import ConsoleHTTPServer
from stream.console.state import ConsoleState, Truth
from stream.errors import ConfigError
from stream.ldp.policy import LdpPolicy
from stream.schema import load_schema

__all__ = ["DEFAULT_PORT", "LOOPBACK", "ConsoleAccessError", "ConsoleService", "hold_until_interrupted"]

log = logging.getLogger("streamgate.console")

#: ``streamgate console``'s default port (the workers use 6066 - 6069).
DEFAULT_PORT = 6070
LOOPBACK = frozenset({"127.0.0.1", "localhost", "::1"})


class ConsoleAccessError(ConfigError):
    """A console bound beyond loopback without a token: anyone who reaches it could read it."""


class ConsoleService:
    """``start()`` reads the derived topics in one thread and serves the page in another;
    ``stop()`` ends both. ``url`` is where it serves; ``login_url`` adds the token.

    ``token=None`` (the default) generates one (printed in ``login_url``); ``token=""`` serves
    without one, on a loopback address only: bound beyond loopback without a token it refuses
    (:class:`ConsoleAccessError`). ``refresh_seconds``: the page's state is rebuilt at least this
    often even when no record arrives, so a worker that went silent turns stale on the page."""

    def __init__(self, settings: Settings, *, host: str = "127.0.0.1", port: int = DEFAULT_PORT,
                 token: str | None = None, since_ms: int = 0, bootstrap: str | None = None,
                 verifiers: Verifiers | None = None, refresh_seconds: float = 5.0) -> None:
        if token is None:
            token = secrets.token_urlsafe(18)
        if not token and host not in LOOPBACK:
            raise ConsoleAccessError(f"the console is bound to {host} without a token: anyone who reaches it "
                                     "could read it; give --token (STREAMGATE_CONSOLE_TOKEN), or bind 127.0.0.1")
        self.settings = settings
        self.host, self.port, self.token = host, port, token or None
        self.refresh_seconds = refresh_seconds
        self.bootstrap = bootstrap or settings.kafka_bootstrap_or_dev()
        policy = LdpPolicy.from_schema(load_schema(settings.schema_name), settings.ldp_epsilon)
        self.lock = threading.Lock()
        self.state = ConsoleState(policy, since_ms=since_ms)  # instances kept as ops watch keeps them
        self.reader = TopicReader(self.bootstrap, settings.topics, self.state, self.lock,
                                  verifiers=verifiers if verifiers is not None else Verifiers.from_settings(settings))
        self._stop = threading.Event()
        self._server: ConsoleHTTPServer | None = None
        self._thread: threading.Thread | None = None
        self._cache: tuple[int, bytes] = (-1, b"")  # (serial, JSON)
        self._built: tuple[int, float] = (-1, float("-inf"))  # (state version, monotonic time) of the cache
        self._cache_lock = threading.Lock()

    # --- lifecycle ---------------------------------------------------------------------------
    def start(self) -> ConsoleService:
        self.reader.start()
        try:
            self._server = ConsoleHTTPServer((self.host, self.port), state_json=self.state_json, token=self.token,
                                             stop=self._stop)
        except OSError:
            self.reader.stop()
            raise
        self.port = self._server.server_address[1]
        self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.5},
                                        name="streamgate-console-http", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
        if self._thread is not None:
            self._thread.join(10)
        self.reader.stop()

    def __enter__(self) -> ConsoleService:
        return self.start()

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()

    # --- what it serves ------------------------------------------------------------------------
    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}/"

    @property
    def login_url(self) -> str:
        """The URL to open first: with ``?token=`` when a token is set."""
        return self.url + (f"?token={self.token}" if self.token else "")

    def set_truth(self, truth: Truth | None) -> None:
        """What a synthetic run knows for sure (the demo): drawn beside the estimates."""
        with self.lock:
            self.state.set_truth(truth)

    def view(self) -> dict[str, Any]:
        with self.lock:
            view = self.state.view(time.time())
        view["reading"] = {"topics": list(self.reader.assigned), "missing": list(self.reader.missing),
                           "error": self.reader.error}
        return view

    def state_json(self) -> tuple[int, bytes]:
        """(serial, JSON) of the state, built again when a record changed it or ``refresh_seconds``
        passed (what is stale depends on the clock too); the serial changes with every build."""
        with self._cache_lock:
            version, now = self.state.version, time.monotonic()
            if self._built[0] != version or now - self._built[1] >= self.refresh_seconds:
                try:
                    self._cache = (self._cache[0] + 1, orjson.dumps(self.view(), option=orjson.OPT_SERIALIZE_NUMPY))
                    self._built = (version, now)
                except Exception:  # a bug here must not take the page down: log it, serve the last state
                    log.exception("console state not rendered")
            return self._cache


def hold_until_interrupted() -> None:
    """Block until Ctrl-C (SIGINT) or SIGTERM."""
    import signal

    stop = threading.Event()
    previous = signal.signal(signal.SIGTERM, lambda *_: stop.set())
    try:
        while not stop.wait(0.5):
            pass
    except KeyboardInterrupt:
        pass
    finally:
        signal.signal(signal.SIGTERM, previous)
