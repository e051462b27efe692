"""Project-wide pytest fixtures (registered by tests/conftest.py).

Servers: ``STREAMGATE_KAFKA_BOOTSTRAP`` / ``STREAMGATE_REDIS_URL`` are used when
set (each on its own); otherwise the embedded dev stack (Tansu broker + Redis,
``stream.dev.stack``) is started once per test session in a temporary
directory and stopped at the end of the session.

Isolation: tests share one broker and one Redis (possibly the machine's), so
every test gets its own topic names (``clicks.raw.t<id>``), Redis key prefix
(``sgtest-<id>``, whose keys are deleted after the test, never FLUSHALL),
consumer group and master key.

Redis roles: the embedded Redis has one ACL user per worker role (:mod:`stream.dev.stack`), and
``settings_factory`` (and :func:`tests.support.workers.worker_env`) point the workers at their
password files (``redis_password_file``: a directory), so every worker the tests build logs in as
its role (:func:`stream.redisdb.client_for`). The fixtures' own clients (``redis_client``,
``redis_connect``, :func:`admin_client`) are the unauthenticated default user, for setup and
inspection. With ``STREAMGATE_REDIS_URL`` set (a Redis without those users) or on the cluster
backend the workers log in as the URL's user: the roles are then not exercised (a warning says so).

Redis Cluster: ``redis_backend`` is ``"single"`` here; ``tests/crypto``, ``tests/retention`` and
``tests/ldp`` override it with :func:`redis_backend_both`, so every test there that touches Redis
runs on the single server and on a local three-master cluster (:class:`tests.support.cluster.OwnCluster`,
started once per session on first use). ``redis_test_url``, ``redis_client``, ``redis_connect`` and
``settings_factory`` follow the backend; ``redis_url`` (session-scoped) is the single server. A test that needs a server of its own (``own_redis``)
runs once: :data:`SINGLE_REDIS_ONLY`.
"""

from __future__ import annotations

import base64
import os
import subprocess
import time
import uuid
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import redis

from stream.config import Settings, TopicNames
from stream.dev.stack import DevStack, StackInfo
from stream.redisdb import RedisClient, connect
from tests.support.cluster import OwnCluster
from tests.support.kafka import OwnBroker
from tests.support.workers import ROLE_USERS

__all__ = [
    "SINGLE_REDIS_ONLY",
    "OwnCluster",
    "OwnRedis",
    "StackAddresses",
    "admin_client",
    "delete_prefixed_keys",
    "kafka_bootstrap",
    "master_key_b64",
    "own_redis",
    "redis_backend",
    "redis_backend_both",
    "redis_client",
    "redis_cluster_server",
    "redis_connect",
    "redis_prefix",
    "redis_test_url",
    "redis_url",
    "settings_factory",
    "stack_addresses",
    "topic_names",
    "unique_id",
]

KAFKA_ENV = "STREAMGATE_KAFKA_BOOTSTRAP"
REDIS_ENV = "STREAMGATE_REDIS_URL"


@dataclass(frozen=True)
class StackAddresses:
    """Where the test session's broker and Redis are; ``embedded`` is the dev stack started for it, if any."""

    kafka_bootstrap: str
    redis_url: str
    embedded: StackInfo | None = None
    redis_users: Path | None = None  # the role users' password files (None: no role users)


@pytest.fixture(scope="session")
def stack_addresses(tmp_path_factory: pytest.TempPathFactory) -> Iterator[StackAddresses]:
    env_kafka = os.environ.get(KAFKA_ENV) or None
    env_redis = os.environ.get(REDIS_ENV) or None
    if env_redis:
        warnings.warn(f"{REDIS_ENV} is set: the workers under test log in as that URL's user, so the Redis "
                      "ACL roles are not exercised (tests/storage/test_storage_acl.py still checks them on "
                      "a Redis of its own)", stacklevel=1)
    if env_kafka and env_redis:
        yield StackAddresses(kafka_bootstrap=env_kafka, redis_url=env_redis)
        return
    stack = DevStack(tmp_path_factory.mktemp("devstack"))
    info = stack.up()
    users = info.redis_users if not env_redis else None
    if users is not None:
        ROLE_USERS[info.redis_url] = users
    try:
        yield StackAddresses(
            kafka_bootstrap=env_kafka or info.kafka_bootstrap,
            redis_url=env_redis or info.redis_url,
            embedded=info,
            redis_users=users,
        )
    finally:
        ROLE_USERS.pop(info.redis_url, None)
        stack.down()


