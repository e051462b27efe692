"""Helpers for tests that run streamgate workers as real subprocesses: their environment
(pointed at the test's servers, topics, key prefix and master key) and a clean stop."""

from __future__ import annotations

import os
import signal
import subprocess
from pathlib import Path
from typing import Any

from stream.config import TopicNames

__all__ = ["ROLE_USERS", "settings_env", "stop_process", "worker_env"]

#: Redis URL -> the directory of its role users' passwords (filled by the session fixture): a worker
#: pointed at that Redis logs in as its role (STREAMGATE_REDIS_PASSWORD_FILE, stream.redisdb.client_for).
ROLE_USERS: dict[str, Path] = {}


def worker_env(*, kafka_bootstrap: str, redis_url: str, prefix: str, master_key: str, state_dir: Path,
               topics: TopicNames, **extra: str) -> dict[str, str]:
    """``os.environ`` without any ``STREAMGATE_*`` variable, plus the test's servers, key prefix,
    master key, state dir, every topic name, a 6 s session timeout, and ``extra``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("STREAMGATE_")}
    env.update({
        "STREAMGATE_KAFKA_BOOTSTRAP": kafka_bootstrap,
        "STREAMGATE_REDIS_URL": redis_url,
        "STREAMGATE_REDIS_KEY_PREFIX": prefix,
        "STREAMGATE_MASTER_KEY": master_key,
        "STREAMGATE_STATE_DIR": str(state_dir),
        "STREAMGATE_SESSION_TIMEOUT_MS": "6000",
    })
    env["STREAMGATE_TOPICS"] = topics.model_dump_json()
    if redis_url in ROLE_USERS:
        env["STREAMGATE_REDIS_PASSWORD_FILE"] = str(ROLE_USERS[redis_url])
    env.update(extra)
    return env


def settings_env(settings: Any, **extra: str) -> dict[str, str]:
    """:func:`worker_env` for the servers, prefix, key, state dir and topics of ``settings``."""
    if settings.redis_cluster:
        extra = {"STREAMGATE_REDIS_CLUSTER": "true", **extra}
    if settings.redis_password_file is not None:
        extra = {"STREAMGATE_REDIS_PASSWORD_FILE": str(settings.redis_password_file), **extra}
    return worker_env(kafka_bootstrap=settings.kafka_bootstrap, redis_url=settings.redis_url,
                      prefix=settings.redis_key_prefix, master_key=settings.master_key.get_secret_value(),
                      state_dir=settings.state_dir, topics=settings.topics, **extra)


def stop_process(proc: subprocess.Popen[bytes]) -> None:
    """SIGTERM (a graceful stop), SIGKILL after 30 s."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)
