"""Registers the project-wide fixtures of ``tests/support/fixtures.py``, and spreads the suite over
pytest-xdist workers (``-n 4 --dist loadgroup`` in pyproject.toml, docs/testing.md):

* the tests of a module that share a module-scoped fixture (a gateway run, a demo, a Monte Carlo
  table) form one ``xdist_group``, so the fixture is built once, on one worker;
* under xdist the ``slow`` tests are queued first, so the longest ones do not start last;
* Hypothesis has no per-example deadline and no too-slow health check (wall-clock checks that a
  loaded machine fails; what the tests assert is unchanged).

``tests`` is a package: helpers import as ``tests.support.<module>``.
"""

from __future__ import annotations

import os
import tempfile

import pytest
from hypothesis import HealthCheck, settings

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

settings.register_profile("streamgate", deadline=None, suppress_health_check=[HealthCheck.too_slow])
settings.load_profile("streamgate")

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


@pytest.hookimpl(tryfirst=True)  # before xdist's own hook reads the xdist_group marks
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        info = getattr(item, "_fixtureinfo", None)
        defs = info.name2fixturedefs.values() if info is not None else ()
        if any(d.scope == "module" for fds in defs for d in fds):
            item.add_marker(pytest.mark.xdist_group(item.nodeid.split("::", 1)[0]))
    if os.environ.get("PYTEST_XDIST_WORKER"):  # every worker sorts alike: their collections must agree
        items.sort(key=lambda item: item.get_closest_marker("slow") is None)
