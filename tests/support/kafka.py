"""Small helpers for tests that talk to the real broker."""

from __future__ import annotations

import subprocess
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from confluent_kafka import OFFSET_BEGINNING, Consumer, TopicPartition

from stream.apps.engine import GatewayEngine
from stream.components import build_gateway
from stream.config import Settings


@dataclass
class Rec:
    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None
    headers: list[tuple[str, bytes]]
    timestamp_ms: int | None = None


def read_topic(bootstrap: str, topic: str, *, expect: int | None = None, idle: float = 3.0,
               timeout: float = 60.0) -> list[Rec]:
    """Every record of ``topic``, read from the beginning of each partition until ``expect``
    records arrived (plus a short grace period to catch extras) or nothing new came for ``idle``
    seconds. (Not "until the high watermark": the embedded broker reports the watermark of
    the last *batch*, so reading to it would miss records.)"""
    c = Consumer({"bootstrap.servers": bootstrap, "group.id": f"t-read-{uuid.uuid4().hex[:6]}",
                  "enable.auto.commit": False})
    try:
        md = c.list_topics(topic, timeout=10).topics[topic]
        c.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in md.partitions])
        out: list[Rec] = []
        deadline = time.monotonic() + timeout
        last = time.monotonic()
        while time.monotonic() < deadline:
            msgs = c.consume(num_messages=1000, timeout=0.2)
            now = time.monotonic()
            for m in msgs:
                if m.error() is None:
                    out.append(Rec(m.topic(), m.partition(), m.offset(), m.key(), m.value(), list(m.headers() or []),
                               m.timestamp()[1]))
                    last = now
            if expect is not None and len(out) >= expect:
                idle = min(idle, 1.0)
            if now - last > idle:
                break
        return out
    finally:
        c.close()


def start_in_thread(engine: Any) -> tuple[threading.Event, threading.Thread, list[BaseException]]:
    """Start ``engine.run(stop)`` in a daemon thread: (stop, the thread, the exceptions it raised)."""
    stop = threading.Event()
    errors: list[BaseException] = []

    def target() -> None:
        try:
            engine.run(stop)
        except BaseException as exc:  # the caller decides what an error means
            errors.append(exc)

    t = threading.Thread(target=target, daemon=True)
    t.start()
    return stop, t, errors


@contextmanager
def running_in_thread(engine: Any, what: str = "engine") -> Iterator[Any]:
    """Run ``engine.run(stop)`` in a background thread for the duration of the block; on exit
    stop it, join it, and fail the test if it crashed. The thread and its errors are attached
    to the engine as ``thread`` / ``errors``."""
    stop, t, errors = start_in_thread(engine)
    engine.thread = t
    engine.errors = errors
    try:
        yield engine
    finally:
        stop.set()
        t.join(60)
    assert not errors, f"{what} crashed: {errors!r}"


@contextmanager
def running_engine(settings: Settings, **kw) -> Iterator[GatewayEngine]:
    """The gateway engine in a background thread for the duration of the block."""
    with running_in_thread(GatewayEngine(settings, build_gateway(settings, **kw))) as engine:
        yield engine


def wait_for(predicate, *, timeout: float = 90.0, interval: float = 0.2, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(interval)
    raise AssertionError(f"timed out waiting for {what}")


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
