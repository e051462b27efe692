"""``streamgate bench latency`` at tiny rates on the test broker: structure, counts and ordered
percentiles, never timings."""

from __future__ import annotations

import math
from collections.abc import Callable

import pytest

from stream.bench.latency import PATHS, format_latency, percentiles, run_latency_bench
from stream.config import Settings

pytestmark = pytest.mark.slow


def test_percentiles_ordered() -> None:
    p50, p99, mx = percentiles([5.0, 1.0, 3.0, 100.0, 2.0])
    assert p50 == 3.0 and p50 <= p99 <= mx == 100.0
    assert all(math.isnan(v) for v in percentiles([]))


def test_bench_latency_small(settings_factory: Callable[..., Settings]) -> None:
    settings = settings_factory()
    said: list[str] = []
    r = run_latency_bench(settings, rates=(200, 400), seconds=1.0, warmup=0.25, say=said.append,
                          consumer={"fetch.wait.max.ms": 50})
    assert [(row.rate, row.path) for row in r.rows] == [(rate, p) for rate in (200, 400) for p in PATHS]
    for row in r.rows:
        assert row.sent == int(row.rate * 1.0 + row.rate * 0.25) - int(row.rate * 0.25)
        assert row.received == row.sent, row  # every counted event arrived and was matched
        assert row.exact == (row.path != "pipeline")  # shuffled releases: features.private matched by position
        assert 0 <= row.p50_ms <= row.p99_ms <= row.max_ms
        assert row.achieved_rate > 0
    assert r.settings["fetch.wait.max.ms"] == 50 and r.settings["partitions"] == 1
    assert set(r.cpu) == {200, 400}
    text = format_latency(r)
    assert len([line for line in text.splitlines() if "produce ->" in line]) == 6
    assert said[0].startswith("settings: ")


@pytest.mark.parametrize("bad", [(), (0,), (-5, 100)])
def test_bench_latency_rejects_bad_rates(bad: tuple[int, ...], settings_factory: Callable[..., Settings]) -> None:
    with pytest.raises(ValueError):
        run_latency_bench(settings_factory(), rates=bad, say=lambda s: None)
