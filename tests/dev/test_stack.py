"""The embedded dev stack (stream.dev.stack): real Tansu broker + real Redis, each test in its own state dir."""

from __future__ import annotations

import base64
import json
import os
import shutil
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path
from urllib.parse import urlsplit

import pytest
import redis
from confluent_kafka import Consumer, Producer, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic

from stream.config import TopicNames
from stream.dev import stack as stack_mod
from stream.dev.stack import DevStack, StackInfo, ephemeral_stack, find_redis_binary
from stream.errors import DevStackError
from tests.support.fixtures import delete_prefixed_keys

pytestmark = pytest.mark.integration


def _port(address: str) -> int:
    """Port of "host:port" or of a redis:// URL."""
    if "://" in address:
        port = urlsplit(address).port
        assert port is not None
        return port
    return int(address.rsplit(":", 1)[1])


def _refuses(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return False
    except OSError:
        return True


def _gone(pid: int) -> bool:
    """No such process (a zombie still counts as existing: it would be an orphan we failed to reap)."""
    return not Path(f"/proc/{pid}").exists()


def _wait_gone(pid: int, timeout: float = 5.0) -> bool:
    # a pid whose parent is init is reaped by init, not by us; give it a moment
    deadline = time.monotonic() + timeout
    while not _gone(pid):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.02)
    return True


def _kafka_round_trip(bootstrap: str) -> None:
    topic = f"devstack.check.{uuid.uuid4().hex[:8]}"
    admin = AdminClient({"bootstrap.servers": bootstrap})
    for fut in admin.create_topics([NewTopic(topic, num_partitions=1, replication_factor=1)]).values():
        fut.result(timeout=10)
    producer = Producer({"bootstrap.servers": bootstrap})
    producer.produce(topic, key=b"k", value=b"hello")
    assert producer.flush(10) == 0
    consumer = Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": f"devstack-{uuid.uuid4().hex[:6]}",
            "enable.auto.commit": False,
        }
    )
    try:
        consumer.assign([TopicPartition(topic, 0, 0)])
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            msg = consumer.poll(0.5)
            if msg is None:
                continue
            assert msg.error() is None, msg.error()
            assert (msg.key(), msg.value()) == (b"k", b"hello")
            return
        pytest.fail("the record produced to the dev broker was not consumed")
    finally:
        consumer.close()


def test_lifecycle_from_nothing_to_nothing(tmp_path: Path) -> None:
    stack = DevStack(tmp_path)
    assert stack.status() is None
    with pytest.raises(DevStackError, match="streamgate dev up"):
        stack.require_running()

    info = stack.up()
    try:
        assert info.kafka_bootstrap.startswith("127.0.0.1:")
        assert info.redis_url.startswith("redis://127.0.0.1:") and info.redis_url.endswith("/0")
        assert info.broker_pid and info.redis_pid
        assert info.log_dir == tmp_path / "dev" / "logs"
        assert (info.log_dir / "broker.log").exists() and (info.log_dir / "redis.log").exists()
        assert _port(info.redis_url) != 6379  # never the machine's Redis

        _kafka_round_trip(info.kafka_bootstrap)
        client = redis.Redis.from_url(info.redis_url)
        assert client.ping() is True
        client.close()

        assert stack.status() == info
        assert stack.require_running() == info
        assert DevStack(tmp_path).status() == info  # another handle on the same state dir sees it
        again = stack.up()  # idempotent: the same processes
        assert again == info
        with pytest.raises(DevStackError, match="already running"):
            stack.up(kafka_port=1)  # running, but elsewhere
    finally:
        stopped = stack.down()

    assert stopped is True
    assert info.broker_pid is not None and info.redis_pid is not None
    assert _wait_gone(info.broker_pid) and _wait_gone(info.redis_pid), "dev stack processes outlived down()"
    assert _refuses(_port(info.kafka_bootstrap)) and _refuses(_port(info.redis_url))
    assert not (tmp_path / "dev" / "stack.json").exists()
    assert stack.status() is None
    with pytest.raises(DevStackError, match="streamgate dev up"):
        stack.require_running()
    assert stack.down() is False  # nothing left to stop


def test_exports_are_shell_lines() -> None:
    info = StackInfo("127.0.0.1:1", "redis://127.0.0.1:2/0", None, None, Path("/x"))
    assert info.exports().splitlines() == [
        "export STREAMGATE_KAFKA_BOOTSTRAP=127.0.0.1:1",
        "export STREAMGATE_REDIS_URL=redis://127.0.0.1:2/0",
    ]


def test_stale_state_with_a_dead_pid_is_not_running(tmp_path: Path) -> None:
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    state = tmp_path / "dev" / "stack.json"
    state.parent.mkdir(parents=True)
    port = 1  # nothing listens there
    proc = {
        "pid": dead.pid,
        "argv": ["/usr/bin/redis-server", "--port", str(port)],
        "port": port,
        "start_time": None,
    }
    state.write_text(json.dumps({"version": 1, "processes": {"broker": proc, "redis": proc}}))

    stack = DevStack(tmp_path)
    assert stack.status() is None
    assert not state.exists(), "stale state should be cleaned"
    with pytest.raises(DevStackError):
        stack.require_running()
    assert stack.down() is False