@pytest.fixture(scope="session")
def kafka_bootstrap(stack_addresses: StackAddresses) -> str:
    return stack_addresses.kafka_bootstrap


#: Run a test on the single server only (it starts, stops or inspects a server of its own).
SINGLE_REDIS_ONLY = pytest.mark.parametrize("redis_backend", ["single"])


@pytest.fixture
def redis_backend() -> str:
    """Which Redis the test's fixtures point at: ``"single"`` (see the module docstring)."""
    return "single"


@pytest.fixture(params=["single", "cluster"])
def redis_backend_both(request: pytest.FixtureRequest) -> str:
    """``redis_backend`` of the directories whose Redis tests run on both (their conftest)."""
    return str(request.param)


@pytest.fixture(scope="session")
def redis_cluster_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[OwnCluster]:
    """A local three-master Redis Cluster for the session."""
    cluster = OwnCluster(tmp_path_factory.mktemp("rediscluster"))
    cluster.start()
    try:
        yield cluster
    finally:
        cluster.stop()


@pytest.fixture(scope="session")
def redis_url(stack_addresses: StackAddresses) -> str:
    """The session's single Redis server (any scope; ``redis_test_url`` follows the backend)."""
    return stack_addresses.redis_url


@pytest.fixture
def redis_test_url(redis_backend: str, request: pytest.FixtureRequest) -> str:
    """The URL of the test's Redis: the single server, or a node of the cluster (``redis_backend``)."""
    if redis_backend == "cluster":
        return str(request.getfixturevalue("redis_cluster_server").url)
    return str(request.getfixturevalue("redis_url"))


@pytest.fixture
def redis_connect(redis_test_url: str, redis_backend: str) -> Callable[..., RedisClient]:
    """``redis_connect(**kwargs)``: a new client of the test's Redis (a ``RedisCluster`` on the cluster)."""

    def make(**kwargs: Any) -> RedisClient:
        return connect(redis_test_url, cluster=redis_backend == "cluster", **kwargs)

    return make


@pytest.fixture
def unique_id() -> str:
    """8 hex digits unique to this test: the suffix of its topics, key prefix and consumer group."""
    return uuid.uuid4().hex[:8]


@pytest.fixture
def redis_client(redis_connect: Callable[..., RedisClient]) -> Iterator[RedisClient]:
    client = redis_connect()
    try:
        yield client
    finally:
        client.close()


@pytest.fixture
def redis_prefix(redis_connect: Callable[..., RedisClient], unique_id: str) -> Iterator[str]:
    """A key prefix unique to this test; every key starting with it is deleted afterwards."""
    prefix = f"sgtest-{unique_id}"
    yield prefix
    try:
        client = redis_connect(socket_connect_timeout=5.0)
    except (redis.RedisError, OSError):
        return
    try:
        delete_prefixed_keys(client, prefix)
    except (redis.RedisError, OSError):
        pass  # a test that stopped its Redis on purpose leaves nothing we could clean
    finally:
        client.close()


def delete_prefixed_keys(client: RedisClient, prefix: str) -> int:
    """Delete every key starting with ``prefix`` (SCAN + DEL, never FLUSHDB); returns how many.

    Test prefixes all have the same length, so ``<prefix>*`` never matches another test's keys;
    it covers ``<prefix>:...`` and any other separator a key layout may use.
    """
    deleted = 0
    batch: list[bytes] = []
    for name in client.scan_iter(match=f"{prefix}*", count=1000):  # every node of a cluster
        batch.append(name)
        if len(batch) >= 500:
            deleted += int(client.delete(*batch))
            batch.clear()
    if batch:
        deleted += int(client.delete(*batch))
    return deleted


