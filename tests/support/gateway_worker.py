"""A real ``streamgate gateway`` worker process for the ops tests: its own topics, consumer
group, Redis prefix, master key and state dir; a free web port; JSON logs to a file."""

from __future__ import annotations

import base64
import contextlib
import json
import os
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import redis

from stream.config import TopicNames
from stream.dev.stack import free_port
from tests.support.fixtures import delete_prefixed_keys
from tests.support.workers import stop_process, worker_env

__all__ = ["GatewayWorker", "cli", "gateway_worker", "http_get", "json_lines", "sample", "scrape", "wait_fresh_snapshot"]


def cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "stream.cli", *args]


@dataclass(repr=False)  # no env / master key in assertion messages
class GatewayWorker:
    proc: subprocess.Popen[bytes]
    env: dict[str, str]
    port: int
    log: Path
    topics: TopicNames
    bootstrap: str
    master_key: str
    state_dir: Path

    def __repr__(self) -> str:
        return f"GatewayWorker(pid={self.proc.pid}, port={self.port})"

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def tail(self, n: int = 60) -> str:
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-n:])
        except OSError:
            return "(no log)"

    def run(self, *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
        return subprocess.run(cli(*args), env=self.env, capture_output=True, text=True, timeout=timeout)


def http_get(url: str, timeout: float = 5.0) -> tuple[int, bytes, str]:
    """(status, body, content type) of a GET; HTTP errors are returned, not raised."""
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp:
            return resp.status, resp.read(), resp.headers.get("Content-Type", "")
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read() or b"", exc.headers.get("Content-Type", "")


def scrape(worker: GatewayWorker) -> str:
    status, body, _ = http_get(worker.url("/metrics"))
    assert status == 200, body[:200]
    return body.decode()


def sample(text: str, name: str, **labels: str) -> float:
    """The value of one sample of a Prometheus exposition (0 if absent); ``worker="gateway"`` implied."""
    from prometheus_client.parser import text_string_to_metric_families

    want = {"worker": "gateway", **labels}
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            if s.name == name and s.labels == want:
                return float(s.value)
    return 0.0


def wait_fresh_snapshot(w: GatewayWorker, events_in: int, timeout: float = 90.0) -> None:
    """Wait until the worker counted ``events_in`` events and then published two more snapshots
    (so the metrics topic holds a snapshot taken after the events were counted)."""
    deadline = time.monotonic() + timeout
    base: float | None = None
    while time.monotonic() < deadline:
        text = scrape(w)
        published = sample(text, "streamgate_metrics_snapshots_total")
        if base is None and sample(text, "streamgate_events_in_total") >= events_in:
            base = published
        if base is not None and published >= base + 2:
            return
        time.sleep(0.3)
    raise AssertionError(f"no fresh snapshot after {events_in} events:\n{w.tail()}")


def _wait_ready(w: GatewayWorker, timeout: float = 90.0, path: str = "/readyz") -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if w.proc.poll() is not None:
            raise AssertionError(f"the gateway exited with {w.proc.returncode} before it was ready:\n{w.tail()}")
        with contextlib.suppress(OSError, ValueError):
            status, body, _ = http_get(w.url(path), timeout=5)
            if status == 200 and (path != "/readyz" or json.loads(body) == {"ready": True}):
                return
        time.sleep(0.25)
    raise AssertionError(f"the gateway was not ready within {timeout:.0f} s:\n{w.tail()}")


@contextmanager
def gateway_worker(kafka_bootstrap: str, redis_url: str, state_dir: Path, *, wait_ready: bool = True,
                   **extra_env: str) -> Iterator[GatewayWorker]:
    """The worker, once ready (``wait_ready=False``: once alive, i.e. /healthz answers 200)."""
    uid = uuid.uuid4().hex[:8]
    base = TopicNames()
    topics = TopicNames(**{n: f"{getattr(base, n)}.t{uid}" for n in TopicNames.model_fields})
    prefix = f"sgtest-{uid}"
    master_key = base64.b64encode(os.urandom(32)).decode()
    port = free_port()
    env = worker_env(kafka_bootstrap=kafka_bootstrap, redis_url=redis_url, prefix=prefix, master_key=master_key,
                     state_dir=state_dir, topics=topics,
                     STREAMGATE_GROUP_PREFIX=f"sgops-{uid}",
                     STREAMGATE_WEB_PORT=str(port),
                     STREAMGATE_METRICS_INTERVAL_SECONDS="1",
                     STREAMGATE_LOG_FORMAT="json",
                     STREAMGATE_TOPIC_PARTITIONS="2",
                     **extra_env)
    log = state_dir / "gateway.log"
    with open(log, "wb") as logf:
        proc = subprocess.Popen(cli("gateway", "--loglevel", "info"), env=env, stdout=logf, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, start_new_session=True)
    w = GatewayWorker(proc, env, port, log, topics, kafka_bootstrap, master_key, state_dir)
    try:
        _wait_ready(w, path="/readyz" if wait_ready else "/healthz")
        yield w
    finally:
        stop_process(proc)
        client = redis.Redis.from_url(redis_url, socket_connect_timeout=5.0)
        try:
            delete_prefixed_keys(client, prefix)
        except (redis.RedisError, OSError):
            pass  # a test that points the worker at a Redis that is not there
        finally:
            client.close()


def json_lines(text: str) -> list[dict[str, Any]]:
    out = []
    for line in text.splitlines():
        with contextlib.suppress(ValueError):
            rec = json.loads(line)
            if isinstance(rec, dict):
                out.append(rec)
    return out