def test_killed_servers_are_detected_and_up_starts_afresh(tmp_path: Path) -> None:
    stack = DevStack(tmp_path)
    first = stack.up()
    try:
        assert first.broker_pid is not None and first.redis_pid is not None
        for pid in (first.broker_pid, first.redis_pid):
            os.kill(pid, 9)
        assert _wait_gone_or_zombie(first.broker_pid) and _wait_gone_or_zombie(first.redis_pid)
        assert stack.status() is None
        second = stack.up()
        assert {second.broker_pid, second.redis_pid}.isdisjoint({first.broker_pid, first.redis_pid})
        assert stack.status() == second
    finally:
        stack.down()
    assert _wait_gone(first.broker_pid) and _wait_gone(first.redis_pid)


def _wait_gone_or_zombie(pid: int, timeout: float = 5.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            return True
        if state in ("Z", "X"):
            return True
        time.sleep(0.02)
    return False


def test_a_recycled_pid_is_never_killed(tmp_path: Path) -> None:
    """State pointing at a live process that is not ours: not running, and down() leaves it alone."""
    stranger = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        state = tmp_path / "dev" / "stack.json"
        state.parent.mkdir(parents=True)
        proc = {"pid": stranger.pid, "argv": ["/usr/bin/redis-server", "--port", "6399"], "port": 6399}
        state.write_text(json.dumps({"version": 1, "processes": {"broker": proc, "redis": proc}}))
        stack = DevStack(tmp_path)
        assert stack.status() is None
        state.write_text(json.dumps({"version": 1, "processes": {"broker": proc, "redis": proc}}))
        assert stack.down() is False
        assert stranger.poll() is None, "down() killed a process it did not start"
    finally:
        stranger.kill()
        stranger.wait()


def test_a_busy_port_fails_fast_and_leaves_nothing(tmp_path: Path) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        stack = DevStack(tmp_path)
        with pytest.raises(DevStackError, match="already in use"):
            stack.up(kafka_port=port)
        assert stack.status() is None
        assert not (tmp_path / "dev" / "stack.json").exists()


def test_a_server_that_dies_at_start_up_is_reported_with_its_log(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # a "Redis" that exits at once: the error names its log, and the broker started before it is stopped
    monkeypatch.setattr(stack_mod, "find_redis_binary", lambda: shutil.which("false") or "/bin/false")
    spawned: list[int] = []
    spawn = DevStack._spawn

    def spy(self: DevStack, *args: object, **kwargs: object) -> object:
        proc = spawn(self, *args, **kwargs)  # type: ignore[arg-type]
        spawned.append(proc.pid)
        return proc

    monkeypatch.setattr(DevStack, "_spawn", spy)
    stack = DevStack(tmp_path)
    # at once, not at the timeout: the error is the exit's ("did not listen ... within" is the timeout's)
    with pytest.raises(DevStackError, match=r"redis exited during start-up.*redis\.log") as info:
        stack.up(timeout=120)
    assert "within" not in str(info.value)
    assert len(spawned) == 2
    assert all(_wait_gone(pid) for pid in spawned), "the broker outlived the failed start"
    assert not _processes_working_in(tmp_path / "dev")
    assert not (tmp_path / "dev" / "stack.json").exists()


def _processes_working_in(directory: Path) -> list[int]:
    """Live processes whose cwd is ``directory`` (the dev stack starts its servers there)."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if Path(os.readlink(entry / "cwd")) == directory:
                    found.append(int(entry.name))
            except OSError:
                continue
    return found


def test_valkey_is_used_when_redis_server_is_not_on_path(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    real_which = shutil.which
    monkeypatch.setattr(
        stack_mod.shutil,
        "which",
        lambda name, *a, **k: None if name == "redis-server" else real_which(name, *a, **k),
    )
    binary = find_redis_binary()
    assert Path(binary).name == "valkey-server"
    with ephemeral_stack(tmp_path) as info:
        client = redis.Redis.from_url(info.redis_url)
        assert client.ping() is True
        assert "valkey" in str(client.info("server")).lower()
        client.close()
        assert info.redis_pid is not None
        redis_pid = info.redis_pid
    assert _wait_gone(redis_pid)
    assert _refuses(_port(info.redis_url))


def test_session_fixtures_point_at_working_servers(
    kafka_bootstrap: str,
    redis_client: redis.Redis,
    redis_prefix: str,
    topic_names: TopicNames,
    settings_factory,
) -> None:
    assert redis_client.ping() is True
    _kafka_round_trip(kafka_bootstrap)
    assert redis_prefix.startswith("sgtest-")
    suffix = topic_names.raw.rsplit(".", 1)[1]
    assert all(getattr(topic_names, f).endswith("." + suffix) for f in TopicNames.model_fields)
    settings = settings_factory(batch_max_events=7)
    assert settings.kafka_bootstrap == kafka_bootstrap and settings.topics == topic_names
    assert settings.redis_key_prefix == redis_prefix and settings.batch_max_events == 7
    assert (
        settings.master_key is not None
        and len(base64.b64decode(settings.master_key.get_secret_value())) == 32
    )
    assert settings_factory().master_key == settings.master_key  # one key per test


def test_prefixed_keys_are_deleted_and_only_those(redis_client: redis.Redis, unique_id: str) -> None:
    mine, other = f"sgtest-{unique_id}", f"sgtest-{uuid.uuid4().hex[:8]}"
    redis_client.mset({f"{mine}:a": 1, f"{mine}:dek:b": 2, f"{other}:a": 3})
    try:
        delete_prefixed_keys(redis_client, mine)
        assert redis_client.exists(f"{mine}:a", f"{mine}:dek:b") == 0
        assert redis_client.get(f"{other}:a") == b"3"
    finally:
        redis_client.delete(f"{other}:a")
