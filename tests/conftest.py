"""Registers the project-wide fixtures of ``tests/support/fixtures.py``, and spreads the suite over
pytest-xdist workers (``-n 4`` in pyproject.toml, docs/testing.md):

* the tests of a module with a module-scoped fixture (a gateway run, a demo, a Monte Carlo table)
  are one unit of work, so the fixture is built once, on one worker; other tests are spread one by one;
* under xdist the ``slow`` tests are queued first, so the longest ones do not start last;
* Hypothesis has no per-example deadline and no too-slow health check (wall-clock checks that a
  loaded machine fails; what the tests assert is unchanged).

``tests`` is a package: helpers import as ``tests.support.<module>``.
"""

from __future__ import annotations

import functools
import os
import re
import tempfile
from pathlib import Path
from typing import Any

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


@functools.cache
def _has_module_fixture(module: str) -> bool:
    path = Path(__file__).resolve().parents[1] / module
    return path.suffix == ".py" and path.is_file() and _MODULE_FIXTURE.search(path.read_text()) is not None


_MODULE_FIXTURE = re.compile(r"""@pytest\.fixture\([^)]*scope=["']module["']""")


@pytest.hookimpl(optionalhook=True)  # an xdist hook: `-p no:xdist` must still work
def pytest_xdist_make_scheduler(config: pytest.Config, log: Any) -> Any:
    """Load scheduling by test, except that the tests of a module with a module-scoped fixture are one
    unit (one worker, the fixture built once). (xdist's own ``--dist loadgroup`` renames node ids in a
    way pytest 9.2 ignores, so the grouping is done here, from the node ids the controller sees.)"""
    from xdist.scheduler import LoadScopeScheduling

    class ModuleFixtureScheduling(LoadScopeScheduling):
        def _split_scope(self, nodeid: str) -> str:
            module = nodeid.split("::", 1)[0]
            return module if _has_module_fixture(module) else nodeid

    return ModuleFixtureScheduling(config, log)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if os.environ.get("PYTEST_XDIST_WORKER"):  # every worker sorts alike: their collections must agree
        items.sort(key=lambda item: item.get_closest_marker("slow") is None)
