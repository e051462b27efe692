"""Registers the project-wide fixtures of ``tests/support/fixtures.py``.

``tests`` is a package: helpers import as ``tests.support.<module>``.
"""

from __future__ import annotations

import os
import tempfile

# Hermetic: a developer's ~/.streamgate (keyring, dev stack) never changes what a test sees.
os.environ["STREAMGATE_STATE_DIR"] = tempfile.mkdtemp(prefix="streamgate-home-")

from tests.support.fixtures import (
    kafka_bootstrap,
    master_key_b64,
    own_broker,
    own_redis,
    redis_backend,
    redis_client,
    redis_cluster_server,
    redis_connect,
    redis_prefix,
    redis_test_url,
    redis_url,
    settings_factory,
    stack_addresses,
    topic_names,
    unique_id,
)

__all__ = [
    "kafka_bootstrap",
    "master_key_b64",
    "own_broker",
    "own_redis",
    "redis_backend",
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
