"""``streamgate bench scale`` at a tiny size on the test broker: structure and counts, never timings."""

from __future__ import annotations

import math
from collections.abc import Callable

import pytest

from stream.bench.procs import listener_pid
from stream.bench.scale import format_scale, run_scale_bench
from stream.config import Settings

pytestmark = pytest.mark.slow


def test_bench_scale_small(settings_factory: Callable[..., Settings]) -> None:
    settings = settings_factory()
    said: list[str] = []
    r = run_scale_bench(settings, events=1500, partitions=4, say=said.append)
    assert [(p.worker, p.processes) for p in r.phases] == [
        ("gateway", 1), ("gateway", 2), ("privatizer", 1), ("privatizer", 2)]
    for p in r.phases:
        assert len(p.reports) == p.processes
        assert all(rep.error is None for rep in p.reports), p.reports
        assert len({rep.pid for rep in p.reports}) == p.processes  # real, distinct processes
        assert p.consumed >= p.events > 0  # every event handled (at-least-once: never fewer)
        if p.processes == 2:
            assert all(rep.consumed > 0 for rep in p.reports)  # both members took part
        assert p.rate >= 0 and math.isfinite(p.rate)
        for name, share in p.cpu.items():
            assert share is None or share >= 0, name
    assert r.phase("gateway", 1) is not None and r.phase("privatizer", 2) is not None
    assert math.isfinite(r.ratio("gateway")) and r.ratio("privatizer") >= 0
    text = format_scale(r)
    assert "ratio gateway 2 / 1 processes" in text and "ratio privatizer 2 / 1 processes" in text
    rows = [line for line in text.splitlines() if line.startswith(("gateway ", "privatizer "))]
    assert len(rows) == 4
    assert any("events/s total" in line for line in said)


def test_listener_pid_finds_the_broker(settings_factory: Callable[..., Settings]) -> None:
    settings = settings_factory()
    pid = listener_pid(settings.kafka_bootstrap or "")
    assert pid is None or pid > 1  # None only where /proc is not readable
    assert listener_pid("not-an-address") is None
