"""Sizing (millicores per MB/s and per 1k events/s, from /proc): arithmetic and a tiny gateway run."""

from __future__ import annotations

import math
import os
from collections.abc import Callable

import pytest

from stream.bench.procs import Sizing, SizingMeter, _proc_cpu, sizing_lines
from stream.config import Settings


def test_sizing_units() -> None:
    s = Sizing("x", events=20_000, input_bytes=10_000_000, cpu_seconds=0.5, wall_seconds=2.0)
    # 0.25 cores for 5 MB/s -> 50 millicores per MB/s; for 10k events/s -> 25 per 1k events/s
    assert s.per_mb_s == pytest.approx(50.0)
    assert s.per_kevents_s == pytest.approx(25.0)
    assert s.events_per_cpu_s == pytest.approx(40_000)
    assert "50 millicores per MB/s" in s.line() and "load" in sizing_lines(s)


def test_the_meter_counts_this_process_cpu() -> None:
    before = _proc_cpu(os.getpid())
    meter = SizingMeter()
    x = 0
    while (_proc_cpu(os.getpid()) or 0) - (before or 0) < 0.05:  # busy until /proc shows CPU spent
        x += 1
    s = meter.stop("busy", events=1000, input_bytes=1000)
    assert before is not None and s.cpu_seconds > 0 and math.isfinite(s.per_mb_s) and x > 0


@pytest.mark.slow
def test_bench_gateway_small_prints_sizing(settings_factory: Callable[..., Settings]) -> None:
    from stream.bench.gateway import run_gateway_bench

    r = run_gateway_bench(settings_factory(), events=2000, engine_floor=True, rounds=2, say=lambda _s: None)
    assert r.protected + r.dead_lettered == 2000
    assert set(r.sizing) == {"json", "orjson", "gateway", "engine alone"}
    for s in r.sizing.values():
        assert s.events == 2000 and s.input_bytes > 2000 * 100 and s.cpu_seconds > 0
    assert r.cpu_ratio("json") > 0 and r.cpu_ratio("orjson") > 0 and r.cpu_ratio("orjson", "engine alone") > 0
    assert len(r.rounds) == 2 and (r.cpu_ratio("json"), r.cpu_ratio("orjson")) in r.rounds


@pytest.mark.slow
def test_the_ablation_runs_each_variant_and_puts_the_encryption_back(settings_factory: Callable[..., Settings]) -> None:
    import stream.gateway.core as gateway_core
    from stream.bench.ablate import run_ablation

    encrypt_many = gateway_core.encrypt_many
    ratios = run_ablation(settings_factory(), events=5000, rounds=1, variants=("noenc", "null"), say=lambda _s: None)
    assert set(ratios) == {"noenc", "null"}
    assert all(len(r) == 1 and 0 < r[0] < math.inf for r in ratios.values()), ratios
    assert gateway_core.encrypt_many is encrypt_many