def admin_client(settings: Settings) -> RedisClient:
    """A client of ``settings``' Redis as the URL's user (the fixtures' default user), never a role:
    for a test's own setup and inspection (a dump, an adversary's read)."""
    return connect(settings.redis_url_or_dev(), cluster=settings.redis_cluster)


@pytest.fixture
def topic_names(unique_id: str) -> TopicNames:
    """Every topic name with a per-test suffix, e.g. ``clicks.raw.t3f9a1c2``."""
    base = TopicNames()
    return TopicNames(**{name: f"{getattr(base, name)}.t{unique_id}" for name in TopicNames.model_fields})


@pytest.fixture
def master_key_b64() -> str:
    """A fresh KEK for this test: base64 of 32 random bytes."""
    return base64.b64encode(os.urandom(32)).decode()


@pytest.fixture
def settings_factory(
    kafka_bootstrap: str,
    redis_test_url: str,
    redis_prefix: str,
    topic_names: TopicNames,
    master_key_b64: str,
    unique_id: str,
    tmp_path: Path,
    redis_backend: str,
    stack_addresses: StackAddresses,
) -> Callable[..., Settings]:
    """``settings_factory(**overrides) -> Settings`` pointed at the session's servers, isolated per test;
    on the session's Redis its workers log in as their roles (module docstring)."""

    def make(**overrides: Any) -> Settings:
        values: dict[str, Any] = {
            "kafka_bootstrap": kafka_bootstrap,
            "redis_url": redis_test_url,
            "redis_cluster": redis_backend == "cluster",
            "redis_key_prefix": redis_prefix,
            "topics": topic_names,
            "state_dir": tmp_path,
            "session_timeout_ms": 6000,
            "master_key": master_key_b64,
            "group_prefix": f"sgtest-{unique_id}",
        }
        values.update(overrides)
        users = ROLE_USERS.get(values["redis_url"])
        if users is not None and not values["redis_cluster"]:
            values.setdefault("redis_password_file", users)
        return Settings(**values)

    return make


class OwnRedis:
    """A Redis server of one test alone (append-only, so keys survive a restart): for tests that
    stop and restart Redis on purpose (fail-closed behaviour)."""

    def __init__(self, workdir: Path) -> None:
        from stream.dev.stack import free_port

        self.port = free_port()
        self.dir = workdir
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        from stream.dev.stack import find_redis_binary

        self.proc = subprocess.Popen(
            [find_redis_binary(), "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
             "--appendonly", "yes", "--appendfsync", "always", "--dir", str(self.dir)],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
        client = redis.Redis(port=self.port, socket_connect_timeout=0.5)
        try:
            deadline = time.monotonic() + 20
            while not self.pings(client):
                if time.monotonic() > deadline:
                    raise AssertionError("the test's own Redis did not start within 20 s")
                time.sleep(0.1)
        finally:
            client.close()

    @staticmethod
    def pings(client: redis.Redis) -> bool:
        try:
            return bool(client.ping())
        except (redis.RedisError, OSError):
            return False

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.terminate()
            self.proc.wait(20)
            self.proc = None


@pytest.fixture
def own_broker(tmp_path: Path) -> Iterator[OwnBroker]:
    """A broker of this test's own, killed at the end (for broker restarts)."""
    b = OwnBroker(tmp_path)
    b.start()
    try:
        yield b
    finally:
        b.kill()


@pytest.fixture
def own_redis(tmp_path: Path) -> Iterator[OwnRedis]:
    """A started :class:`OwnRedis` in the test's tmp dir, stopped after the test."""
    r = OwnRedis(tmp_path)
    r.start()
    try:
        yield r
    finally:
        r.stop()
