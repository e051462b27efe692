"""SIGKILL mid-run: a shredder process is killed with ``kill -9`` while it works through a few
thousand due keys, then restarted with the same instance id. Afterwards no due key survives and
every shredded (person, epoch) has receipts with exactly one ``receipt_id`` (re-deliveries of the
outbox are the same receipt, the documented idempotency key).

The process runs the real shredder engine (``python -c``) with the clock shifted forward, so keys
that are still alive in Redis are due by the shredder's clock (no sleeping until they expire)."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from collections import defaultdict
from pathlib import Path

import pytest

from stream.components import build_dek_provider
from stream.kafka import ensure_topics
from stream.redisdb import DEADLINE_SHARDS
from stream.schema import output_validator
from stream.storage.retention import RedisShredStore
from tests.support.shred import Clock, add_ldp_entries, audit_receipts
from tests.support.workers import settings_env

pytestmark = [pytest.mark.integration, pytest.mark.slow]

N_KEYS = 4000
OFFSET = 100_000.0  # the shredder's clock runs this far ahead
RUNNER = """
import os, signal, threading, time
from stream.apps.shredder import ShredderEngine
from stream.config import Settings
offset = float(os.environ["SGTEST_CLOCK_OFFSET"])
stop = threading.Event()
signal.signal(signal.SIGTERM, lambda *_: stop.set())
ShredderEngine(Settings(), clock=lambda: time.time() + offset).run(stop)
"""


def _env(settings, unique_id: str) -> dict[str, str]:
    return settings_env(
        settings,
        STREAMGATE_EPOCH_SECONDS=str(settings.epoch_seconds),
        STREAMGATE_RETENTION_SECONDS=str(settings.retention_seconds),
        STREAMGATE_SHREDDER_BATCH_SIZE="10",
        STREAMGATE_SHREDDER_INTERVAL_SECONDS="0.2",
        STREAMGATE_SHREDDER_INSTANCE_ID="shredder-crash-test",
        STREAMGATE_GROUP_PREFIX=f"sgcrash-{unique_id}",
        SGTEST_CLOCK_OFFSET=str(OFFSET),
    )


def _start(env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    with open(log, "ab") as f:
        return subprocess.Popen([sys.executable, "-c", RUNNER], env=env, stdout=f, stderr=subprocess.STDOUT)


def _tail(log: Path) -> str:
    return "\n".join(log.read_text(errors="replace").splitlines()[-40:])


@pytest.mark.parametrize("redis_backend", ["single", "cluster"])  # on a cluster the claim's steps are apart
def test_sigkill_mid_run_then_restart_leaves_no_due_key_and_no_foreign_duplicates(
        settings_factory, redis_client, unique_id, tmp_path) -> None:
    settings = settings_factory(epoch_seconds=60, retention_seconds=3600)
    prefix = settings.redis_key_prefix
    ensure_topics(settings.kafka_bootstrap, [settings.topics.erasure, settings.topics.audit], partitions=1)
    now = time.time()
    provider = build_dek_provider(settings, clock=Clock(now))
    epoch = provider.epoch_of(now)
    subjects = [f"tok{i:05d}" for i in range(N_KEYS)]
    provider.keys_for(subjects, epoch)
    for s in subjects[::10]:
        add_ldp_entries(redis_client, prefix, s, epoch, provider.expire_at(epoch))
    store = RedisShredStore(redis_client, prefix, shards=DEADLINE_SHARDS)
    assert store.index_size() == N_KEYS

    env = _env(settings, unique_id)
    log = tmp_path / "shredder.log"
    first = _start(env, log)
    try:
        deadline = time.monotonic() + 120
        while store.index_size() > N_KEYS - 40:
            assert first.poll() is None, f"shredder exited early:\n{_tail(log)}"
            assert time.monotonic() < deadline, f"shredder made no progress:\n{_tail(log)}"
            time.sleep(0.005)
        first.send_signal(signal.SIGKILL)
        first.wait(30)
    finally:
        if first.poll() is None:
            first.kill()
            first.wait(10)
    left_at_kill = store.index_size()
    pending_at_kill = store.pending_count()
    assert left_at_kill > 0, "the shredder finished before it was killed: the test needs more keys"

    second = _start(env, log)
    try:
        deadline = time.monotonic() + 120
        while store.index_size() or store.pending_count():
            assert second.poll() is None, f"restarted shredder exited:\n{_tail(log)}"
            assert time.monotonic() < deadline, f"restarted shredder did not finish:\n{_tail(log)}"
            time.sleep(0.05)
    finally:
        second.send_signal(signal.SIGTERM)
        try:
            second.wait(30)
        except subprocess.TimeoutExpired:
            second.kill()
            second.wait(10)

    # no due key survives: no DEK, memo or budget of the epoch is left
    assert not list(redis_client.scan_iter(match=f"{prefix}:dek:*", count=1000))
    assert not list(redis_client.scan_iter(match=f"{prefix}:memo:*", count=1000))
    assert not list(redis_client.scan_iter(match=f"{prefix}:budget:*", count=1000))

    receipts = audit_receipts(settings.kafka_bootstrap, settings.topics.audit, expect=N_KEYS, idle=3.0)
    valid = output_validator("audit-receipt.v1")
    assert not any(valid(r) for r in receipts[:200])
    ids_by_key: dict[tuple[str, int], set[str]] = defaultdict(set)
    for r in receipts:
        ids_by_key[(r["subject"], r["epoch"])].add(r["receipt_id"])
    assert set(ids_by_key) == {(s, epoch) for s in subjects}  # every shredded key has a receipt
    assert all(len(ids) == 1 for ids in ids_by_key.values())  # duplicates only with the same id
    duplicates = len(receipts) - N_KEYS
    assert 0 <= duplicates <= pending_at_kill  # only outbox entries left by the kill can be re-delivered
    assert all(r["key_id"] and r["worker"] == "shredder-crash-test" for r in receipts)
    print(f"killed with {left_at_kill} due and {pending_at_kill} pending; {duplicates} re-delivered receipts")
