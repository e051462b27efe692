"""Readiness on a Redis Cluster: every master must answer (each holds some people's keys)."""

from __future__ import annotations

from pathlib import Path

import pytest

from stream.config import Settings
from stream.ops.worker import _redis_problem
from tests.support.cluster import OwnCluster

pytestmark = pytest.mark.integration


@pytest.mark.slow  # starts a cluster of its own
def test_redis_readiness_names_a_cluster_with_a_master_down(tmp_path: Path) -> None:
    cluster = OwnCluster(tmp_path)
    cluster.start()
    try:
        settings = Settings(redis_url=cluster.url, redis_cluster=True, state_dir=tmp_path)
        assert _redis_problem(settings, "gateway") is None
        cluster.procs[2].terminate()
        cluster.procs[2].wait(20)
        problem = _redis_problem(settings, "gateway")
        assert problem is not None and problem.startswith("redis unreachable")
    finally:
        cluster.stop()
