"""Registers the project-wide fixtures of tests/fixtures.py.

The test folders have no ``__init__.py``; the tests directory is put on
``sys.path`` here so ``fixtures`` (and helpers next to the tests) import with a
plain ``pytest`` from the repository root, whatever the import mode.
"""

from __future__ import annotations

import sys
from pathlib import Path

_TESTS_DIR = str(Path(__file__).resolve().parent)
if _TESTS_DIR not in sys.path:
    sys.path.insert(0, _TESTS_DIR)

from fixtures import (  # noqa: E402
    kafka_bootstrap,
    master_key_b64,
    own_redis,
    redis_client,
    redis_prefix,
    redis_url,
    settings_factory,
    stack_addresses,
    topic_names,
    unique_id,
)

__all__ = [
    "kafka_bootstrap",
    "master_key_b64",
    "own_redis",
    "redis_client",
    "redis_prefix",
    "redis_url",
    "settings_factory",
    "stack_addresses",
    "topic_names",
    "unique_id",
]
